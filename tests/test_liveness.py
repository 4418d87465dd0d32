"""Heartbeat leases (raftvip/core/liveness.py): both ends' bookkeeping, pure, fake clock."""

from __future__ import annotations

import math

import pytest

from raftvip.core.liveness import (
    ECHO_RTT,
    FollowerLiveness,
    LeaderLiveness,
    answer_stamp,
    prior_contact,
)

PEERS = ("lb2", "lb3")  # a group of three: the leader and one answer make a majority
FIVE = ("lb2", "lb3", "lb4", "lb5")


def test_a_follower_is_counted_alive_until_its_loop_last_ran() -> None:
    lead = LeaderLiveness(since=10.0)
    lead.sent_round(10.0, 5)
    # lb2 answers at 10.002: its loop last stepped 0.3 s before it answered.
    lead.answered("lb2", 10.0, alive=99.0, age=0.3, now=10.002)
    assert math.isclose(lead.counted["lb2"], 9.702)
    # An older answer (a lagging loop) never moves it back.
    lead.sent_round(10.05, 5)
    lead.answered("lb2", 10.05, alive=98.0, age=1.0, now=10.052)
    assert math.isclose(lead.counted["lb2"], 9.702)


def test_a_follower_whose_loop_has_not_stepped_is_not_counted() -> None:
    lead = LeaderLiveness(since=10.0)
    lead.sent_round(10.0, 5)
    lead.answered("lb2", 10.0, alive=None, age=None, now=10.001)
    assert "lb2" not in lead.counted
    # ... but its answer still confirms the round (it is a voter that heard this leader)
    assert lead.confirmed(PEERS, 10.001) == (10.0, 5)


def test_an_echo_needs_a_round_confirmed_by_a_majority() -> None:
    """Five members: the leader and two answers. Until a second peer has answered a round
    at least as new, lb2's stamp is not vouched for."""
    lead = LeaderLiveness(since=0.0)
    lead.sent_round(1.0, 7)
    lead.answered("lb2", 1.0, alive=50.0, age=0.1, now=1.001)
    assert lead.confirmed(FIVE, 1.001) is None
    assert lead.echo_for("lb2", FIVE, 1.001) is None
    lead.answered("lb3", 1.0, alive=60.0, age=0.1, now=1.002)
    assert lead.confirmed(FIVE, 1.002) == (1.0, 7)
    assert lead.echo_for("lb2", FIVE, 1.002) == 50.0
    assert lead.echo_for("lb3", FIVE, 1.002) == 60.0
    assert lead.echo_for("lb4", FIVE, 1.002) is None  # it never answered


def test_only_stamps_of_rounds_up_to_the_confirmed_one_are_echoed() -> None:
    lead = LeaderLiveness(since=0.0)
    lead.sent_round(1.0, 7)
    lead.sent_round(1.05, 8)
    for peer, alive in (("lb2", 10.0), ("lb3", 20.0)):
        lead.answered(peer, 1.0, alive=alive, age=0.1, now=1.001)
    lead.answered("lb2", 1.05, alive=11.0, age=0.1, now=1.051)  # lb3 has not answered 1.05
    assert lead.confirmed(FIVE, 1.051) == (1.0, 7)
    assert lead.echo_for("lb2", FIVE, 1.051) == 10.0  # not 11.0: its round is unconfirmed
    lead.answered("lb3", 1.05, alive=21.0, age=0.1, now=1.052)
    assert lead.echo_for("lb2", FIVE, 1.052) == 11.0


def test_a_slow_answer_renews_the_lease_but_is_not_echoed() -> None:
    """The stamp of an answer slower than ECHO_RTT may be later than a new leader's grant by
    more than the lease covers: counted here, never vouched for."""
    lead = LeaderLiveness(since=0.0)
    lead.sent_round(1.0, 3)
    late = 1.0 + ECHO_RTT + 0.001
    lead.answered("lb2", 1.0, alive=5.0, age=0.0, now=late)
    assert math.isclose(lead.counted["lb2"], late)
    assert lead.confirmed(PEERS, late) == (1.0, 3)
    assert lead.echo_for("lb2", PEERS, late) is None


