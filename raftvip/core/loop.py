"""The member loop as a pure state machine: `step(loop, event, now) -> (loop, effects)`.

The shell (raftvip/agent.py) turns I/O into events — the Raft group's state, health changes,
ExaBGP's stdin, signals, the outcome of proposals — and carries out the effects: ExaBGP lines
to write, commands to propose, log records, and when to step again. Nothing here reads a
clock, a socket or a thread: `now` (monotonic seconds) comes with every step and the wall
clock that stamps commands comes with `Tick`.

One `Tick` is one iteration of the loop: the shell passes what it observed of the group, and
the loop detects a pause, reports to the group, decides (`decide.decide`) and writes the
difference to ExaBGP, confirms handovers, and hands over before it stops.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from raftvip.config import Config
from raftvip.core.decide import (
    DecideInputs,
    Decision,
    GroupView,
    agreed,
    decide,
    desired_routes,
    fence_time,
    inputs_for,
    pause_time,
    plan,
    reach_time,
    resync_lines,
    takeover_forms,
)
from raftvip.core.exabgp import Route, StdinEvent, announce_line, route_for, withdraw_line
from raftvip.core.group import EMPTY_GROUP, GroupObservation
from raftvip.core.leader import RESTART_DEADLINE, own_layout
from raftvip.core.placement import ServiceSpec
from raftvip.core.records import LogRecord
from raftvip.core.reload import diff_configs, health_after_reload, initial_health
from raftvip.core.state import (
    HEARTBEAT_LEASES,
    WIRE_VERSION,
    ClusterState,
    Command,
    Confirm,
    Expire,
    Report,
    SetLayout,
    SetRestarting,
    Timings,
)
from raftvip.core.values import evolve

RESTART_WAIT = 0.5  # `raftvip restart`: how long the flag may take to commit
# `raftvip restart` with handovers of this member pending: how long it waits for them
RESTART_HANDOVER_WAIT = 1.0
RESTART_MARGIN = 1.0  # the new process trusts the flag until this long before the deadline
RESTART_LINGER = 0.2
TICK = 0.1  # a failed report is retried after this
IDLE = 0.4  # with nothing to do, the loop still steps this often (pause detection)
CONFIRM_RETRY = 0.5  # a Confirm for the same VIP at most this often
LEAVE_LINGER = 0.1  # after a last-moment leave: let it reach the leader before links close
LAYOUT_RETRY = 1.0  # a SetLayout at most this often while the group's record differs

# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tick:
    """One iteration: the group as the shell read it just now, and the wall clock."""

    group: GroupObservation
    wall: float


@dataclass(frozen=True)
class HealthChanged:
    """A local check changed: `local` is "up", "down" or "disabled"."""

    service: str
    local: str
    detail: str = ""


@dataclass(frozen=True)
class StdinLine:
    """One line ExaBGP wrote on our stdin, classified (`exabgp.parse_stdin_line`)."""

    event: StdinEvent


@dataclass(frozen=True)
class StdinClosed:
    """EOF on stdin: ExaBGP is gone."""


@dataclass(frozen=True)
class StdoutClosed:
    """Writing to ExaBGP failed (broken pipe): ExaBGP is gone."""


@dataclass(frozen=True)
class StopRequested:
    """A signal, or a fatal condition (`fatal`: exit 1 once handed over)."""

    reason: str
    fatal: bool = False


@dataclass(frozen=True)
class LeaveRequested:
    """`raftvip leave`: hand every VIP over, withdraw, and stay out of placement until this
    process restarts (a planned stop: ExaBGP is stopped next)."""


@dataclass(frozen=True)
class RestartRequested:
    """`raftvip restart`: tell the group this process is being replaced, then exit without
    withdrawing (ExaBGP keeps the routes and starts the new process)."""


@dataclass(frozen=True)
class Reloaded:
    """`raftvip reload` or SIGHUP: `cfg` replaces the running config in place. The shell has
    validated it and refused any change that needs a restart (`core.reload.diff_configs`)."""

    cfg: Config


@dataclass(frozen=True)
class ReportTag:
    """A report of ours, sent at `sent` (monotonic)."""

    sent: float


@dataclass(frozen=True)
class LeaveTag:
    """Our leave, naming the (incarnation, seq) that it expires."""

    key: tuple[int, int]


Tag = ReportTag | LeaveTag


@dataclass(frozen=True)
class ProposalDone:
    """The outcome of a tagged proposal: `err` is pysyncobj's FAIL_REASON (0: committed)."""

    tag: Tag
    err: int


Event = (
    Tick
    | HealthChanged
    | StdinLine
    | StdinClosed
    | StdoutClosed
    | StopRequested
    | LeaveRequested
    | RestartRequested
    | Reloaded
    | ProposalDone
)

# --- effects --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proposal:
    cmd: Command
    tag: Tag | None = None  # the shell answers with ProposalDone(tag, err)


@dataclass(frozen=True)
class Effects:
    lines: tuple[str, ...] = ()  # to ExaBGP, in order
    proposals: tuple[Proposal, ...] = ()
    logs: tuple[LogRecord, ...] = ()
    wake_at: float | None = None  # step again (Tick) no later than this
    linger: float = 0.0  # finished: wait this long before exiting
    # finished for `raftvip restart`: leave the next process a note (until this wall time)
    restart_until: float | None = None
    # this member leads and is about to go (leave, restart): hand Raft leadership to a
    # caught-up follower first, so the group elects at once instead of after a timeout
    transfer_leadership: bool = False


NO_EFFECTS = Effects()

# --- state ----------------------------------------------------------------------------------


MAX_IN_FLIGHT = 64  # reports remembered until the state shows them (older ones: lost)


@dataclass(frozen=True)
class Reporting:
    """Lease renewals: when the next report is due, and what became of the last ones."""

    due: bool = True
    next_at: float = 0.0
    last_at: float = 0.0
    last_wall: float = -float("inf")  # wall clock of the last report sent
    failed: bool = False
    # Send time of our last report that the group committed: the newest one the replicated
    # state shows as applied (a commit callback can be lost, e.g. behind a snapshot, and a
    # report can be committed yet ignored as stale; the state says what counted).
    renewed_at: float = -float("inf")
    in_flight: tuple[tuple[int, float], ...] = ()  # (seq, sent) of reports not yet seen


