"""Heartbeat leases on real pysyncobj nodes (raftvip/pysyncobj_patches.py, in one process).

The pure bookkeeping is tested in tests/test_liveness.py and the whole argument in the
simulator (tests/sim.py); here, that the stamps really travel on pysyncobj 0.3.17's own
messages: append_entries out, next_node_idx back, response_vote for the election bound.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from typing import Any

import pytest
from pysyncobj import SyncObj, syncobj

from raftvip import pysyncobj_patches as patches
from raftvip.pysyncobj_patches import PreVoteSyncObj, Transport, raft_clock
from raftvip.testing.config import make_config
from raftvip.testing.wait import free_port, wait_until
from tests.test_prevote import syncobj_conf


@pytest.mark.parametrize("name", sorted(patches.RELIED_ON_SOURCES))
def test_the_pysyncobj_methods_the_stamps_rely_on_are_unchanged(name: str) -> None:
    """The follower's answer is stamped while its append_entries is handled: re-read
    `stamp_message` if `__sendNextNodeIdx` changed, then update the fingerprint."""
    source = inspect.getsource(getattr(syncobj.SyncObj, name))
    assert hashlib.sha256(source.encode()).hexdigest() == patches.RELIED_ON_SOURCES[name]


def test_the_stamped_messages_are_the_ones_pysyncobj_sends() -> None:
    source = inspect.getsource(syncobj.SyncObj)
    for kind in ("append_entries", "next_node_idx", "response_vote"):
        assert f"'type': '{kind}'" in source
    assert "rv_" not in source  # our keys: a stock member ignores them


class _Node(PreVoteSyncObj):
    def __init__(self, address: str, others: list[str]) -> None:
        self.raftvip_tuning = make_config().raft  # what patches.Transport reads
        super().__init__(address, others, syncobj_conf(address), transportClass=Transport)


def _group(count: int) -> list[Any]:
    port = free_port("127.0.0.1")
    addresses = [f"127.0.0.{50 + i}:{port}" for i in range(count)]
    return [_Node(a, [b for b in addresses if b != a]) for a in addresses]


@pytest.mark.slow
def test_stamps_travel_on_the_heartbeats_and_a_hung_loop_stops_renewing() -> None:
    nodes = _group(3)
    try:
        leader = wait_until(lambda: next((n for n in nodes if n._isLeader()), None), 10)
        followers = [n for n in nodes if n is not leader]
        hung, running = followers

        def step_loops(*which: Any) -> float:
            now = raft_clock()
            for node in which:
                node.loop_alive = now
            return now

        # Every loop steps: each member's newest stamp comes back vouched for, and the
        # leader counts each follower alive until its stamp.
        stamp = step_loops(*nodes)

        def echoed(node: Any, stamp: float) -> bool:
            return bool(node.lease_confirmed() >= stamp)

        for node in nodes:
            wait_until(functools.partial(echoed, node, stamp), 10, what="an echo")
        counted = wait_until(
            lambda: (c := leader.lease_counted()) and len(c) == 2 and min(c.values()) >= stamp,
            10,
            what="both followers counted",
        )
        assert set(leader.lease_counted()) == {hung.selfNode.id, running.selfNode.id}
        assert counted
        assert all(n.leader_echoes for n in followers)
        assert leader.prior_contact is not None and leader.prior_contact <= stamp
        # `hung`'s loop stops (its Raft thread keeps answering): soon its lease is no longer
        # renewed, nor echoed, while the others' are.
        frozen = hung.loop_alive
        assert frozen is not None
        # Its answers vouch for it until loop_fresh_for after its last step, then no more.
        wait_until(lambda: raft_clock() > frozen + hung.loop_fresh_for + 0.2, 10)
        later = step_loops(leader, running)
        wait_until(functools.partial(echoed, running, later), 10, what="running's echo")
        wait_until(lambda: leader.lease_counted()[running.selfNode.id] >= later, 10, what="counted")
        assert leader.lease_counted()[hung.selfNode.id] < later
        assert hung.lease_confirmed() < later
    finally:
        for node in nodes:
            node.destroy()


@pytest.mark.slow
def test_a_stock_pysyncobj_member_ignores_the_stamps() -> None:
    """A member of an older build (stock SyncObj, no stamps): the group elects and commits;
    a leader of this build counts only the members that stamp."""
    port = free_port("127.0.0.1")
    addresses = [f"127.0.0.{60 + i}:{port}" for i in range(3)]
    nodes: list[Any] = [_Node(a, [b for b in addresses if b != a]) for a in addresses[:2]]
    nodes.append(SyncObj(addresses[2], addresses[:2], syncobj_conf(addresses[2])))
    try:
        leader = wait_until(lambda: next((n for n in nodes if n._isLeader()), None), 10)
        index = leader.raftCommitIndex
        wait_until(lambda: all(n.raftCommitIndex >= index for n in nodes), 10, what="catch up")
        if isinstance(leader, PreVoteSyncObj):
            stamp = raft_clock()
            for node in nodes[:2]:
                node.loop_alive = stamp
            wait_until(lambda: leader.lease_counted(), 10, what="the stamping follower")
            assert set(leader.lease_counted()) <= {n.selfNode.id for n in nodes[:2]}
        else:
            follower = nodes[0]
            assert not follower.leader_echoes  # a stock leader: reports renew leases
    finally:
        for node in nodes:
            node.destroy()
