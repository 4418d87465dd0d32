"""What this member announces, and why (pure).

`decide` answers, for every managed VIP, "announce or not" with a reason that `status` shows:

- `owner`: assigned to me, locally healthy, no maintenance, not drained, group reachable;
- `not_owner` / `unowned`: the group gave it to another member / to nobody;
- `unhealthy` / `disabled`: assigned to me but my local check fails / is disabled —
  local health withdraws at once, before the group agrees;
- `handover`: no longer assigned to me, but I keep announcing until the new owner confirms
  through the log that it announces (make before break), or until the handover timeout;
- `backup`: `backup_prepend > 0` and I am eligible but not the owner: announced with my AS
  prepended, so routers hold a standby path;
- `maintenance`, `drained`: operator flags from the replicated state;
- `starting`: this process has not yet caught up with the group;
- `left`: `raftvip leave` handed everything over; nothing until the process restarts;
- `resuming`: this process was frozen longer than a lease and the group has not yet heard
  from it again (its state is stale; ExaBGP must not re-advertise old routes);
- `no_quorum_hold`: the group is unreachable and `on_quorum_loss = "hold"`: keep what was
  announced while locally healthy (fail static), take nothing new;
- `no_quorum`: the group is unreachable and it was not announced;
- `fenced`: `on_quorum_loss = "withdraw"` and this member's own lease can no longer be known
  valid: `fence_time(cfg)` has passed since it sent its last report that the group committed
  (the leader expires a member at the earliest `connection_timeout` after that, so the member
  withdraws before anyone else can be given its VIPs: at most one announcer).

`plan` turns desired routes vs. announced routes into ExaBGP lines.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass

from raftvip.config import FENCE_MARGIN, Config
from raftvip.core.exabgp import Route, announce_line, route_for, withdraw_line
from raftvip.core.placement import Assignment
from raftvip.core.state import ClusterState


@dataclass(frozen=True)
class GroupView:
    """What this member knows about its own connection to the group."""

    ready: bool  # caught up with a leader at least once since start
    # In touch with the group: a report we sent less than `reach_time` ago is committed, or
    # the log we apply advanced that recently (we hear the leader). Judged by what is
    # committed, not by pysyncobj's count of open links: a member that keeps its link to the
    # leader alone still follows the log, and must.
    reachable: bool
    quorum_lost_for: float  # seconds since the group stopped hearing us (0 while it does)
    # Seconds since this member sent its last report that the group committed (inf: none).
    lease_age: float = 0.0


@dataclass(frozen=True)
class Decision:
    announce: bool
    reason: str
    prepend: int = 0  # > 0: a backup path


LocalHealth = Mapping[str, str]  # service -> "up" | "down" | "disabled"


def fence_time(cfg: Config) -> float:
    """How long a member may trust its lease after sending its last committed report.

    No leader can expire a member before `lease` after applying its report (the lease path),
    nor before `connection_timeout` of silence on its link (the disconnect path; both count
    from no earlier than the report's send time). FENCE_MARGIN covers the time this member
    needs to notice and withdraw (it wakes up at the deadline, see `Agent._step`) versus the
    time the expiry needs to be committed and the new owner to announce.
    """
    return min(cfg.cluster.lease, cfg.raft.connection_timeout) - FENCE_MARGIN


def pause_time(cfg: Config) -> float:
    """A gap between two steps of the loop longer than this may have let the group expire us.

    While the process is frozen nothing of it runs (its Raft thread included): the leader
    closes its link after `connection_timeout` of silence and expires it `disconnect_grace`
    later, or expires it `lease` after its last report, sent up to `report_interval` before
    the freeze. The earliest of the two, less FENCE_MARGIN for noticing: 0.85 s by default.
    """
    earliest = min(cfg.cluster.lease - cfg.cluster.report_interval, cfg.raft.connection_timeout)
    return earliest - FENCE_MARGIN


def reach_time(cfg: Config) -> float:
    """A member whose last committed report was sent longer ago than this is cut off from the
    group (reports go out every `report_interval`, which config keeps below this)."""
    return cfg.raft.connection_timeout


def fenced(cfg: Config, view: GroupView) -> bool:
    """`on_quorum_loss = "withdraw"` and this member's lease may be gone."""
    return cfg.cluster.on_quorum_loss == "withdraw" and view.lease_age >= fence_time(cfg)


REASONS = (
    "starting",
    "left",
    "resuming",
    "disabled",
    "unhealthy",
    "maintenance",
    "fenced",
    "no_quorum_hold",
    "no_quorum",
    "owner",
    "handover",
    "drained",
    "unowned",
    "backup",
    "not_owner",
)


@dataclass(frozen=True)
class DecideInputs:
    """Everything `decide` reads, as one value: it is also the loop's cache key, so an input
    cannot be computed and then left out (how the pause fence was once lost)."""

    ready: bool  # caught up with the group since start
    left: bool  # `raftvip leave` is done: announce nothing until the process restarts
    resuming: bool  # frozen longer than the group waits: withdraw until it hears from us
    reachable: bool  # the group hears us: take what it gives
    fenced: bool  # withdraw policy: our lease may be gone
    health: Mapping[str, str]  # service -> up | down | disabled (local)
    maintenance: frozenset[str]
    owners: Mapping[str, Assignment]
    handovers: Mapping[str, str]
    alive: bool  # the group has us as alive
    drained: bool
    handover_expired: frozenset[str]  # VIPs I have been handing over for too long
    announced: frozenset[str]  # what ExaBGP was last told to carry


def inputs_for(
    cfg: Config,
    state: ClusterState,
    health: LocalHealth,
    view: GroupView,
    announced: Set[str],
    handover_expired: Set[str] = frozenset(),
    resuming: bool = False,
    left: bool = False,
) -> DecideInputs:
    member = state.members.get(cfg.me)
    return DecideInputs(
        ready=view.ready,
        left=left,
        resuming=resuming,
        reachable=view.reachable,
        fenced=fenced(cfg, view),
        health=health,
        maintenance=state.maintenance,
        owners=state.owners,
        handovers=state.handovers,
        alive=member is not None and member.alive,
        drained=member is not None and member.drained,
        handover_expired=frozenset(handover_expired),
        announced=frozenset(announced),
    )


def decide(cfg: Config, inputs: DecideInputs) -> dict[str, Decision]:
    """For every managed VIP: announce it or not, and why (see the module's docstring)."""
    me = cfg.me
    decisions: dict[str, Decision] = {}
    owners = inputs.owners
    for service in cfg.services:
        local = inputs.health.get(service.name, "down")
        backup = service.announce.backup_prepend
        for vip in service.vips:
            assignment = owners.get(vip)
            owner = assignment.owner if assignment is not None else None
            if not inputs.ready:
                decisions[vip] = Decision(False, "starting")
            elif inputs.left:
                decisions[vip] = Decision(False, "left")
            elif inputs.resuming:
                decisions[vip] = Decision(False, "resuming")
            elif local == "disabled":
                decisions[vip] = Decision(False, "disabled")
            elif local != "up":
                decisions[vip] = Decision(False, "unhealthy")
            elif service.name in inputs.maintenance:
                decisions[vip] = Decision(False, "maintenance")
            elif inputs.fenced:
                decisions[vip] = Decision(False, "fenced")
            elif not inputs.reachable:
                if vip in inputs.announced:
                    # Keep the route as it was: a backup stays a (prepended) backup.
                    prepend = backup if owner != me and backup > 0 else 0
                    decisions[vip] = Decision(True, "no_quorum_hold", prepend=prepend)
                else:
                    decisions[vip] = Decision(False, "no_quorum")
            elif owner == me and not inputs.drained:
                decisions[vip] = Decision(True, "owner")
            elif inputs.handovers.get(vip) == me and vip not in inputs.handover_expired:
                decisions[vip] = Decision(True, "handover")
            elif inputs.drained:
                decisions[vip] = Decision(False, "drained")
            elif owner is None:
                decisions[vip] = Decision(False, "unowned")
            elif backup > 0 and inputs.alive:
                decisions[vip] = Decision(True, "backup", prepend=backup)
            else:
                decisions[vip] = Decision(False, "not_owner")
    return decisions


def desired_routes(cfg: Config, decisions: Mapping[str, Decision]) -> dict[str, Route]:
    routes: dict[str, Route] = {}
    for service in cfg.services:
        for vip in service.vips:
            decision = decisions.get(vip)
            if decision is not None and decision.announce:
                # A handover path carries GRACEFUL_SHUTDOWN (RFC 8326); moving into it from the
                # owner's path is a re-announce (implicit withdraw), as any attribute change.
                handover = decision.reason == "handover"
                routes[vip] = route_for(
                    vip, service.announce, prepend=decision.prepend, handover=handover
                )
    return routes


def plan(desired: Mapping[str, Route], announced: Mapping[str, Route]) -> list[str]:
    """ExaBGP lines that turn `announced` into `desired`: withdrawals first, then announces.

    A route whose attributes changed is simply re-announced (BGP implicit withdraw).
    """
    lines = [withdraw_line(route) for vip, route in announced.items() if vip not in desired]
    lines += [announce_line(route) for vip, route in desired.items() if announced.get(vip) != route]
    return lines


def resync_lines(cfg: Config) -> list[str]:
    """At start: withdraw every managed VIP; stale routes from an earlier run must not linger."""
    return [
        withdraw_line(route_for(vip, service.announce))
        for service in cfg.services
        for vip in service.vips
    ]