@dataclass(frozen=True)
class Stopping:
    reason: str | None = None
    fatal: bool = False
    exabgp_gone: bool = False
    deadline: float | None = None  # handover bound, set when the stop begins
    leave_key: tuple[int, int] | None = None  # what our pending leave names
    stay: bool = False  # `raftvip leave`: once handed over, withdraw and keep running


@dataclass(frozen=True)
class Pipe:
    """Lines written to ExaBGP that await its ack (`pending[head:]`), and what was acked.

    ExaBGP acks route commands in order. A VIP counts as acked only when the ack is for the
    latest line written for it: after `announce v`, `withdraw v`, `announce v`, the late
    `done` of the first announce says nothing about the route ExaBGP carries now.
    """

    pending: tuple[str, ...] = ()
    head: int = 0
    base: int = 0  # sequence number of pending[0] (lines are numbered from 0 as written)
    latest: Mapping[str, int] = field(default_factory=dict)  # vip -> its latest line
    acked: frozenset[str] = frozenset()  # VIPs whose latest line is an acked announce

    def written(self, lines: tuple[str, ...]) -> Pipe:
        first = self.base + len(self.pending)
        latest = dict(self.latest)
        for offset, line in enumerate(lines):
            vip = _route_vip(line)
            if vip is not None:
                latest[vip] = first + offset
        return evolve(
            self,
            pending=self.pending[self.head :] + lines,
            head=0,
            base=self.base + self.head,
            latest=latest,
        )

    def pop(self) -> tuple[Pipe, str | None]:
        """The oldest unacked line, now acked; an announce marks its VIP acked if it is
        still the latest line written for that VIP."""
        if self.head >= len(self.pending):
            return self, None
        line = self.pending[self.head]
        seq = self.base + self.head
        acked = self.acked
        if line.startswith("announce route "):
            vip = _route_vip(line)
            if vip is not None and self.latest.get(vip) == seq:
                acked = acked | {vip}
        return evolve(self, head=self.head + 1, acked=acked), line


def _route_vip(line: str) -> str | None:
    words = line.split(maxsplit=3)
    if len(words) >= 3 and words[1] == "route" and words[0] in ("announce", "withdraw"):
        return words[2].split("/", 1)[0]
    return None


@dataclass(frozen=True)
class LoopState:
    cfg: Config
    incarnation: int
    health: Mapping[str, str]  # service -> up | down | disabled (local)
    seq: int = 0
    group: GroupObservation = EMPTY_GROUP
    announced: Mapping[str, Route] = field(default_factory=dict)
    pipe: Pipe = Pipe()
    decisions: Mapping[str, Decision] = field(default_factory=dict)
    announced_set: frozenset[str] = frozenset()
    decided: DecideInputs | None = None  # what the current decisions were made from
    reporting: Reporting = Reporting()
    quorum_lost_at: float | None = None
    stop: Stopping = Stopping()
    fence_seq: int | None = None  # resuming after a pause: the first seq that ends it
    last_step: float | None = None  # None: not stepped yet (start-up is not a pause)
    handover_since: Mapping[str, float] = field(default_factory=dict)
    confirm_sent: Mapping[str, float] = field(default_factory=dict)
    quorum_lost_for: float = 0.0
    exit_code: int | None = None  # set when the loop has finished
    bumped: bool = False  # the incarnation was raised past the group's (see _newer_incarnation)
    left: bool = False  # `raftvip leave` is done: out of placement until the process restarts
    leave_outcome: str | None = None  # how the handover before leaving ended
    # `raftvip restart`: None, ("asked", since) while the flag commits, or the refusal
    restart: tuple[str, float] | None = None
    restart_asked_at: float | None = None  # when this process proposed its restart flag
    # A process that replaces one that restarted in place: ExaBGP still carries the old
    # routes, so no withdraw-all at start; once caught up, one full resync. Trusted until
    # this wall time (then as after a crash).
    restart_until: float | None = None
    resync_pending: bool = False
    applied_seen: int = 0  # the highest Raft index this member had applied, as last seen
    heard_at: float = -float("inf")  # when that index last advanced (we hear the leader)
    exabgp_accepted: bool = False  # ExaBGP acked a command of ours with `done`
    takeover_ends: float | None = None  # monotonic: the next takeover form of ours ends
    layout_sent: float = -float("inf")  # when our SetLayout was last proposed
    layout_note: str = "started"  # what our next SetLayout says changed (a reload's summary)
    # (config, own_layout(config)): computed once per config, not at every step
    own: tuple[Config, tuple[str, tuple[ServiceSpec, ...], Timings]] | None = None


def start(
    cfg: Config, incarnation: int, restart_until: float | None = None
) -> tuple[LoopState, Effects]:
    """The loop before the group starts: withdraw every managed VIP (stale routes of an
    earlier run must not linger) — unless this process replaces one that restarted in place
    (`restart_until`: the wall time until which its note holds), whose routes ExaBGP keeps:
    then nothing until this member has caught up with the group."""
    health = {s.name: initial_health(s) for s in cfg.services}
    loop = LoopState(cfg=cfg, incarnation=incarnation, health=health)
    if restart_until is not None:
        return evolve(loop, restart_until=restart_until, resync_pending=True), Effects()
    lines = tuple(resync_lines(cfg))
    return evolve(loop, pipe=loop.pipe.written(lines)), Effects(lines=lines)


def worth_a_step(cfg: Config, before: ClusterState, after: ClusterState) -> bool:
    """Whether a change of the replicated state can change what the loop does: placement
    moved (the version), or our own entry changed (our report committed, we were expired).
    Other members' lease renewals change neither: with N members they are 2N commits a
    second that the loop need not wake up for."""
    return after.version != before.version or after.members.get(cfg.me) is not before.members.get(
        cfg.me
    )


