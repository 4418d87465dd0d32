"""The leader's duties (raftvip/core/leader.py): pure, with a fake clock."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from raftvip.config import Config
from raftvip.core.leader import (
    FORM_GRACE,
    RESTART_DEADLINE,
    LeaderBook,
    leader_tick,
    report_applied,
    service_specs,
    snapshot_loaded,
)
from raftvip.core.liveness import ECHO_RTT
from raftvip.core.placement import Assignment
from raftvip.core.state import ClusterState, Configure, Expire, Form, MemberState
from raftvip.testing.config import make_config

ADDRESSES = {"lb1": "127.0.0.11:7801", "lb2": "127.0.0.12:7801", "lb3": "127.0.0.13:7801"}


def group(cfg: Config) -> ClusterState:
    return ClusterState(
        version=1,
        services=service_specs(cfg),
        addresses=ADDRESSES,
        members={n: MemberState(n, alive=True, incarnation=1, seq=5) for n in ADDRESSES},
        owners={"10.0.0.2": Assignment("lb2", "sticky")},
    )


def tick(
    book: LeaderBook,
    cfg: Config,
    state: ClusterState,
    now: float,
    leader: bool,
    alive: dict[str, float] | None = None,
    prior: float | None = None,
    **links: bool,
) -> tuple[LeaderBook, list[Expire]]:
    book, effects = leader_tick(
        book,
        cfg,
        service_specs(cfg),
        state,
        is_leader=leader,
        term=2,
        links={"lb2": True, "lb3": True, **links},
        now=now,
        wall=now + 1e9,
        alive=alive,
        prior_contact=prior,
    )
    return book, [c for c in effects.proposals if isinstance(c, Expire)]


def expiries_until(
    book: LeaderBook,
    cfg: Config,
    state: ClusterState,
    start: float,
    end: float,
    alive: dict[str, float] | None = None,
    prior: float | None = None,
    **links: bool,
) -> list[tuple[float, str, str]]:
    found = []
    now = start
    while now <= end:
        book, expires = tick(book, cfg, state, now, True, alive, prior, **links)
        found += [(round(now - start, 2), e.member, e.reason) for e in expires]
        now += 0.01
    return found


def test_a_new_leader_grants_every_member_a_fresh_lease_then_expires_by_lease() -> None:
    cfg = make_config()
    state = group(cfg)
    book = LeaderBook(started_at=0.0)
    found = expiries_until(book, cfg, state, 100.0, 102.0)
    # Nobody reports in this test: every peer's lease (1.5 s) runs out, granted at 100.0.
    assert [(m, r) for _, m, r in found[:3]] == [
        ("lb1", "lease"),
        ("lb2", "lease"),
        ("lb3", "lease"),
    ]
    assert found[0][0] == pytest.approx(1.51, abs=0.011)


def test_a_dropped_link_expires_fast_once_the_grace_has_passed() -> None:
    cfg = make_config()
    state = group(cfg)
    book, _ = tick(LeaderBook(started_at=0.0), cfg, state, 100.0, True)
    book = report_applied(book, "lb2", 100.0)
    found = expiries_until(book, cfg, state, 100.5, 101.0, lb2=False)
    assert found[0][1:] == ("lb2", "disconnect")
    assert found[0][0] == pytest.approx(cfg.raft.disconnect_grace, abs=0.011)


def test_withdraw_a_link_dropped_before_leading_waits_for_the_member_s_fence() -> None:
    """The member may have renewed its lease through the old leader since: a report of it
    (applied here at 99.8) or a heartbeat stamp that the old leader echoed, no later than
    ECHO_RTT after our voters last heard that leader (99.7, `prior`). Wait until
    connection_timeout after the later of the two."""
    cfg = make_config(policy="withdraw")
    state = group(cfg)
    book, _ = tick(LeaderBook(started_at=0.0), cfg, state, 99.0, False)  # links seen up
    book = report_applied(book, "lb2", 99.8)
    book, _ = tick(book, cfg, state, 99.9, False, lb2=False)  # the drop, while a follower
    found = expiries_until(book, cfg, state, 100.0, 101.5, prior=99.7, lb2=False)
    assert found[0][1:] == ("lb2", "disconnect")
    assert 99.8 + cfg.raft.connection_timeout <= 100.0 + found[0][0] < 99.8 + 1.02
    # An old leader heard until 99.9: its echoes may reach 99.9 + ECHO_RTT.
    found = expiries_until(book, cfg, state, 100.0, 101.5, prior=99.9, lb2=False)
    bound = 99.9 + ECHO_RTT + cfg.raft.connection_timeout
    assert bound <= 100.0 + found[0][0] < bound + 0.02


def test_withdraw_without_a_bound_from_the_votes_a_dropped_link_waits_from_the_election() -> None:
    """A voter of an older build does not say when it last heard a leader (`prior` None):
    an earlier leader's echoes may then reach ECHO_RTT past our own election."""
    cfg = make_config(policy="withdraw")
    state = group(cfg)
    book, _ = tick(LeaderBook(started_at=0.0), cfg, state, 99.0, False)
    book = report_applied(book, "lb2", 99.5)
    book, _ = tick(book, cfg, state, 99.9, False, lb2=False)
    found = expiries_until(book, cfg, state, 100.0, 101.5, lb2=False)
    assert found[0][1:] == ("lb2", "disconnect")
    bound = 100.0 + ECHO_RTT + cfg.raft.connection_timeout
    assert bound <= 100.0 + found[0][0] < bound + 0.02


