"""Takeovers beat stale paths (issue 14): the owner's path forms, in-process with a fake clock.

An owner announces its steady form (`takeover_margin` extra prepends of its AS); a member
that takes a VIP over from one the group expired (hang, crash, partition: it may still be
announcing) leaves them out until the routers' hold time has passed, then re-announces the
steady form in place. A confirmed withdraw (failed check) or a handover (drain, leave,
preemption) needs no takeover form.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from raftvip.config import AnnounceConfig, Config
from raftvip.core.decide import STEADY, takeover_form
from raftvip.core.state import (
    ClusterState,
    Expire,
    Report,
    SetDrain,
    Takeover,
    apply,
    state_from_wire,
    state_to_wire,
)
from raftvip.core.status import build_status, render_status
from raftvip.testing.config import make_config, service
from raftvip.testing.driver import READY, LoopDriver
from tests.test_loop import group_state

HOLD = 9.0
LOCAL_AS = 65001
STEADY_LINE = (
    "announce route 10.0.0.2/32 next-hop self med 100 as-path [ 65001 65001 ] "
    "community [ 65001:100 ]"
)
TAKEOVER_LINE = "announce route 10.0.0.2/32 next-hop self med 100 community [ 65001:100 ]"


def config(margin: int = 1, backup: int = 0, hold: float = HOLD) -> Config:
    svc = service(backup_prepend=backup)
    announce = replace(svc.announce, takeover_margin=margin, takeover_hold_time=hold)
    return make_config(services=[replace(svc, announce=announce)])


def two_alive() -> ClusterState:
    """lb1 (this member) and lb2 healthy, lb3 down: whatever lb2 loses goes to lb1."""
    state = group_state()
    lb3 = replace(state.members["lb3"], healthy={"apex": False})
    return replace(state, members={**state.members, "lb3": lb3})


def expire(state: ClusterState, member: str, reason: str, ts: float) -> ClusterState:
    m = state.members[member]
    return apply(state, Expire(ts, member, m.incarnation, m.seq, reason))


def started(cfg: Config) -> LoopDriver:
    driver = LoopDriver(cfg, two_alive())
    driver.set_health("apex", "up")
    driver.run(1.0)
    return driver


def lines_for(driver: LoopDriver, vip: str, since: int) -> list[str]:
    return [line for line in driver.exabgp.lines[since:] if f" {vip}/" in line]


# --- the replicated record ------------------------------------------------------------------


def test_an_expiry_records_a_takeover_and_a_snapshot_keeps_it() -> None:
    state = expire(two_alive(), "lb2", "lease", ts=50.0)
    assert state.owner_of("10.0.0.2") == "lb1"
    assert state.takeovers == {"10.0.0.2": Takeover("lb2", "lease", 50.0)}
    assert state_from_wire(state_to_wire(state)).takeovers == state.takeovers
    # A snapshot written before takeovers existed reads as none.
    wire = state_to_wire(state)
    del wire["takeovers"]
    assert state_from_wire(wire).takeovers == {}
    # The record stays while lb1 keeps the VIP (readers bound it in time) ...
    state = apply(state, Report(51.0, "lb2", 0, 1, {"apex": True}))
    assert state.owner_of("10.0.0.2") == "lb1" and "10.0.0.2" in state.takeovers


@pytest.mark.parametrize(
    "move",
    [
        "leave",  # SIGTERM / raftvip leave: a handover (make before break)
        "drain",  # raftvip drain: a handover
        "check",  # lb2's check failed: it withdrew itself before reporting
    ],
)
def test_a_confirmed_withdraw_or_handover_records_no_takeover(move: str) -> None:
    state = two_alive()
    if move == "leave":
        state = expire(state, "lb2", "leaving", ts=50.0)
    elif move == "drain":
        state = apply(state, SetDrain(50.0, "lb2", True))
    else:
        state = apply(state, Report(50.0, "lb2", 0, 1, {"apex": False}))
    assert state.owner_of("10.0.0.2") == "lb1"
    assert state.takeovers == {}


def test_a_keeper_that_dies_during_a_handover_is_taken_over_from() -> None:
    state = apply(two_alive(), SetDrain(50.0, "lb2", True))
    assert state.handovers == {"10.0.0.2": "lb2"}
    state = expire(state, "lb2", "disconnect", ts=51.0)
    assert state.handovers == {}
    assert state.takeovers == {"10.0.0.2": Takeover("lb2", "disconnect", 51.0)}


def test_a_vip_left_unowned_by_an_expiry_is_taken_over_by_its_next_owner() -> None:
    state = two_alive()
    lb1 = replace(state.members["lb1"], healthy={"apex": False})
    state = replace(state, members={**state.members, "lb1": lb1})
    state = expire(state, "lb2", "lease", ts=50.0)
    assert state.owner_of("10.0.0.2") is None
    state = apply(state, Report(51.0, "lb1", 0, 1, {"apex": True}))
    assert state.owner_of("10.0.0.2") == "lb1"
    assert state.takeovers["10.0.0.2"] == Takeover("lb2", "lease", 50.0)


# --- the pure decision ----------------------------------------------------------------------

ANNOUNCE = AnnounceConfig(local_as=LOCAL_AS, takeover_margin=1, takeover_hold_time=HOLD)
RECORD = Takeover("lb2", "lease", 100.0)


def test_takeover_form_until_the_hold_time_has_passed() -> None:
    form = takeover_form(RECORD, ANNOUNCE, previous_back=False, wall=101.0)
    assert form.takeover and form.until == 100.0 + HOLD
    assert form.why == "took over from lb2 after lease expiry"
    assert form.describe().startswith("takeover form until ")
    assert form.describe().endswith("UTC: took over from lb2 after lease expiry")
    # The previous owner coming back changes nothing: its path may still be in a RIB.
    assert takeover_form(RECORD, ANNOUNCE, previous_back=True, wall=108.9).takeover
    steady = takeover_form(RECORD, ANNOUNCE, previous_back=False, wall=100.0 + HOLD)
    assert not steady.takeover
    assert steady.why.endswith("; its path is gone (hold time 9s passed)")


def test_steady_form_without_a_takeover_or_without_a_margin() -> None:
    assert takeover_form(None, ANNOUNCE, previous_back=False, wall=101.0) == STEADY
    off = takeover_form(RECORD, replace(ANNOUNCE, takeover_margin=0), False, 101.0)
    assert not off.takeover and off.why.endswith("takeover_margin = 0")


def test_no_hold_timer_keeps_the_takeover_form_until_the_previous_owner_is_back() -> None:
    forever = replace(ANNOUNCE, takeover_hold_time=math.inf)
    form = takeover_form(RECORD, forever, previous_back=False, wall=1e12)
    assert form.takeover and form.describe().startswith("takeover form until the previous")
    back = takeover_form(RECORD, forever, previous_back=True, wall=1e12)
    assert not back.takeover and back.why.endswith("lb2 is back in the group")


@pytest.mark.parametrize(
    ("cause", "said"),
    [
        ("disconnect", "its Raft link dropped"),
        ("not back", "its restart did not come back"),
        ("removed", "it was removed from the group"),
        ("odd", "expiry (odd)"),
    ],
)
def test_the_reason_names_the_cause(cause: str, said: str) -> None:
    form = takeover_form(Takeover("lb3", cause, 100.0), ANNOUNCE, False, 101.0)
    assert form.why == f"took over from lb3 after {said}"


# --- the loop, with a fake clock --------------------------------------------------------------


def test_after_an_expiry_the_new_owner_announces_the_takeover_form_then_steady_in_place() -> None:
    driver = started(config())
    assert "as-path [ 65001 65001 ]" in driver.exabgp.rib["10.0.0.1"]  # steady: one prepend
    written = len(driver.exabgp.lines)
    driver.state = expire(driver.state, "lb2", "lease", ts=driver.clock.wall())
    driver.tick()
    decision = driver.loop.decisions["10.0.0.2"]
    assert decision.reason == "owner" and decision.takeover
    assert decision.form is not None
    assert decision.form.why == "took over from lb2 after lease expiry"
    assert lines_for(driver, "10.0.0.2", written) == [TAKEOVER_LINE]
    assert any("vip=10.0.0.2 path=takeover form until" in m for m in driver.messages())
    # The loop wakes up for the end of the form by itself.
    assert driver.wake_at is not None and driver.wake_at <= driver.clock.now + HOLD
    # `raftvip status` says which form, until when, and why.
    doc = build_status(
        driver.cfg,
        driver.state,
        READY,
        driver.loop.decisions,
        {"apex": "up"},
        0.0,
        True,
        driver.clock.wall(),
    )
    assert doc["vips"]["10.0.0.2"]["took_over_from"] == "lb2"
    assert "takeover form until" in doc["vips"]["10.0.0.2"]["path"]
    assert "took over from lb2 after lease expiry" in render_status(doc)

    driver.run(HOLD - 0.5)
    assert driver.loop.decisions["10.0.0.2"].takeover  # the stale path may still be there
    driver.run(1.0)
    decision = driver.loop.decisions["10.0.0.2"]
    assert decision.reason == "owner" and not decision.takeover
    # Back to the steady form by an implicit withdraw: a re-announce, no withdraw between.
    assert lines_for(driver, "10.0.0.2", written) == [TAKEOVER_LINE, STEADY_LINE]
    assert driver.exabgp.rib["10.0.0.2"] == STEADY_LINE
    assert any("vip=10.0.0.2 path=steady form" in m for m in driver.messages())


def test_a_restarted_owner_does_not_restart_an_old_takeover_form() -> None:
    cfg = config()
    old = expire(two_alive(), "lb2", "lease", ts=LoopDriver(cfg, two_alive()).clock.wall() - 60)
    driver = LoopDriver(cfg, old)
    driver.set_health("apex", "up")
    driver.run(1.0)
    assert driver.reason("10.0.0.2") == "owner" and not driver.loop.decisions["10.0.0.2"].takeover
    assert driver.exabgp.rib["10.0.0.2"] == STEADY_LINE


@pytest.mark.parametrize("move", ["leave", "drain"])
def test_after_a_handover_the_new_owner_announces_the_steady_form(move: str) -> None:
    driver = started(config())
    written = len(driver.exabgp.lines)
    wall = driver.clock.wall()
    if move == "leave":
        driver.state = expire(driver.state, "lb2", "leaving", ts=wall)
    else:
        driver.state = apply(driver.state, SetDrain(wall, "lb2", True))
    driver.run(0.3)
    decision = driver.loop.decisions["10.0.0.2"]
    assert decision.reason == "owner" and not decision.takeover
    assert lines_for(driver, "10.0.0.2", written) == [STEADY_LINE]


def test_backups_stay_longer_than_both_owner_forms() -> None:
    driver = started(config(backup=2))
    backup = driver.exabgp.rib["10.0.0.2"]
    assert "as-path [ 65001 65001 65001 65001 ]" in backup  # margin 1 + backup_prepend 2 + 1
    assert "as-path [ 65001 65001 ]" in driver.exabgp.rib["10.0.0.1"]  # steady
    written = len(driver.exabgp.lines)
    driver.state = expire(driver.state, "lb2", "lease", ts=driver.clock.wall())
    driver.tick()
    # From backup to the takeover form in place (shortest of all), later to steady in place.
    assert lines_for(driver, "10.0.0.2", written) == [TAKEOVER_LINE]
    driver.run(HOLD + 0.5)
    assert lines_for(driver, "10.0.0.2", written) == [TAKEOVER_LINE, STEADY_LINE]


def test_takeover_margin_zero_announces_one_form() -> None:
    driver = started(config(margin=0))
    written = len(driver.exabgp.lines)
    driver.state = expire(driver.state, "lb2", "lease", ts=driver.clock.wall())
    driver.tick()
    assert not driver.loop.decisions["10.0.0.2"].takeover
    driver.run(HOLD + 0.5)
    assert lines_for(driver, "10.0.0.2", written) == [TAKEOVER_LINE]  # the bare path, once


def test_quorum_loss_keeps_the_takeover_form() -> None:
    driver = started(config())
    driver.state = expire(driver.state, "lb2", "lease", ts=driver.clock.wall())
    driver.tick()
    written = len(driver.exabgp.lines)
    driver.auto_commit = False
    driver.run(2.0)
    decision = driver.loop.decisions["10.0.0.2"]
    assert decision.reason == "no_quorum_hold" and decision.takeover
    assert lines_for(driver, "10.0.0.2", written) == []