# --- the transition -------------------------------------------------------------------------


def step(loop: LoopState, event: Event, now: float) -> tuple[LoopState, Effects]:
    if loop.exit_code is not None:
        return loop, NO_EFFECTS
    match event:
        case Tick():
            return _tick(loop, event, now)
        case HealthChanged():
            return _on_health(loop, event)
        case StdinLine():
            return _on_stdin(loop, event.event)
        case StdinClosed():
            stop = evolve(loop.stop, exabgp_gone=True, reason="EOF on stdin (ExaBGP stopped)")
            return evolve(loop, stop=stop), NO_EFFECTS
        case StdoutClosed():
            return evolve(
                loop, stop=evolve(loop.stop, exabgp_gone=True, reason="stdout closed")
            ), NO_EFFECTS
        case StopRequested():
            # The first reason is the one reported; a fatal condition always exits 1; a
            # stop ends a `raftvip leave` in progress by exiting once handed over.
            stop = evolve(
                loop.stop,
                reason=loop.stop.reason or event.reason,
                fatal=loop.stop.fatal or event.fatal,
                stay=False,
            )
            return (
                (loop, NO_EFFECTS) if stop == loop.stop else (evolve(loop, stop=stop), NO_EFFECTS)
            )
        case RestartRequested():
            return _restart_requested(loop, now)
        case LeaveRequested():
            if loop.stop.reason is not None or loop.left:
                return loop, NO_EFFECTS
            stop = evolve(loop.stop, reason="raftvip leave", stay=True)
            return evolve(loop, stop=stop), NO_EFFECTS
        case Reloaded():
            return _reloaded(loop, event.cfg, now)
        case ProposalDone():
            return _on_proposal(loop, event), NO_EFFECTS
    return loop, NO_EFFECTS  # pragma: no cover - the match is exhaustive


