"""The member loop (raftvip/core/loop.py) driven in-process with a fake clock.

Every decision reason, the report schedule, handovers, stops and ExaBGP's stdin, without a
process, a socket or a sleep (raftvip/testing/driver.py).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from raftvip.config import Config
from raftvip.core import loop as core
from raftvip.core.decide import REASONS, fence_time, pause_time
from raftvip.core.exabgp import parse_stdin_line
from raftvip.core.leader import LeaderBook, own_layout
from raftvip.core.placement import Assignment, ServiceSpec
from raftvip.core.replica import apply_entry
from raftvip.core.state import (
    ClusterState,
    Confirm,
    Expire,
    MemberLayout,
    MemberState,
    Report,
    SetRestarting,
    apply,
    encode_command,
)
from raftvip.testing.clock import FakeClock
from raftvip.testing.config import make_config, service
from raftvip.testing.driver import READY, LoopDriver
from raftvip.testing.exabgp import FakeExabgp

VIPS = ("10.0.0.1", "10.0.0.2", "10.0.0.3")
ADDRESSES = {"lb1": "127.0.0.11:7801", "lb2": "127.0.0.12:7801", "lb3": "127.0.0.13:7801"}


def group_state(**changes: object) -> ClusterState:
    """lb1 (this member) owns 10.0.0.1, lb2 owns 10.0.0.2, 10.0.0.3 has no owner."""
    members = {
        name: MemberState(name, alive=True, incarnation=0, healthy={"apex": True})
        for name in ADDRESSES
    }
    base = ClusterState(
        version=1,
        services=(ServiceSpec("apex", VIPS, {}),),
        addresses=ADDRESSES,
        members=members,
        owners={
            "10.0.0.1": Assignment("lb1", "preferred"),
            "10.0.0.2": Assignment("lb2", "preferred"),
        },
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def member(name: str = "lb1", **changes: object) -> MemberState:
    return replace(
        MemberState(name, alive=True, healthy={"apex": True}),
        **changes,  # type: ignore[arg-type]
    )


def started(policy: str = "hold", **kwargs: object) -> LoopDriver:
    """A member whose check is up, in a healthy group, after a second of ticks."""
    cfg = make_config(policy=policy, **kwargs)  # type: ignore[arg-type]
    driver = LoopDriver(cfg, group_state())
    driver.set_health("apex", "up")
    driver.run(1.0)
    return driver


def hand_over_to_lb2(driver: LoopDriver) -> None:
    """The group moved 10.0.0.1 from lb1 (this member) to lb2: lb1 hands it over."""
    driver.update(
        version=2,
        owners={**driver.state.owners, "10.0.0.1": Assignment("lb2", "rebalance")},
        handovers={"10.0.0.1": "lb1"},
    )


# --- start-up -------------------------------------------------------------------------------


def test_start_withdraws_every_managed_vip_before_anything_else() -> None:
    driver = LoopDriver(make_config(), group_state())
    assert driver.exabgp.lines == [f"withdraw route {v}/32 next-hop self" for v in VIPS]


def test_not_ready_is_starting_and_reports_nothing() -> None:
    driver = LoopDriver(make_config(), group_state(), info=replace(READY, ready=False))
    driver.set_health("apex", "up")
    driver.run(1.0)
    assert set(driver.reasons().values()) == {"starting"}
    assert driver.announced() == set()
    assert not [p for p in driver.proposals if isinstance(p.cmd, Report)]


def test_owner_not_owner_unowned() -> None:
    driver = started()
    assert driver.reasons() == {"10.0.0.1": "owner", "10.0.0.2": "not_owner", "10.0.0.3": "unowned"}
    assert driver.announced() == {"10.0.0.1"}
    assert driver.exabgp.rib["10.0.0.1"] == (
        "announce route 10.0.0.1/32 next-hop self med 100 community [ 65001:100 ]"
    )


# --- local health ---------------------------------------------------------------------------


@pytest.mark.parametrize(("local", "reason"), [("down", "unhealthy"), ("disabled", "disabled")])
def test_local_health_withdraws_in_the_next_tick_then_reports(local: str, reason: str) -> None:
    driver = started()
    driver.auto_commit = False
    before = len(driver.proposals)
    driver.set_health("apex", local)
    driver.tick()  # no time passes: the withdraw does not wait for the group
    assert driver.reason("10.0.0.1") == reason
    assert driver.announced() == set()
    (report,) = [p.cmd for p in driver.proposals[before:] if isinstance(p.cmd, Report)]
    assert report.health == {"apex": False}
    assert any(f"local_health={local}" in m for m in driver.messages())


def test_a_service_without_a_check_is_always_up() -> None:
    cfg = make_config(services=[service(checked=False)])
    driver = LoopDriver(cfg, group_state())
    driver.run(0.5)
    assert driver.reason("10.0.0.1") == "owner"


# --- operator flags -------------------------------------------------------------------------


def test_maintenance_and_drain() -> None:
    driver = started()
    driver.update(version=2, maintenance=frozenset({"apex"}))
    driver.run(0.2)
    assert set(driver.reasons().values()) == {"maintenance"}
    assert driver.announced() == set()
    driver.update(
        version=3,
        maintenance=frozenset(),
        members={**driver.state.members, "lb1": replace(driver.state.members["lb1"], drained=True)},
    )
    driver.run(0.2)
    assert driver.reason("10.0.0.1") == "drained"
    assert driver.announced() == set()


# --- handovers ------------------------------------------------------------------------------


def test_handover_keeps_announcing_until_confirmed_then_withdraws() -> None:
    driver = started()
    # The group moved 10.0.0.1 to lb2 (drain, preemption): lb1 keeps it until lb2 confirms.
    hand_over_to_lb2(driver)
    written = len(driver.exabgp.lines)
    driver.run(0.3)
    assert driver.reason("10.0.0.1") == "handover"
    assert "10.0.0.1" in driver.announced()
    driver.update(version=3, handovers={})  # lb2's Confirm committed
    driver.run(0.2)
    assert driver.reason("10.0.0.1") == "not_owner"
    assert driver.announced() == set()
    # While handing over, the path carries GRACEFUL_SHUTDOWN (RFC 8326): a re-announce of
    # the owner's path (implicit withdraw), then the withdraw once lb2 has confirmed.
    assert driver.exabgp.lines[written:] == [
        "announce route 10.0.0.1/32 next-hop self med 100 community [ 65001:100 65535:0 ]",
        "withdraw route 10.0.0.1/32 next-hop self",
    ]


def test_an_unconfirmed_handover_ends_after_handover_timeout() -> None:
    driver = started()
    hand_over_to_lb2(driver)
    driver.run(driver.cfg.cluster.handover_timeout - 0.2)
    assert driver.reason("10.0.0.1") == "handover"
    driver.run(0.5)
    assert driver.reason("10.0.0.1") == "not_owner"
    assert "10.0.0.1" not in driver.announced()
    assert any("handover to lb2 not confirmed" in m for m in driver.messages())


def test_the_new_owner_confirms_once_exabgp_acked_its_announce() -> None:
    driver = started()
    driver.auto_ack = False
    driver.update(
        version=2,
        owners={**driver.state.owners, "10.0.0.2": Assignment("lb1", "rebalance")},
        handovers={"10.0.0.2": "lb2"},
    )
    driver.run(0.3)
    assert driver.reason("10.0.0.2") == "owner"
    assert not [p for p in driver.proposals if isinstance(p.cmd, Confirm)]  # no ack yet
    for ack in driver.exabgp.acks():
        driver.send(core.StdinLine(ack))
    driver.tick()
    (confirm,) = [p.cmd for p in driver.proposals if isinstance(p.cmd, Confirm)]
    assert confirm.vips == ("10.0.0.2",) and confirm.member == "lb1"


# --- backup paths ---------------------------------------------------------------------------


def test_backup_paths_for_vips_of_others() -> None:
    cfg = make_config(services=[service(backup_prepend=2)])
    driver = LoopDriver(cfg, group_state())
    driver.set_health("apex", "up")
    driver.run(0.5)
    assert driver.reasons() == {"10.0.0.1": "owner", "10.0.0.2": "backup", "10.0.0.3": "unowned"}
    assert "as-path [ 65001 65001 65001 ]" in driver.exabgp.rib["10.0.0.2"]
    assert "as-path" not in driver.exabgp.rib["10.0.0.1"]


# --- heartbeat leases (format 3) -------------------------------------------------------------


def echoing(driver: LoopDriver, lag: float = 0.15) -> None:
    """A format-3 group whose leader echoes our loop's stamps `lag` after each step (every
    member has our layout: nothing moves)."""
    digest, specs, timings = own_layout(driver.cfg)
    layout = MemberLayout(digest, specs, timings, 0.0, "test")
    driver.update(wire=3, layouts={name: layout for name in ADDRESSES})
    driver.info = replace(
        driver.info, leader_echoes=True, confirmed=driver.clock.now - lag, last_applied=9
    )


def run_echoed(driver: LoopDriver, seconds: float, lag: float = 0.15, step: float = 0.4) -> None:
    """Tick every `step` (an idle loop) while the leader keeps echoing."""
    end = driver.clock.now + seconds
    while driver.clock.now + step <= end + 1e-9:
        driver.clock.advance(step)
        driver.info = replace(driver.info, confirmed=driver.clock.now - step + lag)
        driver.tick()


def reports(driver: LoopDriver) -> list[Report]:
    return [p.cmd for p in driver.proposals if isinstance(p.cmd, Report)]


def test_heartbeat_leases_need_no_periodic_report() -> None:
    """Once every member speaks format 3 and the leader echoes our stamps, an idle member
    proposes nothing: in 10 s, no report (it made ~20 before)."""
    driver = started(policy="withdraw")
    echoing(driver)
    run_echoed(driver, 6.0)  # past preempt_delay: the report that shows we are ready
    before = len(reports(driver))
    run_echoed(driver, 10.0)
    assert len(reports(driver)) == before
    assert driver.announced() == {"10.0.0.1"}  # the fence never fell
    # A health change is still reported at once.
    driver.set_health("apex", "down")
    driver.tick()
    assert len(reports(driver)) == before + 1


def test_with_heartbeat_leases_a_report_shows_the_group_when_we_are_ready() -> None:
    """The group counts a service ready once it has been healthy for preempt_delay between
    the stamps of our own reports: without periodic reports, one more report must come
    then, or a returning member would never get its VIPs back (preemption, rebalancing)."""
    driver = started(policy="hold")
    echoing(driver)
    specs = tuple(replace(spec, preempt_delay=2.0) for spec in driver.state.services)
    driver.update(services=specs)
    driver.set_health("apex", "down")
    driver.tick()
    driver.set_health("apex", "up")
    driver.tick()
    me = driver.state.members["lb1"]
    up_since = me.healthy_since["apex"]
    assert me.is_healthy("apex") and me.clock == up_since  # up, not ready yet
    before = len(reports(driver))
    run_echoed(driver, 1.6)
    assert len(reports(driver)) == before  # nothing to say yet
    assert driver.wake_at is not None and driver.wake_at <= driver.clock.now + 0.41
    run_echoed(driver, 0.8)
    assert len(reports(driver)) == before + 1  # 2 s after it came up
    me = driver.state.members["lb1"]
    assert me.clock - me.healthy_since["apex"] >= 2.0
    run_echoed(driver, 5.0)
    assert len(reports(driver)) == before + 1  # and only once


def test_a_report_lost_in_flight_is_sent_again() -> None:
    """A report forwarded to the leader on a link that then dropped gets no answer and never
    commits. Periodic reports used to cover that; with heartbeat leases the loop sends it
    again once it has been in flight for report_interval (seed 316 of the simulator with
    0.1 s heartbeats: a member stayed withdrawn after a pause, waiting for it)."""
    driver = started()
    echoing(driver)
    run_echoed(driver, 6.0)
    driver.auto_commit = False
    driver.set_health("apex", "down")
    driver.tick()
    lost = reports(driver)[-1]
    driver.pending.clear()  # lost with its connection: no commit, no callback
    run_echoed(driver, 0.4)
    assert reports(driver)[-1] is lost
    run_echoed(driver, 0.4)
    again = reports(driver)[-1]
    assert again is not lost and again.seq == lost.seq + 1 and again.health == lost.health
    driver.auto_commit = True
    driver.commit()
    run_echoed(driver, 2.0)
    assert reports(driver)[-1] is again  # seen in the state: nothing more


def test_the_idle_loop_steps_at_least_every_report_interval() -> None:
    """Its stamp renews the lease: never older than report_interval (pause_time counts on
    it), even with a long IDLE."""
    driver = started(report_interval=0.3, lease=0.9)
    echoing(driver)
    driver.tick()
    assert driver.wake_at is not None
    assert driver.wake_at - driver.clock.now <= 0.3 + 1e-9


@pytest.mark.parametrize("why", ["format 2", "older leader", "echoes stop"])
def test_reports_renew_the_lease_again_when_heartbeats_do_not(why: str) -> None:
    """Periodic reports come back when the heartbeats cannot renew the lease: a member of
    an older build (format 2), a leader of an older build (it does not echo), or echoes that
    stopped (too slow, a leader that cannot vouch for us)."""
    driver = started(policy="withdraw")
    echoing(driver)
    if why == "format 2":
        driver.update(wire=2)
    elif why == "older leader":
        driver.info = replace(driver.info, leader_echoes=False)
    before = len(reports(driver))
    if why == "echoes stop":
        driver.run(2.0)  # `confirmed` frozen from now on
    else:
        run_echoed(driver, 2.0)
    assert len(reports(driver)) >= before + 3
    assert driver.announced() == {"10.0.0.1"}  # the reports keep the fence up


def fence_falls_on_time(driver: LoopDriver, renewed: float) -> None:
    """Nothing renews the lease after `renewed`: the loop asks to be woken exactly when the
    fence falls (not up to a tick later), announces until then and is fenced after it."""
    fence = fence_time(driver.cfg)
    driver.tick()
    assert driver.wake_at is not None and driver.wake_at <= renewed + fence + 0.01
    driver.clock.now = renewed + fence - 0.01
    driver.tick()
    assert driver.announced() == {"10.0.0.1"}
    driver.clock.now = renewed + fence + 0.002
    driver.tick()
    assert driver.reason("10.0.0.1") == "fenced" and driver.announced() == set()


def test_withdraw_fences_once_no_stamp_was_echoed_for_the_fence_time() -> None:
    """Cut off: neither echoes nor reports. The fence falls fence_time after the newest
    echoed stamp, and the loop asks to be woken then."""
    driver = started(policy="withdraw")
    echoing(driver)
    run_echoed(driver, 2.0)
    driver.auto_commit = False
    fence_falls_on_time(driver, driver.info.confirmed)
    # An echo of a newer stamp lifts it.
    driver.info = replace(driver.info, confirmed=driver.clock.now - 0.1)
    driver.tick()
    assert driver.announced() == {"10.0.0.1"}


# --- quorum loss ----------------------------------------------------------------------------


def test_hold_keeps_what_was_announced_and_takes_nothing_new() -> None:
    driver = started()
    driver.auto_commit = False  # cut off: no report of ours commits any more
    driver.run(1.1)  # reach_time (connection_timeout, 1 s) after the last committed report
    assert not core.reachable(driver.loop, driver.clock.now)
    assert any("quorum lost: lease not renewed for" in m for m in driver.messages())
    # Its (stale) state gives 10.0.0.3 to lb1 too, in an entry applied as it was cut off:
    # quorum-less, it must not be taken.
    driver.update(
        heard=False,
        version=2,
        owners={**driver.state.owners, "10.0.0.3": Assignment("lb1", "x")},
    )
    driver.run(2.0)
    assert driver.reason("10.0.0.1") == "no_quorum_hold"
    assert driver.reason("10.0.0.3") == "no_quorum"
    assert driver.announced() == {"10.0.0.1"}
    assert driver.loop.quorum_lost_for > 1.9


def test_withdraw_fences_once_no_report_was_committed_for_the_fence_time() -> None:
    driver = started(policy="withdraw")
    driver.auto_commit = False  # reports stop committing: cut off from the group
    fence_falls_on_time(driver, driver.loop.reporting.renewed_at)
    assert driver.reason("10.0.0.1") == "fenced"
    # A committed report lifts the fence at once.
    driver.auto_commit = True
    driver.commit()
    driver.tick()
    assert driver.announced() == {"10.0.0.1"}


# --- reports --------------------------------------------------------------------------------


def test_reports_every_report_interval_and_retry_a_failed_one_at_once() -> None:
    driver = started()
    driver.auto_commit = False
    start = driver.clock.now
    driver.run(2.0)
    reports = [p for p in driver.proposals if isinstance(p.cmd, Report)]
    sent = [p.tag.sent for p in reports if isinstance(p.tag, core.ReportTag) and p.tag.sent > start]
    assert len(sent) == 4  # every 0.5 s
    driver.fail_pending()
    before = len(driver.proposals)
    driver.run(0.1)
    assert [p for p in driver.proposals[before:] if isinstance(p.cmd, Report)]


def test_reports_carry_rising_sequence_numbers_and_the_incarnation() -> None:
    driver = started()
    reports = [p.cmd for p in driver.proposals if isinstance(p.cmd, Report)]
    assert [r.seq for r in reports] == list(range(1, len(reports) + 1))
    assert {r.incarnation for r in reports} == {driver.loop.incarnation}
    assert driver.state.members["lb1"].seq == reports[-1].seq


# --- stopping -------------------------------------------------------------------------------


def test_sigterm_hands_over_then_withdraws_and_exits_zero() -> None:
    driver = started()
    driver.send(core.StopRequested("SIGTERM"))
    driver.auto_commit = False
    driver.tick()
    (leave,) = [p.cmd for p in driver.pending if isinstance(p.cmd, Expire)]
    assert leave.reason == "leaving" and leave.member == "lb1"
    assert driver.loop.exit_code is None and driver.announced() == {"10.0.0.1"}
    # The group applies the leave and moves 10.0.0.1 to lb2 with a handover.
    driver.commit()
    driver.update(
        version=5,
        owners={**driver.state.owners, "10.0.0.1": Assignment("lb2", "failover")},
        handovers={"10.0.0.1": "lb1"},
    )
    driver.tick()
    assert driver.loop.exit_code is None and "10.0.0.1" in driver.announced()
    driver.update(version=6, handovers={})  # lb2 confirmed
    driver.tick()
    assert driver.loop.exit_code == 0
    assert driver.announced() == set()
    assert "member=lb1 stopped: SIGTERM" in driver.messages()


def test_sigterm_withdraws_after_shutdown_timeout_without_a_confirmation() -> None:
    driver = started()
    driver.auto_commit = False
    driver.send(core.StopRequested("SIGTERM"))
    driver.run(driver.cfg.cluster.shutdown_timeout + 0.2)
    assert driver.loop.exit_code == 0
    assert driver.announced() == set()
    assert any("handover not confirmed within shutdown_timeout" in m for m in driver.messages())


def test_exabgp_gone_leaves_at_once_without_writing() -> None:
    driver = started()
    lines = len(driver.exabgp.lines)
    driver.send(core.StdinClosed())
    driver.tick()
    assert driver.loop.exit_code == 0
    assert len(driver.exabgp.lines) == lines  # nobody reads stdout any more
    assert driver.linger > 0  # the leave gets a moment to reach the leader
    assert any(isinstance(p.cmd, Expire) for p in driver.proposals)


def test_a_fatal_stop_exits_one() -> None:
    driver = started()
    driver.auto_commit = False
    driver.send(core.StopRequested("SIGTERM"))
    driver.send(core.StopRequested("cluster.state_dir: ... is full", fatal=True))
    driver.run(driver.cfg.cluster.shutdown_timeout + 0.2)
    assert driver.loop.exit_code == 1


# --- ExaBGP's stdin -------------------------------------------------------------------------


def test_stdin_events_are_logged_and_never_stop_the_loop() -> None:
    driver = started()
    for line in ["neighbor 127.0.0.1 up", "what is this", "error"]:
        driver.send(core.StdinLine(parse_stdin_line(line)))
    levels = {(r.level, r.message.split()[1].split("=")[0]) for r in driver.logs[-3:]}
    assert (logging.INFO, "neighbor") in levels
    assert (logging.WARNING, "unexpected") in levels
    assert (logging.ERROR, "rejected") in levels
    driver.run(0.3)
    assert driver.loop.exit_code is None and driver.reason("10.0.0.1") == "owner"


def test_shutdown_from_exabgp_stops_the_loop() -> None:
    driver = started()
    driver.send(core.StdinLine(parse_stdin_line("shutdown 123 1")))
    driver.tick()
    assert driver.loop.exit_code == 0


# --- pauses ---------------------------------------------------------------------------------


def expire_and_move(driver: LoopDriver, vip: str, to: str, heard: bool) -> None:
    """While lb1 was frozen, the group expired it and gave `vip` to `to` (`heard`: lb1 has
    applied that since it woke up)."""
    lb1 = replace(driver.state.members["lb1"], alive=False)
    driver.update(
        heard=heard,
        version=driver.state.version + 2,
        members={**driver.state.members, "lb1": lb1},
        owners={**driver.state.owners, vip: Assignment(to, "failover")},
    )


@pytest.mark.parametrize("policy", ["hold", "withdraw"])
def test_a_member_paused_past_its_lease_that_wakes_up_cut_off_withdraws_until_heard(
    policy: str,
) -> None:
    driver = started(policy=policy)
    assert driver.announced() == {"10.0.0.1"}
    driver.pause(driver.cfg.cluster.lease + 0.5)
    expire_and_move(driver, "10.0.0.1", "lb2", heard=False)
    # It wakes up cut off from the group: its view is stale, nothing it proposes commits.
    driver.auto_commit = False
    driver.tick()
    assert driver.announced() == set()  # at once, before hearing from anyone
    assert driver.reason("10.0.0.1") == "resuming"
    assert any("was paused for 2.0s" in m for m in driver.messages())
    driver.run(3.0)  # the partition lasts: still nothing
    assert driver.announced() == set()
    assert set(driver.reasons().values()) == {"resuming"}
    # The partition heals: the group commits a report sent after the pause.
    driver.auto_commit = True
    driver.run(0.3)
    assert "member=lb1 is back in the group after a pause" in driver.messages()
    assert driver.reason("10.0.0.1") == "not_owner"  # lb2 has it now
    assert driver.reason("10.0.0.3") == "owner"  # placed on lb1 when it rejoined
    assert driver.announced() == {"10.0.0.3"}


def test_a_member_whose_reports_commit_follows_the_log_whatever_its_links() -> None:
    """Quorum is judged by what is committed, not by pysyncobj's count of open links: with 5
    members, M keeps its link to the leader only (has_quorum False for pysyncobj) but its
    reports still commit, so it must follow the log: give up what moved, take what it gets."""
    driver = started()
    driver.info = replace(READY, has_quorum=False, connected=frozenset({"lb2"}))
    driver.run(2.0)  # reports keep committing through the leader
    assert driver.reason("10.0.0.1") == "owner"
    # `raftvip drain lb1` elsewhere: 10.0.0.1 moves to lb3 (make before break, then confirmed)
    driver.update(
        version=2,
        owners={**driver.state.owners, "10.0.0.1": Assignment("lb3", "failover")},
        handovers={"10.0.0.1": "lb1"},
    )
    driver.run(0.2)
    assert driver.reason("10.0.0.1") == "handover"
    driver.update(version=3, handovers={})
    driver.run(0.2)
    assert driver.reason("10.0.0.1") == "not_owner"
    # and a VIP the group places on it is announced
    driver.update(version=4, owners={**driver.state.owners, "10.0.0.3": Assignment("lb1", "x")})
    driver.run(0.2)
    assert driver.announced() == {"10.0.0.3"}


def test_the_lease_is_renewed_by_what_the_state_shows_not_by_callbacks() -> None:
    """A commit callback can be lost (pysyncobj never calls it for an entry that arrived in a
    snapshot) and a committed report can be ignored as stale: the state says what counted."""
    cfg = make_config(policy="withdraw")
    driver = LoopDriver(cfg, group_state())
    driver.set_health("apex", "up")
    driver.run(1.0)
    driver.auto_commit = False
    for _ in range(30):  # 3 s: the state shows every report, no callback ever comes
        driver.clock.advance(core.TICK)
        driver.tick()
        while driver.pending:
            driver.state = apply(driver.state, driver.pending.pop(0).cmd)
    assert driver.announced() == {"10.0.0.1"}
    assert driver.reason("10.0.0.1") == "owner"
    # callbacks say "committed" but the state does not show the reports: fenced
    for _ in range(10):
        driver.clock.advance(core.TICK)
        driver.tick()
        for proposal in driver.pending:
            if proposal.tag is not None:
                driver.send(core.ProposalDone(proposal.tag, 0))
        driver.pending.clear()
    assert driver.reason("10.0.0.1") == "fenced"


def test_a_pause_shorter_than_the_lease_but_long_enough_to_be_expired_is_fenced() -> None:
    """The leader expires a frozen member by its dropped link (connection_timeout + grace,
    ~1.03 s) before its lease (1.5 s): a 1.1 s pause must fence too."""
    driver = started()
    assert pause_time(driver.cfg) == pytest.approx(0.85)
    driver.pause(1.1)
    expire_and_move(driver, "10.0.0.1", "lb2", heard=False)
    driver.auto_commit = False
    driver.tick()
    assert driver.reason("10.0.0.1") == "resuming"
    assert driver.announced() == set()


def test_the_loop_s_own_cadence_is_not_a_pause() -> None:
    driver = started()
    driver.run(3.0, step=0.5)  # a slow loop (GC, a busy host): still below pause_time
    assert not any("was paused" in m for m in driver.messages())
    assert driver.reason("10.0.0.1") == "owner"


def test_a_late_ack_of_an_announce_that_was_withdrawn_since_confirms_nothing() -> None:
    """announce v, withdraw v, announce v again (a handover to us) before ExaBGP acks: the
    `done` of the first announce must not let us confirm v while the third is in flight (the
    old owner would withdraw before ExaBGP carries our route)."""
    driver = started()
    driver.auto_ack = False
    driver.update(version=2, owners={**driver.state.owners, "10.0.0.3": Assignment("lb1", "x")})
    driver.tick()  # announce 10.0.0.3
    driver.update(version=3, owners={**driver.state.owners, "10.0.0.3": Assignment("lb2", "x")})
    driver.tick()  # withdraw 10.0.0.3
    driver.update(
        version=4,
        owners={**driver.state.owners, "10.0.0.3": Assignment("lb1", "rebalance")},
        handovers={"10.0.0.3": "lb2"},
    )
    driver.tick()  # announce 10.0.0.3 again, lb2 keeps it until we confirm
    assert driver.exabgp.unacked == 3
    driver.send(core.StdinLine(driver.exabgp.acks(1)[0]))  # the first announce's `done`
    driver.tick()
    assert "10.0.0.3" not in driver.loop.pipe.acked
    assert not [p for p in driver.proposals if isinstance(p.cmd, Confirm)]
    for ack in driver.exabgp.acks():  # the withdraw's and the new announce's
        driver.send(core.StdinLine(ack))
    driver.tick()
    (confirm,) = [p.cmd for p in driver.proposals if isinstance(p.cmd, Confirm)]
    assert confirm.vips == ("10.0.0.3",)


def test_a_rejected_announce_is_not_acked() -> None:
    driver = started()
    driver.auto_ack = False
    driver.update(
        version=2,
        owners={**driver.state.owners, "10.0.0.2": Assignment("lb1", "rebalance")},
        handovers={"10.0.0.2": "lb2"},
    )
    driver.tick()
    driver.send(core.StdinLine(parse_stdin_line("error")))
    driver.tick()
    assert "10.0.0.2" not in driver.loop.pipe.acked
    assert not [p for p in driver.proposals if isinstance(p.cmd, Confirm)]


def test_a_clock_stepped_back_across_a_restart_does_not_keep_the_member_out() -> None:
    """The incarnation comes from the wall clock at start: stepped back across a restart, it
    is older than the one the group saw last, and every report would be ignored as stale."""
    state = group_state()
    before = replace(state.members["lb1"], incarnation=5_000, seq=40, alive=False)
    driver = LoopDriver(
        make_config(), replace(state, members={**state.members, "lb1": before}), incarnation=10
    )
    driver.set_health("apex", "up")
    driver.run(1.0)
    me = driver.state.members["lb1"]
    assert me.alive and me.incarnation == 5_001
    assert driver.loop.incarnation == 5_001
    assert any("newer than ours (10)" in m for m in driver.messages())
    assert driver.reason("10.0.0.1") == "owner"  # back in the group
    assert driver.announced() == {"10.0.0.1"}


def test_a_report_ignored_as_stale_does_not_renew_the_lease_on_the_leader() -> None:
    state = group_state()
    book = LeaderBook(started_at=0.0)
    stale = encode_command(Report(1.0, "lb2", 0, 0, {"apex": True}))  # (0, 0): not newer
    new, book2, _ = apply_entry(state, book, stale, 7, now=50.0)
    assert new is state and "lb2" not in book2.report_applied
    fresh = encode_command(Report(1.0, "lb2", 0, 1, {"apex": True}))
    _, book3, _ = apply_entry(state, book, fresh, 8, now=50.0)
    assert book3.report_applied["lb2"] == 50.0 and book3.lease_seen["lb2"] == 50.0


def test_a_member_that_hears_the_leader_follows_the_log_even_before_its_report_commits() -> None:
    """Back from a partition (hold), the member applies the entries it missed before its own
    report commits: it must give up what the group moved away at once, not hold it."""
    driver = started()
    driver.auto_commit = False
    driver.run(1.5)  # cut off
    assert driver.reason("10.0.0.1") == "no_quorum_hold"
    # It hears the leader again: the log says the group expired it and moved its VIP.
    expire_and_move(driver, "10.0.0.1", "lb2", heard=True)
    driver.tick()
    assert driver.reason("10.0.0.1") == "not_owner"
    assert driver.announced() == set()


def _reason_scenario(reason: str) -> tuple[LoopDriver, str]:
    """A driver brought to a state where VIP 10.0.0.x is decided for `reason`."""
    if reason == "starting":
        return LoopDriver(make_config(), group_state(), info=replace(READY, ready=False)), "1"
    if reason == "backup":
        driver = LoopDriver(make_config(services=[service(backup_prepend=1)]), group_state())
        driver.set_health("apex", "up")
        driver.run(0.5)
        return driver, "2"
    driver = started(policy="withdraw" if reason == "fenced" else "hold")
    if reason == "left":
        driver.send(core.LeaveRequested())
        driver.run(driver.cfg.cluster.shutdown_timeout + 0.5)  # nobody takes over here
    elif reason == "resuming":
        driver.pause(1.0)
        driver.auto_commit = False
    elif reason in ("disabled", "unhealthy"):
        driver.set_health("apex", "disabled" if reason == "disabled" else "down")
    elif reason == "maintenance":
        driver.update(version=2, maintenance=frozenset({"apex"}))
    elif reason == "fenced":
        driver.auto_commit = False
        driver.run(1.0)
    elif reason in ("no_quorum_hold", "no_quorum"):
        driver.auto_commit = False
        driver.run(1.2)
        return driver, "1" if reason == "no_quorum_hold" else "3"
    elif reason in ("owner", "not_owner", "unowned"):
        return driver, {"owner": "1", "not_owner": "2", "unowned": "3"}[reason]
    elif reason == "handover":
        driver.update(
            version=2,
            owners={**driver.state.owners, "10.0.0.1": Assignment("lb2", "rebalance")},
            handovers={"10.0.0.1": "lb1"},
        )
    elif reason == "drained":
        lb1 = replace(driver.state.members["lb1"], drained=True)
        driver.update(version=2, members={**driver.state.members, "lb1": lb1})
    return driver, "1"


@pytest.mark.parametrize("reason", REASONS)
def test_every_decision_reason_is_reached_in_process(reason: str) -> None:
    driver, vip = _reason_scenario(reason)
    driver.tick()
    assert driver.reason(f"10.0.0.{vip}") == reason
    announced = f"10.0.0.{vip}" in driver.announced()
    assert announced == (reason in ("owner", "handover", "backup", "no_quorum_hold"))


# --- raftvip leave ---------------------------------------------------------------------------


def test_leave_hands_over_then_withdraws_and_stays_out_without_exiting() -> None:
    driver = started()
    driver.send(core.LeaveRequested())
    driver.auto_commit = False
    driver.tick()
    (leave,) = [p.cmd for p in driver.pending if isinstance(p.cmd, Expire)]
    assert leave.reason == "leaving"
    driver.commit()  # lb1 is not alive any more; the group moves 10.0.0.1 with a handover
    driver.update(
        version=5,
        owners={**driver.state.owners, "10.0.0.1": Assignment("lb2", "failover")},
        handovers={"10.0.0.1": "lb1"},
    )
    driver.tick()
    assert driver.announced() == {"10.0.0.1"} and not driver.loop.left  # make before break
    driver.update(version=6, handovers={})  # lb2 confirmed
    driver.tick()
    assert driver.loop.left and driver.loop.exit_code is None
    assert driver.loop.leave_outcome == "handed over"
    assert driver.announced() == set()
    before = len(driver.proposals)
    driver.auto_commit = True
    driver.run(3.0)  # no report: it would make this member alive again
    assert not [p for p in driver.proposals[before:] if isinstance(p.cmd, Report)]
    assert set(driver.reasons().values()) == {"left"}
    # ExaBGP stops next (systemd): the member exits at once, nothing left to withdraw.
    lines = len(driver.exabgp.lines)
    driver.send(core.StopRequested("SIGTERM"))
    driver.tick()
    assert driver.loop.exit_code == 0 and len(driver.exabgp.lines) == lines


def test_a_leave_that_the_group_does_not_take_withdraws_and_says_so() -> None:
    driver = started()
    driver.auto_commit = False
    driver.send(core.LeaveRequested())
    driver.run(driver.cfg.cluster.shutdown_timeout + 0.5)
    assert driver.loop.left and driver.announced() == set()
    assert driver.loop.leave_outcome is not None
    assert "without a handover" in driver.loop.leave_outcome


def test_a_stop_during_a_leave_exits_once_handed_over() -> None:
    driver = started()
    driver.auto_commit = False
    driver.send(core.LeaveRequested())
    driver.tick()
    driver.send(core.StopRequested("SIGTERM"))
    driver.run(driver.cfg.cluster.shutdown_timeout + 0.5)
    assert driver.loop.exit_code == 0 and not driver.loop.left


# --- raftvip restart -------------------------------------------------------------------------


def test_restart_flags_the_member_then_exits_without_withdrawing() -> None:
    driver = started()
    lines = len(driver.exabgp.lines)
    driver.send(core.RestartRequested())
    driver.tick()
    (flag,) = [p.cmd for p in driver.proposals if isinstance(p.cmd, SetRestarting)]
    assert flag.member == "lb1" and flag.incarnation == driver.loop.incarnation
    # (auto_commit applied it) the state shows the flag: exit, routes left to ExaBGP
    driver.tick()
    assert driver.loop.exit_code == 0
    assert len(driver.exabgp.lines) == lines and driver.announced() == {"10.0.0.1"}
    assert driver.restart_until is not None
    assert driver.restart_until > driver.clock.wall() + 5.0


def test_restart_is_refused_without_the_group() -> None:
    driver = started()
    driver.auto_commit = False
    driver.run(1.5)  # cut off: nobody would keep this member's VIPs
    driver.send(core.RestartRequested())
    driver.tick()
    assert driver.loop.restart is not None and driver.loop.restart[0].startswith("refused")
    assert driver.loop.exit_code is None


def test_a_restart_flag_that_does_not_commit_leaves_the_member_running() -> None:
    driver = started()
    driver.auto_commit = False
    driver.send(core.RestartRequested())
    driver.run(1.0)
    assert driver.loop.exit_code is None
    assert driver.loop.restart is not None and "did not commit" in driver.loop.restart[0]


def restarted_state(owner_of_1: str = "lb1") -> ClusterState:
    state = group_state(owners={"10.0.0.1": Assignment(owner_of_1, "preferred")})
    lb1 = replace(state.members["lb1"], incarnation=1, seq=30, restarting=True)
    return replace(state, members={**state.members, "lb1": lb1})


@pytest.mark.parametrize("policy", ["hold", "withdraw"])
def test_the_next_process_takes_over_the_routes_without_a_withdraw(policy: str) -> None:
    cfg = make_config(policy=policy)  # type: ignore[arg-type]
    clock = FakeClock()
    driver = LoopDriver(
        cfg,
        restarted_state(),
        info=replace(READY, ready=False),
        clock=clock,
        incarnation=2,
        restart_until=clock.wall() + 9.0,
    )
    assert driver.exabgp.lines == []  # no withdraw-all at start: ExaBGP keeps the routes
    driver.set_health("apex", "up")
    driver.run(0.3)
    assert driver.exabgp.lines == []  # nothing before it has caught up
    driver.info = READY
    driver.tick()  # caught up: it reports; once that commits it is in touch and resyncs
    driver.tick()
    assert driver.exabgp.lines[-1].startswith("announce route 10.0.0.1/32")
    assert {line.split()[0] for line in driver.exabgp.lines} == {"withdraw", "announce"}
    assert not any(line.startswith("withdraw route 10.0.0.1/") for line in driver.exabgp.lines)
    assert driver.reason("10.0.0.1") == "owner"  # withdraw: not fenced, the group keeps it
    driver.run(1.0)
    me = driver.state.members["lb1"]
    assert me.incarnation == 2 and not me.restarting  # its first report cleared the flag


def test_a_restart_note_that_is_too_old_withdraws_everything() -> None:
    clock = FakeClock()
    driver = LoopDriver(
        make_config(),
        restarted_state(),
        info=replace(READY, ready=False),
        clock=clock,
        incarnation=2,
        restart_until=clock.wall() + 0.5,
    )
    driver.run(0.6)
    assert driver.exabgp.lines == [f"withdraw route {v}/32 next-hop self" for v in VIPS]


# --- an ExaBGP that does not take the classic API (ExaBGP 6 without exabgp_api_version=4) ----


def test_an_error_for_the_first_route_command_stops_with_the_fix_and_exit_one() -> None:
    rejecting = FakeExabgp()
    rejecting.reject = True  # ExaBGP 6: `error` for every command, the start-up withdraws too
    driver = LoopDriver(make_config(), group_state(), exabgp=rejecting)
    written = list(driver.exabgp.lines)
    assert written == [f"withdraw route {v}/32 next-hop self" for v in VIPS]
    driver.set_health("apex", "up")
    driver.run(2.0)
    assert driver.loop.exit_code == 1
    fatal = [r.message for r in driver.logs if r.level == logging.CRITICAL]
    assert len(fatal) == 1  # said once, clearly; not once per rejected command
    assert "exabgp_api_version=4" in fatal[0] and "exabgp>=5,<6" in fatal[0]
    assert "'withdraw route 10.0.0.1/32 next-hop self'" in fatal[0]
    # Nothing more was written to an ExaBGP that refuses it, and the group was not joined.
    assert driver.exabgp.lines == written
    assert not [p for p in driver.proposals if isinstance(p.cmd, Report)]
    assert any("stopped: ExaBGP rejected the classic API" in m for m in driver.messages())


def test_an_error_after_exabgp_accepted_a_command_is_only_logged() -> None:
    driver = started()  # the start-up withdraws were acked `done`
    driver.exabgp.reject = True
    driver.update(version=2, owners={**driver.state.owners, "10.0.0.3": Assignment("lb1", "x")})
    driver.run(0.5)
    assert driver.loop.exit_code is None
    assert any(
        "exabgp rejected command='announce route 10.0.0.3/32" in m for m in driver.messages()
    )
    assert not [r for r in driver.logs if r.level == logging.CRITICAL]


def test_a_rejected_ipv6_next_hop_self_does_not_count_as_the_wrong_api() -> None:
    """ExaBGP 5 answers `error` to an IPv6 route with `next-hop self` over an IPv4 session
    (a config problem that check-config reports): the next route command decides."""
    cfg = make_config(services=[service(vips=("2001:db8::1", "10.0.0.1"))])
    loop, effects = core.start(cfg, 1)
    assert effects.lines == (
        "withdraw route 2001:db8::1/128 next-hop self",
        "withdraw route 10.0.0.1/32 next-hop self",
    )
    error, done = (
        core.StdinLine(parse_stdin_line("error")),
        core.StdinLine(parse_stdin_line("done")),
    )
    after_v6, _ = core.step(loop, error, 0.0)
    assert after_v6.stop == core.Stopping()
    # ExaBGP 5: the IPv4 withdraw is acked `done`; later errors are only logged.
    accepted, _ = core.step(after_v6, done, 0.0)
    later, effects = core.step(accepted, error, 0.0)
    assert later.stop == core.Stopping() and effects.logs[0].level == logging.ERROR
    # The wrong API: the IPv4 withdraw is refused too, and that one tells.
    refused, effects = core.step(after_v6, error, 0.0)
    assert refused.stop.fatal and refused.stop.exabgp_gone
    (fatal,) = [r.message for r in effects.logs if r.level == logging.CRITICAL]
    assert "'withdraw route 10.0.0.1/32 next-hop self'" in fatal


def test_json_events_act_as_the_text_ones() -> None:
    shutdown = (
        '{ "exabgp": "5.0.0", "time": 1.5, "host" : "vm", "pid" : 3085, "ppid" : 3058, '
        '"type": "notification", "notification": "shutdown" }'
    )
    driver = started()
    update = '{ "exabgp": "5.0.0", "time": 1.5, "type": "update", "neighbor": { } }'
    driver.send(core.StdinLine(parse_stdin_line(update)))
    assert (logging.DEBUG, f"exabgp ignored stdin line={update!r}") in {
        (r.level, r.message) for r in driver.logs
    }
    assert not [r for r in driver.logs if r.level >= logging.WARNING]
    driver.send(core.StdinLine(parse_stdin_line(shutdown)))
    driver.tick()
    assert driver.loop.exit_code == 0
    assert "member=lb1 stopped: ExaBGP shutdown" in driver.messages()


# --- found by the simulator (python -m tests.sim --seeds 10000) -----------------------------


def test_a_failed_report_is_retried_when_the_loop_wakes_at_its_own_wake_time() -> None:
    """The shell sleeps until `wake_at`; a retry due at exactly last_at + TICK must not be
    missed by a float rounding (seed 8628: no retry until the fence fell 0.5 s later)."""
    missed = []
    for start in (1000.0, 5.594849046391975, 123.456789, 0.3, 77.7, 1234.5678, 42.42):
        driver = LoopDriver(make_config(), group_state(), clock=FakeClock(start))
        driver.set_health("apex", "up")
        driver.run(1.0)
        driver.auto_commit = False
        while not any(isinstance(p.cmd, Report) for p in driver.pending):
            driver.run(0.1)  # until a report goes out
        driver.fail_pending()  # its leader changed at once
        before = len(driver.proposals)
        driver.tick()  # too early to retry: the loop asks to be woken for it
        assert len(driver.proposals) == before
        assert driver.wake_at is not None
        driver.clock.now = driver.wake_at
        driver.tick()
        if not [p for p in driver.proposals[before:] if isinstance(p.cmd, Report)]:
            missed.append(start)
    assert missed == []


def test_a_restarting_member_keeps_its_routes_while_its_flag_holds_though_nothing_commits() -> None:
    """`raftvip restart` on the leader: it hands leadership over, an election follows and
    nothing commits for a while. No leader expires a member whose restart flag it applied
    before RESTART_DEADLINE, so the fence must not withdraw what the next process takes over
    (seed 6995: a gap of the restarting member's VIPs)."""
    driver = started(policy="withdraw")
    driver.info = replace(driver.info, is_leader=True)
    driver.auto_commit = False
    driver.run(0.4)  # reports stop committing
    renewed = driver.loop.reporting.renewed_at
    driver.send(core.RestartRequested())
    driver.tick()
    driver.pending = [p for p in driver.pending if isinstance(p.cmd, SetRestarting)]
    driver.commit()  # only the flag commits
    fence_at = renewed + fence_time(driver.cfg)
    passed_fence = False
    while driver.loop.exit_code is None:
        driver.clock.advance(0.05)
        driver.tick()
        passed_fence = passed_fence or driver.clock.now > fence_at
        assert driver.announced() == {"10.0.0.1"}, driver.reasons()
    assert passed_fence  # the fence time went by while the member waited for the hand-over
    assert driver.loop.exit_code == 0


def test_a_restart_during_a_handover_waits_for_it_then_withdraws_what_is_left() -> None:
    """Seed 4433: the restarting member exited while handing a VIP over; its ExaBGP kept that
    route beside the new owner's until the next process came up."""
    driver = started()
    hand_over_to_lb2(driver)
    driver.tick()
    assert driver.reason("10.0.0.1") == "handover"
    driver.send(core.RestartRequested())
    driver.run(core.RESTART_HANDOVER_WAIT - 0.2)
    assert driver.loop.exit_code is None  # waits for lb2's confirmation
    assert "10.0.0.1" in driver.announced()
    driver.run(0.4)
    assert driver.loop.exit_code == 0
    assert driver.announced() == set()  # not confirmed in time: withdrawn before the exit
    assert any("not confirmed before the restart" in m for m in driver.messages())


def test_a_restart_during_a_confirmed_handover_exits_without_its_route() -> None:
    driver = started()
    hand_over_to_lb2(driver)
    driver.tick()
    driver.send(core.RestartRequested())
    driver.run(0.3)
    assert driver.loop.exit_code is None
    driver.update(handovers={})  # lb2's Confirm committed
    driver.run(0.3)
    assert driver.loop.exit_code == 0
    assert driver.announced() == set()
    assert not any("not confirmed" in m for m in driver.messages())


# --- reload ---------------------------------------------------------------------------------

RELOAD_STATE_VIPS = {
    "apex": ("10.0.0.1", "10.0.0.2", "10.0.0.4", "10.0.0.5"),
    "web": ("10.0.1.1",),
    "dns": ("10.0.2.1",),
}
RELOAD_PREFERRED = {
    "10.0.0.1": "lb1",
    "10.0.0.2": "lb2",
    "10.0.0.4": "lb1",
    "10.0.0.5": "lb1",
    "10.0.1.1": "lb1",
    "10.0.2.1": "lb1",
}


def reload_state() -> ClusterState:
    """The group's layout (the leader's) has every VIP of the old and the new config of lb1,
    each on its preferred owner; every member is healthy for every service."""
    services = tuple(
        ServiceSpec(name, vips, {v: RELOAD_PREFERRED[v] for v in vips})
        for name, vips in RELOAD_STATE_VIPS.items()
    )
    healthy = dict.fromkeys(RELOAD_STATE_VIPS, True)
    return group_state(
        services=services,
        members={name: member(name, incarnation=0, healthy=healthy) for name in ADDRESSES},
        owners={v: Assignment(m, "preferred") for v, m in RELOAD_PREFERRED.items()},
    )


def reload_config(
    apex: tuple[str, ...] = ("10.0.0.1", "10.0.0.2", "10.0.0.4"),
    web_med: int = 100,
    apex_check: str | None = "true",
    dns: bool | None = None,
    web: bool = True,
) -> Config:
    """lb1's config: apex (checked by `apex_check`, None: no check) and web; `dns`: also a
    service dns, checked (True) or not (False)."""
    apex_service = service("apex", apex, checked=apex_check is not None)
    if apex_check is not None:
        apex_service = replace(apex_service, check=replace(apex_service.check, target=apex_check))
    services = [apex_service]
    if web:
        web_service = service("web", ("10.0.1.1",))
        services.append(replace(web_service, announce=replace(web_service.announce, med=web_med)))
    if dns is not None:
        services.append(service("dns", ("10.0.2.1",), checked=dns))
    return make_config(services=services)


def reload_started(cfg: Config | None = None) -> LoopDriver:
    driver = LoopDriver(cfg or reload_config(), reload_state())
    for name in driver.loop.health:
        driver.set_health(name, "up")
    driver.run(1.0)
    return driver


def test_a_reload_withdraws_removed_vips_and_re_announces_changed_ones_in_place() -> None:
    driver = reload_started()
    assert driver.announced() == {"10.0.0.1", "10.0.0.4", "10.0.1.1"}
    before = len(driver.exabgp.lines)
    effects = driver.send(
        core.Reloaded(reload_config(apex=("10.0.0.1", "10.0.0.2", "10.0.0.5"), web_med=200))
    )
    assert effects.wake_at == driver.clock.now  # at once, not at the next idle wake-up
    assert effects.lines == ()  # the lines come with the next Tick
    driver.tick()
    assert driver.exabgp.lines[before:] == [
        "withdraw route 10.0.0.4/32 next-hop self",
        "announce route 10.0.0.5/32 next-hop self med 100 community [ 65001:100 ]",
        # The new MED replaces the old path (BGP implicit withdraw): no withdraw before it.
        "announce route 10.0.1.1/32 next-hop self med 200 community [ 65001:100 ]",
    ]
    assert driver.announced() == {"10.0.0.1", "10.0.0.5", "10.0.1.1"}
    assert driver.loop.cfg.service_of("10.0.0.4") is None
    assert "10.0.0.4" not in driver.reasons()
    driver.run(1.0)
    # 10.0.0.1 was never touched: announced once, at start-up, and never withdrawn since.
    assert [line for line in driver.exabgp.lines if "10.0.0.1/" in line] == [
        "withdraw route 10.0.0.1/32 next-hop self",
        "announce route 10.0.0.1/32 next-hop self med 100 community [ 65001:100 ]",
    ]
    assert any("config reloaded: 3 changes" in m for m in driver.messages())


def test_a_reload_that_changes_nothing_the_routes_carry_writes_nothing() -> None:
    driver = reload_started()
    before = len(driver.exabgp.lines)
    driver.send(core.Reloaded(reload_config(apex_check="true && true")))
    driver.run(1.0)
    assert driver.exabgp.lines[before:] == []
    assert driver.announced() == {"10.0.0.1", "10.0.0.4", "10.0.1.1"}


def test_a_changed_check_keeps_the_service_s_health_until_its_new_checker_decides() -> None:
    driver = reload_started()
    driver.auto_commit = False
    reports = len([p for p in driver.proposals if isinstance(p.cmd, Report)])
    driver.send(core.Reloaded(reload_config(apex_check="test -f /run/apex.ok")))
    driver.tick()
    assert driver.loop.health == {"apex": "up", "web": "up"}
    assert driver.reason("10.0.0.1") == "owner" and "10.0.0.1" in driver.announced()
    # Health unchanged: no extra report.
    assert len([p for p in driver.proposals if isinstance(p.cmd, Report)]) == reports
    driver.set_health("apex", "down")  # the new checker's verdict
    driver.tick()
    assert driver.reason("10.0.0.1") == "unhealthy"
    assert driver.announced() == {"10.0.1.1"}


def test_a_check_removed_by_a_reload_leaves_the_service_always_up() -> None:
    driver = reload_started()
    driver.auto_commit = False  # the group keeps the VIPs on lb1 meanwhile
    driver.set_health("apex", "down")
    driver.tick()
    assert "10.0.0.1" not in driver.announced()
    driver.send(core.Reloaded(reload_config(apex_check=None)))
    driver.tick()
    assert driver.loop.health["apex"] == "up"
    assert {"10.0.0.1", "10.0.0.4"} <= driver.announced()


@pytest.mark.parametrize(("checked", "health"), [(True, "down"), (False, "up")])
def test_an_added_service_starts_at_the_health_start_gives_it(checked: bool, health: str) -> None:
    driver = reload_started()
    driver.auto_commit = False
    driver.send(core.Reloaded(reload_config(dns=checked)))
    driver.tick()
    assert driver.loop.health == {"apex": "up", "web": "up", "dns": health}
    assert core.start(reload_config(dns=checked), 1)[0].health["dns"] == health
    # The group hears about the new service in the next report, at once.
    report = [p.cmd for p in driver.pending if isinstance(p.cmd, Report)][-1]
    assert report.health == {"apex": True, "web": True, "dns": health == "up"}
    # The group gives lb1 its preferred VIP of dns (after that report and preempt_delay).
    owners = {**driver.state.owners, "10.0.2.1": Assignment("lb1", "preferred")}
    driver.update(version=driver.state.version + 1, owners=owners)
    driver.tick()
    assert driver.reason("10.0.2.1") == ("owner" if health == "up" else "unhealthy")
    assert ("10.0.2.1" in driver.announced()) == (health == "up")
    if checked:
        driver.set_health("dns", "up")
        driver.tick()
        assert "10.0.2.1" in driver.announced()


def test_a_removed_service_is_withdrawn_and_its_late_health_verdicts_are_ignored() -> None:
    driver = reload_started()
    driver.send(core.Reloaded(reload_config(web=False)))
    driver.tick()
    assert driver.loop.health == {"apex": "up"}
    assert driver.announced() == {"10.0.0.1", "10.0.0.4"}
    effects = driver.send(core.HealthChanged("web", "down", "queued before the reload"))
    assert effects == core.NO_EFFECTS
    assert driver.loop.health == {"apex": "up"}