def test_withdraw_a_drop_early_in_a_leadership_may_be_a_one_way_cut() -> None:
    """lb2's packets to us are dropped while lb2 still renews through the old leader: our
    link to it closes connection_timeout into our leadership, yet its fence may stand until
    connection_timeout after the old leader was last heard. After that the fast path."""
    cfg = make_config(policy="withdraw")
    state = group(cfg)
    book, _ = tick(LeaderBook(started_at=0.0), cfg, state, 99.0, False)
    book, _ = tick(book, cfg, state, 100.0, True, prior=99.95)  # elected; links up
    found = expiries_until(book, cfg, state, 100.5, 102.0, prior=99.95, lb2=False)
    bound = 99.95 + ECHO_RTT + cfg.raft.connection_timeout
    assert found[0][1:] == ("lb2", "disconnect")
    assert bound <= 100.5 + found[0][0] < bound + 0.02
    # a drop well into the leadership: the link carried lb2's renewals, its fence has fallen
    alive = {"lb1": 102.0, "lb2": 102.0, "lb3": 101.5}  # (their loops run: no lease lapses)
    found = expiries_until(book, cfg, state, 101.5, 102.0, alive, 99.95, lb3=False)
    assert found[0][1:] == ("lb3", "disconnect")
    assert found[0][0] == pytest.approx(cfg.raft.disconnect_grace, abs=0.011)


def test_heartbeat_stamps_renew_a_lease_without_reports() -> None:
    """Format 3: the heartbeat answers say until when each member's loop ran (`alive`): a
    member is expired a lease after that, as after its last report."""
    cfg = make_config()
    state = group(cfg)
    book, _ = tick(LeaderBook(started_at=0.0), cfg, state, 100.0, True)
    found = []
    now = 100.0
    while now < 103.5:
        # lb2's loop runs until 102.0, then hangs (its Raft thread may still answer);
        # lb1 (us) and lb3 keep running.
        alive = {"lb1": now, "lb2": min(now, 102.0) - 0.3, "lb3": now - 0.3}
        book, expires = tick(book, cfg, state, now, True, alive)
        found += [(round(now, 2), e.member, e.reason) for e in expires]
        now += 0.01
    assert {m for _, m, _ in found} == {"lb2"}  # (retried: the state here never changes)
    assert found[0][2] == "lease"
    assert found[0][0] == pytest.approx(102.0 - 0.3 + cfg.cluster.lease, abs=0.011)


