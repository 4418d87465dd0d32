"""The leader's duties, as pure functions of the replicated state, link observations and `now`.

Every member keeps a `LeaderBook` (links are tracked by all, so that a new leader already knows
which peer dropped, and since when). On the leader, `leader_tick` returns the commands to
propose:

- when leadership is won, every member gets a fresh lease (the new leader has not seen any
  report yet, and must not expire members for its own lack of history);
- `Configure` with this member's service layout while the replicated one differs, in a
  group still on command format 1 (from format 2 on, every member proposes its own layout,
  `SetLayout`, and the group's is their merge); `SetFormat` once every member has reported
  a higher format than the group's;
- `Expire` (with the expired member's own replicated timings, `member_timings`) for a
  member whose lease lapsed (`lease` since its last report was applied here:
  a hung process) or, faster, whose TCP link dropped `disconnect_grace` ago (a crashed
  process) or never came up since this process started (a full-group restart), with the
  withdraw-mode rule of `fenced_by`;
- `Form` once a brand-new group has formed (`_formation`).

The shell (raftvip/cluster.py) feeds it on pysyncobj's tick thread.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from raftvip.config import Config
from raftvip.core.liveness import ECHO_RTT
from raftvip.core.placement import ServiceSpec
from raftvip.core.records import LogRecord
from raftvip.core.state import (
    WIRE_VERSION,
    ClusterState,
    Command,
    Configure,
    Expire,
    Form,
    SetFormat,
    Timings,
    group_format_ready,
    layout_digest,
)
from raftvip.core.values import evolve

EXPIRE_RETRY = 0.25  # an Expire for the same (member, incarnation, seq) at most this often
CONFIGURE_RETRY = 1.0
# A new group forms when every configured member is eligible, or this long after the leader
# first saw one alive, whichever comes first (members that start within about a second of
# each other all get their share of the first placement).
FORM_GRACE = 1.0
# `raftvip restart`: how long the leader keeps a restarting member that it cannot hear from
# (its new process starts, catches up and reports within a second or two).
RESTART_DEADLINE = 10.0


def service_specs(cfg: Config) -> tuple[ServiceSpec, ...]:
    """The placement-relevant part of this member's services, as the group replicates it."""
    return tuple(
        ServiceSpec(
            name=s.name,
            vips=s.vips,
            preferred=dict(s.preferred),
            preempt=s.preempt,
            preempt_delay=float(s.preempt_delay),
            rebalance=s.rebalance,
        )
        for s in cfg.services
    )


def timings_of(cfg: Config) -> Timings:
    """This member's settings that its expiry by a leader depends on (replicated with its
    layout, so that every leader expires it with its own values)."""
    return Timings(
        lease=cfg.cluster.lease,
        report_interval=cfg.cluster.report_interval,
        on_quorum_loss=cfg.cluster.on_quorum_loss,
        connection_timeout=cfg.raft.connection_timeout,
        disconnect_grace=cfg.raft.disconnect_grace,
    )


def own_layout(cfg: Config) -> tuple[str, tuple[ServiceSpec, ...], Timings]:
    """(digest, services, timings) as this member proposes them in its `SetLayout`."""
    specs = service_specs(cfg)
    return layout_digest(specs), specs, timings_of(cfg)


def member_timings(cfg: Config, state: ClusterState, name: str) -> Timings:
    """The timings the leader expires `name` with: those it replicated, else (format 1, or
    not proposed yet) the leader's own."""
    layout = state.layouts.get(name)
    if layout is not None and layout.timings is not None:
        return layout.timings
    return timings_of(cfg)


@dataclass(frozen=True)
class LeaderBook:
    """Bookkeeping for the leader's duties (every member keeps one)."""

    started_at: float
    # The last log index this process found in its journal at start: a report there that it
    # applies was sent before `started_at` (a full-group restart replays the uncommitted tail
    # only once a new leader commits, long after). Should a new leader have replaced that
    # entry, its report was committed before this leadership, which `prior_contact` covers in
    # `fenced_by` anyway (a voter received it before it voted).
    journal_end: int = 0
    was_leader: bool = False
    leader_since: float = 0.0
    leader_term: int = -1  # the term of that leadership (another term: a new leadership)
    # member -> when this member last saw its lease renewed (reset by a new leader's grant).
    lease_seen: Mapping[str, float] = field(default_factory=dict)
    # member -> when its last report was applied here (never reset by lease grants).
    report_applied: Mapping[str, float] = field(default_factory=dict)
    was_connected: frozenset[str] = frozenset()
    down_since: Mapping[str, float] = field(default_factory=dict)
    expire_sent: Mapping[tuple[str, int, int], float] = field(default_factory=dict)
    configure_sent: float = 0.0
    format_sent: float = -float("inf")
    forming_since: float | None = None  # a forming group: when a member was first alive
    # member -> when this member first saw it restarting (its deadline counts from there)
    restart_seen: Mapping[str, float] = field(default_factory=dict)
    form_sent: float = -float("inf")


