"""Starts that move no traffic (issue 13): a balanced cold start, a member missing at the cold
start, a full-group restart with one member late. Real member processes; the timings these
paths reach are measured by the benchmarks (deploy/BENCHMARKS.md), not asserted here."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from raftvip.testing.group import Group, cli, longest_gap, running_group, settled
from raftvip.testing.wait import wait_until
from tests.test_e2e_bgp import Topology, topology  # noqa: F401 - the BIRD + ExaBGP fixture

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


# --- raftvip leave ---------------------------------------------------------------------------


def test_leave_hands_everything_over_then_the_member_rejoins_when_restarted(
    tmp_path: Path,
) -> None:
    with running_group(tmp_path, size=3, vips_per_member=2) as group:
        wait_until(lambda: settled(group), START)
        mine = [v for v, m in group.preferred.items() if m == "lb2"]
        start = time.monotonic()
        result = cli(group, "lb2", "leave")
        end = time.monotonic()
        assert result.returncode == 0, result.stderr
        assert "lb2 left the group in" in result.stdout and "2 VIPs handed over" in result.stdout
        assert group.members["lb2"].announced() == set()
        for vip in mine:
            assert group.announcers(vip) and "lb2" not in group.announcers(vip)
            assert longest_gap(group, vip, start, end + 0.5) == 0.0
        doc = group.status("lb2")
        assert doc["left"] is True and doc["leave_outcome"] == "handed over"
        assert {v["reason"] for v in doc["vips"].values()} == {"left"}
        assert "LEFT the group" in cli(group, "lb2", "status").stdout
        time.sleep(2.0)  # it stays out: no report brings it back
        assert group.members["lb2"].announced() == set()
        assert group.status("lb1")["members"]["lb2"]["alive"] is False
        # ExaBGP stops it (SIGTERM), then starts it again: it rejoins on its own.
        assert group.terminate("lb2") == 0
        group.start("lb2")
        wait_until(lambda: settled(group), START)
        assert group.status("lb2")["left"] is False


def test_leave_then_sigterm_to_exabgp_leaves_no_vip_without_a_path_on_bird(
    topology: Topology,  # noqa: F811 - the fixture
) -> None:
    """What `systemctl stop` does with deploy/'s unit: `raftvip leave` (ExecStop), then
    SIGTERM to ExaBGP, which sends the router a NOTIFICATION."""
    group = topology.group
    topology.bird.wait_established(timeout=20)
    wait_until(
        lambda: all(topology.single_path_owner(v) == m for v, m in group.preferred.items()),
        30,
        0.02,
    )
    victim = "lb2"
    vip = next(v for v, m in group.preferred.items() if m == victim)
    dark: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            paths = topology.paths().get(vip, [])
            if not any(p.best for p in paths):
                dark.append(time.monotonic())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = cli(group, victim, "leave")
        assert result.returncode == 0, result.stderr
        topology.speakers[victim].stop()  # SIGTERM to ExaBGP
        wait_until(lambda: topology.single_path_owner(vip) in {"lb1", "lb3"}, 10, 0.005)
        time.sleep(0.5)
    finally:
        done.set()
        sampler.join(5)
    assert not dark, f"{vip} had no path at the router for {len(dark)} samples"
    # ExaBGP comes back: the member rejoins and takes its preferred VIP back by itself.
    topology.start_speaker(victim)
    wait_until(lambda: topology.single_path_owner(vip) == victim, 30, 0.02)


# --- raftvip restart -------------------------------------------------------------------------


def test_restart_in_place_moves_nothing_and_leaves_no_vip_without_a_path(
    topology: Topology,  # noqa: F811 - the fixture
) -> None:
    """Under a real ExaBGP: the helper exits without withdrawing, ExaBGP keeps its routes and
    starts the new one, which takes over. The router never lacks a path, nothing moves."""
    group = topology.group
    topology.bird.wait_established(timeout=20)
    wait_until(
        lambda: all(topology.single_path_owner(v) == m for v, m in group.preferred.items()),
        30,
        0.02,
    )
    victim = "lb2"
    speaker = topology.speakers[victim]
    (old_pid,) = speaker.helper_pids()
    wrong: list[tuple[str, str | None]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for vip, owner in group.preferred.items():
                now = topology.single_path_owner(vip)
                if now != owner:
                    wrong.append((vip, now))
            time.sleep(0.001)

    before = group.status("lb1")["commit_index"]
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = cli(group, victim, "restart")
        assert result.returncode == 0, result.stderr
        assert f"pid {old_pid} -> " in result.stdout
        time.sleep(2.0)  # past preempt_delay: nothing moves later either
    finally:
        done.set()
        sampler.join(5)
    assert not wrong, f"paths changed during the restart: {wrong[:5]}"
    (new_pid,) = speaker.helper_pids()
    assert new_pid != old_pid
    events = [e for e in group.status("lb1")["events"] if e["index"] > before]
    assert not [e for e in events if e["kind"] == "owner"], events
    assert any(e["detail"] == "restarting in place" for e in events)


def test_a_restart_whose_next_process_never_comes_fails_over_after_the_deadline(
    tmp_path: Path,
) -> None:
    with running_group(tmp_path, size=3) as group:
        wait_until(lambda: settled(group), START)
        vip = next(v for v, m in group.preferred.items() if m == "lb2")
        # Nobody starts a new process (no ExaBGP here): the CLI says so after its timeout.
        result = cli(group, "lb2", "restart", "--timeout", "2")
        assert result.returncode == 1 and "no new process answered" in result.stderr
        doc = group.status("lb1")
        assert doc["members"]["lb2"]["alive"] is True  # the group keeps lb2 and its VIP
        assert doc["vips"][vip]["owner"] == "lb2"
        # After the deadline (10 s from the restart) it fails over as for a crash.
        wait_until(lambda: group.status("lb1")["vips"][vip]["owner"] in ("lb1", "lb3"), 20, 0.1)
        events = group.status("lb1")["events"]
        assert any("restart not done in time" in e["detail"] for e in events)
