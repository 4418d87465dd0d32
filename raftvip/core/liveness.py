"""Lease renewal on the Raft heartbeats: the bookkeeping of both ends, pure.

Until command format 3 a member renewed its lease with a `report` log entry every
`report_interval`: N members x 2 commits a second, each replicated to N - 1 peers, most of an
idle group's CPU. From format 3 on, the renewal rides on the heartbeats that Raft sends
anyway:

- every append_entries of the leader carries its send time `lt` (the leader's clock) and,
  for that follower, an *echo*: a stamp of the follower's own that the leader can vouch for;
- the follower's answer carries `lt` back, `alive`: until when the member is known to run
  (the answer's own send time while its member loop steps on time, else the loop's last
  step: a loop that hangs stops renewing even while its Raft thread answers; see
  `answer_stamp`; the follower's clock) and `age`: how long before the answer that was.

The leader (`LeaderLiveness`) counts a follower alive until `r - age` (`r`: when the answer
came, its own clock), and expires it `lease` after that (core/leader.py). `r - age` is never
earlier than the follower's `alive` in real time, so a follower that fences `fence_time`
after its newest echoed stamp has withdrawn before this leader can expire it.

A follower must also have withdrawn before any *other* leader can expire it. A leader echoes
a stamp only when

- the round it answered (`lt`) is *confirmed*: a majority of the voters (the leader counts
  itself) answered a round sent at or after it. Any leader of a higher term is elected by a
  majority that voted after answering such a round, hence after `lt`, and grants every
  member a fresh lease at its election;
- the answer came within `ECHO_RTT` of `lt` (the leader's clock on both ends), so the stamp
  is at most `ECHO_RTT` later than `lt`, hence than that election.

So the stamp is at most `ECHO_RTT` after any later leader's grant, and `lease - fence_time`
(0.65 s by default) covers that.

The link-drop path (leader.fenced_by) needs a tighter bound than the election: the member
that elected us (the intersection of the two majorities) answered that confirmed round no
later than it last heard any leader. So every vote carries how long ago its voter last
accepted an append (or started, if it never did: an earlier process of it may have), and
`prior_contact` is the latest of those, our own included: no earlier leader vouched for a
stamp later than `prior_contact + ECHO_RTT`. In a full-group restart that is when the
processes started; after a leader crash, when the last heartbeat of the dead leader came.

An echo also carries the leader's last log index when it was sent. The follower trusts it
only once it has applied that far (`FollowerLiveness.confirmed`): an `expire` of this member
committed earlier by some other leader is then in the state it acts on, as with a report,
whose renewal counts only once the state shows it.

The leader's own stamp is the newest confirmed round whose index (its last log index when it
sent that round) it has applied (`LeaderLiveness.own_stamp`).

pysyncobj_patches.PreVoteSyncObj carries the stamps on pysyncobj's own messages; the
simulator (tests/sim.py) calls the same classes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

# An answer slower than this round trip (leader's clock) renews the lease at the leader but
# is never echoed back as confirmed (see the module docstring).
ECHO_RTT = 0.05
_ROUNDS = 128  # rounds remembered for their log index (12.8 s of 0.1 s heartbeats)
_FRESH = 8  # per follower: recent (lt, alive) answers that may be echoed
_PENDING = 32  # per follower: echoes awaiting their log index


class LeaderLiveness:
    """The leader's side, for one leadership (a new one starts from nothing)."""

    __slots__ = ("_acked", "_confirmed", "_fresh", "_rounds", "counted", "since")

    def __init__(self, since: float) -> None:
        self.since = since
        self._rounds: dict[float, int] = {}  # lt -> the last log index when it was sent
        self._acked: dict[str, tuple[float, int]] = {}  # peer -> newest (lt, index) answered
        self._fresh: dict[str, deque[tuple[float, float]]] = {}  # peer -> (lt, alive)
        # peer -> until when (this leader's clock) its member loop is known to have run
        self.counted: dict[str, float] = {}
        self._confirmed: tuple[float, int] | None = None

    def sent_round(self, lt: float, index: int) -> None:
        """A heartbeat round leaves at `lt` with `index` as the last log index."""
        rounds = self._rounds
        rounds[lt] = index
        if len(rounds) > _ROUNDS:
            for old in list(rounds)[: len(rounds) - _ROUNDS]:
                del rounds[old]

    def answered(
        self, peer: str, lt: float, alive: float | None, age: float | None, now: float
    ) -> None:
        """`peer` answered the round sent at `lt`; `now` is when the answer came.
        `alive`/`age` are None when its member loop has not stepped yet."""
        if lt < self.since:
            return  # a round of an earlier leadership
        index = self._rounds.get(lt)
        if index is not None:
            acked = self._acked.get(peer)
            if acked is None or lt > acked[0]:
                self._acked[peer] = (lt, index)
                self._confirmed = None
        if alive is None or age is None or age < 0:
            return
        seen = now - age
        if seen > self.counted.get(peer, -float("inf")):
            self.counted[peer] = seen
        if now - lt <= ECHO_RTT:
            fresh = self._fresh.get(peer)
            if fresh is None:
                fresh = self._fresh[peer] = deque(maxlen=_FRESH)
            fresh.append((lt, alive))

    def confirmed(self, voters: tuple[str, ...], now: float) -> tuple[float, int] | None:
        """(lt, index) of the newest round a majority of `voters` (peers; the leader counts
        itself) has answered; with no peers, `now` itself. None: no such round yet."""
        if not voters:
            return now, max(self._rounds.values(), default=0)
        cached = self._confirmed
        if cached is not None:
            return cached
        need = (len(voters) + 1) // 2  # peers' answers needed beside the leader's own
        acked = sorted(
            (self._acked[p] for p in voters if p in self._acked), key=lambda a: a[0], reverse=True
        )
        if len(acked) < need:
            return None
        self._confirmed = acked[need - 1]
        return self._confirmed

    def own_stamp(self, voters: tuple[str, ...], now: float, applied: int) -> float | None:
        """The leader's own stamp: the newest round a majority answered whose log index this
        leader has applied (the newest confirmed one may carry entries not yet committed)."""
        confirmed = self.confirmed(voters, now)
        if confirmed is None:
            return None
        lt, index = confirmed
        if index <= applied:
            return lt
        for sent, at in reversed(self._rounds.items()):
            if sent <= lt and at <= applied:
                return sent
        return None

    def echo_for(self, peer: str, voters: tuple[str, ...], now: float) -> float | None:
        """The newest stamp of `peer` this leader vouches for (see the module docstring)."""
        fresh = self._fresh.get(peer)
        if not fresh:
            return None
        confirmed = self.confirmed(voters, now)
        if confirmed is None:
            return None
        for lt, alive in reversed(fresh):
            if lt <= confirmed[0]:
                return alive
        return None