@dataclass(frozen=True)
class LeaderEffects:
    proposals: tuple[Command, ...] = ()
    logs: tuple[LogRecord, ...] = ()


def report_applied(book: LeaderBook, member: str, now: float, index: int = 0) -> LeaderBook:
    """A report of `member` (at Raft `index`) was applied here. One replayed from our own
    journal was sent before this process started: its send time is bounded by that, not by
    when a new leader let us apply it (what the link-drop expiry counts from)."""
    sent_by = min(now, book.started_at) if 0 < index <= book.journal_end else now
    return evolve(
        book,
        lease_seen={**book.lease_seen, member: now},
        report_applied={**book.report_applied, member: sent_by},
    )


def snapshot_loaded(book: LeaderBook, state: ClusterState, now: float) -> LeaderBook:
    """The state arrived as a snapshot (installed from the leader, or read at start): the
    reports it contains were never applied here one by one. Count every member alive in it
    as heard from now, or a new leader would take the time of some much older report as the
    last one and expire a member that renewed through the old leader moments ago."""
    alive = {name: now for name, member in state.members.items() if member.alive}
    if not alive:
        return book
    return evolve(book, report_applied={**book.report_applied, **alive})


def track_links(book: LeaderBook, links: Mapping[str, bool], now: float) -> LeaderBook:
    """Record which peer links are open (`links`: peer -> connected) and since when one is down."""
    was_connected = set(book.was_connected)
    down_since = dict(book.down_since)
    for name, connected in links.items():
        if connected:
            was_connected.add(name)
            down_since.pop(name, None)
        elif name in was_connected:
            down_since.setdefault(name, now)
    if was_connected == book.was_connected and down_since == book.down_since:
        return book
    return evolve(book, was_connected=frozenset(was_connected), down_since=down_since)


def leader_tick(
    book: LeaderBook,
    cfg: Config,
    specs: tuple[ServiceSpec, ...],
    state: ClusterState,
    *,
    is_leader: bool,
    term: int,
    links: Mapping[str, bool],
    now: float,
    wall: float,
    alive: Mapping[str, float] | None = None,
    prior_contact: float | None = None,
) -> tuple[LeaderBook, LeaderEffects]:
    """One tick of the leader's duties. `specs` is `service_specs(cfg)`; `now` is monotonic,
    `wall` stamps the commands. `alive`: member -> until when (our clock) its loop is known
    to have run, from the heartbeat answers of this leadership (core/liveness.py) and, for
    this member, its own loop; a lease counts from the later of that and its last report.
    `prior_contact`: the latest time (our clock) any earlier leader can have vouched for a
    stamp, from the votes that elected us (`liveness.prior_contact`); None: unknown."""
    alive = alive or {}
    book = track_links(book, links, now)
    if not is_leader:
        if book.was_leader:
            book = evolve(book, was_leader=False)
        return book, LeaderEffects()
    proposals: list[Command] = []
    logs: list[LogRecord] = []
    addresses = dict(state.addresses) or dict(cfg.members)
    if not book.was_leader or book.leader_term != term:
        # A new leadership, even if no tick saw us step down in between (the simulator
        # ticks a leader only).
        book = evolve(
            book,
            was_leader=True,
            leader_since=now,
            leader_term=term,
            lease_seen={name: now for name in addresses},
        )
        logs.append(
            LogRecord(
                logging.INFO,
                f"raft leader={cfg.me} term={term}: granted every member a fresh lease",
            )
        )
    # Format 1 (a group with a member of an older build): the leader's own layout. From
    # format 2 on, each member proposes its own (`SetLayout`), whoever leads.
    stale_layout = state.wire < 2 and state.services != specs
    if (stale_layout or not state.addresses) and now - book.configure_sent > CONFIGURE_RETRY:
        book = evolve(book, configure_sent=now)
        bootstrap = not state.addresses and not state.owners
        proposals.append(Configure(wall, specs, dict(cfg.members), forming=bootstrap))
    spoken = min(WIRE_VERSION, group_format_ready(state))
    if state.addresses and spoken > state.wire and now - book.format_sent > CONFIGURE_RETRY:
        book = evolve(book, format_sent=now)
        logs.append(
            LogRecord(
                logging.INFO,
                f"raft leader: every member speaks command format {spoken}: the group moves"
                f" from {state.wire}",
            )
        )
        proposals.append(SetFormat(wall, spoken))
    if not state.formed and state.addresses:
        book, form = _formation(book, state, now, logs)
        if form:
            proposals.append(Form(wall))
    expire_sent = dict(book.expire_sent)
    restarting = {
        n: book.restart_seen.get(n, now) for n, m in state.members.items() if m.restarting
    }
    if restarting != book.restart_seen:
        book = evolve(book, restart_seen=restarting)
    for name, member in state.members.items():
        if not member.alive:
            continue
        reason = None
        down_since = book.down_since.get(name)
        timings = member_timings(cfg, state, name)
        lease, grace = timings.lease, max(cfg.raft.disconnect_grace, timings.disconnect_grace)
        if member.restarting:
            # Its process is being replaced in place and ExaBGP keeps its routes: no expiry
            # for a dropped link or a lapsed lease until the deadline; then as for a crash.
            if now - restarting[name] > RESTART_DEADLINE:
                reason = "restart not done in time"
        elif now - max(book.lease_seen.get(name, now), alive.get(name, -float("inf"))) > lease:
            reason = "lease"
        elif (
            name != cfg.me
            and down_since is not None
            and now - down_since >= grace
            and fenced_by(book, cfg, name, down_since, now, timings, prior_contact)
        ):
            reason = "disconnect"
        elif (
            name != cfg.me
            and name not in book.was_connected
            and now - book.started_at >= cfg.raft.connection_timeout + grace
            and fenced_by(book, cfg, name, book.started_at, now, timings, prior_contact)
        ):
            # Alive in the state, yet its link has not come up once since this process
            # started (a full-group restart: the state on disk says alive, the member is
            # not back): as if its link had dropped when we started, once it had
            # connection_timeout to connect.
            reason = "not back"
        if reason is None:
            continue
        key = (name, member.incarnation, member.seq)
        if now - expire_sent.get(key, 0.0) < EXPIRE_RETRY:
            continue
        expire_sent = {k: v for k, v in expire_sent.items() if now - v < 5.0}
        expire_sent[key] = now
        logs.append(LogRecord(logging.INFO, f"raft leader expires member={name} reason={reason}"))
        proposals.append(Expire(wall, name, member.incarnation, member.seq, reason))
    if expire_sent != book.expire_sent:
        book = evolve(book, expire_sent=expire_sent)
    return book, LeaderEffects(tuple(proposals), tuple(logs))