class _Out:
    """Effects gathered during one step."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.proposals: list[Proposal] = []
        self.logs: list[LogRecord] = []
        self.transfer = False

    def log(self, level: int, message: str) -> None:
        self.logs.append(LogRecord(level, message))

    def effects(
        self, wake_at: float | None = None, linger: float = 0.0, restart_until: float | None = None
    ) -> Effects:
        return Effects(
            tuple(self.lines),
            tuple(self.proposals),
            tuple(self.logs),
            wake_at,
            linger,
            restart_until,
            self.transfer,
        )


def _tick(loop: LoopState, tick: Tick, now: float) -> tuple[LoopState, Effects]:
    out = _Out()
    cfg = loop.cfg
    last = loop.last_step
    # Our reports the state now shows renew the lease (both reporting and deciding read it).
    loop = _observe_reports(evolve(loop, group=tick.group, last_step=now))
    if last is not None and now - last > pause_time(agreed(cfg, tick.group.state)):
        # This process was frozen (SIGSTOP, VM pause) long enough for the group to expire
        # it and move on without it. Withdraw until a fresh report of ours is committed, so
        # ExaBGP does not re-advertise stale routes when its sessions come back.
        loop = evolve(loop, fence_seq=loop.seq + 1, reporting=evolve(loop.reporting, due=True))
        out.log(
            logging.WARNING,
            f"member={cfg.me} was paused for {now - last:.1f}s (the group may have expired "
            "it): withdrawing until the group has heard from it again",
        )
    if not loop.stop.exabgp_gone:  # else nobody takes our lines: only leave (`_shutdown`)
        loop = _maybe_layout(loop, tick.wall, now, out)
        loop = _maybe_report(loop, tick.wall, now, out)
        loop = _reconcile(loop, tick.wall, now, out)
        loop, restart = _restarting(loop, tick.wall, now, out)
        if restart is not None:
            # The linger lets the control socket answer `raftvip restart` before the exit.
            return loop, out.effects(restart_until=restart, linger=RESTART_LINGER)
    done, loop = _done_leaving(loop, tick.wall, now, out)
    if done and loop.stop.stay and not loop.stop.exabgp_gone:
        loop = _left(loop, out)
    elif done:
        return _shutdown(loop, tick.wall, now, out)
    return loop, out.effects(wake_at=_wake_at(loop, tick.wall, now))


def ripens_at(loop: LoopState) -> float | None:
    """The wall time (our clock) at which one of our services, up in the group's view, will
    have been healthy for its `preempt_delay`, if the group does not count it as ready yet.

    The replicated state has no clock: it measures that delay between the stamps of our own
    reports (`MemberState.clock - healthy_since`). Reports used to come every
    `report_interval`; with heartbeat leases a report at this time lets the group see that
    we are ready (for preemption and rebalancing)."""
    state = loop.group.state
    me = state.members.get(loop.cfg.me)
    if me is None or not me.alive or me.incarnation != loop.incarnation:
        return None
    times = []
    for spec in state.services:
        if me.is_healthy(spec.name):
            since = me.healthy_since.get(spec.name, me.clock)
            if me.clock - since < spec.preempt_delay:
                times.append(since + spec.preempt_delay)
    return min(times, default=None)


def _wake_at(loop: LoopState, wall: float, now: float) -> float:
    """When to step again if nothing happens: the earliest deadline the loop has, and at
    least every IDLE (a longer gap is how a pause is told from an idle loop)."""
    cfg = agreed(loop.cfg, loop.group.state)
    rep = loop.reporting
    # At least every report_interval: the loop's stamps renew the lease (see
    # `heartbeat_leases`), and `pause_time` counts on them being no older than that.
    wake = now + min(IDLE, pause_time(cfg) / 2, cfg.cluster.report_interval)
    if now < rep.next_at < wake and not heartbeat_leases(loop, now):
        # A report that is due but cannot be sent yet (not caught up with the group) must
        # not make the loop spin: the group's next change wakes it anyway.
        wake = rep.next_at
    me = loop.group.state.members.get(cfg.me)
    if rep.failed or me is None or not me.alive or me.incarnation != loop.incarnation:
        retry = rep.last_at + TICK + 0.001  # the retry of `_maybe_report` (+1 ms: float sums)
        if now < retry < wake:
            wake = retry
    ripe = ripens_at(loop)
    if ripe is not None and ripe >= rep.last_wall:
        when = now + max(0.0, ripe - wall) + 0.001  # the report that shows we are ready
        if now < when < wake:
            wake = when
    if cfg.cluster.on_quorum_loss == "withdraw":
        fence = renewed_at(loop) + fence_time(cfg) + 0.001  # wake up when the fence falls
        if now < fence < wake:
            wake = fence
    later = [t + cfg.cluster.handover_timeout + 0.001 for t in loop.handover_since.values()]
    later += [t + CONFIRM_RETRY + 0.001 for t in loop.confirm_sent.values()]
    if loop.stop.deadline is not None:
        later.append(loop.stop.deadline)
    if loop.takeover_ends is not None:
        later.append(loop.takeover_ends + 0.001)  # back to the steady form on time
    return min([wake, *(t for t in later if t > now)])


def _reloaded(loop: LoopState, cfg: Config, now: float) -> tuple[LoopState, Effects]:
    """Swap the config in place and decide again at once (`decided` is the cache key of
    decisions made with the old config). The next Tick's plan withdraws removed VIPs that we
    announce and re-announces those whose attributes changed (an implicit withdraw: no
    withdraw in between); every other route stays as ExaBGP has it."""
    out = _Out()
    diff = diff_configs(loop.cfg, cfg, loop.group.state.addresses)
    health = health_after_reload(loop.cfg, cfg, loop.health)
    out.log(logging.INFO, f"member={cfg.me} config reloaded: {diff.summary()}")
    reporting = loop.reporting
    if health != loop.health:
        reporting = evolve(reporting, due=True)  # the group's view of our services changed
    loop = evolve(
        loop,
        cfg=cfg,
        health=health,
        decided=None,
        reporting=reporting,
        # the next step proposes our new layout (format 2), saying what changed, at once
        layout_note=diff.summary(),
        layout_sent=-float("inf"),
    )
    return loop, out.effects(wake_at=now)


def _on_health(loop: LoopState, event: HealthChanged) -> tuple[LoopState, Effects]:
    if event.service not in loop.health:
        # A verdict about a service that a reload removed, queued before the reload.
        return loop, NO_EFFECTS
    if loop.health.get(event.service) == event.local:
        return loop, NO_EFFECTS
    out = _Out()
    out.log(
        logging.INFO,
        f"service={event.service} local_health={event.local} detail={event.detail!r}",
    )
    # The withdraw happens in the next Tick, then the report.
    return evolve(
        loop,
        health={**loop.health, event.service: event.local},
        reporting=evolve(loop.reporting, due=True),
    ), out.effects()


def _on_stdin(loop: LoopState, event: StdinEvent) -> tuple[LoopState, Effects]:
    out = _Out()
    if event.kind == "ack_done":
        pipe, _line = loop.pipe.pop()
        loop = evolve(loop, pipe=pipe, exabgp_accepted=True)
    elif event.kind == "ack_error":
        pipe, line = loop.pipe.pop()
        vip = _route_vip(line) if line is not None else None
        if vip is not None:
            pipe = evolve(pipe, acked=pipe.acked - {vip})  # ExaBGP does not carry it
        loop = evolve(loop, pipe=pipe)
        rejected = f"exabgp rejected command={line or '<unknown>'!r}"
        if loop.stop.exabgp_gone:  # stopping, or refusing our API (said once): no flood
            out.log(logging.DEBUG, rejected)
        elif not loop.exabgp_accepted and line is not None and _any_exabgp_takes(line):
            loop = _wrong_api(loop, line, out)
        else:
            out.log(logging.ERROR, rejected)
    elif event.kind == "shutdown":
        loop = evolve(loop, stop=evolve(loop.stop, exabgp_gone=True, reason="ExaBGP shutdown"))
    elif event.kind == "neighbor":
        out.log(logging.INFO, f"exabgp neighbor={event.neighbor} state={event.state}")
    elif event.kind == "ignored":
        out.log(logging.DEBUG, f"exabgp ignored stdin line={event.text!r}")
    elif event.kind == "unknown":
        out.log(logging.WARNING, f"exabgp unexpected stdin line={event.text!r}")
    return loop, out.effects()


def _any_exabgp_takes(line: str) -> bool:
    """A route command that ExaBGP 4.2 and 5.x accept whatever the sessions are: anything but
    an IPv6 route with `next-hop self` (5.x answers `error` over an IPv4 session)."""
    vip = _route_vip(line)
    return vip is not None and (":" not in vip or " next-hop self" not in line)


def _wrong_api(loop: LoopState, line: str, out: _Out) -> LoopState:
    """ExaBGP refused our first route command: it does not speak the API raftvip writes
    (ExaBGP 6 answers a bare `announce route` with `error` unless told `exabgp_api_version=4`).
    Every later command would fail too: stop at once, exit 1, and say how to fix it. Nothing is
    handed over (ExaBGP carries nothing of ours) and nothing more is written to it."""
    out.log(
        logging.CRITICAL,
        f"member={loop.cfg.me}: ExaBGP answered `error` to raftvip's first command {line!r}: "
        "this ExaBGP does not take the classic text API (ExaBGP 6 uses a new one by default). "
        "Set exabgp_api_version=4 in ExaBGP's environment (e.g. Environment=exabgp_api_version=4 "
        "in its systemd unit), or install ExaBGP 4.2 or 5.x (pip install 'exabgp>=5,<6'); "
        "exiting with status 1",
    )
    reason = "ExaBGP rejected the classic API (set exabgp_api_version=4 or pin ExaBGP 5.x)"
    stop = evolve(loop.stop, exabgp_gone=True, fatal=True, reason=loop.stop.reason or reason)
    return evolve(loop, stop=stop)


def _on_proposal(loop: LoopState, event: ProposalDone) -> LoopState:
    tag = event.tag
    if isinstance(tag, ReportTag):
        if event.err == 0:
            return loop  # what counts is the state showing it (`_observe_reports`)
        # Retry soon rather than a report interval later.
        return evolve(loop, reporting=evolve(loop.reporting, failed=True))
    # Our leave failed to commit (leader change): ask again.
    if event.err != 0 and loop.stop.leave_key == tag.key:
        return evolve(loop, stop=evolve(loop.stop, leave_key=None))
    return loop


# --- reports --------------------------------------------------------------------------------


def _maybe_layout(loop: LoopState, wall: float, now: float, out: _Out) -> LoopState:
    """Format 2: propose our own service layout (and timings) while the group's record of it
    differs — at start-up and after a reload. Before our report, in the same step: the
    group then never gives us a VIP of our previous config that this one no longer has."""
    state = loop.group.state
    if state.wire < 2 or not loop.group.info.ready or _going(loop):
        return loop
    if now - loop.layout_sent < LAYOUT_RETRY:
        return loop
    if loop.own is None or loop.own[0] is not loop.cfg:
        loop = evolve(loop, own=(loop.cfg, own_layout(loop.cfg)))  # once per config
    assert loop.own is not None
    digest, specs, timings = loop.own[1]
    held = state.layouts.get(loop.cfg.me)
    if held is not None and held.holds(digest, specs, timings):
        return loop
    out.proposals.append(
        Proposal(SetLayout(wall, loop.cfg.me, digest, specs, timings, loop.layout_note))
    )
    return evolve(loop, layout_sent=now)


def _going(loop: LoopState) -> bool:
    """Leaving, left or restarting: a report would make this member alive again (or clear
    its restart flag), and its layout no longer matters."""
    restarting = loop.restart is not None and loop.restart[0] in ("asked", "leading")
    return loop.stop.deadline is not None or loop.left or restarting


def _maybe_report(loop: LoopState, wall: float, now: float, out: _Out) -> LoopState:
    if _going(loop):
        return loop
    if not loop.group.info.ready:
        return loop  # not caught up with the group yet: claiming health would attract VIPs
    cfg = loop.cfg
    me = loop.group.state.members.get(cfg.me)
    if me is not None and me.incarnation > loop.incarnation:
        loop = _newer_incarnation(loop, me.incarnation, out)
    rep = loop.reporting
    if (
        rep.failed or me is None or not me.alive or me.incarnation != loop.incarnation
    ) and now - rep.last_at >= TICK:
        # Not (yet) known as alive, or the last report failed (leader change): retry at
        # once, not a report interval later.
        rep = evolve(rep, due=True, failed=False)
    ripe = ripens_at(loop)
    if ripe is not None and wall >= ripe and (rep.last_wall < ripe or now - rep.last_at >= 1.0):
        rep = evolve(rep, due=True)  # the group may count us ready now (`ripens_at`)
    if rep.in_flight and now - rep.in_flight[-1][1] >= cfg.cluster.report_interval:
        # Not in the state a report interval later: lost (a command forwarded to the leader
        # on a link that dropped gets no answer). Periodic reports used to cover this.
        rep = evolve(rep, due=True)
    if not rep.due and (now < rep.next_at or heartbeat_leases(loop, now)):
        return evolve(loop, reporting=rep) if rep is not loop.reporting else loop
    seq = loop.seq + 1
    rep = evolve(
        rep,
        due=False,
        last_at=now,
        last_wall=wall,
        next_at=now + cfg.cluster.report_interval,
        in_flight=((*rep.in_flight, (seq, now)))[-MAX_IN_FLIGHT:],
    )
    health = {name: value == "up" for name, value in loop.health.items()}
    out.proposals.append(
        Proposal(Report(wall, cfg.me, loop.incarnation, seq, health, WIRE_VERSION), ReportTag(now))
    )
    return evolve(loop, seq=seq, reporting=rep)


def _observe_reports(loop: LoopState) -> LoopState:
    """Renew our lease with the newest of our reports that the replicated state shows."""
    rep = loop.reporting
    if not rep.in_flight:
        return loop
    me = loop.group.state.members.get(loop.cfg.me)
    if me is None or not me.alive or me.incarnation != loop.incarnation:
        return loop
    seen = [sent for seq, sent in rep.in_flight if seq <= me.seq]
    if not seen:
        return loop
    return evolve(
        loop,
        reporting=evolve(
            rep,
            renewed_at=max(rep.renewed_at, *seen),
            in_flight=tuple(item for item in rep.in_flight if item[0] > me.seq),
        ),
    )


def _newer_incarnation(loop: LoopState, theirs: int, out: _Out) -> LoopState:
    """The group knows this member under a newer incarnation than ours: our reports would be
    ignored as stale for ever. Report as the next one.

    Our incarnation comes from the wall clock at start; a clock stepped back across a restart
    makes it older than the last one the group saw. A second time in one process means that
    another process reports under our member name.
    """
    if loop.bumped:
        out.log(
            logging.ERROR,
            f"member={loop.cfg.me}: another process reports as this member (incarnation "
            f"{theirs}); check cluster.member on every host",
        )
    else:
        out.log(
            logging.WARNING,
            f"member={loop.cfg.me}: the group knows this member as incarnation {theirs}, "
            f"newer than ours ({loop.incarnation}): the clock went back since the last run? "
            f"reporting as {theirs + 1}",
        )
    return evolve(
        loop,
        incarnation=theirs + 1,
        bumped=True,
        reporting=evolve(loop.reporting, in_flight=(), due=True),
    )


def renewed_at(loop: LoopState) -> float:
    """When this member's lease was last renewed, as far as it can tell: the send time of
    its newest report the state shows, or its newest loop stamp that a leader echoed from
    the heartbeats (core/liveness.py), whichever is later."""
    return max(loop.reporting.renewed_at, loop.group.info.confirmed)


def heartbeat_leases(loop: LoopState, now: float) -> bool:
    """Whether the heartbeats renew this member's lease, so that no periodic report is
    needed: the group speaks command format 3 (every member stamps its heartbeat answers),
    the current leader echoes them, and the last echo is recent. Otherwise, reports every
    `report_interval` as before (a leader of an older build, a member a leader cannot vouch
    for)."""
    info = loop.group.info
    if loop.group.state.wire < HEARTBEAT_LEASES or not info.leader_echoes:
        return False
    cfg = agreed(loop.cfg, loop.group.state)
    return now - info.confirmed < fence_time(cfg) - cfg.cluster.report_interval / 2


def _group_view(loop: LoopState, now: float, out: _Out) -> tuple[LoopState, GroupView]:
    info = loop.group.info
    if info.last_applied > loop.applied_seen:
        # Replaying our own journal at start is not hearing anyone: only once caught up.
        heard = now if info.ready else loop.heard_at
        loop = evolve(loop, applied_seen=info.last_applied, heard_at=heard)
    lease_age = now - renewed_at(loop)
    reachable = _reachable(loop, now)
    lost_at = loop.quorum_lost_at
    if reachable:
        if lost_at is not None:
            out.log(logging.INFO, f"quorum regained after {now - lost_at:.2f}s")
        lost_at = None
    elif lost_at is None:
        lost_at = now
        if info.ready and renewed_at(loop) > -float("inf"):
            out.log(
                logging.WARNING,
                f"quorum lost: lease not renewed for {lease_age:.2f}s (no report of ours"
                f" committed, no heartbeat stamp echoed; policy={loop.cfg.cluster.on_quorum_loss})",
            )
    lost_for = 0.0 if lost_at is None else now - lost_at
    view = GroupView(
        ready=info.ready,
        reachable=reachable,
        quorum_lost_for=lost_for,
        lease_age=lease_age,
    )
    if lost_at != loop.quorum_lost_at or lost_for != loop.quorum_lost_for:
        loop = evolve(loop, quorum_lost_at=lost_at, quorum_lost_for=lost_for)
    return loop, view


def reachable(loop: LoopState, now: float) -> bool:
    """Whether this member is in touch with the group: a report of ours committed recently,
    or we hear the leader (the log we apply advances: the group commits, we follow)."""
    return _reachable(loop, now)


def _reachable(loop: LoopState, now: float) -> bool:
    limit = reach_time(agreed(loop.cfg, loop.group.state))
    return now - renewed_at(loop) < limit or now - loop.heard_at < limit


# --- decide and announce --------------------------------------------------------------------


def _reconcile(loop: LoopState, wall: float, now: float, out: _Out) -> LoopState:
    cfg = loop.cfg
    state = loop.group.state
    loop, view = _group_view(loop, now, out)
    loop, expired = _handover_expired(loop, state, now, out)
    loop, resuming = _resuming(loop, state, out)
    forms = takeover_forms(cfg, state, wall) if state.takeovers else {}
    ends = [f.until for f in forms.values() if f.takeover and f.until is not None]
    ends = [now + (until - wall) for until in ends if until - wall < float("inf")]
    takeover_ends = min(ends) if ends else None
    if takeover_ends != loop.takeover_ends:
        loop = evolve(loop, takeover_ends=takeover_ends)
    inputs = inputs_for(
        agreed(cfg, state),
        state,
        loop.health,
        view,
        loop.announced_set,
        expired,
        resuming=resuming,
        left=loop.left,
        forms=forms,
    )
    if loop.restart_until is not None:
        loop, inputs = _after_restart(loop, state, inputs, wall, out)
    elif _flag_holds(loop, state, now):
        # Our restart flag is committed: no leader expires us before RESTART_DEADLINE after
        # it saw the flag, which it cannot have seen before we proposed it. The fence would
        # only withdraw, during the hand-over of leadership (an election: nothing commits),
        # the routes that the next process is to take over without a gap.
        inputs = evolve(inputs, fenced=False)
    # Pure lease renewals replace the state object but keep its owners: with thousands of
    # VIPs the loop does no work while nothing that decide reads has changed.
    # (only once in touch with the group too: an unreachable view would withdraw it all)
    resync = loop.resync_pending and inputs.ready and inputs.reachable
    if inputs != loop.decided or resync:
        decisions = decide(cfg, inputs)
        _log_forms(loop.decisions, decisions, out)
        desired = desired_routes(cfg, decisions)
        if resync:
            # Caught up after a restart in place: ExaBGP still carries whatever the previous
            # process announced. Announce what we should (an update in place, no gap) and
            # withdraw every other managed VIP.
            out.log(logging.INFO, f"member={cfg.me} restarted in place: resyncing ExaBGP")
            loop = evolve(loop, resync_pending=False)
            others = [
                withdraw_line(route_for(vip, svc.announce))
                for svc in cfg.services
                for vip in svc.vips
                if vip not in desired
            ]
            lines = tuple(others + [announce_line(route) for route in desired.values()])
        else:
            lines = tuple(plan(desired, loop.announced))
        if lines:
            pipe = loop.pipe
            acked = set(pipe.acked)
            for vip, route in desired.items():
                if loop.announced.get(vip) != route:
                    acked.discard(vip)  # a new announce: wait for its ack
            acked &= desired.keys()
            out.lines.extend(lines)
            announced_set = frozenset(desired)
            loop = evolve(
                loop,
                pipe=evolve(pipe.written(lines), acked=frozenset(acked)),
                announced=desired,
                announced_set=announced_set,
            )
            # Deciding again with what is now announced gives the same decisions.
            inputs = evolve(inputs, announced=announced_set)
        loop = evolve(loop, decisions=decisions, decided=inputs)
    return _confirm(loop, state, wall, now, out)


def _log_forms(before: Mapping[str, Decision], after: Mapping[str, Decision], out: _Out) -> None:
    """Say when an owner path goes into or out of its takeover form, and why."""
    for vip, decision in after.items():
        was = before.get(vip)
        was_takeover = was is not None and was.takeover
        if decision.form is None or decision.takeover == was_takeover:
            continue
        if decision.takeover or (was is not None and was.announce):
            out.log(logging.INFO, f"vip={vip} path={decision.form.describe()}")


def _after_restart(
    loop: LoopState, state: ClusterState, inputs: DecideInputs, wall: float, out: _Out
) -> tuple[LoopState, DecideInputs]:
    """This process replaces one that restarted in place (ExaBGP kept its routes)."""
    cfg = loop.cfg
    assert loop.restart_until is not None
    if loop.reporting.renewed_at > -float("inf"):
        return evolve(loop, restart_until=None), inputs  # our own report counts now
    if wall >= loop.restart_until:
        # The note is too old: the group may have expired us and given our VIPs away.
        if loop.resync_pending:
            out.log(logging.WARNING, f"member={cfg.me}: restart note expired; withdrawing")
            lines = tuple(resync_lines(cfg))
            out.lines.extend(lines)
            loop = evolve(loop, pipe=loop.pipe.written(lines))
        return evolve(loop, restart_until=None, resync_pending=False), inputs
    me = state.members.get(cfg.me)
    if me is not None and me.restarting:
        # The group keeps us (and our lease) while the flag holds: no fence on our side.
        inputs = evolve(inputs, fenced=False)
    return loop, inputs


def _flag_holds(loop: LoopState, state: ClusterState, now: float) -> bool:
    """This process's own restart flag is in the state and trusted (see `_reconcile`)."""
    if loop.restart_asked_at is None or loop.restart is None:
        return False
    if loop.restart[0] not in ("asked", "leading", "exiting"):
        return False
    me = state.members.get(loop.cfg.me)
    return (
        me is not None
        and me.alive
        and me.restarting
        and me.incarnation == loop.incarnation
        and now - loop.restart_asked_at < RESTART_DEADLINE - RESTART_MARGIN
    )


