"""PreVote (raftvip/pysyncobj_patches.py): the pinned pysyncobj internals it overrides, its two
pure decisions, a group in one process, and returning followers on real member processes."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os
import time
from pathlib import Path
from typing import Any

import pytest
from pysyncobj import SyncObjConf, syncobj

from raftvip import pysyncobj_patches as patches
from raftvip.pysyncobj_patches import (
    ElectionView,
    PreVoteRequest,
    PreVoteRound,
    PreVoteSyncObj,
    VoterView,
    election_step,
    prevote_answer,
    prevote_wanted,
    tick_wait,
)
from raftvip.testing.wait import free_port, wait_until

# --- the internals it overrides -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(patches.OVERRIDDEN_SOURCES))
def test_the_overridden_pysyncobj_methods_are_the_ones_the_override_was_written_for(
    name: str,
) -> None:
    """A changed `_onTick` or `__onMessageReceived` may start elections elsewhere, or
    dispatch differently: re-read PreVoteSyncObj against it, then update the fingerprint."""
    source = inspect.getsource(getattr(syncobj.SyncObj, name))
    assert hashlib.sha256(source.encode()).hexdigest() == patches.OVERRIDDEN_SOURCES[name]
    ours = inspect.signature(getattr(PreVoteSyncObj, name))
    assert list(inspect.signature(getattr(syncobj.SyncObj, name)).parameters) == list(
        ours.parameters
    )


def test_stock_elections_start_only_where_the_override_holds_them_back() -> None:
    """The timer check that PreVoteSyncObj pushes back, and the one place that raises the
    term for an election; and the clock of that timer is the one PreVote reads."""
    tick = inspect.getsource(syncobj.SyncObj._onTick)
    assert "if self.__raftElectionDeadline < monotonicTime() and self.__connectedToAnyone():" in (
        tick
    )
    assert tick.count("self.__setCurrentTerm(self.__raftCurrentTerm + 1") == 1
    assert syncobj.monotonicTime is patches.raft_clock
    source = inspect.getsource(syncobj.SyncObj)
    assert source.count("self.__raftCurrentTerm + 1") == 1  # no other way to raise it


def test_prevote_messages_are_unknown_to_stock_pysyncobj() -> None:
    source = inspect.getsource(syncobj.SyncObj._SyncObj__onMessageReceived)
    assert patches.PREVOTE_REQUEST not in source and patches.PREVOTE_REPLY not in source


def test_prevote_is_on_unless_disabled_for_measurements() -> None:
    assert prevote_wanted({})
    assert prevote_wanted({patches.PREVOTE_ENV: "0"})
    assert not prevote_wanted({patches.PREVOTE_ENV: "1"})


# --- the decisions ----------------------------------------------------------------------------


def _voter(**changes: Any) -> VoterView:
    base = VoterView(
        is_leader=False,
        term=5,
        last_log_index=10,
        last_log_term=5,
        leader_heard=99.9,
        leader_connected=True,
        min_timeout=0.2,
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(
    ("voter", "request_", "answer"),
    [
        # a follower of a live leader refuses: the returning member must not elect
        (_voter(), PreVoteRequest(6, 10, 5), (False, "leader_alive")),
        (_voter(is_leader=True), PreVoteRequest(6, 10, 5), (False, "leader")),
        # the leader was heard min_timeout ago or more, or its link dropped: a real failure
        (_voter(leader_heard=99.8), PreVoteRequest(6, 10, 5), (True, "granted")),
        (_voter(leader_connected=False), PreVoteRequest(6, 10, 5), (True, "granted")),
        (_voter(leader_heard=None), PreVoteRequest(6, 10, 5), (True, "granted")),
        # a longer log, or a later last term, is at least as up to date
        (_voter(leader_heard=None), PreVoteRequest(6, 11, 5), (True, "granted")),
        (_voter(leader_heard=None), PreVoteRequest(6, 1, 6), (True, "granted")),
        (_voter(leader_heard=None), PreVoteRequest(6, 9, 5), (False, "log_behind")),
        (_voter(leader_heard=None), PreVoteRequest(6, 20, 4), (False, "log_behind")),
        # a term this member is already in (or past) cannot be won
        (_voter(leader_heard=None), PreVoteRequest(5, 10, 5), (False, "stale_term")),
        (_voter(leader_heard=None, term=7), PreVoteRequest(6, 10, 5), (False, "stale_term")),
    ],
)
def test_prevote_answer(voter: VoterView, request_: PreVoteRequest, answer: object) -> None:
    assert prevote_answer(voter, request_, now=100.0) == answer


def _view(**changes: Any) -> ElectionView:
    base = ElectionView(
        deadline=100.0, term=5, connected=True, transfer=False, voters=3, round=None
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(
    ("view", "now", "step"),
    [
        (_view(), 99.0, ("wait", "timer")),
        (_view(), 100.5, ("prevote", "timeout")),  # the timer fired: ask, do not elect
        (_view(connected=False), 100.5, ("wait", "isolated")),
        (_view(transfer=True), 100.5, ("elect", "transfer")),  # TimeoutNow from the leader
        # a majority said yes: elect at once, whatever the timer says
        (_view(round=PreVoteRound(6, frozenset({"a", "b"}))), 99.0, ("elect", "prevote_won")),
        (_view(round=PreVoteRound(6, frozenset({"a"}))), 99.0, ("wait", "timer")),
        (_view(round=PreVoteRound(6, frozenset({"a"}))), 100.5, ("prevote", "timeout")),
        # won for a term that has passed since (it followed a leader in term 6): start over
        (_view(term=6, round=PreVoteRound(6, frozenset({"a", "b"}))), 99.0, ("wait", "timer")),
        (_view(term=6, round=PreVoteRound(6, frozenset({"a", "b"}))), 101, ("prevote", "timeout")),
        # 5 members: 2 of 5 is no majority, 3 is
        (_view(voters=5, round=PreVoteRound(6, frozenset("ab"))), 99.0, ("wait", "timer")),
        (_view(voters=5, round=PreVoteRound(6, frozenset("abc"))), 99.0, ("elect", "prevote_won")),
    ],
)
def test_election_step(view: ElectionView, now: float, step: object) -> None:
    assert election_step(view, now) == step


STOCK = 0.05  # pysyncobj's autoTickPeriod


@pytest.mark.parametrize(
    ("leading", "settled", "due", "ping_at", "wait"),
    [
        # settled: until the heartbeat / election timer / ping, 5 ms to IDLE_TICK
        (True, True, 100.1, None, 0.101),
        (False, True, 100.4, 100.2, 0.201),
        (False, True, 101.0, None, patches.IDLE_TICK),
        (False, True, 99.0, None, STOCK / 10),
        # a link down: the stock period, but a follower's timer is met to the millisecond
        # (on the 50 ms grid two followers' timers fired together: split votes)
        (False, False, 100.012, None, 0.013),
        (False, False, 100.3, None, STOCK),
        (False, False, 99.9, None, STOCK),  # past: the tick acts on it (or it is isolated)
        (True, False, 100.012, None, STOCK),
    ],
)
def test_tick_wait(
    leading: bool, settled: bool, due: float, ping_at: float | None, wait: float
) -> None:
    got = tick_wait(STOCK, 100.0, leading=leading, settled=settled, due=due, ping_at=ping_at)
    assert got == pytest.approx(wait)


# --- a group in one process (stock transport) -----------------------------------------------


def syncobj_conf(address: str) -> SyncObjConf:
    """Timings for an in-process group (tests/test_heartbeat_leases.py uses them too)."""
    return SyncObjConf(
        bindAddress=address,
        raftMinTimeout=0.2,
        raftMaxTimeout=0.5,
        appendEntriesPeriod=0.05,
        connectionTimeout=1.0,
        connectionRetryTime=0.5,
        leaderFallbackTimeout=1.0,
        appendEntriesUseBatch=False,
        commandsWaitLeader=False,
    )


@pytest.mark.slow
def test_an_in_process_group_elects_keeps_its_term_and_replaces_a_dead_leader() -> None:
    port = free_port("127.0.0.1")
    addresses = [f"127.0.0.{i}:{port}" for i in (41, 42, 43)]
    nodes = [
        PreVoteSyncObj(a, [b for b in addresses if b != a], syncobj_conf(a)) for a in addresses
    ]
    try:
        leader = wait_until(lambda: next((n for n in nodes if n._isLeader()), None), 10)
        wait_until(lambda: len({n._getTerm() for n in nodes}) == 1, 10)
        term = leader._getTerm()
        time.sleep(1.5)  # heartbeats keep every follower's timer from firing
        assert [n._getTerm() for n in nodes] == [term] * 3
        assert leader._isLeader()
        leader.destroy()
        rest = [n for n in nodes if n is not leader]
        wait_until(lambda: any(n._isLeader() for n in rest), 10, what="a new leader")
        assert all(n._getTerm() > term for n in rest)
    finally:
        for node in nodes:
            node.destroy()


@pytest.mark.slow
def test_a_group_of_one_elects_itself() -> None:
    address = f"127.0.0.44:{free_port('127.0.0.1')}"
    node = PreVoteSyncObj(address, [], syncobj_conf(address))
    try:
        wait_until(node._isLeader, 10, what="the only member to lead")
    finally:
        node.destroy()


# --- returning followers on real member processes -------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root, iptables and cgroup v2")


@needs_root
@pytest.mark.slow
def test_a_returning_follower_forces_no_election_and_a_dead_leader_is_replaced(
    tmp_path: Path,
) -> None:
    """Issue 14: a follower cut off (iptables, its Raft port) for 3 s and let back in used
    to raise the term by 4-6 and force an election on every return. Now: 5 returns, no
    leadership won, no term raised; killing the leader still elects a new one."""
    from tests.bench_returns import ReturnsBed
    from tests.chaos import Firewall

    if not Firewall.available():
        pytest.skip("needs root, iptables and cgroup v2")
    with ReturnsBed(tmp_path, log=print) as bed:
        count = bed.returns(5, cut=3.0)
        assert (count.leader_changes, count.term_changes) == (0, 0), count
        old, new, _elapsed = bed.kill_leader(timeout=10.0)
        assert new != old


@needs_root
@pytest.mark.slow
def test_without_prevote_a_returning_follower_forces_an_election(tmp_path: Path) -> None:
    """The behaviour the test above guards against, with RAFTVIP_NO_PREVOTE=1 (stock
    pysyncobj elections): so that test can fail."""
    from tests.bench_returns import ReturnsBed
    from tests.chaos import Firewall

    if not Firewall.available():
        pytest.skip("needs root, iptables and cgroup v2")
    with ReturnsBed(tmp_path, prevote=False, log=print) as bed:
        count = bed.returns(2, cut=3.0)
        assert count.term_changes > 0 and count.elections >= 1, count