def test_answers_to_an_earlier_leadership_are_ignored() -> None:
    lead = LeaderLiveness(since=5.0)
    lead.answered("lb2", 4.9, alive=1.0, age=0.0, now=5.001)  # lt before this leadership
    assert lead.counted == {} and lead.confirmed(PEERS, 5.001) is None
    # ... and answers to rounds it never sent (or forgot) confirm nothing
    lead.answered("lb2", 5.5, alive=1.0, age=0.0, now=5.501)
    assert lead.confirmed(PEERS, 5.501) is None


def test_a_leader_alone_confirms_itself() -> None:
    lead = LeaderLiveness(since=0.0)
    lead.sent_round(1.0, 4)
    assert lead.confirmed((), 2.0) == (2.0, 4)


def test_a_follower_trusts_an_echo_once_it_has_applied_that_far() -> None:
    """An `expire` of this member committed by an earlier leader is below the echoing
    leader's last index: the member must see it before its lease counts as renewed."""
    follower = FollowerLiveness(start=0.0)
    follower.echoed(10.0, 20)
    assert follower.confirmed(19) == -math.inf
    assert follower.confirmed(20) == 10.0
    follower.echoed(11.0, 25)
    follower.echoed(12.0, 21)
    assert follower.confirmed(22) == 12.0  # the newest stamp whose index is applied
    assert follower.confirmed(30) == 12.0  # 11.0 is older: it does not move it back


def test_a_follower_ignores_stamps_of_an_earlier_process() -> None:
    follower = FollowerLiveness(start=100.0)
    follower.echoed(99.0, 1)  # a leader vouching for what our previous process said
    assert follower.confirmed(10) == -math.inf


def test_a_follower_keeps_only_the_newest_pending_echoes() -> None:
    follower = FollowerLiveness(start=0.0)
    for i in range(100):
        follower.echoed(float(i), 1000 + i)  # the log is far ahead: nothing applied yet
    assert follower.confirmed(0) == -math.inf
    assert follower.confirmed(2000) == 99.0


def test_prior_contact_is_the_latest_of_the_voters_or_unknown() -> None:
    assert prior_contact([5.0, 7.0], own=6.0) == 7.0
    assert prior_contact([], own=6.0) == 6.0
    assert prior_contact([5.0, None], own=6.0) is None  # a voter of an older build


def test_an_answer_vouches_up_to_its_send_time_while_the_loop_steps_on_time() -> None:
    assert answer_stamp(10.0, None, 0.5) is None  # the loop has not stepped yet
    assert answer_stamp(10.0, 9.7, 0.5) == (10.0, 0.0)
    # A loop that missed its step (hung: blocked on ExaBGP's pipe, say) renews no further
    # than its last step, however long its Raft thread keeps answering.
    assert answer_stamp(10.0, 9.4, 0.5) == pytest.approx((9.4, 0.6))
    assert answer_stamp(30.0, 9.4, 0.5) == pytest.approx((9.4, 20.6))


def test_the_leaders_own_stamp_is_its_newest_confirmed_round_it_has_applied() -> None:
    """Entries in flight: the newest confirmed round's index is not applied yet. An older
    confirmed round whose index is counts (seed 1030: the leader fenced during a leave's
    stream of commands, for want of that)."""
    lead = LeaderLiveness(since=0.0)
    lead.sent_round(1.0, 5)
    lead.sent_round(1.1, 7)
    lead.answered("lb2", 1.0, alive=1.0, age=0.0, now=1.001)
    lead.answered("lb2", 1.1, alive=1.1, age=0.0, now=1.101)
    assert lead.own_stamp(PEERS, 1.2, applied=7) == 1.1
    assert lead.own_stamp(PEERS, 1.2, applied=6) == 1.0
    assert lead.own_stamp(PEERS, 1.2, applied=4) is None
    assert lead.own_stamp((), 2.0, applied=7) == 2.0  # alone: now, once all is applied
