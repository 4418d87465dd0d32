"""A deterministic simulation of a whole raftvip group (after FoundationDB's simulator, VOPR).

    python -m tests.sim --seeds 10000           # 10,000 schedules on every core, a summary
    python -m tests.sim --seed 1234 --trace     # replay one schedule, with its event trace

N members each run the real pure core — `core.loop.step`, `core.state.apply` (through
`core.replica.apply_entry`), placement, decide and `core.leader.leader_tick` — on top of a
simulated Raft log and network, a simulated clock per member and a fake ExaBGP pipe each.
One seed drives everything: the group (3 or 5 members, `hold` or `withdraw`, backup paths),
the schedule of faults and the timing of every message, so a seed replays exactly.

The Raft model follows pysyncobj 0.3.17 where raftvip depends on it: elections with terms and
randomised timeouts and no PreVote, commit after a majority of the current term, a leader that
keeps acting until `leader_fallback` after it is isolated, followers that fail a forwarded
command with LEADER_CHANGED when they see a new leader (even if it commits later), links that
drop after `connection_timeout` of silence (or a few ms after a crash) and reconnect after up
to `connection_retry`, log compaction and snapshot installs, journals kept across a crash.
Messages on one link arrive in order (TCP) after a random delay; links reorder against each
other; a cut holds a link's messages until it heals or the link drops (then they are lost).

Faults: crash and restart with state kept (a clock stepped back across the restart, sometimes),
pauses shorter and longer than the lease, partitions (a minority, the leader alone, one-way,
and "all but the leader"), a pause that ends inside a partition, health flaps, a full-group
restart, and operator commands (drain, maintenance, pin) racing all of these.

Invariants, checked after every event (numbers as in tests/chaos.py):
  1 availability: once quiet for the failover bound, every VIP not in maintenance has an
    announcer while a healthy, eligible member sits in a majority;
  2 exclusivity: once quiet, no VIP has two primary announcers for longer than a handover;
  3 flags: maintenance, drain and pin in the committed state are what the operator was told;
  4 bounded owner moves per fault;
  6 quorum loss: a member cut off in a minority takes no new VIP; under `withdraw`, a VIP is
    never announced on both sides of a cut (the one overlap allowed is a make-before-break
    handover inside one side);
  7 pause fence: a member that the group expired while it was frozen announces nothing after
    it resumes until the group has committed a report it sent after the pause;
  8 liveness: once quiet, every running, healthy member in a majority is alive in the group;
  9 Raft safety (of the model): every member applies the same command at each log index.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import heapq
import itertools
import math
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from raftvip.config import Config, QuorumLossPolicy
from raftvip.core import loop as core
from raftvip.core import operator
from raftvip.core.decide import fence_time
from raftvip.core.exabgp import announce_line, route_for
from raftvip.core.group import GroupObservation, RaftInfo
from raftvip.core.leader import LeaderBook, leader_tick, service_specs, snapshot_loaded
from raftvip.core.liveness import (
    FollowerLiveness,
    LeaderLiveness,
    answer_stamp,
    prior_contact,
)
from raftvip.core.reload import initial_health
from raftvip.core.replica import apply_entry
from raftvip.core.state import (
    WIRE_VERSION,
    ClusterState,
    Command,
    Report,
    SetDrain,
    SetMaintenance,
    SetPin,
    encode_command,
)
from raftvip.core.values import evolve
from raftvip.pysyncobj_patches import PreVoteRequest, VoterView, prevote_answer
from raftvip.testing.config import make_config, service
from raftvip.testing.exabgp import FakeExabgp

# pysyncobj FAIL_REASON values
SUCCESS, MISSING_LEADER, DISCARDED, NOT_LEADER, LEADER_CHANGED = 0, 2, 3, 4, 5

LEASE = 1.5
TAKEOVER_HOLD = 4.0  # the routers' hold time the members assume (takeover form's length)
BOUND = 2.5  # failover bound: quiet this long and every invariant must hold
COLD_BOUND = 6.0  # after a full-group restart (cold start with state on disk)
FULL_RESTART_BOUND = 1.0  # ... every VIP is announced this long after the first quorum
# ... under `withdraw`: the leader replays the members' old reports when it catches up (about
# the first quorum) and, for the at-most-one-announcer rule (leader.fenced_by), waits
# connection_timeout (1 s) from there before expiring a member that is not back
FULL_RESTART_BOUND_WITHDRAW = 1.1
HANDOVER_MAX = 1.0  # the longest two primary announcers may overlap in a handover
MAX_MOVES = 6  # owner changes per VIP per episode
EXTRA = "10.0.99.1"  # the VIP a roll-out adds (`a_reload`)
ROLLOUT_MED = 200  # and the MED it gives every VIP (100 before)
ROLLOUTS = 0.35  # the share of schedules with a roll-out racing their faults
NEWER_FORMAT = (
    WIRE_VERSION + 1
)  # what a synthetic member of a newer build reports (`Sim(newer=...)`)
COMPACT_AFTER = 40  # entries a node keeps before it compacts its log into a snapshot
PROCESS = 0.001  # a member's reaction time to an event (its loop waking up)
CHECK_EVERY = 0.1  # invariants are checked after every change, and at least this often


# --- the event loop -------------------------------------------------------------------------


class Scheduler:
    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (max(when, self.now), next(self._seq), action))

    def run_until(self, end: float, after: Callable[[], None]) -> int:
        steps = 0
        heap = self._heap
        while heap and heap[0][0] <= end:
            when, _, action = heapq.heappop(heap)
            self.now = when
            action()
            after()
            steps += 1
        self.now = end
        return steps


class Violation(Exception):
    pass


# --- the network ----------------------------------------------------------------------------


@dataclass
class Link:
    """The TCP connection between two members (pysyncobj keeps one per pair)."""

    up: bool = False
    epoch: int = 0
    blocked_since: float | None = None  # a cut or a pause stops traffic on it since then
    last_delivery: dict[str, float] = field(default_factory=dict)  # per direction, FIFO
    reconnect_at: float | None = None


class Net:
    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.cuts: set[tuple[str, str]] = set()  # (a, b): a's packets to b are dropped
        self.links: dict[tuple[str, str], Link] = {}  # both orders of a pair: one Link
        self.held: dict[tuple[str, str], list[tuple[int, Any]]] = {}

    def link(self, a: str, b: str) -> Link:
        link = self.links.get((a, b))
        if link is None:
            link = self.links[(a, b)] = self.links[(b, a)] = Link()
        return link

    def connected(self, a: str, b: str) -> bool:
        return self.link(a, b).up

    def cut(self, a: str, b: str) -> bool:
        return (a, b) in self.cuts

    def blocked(self, a: str, b: str) -> bool:
        ma, mb = self.sim.members[a], self.sim.members[b]
        return (
            (a, b) in self.cuts
            or (b, a) in self.cuts
            or ma.paused
            or mb.paused
            or not ma.running
            or not mb.running
        )

    def send(self, a: str, b: str, message: Any) -> None:
        link = self.link(a, b)
        if not link.up:
            return
        if (a, b) in self.cuts:
            self.held.setdefault((a, b), []).append((link.epoch, message))
            return
        self._schedule(a, b, link, link.epoch, message)

    def _schedule(self, a: str, b: str, link: Link, epoch: int, message: Any) -> None:
        sim = self.sim
        delay = sim.rng.uniform(0.0001, 0.002)
        if sim.rng.random() < 0.02:
            delay += sim.rng.uniform(0.005, 0.04)  # a slow packet: other links overtake it
        when = max(sim.now + delay, link.last_delivery.get(a, 0.0))
        link.last_delivery[a] = when
        sim.sched.at(when, lambda: self._deliver(a, b, epoch, message))

    def _deliver(self, a: str, b: str, epoch: int, message: Any) -> None:
        link = self.link(a, b)
        if not link.up or link.epoch != epoch:
            return  # lost with its connection
        target = self.sim.members[b]
        if not target.running:
            return
        if target.paused:
            target.inbox.append((a, epoch, message))  # read from the socket at resume
            return
        target.raft.receive(a, message)

    def beat(
        self, leader: str, peer: str, term: int, lt: float, echo: tuple[float, int] | None
    ) -> bool:
        """An empty heartbeat of `leader` to `peer`, which already follows it: its only
        effects are computed at once (the follower's election timer and lease echo, the
        leader's "last response" and lease stamp) instead of being sent; False if it must
        really be sent."""
        target = self.sim.members[peer]
        raft = target.raft
        if (
            (leader, peer) in self.cuts
            or not target.running
            or target.paused
            or raft.leader != leader
            or raft.term != term
            or raft.role != "follower"
        ):
            return False
        raft.election_at = self.sim.now + raft._timeout()
        raft.contact = self.sim.now
        raft.lease_echo(echo)
        self.note_alive(peer, leader, term, lt)
        return True

    def note_alive(self, a: str, b: str, term: int, lt: float) -> None:
        """`a` answers a heartbeat of leader `b` sent at `lt`: the answer (which only says
        "alive", with `a`'s lease stamp) is accounted at once rather than sent, when it
        could get through."""
        link = self.link(a, b)
        leader = self.sim.members[b]
        if link.up and (a, b) not in self.cuts and leader.running and not leader.paused:
            raft = leader.raft
            if raft.role == "leader" and raft.term == term:
                raft.last_response[a] = self.sim.now
                raft.lease_answer(a, lt, self.sim.members[a].stamp())

    def deliver_inbox(self, member: SimMember) -> None:
        inbox, member.inbox = member.inbox, []
        for a, epoch, message in inbox:
            link = self.link(a, member.name)
            if link.up and link.epoch == epoch and member.running:
                member.raft.receive(a, message)

    def changed(self) -> None:
        """Cuts, pauses or processes changed: drop links that go silent, reconnect others."""
        sim = self.sim
        sim.topology_changed()
        names = list(sim.members)
        for a, b in itertools.combinations(names, 2):
            link = self.link(a, b)
            ma, mb = sim.members[a], sim.members[b]
            if not ma.running or not mb.running:
                if link.up:
                    sim.sched.at(sim.now + sim.rng.uniform(0.002, 0.006), self._drop_crashed(a, b))
                link.blocked_since = None
                continue
            if self.blocked(a, b):
                if link.blocked_since is None:
                    link.blocked_since = sim.now
                    since = sim.now
                    ct = sim.cfgs[a].raft.connection_timeout
                    sim.sched.at(since + ct, functools.partial(self._silent, a, b, since))
                continue
            link.blocked_since = None
            for src, dst in ((a, b), (b, a)):
                held = self.held.pop((src, dst), [])
                for epoch, message in held:
                    if link.up and link.epoch == epoch:
                        self._schedule(src, dst, link, epoch, message)
            if not link.up and link.reconnect_at is None:
                retry = sim.cfgs[a].raft.connection_retry
                when = sim.now + sim.rng.uniform(0.001, retry)
                link.reconnect_at = when
                sim.sched.at(when, functools.partial(self._reconnect, a, b))

    def _drop_crashed(self, a: str, b: str) -> Callable[[], None]:
        def drop() -> None:
            ma, mb = self.sim.members[a], self.sim.members[b]
            if not ma.running or not mb.running:
                self._down(a, b)

        return drop

    def _silent(self, a: str, b: str, since: float) -> None:
        link = self.link(a, b)
        if link.blocked_since == since and link.up:
            self._down(a, b)

    def _down(self, a: str, b: str) -> None:
        link = self.link(a, b)
        if not link.up:
            return
        link.up = False
        link.epoch += 1
        self.held.pop((a, b), None)
        self.held.pop((b, a), None)
        for name in (a, b):
            member = self.sim.members[name]
            if member.running and not member.paused:
                member.raft.links_changed()
        self.sim.trace(f"link {a}-{b} down")

    def _reconnect(self, a: str, b: str) -> None:
        link = self.link(a, b)
        link.reconnect_at = None
        if link.up or self.blocked(a, b):
            return
        link.up = True
        link.epoch += 1
        link.last_delivery.clear()
        self.sim.trace(f"link {a}-{b} up")
        for name in (a, b):
            self.sim.members[name].raft.links_changed()

    def reset_member(self, name: str) -> None:
        """A process restarted: its connections are new ones."""
        for other in self.sim.members:
            if other != name:
                self._down(name, other)


# --- the Raft model -------------------------------------------------------------------------


@dataclass
class Entry:
    term: int
    payload: bytes | None  # None: the no-op a new leader appends


Callback = Callable[[int], None]


def _with_raft(cfg: Config) -> Config:
    """RAFTVIP_SIM_RAFT='heartbeat=0.1,min_timeout=0.31': other [raft] timings, to try them."""
    spec = os.environ.get("RAFTVIP_SIM_RAFT", "")
    if not spec:
        return cfg
    changes: dict[str, Any] = {
        k.strip(): float(v) for k, v in (kv.split("=") for kv in spec.split(","))
    }
    return dataclasses.replace(cfg, raft=dataclasses.replace(cfg.raft, **changes))


class RaftNode:
    """One member's Raft (pysyncobj 0.3.17's behaviour where raftvip depends on it)."""

    def __init__(self, member: SimMember) -> None:
        self.m = member
        self.sim = member.sim
        self.name = member.name
        self.peers = [n for n in self.sim.names if n != self.name]
        # persistent (journal + snapshot)
        self.term = 0
        self.voted_for: str | None = None
        self.log: list[Entry] = []
        self.base_index = 0
        self.base_term = 0
        self.base_state = ClusterState()
        self.commit = 0
        self.boot()

    # -- (re)start

    def boot(self) -> None:
        self.role = "follower"
        self.leader: str | None = None
        self.state = self.base_state
        self.applied = self.base_index
        self.book = LeaderBook(started_at=self.sim.now, journal_end=self.last_index())
        self.next_index: dict[str, int] = {}
        self.match_index: dict[str, int] = {}
        self.last_response: dict[str, float] = {}
        self.told_commit: dict[str, int] = {}  # leader: the commit index each peer was sent
        self._info: RaftInfo | None = None
        self._info_key: tuple[object, ...] | None = None
        self.votes = 0
        self.transfer = False  # the leader asked us to take over (TimeoutNow): no pre-vote
        self.prevote: tuple[int, set[str]] | None = None  # (term asked for, who granted)
        self.leader_heard: float | None = None  # an append of the current term last came
        self.waiting_reply: dict[int, Callback] = {}
        self.waiting_commit: dict[int, list[tuple[int, Callback]]] = {}
        self.request_ids = itertools.count(1)
        self.leader_commit: int | None = None
        self.ready = False
        # heartbeat leases (core/liveness.py), as pysyncobj_patches.PreVoteSyncObj keeps them
        self.lead: LeaderLiveness | None = None
        self.lease = FollowerLiveness(self.sim.now)
        self.leader_echoes = False
        self.contact = self.sim.now  # when this process last accepted an append
        self.vote_contacts: list[float | None] = []  # of the votes of our current election
        self.prior: float | None = None
        self.election_at = self.sim.now + self._timeout()
        self.generation = getattr(self, "generation", 0) + 1
        self._arm_election()
        self._apply_committed()

    def _timeout(self) -> float:
        raft = self.m.cfg.raft
        return self.sim.rng.uniform(raft.min_timeout, raft.max_timeout)

    # -- log helpers

    def last_index(self) -> int:
        return self.base_index + len(self.log)

    def term_at(self, index: int) -> int | None:
        if index == self.base_index:
            return self.base_term
        if index < self.base_index or index > self.last_index():
            return None
        return self.log[index - self.base_index - 1].term

    def last_term(self) -> int:
        return self.term_at(self.last_index()) or 0

    # -- timers (all lazily re-armed; a stale generation does nothing)

    def _follow(self) -> None:
        """Become a follower; a former leader's election timer starts again."""
        self.role = "follower"
        if not self.election_armed:
            self.election_at = self.sim.now + self._timeout()
            self._arm_election()

    def _arm_election(self) -> None:
        self.election_armed = True
        gen = self.generation
        self.sim.sched.at(self.election_at, lambda: self._election_timer(gen))

    def _election_timer(self, gen: int) -> None:
        if gen != self.generation or not self.m.running:
            return
        if self.m.paused:
            self.m.on_resume.append(lambda: self._election_timer(gen))
            return
        if self.role == "leader":
            self.election_armed = False  # `_follow` arms it again when it steps down
            return
        if self.sim.now < self.election_at:
            self._arm_election()
            return
        if not any(self.sim.net.connected(self.name, p) for p in self.peers):
            self.election_at = self.sim.now + self._timeout()
            self._arm_election()
            return
        if not self.transfer and (self.prevote is None or not self._prevote_won()):
            # raftvip's PreVote (pysyncobj_patches.PreVoteSyncObj): ask first, raise the term
            # only once a majority would vote; the timer is pushed back meanwhile.
            self.election_at = self.sim.now + self._timeout()
            self.prevote = (self.term + 1, {self.name})
            for peer in self.peers:
                self.sim.net.send(
                    self.name, peer, ("prevote", self.term + 1, self.last_index(), self.last_term())
                )
            self._arm_election()
            if self._prevote_won():
                self._start_election()
            return
        self._start_election()

    def _prevote_won(self) -> bool:
        return (
            self.prevote is not None
            and self.prevote[0] == self.term + 1
            and len(self.prevote[1]) > (len(self.peers) + 1) / 2
        )

    def _start_election(self) -> None:
        """pysyncobj: candidate, term + 1, vote for itself, ask every peer."""
        self.transfer = False
        self.prevote = None
        self.election_at = self.sim.now + self._timeout()
        self.leader = None
        self.role = "candidate"
        self.term += 1
        self.voted_for = self.name
        self.votes = 1
        self.vote_contacts = []
        self.sim.trace(f"{self.name} candidate term={self.term}")
        for peer in self.peers:
            self.sim.net.send(
                self.name,
                peer,
                ("vote", self.term, self.last_index(), self.last_term()),
            )
        self._leader_changed()
        self._arm_election()
        if self.votes > (len(self.peers) + 1) / 2:
            self._become_leader()

    def _heartbeat(self, gen: int) -> None:
        if gen != self.generation or not self.m.running:
            return
        if self.m.paused:
            self.m.on_resume.append(lambda: self._heartbeat(gen))
            return
        if self.role != "leader":
            return
        now = self.sim.now
        fallback = self.m.cfg.raft.leader_fallback
        responding = 1 + sum(
            1 for p in self.peers if self.last_response.get(p, -1e9) > now - fallback
        )
        if responding <= (len(self.peers) + 1) / 2:
            self.sim.trace(f"{self.name} steps down (no majority for {fallback:g}s)")
            self._follow()
            self.leader = None
            return
        self._send_entries(heartbeat=True)
        self.tick_duties()
        self.sim.sched.at(now + self.m.cfg.raft.heartbeat, lambda: self._heartbeat(gen))

    # -- leadership

    def _become_leader(self) -> None:
        self.role = "leader"
        self.leader = self.name
        now = self.sim.now
        self.lead = LeaderLiveness(now)
        self.prior = prior_contact(self.vote_contacts, self.contact)
        self.sim.trace(f"{self.name} leader term={self.term}")
        self.told_commit = {}
        for peer in self.peers:
            self.next_index[peer] = self.last_index() + 1
            self.match_index[peer] = 0
            self.last_response[peer] = now
        self.log.append(Entry(self.term, None))
        self.m.sim.on_leader(self.name, self.term)
        self._send_entries()
        self.tick_duties()
        gen = self.generation
        self.sim.sched.at(now + self.m.cfg.raft.heartbeat, lambda: self._heartbeat(gen))

    def _send_entries(self, heartbeat: bool = False) -> None:
        lt = self.sim.now
        lead = self.lead
        if lead is not None:
            lead.sent_round(lt, self.last_index())
        for peer in self.peers:
            if not self.sim.net.connected(self.name, peer):
                continue
            echo = None
            if lead is not None:
                stamp = lead.echo_for(peer, tuple(self.peers), lt)
                echo = (stamp, self.last_index()) if stamp is not None else None
            nxt = self.next_index.get(peer, self.last_index() + 1)
            if (
                heartbeat
                and nxt > self.last_index()
                and self.match_index.get(peer, 0) == self.last_index()
                and self.told_commit.get(peer) == self.commit
                and self.sim.net.beat(self.name, peer, self.term, lt, echo)
            ):
                continue  # an empty heartbeat to an up-to-date follower: accounted directly
            if nxt <= self.base_index:
                self.sim.net.send(
                    self.name,
                    peer,
                    (
                        "snapshot",
                        self.term,
                        self.base_index,
                        self.base_term,
                        self.base_state,
                        lt,
                        echo,
                    ),
                )
                self.next_index[peer] = self.base_index + 1  # pysyncobj: past the snapshot
                continue
            prev = nxt - 1
            entries = tuple(self.log[prev - self.base_index :])
            # A heartbeat to a follower known to be up to date needs no answer but "alive"
            needs_ack = bool(entries) or self.match_index.get(peer, 0) < prev
            self.told_commit[peer] = self.commit
            if entries:
                self.next_index[peer] = prev + len(entries) + 1  # pysyncobj: optimistic
            self.sim.net.send(
                self.name,
                peer,
                (
                    "append",
                    self.term,
                    prev,
                    self.term_at(prev),
                    entries,
                    self.commit,
                    needs_ack,
                    lt,
                    echo,
                ),
            )

    def _leader_changed(self) -> None:
        """pysyncobj fails every forwarded command still waiting for the leader's reply."""
        waiting, self.waiting_reply = self.waiting_reply, {}
        for rid in sorted(waiting):
            waiting[rid](LEADER_CHANGED)

    def transfer_leadership(self) -> None:
        """pysyncobj's transferLeadership: TimeoutNow to the most caught-up connected
        follower, if one has everything."""
        if self.role != "leader":
            return
        candidates = [
            (self.match_index.get(p, 0), p)
            for p in self.peers
            if self.sim.net.connected(self.name, p)
        ]
        if not candidates:
            return
        match, target = max(candidates)
        if match != self.last_index():
            return
        self.sim.trace(f"{self.name} hands leadership to {target}")
        self.sim.net.send(self.name, target, ("timeout_now", self.term))

    # -- proposals

    def propose(self, payload: bytes, callback: Callback | None) -> None:
        """Queued and handled on the next tick, as pysyncobj does."""
        self.sim.sched.at(
            self.sim.now + self.sim.rng.uniform(0.0001, 0.001),
            functools.partial(self._propose, self.generation, payload, callback),
        )

    def _propose(self, gen: int, payload: bytes, callback: Callback | None) -> None:
        if gen != self.generation or not self.m.running:
            return
        if self.m.paused:
            self.m.on_resume.append(lambda: self._propose(gen, payload, callback))
            return
        if self.role == "leader":
            self.log.append(Entry(self.term, payload))
            if callback is not None:
                self.waiting_commit.setdefault(self.last_index(), []).append((self.term, callback))
            self._send_entries()
        elif self.leader is not None:
            rid = next(self.request_ids)
            if callback is not None:
                self.waiting_reply[rid] = callback
            self.sim.net.send(self.name, self.leader, ("command", rid, payload))
        elif callback is not None:
            callback(MISSING_LEADER)

    # -- messages

    def receive(self, src: str, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "prevote":
            _, term, last_index, last_term = message
            granted, _why = prevote_answer(
                VoterView(
                    is_leader=self.role == "leader",
                    term=self.term,
                    last_log_index=self.last_index(),
                    last_log_term=self.last_term(),
                    leader_heard=self.leader_heard,
                    leader_connected=self.leader is not None
                    and self.sim.net.connected(self.name, self.leader),
                    min_timeout=self.m.cfg.raft.min_timeout,
                ),
                PreVoteRequest(term, last_index, last_term),
                self.sim.now,
            )
            self.sim.net.send(self.name, src, ("prevote_ok", term, granted, self.term))
            return
        if kind == "prevote_ok":
            _, term, granted, voter_term = message
            if voter_term > self.term and self.role != "leader":
                self.term, self.voted_for, self.leader = voter_term, None, None  # catch up
                self.prevote = None
                self._follow()
                return
            if granted and self.prevote is not None and self.prevote[0] == term:
                self.prevote[1].add(src)
                if self._prevote_won() and self.role != "leader" and not self.m.paused:
                    self._start_election()  # at once, as the patch's next tick does
            return
        if kind == "timeout_now":
            if message[1] >= self.term and src == self.leader and self.role != "leader":
                self.transfer = True
                self.election_at = self.sim.now  # elect now
                self._election_timer(self.generation)
            return
        if kind == "append" or kind == "snapshot":
            self._on_append(src, message)
        elif kind == "append_ok":
            self._on_append_ok(src, message)
        elif kind == "vote":
            self._on_vote(src, message)
        elif kind == "voted":
            _, term, age = message
            if self.role == "candidate" and term == self.term:
                self.vote_contacts.append(self.sim.now - age)
                self.votes += 1
                if self.votes > (len(self.peers) + 1) / 2:
                    self._become_leader()
        elif kind == "command":
            _, rid, payload = message
            if self.role == "leader":
                self.log.append(Entry(self.term, payload))
                self.sim.net.send(self.name, src, ("command_ok", rid, self.last_index(), self.term))
                self._send_entries()
            else:
                self.sim.net.send(self.name, src, ("command_err", rid, NOT_LEADER))
        elif kind == "command_ok":
            _, rid, index, term = message
            callback = self.waiting_reply.pop(rid, None)
            if callback is not None:
                if index <= self.applied:
                    callback(7)  # UNKNOWN_OUTCOME
                else:
                    self.waiting_commit.setdefault(index, []).append((term, callback))
        elif kind == "command_err":
            _, rid, err = message
            callback = self.waiting_reply.pop(rid, None)
            if callback is not None:
                callback(err)

    def _on_vote(self, src: str, message: tuple[Any, ...]) -> None:
        _, term, last_index, last_term = message
        if term > self.term:
            self.term = term
            self.voted_for = None
            if self.role == "leader":
                self.sim.trace(f"{self.name} deposed by {src}'s vote request term={term}")
            self._follow()
            self.leader = None
        if self.role in ("follower", "candidate") and term >= self.term:
            if last_term < self.last_term():
                return
            if last_term == self.last_term() and last_index < self.last_index():
                return
            if self.voted_for is not None:
                return
            self.voted_for = src
            self.election_at = self.sim.now + self._timeout()
            self.sim.net.send(self.name, src, ("voted", term, self.sim.now - self.contact))

    def _on_append(self, src: str, message: tuple[Any, ...]) -> None:
        term = message[1]
        if term < self.term:
            return
        self.election_at = self.sim.now + self._timeout()
        self.leader_heard = self.sim.now
        self.prevote = None
        if self.leader != src:
            self._leader_changed()
        self.leader = src
        if term > self.term:
            self.term = term
            self.voted_for = None
        if self.role == "leader":
            self.sim.trace(f"{self.name} sees leader {src} term={term}: follower")
        self._follow()
        lt, echo = message[-2], message[-1]
        self.contact = self.sim.now
        self.lease_echo(echo)
        stamp = self.m.stamp()
        if message[0] == "snapshot":
            _, _, base_index, base_term, base_state, _, _ = message
            if base_index <= self.applied:
                self.sim.net.send(
                    self.name, src, ("append_ok", self.term, self.last_index(), True, lt, stamp)
                )
                return
            self.base_index, self.base_term, self.base_state = base_index, base_term, base_state
            self.log = []
            self.commit = self.applied = base_index
            self.state = base_state
            self.sim.trace(f"{self.name} installs a snapshot at {base_index}")
            self.m.on_snapshot()
            self.leader_commit = base_index
            self.sim.net.send(self.name, src, ("append_ok", self.term, base_index, True, lt, stamp))
            self._check_ready()
            return
        _, _, prev, prev_term, entries, leader_commit, needs_ack, _, _ = message
        self.leader_commit = leader_commit
        have = self.term_at(prev)
        if have is None or have != prev_term:
            self.sim.net.send(
                self.name,
                src,
                ("append_ok", self.term, min(prev, self.last_index()) - 1, False, lt, stamp),
            )
            return
        index = prev
        for entry in entries:
            index += 1
            existing = self.term_at(index)
            if existing is not None and existing != entry.term:
                if index <= self.applied:
                    raise Violation(f"(9) {self.name} would truncate applied entry {index}")
                del self.log[index - self.base_index - 1 :]
                existing = None
            if existing is None:
                self.log.append(entry)
        if needs_ack:
            self.sim.net.send(
                self.name, src, ("append_ok", self.term, prev + len(entries), True, lt, stamp)
            )
        else:
            self.sim.net.note_alive(self.name, src, self.term, lt)
        last_new = prev + len(entries)
        if leader_commit > self.commit and last_new > self.commit:
            self.commit = min(leader_commit, last_new)
            self._apply_committed()
        self._check_ready()

    def _on_append_ok(self, src: str, message: tuple[Any, ...]) -> None:
        _, term, index, success, lt, stamp = message
        if self.role != "leader" or term != self.term:
            return
        self.last_response[src] = self.sim.now
        self.lease_answer(src, lt, stamp)
        if success:
            # pysyncobj ('next_node_idx'): only an ack that raises the match index moves the
            # next index, so an older ack still in flight never sends it back.
            if index > self.match_index.get(src, 0):
                self.match_index[src] = index
                self.next_index[src] = index + 1
        else:
            self.next_index[src] = max(1, index + 1)
            self._send_entries()
            return
        self._advance_commit()

    def _advance_commit(self) -> None:
        majority = (len(self.peers) + 1) / 2
        new = self.commit
        for index in range(self.commit + 1, self.last_index() + 1):
            count = 1 + sum(1 for p in self.peers if self.match_index.get(p, 0) >= index)
            if count <= majority:
                break
            if self.term_at(index) == self.term:
                new = index
        if new != self.commit:
            self.commit = new
            self._apply_committed()
            self._send_entries()  # appendEntriesUseBatch=False: tell the followers at once
        self.leader_commit = self.commit
        self._check_ready()

    def _apply_committed(self) -> None:
        before = self.state
        while self.applied < self.commit:
            index = self.applied + 1
            entry = self.log[index - self.base_index - 1]
            self.sim.check_applied(self.name, index, entry)
            subscribers = self.waiting_commit.pop(index, [])
            if entry.payload is not None:
                new, self.book, records = apply_entry(
                    self.state, self.book, entry.payload, index, self.sim.now
                )
                for record in records:
                    self.m.log_record(record.message)
                self.state = new
            self.applied = index
            for term, callback in subscribers:
                callback(SUCCESS if term == entry.term else DISCARDED)
        if self.state is not before and core.worth_a_step(self.m.cfg, before, self.state):
            self.m.wake()
        if self.applied - self.base_index > COMPACT_AFTER:
            self.base_term = self.term_at(self.applied) or 0
            del self.log[: self.applied - self.base_index]
            self.base_index = self.applied
            self.base_state = self.state

    def _check_ready(self) -> None:
        if not self.ready and self.leader_commit is not None and self.applied >= self.leader_commit:
            self.ready = True
            self.m.wake()

    # -- heartbeat leases

    def lease_echo(self, echo: tuple[float, int] | None) -> None:
        """An append of the current leader arrived, with our stamp it vouches for (if any)."""
        self.leader_echoes = True
        if echo is not None:
            self.lease.echoed(*echo)

    def lease_answer(self, peer: str, lt: float, stamp: tuple[float, float] | None) -> None:
        """`peer` answered our round `lt` with its (alive, age) stamp."""
        if self.lead is not None:
            alive, age = stamp if stamp is not None else (None, None)
            self.lead.answered(peer, lt, alive, age, self.sim.now)

    def confirmed(self) -> float:
        """As PreVoteSyncObj.lease_confirmed."""
        own = self.lease.confirmed(self.applied)
        if self.role == "leader" and self.lead is not None:
            mine = self.lead.own_stamp(tuple(self.peers), self.sim.now, self.applied)
            if mine is not None:
                return max(own, mine)
        return own

    # -- leader duties and links

    def tick_duties(self) -> None:
        links = {p: self.sim.net.connected(self.name, p) for p in self.peers}
        alive: dict[str, float] = {}
        if self.role == "leader" and self.lead is not None:
            alive = dict(self.lead.counted)
            if self.m.loop_alive is not None:
                alive[self.name] = self.m.loop_alive
        self.book, effects = leader_tick(
            self.book,
            self.m.cfg,
            self.m.specs,
            self.state,
            is_leader=self.role == "leader",
            term=self.term,
            links=links,
            now=self.sim.now,
            wall=self.m.wall(),
            alive=alive,
            prior_contact=self.prior if self.role == "leader" else None,
        )
        for record in effects.logs:
            self.m.log_record(record.message)
        for cmd in effects.proposals:
            self.propose(encode_command(cmd), None)

    def links_changed(self) -> None:
        if self.m.running and not self.m.paused:
            self.tick_duties()
            self.m.wake()

    def info(self) -> RaftInfo:
        connected = frozenset(p for p in self.peers if self.sim.net.connected(self.name, p))
        confirmed = self.confirmed()
        echoes = self.role == "leader" or self.leader_echoes
        key = (
            self.leader,
            self.role,
            self.term,
            self.commit,
            self.applied,
            self.ready,
            connected,
            confirmed,
            echoes,
        )
        if key == self._info_key and self._info is not None:
            return self._info
        self._info_key = key
        self._info = RaftInfo(
            leader=self.leader,
            is_leader=self.role == "leader",
            term=self.term,
            commit_index=self.commit,
            last_applied=self.applied,
            has_quorum=len(connected) + 1 > (len(self.peers) + 1) / 2,
            ready=self.ready,
            connected=connected,
            confirmed=confirmed,
            leader_echoes=echoes,
        )
        return self._info


# --- members --------------------------------------------------------------------------------


class SimMember:
    def __init__(self, sim: Sim, name: str, cfg: Config) -> None:
        self.sim = sim
        self.name = name
        self.cfg = cfg
        self.specs = service_specs(cfg)
        self.running = False
        self.paused = False
        self.paused_at = 0.0
        self.inbox: list[tuple[str, int, Any]] = []
        self.on_resume: list[Callable[[], None]] = []
        self.wall_offset = 1_767_225_600.0 + sim.rng.uniform(-0.2, 0.2)
        self.pipe = FakeExabgp()
        self.exabgp_up = False  # ExaBGP runs (and carries `pipe.rib`) even if the helper died
        self.note: float | None = None  # the restart note in state_dir (Agent)
        self.loop: core.LoopState | None = None
        self.events: list[core.Event] = []
        self.loop_gen = 0
        self.loop_at = math.inf
        self.health = {s.name: True for s in cfg.services}  # what its checks see
        self.local = {s.name: "down" for s in cfg.services}  # what its loop was told
        self.fence: tuple[int, int] | None = None  # invariant 7: (incarnation, seq) needed
        self.raft = RaftNode(self)
        self.logs: list[str] = []
        self.minority_since: float | None = None
        self.minority_rib: set[str] = set()
        self.newer = False  # a synthetic member of a newer build (`Sim(newer=...)`)
        self.loop_alive: float | None = None  # when its loop last stepped (heartbeat leases)

    def wall(self) -> float:
        return self.sim.now + self.wall_offset

    def stamp(self) -> tuple[float, float] | None:
        """(alive, age) for a heartbeat answer (`liveness.answer_stamp`)."""
        return answer_stamp(self.sim.now, self.loop_alive, self.cfg.cluster.report_interval)

    def log_record(self, message: str) -> None:
        self.logs.append(f"{self.sim.now:8.3f} {message}")

    # -- process life

    def start(self) -> None:
        """A new process. With ExaBGP still up (it respawned its helper) the routes stay;
        otherwise a new ExaBGP: routers start from nothing."""
        self.running = True
        self.paused = False
        if not self.exabgp_up:
            self.pipe = FakeExabgp()
            self.exabgp_up = True
        incarnation = int(self.wall() * 1_000_000)
        until, self.note = self.note, None
        if until is not None and until <= self.wall():
            until = None  # Agent._take_restart_note: too old
        self.loop, effects = core.start(self.cfg, incarnation, restart_until=until)
        self.loop_alive = None
        self.events = []
        self.local = {s.name: initial_health(s) for s in self.cfg.services}
        self._carry_out(effects)
        self.raft.boot()
        self.sim.net.reset_member(self.name)
        self.sim.net.changed()
        self.sim.refresh(self)
        for service_name, ok in self.health.items():
            self._health_report(service_name, ok)
        self.schedule_loop(self.sim.now + PROCESS)

    def crash(self, keep_routes: bool = False) -> None:
        """The LB goes (its BGP sessions and routes with it), or with `keep_routes` only the
        helper process: ExaBGP keeps announcing what it last had."""
        self.running = False
        self.paused = False
        self.inbox = []
        self.on_resume = []
        if not keep_routes:
            self.pipe = FakeExabgp()
            self.exabgp_up = False
        self.loop = None
        self.fence = None
        self.raft.generation += 1
        self.sim.net.changed()
        self.sim.refresh(self)

    def pause(self) -> None:
        self.paused = True
        self.paused_at = self.sim.now
        self.sim.net.changed()
        self.sim.refresh(self)

    def resume(self) -> None:
        self.paused = False
        self.sim.net.changed()
        self.sim.refresh(self)
        # Did the group expire us while we were frozen? Then invariant 7 applies.
        committed = self.sim.committed_state()
        me = committed.members.get(self.name)
        if self.loop is not None and (
            me is None or not me.alive or me.incarnation != self.loop.incarnation
        ):
            self.fence = (self.loop.incarnation, self.loop.seq + 1)
        pending, self.on_resume = self.on_resume, []
        actions: list[Callable[[], None]] = [
            lambda: self.sim.net.deliver_inbox(self),
            lambda: self._iterate(self.loop_gen),
            *pending,
        ]
        self.sim.rng.shuffle(actions)  # the loop and the Raft thread resume in any order
        for action in actions:
            action()
        self.sim.check_routes(self)

    # -- health

    def set_health(self, service_name: str, ok: bool) -> None:
        self.health[service_name] = ok
        if self.running:
            delay = self.sim.rng.uniform(0.05, 0.3)  # probes and fall/rise
            self.sim.sched.at(self.sim.now + delay, lambda: self._health_report(service_name, ok))

    def _health_report(self, service_name: str, ok: bool) -> None:
        if not self.running or self.health[service_name] != ok:
            return
        if self.paused:
            self.on_resume.append(lambda: self._health_report(service_name, ok))
            return
        self.events.append(core.HealthChanged(service_name, "up" if ok else "down", "sim"))
        self.wake()

    # -- the loop

    def wake(self) -> None:
        if self.running:
            self.schedule_loop(self.sim.now + PROCESS)

    def schedule_loop(self, when: float) -> None:
        if when >= self.loop_at - 1e-12 and self.loop_at > self.sim.now:
            return
        self.loop_gen += 1
        self.loop_at = when
        gen = self.loop_gen
        self.sim.sched.at(when, lambda: self._iterate(gen))

    def _iterate(self, gen: int) -> None:
        if gen != self.loop_gen or not self.running or self.loop is None:
            return
        if self.paused:
            return  # resume() runs the iteration
        self.loop_at = math.inf
        events, self.events = self.events, []
        now = self.sim.now
        loop = self.loop
        seen_state, seen_decisions = loop.group.state, loop.decisions
        for event in events:
            loop, effects = core.step(loop, event, now)
            self.loop = loop
            self._carry_out(effects)
        group = GroupObservation(self.raft.state, self.raft.info())
        loop, effects = core.step(self.loop, core.Tick(group, self.wall()), now)
        self.loop = loop
        self.loop_alive = now  # Agent: cluster.loop_stepped
        self._carry_out(effects)
        if loop.exit_code is not None:
            self.sim.trace(f"{self.name} exited {loop.exit_code}")
            self.sim.exited(self, loop.exit_code, effects.restart_until)
            return
        state = loop.group.state
        if (
            loop.decisions is not seen_decisions
            or state.owners is not seen_state.owners
            or state.handovers is not seen_state.handovers
        ):
            self.sim.dirty = True  # what the invariants read of this member changed
        self.schedule_loop(effects.wake_at if effects.wake_at is not None else now + core.TICK)

    def _carry_out(self, effects: core.Effects) -> None:
        for record in effects.logs:
            self.log_record(record.message)
        if effects.lines:
            if self.loop is not None:
                for line in effects.lines:
                    words = line.split()
                    vip = words[2].split("/")[0]
                    decision = self.loop.decisions.get(vip)
                    why = decision.reason if decision is not None else "-"
                    if decision is not None and decision.takeover:
                        why += ", takeover form"
                    self.sim.trace(f"{self.name} {words[0]} {vip} ({why})")
            self.pipe.receive(effects.lines)
            self.sim.routes_changed(self)
            delay = self.sim.rng.uniform(0.0001, 0.002)
            self.sim.sched.at(self.sim.now + delay, self._deliver_acks(len(effects.lines)))
        for proposal in effects.proposals:
            callback = None
            if proposal.tag is not None:
                callback = self._callback(proposal.tag)
            cmd = proposal.cmd
            if self.newer and isinstance(cmd, Report):
                cmd = evolve(cmd, wire=NEWER_FORMAT)  # a build that speaks a newer format
            self.raft.propose(encode_command(cmd), callback)
            if self.newer and isinstance(cmd, Report) and self.sim.rng.random() < 0.2:
                # ... and, wrongly, proposes a command of it before the group speaks it
                future = {"v": NEWER_FORMAT, "ts": self.wall(), "op": "teleport", "to": self.name}
                self.raft.propose(msgpack.packb(future), None)
        if effects.transfer_leadership:
            self.raft.transfer_leadership()

    def _deliver_acks(self, count: int) -> Callable[[], None]:
        pipe = self.pipe

        def deliver() -> None:
            if self.pipe is not pipe or not self.running:
                return
            for ack in pipe.acks(count):
                self.events.append(core.StdinLine(ack))
            self.wake()

        return deliver

    def _callback(self, tag: core.Tag) -> Callback:
        loop_generation = self.raft.generation

        def done(err: int) -> None:
            if self.running and self.raft.generation == loop_generation:
                self.events.append(core.ProposalDone(tag, err))
                self.wake()

        return done

    def on_snapshot(self) -> None:
        """The Raft wrapper loaded a snapshot (raftvip/cluster.py `_load`)."""
        self.raft.book = snapshot_loaded(self.raft.book, self.raft.state, self.sim.now)
        self.wake()


# --- the simulation -------------------------------------------------------------------------


@dataclass
class Expected:
    """The operator's view of the flags: what the commands it was told succeeded set."""

    maintenance: set[str] = field(default_factory=set)
    drained: set[str] = field(default_factory=set)
    pins: dict[str, str] = field(default_factory=dict)


@dataclass
class Schedule:
    seed: int
    size: int
    policy: QuorumLossPolicy
    backup: int
    preempt_delay: float
    actions: list[tuple[float, str, tuple[Any, ...]]]
    end: float
    # a roll-out, member by member: (when, member, "new" | "old"), also among `actions`
    rollout: tuple[tuple[float, str, str], ...] = ()


class Sim:
    def __init__(self, schedule: Schedule, trace: bool = False, newer: str | None = None) -> None:
        self.schedule = schedule
        self.rng = random.Random(schedule.seed * 7919 + 17)
        self.sched = Scheduler()
        self.keep_trace = trace
        self.trace_lines: list[str] = []
        self.names = [f"lb{i}" for i in range(1, schedule.size + 1)]
        vips: list[str] = []
        preferred: dict[str, str] = {}
        for i, name in enumerate(self.names, start=1):
            vip = f"10.0.{i}.1"
            vips.append(vip)
            preferred[vip] = name
            vips.append(f"10.0.{i}.2")
        svc = service(
            "apex",
            vips,
            preferred,
            backup_prepend=schedule.backup,
            preempt_delay=schedule.preempt_delay,
        )
        # Odd seeds: owners' steady paths carry one prepend, left out for a while after a
        # takeover from an expired member (both are an owner's, "primary", path).
        announce = replace(
            svc.announce, takeover_margin=schedule.seed % 2, takeover_hold_time=TAKEOVER_HOLD
        )
        svc = replace(svc, announce=announce)
        self.vips = vips
        self.cfgs = {
            name: _with_raft(
                make_config(name, self.names, [svc], policy=schedule.policy, lease=LEASE)
            )
            for name in self.names
        }
        # A roll-out (`a_reload`): the new config adds EXTRA (preferred: the member that
        # reloads first) and changes every VIP's MED; a roll-back returns to `cfgs`.
        first = schedule.rollout[0][1] if schedule.rollout else self.names[0]
        new_svc = replace(
            svc,
            vips=(*svc.vips, EXTRA),
            preferred={**svc.preferred, EXTRA: first},
            announce=replace(svc.announce, med=ROLLOUT_MED),
        )
        self.new_cfgs = {name: replace(self.cfgs[name], services=(new_svc,)) for name in self.names}
        self.rollout_start: float | None = None
        self.rollout_owners: dict[str, str | None] = {}
        self.rollout_done: tuple[float, str] | None = None  # (when, "new" | "old")
        # An owner's path, or the same path while handing over (with GRACEFUL_SHUTDOWN)
        self.primary = {
            v: {
                announce_line(route_for(v, a, handover=h, takeover=t))
                for a in (svc.announce, new_svc.announce)
                for h in (False, True)
                for t in (False, True)
            }
            for v in (*vips, EXTRA)
        }
        self.holders: dict[str, set[str]] = {v: set() for v in vips}
        self.routed: dict[str, set[str]] = {v: set() for v in vips}
        self.net = Net(self)
        self.members: dict[str, SimMember] = {}
        for name in self.names:
            self.members[name] = SimMember(self, name, self.cfgs[name])
        self.expected = Expected()
        if newer is not None:
            self.members[newer].newer = True
        self.respawn: dict[str, float] = {}  # member -> when ExaBGP has its next process up
        self.planned: tuple[str, str, set[str], float, int] | None = None  # 12, 13
        self.planned_until: float | None = None
        self.last_command = -1.0
        self.in_flight = 0  # operator commands awaiting their answer
        self.queued: list[tuple[str, str, str, bool]] = []
        self.unknown_outcome = False
        self.disturbed = 0.0  # the last fault, heal, restart or command (quiet counts from it)
        self.bound = COLD_BOUND
        self.applied_log: dict[int, bytes | None] = {}
        self.violations: list[str] = []
        self.dual_since: dict[str, float] = {}
        self.cross_since: dict[str, float] = {}
        self.cross_planned: dict[str, bool] = {}
        self.owner_moves: dict[str, int] = {}
        self.last_owners: dict[str, str | None] = {}
        self.preferred = preferred
        self.cold_until = min((w for w, a, _ in schedule.actions if a != "start"), default=0.0)
        self.first_owners: dict[str, str | None] | None = None
        self.restarted_at: float | None = None  # a full-group restart being checked (11)
        self.first_quorum: float | None = None
        self.steps = 0
        self.exits: list[str] = []
        self.checks = 0
        self.dirty = True  # something an invariant reads changed since the last check
        self._components: list[set[str]] | None = None

    @property
    def now(self) -> float:
        return self.sched.now

    # -- tracing

    def trace(self, text: str) -> None:
        self.trace_lines.append(f"{self.sched.now:8.3f} {text}")
        if len(self.trace_lines) > 4000 and not self.keep_trace:
            del self.trace_lines[:2000]

    # -- world views

    def topology_changed(self) -> None:
        self._components = None
        self.dirty = True

    def components(self) -> list[set[str]]:
        if self._components is None:
            self._components = self._compute_components()
        return self._components

    def _compute_components(self) -> list[set[str]]:
        alive = [n for n, m in self.members.items() if m.running and not m.paused]
        parent = {n: n for n in alive}

        def find(x: str) -> str:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for a, b in itertools.combinations(alive, 2):
            if (a, b) not in self.net.cuts and (b, a) not in self.net.cuts:
                parent[find(a)] = find(b)
        groups: dict[str, set[str]] = {}
        for n in alive:
            groups.setdefault(find(n), set()).add(n)
        return list(groups.values())

    def majority(self) -> set[str]:
        for comp in self.components():
            if len(comp) > len(self.names) / 2:
                return comp
        return set()

    def committed_state(self) -> ClusterState:
        best: RaftNode | None = None
        for m in self.members.values():
            if best is None or m.raft.applied > best.applied:
                best = m.raft
        return best.state if best is not None else ClusterState()

    def announcers(self, vip: str, primary: bool = True) -> set[str]:
        """Members (running, not frozen) whose ExaBGP carries `vip`: as its owner would
        announce it (`primary`), or in any form (a backup path too)."""
        return self.holders[vip] if primary else self.routed[vip]

    def refresh(self, member: SimMember) -> None:
        """Recompute what `member` contributes to `holders` / `routed`."""
        name = member.name
        live = member.exabgp_up and not member.paused
        rib = member.pipe.rib
        for vip in self.vips:
            line = rib.get(vip) if live else None
            if line is None:
                self.routed[vip].discard(name)
                self.holders[vip].discard(name)
                continue
            self.routed[vip].add(name)
            if line in self.primary[vip]:
                self.holders[vip].add(name)
            else:
                self.holders[vip].discard(name)
        self.dirty = True

    # -- hooks from the model

    def on_leader(self, name: str, term: int) -> None:
        pass

    def check_applied(self, name: str, index: int, entry: Entry) -> None:
        known = self.applied_log.get(index, entry.payload)
        if known != entry.payload:
            raise Violation(f"(9) {name} applied a different command at index {index}")
        self.applied_log[index] = entry.payload

    def exited(self, member: SimMember, code: int, restart_until: float | None) -> None:
        if restart_until is not None and code == 0:
            # `raftvip restart`: the note, the exit without a withdraw; ExaBGP starts the next
            # process (python and the Raft wrapper take a moment).
            member.note = restart_until
            member.crash(keep_routes=True)
            delay = self.respawn.pop(member.name, 0.5)
            self.sched.at(self.sched.now + delay, functools.partial(self.respawned, member))
            return
        self.exits.append(f"{member.name} exited {code}")
        self.violation(f"(4) {member.name} exited with {code} unasked")

    def respawned(self, member: SimMember) -> None:
        if not member.running and member.exabgp_up:
            member.start()
            self.disturb()

    def routes_changed(self, member: SimMember) -> None:
        self.refresh(member)
        self.check_routes(member)

    # -- invariants

    def violation(self, text: str) -> None:
        self.violations.append(f"t={self.sched.now:.3f} {text}")
        raise Violation(text)

    def check_routes(self, member: SimMember) -> None:
        """Invariant 7 at the moment a member's routes change."""
        if member.fence is not None and member.loop is not None:
            inc, seq = member.fence
            me = member.raft.state.members.get(member.name)
            if me is not None and me.alive and me.incarnation == inc and me.seq >= seq:
                member.fence = None
            elif member.pipe.rib:
                self.violation(
                    f"(7) {member.name} resumed after the group expired it and announces "
                    f"{sorted(member.pipe.rib)} before a report sent after the pause committed"
                )

    def check(self) -> None:
        """After every event: the invariants that hold at every instant, and those that hold
        once the group has been quiet for the failover bound."""
        if not self.dirty:
            return
        self.dirty = False
        self.checks += 1
        now = self.sched.now
        comps = self.components()
        majority: set[str] = next((c for c in comps if len(c) > len(self.names) / 2), set())
        side = {n: i for i, c in enumerate(comps) for n in c}
        policy = self.schedule.policy
        # 6: a member that cannot hear the majority takes nothing new (its view is frozen;
        # what it had time to learn before the cut, it may still act on for reach_time)
        for name, m in self.members.items():
            deaf = (
                m.running
                and not m.paused
                and name not in majority
                and all((x, name) in self.net.cuts for x in majority)
            )
            if not deaf:
                m.minority_since = None
                continue
            if m.minority_since is None:
                m.minority_since = now
                m.minority_rib = set(m.pipe.rib)
            elif now - m.minority_since <= 1.3:
                m.minority_rib |= set(m.pipe.rib)
            else:
                new = set(m.pipe.rib) - m.minority_rib
                primary_new = {v for v in new if m.pipe.rib[v] in self.primary[v]}
                if primary_new:
                    self.violation(
                        f"(6) {name} cut off in a minority since {m.minority_since:.3f} "
                        f"announced {sorted(primary_new)}"
                    )
        if now < self.cold_until:
            self.check_cold_start()
        if self.restarted_at is not None:
            self.check_full_restart()
        if self.planned is not None:
            self.check_planned()
        quiet = now - self.disturbed >= self.bound
        for vip in self.vips:
            holders = self.announcers(vip)
            for n in holders & majority:
                # 6: a member that reaches the group announces only what its own view of
                # the log gives it (its VIP, or one it keeps until the new owner confirms)
                seen = self.members[n].loop
                if seen is not None and seen.resync_pending:
                    continue  # restarted in place: ExaBGP keeps the old routes until a resync
                if seen is not None and n not in (
                    seen.group.state.owner_of(vip),
                    seen.group.state.handovers.get(vip),
                ):
                    why = seen.decisions.get(vip)
                    self.violation(
                        f"(6) {n} reaches a majority and announces {vip} although its own "
                        f"view gives it to {seen.group.state.owner_of(vip)} "
                        f"(decision: {why.reason if why else '-'})"
                    )
            if len(holders) >= 2:
                sides = {side.get(n) for n in holders}
                if policy == "withdraw" and len(sides) > 1:
                    # only a make-before-break handover (one of them acted on a state in
                    # which the other keeps the VIP until it confirms) may overlap across a
                    # cut, until the keeper's own fence falls
                    if vip not in self.cross_since:
                        self.cross_since[vip] = now
                        # judged when the overlap begins (later placements rename reasons)
                        self.cross_planned[vip] = any(
                            self.planned_move(n, vip, holders) for n in holders
                        )
                    since = self.cross_since[vip]
                    fence = fence_time(self.cfgs[self.names[0]])
                    if not self.cross_planned[vip] or now - since > fence + 0.1:
                        self.violation(
                            f"(6) withdraw: {vip} announced on both sides of a cut by "
                            f"{sorted(holders)} since {since:.3f}"
                        )
                else:
                    self.cross_since.pop(vip, None)
                since = self.dual_since.setdefault(vip, now)
                if quiet and now - max(since, self.disturbed + self.bound) > HANDOVER_MAX:
                    self.violation(f"(2) {vip} announced by {sorted(holders)} since {since:.3f}")
            else:
                self.dual_since.pop(vip, None)
                self.cross_since.pop(vip, None)
        if not quiet:
            return
        committed = self.committed_state()
        self.check_rollout(committed)
        # 3: flags are what the operator was told (once no command awaits its answer)
        if self.unknown_outcome and not self.in_flight:
            self.unknown_outcome = False
            self.expected = Expected(
                set(committed.maintenance),
                {n for n, st in committed.members.items() if st.drained},
                dict(committed.pins),
            )
        e = self.expected
        drained = {n for n, s in committed.members.items() if s.drained}
        if not self.in_flight and (
            committed.maintenance != e.maintenance
            or drained != e.drained
            or dict(committed.pins) != e.pins
        ):
            self.violation(
                f"(3) flags: committed maintenance={sorted(committed.maintenance)} "
                f"drained={sorted(drained)} pins={dict(committed.pins)}; the operator was told "
                f"maintenance={sorted(e.maintenance)} drained={sorted(e.drained)} pins={e.pins}"
            )
        # 1: availability
        can = [n for n in majority if self.members[n].health["apex"] and n not in e.drained]
        for vip in self.vips:
            if "apex" in committed.maintenance or not can:
                break
            if not self.announcers(vip, primary=False):
                self.violation(
                    f"(1) {vip} has no announcer although {can} are healthy in a majority"
                )
        # 8: liveness
        for n in majority:
            m = self.members[n]
            st = committed.members.get(n)
            if m.loop is not None and (
                st is None or not st.alive or st.incarnation != m.loop.incarnation
            ):
                self.violation(f"(8) {n} runs, reaches a majority, yet is not alive in the group")

    def check_full_restart(self) -> None:
        """11: after a full-group restart (state on disk), every VIP is announced within
        FULL_RESTART_BOUND of the first quorum (a member's report committed again)."""
        now = self.sched.now
        if self.first_quorum is None:
            if any(
                m.loop is not None and m.running and core.reachable(m.loop, now)
                for m in self.members.values()
            ):
                self.first_quorum = now
            return
        committed = self.committed_state()
        healthy = any(
            m.health["apex"] and n not in self.expected.drained
            for n, m in self.members.items()
            if m.running
        )
        if (
            "apex" in committed.maintenance
            or not healthy
            or all(self.routed[vip] for vip in self.vips)
        ):
            self.restarted_at = None  # done
        elif now - self.first_quorum > (
            FULL_RESTART_BOUND_WITHDRAW
            if self.schedule.policy == "withdraw"
            else FULL_RESTART_BOUND
        ):
            dark = [vip for vip in self.vips if not self.routed[vip]]
            self.violation(
                f"(11) full restart: {dark} still unannounced {now - self.first_quorum:.2f}s "
                "after the first quorum"
            )

    def check_cold_start(self) -> None:
        """10: all members start within 0.4 s: from the first moment every VIP is announced
        until the first fault, no VIP changes owner, the preferred owners have theirs and the
        spread is even (max - min <= 1)."""
        committed = self.committed_state()
        owners = {vip: committed.owner_of(vip) for vip in self.vips}
        if self.first_owners is None:
            if not all(self.holders[vip] for vip in self.vips):
                return
            self.first_owners = owners
            load = {name: 0 for name in self.names}
            for owner in owners.values():
                if owner is not None:
                    load[owner] += 1
            wrong = [v for v, m in self.preferred.items() if owners[v] != m]
            if wrong or max(load.values()) - min(load.values()) > 1:
                self.violation(
                    f"(10) first full announcement: owners {owners}, load {load}, "
                    f"preferred owners without their VIP: {wrong}"
                )
        elif owners != self.first_owners:
            moved = {
                v: (self.first_owners[v], owners[v])
                for v in self.vips
                if owners[v] != self.first_owners[v]
            }
            self.violation(
                f"(10) cold start: owners moved after the first full announcement: {moved}"
            )

    def planned_move(self, name: str, vip: str, holders: set[str]) -> bool:
        """In the state `name` acted on, `vip` is being handed over between two holders, or
        `name` got it from another holder that was still alive in the log (a drain, a
        preemption, a rebalance: make before break, so the old owner keeps announcing until
        it learns of the confirmation, or until its own fence falls). A move caused by an
        expiry is not planned: the old owner's fence should have fallen first."""
        seen = self.members[name].loop
        if seen is None:
            return False
        state = seen.group.state
        if state.handovers.get(vip) in holders:
            return True
        for event in reversed(state.events):
            if event.kind != "owner" or event.subject != vip:
                continue
            before, _, rest = event.detail.partition(" -> ")
            after = rest.split(" ", 1)[0]
            if after != name or before not in holders:
                return False
            return not any(
                e.version == event.version and e.kind == "alive" and e.subject == before
                for e in state.events
            )
        return False

    def owner_moves_check(self) -> None:
        committed = self.committed_state()
        for vip in self.vips:
            owner = committed.owner_of(vip)
            if self.last_owners.get(vip, owner) != owner:
                self.owner_moves[vip] = self.owner_moves.get(vip, 0) + 1
                if self.owner_moves[vip] > MAX_MOVES:
                    self.violation(
                        f"(4) {vip} changed owner {self.owner_moves[vip]} times in one episode"
                    )
            self.last_owners[vip] = owner

    # -- running a schedule

    def disturb(self, bound: float = BOUND) -> None:
        self.disturbed = self.sched.now
        self.bound = bound
        self.owner_moves.clear()

    def run(self) -> None:
        for when, action, args in self.schedule.actions:
            self.sched.at(when, functools.partial(self.do, action, *args))
        self.sched.at(CHECK_EVERY, self._periodic)

        def after() -> None:
            if self.dirty:
                self.check()

        self.steps = self.sched.run_until(self.schedule.end, after)

    def _periodic(self) -> None:
        """Time alone makes some invariants due (quiet windows, bounded overlaps)."""
        self.dirty = True
        self.sched.at(self.sched.now + CHECK_EVERY, self._periodic)

    def do(self, action: str, *args: Any) -> None:
        self.trace(f"FAULT {action} {' '.join(map(str, args))}")
        getattr(self, f"a_{action}")(*args)
        self.owner_moves_check()

    # -- actions (faults and operator commands)

    def a_start(self, name: str) -> None:
        self.members[name].start()
        self.disturb(COLD_BOUND)

    def a_crash(self, name: str) -> None:
        if self.members[name].running:
            self.members[name].crash()
        self.disturb()

    def a_restart(self, name: str, clock_step: float) -> None:
        m = self.members[name]
        if m.running:
            m.crash()
        m.wall_offset += clock_step
        m.start()
        self.disturb()

    def a_full_restart(self, clock_step: float, late: str, delay: float) -> None:
        """Every member crashes and restarts within 0.3 s (state kept, clocks stepped by
        `clock_step`), but `late` (if any) comes back only `delay` later."""
        for m in self.members.values():
            if m.running:
                m.crash()
            m.wall_offset += clock_step
        self.restarted_at, self.first_quorum = self.sched.now, None
        for name in self.names:
            when = self.sched.now + self.rng.uniform(0.0, 0.3) + (delay if name == late else 0.0)
            self.sched.at(when, functools.partial(self.a_start, name))
        self.disturb(COLD_BOUND)

    def a_restart_in_place(self, name: str, delay: float) -> None:
        """`raftvip restart` on `name`; ExaBGP has the next process up `delay` later."""
        m = self.members[name]
        self.disturb()
        if not m.running or m.paused or m.loop is None:
            return
        self.respawn[name] = delay
        owned = {  # EXTRA is checked by (15): a roll-out may leave it on this member alone
            v for v, a in self.committed_state().owners.items() if a.owner == name and v != EXTRA
        }
        self.planned = ("restart", name, owned, self.sched.now, m.loop.incarnation)
        m.events.append(core.RestartRequested())
        m.wake()

    def a_leave(self, name: str) -> None:
        """`raftvip leave` on `name` (ExecStop), then ExaBGP stops: see `a_stop`."""
        m = self.members[name]
        self.disturb()
        if not m.running or m.paused or m.loop is None:
            return
        owned = {  # EXTRA is checked by (15): a roll-out may leave it on this member alone
            v for v, a in self.committed_state().owners.items() if a.owner == name and v != EXTRA
        }
        self.planned = ("leave", name, owned, self.sched.now, m.loop.incarnation)
        m.events.append(core.LeaveRequested())
        m.wake()

    def a_stop(self, name: str) -> None:
        """systemd stops ExaBGP (SIGTERM): the LB's sessions and routes are gone."""
        m = self.members[name]
        if m.running:
            m.crash()
        self.disturb()
        if self.planned is not None and self.planned[0] == "leave":
            self.planned_until = self.sched.now + 1.0

    def check_planned(self) -> None:
        """12 (restart) / 13 (leave, then ExaBGP stopped): while a planned stop or restart
        runs and nothing else happens, the VIPs it concerns keep an announcer at every instant,
        and a restart moves none of them."""
        assert self.planned is not None
        kind, name, vips, began, incarnation = self.planned
        now = self.sched.now
        committed = self.committed_state()
        member = committed.members.get(name)
        if kind == "restart":
            back = (
                member is not None
                and member.alive
                and member.incarnation != incarnation
                and not member.restarting
            )
            m = self.members[name]
            if (
                m.loop is not None
                and m.loop.restart is not None
                and m.loop.restart[0].startswith("refused")
            ):
                self.planned = None  # refused (no quorum, stopping): nothing to check
                return
            if back and now - began > 1.0:
                self.planned = None
                return
            moved = [v for v in vips if committed.owner_of(v) != name]
            commanded = self.last_command > began  # an operator's move is not the restart's
            if moved and not commanded and member is not None and member.incarnation == incarnation:
                self.violation(f"(12) restart of {name}: {moved} moved away")
        elif self.planned_until is not None and now > self.planned_until:
            self.planned = self.planned_until = None
            return
        dark = [v for v in vips if not self.routed[v]]
        if dark and "apex" not in committed.maintenance and self.last_command <= began:
            self.violation(f"(12/13) {kind} of {name}: {dark} without an announcer")

    def a_pause(self, name: str) -> None:
        m = self.members[name]
        if m.running and not m.paused:
            m.pause()
        self.disturb()

    def a_resume(self, name: str) -> None:
        m = self.members[name]
        if m.running and m.paused:
            m.resume()
        self.disturb()

    def a_cut(self, pairs: tuple[tuple[str, str], ...]) -> None:
        self.net.cuts |= set(pairs)
        self.net.changed()
        self.disturb()

    def a_cut_leader(self, mode: str) -> None:
        """`alone`: the leader loses everyone; `keep_leader`: a follower keeps only the
        leader (the 'quorum judged by links' case)."""
        leader = next((n for n, m in self.members.items() if m.raft.role == "leader"), None)
        if leader is None:
            self.disturb()
            return
        others = [n for n in self.names if n != leader]
        if mode == "alone":
            pairs = [(leader, o) for o in others] + [(o, leader) for o in others]
        else:
            victim = self.rng.choice(others)
            rest = [o for o in others if o != victim]
            pairs = [(victim, o) for o in rest] + [(o, victim) for o in rest]
        self.trace(f"cut {pairs}")
        self.a_cut(tuple(pairs))

    def a_heal(self) -> None:
        self.net.cuts.clear()
        self.net.changed()
        self.disturb()

    def a_reload(self, name: str, variant: str) -> None:
        """`raftvip reload` on `name` after its file changed to the new (or old) config. Not
        a disturbance: a roll-out must keep every invariant as if nothing happened."""
        m = self.members[name]
        cfg = self.new_cfgs[name] if variant == "new" else self.cfgs[name]
        rollout = self.schedule.rollout
        if self.rollout_start is None:
            self.rollout_start = self.now
            quiet = self.now - self.disturbed >= self.bound
            committed = self.committed_state()
            # what the roll-out must not move (judged only when it starts on a quiet group)
            self.rollout_owners = (
                {v: committed.owner_of(v) for v in self.vips} if quiet and committed.formed else {}
            )
        if (rollout[-1][1], rollout[-1][2]) == (name, variant) and self.now >= rollout[-1][0]:
            self.rollout_done = (self.now, variant)
        m.cfg, m.specs = cfg, service_specs(cfg)  # its file: a restart reads it too
        if m.running and m.loop is not None:
            m.events.append(core.Reloaded(cfg))
            m.wake()

    def check_rollout(self, committed: ClusterState) -> None:
        """15: a roll-out moves no VIP present in both configs (while nothing else happens),
        and once done and the group quiet, EXTRA is announced by exactly its owner (new) or
        by nobody (old)."""
        if self.rollout_start is None or self.disturbed > self.rollout_start:
            return
        for vip, before in self.rollout_owners.items():
            now = committed.owner_of(vip)
            if now != before:
                self.violation(f"(15) the roll-out moved {vip}: {before} -> {now}")
        if self.rollout_done is None or self.now - self.rollout_done[0] < BOUND:
            return
        carriers = sorted(
            n
            for n, m in self.members.items()
            if m.exabgp_up and m.pipe.rib.get(EXTRA) in self.primary[EXTRA]
        )
        if "apex" in committed.maintenance:
            if carriers:
                self.violation(f"(15) {EXTRA} announced by {carriers} under maintenance")
        elif self.rollout_done[1] == "new":
            owner = committed.owner_of(EXTRA)
            if owner is None or carriers != [owner]:
                self.violation(
                    f"(15) after the roll-out {EXTRA} is owned by {owner}, announced by {carriers}"
                )
        elif carriers or committed.owner_of(EXTRA) is not None:
            self.violation(f"(15) after the roll-back {EXTRA} is still announced by {carriers}")

    def a_health(self, name: str, ok: bool) -> None:
        self.members[name].set_health("apex", ok)
        self.disturb()

    def a_command(self, via: str, kind: str, arg: str, on: bool) -> None:
        self.last_command = self.sched.now
        if self.in_flight:
            # One operator: a command waits for the answer to the previous one (two that
            # race may be answered in another order than the log's).
            self.queued.append((via, kind, arg, on))
            return
        m = self.members[via]
        self.disturb()
        if not m.running or m.paused or m.loop is None:
            return
        state = m.raft.state
        wall = m.wall()
        try:
            cmd: Command
            if kind == "maintenance":
                cmd = operator.maintenance(m.cfg, state, arg, on, [], wall)
            elif kind == "drain":
                cmd = operator.drain(m.cfg, state, arg, on, False, [], wall)
            else:
                cmd = operator.pin(m.cfg, state, arg, self.pin_target(m, on), wall)
        except operator.Refused as exc:
            self.trace(f"operator: {kind} {arg} refused: {exc}")
            return
        if not core.reachable(m.loop, self.sched.now):
            self.trace(f"operator: {kind} {arg}: no quorum, nothing changed")
            return
        self.commit(m, cmd, f"{kind} {arg} {on}", self.sched.now + 5.0)

    def commit(
        self, m: SimMember, cmd: Command, what: str, deadline: float, again: bool = False
    ) -> None:
        """Agent.commit: propose, and resolve an outcome that pysyncobj leaves unknown by
        reading the state (core.operator), proposing again while the effect is not visible."""
        answered = False
        generation = m.raft.generation
        if not again:
            self.in_flight += 1

        def gone() -> bool:
            """The member the operator talked to died: its answer is lost."""
            return not m.running or m.raft.generation != generation

        def resolve(settle: float) -> None:
            if gone():
                self.finished(cmd)
                return
            if operator.effect_visible(cmd, m.raft.state):
                self.trace(f"operator: {what}: committed (read from the state)")
                self.record_flag(cmd)
                self.finished(None)
            elif self.sched.now < settle:
                self.sched.at(self.sched.now + 0.02, functools.partial(resolve, settle))
            elif self.sched.now < deadline:
                self.commit(m, cmd, what, deadline, again=True)
            else:
                self.trace(f"operator: {what}: outcome unknown, the operator reads status")
                self.finished(cmd)

        def outcome(err: int | None) -> None:
            nonlocal answered
            if answered:
                return
            answered = True
            if gone():
                self.finished(cmd)
                return
            kind, why = operator.outcome_of(err)
            if kind == "committed":
                self.trace(f"operator: {what}: committed")
                self.record_flag(cmd)
                self.finished(None)
            elif kind == "not committed" and not again:
                self.trace(f"operator: {what}: not committed ({why}), nothing changed")
                self.finished(None)
            else:  # unknown, or a retry after an unknown outcome: that one may still commit
                self.trace(f"operator: {what}: outcome unknown ({why}), reading the state")
                resolve(min(self.sched.now + 1.0, deadline))

        m.raft.propose(encode_command(cmd), outcome)
        self.sched.at(deadline, functools.partial(outcome, None))

    def finished(self, unknown: Command | None) -> None:
        """An operator command got its answer. `unknown`: the answer was "outcome unknown"
        (or the member died): the operator reads `raftvip status` once the group is quiet."""
        self.in_flight -= 1
        if unknown is not None:
            self.unknown_outcome = True
        if not self.in_flight and self.queued:
            self.a_command(*self.queued.pop(0))

    def pin_target(self, m: SimMember, on: bool) -> str | None:
        if not on:
            return None
        state = m.raft.state
        able = [n for n in self.names if state.eligible(n, "apex")]
        return self.rng.choice(able) if able else self.names[0]

    def record_flag(self, cmd: Command) -> None:
        e = self.expected
        if isinstance(cmd, SetMaintenance):
            (e.maintenance.add if cmd.on else e.maintenance.discard)(cmd.service)
        elif isinstance(cmd, SetDrain):
            (e.drained.add if cmd.on else e.drained.discard)(cmd.member)
        elif isinstance(cmd, SetPin):
            if cmd.member is None:
                e.pins.pop(cmd.vip, None)
            else:
                e.pins[cmd.vip] = cmd.member


# --- schedules ------------------------------------------------------------------------------

FAULTS = (
    "crash",
    "crash_clock_back",
    "pause_short",
    "pause_long",
    "pause_into_partition",
    "partition",
    "one_way",
    "leader_alone",
    "keep_leader",
    "health",
    "full_restart",
    "restart_in_place",
    "leave_stop",
)


def make_schedule(seed: int) -> Schedule:
    rng = random.Random(seed)
    size = rng.choice((3, 3, 3, 5))
    policy: QuorumLossPolicy = rng.choice(("hold", "withdraw"))
    names = [f"lb{i}" for i in range(1, size + 1)]
    actions: list[tuple[float, str, tuple[Any, ...]]] = []
    for name in names:
        actions.append((rng.uniform(0.0, 0.4), "start", (name,)))
    t = 1.6
    fault_end = t
    drained: set[str] = set()
    maintenance = False
    for _ in range(1 if rng.random() < 0.6 else 2):
        fault = rng.choice(FAULTS)
        victim = rng.choice(names)
        minority = rng.sample(names, (size - 1) // 2)
        length = rng.uniform(0.3, 2.5)
        if fault == "crash":
            actions += [(t, "crash", (victim,)), (t + length, "restart", (victim, 0.0))]
        elif fault == "crash_clock_back":
            actions += [
                (t, "crash", (victim,)),
                (t + length, "restart", (victim, -rng.uniform(5.0, 120.0))),
            ]
        elif fault == "pause_short":
            length = rng.uniform(0.2, 1.45)
            actions += [(t, "pause", (victim,)), (t + length, "resume", (victim,))]
        elif fault == "pause_long":
            length = rng.uniform(1.5, 3.5)
            actions += [(t, "pause", (victim,)), (t + length, "resume", (victim,))]
        elif fault == "pause_into_partition":
            length = rng.uniform(1.0, 3.0)
            others = [n for n in names if n != victim]
            pairs = tuple((victim, o) for o in others) + tuple((o, victim) for o in others)
            actions += [
                (t, "pause", (victim,)),
                (t + length * 0.5, "cut", (pairs,)),
                (t + length, "resume", (victim,)),
                (t + length + rng.uniform(0.5, 2.5), "heal", ()),
            ]
            length += 2.5
        elif fault in ("partition", "one_way"):
            rest = [n for n in names if n not in minority]
            pairs = tuple((a, b) for a in minority for b in rest)
            if fault == "partition":
                pairs += tuple((b, a) for a, b in pairs)
            actions += [(t, "cut", (pairs,)), (t + length, "heal", ())]
        elif fault in ("leader_alone", "keep_leader"):
            mode = "alone" if fault == "leader_alone" else "keep_leader"
            actions += [(t, "cut_leader", (mode,)), (t + length + 0.5, "heal", ())]
        elif fault == "restart_in_place":
            actions += [(t, "restart_in_place", (victim, rng.uniform(0.2, 2.5)))]
            length = 3.0
        elif fault == "leave_stop":
            stop = rng.uniform(0.3, 2.0)
            actions += [
                (t, "leave", (victim,)),
                (t + stop, "stop", (victim,)),
                (t + stop + length, "restart", (victim, 0.0)),
            ]
            length += stop
        elif fault == "health":
            actions += [(t, "health", (victim, False)), (t + length, "health", (victim, True))]
        elif fault == "full_restart":
            step = -rng.uniform(1.0, 60.0) if rng.random() < 0.3 else 0.0
            late, delay = (victim, rng.uniform(1.0, 3.0)) if rng.random() < 0.5 else ("", 0.0)
            actions += [(t, "full_restart", (step, late, delay))]
            length = 0.5 + delay
        # operator commands racing the fault
        for _ in range(rng.choice((0, 0, 1, 2))):
            when = t + rng.uniform(-0.2, length + 0.5)
            via = rng.choice(names)
            kind = rng.choice(("drain", "maintenance", "pin"))
            if kind == "drain":
                target = rng.choice(names)
                on = target not in drained and len(drained) < (size - 1) // 2
                (drained.add if on else drained.discard)(target)
                actions.append((when, "command", (via, "drain", target, on)))
            elif kind == "maintenance":
                maintenance = not maintenance
                actions.append((when, "command", (via, "maintenance", "apex", maintenance)))
            else:
                vip = f"10.0.{rng.randint(1, size)}.{rng.randint(1, 2)}"
                actions.append((when, "command", (via, "pin", vip, rng.random() < 0.6)))
        fault_end = t + length
        t += length + (COLD_BOUND if fault == "full_restart" else BOUND) + rng.uniform(0.1, 0.3)
    # end with maintenance off and nothing drained (as the fault ends), checked once more
    cleanup = fault_end + 0.7
    if maintenance:
        actions.append((cleanup, "command", (names[0], "maintenance", "apex", False)))
    for target in sorted(drained):
        actions.append((cleanup + 0.1, "command", (names[0], "drain", target, False)))
    if maintenance or drained:
        t = max(t, cleanup + 0.1 + BOUND + 0.4)
    # A rolling config change racing the faults, from its own generator (the schedules of
    # the seeds without one stay what they were): the new config member by member, then
    # maybe the old one again.
    roll = random.Random(seed * 104729 + 11)
    rollout: list[tuple[float, str, str]] = []
    if roll.random() < ROLLOUTS:
        when = roll.uniform(1.3, max(1.4, t - 1.0))
        for variant in ("new", "old") if roll.random() < 0.5 else ("new",):
            for name in roll.sample(names, size):
                rollout.append((when, name, variant))
                when += roll.uniform(0.05, 0.8)
            when += roll.uniform(0.0, BOUND)
        actions += [(w, "reload", (n, v)) for w, n, v in rollout]
        t = max(t, when + BOUND + 0.5)
    actions.sort(key=lambda a: a[0])
    return Schedule(
        seed=seed,
        size=size,
        policy=policy,
        backup=rng.choice((0, 0, 1)),
        preempt_delay=rng.choice((0.5, 1.0)),
        actions=actions,
        end=t,
        rollout=tuple(rollout),
    )


# --- running seeds --------------------------------------------------------------------------


@dataclass
class Outcome:
    seed: int
    ok: bool
    violation: str
    steps: int
    sim_seconds: float
    trace: list[str]
    logs: dict[str, list[str]]


def run_seed(seed: int, trace: bool = False, newer: str | None = None) -> Outcome:
    schedule = make_schedule(seed)
    sim = Sim(schedule, trace=trace, newer=newer)
    try:
        sim.run()
    except Violation as exc:
        return Outcome(
            seed,
            False,
            f"t={sim.sched.now:.3f} {exc}",
            sim.steps,
            sim.sched.now,
            sim.trace_lines[-60:] if not trace else sim.trace_lines,
            {n: m.logs[-15:] for n, m in sim.members.items()},
        )
    return Outcome(seed, True, "", sim.steps, schedule.end, sim.trace_lines if trace else [], {})


def describe(schedule: Schedule) -> str:
    head = f"{schedule.size} members, {schedule.policy}, backup_prepend={schedule.backup}"
    return (
        head
        + ", faults: "
        + ", ".join(
            f"{when:.2f}s {action}{args if args else ''}"
            for when, action, args in schedule.actions
            if action != "start"
        )
    )


def print_failure(outcome: Outcome, out: Callable[[str], None]) -> None:
    out(f"seed {outcome.seed}: VIOLATION {outcome.violation}")
    out(f"  schedule: {describe(make_schedule(outcome.seed))}")
    out("  last events:")
    for line in outcome.trace[-40:]:
        out(f"    {line}")
    for name, lines in outcome.logs.items():
        if lines:
            out(f"  {name} log (last lines):")
            for line in lines[-8:]:
                out(f"    {line}")
    out(f"  replay: python -m tests.sim --seed {outcome.seed} --trace")


def _worker(seeds: Sequence[int]) -> list[Outcome]:
    return [run_seed(seed) for seed in seeds]


def run_many(seeds: Iterable[int], workers: int) -> tuple[list[Outcome], float]:
    seeds = list(seeds)
    started = time.perf_counter()
    if workers <= 1:
        outcomes = [run_seed(s) for s in seeds]
    else:
        # Small interleaved chunks, handed out as workers free up: no worker idles at the end.
        chunks = [seeds[i : i + 20] for i in range(0, len(seeds), 20)]
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            outcomes = [o for chunk in pool.imap_unordered(_worker, chunks) for o in chunk]
    elapsed = time.perf_counter() - started
    outcomes.sort(key=lambda o: o.seed)
    return outcomes, elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=1000, help="how many schedules (from --first)")
    parser.add_argument("--first", type=int, default=1, help="the first seed")
    parser.add_argument("--seed", type=int, default=None, help="replay this one seed")
    parser.add_argument("--trace", action="store_true", help="print the whole event trace")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    if args.seed is not None:
        outcome = run_seed(args.seed, trace=True)
        print(f"seed {args.seed}: {describe(make_schedule(args.seed))}")
        if args.trace:
            for line in outcome.trace:
                print(line)
        if not outcome.ok:
            print_failure(outcome, print)
            return 1
        print(
            f"seed {args.seed}: ok ({outcome.steps} steps, {outcome.sim_seconds:.1f} s simulated)"
        )
        return 0
    outcomes, elapsed = run_many(range(args.first, args.first + args.seeds), args.workers)
    failed = [o for o in outcomes if not o.ok]
    steps = sum(o.steps for o in outcomes)
    simulated = sum(o.sim_seconds for o in outcomes)
    for outcome in failed[:3]:
        print_failure(outcome, print)
    kinds: dict[str, int] = {}
    for outcome in failed:
        key = outcome.violation.split(" ", 2)[1] if " " in outcome.violation else "?"
        kinds[key] = kinds.get(key, 0) + 1
    print(
        f"{len(outcomes)} schedules, {len(failed)} violations {dict(sorted(kinds.items()))}, "
        f"{elapsed:.1f} s on {args.workers} workers: {len(outcomes) / elapsed:.0f} schedules/s, "
        f"{steps / elapsed:,.0f} steps/s, {simulated:,.0f} s simulated"
    )
    if failed:
        print("failing seeds: " + " ".join(str(o.seed) for o in failed[:50]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