def test_withdraw_a_drop_first_seen_in_the_tick_that_makes_us_leader_counts_as_before() -> None:
    """Links are polled: a drop first seen in the very first leader tick may have happened
    before we led (down_since == leader_since took the fast path)."""
    cfg = make_config(policy="withdraw")
    state = group(cfg)
    book, _ = tick(LeaderBook(started_at=0.0), cfg, state, 99.0, False)
    book = report_applied(book, "lb2", 99.9)
    found = expiries_until(book, cfg, state, 100.0, 101.5, lb2=False)
    assert found[0][1:] == ("lb2", "disconnect")
    assert 100.0 + found[0][0] >= 99.9 + cfg.raft.connection_timeout


def test_withdraw_after_a_snapshot_the_reports_it_holds_count_as_just_heard() -> None:
    """A follower that installed a snapshot never applied the reports in it: without
    `snapshot_loaded` its last report time for a member is much older than the truth."""
    cfg = make_config(policy="withdraw")
    state = group(cfg)
    book, _ = tick(LeaderBook(started_at=0.0), cfg, state, 50.0, False)  # links seen up
    book = report_applied(book, "lb2", 50.0)  # long ago; then lagging, then a snapshot
    book = snapshot_loaded(book, state, 99.95)
    book, _ = tick(book, cfg, state, 99.97, False, lb2=False)
    found = expiries_until(book, cfg, state, 100.0, 101.5, lb2=False)
    assert found[0][1:] == ("lb2", "disconnect")
    assert 100.0 + found[0][0] >= 99.95 + cfg.raft.connection_timeout


def test_hold_keeps_the_fast_path() -> None:
    cfg = make_config(policy="hold")
    state = group(cfg)
    book, _ = tick(LeaderBook(started_at=0.0), cfg, state, 99.0, False)
    book = report_applied(book, "lb2", 99.9)
    found = expiries_until(book, cfg, state, 100.0, 100.5, lb2=False)
    assert found[0][1:] == ("lb2", "disconnect")
    assert found[0][0] == pytest.approx(cfg.raft.disconnect_grace, abs=0.011)


def test_the_leader_proposes_its_layout_when_the_replicated_one_differs() -> None:
    cfg = make_config()
    state = replace(group(cfg), services=())
    book, effects = leader_tick(
        LeaderBook(started_at=0.0),
        cfg,
        service_specs(cfg),
        state,
        is_leader=True,
        term=1,
        links={},
        now=10.0,
        wall=20.0,
    )
    (configure,) = [c for c in effects.proposals if isinstance(c, Configure)]
    assert configure.services == service_specs(cfg) and configure.ts == 20.0
    _, again = leader_tick(
        book, cfg, service_specs(cfg), state, is_leader=True, term=1, links={}, now=10.5, wall=20.5
    )
    assert not [c for c in again.proposals if isinstance(c, Configure)]  # at most once a second


def test_an_expire_is_not_repeated_within_a_quarter_second() -> None:
    cfg = make_config()
    state = group(cfg)
    book, _ = tick(LeaderBook(started_at=0.0), cfg, state, 100.0, True)
    found = expiries_until(book, cfg, state, 100.0, 102.0)
    lb1 = [t for t, m, _ in found if m == "lb1"]
    assert all(b - a >= 0.25 - 1e-9 for a, b in itertools.pairwise(lb1))


# --- formation and full restarts ------------------------------------------------------------


def forms(
    book: LeaderBook, cfg: Config, state: ClusterState, now: float
) -> tuple[LeaderBook, bool]:
    book, effects = leader_tick(
        book, cfg, service_specs(cfg), state, is_leader=True, term=1, links={}, now=now, wall=now
    )
    return book, any(isinstance(c, Form) for c in effects.proposals)


def forming_group(cfg: Config, present: tuple[str, ...]) -> ClusterState:
    members = {n: MemberState(n, alive=True, healthy={"apex": True}) for n in present}
    return replace(group(cfg), formed=False, owners={}, members=members)


