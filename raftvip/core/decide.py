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

An owner's path has one of two forms (`takeover_form`): the steady form, with
`announce.takeover_margin` extra prepends of its AS, and the takeover form without them, for a
VIP taken over from a member that may still announce it (`state.Takeover`: expired, not a
confirmed withdraw or handover), until that old path must be gone (the routers' hold time).
Routers then prefer the new owner's path at once, by AS-path length; backups are longer still.

`plan` turns desired routes vs. announced routes into ExaBGP lines.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Set
from dataclasses import dataclass
from dataclasses import field as dataclass_field

from raftvip.config import FENCE_MARGIN, AnnounceConfig, Config
from raftvip.core.exabgp import Route, announce_line, route_for, withdraw_line
from raftvip.core.placement import Assignment
from raftvip.core.state import ClusterState, Takeover
from raftvip.core.values import evolve


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
class PathForm:
    """Which form an owner's path takes, until when, and why (`takeover_form`)."""

    takeover: bool  # True: without the takeover_margin prepends (preferred over a stale path)
    until: float | None  # wall clock when the takeover form ends (inf: when `why` changes)
    why: str  # "took over from lb1 after lease expiry", "lb1 handed over", ...

    def describe(self) -> str:
        """For `status`: "takeover form until 12:00:09 UTC: took over from lb1 after ..."."""
        if not self.takeover:
            return f"steady form: {self.why}"
        if self.until is None or math.isinf(self.until):
            return f"takeover form until the previous owner is back: {self.why}"
        stamp = time.strftime("%H:%M:%S", time.gmtime(self.until))
        return f"takeover form until {stamp} UTC: {self.why}"


STEADY = PathForm(False, None, "no takeover")


def _cause(cause: str) -> str:
    return {
        "lease": "lease expiry",
        "disconnect": "its Raft link dropped",
        "not back": "its restart did not come back",
        "restart not done in time": "its restart did not finish in time",
        "removed": "it was removed from the group",
    }.get(cause, f"expiry ({cause})")


def takeover_form(
    record: Takeover | None,
    announce: AnnounceConfig,
    previous_back: bool,
    wall: float,
) -> PathForm:
    """The form of the owner's path for a VIP taken over as `record` says, at `wall`.

    The takeover form lasts until the old owner's path must be gone from every router: its
    speaker stopped refreshing it at the latest when the group expired it (`record.ts`), so
    `takeover_hold_time` later the routers' hold timers have dropped it. With no hold timer
    (inf) it lasts until the previous owner is back in the group (`previous_back`: it reports
    again, after withdrawing what it no longer owns). `wall` and `record.ts` are wall clocks
    of two hosts: the form ends early by their skew, which the lease (the time between the
    hang and the expiry) covers.
    """
    if record is None:
        return STEADY
    why = f"took over from {record.previous} after {_cause(record.cause)}"
    if announce.takeover_margin == 0:
        return PathForm(False, None, f"{why}; takeover_margin = 0")
    until = record.ts + announce.takeover_hold_time
    if math.isinf(until):
        if previous_back:
            return PathForm(False, None, f"{why}; {record.previous} is back in the group")
        return PathForm(True, until, why)
    if wall >= until:
        hold = f"{announce.takeover_hold_time:g}"
        return PathForm(False, until, f"{why}; its path is gone (hold time {hold}s passed)")
    return PathForm(True, until, why)


def takeover_forms(cfg: Config, state: ClusterState, wall: float) -> dict[str, PathForm]:
    """`takeover_form` of every VIP this member owns by a takeover."""
    forms: dict[str, PathForm] = {}
    for vip, record in state.takeovers.items():
        service = cfg.service_of(vip)
        if service is None or state.owner_of(vip) != cfg.me:
            continue
        previous = state.members.get(record.previous)
        back = previous is not None and previous.alive
        forms[vip] = takeover_form(record, service.announce, back, wall)
    return forms


@dataclass(frozen=True)
class Decision:
    announce: bool
    reason: str
    prepend: int = 0  # > 0: a backup path
    form: PathForm | None = None  # an owner's path: steady or takeover, and why

    @property
    def takeover(self) -> bool:
        return self.form is not None and self.form.takeover


LocalHealth = Mapping[str, str]  # service -> "up" | "down" | "disabled"


def agreed(cfg: Config, state: ClusterState) -> Config:
    """`cfg` with the timings this member fences with: never longer than those the group
    replicated for it (its leader expires it with those: `leader.member_timings`), nor than
    any member's `connection_timeout` (any of them may lead and close our link). While a
    roll-out changes them, a member trusts its lease for the shorter of its old and new
    values until its new ones are committed. Equal settings everywhere: `cfg` itself."""
    lease, timeout = cfg.cluster.lease, cfg.raft.connection_timeout
    for name, layout in state.layouts.items():
        if layout.timings is None:
            continue
        timeout = min(timeout, layout.timings.connection_timeout)
        if name == cfg.me:
            lease = min(lease, layout.timings.lease)
    if lease == cfg.cluster.lease and timeout == cfg.raft.connection_timeout:
        return cfg
    return evolve(
        cfg,
        cluster=evolve(cfg.cluster, lease=lease),
        raft=evolve(cfg.raft, connection_timeout=timeout),
    )


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
    # VIPs I own by a takeover -> the form of my path (`takeover_forms`; changes only when a
    # takeover form starts or ends, so it is a fine cache key)
    forms: Mapping[str, PathForm] = dataclass_field(default_factory=dict)


def inputs_for(
    cfg: Config,
    state: ClusterState,
    health: LocalHealth,
    view: GroupView,
    announced: Set[str],
    handover_expired: Set[str] = frozenset(),
    resuming: bool = False,
    left: bool = False,
    forms: Mapping[str, PathForm] | None = None,
) -> DecideInputs:
    """`forms`: `takeover_forms(cfg, state, wall)`, computed by the caller, which knows the
    wall clock (None: every owner path in its steady form)."""
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
        forms=dict(forms or {}),
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
                    form = inputs.forms.get(vip, STEADY) if owner == me else None
                    decisions[vip] = Decision(True, "no_quorum_hold", prepend=prepend, form=form)
                else:
                    decisions[vip] = Decision(False, "no_quorum")
            elif owner == me and not inputs.drained:
                decisions[vip] = Decision(True, "owner", form=inputs.forms.get(vip, STEADY))
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
                # A takeover path leaves out the takeover_margin prepends; going back to the
                # steady form is a re-announce in place as well.
                handover = decision.reason == "handover"
                routes[vip] = route_for(
                    vip,
                    service.announce,
                    prepend=decision.prepend,
                    handover=handover,
                    takeover=decision.takeover,
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
