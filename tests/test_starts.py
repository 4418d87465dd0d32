"""Starts that move no traffic (issue 13): a balanced cold start, a member missing at the cold
start, a full-group restart with one member late. Real member processes; the timings these
paths reach are measured by the benchmarks (deploy/BENCHMARKS.md), not asserted here."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from raftvip.testing.group import Group, longest_gap, running_group, settled
from raftvip.testing.wait import wait_until

pytestmark = pytest.mark.slow

START = 20.0


def announcers(group: Group) -> dict[str, frozenset[str]]:
    return {vip: frozenset(group.announcers(vip)) for vip in group.vips}


def test_a_cold_start_places_every_vip_once_evenly(tmp_path: Path) -> None:
    """All members start together: each VIP's first announcer is its final owner."""
    with running_group(tmp_path, size=3, vips_per_member=2) as group:
        wait_until(lambda: all(group.announcers(v) for v in group.vips), START)
        first = announcers(group)
        assert all(len(who) == 1 for who in first.values()), first
        load = {name: 0 for name in group.members}
        for (owner,) in first.values():
            load[owner] += 1
        assert max(load.values()) - min(load.values()) <= 1, load
        assert all(first[v] == {m} for v, m in group.preferred.items()), first
        began = time.monotonic()
        time.sleep(3.0)  # past preempt_delay (1 s): preemption would have moved VIPs by now
        assert announcers(group) == first
        for member in group.members.values():
            assert member.stub is not None
            changes = [c for c in member.stub.changes if c.time > began]
            assert not changes, (member.name, changes)
        assert "the group forms with lb1, lb2, lb3" in "".join(
            group.stderr(n) for n in group.members
        )


def test_a_member_missing_at_the_cold_start_gets_its_share_later(tmp_path: Path) -> None:
    group = Group(tmp_path, size=3)
    try:
        group.start("lb1")
        group.start("lb2")
        # lb3's VIP has an owner without waiting for lb3 (the formation grace is 1 s).
        wait_until(lambda: all(group.announcers(v) for v in group.vips), START)
        vip = next(v for v, m in group.preferred.items() if m == "lb3")
        assert group.announcers(vip) <= {"lb1", "lb2"}
        doc = group.status("lb1")
        assert "not there yet: lb3" in "".join(group.stderr(n) for n in ("lb1", "lb2"))
        assert doc["vips"][vip]["owner"] in ("lb1", "lb2")
        start = time.monotonic()
        group.start("lb3")
        wait_until(lambda: settled(group), START)  # preempt_delay later, make before break
        assert longest_gap(group, vip, start, time.monotonic()) == 0.0
    finally:
        group.close()


def test_a_full_restart_with_a_member_late_announces_everything_without_it(
    tmp_path: Path,
) -> None:
    """State on disk says all three are alive: the two that are back must not wait a whole
    lease, or for the late one, before announcing its VIP."""
    with running_group(tmp_path, size=3) as group:
        wait_until(lambda: settled(group), START)
        for name in group.members:
            group.kill(name)
        group.start("lb1")
        group.start("lb2")
        wait_until(lambda: all(group.announcers(v) for v in group.vips), START)
        vip = next(v for v, m in group.preferred.items() if m == "lb3")
        assert group.announcers(vip) <= {"lb1", "lb2"}
        assert "expires member=lb3 reason=not back" in group.stderr("lb1") + group.stderr("lb2")
        group.start("lb3")
        wait_until(lambda: settled(group), START)