def _restart_requested(loop: LoopState, now: float) -> tuple[LoopState, Effects]:
    me = loop.group.state.members.get(loop.cfg.me)
    why = None
    if loop.stop.reason is not None or loop.left:
        why = "refused: this member is stopping or has left"
    elif me is None or not me.alive or me.incarnation != loop.incarnation:
        why = "refused: this member is not in the group"
    elif not reachable(loop, now):
        why = "refused: no quorum (the group would not keep this member's VIPs)"
    elif loop.restart is not None and loop.restart[0] in ("asked", "leading"):
        return loop, NO_EFFECTS
    if why is not None:
        return evolve(loop, restart=(why, now)), NO_EFFECTS
    return evolve(loop, restart=("ask", now)), NO_EFFECTS


def _restarting(
    loop: LoopState, wall: float, now: float, out: _Out
) -> tuple[LoopState, float | None]:
    """`raftvip restart`: propose the flag, and once the state shows it, finish without
    withdrawing (the effects carry the note for the next process)."""
    if loop.restart is None:
        return loop, None
    stage, since = loop.restart
    cfg = loop.cfg
    if stage == "ask":
        out.proposals.append(Proposal(SetRestarting(wall, cfg.me, loop.incarnation)))
        out.log(logging.INFO, f"member={cfg.me} restarting in place: telling the group")
        return evolve(loop, restart=("asked", now), restart_asked_at=now), None
    if stage not in ("asked", "leading"):
        return loop, None
    me = loop.group.state.members.get(cfg.me)
    flagged = me is not None and me.restarting and me.incarnation == loop.incarnation
    if flagged and loop.group.info.is_leader and now - since <= RESTART_WAIT:
        if stage != "leading":
            out.transfer = True  # hand Raft leadership over before going
            out.log(logging.INFO, f"member={cfg.me} hands Raft leadership over before restarting")
            return evolve(loop, restart=("leading", now)), None
        return loop, None
    if flagged:
        # Routes of VIPs handed over to a new owner must not outlive this process in ExaBGP:
        # wait (a little) for the confirmations, then withdraw what is still handed over.
        handing = sorted(v for v, d in loop.decisions.items() if d.reason == "handover")
        asked = loop.restart_asked_at if loop.restart_asked_at is not None else since
        if handing and now - asked < RESTART_HANDOVER_WAIT:
            return loop, None
        if handing:
            lines = tuple(
                withdraw_line(route_for(vip, svc.announce))
                for svc in cfg.services
                for vip in svc.vips
                if vip in handing
            )
            out.log(
                logging.WARNING,
                f"member={cfg.me}: handover of {', '.join(handing)} not confirmed before the "
                "restart; withdrawing them",
            )
            out.lines.extend(lines)
            loop = evolve(loop, pipe=loop.pipe.written(lines))
        out.log(
            logging.INFO,
            f"member={cfg.me} exits for a restart in place: its routes stay announced; the "
            f"group waits up to {RESTART_DEADLINE:g}s for the next process",
        )
        until = wall + RESTART_DEADLINE - RESTART_MARGIN
        return evolve(loop, exit_code=0, restart=("exiting", now)), until
    if now - since > RESTART_WAIT:
        out.log(logging.WARNING, f"member={cfg.me}: the restart flag did not commit; staying")
        return evolve(loop, restart=("refused: the group did not commit the flag", now)), None
    return loop, None