class FollowerLiveness:
    """A member's side: the echoes it got, trusted once it has applied their index."""

    __slots__ = ("_best", "_pending", "_start")

    def __init__(self, start: float) -> None:
        self._start = start  # stamps of an earlier process of this member do not count
        self._pending: deque[tuple[float, int]] = deque(maxlen=_PENDING)
        self._best = -float("inf")

    def echoed(self, alive: float, index: int) -> None:
        if alive > self._best and alive >= self._start:
            self._pending.append((alive, index))

    def confirmed(self, applied: int) -> float:
        """The newest echoed stamp whose log index this member has applied (-inf: none)."""
        pending = self._pending
        if pending:
            keep = [(a, i) for a, i in pending if i > applied]
            for alive, index in pending:
                if index <= applied and alive > self._best:
                    self._best = alive
            if len(keep) != len(pending):
                pending.clear()
                pending.extend(e for e in keep if e[0] > self._best)
        return self._best


def answer_stamp(
    now: float, loop_alive: float | None, fresh_for: float
) -> tuple[float, float] | None:
    """(alive, age) for a heartbeat answer sent at `now`: until when this member is known to
    run, and how long before `now` that was. A loop that stepped within `fresh_for`
    (`report_interval`: it steps at least that often) vouches for the member up to `now`;
    one that has not (hung, e.g. blocked on a full pipe to ExaBGP) only up to its last step,
    so that its lease runs out `fresh_for` + `lease` after it stopped at the latest. None:
    the loop has not stepped yet."""
    if loop_alive is None:
        return None
    if now - loop_alive <= fresh_for:
        return now, 0.0
    return loop_alive, now - loop_alive


def prior_contact(votes: Iterable[float | None], own: float) -> float | None:
    """The latest time any voter that elected us last heard a leader (our clock): `votes`
    are the counted votes' `receipt - age` (None: a voter of an older build that does not
    say), `own` our own. None when a counted vote does not say: the bound is unknown."""
    latest = own
    for vote in votes:
        if vote is None:
            return None
        latest = max(latest, vote)
    return latest
