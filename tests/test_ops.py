"""Operating a fleet: maintenance, drain, pin, graceful handover, quorum loss, events.

Members are real processes (raftvip/testing/group.py); commands go through the real CLI.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftvip.testing.group import Group, cli, longest_gap, settled
from raftvip.testing.wait import wait_until

pytestmark = pytest.mark.slow

SETTLE = 20.0


@pytest.fixture
def group3(tmp_path: Path) -> Iterator[Group]:
    # Two VIPs per member: a drain moves several VIPs at once.
    group = Group(tmp_path, size=3, vips_per_member=2)
    try:
        group.start_all()
        wait_until(lambda: settled(group), SETTLE)
        yield group
    finally:
        group.close()


def test_drain_is_make_before_break_and_undrain_brings_vips_back(group3: Group) -> None:
    mine = [v for v, m in group3.preferred.items() if m == "lb1"]
    start = time.monotonic()
    result = cli(group3, "lb2", "drain", "lb1")
    end = time.monotonic()
    assert result.returncode == 0, result.stderr
    # Progress lines, then the end (the first one may already count moved VIPs).
    assert "draining lb1: 2/2 VIPs moved" in result.stdout
    assert "lb1 drained in" in result.stdout and "it owns nothing" in result.stdout
    assert group3.members["lb1"].announced() == set()
    for vip in mine:
        assert len(group3.announcers(vip)) == 1
        # Every VIP had an announcer at every instant of the drain.
        assert longest_gap(group3, vip, start, end) == 0.0
    doc = group3.status("lb3")
    assert doc["members"]["lb1"]["drained"] is True
    assert doc["members"]["lb1"]["vips"] == 0
    assert any(e["kind"] == "handover" and e["index"] > 0 for e in doc["events"])
    lb1 = group3.status("lb1")
    assert lb1["vips"][mine[0]]["reason"] == "drained"
    # Undrain: after preempt_delay lb1 takes its preferred VIPs back, again without a gap.
    start = time.monotonic()
    assert cli(group3, "lb1", "undrain").returncode == 0
    wait_until(lambda: settled(group3), SETTLE)
    for vip in mine:
        assert longest_gap(group3, vip, start, time.monotonic()) == 0.0


def test_sigterm_hands_over_without_a_gap(group3: Group) -> None:
    mine = [v for v, m in group3.preferred.items() if m == "lb2"]
    start = time.monotonic()
    assert group3.terminate("lb2") == 0
    end = time.monotonic()
    for vip in mine:
        assert group3.announcers(vip) and "lb2" not in group3.announcers(vip)
        assert longest_gap(group3, vip, start, end + 0.5) == 0.0
    assert "handover not confirmed" not in group3.stderr("lb2")


def test_maintenance_and_pin_survive_a_full_restart(group3: Group) -> None:
    on = cli(group3, "lb1", "maintenance", "on", "apex")
    assert on.returncode == 0, on.stderr
    wait_until(lambda: all(not m.announced() for m in group3.members.values()), 5)
    pinned = "10.20.0.1"  # preferred lb1
    pin = cli(group3, "lb3", "pin", pinned, "lb3")
    assert pin.returncode == 0, pin.stderr
    for name in group3.members:
        group3.kill(name)
    for name in group3.members:
        group3.start(name)
    time.sleep(3.0)  # long enough to elect, replay the journal and announce if it were to
    assert all(not m.announced() for m in group3.members.values())
    doc = group3.status("lb2")
    assert doc["services"]["apex"]["maintenance"] is True
    assert doc["vips"][pinned]["pinned"] == "lb3"
    assert doc["vips"][pinned]["reason"] == "maintenance"
    assert cli(group3, "lb2", "maintenance", "off", "apex").returncode == 0
    wait_until(lambda: group3.announcers(pinned) == {"lb3"}, SETTLE)
    assert cli(group3, "lb1", "unpin", pinned).returncode == 0
    wait_until(lambda: settled(group3), SETTLE)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("pin", "10.9.9.9", "lb1"), "unknown VIP '10.9.9.9'"),
        (("pin", "10.20.0.1", "lb7"), "unknown member 'lb7'"),
        (("maintenance", "on", "nope"), "unknown service 'nope'"),
        (("drain", "lb9"), "unknown member 'lb9'"),
    ],
)
def test_bad_operator_input_is_refused(group3: Group, args: tuple[str, ...], message: str) -> None:
    version = group3.status("lb1")["state_version"]
    result = cli(group3, "lb1", *args)
    assert result.returncode == 1
    assert message in result.stderr
    assert group3.status("lb1")["state_version"] == version


def test_pin_to_ineligible_and_drain_of_last_eligible_are_refused(group3: Group) -> None:
    assert cli(group3, "lb1", "drain", "lb2").returncode == 0
    refused = cli(group3, "lb1", "pin", "10.20.0.1", "lb2")
    assert refused.returncode == 1
    assert "lb2 is not eligible for service 'apex' (drained)" in refused.stderr
    assert cli(group3, "lb1", "drain", "lb3").returncode == 0
    last = cli(group3, "lb1", "drain", "lb1")
    assert last.returncode == 1
    assert "last eligible member for service 'apex'" in last.stderr and "--force" in last.stderr
    assert group3.status("lb1")["members"]["lb1"]["drained"] is False
    forced = cli(group3, "lb1", "drain", "lb1", "--force", "--no-wait")
    assert forced.returncode == 0
    wait_until(lambda: all(not m.announced() for m in group3.members.values()), 5)


@pytest.mark.parametrize("policy", ["hold", "withdraw"])
def test_quorum_loss_policy(tmp_path: Path, policy: str) -> None:
    group = Group(tmp_path, size=3, on_quorum_loss=policy)
    try:
        group.start_all()
        wait_until(lambda: settled(group), SETTLE)
        group.stop_signal("lb2")
        group.stop_signal("lb3")
        vip = next(v for v, m in group.preferred.items() if m == "lb1")
        wait_until(lambda: not group.status("lb1")["has_quorum"], 10, 0.1)
        if policy == "hold":
            time.sleep(2.0)  # well past the fencing time of the withdraw policy
            assert vip in group.members["lb1"].announced()
        else:
            wait_until(lambda: vip not in group.members["lb1"].announced(), 5)
        wait_until(lambda: group.status("lb1")["no_quorum_for"] > 0.5, 5, 0.1)
        doc = group.status("lb1")
        assert doc["has_quorum"] is False
        assert doc["vips"][vip]["reason"] == ("no_quorum_hold" if policy == "hold" else "fenced")
        human = cli(group, "lb1", "status").stdout
        assert "NO QUORUM for" in human
        refused = cli(group, "lb1", "maintenance", "on", "apex")
        assert refused.returncode == 1 and "no quorum" in refused.stderr
        group.cont("lb2")
        group.cont("lb3")
        wait_until(lambda: settled(group), SETTLE)
    finally:
        group.close()


def test_events_in_status(group3: Group) -> None:
    group3.members["lb3"].health_file.unlink()
    wait_until(lambda: "lb3" not in group3.announcers("10.20.0.3"), 5)
    doc = group3.status("lb1")
    kinds = {(e["kind"], e["subject"]) for e in doc["events"]}
    assert ("health", "lb3/apex") in kinds
    assert ("owner", "10.20.0.3") in kinds
    assert all(e["index"] > 0 and e["time"] > 0 for e in doc["events"])
    human = cli(group3, "lb1", "status", "--events").stdout
    assert "RECENT EVENTS" in human and "lb3/apex: unhealthy" in human