def _resuming(loop: LoopState, state: ClusterState, out: _Out) -> tuple[LoopState, bool]:
    """True after a pause until the group has committed a report sent after it."""
    if loop.fence_seq is None:
        return loop, False
    me = state.members.get(loop.cfg.me)
    if (
        me is not None
        and me.alive
        and me.incarnation == loop.incarnation
        and me.seq >= loop.fence_seq
    ):
        out.log(logging.INFO, f"member={loop.cfg.me} is back in the group after a pause")
        return evolve(loop, fence_seq=None), False
    return loop, True


def _handover_expired(
    loop: LoopState, state: ClusterState, now: float, out: _Out
) -> tuple[LoopState, frozenset[str]]:
    if not state.handovers and not loop.handover_since:
        return loop, frozenset()
    cfg = loop.cfg
    handing = {v for v, m in state.handovers.items() if m == cfg.me}
    since = {v: loop.handover_since.get(v, now) for v in handing}
    expired = frozenset(v for v, t in since.items() if now - t > cfg.cluster.handover_timeout)
    for vip in sorted(expired):
        if loop.decisions.get(vip, Decision(False, "")).reason == "handover":
            out.log(
                logging.WARNING,
                f"vip={vip} handover to {state.owner_of(vip)} not confirmed within "
                f"handover_timeout={cfg.cluster.handover_timeout:g}s; withdrawing anyway",
            )
    if since != loop.handover_since:
        loop = evolve(loop, handover_since=since)
    return loop, expired