def _formation(
    book: LeaderBook, state: ClusterState, now: float, logs: list[LogRecord]
) -> tuple[LeaderBook, bool]:
    """Whether to commit `Form` now: every configured member eligible for every service, or
    FORM_GRACE since the first one was alive (the missing ones get their share later)."""
    alive = [n for n in state.addresses if n in state.members and state.members[n].alive]
    if not alive:
        return book, False
    if book.forming_since is None:
        book = evolve(book, forming_since=now)
    since = book.forming_since if book.forming_since is not None else now
    # Drained members get nothing anyway: formation does not wait for them.
    waited_for = [
        n for n in state.addresses if not (n in state.members and state.members[n].drained)
    ]
    everyone = all(
        state.eligible(name, service.name) for name in waited_for for service in state.services
    )
    if not everyone and now - since < FORM_GRACE:
        return book, False
    if now - book.form_sent < CONFIGURE_RETRY:
        return book, False
    missing = sorted(n for n in state.addresses if n not in alive)
    logs.append(
        LogRecord(
            logging.INFO,
            "raft leader: the group forms with "
            + ", ".join(sorted(alive))
            + (f" (not there yet: {', '.join(missing)})" if missing else ""),
        )
    )
    return evolve(book, form_sent=now), True


def fenced_by(
    book: LeaderBook,
    cfg: Config,
    name: str,
    down_since: float,
    now: float,
    timings: Timings | None = None,
    prior_contact: float | None = None,
) -> bool:
    """May a member whose link to this leader dropped at `down_since` be expired now?

    With `on_quorum_loss = "withdraw"` (at most one announcer) the member fences itself
    `fence_time` after its newest renewal that the group knows of, which is at most
    `connection_timeout - FENCE_MARGIN`. That renewal is one of
    - a report: applied here (`report_applied`), or committed before this leadership;
    - a heartbeat answer to this leader: the link dropped `connection_timeout` of silence
      after the last of them (or the member died);
    - a stamp that an earlier leader echoed: at most `ECHO_RTT` after `prior_contact`, the
      last time one of the members that elected us heard an earlier leader (core/liveness.py;
      unknown: this leadership's start).
    So the fast path holds for a link that dropped `connection_timeout` after that;
    otherwise wait until `connection_timeout` after the later of the member's last report
    applied here and that, when its fence has fallen for sure. (A drop early in a
    leadership can be a one-way cut: the member's renewals went through the old leader
    while this one heard nothing from it.) `hold` keeps the fast path (two announcers are
    its trade-off). `timings`: the member's own (`member_timings`): its policy decides.
    """
    if timings is None:
        timings = timings_of(cfg)
    if timings.on_quorum_loss != "withdraw":
        return True
    timeout = max(cfg.raft.connection_timeout, timings.connection_timeout)
    prior = book.leader_since if prior_contact is None else min(prior_contact, book.leader_since)
    since = prior + ECHO_RTT
    if down_since > since + timeout:
        return True
    applied = book.report_applied.get(name, book.started_at)
    return now - max(applied, since) >= timeout