def test_a_new_group_bootstraps_with_a_forming_configure() -> None:
    cfg = make_config()
    _, effects = leader_tick(
        LeaderBook(started_at=0.0),
        cfg,
        service_specs(cfg),
        ClusterState(),
        is_leader=True,
        term=1,
        links={},
        now=5.0,
        wall=5.0,
    )
    (configure,) = [c for c in effects.proposals if isinstance(c, Configure)]
    assert configure.forming


def test_the_group_forms_as_soon_as_every_member_is_eligible() -> None:
    cfg = make_config()
    book = LeaderBook(started_at=0.0)
    book, formed = forms(book, cfg, forming_group(cfg, ("lb1", "lb2")), 10.0)
    assert not formed
    book, formed = forms(book, cfg, forming_group(cfg, ("lb1", "lb2", "lb3")), 10.2)
    assert formed


def test_the_group_forms_without_a_missing_member_after_the_grace() -> None:
    cfg = make_config()
    state = forming_group(cfg, ("lb1", "lb2"))
    book = LeaderBook(started_at=0.0)
    book, formed = forms(book, cfg, state, 10.0)  # the first member seen alive
    for now in (10.5, 10.0 + FORM_GRACE - 0.01):
        book, formed = forms(book, cfg, state, now)
        assert not formed
    book, formed = forms(book, cfg, state, 10.0 + FORM_GRACE)
    assert formed
    _, again = forms(book, cfg, state, 10.0 + FORM_GRACE + 0.1)
    assert not again  # not proposed twice in a row


def test_a_report_replayed_from_the_journal_counts_as_sent_before_the_start() -> None:
    """After a full-group restart the journal's uncommitted tail is applied only once a new
    leader commits, a second or so later: its reports were sent before this process started
    (seeds 6715 and 7270 of the simulator: a member not back expired 0.5 s late)."""
    book = LeaderBook(started_at=100.0, journal_end=40)
    replayed = report_applied(book, "lb3", 101.2, index=40)
    assert replayed.report_applied["lb3"] == 100.0
    assert replayed.lease_seen["lb3"] == 101.2  # its lease still counts from now
    fresh = report_applied(book, "lb3", 101.2, index=41)
    assert fresh.report_applied["lb3"] == 101.2


@pytest.mark.parametrize("policy", ["hold", "withdraw"])
def test_after_a_full_restart_a_member_that_is_not_back_is_expired_within_a_second(
    policy: str,
) -> None:
    """The state on disk says everyone is alive; the new leader waits connection_timeout
    from its own start for a member's link to come up, not a whole lease."""
    cfg = make_config(policy=policy)  # type: ignore[arg-type]
    state = group(cfg)
    book = LeaderBook(started_at=100.0)
    book = report_applied(book, "lb3", 100.05)  # replayed from the journal at start
    found = []
    now = 100.3  # elected: lb2 is back (its link is up), lb3 is not
    while now < 101.5:
        # Every voter is a new process that heard no leader: `prior` is its start.
        book, expires = tick(book, cfg, state, now, True, prior=100.01, lb3=False)
        found += [(round(now, 2), e.member, e.reason) for e in expires]
        now += 0.01
    assert found[0][1:] == ("lb3", "not back")
    earliest = 100.0 + cfg.raft.connection_timeout + cfg.raft.disconnect_grace
    assert earliest - 0.011 <= found[0][0] <= 100.05 + cfg.raft.connection_timeout + 0.04


def test_a_restarting_member_keeps_its_vips_until_the_deadline_then_fails_over() -> None:
    cfg = make_config(policy="withdraw")
    state = group(cfg)
    flagged = replace(state.members["lb2"], restarting=True)
    state = replace(state, members={**state.members, "lb2": flagged})
    book, _ = tick(LeaderBook(started_at=0.0), cfg, state, 100.0, True)  # links seen up
    found = expiries_until(book, cfg, state, 100.01, 100.0 + RESTART_DEADLINE + 0.5, lb2=False)
    lb2 = [(t, r) for t, m, r in found if m == "lb2"]  # (the others' leases lapse: no reports)
    assert lb2[0][1] == "restart not done in time"
    assert lb2[0][0] >= RESTART_DEADLINE - 0.02  # not for the dropped link, nor the lease