def _confirm(loop: LoopState, state: ClusterState, wall: float, now: float, out: _Out) -> LoopState:
    """Tell the group which handed-over VIPs this member now announces (ExaBGP acked)."""
    if not state.handovers:
        return loop
    me = loop.cfg.me
    due = sorted(
        vip
        for vip in loop.pipe.acked
        if vip in state.handovers
        and state.owner_of(vip) == me
        and now - loop.confirm_sent.get(vip, -1.0) > CONFIRM_RETRY
    )
    sent = dict(loop.confirm_sent)
    if due:
        for vip in due:
            sent[vip] = now
        out.proposals.append(Proposal(Confirm(wall, me, tuple(due))))
    sent = {v: t for v, t in sent.items() if now - t < 5.0}
    return evolve(loop, confirm_sent=sent) if sent != loop.confirm_sent else loop


# --- stopping -------------------------------------------------------------------------------


def _done_leaving(loop: LoopState, wall: float, now: float, out: _Out) -> tuple[bool, LoopState]:
    """False while running; on a stop request, hand over first (make before break).

    SIGTERM: ask the group to move this member's VIPs and keep announcing them until their
    new owners confirm, at most `shutdown_timeout`. When ExaBGP itself stops (EOF,
    `shutdown`) its sessions are going down anyway: ask once and leave.
    """
    stop = loop.stop
    cfg = loop.cfg
    if stop.reason is None:
        return False, loop
    if stop.exabgp_gone:
        return True, loop
    if stop.deadline is None:
        out.log(logging.INFO, f"member={cfg.me} stopping ({stop.reason}): handing over")
        loop = evolve(loop, stop=evolve(stop, deadline=now + cfg.cluster.shutdown_timeout))
        proposed, loop = _propose_leave(loop, wall, now, out)
        if not proposed:
            return True, loop
    state = loop.group.state
    me = state.members.get(cfg.me)
    # Our leave names an (incarnation, seq) that is no longer current: a report of ours was
    # still in flight when we proposed it and was committed first, so the group ignored the
    # leave as stale (or the proposal failed). Ask again: otherwise the leader expires us
    # for "lease" a lease later, without a handover, and our VIPs see a gap.
    if me is not None and me.alive and (me.incarnation, me.seq) != loop.stop.leave_key:
        proposed, loop = _propose_leave(loop, wall, now, out)
        if proposed:
            out.log(logging.INFO, f"member={cfg.me} leave not applied: asking again")
    if me is not None and not me.alive:
        mine = [v for v, a in state.owners.items() if a.owner == cfg.me]
        handing = [v for v, m in state.handovers.items() if m == cfg.me]
        if not mine and not handing:
            return True, loop
    deadline = loop.stop.deadline
    if deadline is not None and now >= deadline:
        out.log(
            logging.WARNING,
            f"member={cfg.me} handover not confirmed within "
            f"shutdown_timeout={cfg.cluster.shutdown_timeout:g}s; withdrawing anyway",
        )
        return True, loop
    return False, loop


