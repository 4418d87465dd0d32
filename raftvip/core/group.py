"""What a member observes of its Raft group (values only; the shell reads them off pysyncobj)."""

from __future__ import annotations

from dataclasses import dataclass

from raftvip.core.state import ClusterState


@dataclass(frozen=True)
class RaftInfo:
    """This member's view of the Raft layer, for status, metrics and announce decisions."""

    leader: str | None
    is_leader: bool
    term: int
    commit_index: int
    last_applied: int
    has_quorum: bool  # pysyncobj's view: links open to a majority of the peers
    ready: bool  # caught up with a leader at least once since start
    connected: frozenset[str]  # peers whose link is open
    # Heartbeat leases (core/liveness.py): this member's newest loop stamp that a leader
    # vouches for (monotonic; -inf: none), and whether the current leader renews leases from
    # heartbeats (a leader of an older build does not: reports renew them then).
    confirmed: float = -float("inf")
    leader_echoes: bool = False


NO_INFO = RaftInfo(
    leader=None,
    is_leader=False,
    term=0,
    commit_index=0,
    last_applied=0,
    has_quorum=False,
    ready=False,
    connected=frozenset(),
)


@dataclass(frozen=True)
class GroupObservation:
    """The replicated state and the Raft view, read together by the shell before a step."""

    state: ClusterState
    info: RaftInfo


EMPTY_GROUP = GroupObservation(ClusterState(), NO_INFO)