def _left(loop: LoopState, out: _Out) -> LoopState:
    """`raftvip leave` is done: withdraw what is left and stay out of placement (no more
    reports) until this process restarts; a later stop just exits."""
    state = loop.group.state
    me = state.members.get(loop.cfg.me)
    holding = any(a.owner == loop.cfg.me for a in state.owners.values()) or (
        loop.cfg.me in state.handovers.values()
    )
    if me is None or me.alive:
        outcome = "withdrew without a handover: the group did not take the leave"
    elif holding:
        outcome = "handover not confirmed within shutdown_timeout; withdrew anyway"
    else:
        outcome = "handed over"
    out.lines.extend(plan({}, loop.announced))
    out.log(
        logging.INFO,
        f"member={loop.cfg.me} left the group ({outcome}); it stays out until its process restarts",
    )
    if loop.group.info.is_leader:
        # Its process stops next: let the group elect now, not after an election timeout
        # (the handover's commands are all in by now, so a follower is caught up).
        out.transfer = True
    return evolve(
        loop,
        left=True,
        leave_outcome=outcome,
        announced={},
        announced_set=frozenset(),
        stop=Stopping(),
    )


def _propose_leave(loop: LoopState, wall: float, now: float, out: _Out) -> tuple[bool, LoopState]:
    me = loop.group.state.members.get(loop.cfg.me)
    if me is None or not me.alive or not reachable(loop, now):
        return False, loop
    key = (me.incarnation, me.seq)
    out.proposals.append(
        Proposal(Expire(wall, loop.cfg.me, me.incarnation, me.seq, "leaving"), LeaveTag(key))
    )
    return True, evolve(loop, stop=evolve(loop.stop, leave_key=key))


def _shutdown(loop: LoopState, wall: float, now: float, out: _Out) -> tuple[LoopState, Effects]:
    """Withdraw everything (after the handover in `_done_leaving`) and finish."""
    linger = 0.0
    if loop.stop.exabgp_gone and loop.stop.deadline is None:
        proposed, loop = _propose_leave(loop, wall, now, out)
        if proposed:
            linger = LEAVE_LINGER
    if not loop.stop.exabgp_gone:
        out.lines.extend(plan({}, loop.announced))
    out.log(logging.INFO, f"member={loop.cfg.me} stopped: {loop.stop.reason}")
    if loop.group.info.is_leader and not loop.stop.exabgp_gone:
        out.transfer = True  # the group elects now, not an election timeout after we go
        linger = max(linger, LEAVE_LINGER)
    code = 1 if loop.stop.fatal else 0
    return evolve(loop, announced={}, announced_set=frozenset(), exit_code=code), out.effects(
        linger=linger
    )
