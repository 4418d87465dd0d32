"""The replicated state and its transitions (pure: no I/O, no clock reads).

Every command carries the timestamps it needs from its proposer. `apply` is *total*: a
command that does not apply (stale sequence number, unknown member, ...) returns the state
unchanged, because an exception inside a pysyncobj replicated method halts the whole group.

Commands travel as msgpack maps (`encode_command` / `decode_command`); `decode_command`
validates every field so that `apply` only ever sees well-typed values.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from raftvip.core.placement import Assignment, ServiceSpec, place
from raftvip.core.values import evolve

# The highest command format this build speaks. Each command carries the lowest format that
# can decode it (`_MIN_FORMAT`): every format-1 command still says 1, so a member of an older
# build applies it as before. A member reports its highest format in its reports; the leader
# raises the group's format (`SetFormat`) once every member in the group has reported at
# least that much, and nobody proposes a command of a higher format than the group's. A
# command above the group's format is refused by every member in the same way (`apply`),
# as a member that cannot decode it refuses it (replica.apply_entry): never a divergence,
# never an exception in the replicated method. etcd's cluster version works the same way.
# Format 3: leases renew on the Raft heartbeats (core/liveness.py), no periodic reports.
WIRE_VERSION = 3
HEARTBEAT_LEASES = 3
MAX_EVENTS = 200


@dataclass(frozen=True)
class MemberState:
    name: str
    alive: bool = False
    incarnation: int = 0
    seq: int = 0
    # The member's own wall clock at its last report: `healthy_since` is on the same
    # clock, so preempt_delay is measured without cross-host clock skew.
    clock: float = 0.0
    healthy: Mapping[str, bool] = field(default_factory=dict)
    healthy_since: Mapping[str, float] = field(default_factory=dict)
    drained: bool = False
    # Left on purpose (SIGTERM, ExaBGP stop): not alive, but still announcing until the new
    # owners of its VIPs confirm (make before break). Cleared by its next report.
    leaving: bool = False
    # `raftvip restart`: its process is being replaced in place (ExaBGP keeps its routes);
    # the leader does not expire it for its dropped link until a deadline. Cleared by the
    # next process's first report, or by an expiry.
    restarting: bool = False
    # The highest command format its process speaks (reports before format 2 carry none).
    wire: int = 1

    def is_healthy(self, service: str) -> bool:
        return self.healthy.get(service, False)


@dataclass(frozen=True)
class Event:
    version: int
    time: float
    kind: str  # owner | handover | alive | health | maintenance | drain | pin | config | membership
    subject: str
    detail: str
    index: int = 0  # the Raft log index of the command (0 when unknown)


@dataclass(frozen=True)
class Takeover:
    """A VIP left `previous` without a confirmed withdraw: the group expired it (`cause`:
    the leader's expiry reason — lease, disconnect, ... — or "removed"), so its speaker may
    still announce the VIP (a hang, a partition, a helper that died under a live ExaBGP).
    `ts`: the proposer's wall clock of the command that moved the VIP away."""

    previous: str
    cause: str
    ts: float


@dataclass(frozen=True)
class Timings:
    """A member's own settings that the leader's expiry of it must agree with: the leader
    expires each member with that member's replicated values, never with its own
    (`leader.member_timings`), and a member fences with the smaller of its own and the
    group's (`decide.fence_time`)."""

    lease: float
    report_interval: float
    on_quorum_loss: str  # hold | withdraw
    connection_timeout: float
    disconnect_grace: float


@dataclass(frozen=True)
class MemberLayout:
    """One member's own service layout, as it last proposed it (format 2): placement puts a
    VIP only on members whose layout has it."""

    digest: str
    services: tuple[ServiceSpec, ...]
    timings: Timings | None = None  # None: seeded when the group moved to format 2
    ts: float = 0.0
    summary: str = ""

    def holds(self, digest: str, services: tuple[ServiceSpec, ...], timings: Timings) -> bool:
        """Whether this is already that layout (`ts` and `summary` aside)."""
        return (self.digest, self.services, self.timings) == (digest, services, timings)


@dataclass(frozen=True)
class ClusterState:
    version: int = 0  # number of state-changing commands applied
    services: tuple[ServiceSpec, ...] = ()
    addresses: Mapping[str, str] = field(default_factory=dict)  # member -> "host:port"
    members: Mapping[str, MemberState] = field(default_factory=dict)
    maintenance: frozenset[str] = frozenset()
    pins: Mapping[str, str] = field(default_factory=dict)
    owners: Mapping[str, Assignment] = field(default_factory=dict)
    # vip -> the previous owner that keeps announcing until the new owner confirms through
    # the log that it announces (make before break on drain, preemption, rebalancing, leave).
    handovers: Mapping[str, str] = field(default_factory=dict)
    # vip -> how its owner got it, when that was by a takeover (`Takeover`); absent after a
    # confirmed withdraw or a handover. Kept while the owner keeps the VIP: readers bound its
    # effect in time (`decide.takeover_form`).
    takeovers: Mapping[str, Takeover] = field(default_factory=dict)
    events: tuple[Event, ...] = ()
    # False while a brand-new group forms: nothing is placed until the leader commits `Form`
    # (every configured member eligible, or FORM_GRACE after the first), so that the first
    # placement is the final one instead of everything on the first member to report.
    formed: bool = True
    # The command format the group uses (see WIRE_VERSION). From 2 on, `services` is the
    # merge of `layouts` (`merge_layouts`), no longer the leader's own layout.
    wire: int = 1
    layouts: Mapping[str, MemberLayout] = field(default_factory=dict)

    def owner_of(self, vip: str) -> str | None:
        assignment = self.owners.get(vip)
        return assignment.owner if assignment else None

    def service(self, name: str) -> ServiceSpec | None:
        for service in self.services:
            if service.name == name:
                return service
        return None

    def service_of_vip(self, vip: str) -> ServiceSpec | None:
        for service in self.services:
            if vip in service.vips:
                return service
        return None

    def eligible(self, member: str, service: str) -> bool:
        state = self.members.get(member)
        return bool(state and state.alive and not state.drained and state.is_healthy(service))

    def can_still_announce(self, member: str, service: str) -> bool:
        """Whether `member` can keep announcing during a handover (drained is fine)."""
        state = self.members.get(member)
        return bool(state and (state.alive or state.leaving) and state.is_healthy(service))


# --- commands -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Configure:
    ts: float
    services: tuple[ServiceSpec, ...]
    addresses: Mapping[str, str]
    forming: bool = False  # it bootstraps a new group: place nothing until `Form`


@dataclass(frozen=True)
class Form:
    """The group has formed (the leader saw every member, or waited FORM_GRACE): place
    every VIP at once on the members present, as if they had been healthy long enough."""

    ts: float


@dataclass(frozen=True)
class Report:
    ts: float
    member: str
    incarnation: int
    seq: int
    health: Mapping[str, bool]
    wire: int = 1  # the highest format the reporting process speaks


@dataclass(frozen=True)
class SetFormat:
    """The leader raises the group's command format: every member has reported it."""

    ts: float
    version: int


@dataclass(frozen=True)
class SetLayout:
    """`member`'s own service layout (at start-up, and after each reload)."""

    ts: float
    member: str
    digest: str
    services: tuple[ServiceSpec, ...]
    timings: Timings
    summary: str = ""


@dataclass(frozen=True)
class Expire:
    ts: float
    member: str
    incarnation: int
    seq: int
    reason: str


@dataclass(frozen=True)
class SetRestarting:
    """`member` (as `incarnation`) is about to be replaced by a new process of its own."""

    ts: float
    member: str
    incarnation: int


@dataclass(frozen=True)
class SetMaintenance:
    ts: float
    service: str
    on: bool


@dataclass(frozen=True)
class SetDrain:
    ts: float
    member: str
    on: bool


@dataclass(frozen=True)
class SetPin:
    ts: float
    vip: str
    member: str | None


@dataclass(frozen=True)
class Confirm:
    """`member` announces `vips` (ExaBGP acked): the previous owners may withdraw."""

    ts: float
    member: str
    vips: tuple[str, ...]


@dataclass(frozen=True)
class AddMember:
    ts: float
    member: str
    address: str  # "host:port", as the member's own pysyncobj node id


@dataclass(frozen=True)
class RemoveMember:
    ts: float
    member: str


Command = (
    Configure
    | Form
    | Report
    | Expire
    | SetRestarting
    | SetMaintenance
    | SetDrain
    | SetPin
    | Confirm
    | AddMember
    | RemoveMember
    | SetFormat
    | SetLayout
)


def command_format(cmd: Command) -> int:
    """The lowest format that can decode `cmd` (what it carries as "v")."""
    match cmd:
        case SetFormat():
            return cmd.version
        case SetLayout():
            return 2
    return 1


class CommandError(ValueError):
    """A command payload that is not a well-formed raftvip command."""


def encode_command(cmd: Command) -> bytes:
    body: dict[str, Any]
    match cmd:
        case Configure():
            body = {
                "op": "configure",
                "services": [_spec_to_wire(s) for s in cmd.services],
                "addresses": dict(cmd.addresses),
            }
            if cmd.forming:
                body["forming"] = True  # absent in logs written before it existed
        case Form():
            body = {"op": "form"}
        case Report():
            body = {
                "op": "report",
                "member": cmd.member,
                "inc": cmd.incarnation,
                "seq": cmd.seq,
                "health": dict(cmd.health),
                "wire": cmd.wire,  # format 1 decoders ignore it
            }
        case Expire():
            body = {
                "op": "expire",
                "member": cmd.member,
                "inc": cmd.incarnation,
                "seq": cmd.seq,
                "reason": cmd.reason,
            }
        case SetRestarting():
            body = {"op": "restarting", "member": cmd.member, "inc": cmd.incarnation}
        case SetMaintenance():
            body = {"op": "maintenance", "service": cmd.service, "on": cmd.on}
        case SetDrain():
            body = {"op": "drain", "member": cmd.member, "on": cmd.on}
        case SetPin():
            body = {"op": "pin", "vip": cmd.vip, "member": cmd.member}
        case Confirm():
            body = {"op": "confirm", "member": cmd.member, "vips": list(cmd.vips)}
        case AddMember():
            body = {"op": "add_member", "member": cmd.member, "address": cmd.address}
        case RemoveMember():
            body = {"op": "remove_member", "member": cmd.member}
        case SetFormat():
            body = {"op": "format", "version": cmd.version}
        case SetLayout():
            body = {
                "op": "layout",
                "member": cmd.member,
                "digest": cmd.digest,
                "services": [_spec_to_wire(s) for s in cmd.services],
                "timings": _timings_to_wire(cmd.timings),
                "summary": cmd.summary,
            }
    body["v"] = command_format(cmd)
    body["ts"] = float(cmd.ts)
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def decode_command(payload: bytes) -> Command:
    """Parse and type-check a command; raise `CommandError` naming what is wrong."""
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:
        raise CommandError(f"not msgpack: {exc}") from None
    if not isinstance(body, dict):
        raise CommandError("command is not a map")
    version = body.get("v")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CommandError(f"unsupported command version {version!r}")
    if version > WIRE_VERSION:
        raise CommandError(
            f"command format {version} is newer than this build's ({WIRE_VERSION}):"
            " a member of a newer raftvip proposed it before the whole group spoke it"
        )
    ts = _num(body, "ts")
    op = body.get("op")
    if op == "configure":
        services = body.get("services")
        if not isinstance(services, list):
            raise CommandError("configure.services: not a list")
        forming = body.get("forming", False)
        if not isinstance(forming, bool):
            raise CommandError("configure.forming: not a boolean")
        return Configure(
            ts,
            tuple(_spec_from_wire(s) for s in services),
            _str_map(body, "addresses"),
            forming,
        )
    if op == "form":
        return Form(ts)
    if op == "report":
        health = body.get("health")
        if not isinstance(health, dict) or not all(
            isinstance(k, str) and isinstance(v, bool) for k, v in health.items()
        ):
            raise CommandError("report.health: not a map of service -> bool")
        wire = body.get("wire", 1)
        if isinstance(wire, bool) or not isinstance(wire, int) or wire < 1:
            raise CommandError("report.wire: not a format number")
        return Report(ts, _str(body, "member"), _int(body, "inc"), _int(body, "seq"), health, wire)
    if op == "expire":
        return Expire(
            ts,
            _str(body, "member"),
            _int(body, "inc"),
            _int(body, "seq"),
            _str(body, "reason"),
        )
    if op == "restarting":
        return SetRestarting(ts, _str(body, "member"), _int(body, "inc"))
    if op == "maintenance":
        return SetMaintenance(ts, _str(body, "service"), _bool(body, "on"))
    if op == "drain":
        return SetDrain(ts, _str(body, "member"), _bool(body, "on"))
    if op == "pin":
        member = body.get("member")
        if member is not None and not isinstance(member, str):
            raise CommandError("pin.member: not a string or nil")
        return SetPin(ts, _str(body, "vip"), member)
    if op == "confirm":
        vips = body.get("vips")
        if not isinstance(vips, list) or not all(isinstance(v, str) for v in vips):
            raise CommandError("confirm.vips: not a list of strings")
        return Confirm(ts, _str(body, "member"), tuple(vips))
    if op == "add_member":
        return AddMember(ts, _str(body, "member"), _str(body, "address"))
    if op == "remove_member":
        return RemoveMember(ts, _str(body, "member"))
    if op == "format":
        return SetFormat(ts, _int(body, "version"))
    if op == "layout":
        services = body.get("services")
        if not isinstance(services, list):
            raise CommandError("layout.services: not a list")
        summary = body.get("summary", "")
        if not isinstance(summary, str):
            raise CommandError("layout.summary: not a string")
        return SetLayout(
            ts,
            _str(body, "member"),
            _str(body, "digest"),
            tuple(_spec_from_wire(s) for s in services),
            _timings_from_wire(body.get("timings")),
            summary,
        )
    raise CommandError(f"unknown op {op!r}")


def _timings_to_wire(t: Timings) -> dict[str, Any]:
    return {
        "lease": t.lease,
        "report_interval": t.report_interval,
        "on_quorum_loss": t.on_quorum_loss,
        "connection_timeout": t.connection_timeout,
        "disconnect_grace": t.disconnect_grace,
    }


def _timings_from_wire(body: Any) -> Timings:
    if not isinstance(body, dict):
        raise CommandError("layout.timings: not a map")
    policy = _str(body, "on_quorum_loss")
    if policy not in ("hold", "withdraw"):
        raise CommandError(f"layout.timings.on_quorum_loss: {policy!r} is not hold or withdraw")
    values = {
        key: _num(body, key)
        for key in ("lease", "report_interval", "connection_timeout", "disconnect_grace")
    }
    if not all(v > 0 for v in values.values()):
        raise CommandError("layout.timings: every duration must be > 0")
    return Timings(on_quorum_loss=policy, **values)


def _num(body: Mapping[str, Any], key: str) -> float:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CommandError(f"{key}: not a number")
    return float(value)


def _int(body: Mapping[str, Any], key: str) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CommandError(f"{key}: not an integer")
    return value


def _str(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise CommandError(f"{key}: not a string")
    return value


def _bool(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key)
    if not isinstance(value, bool):
        raise CommandError(f"{key}: not a boolean")
    return value


def _str_map(body: Mapping[str, Any], key: str) -> dict[str, str]:
    value = body.get(key)
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise CommandError(f"{key}: not a map of strings")
    return value


def _spec_to_wire(spec: ServiceSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "vips": list(spec.vips),
        "preferred": dict(spec.preferred),
        "preempt": spec.preempt,
        "preempt_delay": spec.preempt_delay,
        "rebalance": spec.rebalance,
    }


def _spec_from_wire(body: Any) -> ServiceSpec:
    if not isinstance(body, dict):
        raise CommandError("service: not a map")
    vips = body.get("vips")
    if not isinstance(vips, list) or not all(isinstance(v, str) for v in vips):
        raise CommandError("service.vips: not a list of strings")
    return ServiceSpec(
        name=_str(body, "name"),
        vips=tuple(vips),
        preferred=_str_map(body, "preferred"),
        preempt=_bool(body, "preempt"),
        preempt_delay=_num(body, "preempt_delay"),
        rebalance=_bool(body, "rebalance"),
    )


# --- transitions ----------------------------------------------------------------------------


def apply(state: ClusterState, cmd: Command, index: int = 0) -> ClusterState:
    """The next state. Returns `state` itself when the command does not apply.

    `index` is the command's Raft log index, recorded in the events it causes.
    """
    new = _apply(state, cmd)
    if index and new.version != state.version:
        new = evolve(
            new,
            events=tuple(
                evolve(e, index=index) if e.version == new.version else e for e in new.events
            ),
        )
    return new


def refused(state: ClusterState, cmd: Command) -> str | None:
    """Why every member refuses `cmd` (None: it applies): a command of a format that the
    group does not speak yet (see WIRE_VERSION)."""
    fmt = command_format(cmd)
    if isinstance(cmd, SetFormat):
        return None  # it carries the format it raises to; `_set_format` checks it
    if fmt > state.wire:
        return f"needs command format {fmt}, the group speaks {state.wire}"
    return None


def group_format_ready(state: ClusterState) -> int:
    """The highest format every member of the group has reported (1 while one has not
    reported at all)."""
    reported = [state.members[n].wire if n in state.members else 1 for n in state.addresses]
    return min(reported, default=1)


def _set_format(state: ClusterState, cmd: SetFormat) -> ClusterState:
    if not state.wire < cmd.version <= min(WIRE_VERSION, group_format_ready(state)):
        return state
    new = evolve(state, wire=cmd.version)
    if state.wire < 2 <= cmd.version:
        # Every member's layout starts as the one the group used so far (the leader's):
        # nothing moves until a member proposes its own.
        digest = layout_digest(state.services)
        seeded = MemberLayout(digest, state.services, None, cmd.ts, "format 2")
        new = evolve(new, layouts={name: seeded for name in state.addresses})
    return _bump(new, [_event(state, cmd.ts, "config", "-", f"command format {cmd.version}")])


def _set_layout(state: ClusterState, cmd: SetLayout) -> ClusterState:
    if cmd.member not in state.addresses:
        return state
    layout = MemberLayout(cmd.digest, cmd.services, cmd.timings, cmd.ts, cmd.summary)
    old = state.layouts.get(cmd.member)
    if old is not None and old.holds(cmd.digest, cmd.services, cmd.timings):
        return state
    layouts = {**state.layouts, cmd.member: layout}
    detail = f"layout {cmd.digest}" + (f": {cmd.summary}" if cmd.summary else "")
    return _relayout(state, layouts, cmd.ts, [_event(state, cmd.ts, "config", cmd.member, detail)])


def _relayout(
    state: ClusterState,
    layouts: Mapping[str, MemberLayout],
    ts: float,
    events: list[Event],
    new: ClusterState | None = None,
    rebalance: bool = False,
) -> ClusterState:
    """Format 2: the group's services are the merge of the members' layouts. A config
    change moves only what it changes: rebalancing may move only the VIPs a roll-out is
    adding (not in every member's layout before this change), never one every member had
    (see `place`). `rebalance`: as any placement (a member removed)."""
    base = new if new is not None else state
    services = merge_layouts(layouts)
    known_vips = {vip for s in services for vip in s.vips}
    names = {s.name for s in services}
    after = evolve(
        base,
        layouts=layouts,
        services=services,
        pins={vip: m for vip, m in base.pins.items() if vip in known_vips},
        maintenance=frozenset(base.maintenance & names),
    )
    movable = None
    if not rebalance:
        everyone = frozenset(state.layouts)
        before = vip_holders(state) or {}
        movable = frozenset(v for v in known_vips if before.get(v, frozenset()) != everyone)
    return _replace_and_place(state, after, ts, events, movable=movable)


def layout_digest(services: tuple[ServiceSpec, ...]) -> str:
    """A stable 16-hex-digit digest of a service layout, as placement reads it.

    sha256 of a canonical JSON of, per service in order: name, VIPs (in order), preferred
    owners (sorted), preempt, preempt_delay, rebalance. Order counts because placement's
    does (services are placed in order, VIPs too). Announce attributes and checks are not
    in a layout: they are each member's own and do not move VIPs. Two configs with the same
    digest give the group the same layout (`reload.config_digest`).
    """
    # sort_keys orders `preferred` too; a duration is a float whatever the config said
    layout = [{**_spec_to_wire(s), "preempt_delay": float(s.preempt_delay)} for s in services]
    text = json.dumps(["raftvip-layout-1", layout], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def merge_layouts(layouts: Mapping[str, MemberLayout]) -> tuple[ServiceSpec, ...]:
    """The group's services from its members' layouts; deterministic, whoever leads.

    Services and VIPs: the union, in member-name order of first appearance. Where members
    disagree on a setting, the one that moves nothing wins until they agree: `preempt` and
    `rebalance` hold only if every member that has the service says so, `preempt_delay` is
    the longest, and a VIP has a preferred owner only if every member that has the VIP
    names the same one. A roll-out of a new setting therefore takes effect when its last
    member has reloaded; a roll-out of a new VIP when its first has.
    """
    order: list[str] = []
    by_name: dict[str, list[ServiceSpec]] = {}
    for member in sorted(layouts):
        for spec in layouts[member].services:
            if spec.name not in by_name:
                order.append(spec.name)
                by_name[spec.name] = []
            by_name[spec.name].append(spec)
    merged: list[ServiceSpec] = []
    for name in order:
        specs = by_name[name]
        # Linear in the VIPs (a dict keeps first-appearance order; sets answer "has it").
        vips = list(dict.fromkeys(v for spec in specs for v in spec.vips))
        has = [(spec, frozenset(spec.vips)) for spec in specs]
        preferred: dict[str, str] = {}
        for vip in vips:
            named = {spec.preferred.get(vip) for spec, held in has if vip in held}
            if len(named) == 1:
                only = next(iter(named))
                if only is not None:
                    preferred[vip] = only
        merged.append(
            ServiceSpec(
                name=name,
                vips=tuple(vips),
                preferred=preferred,
                preempt=all(s.preempt for s in specs),
                preempt_delay=max(s.preempt_delay for s in specs),
                rebalance=all(s.rebalance for s in specs),
            )
        )
    return tuple(merged)


def vip_holders(state: ClusterState) -> dict[str, frozenset[str]] | None:
    """Format 2: vip -> the members whose own layout has it (placement puts it only there);
    None before (every member has every VIP)."""
    if state.wire < 2:
        return None
    holders: dict[str, set[str]] = {}
    for member, layout in state.layouts.items():
        for spec in layout.services:
            for vip in spec.vips:
                holders.setdefault(vip, set()).add(member)
    return {vip: frozenset(members) for vip, members in holders.items()}


def drift(state: ClusterState) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """(member -> layout digest, vip -> the members that have it, for the VIPs that only
    some members have). Empty before format 2."""
    if state.wire < 2:
        return {}, {}
    digests = {m: layout.digest for m, layout in sorted(state.layouts.items())}
    holders = vip_holders(state) or {}
    everyone = frozenset(state.layouts)
    partial = {
        vip: tuple(sorted(members)) for vip, members in holders.items() if members != everyone
    }
    return digests, partial


def _apply(state: ClusterState, cmd: Command) -> ClusterState:
    if refused(state, cmd) is not None:
        return state
    match cmd:
        case SetFormat():
            return _set_format(state, cmd)
        case SetLayout():
            return _set_layout(state, cmd)
        case Configure():
            return _configure(state, cmd)
        case Form():
            if state.formed:
                return state
            new = evolve(state, formed=True)
            return _replace_and_place(
                state, new, cmd.ts, [_event(state, cmd.ts, "config", "-", "group formed")]
            )
        case Report():
            return _report(state, cmd)
        case Expire():
            return _expire(state, cmd)
        case SetRestarting():
            member = state.members.get(cmd.member)
            if (
                member is None
                or not member.alive
                or member.restarting
                or member.incarnation != cmd.incarnation
            ):
                return state
            new = evolve(
                state, members={**state.members, cmd.member: evolve(member, restarting=True)}
            )
            return _bump(new, [_event(state, cmd.ts, "alive", cmd.member, "restarting in place")])
        case SetMaintenance():
            if state.service(cmd.service) is None or (cmd.service in state.maintenance) == cmd.on:
                return state
            flags = (
                state.maintenance | {cmd.service} if cmd.on else state.maintenance - {cmd.service}
            )
            new = evolve(state, maintenance=frozenset(flags))
            return _bump(new, [_event(state, cmd.ts, "maintenance", cmd.service, _onoff(cmd.on))])
        case SetDrain():
            member = state.members.get(cmd.member)
            if cmd.member not in state.addresses or (member and member.drained == cmd.on):
                return state
            member = evolve(member or MemberState(cmd.member), drained=cmd.on)
            new = evolve(state, members={**state.members, cmd.member: member})
            return _replace_and_place(
                state, new, cmd.ts, [_event(state, cmd.ts, "drain", cmd.member, _onoff(cmd.on))]
            )
        case SetPin():
            if state.service_of_vip(cmd.vip) is None or state.pins.get(cmd.vip) == cmd.member:
                return state
            if cmd.member is not None and cmd.member not in state.addresses:
                return state
            pins = dict(state.pins)
            if cmd.member is None:
                pins.pop(cmd.vip, None)
            else:
                pins[cmd.vip] = cmd.member
            new = evolve(state, pins=pins)
            detail = f"pinned to {cmd.member}" if cmd.member else "unpinned"
            return _replace_and_place(
                state, new, cmd.ts, [_event(state, cmd.ts, "pin", cmd.vip, detail)]
            )
        case Confirm():
            return _confirm(state, cmd)
        case AddMember():
            if cmd.member in state.addresses or cmd.address in state.addresses.values():
                return state
            new = evolve(state, addresses={**state.addresses, cmd.member: cmd.address})
            return _bump(
                new, [_event(state, cmd.ts, "membership", cmd.member, f"added {cmd.address}")]
            )
        case RemoveMember():
            if cmd.member not in state.addresses:
                return state
            new = evolve(
                state,
                addresses={n: a for n, a in state.addresses.items() if n != cmd.member},
                members={n: m for n, m in state.members.items() if n != cmd.member},
                pins={v: m for v, m in state.pins.items() if m != cmd.member},
            )
            removed = [_event(state, cmd.ts, "membership", cmd.member, "removed")]
            if state.wire >= 2:
                layouts = {n: lay for n, lay in state.layouts.items() if n != cmd.member}
                return _relayout(state, layouts, cmd.ts, removed, new, rebalance=True)
            return _replace_and_place(state, new, cmd.ts, removed)
    return state  # pragma: no cover - the match is exhaustive


def _confirm(state: ClusterState, cmd: Confirm) -> ClusterState:
    done = [vip for vip in cmd.vips if vip in state.handovers and state.owner_of(vip) == cmd.member]
    if not done:
        return state
    handovers = {vip: m for vip, m in state.handovers.items() if vip not in done}
    events = [
        _event(state, cmd.ts, "handover", vip, f"{state.handovers[vip]} -> {cmd.member} confirmed")
        for vip in done
    ]
    return _bump(evolve(state, handovers=handovers), events)


def _onoff(on: bool) -> str:
    return "on" if on else "off"


def _configure(state: ClusterState, cmd: Configure) -> ClusterState:
    """The leader's service layout. Its member list only bootstraps an empty group: after
    that, membership changes through AddMember / RemoveMember (`raftvip members`)."""
    addresses = dict(state.addresses) or dict(cmd.addresses)
    if state.wire >= 2:
        # The services are the merge of the members' own layouts (SetLayout); a Configure
        # (an older leader's) can only bootstrap the member list.
        if addresses == dict(state.addresses):
            return state
        cmd = evolve(cmd, services=state.services)
    if cmd.services == state.services and addresses == dict(state.addresses):
        return state
    members = {name: m for name, m in state.members.items() if name in addresses}
    known_vips = {vip for s in cmd.services for vip in s.vips}
    pins = {vip: m for vip, m in state.pins.items() if vip in known_vips and m in addresses}
    names = {s.name for s in cmd.services}
    new = evolve(
        state,
        services=cmd.services,
        addresses=addresses,
        members=members,
        pins=pins,
        maintenance=frozenset(state.maintenance & names),
        # Only the very first Configure of a group can start its formation.
        formed=state.formed and not (cmd.forming and not state.addresses and not state.owners),
    )
    detail = f"{len(cmd.services)} services, {len(known_vips)} VIPs, {len(addresses)} members"
    return _replace_and_place(state, new, cmd.ts, [_event(state, cmd.ts, "config", "-", detail)])


def _report(state: ClusterState, cmd: Report) -> ClusterState:
    if cmd.member not in state.addresses:
        return state
    old = state.members.get(cmd.member) or MemberState(cmd.member)
    if (cmd.incarnation, cmd.seq) <= (old.incarnation, old.seq):
        return state  # stale or duplicate (a timed-out proposal applied late)
    fresh = not old.alive or cmd.incarnation != old.incarnation
    healthy: dict[str, bool] = {}
    since: dict[str, float] = {}
    events: list[Event] = []
    for service in state.services:
        now_ok = bool(cmd.health.get(service.name, False))
        was_ok = old.is_healthy(service.name) and not fresh
        healthy[service.name] = now_ok
        if now_ok:
            since[service.name] = old.healthy_since.get(service.name, cmd.ts) if was_ok else cmd.ts
        if now_ok != old.is_healthy(service.name):
            events.append(
                _event(
                    state,
                    cmd.ts,
                    "health",
                    f"{cmd.member}/{service.name}",
                    "healthy" if now_ok else "unhealthy",
                )
            )
    if not old.alive:
        events.append(_event(state, cmd.ts, "alive", cmd.member, "joined"))
    member = MemberState(
        name=cmd.member,
        alive=True,
        incarnation=cmd.incarnation,
        seq=cmd.seq,
        clock=cmd.ts,
        healthy=healthy,
        healthy_since=since,
        drained=old.drained,
        leaving=False,
        # A late report of the process that is restarting in place (sent before its flag)
        # keeps the flag; the next process (a new incarnation) clears it.
        restarting=old.restarting and old.alive and cmd.incarnation == old.incarnation,
        wire=cmd.wire,
    )
    new = evolve(state, members={**state.members, cmd.member: member})
    if not events and all(_is_ready(old, s) == _is_ready(member, s) for s in state.services):
        # A pure lease renewal: nothing that placement reads has changed (only this
        # member's own readiness could have, as its clock moved on).
        return evolve(new, version=state.version)
    return _replace_and_place(state, new, cmd.ts, events)


def _expire(state: ClusterState, cmd: Expire) -> ClusterState:
    old = state.members.get(cmd.member)
    if old is None or not old.alive or (old.incarnation, old.seq) != (cmd.incarnation, cmd.seq):
        return state  # renewed since the leader decided, or already expired
    leaving = cmd.reason == "leaving"
    member = evolve(old, alive=False, leaving=leaving, restarting=False)
    new = evolve(state, members={**state.members, cmd.member: member})
    return _replace_and_place(
        state,
        new,
        cmd.ts,
        [_event(state, cmd.ts, "alive", cmd.member, f"expired ({cmd.reason})")],
        cause=cmd.reason,
    )


def eligible_sets(state: ClusterState) -> dict[str, frozenset[str]]:
    return {
        s.name: frozenset(m for m in state.members if state.eligible(m, s.name))
        for s in state.services
    }


def _restarting(state: ClusterState) -> frozenset[str]:
    return frozenset(name for name, m in state.members.items() if m.alive and m.restarting)


def _is_ready(m: MemberState, service: ServiceSpec) -> bool:
    """Eligible, and healthy for at least `preempt_delay` on its own clock."""
    return (
        m.alive
        and not m.drained
        and m.is_healthy(service.name)
        and m.clock - m.healthy_since.get(service.name, m.clock) >= service.preempt_delay
    )


def _ready_sets(state: ClusterState) -> dict[str, frozenset[str]]:
    return {
        service.name: frozenset(name for name, m in state.members.items() if _is_ready(m, service))
        for service in state.services
    }


def _replace_and_place(
    old: ClusterState,
    new: ClusterState,
    ts: float,
    events: list[Event],
    cause: str = "expired",
    movable: frozenset[str] | None = None,
) -> ClusterState:
    current = {vip: a.owner for vip, a in old.owners.items()}
    eligible = eligible_sets(new)
    holders = vip_holders(new)
    if not new.formed:
        owners: dict[str, Assignment] = {}  # forming: nothing yet
    elif not old.formed:
        # The group forms: every member present counts as ready (it was up while the group
        # formed; preempt_delay protects against members that flap after that).
        owners = place(
            new.services, eligible, eligible, new.pins, current, _restarting(new), holders
        )
    else:
        ready = _ready_sets(new)
        keep = _restarting(new)
        owners = place(new.services, eligible, ready, new.pins, current, keep, holders, movable)
    for vip in _all_vips(new):
        before, after = old.owners.get(vip), owners.get(vip)
        if (before.owner if before else None) != (after.owner if after else None):
            detail = (
                f"{before.owner if before else '-'} -> {after.owner if after else '-'}"
                f" ({after.reason if after else 'no eligible member'})"
            )
            events.append(_event(old, ts, "owner", vip, detail))
    handovers = _handovers(old, new, owners)
    takeovers = _takeovers(old, new, owners, handovers, ts, cause)
    return _bump(evolve(new, owners=owners, handovers=handovers, takeovers=takeovers), events)


def _gone_unconfirmed(state: ClusterState, member: str) -> bool:
    """`member` lost its VIPs without withdrawing them itself: expired (not a graceful
    leave) or removed. An alive member that lost a VIP withdrew it (failed check) or hands it
    over; a leaving one hands it over."""
    m = state.members.get(member)
    return m is None or (not m.alive and not m.leaving)


def _takeovers(
    old: ClusterState,
    new: ClusterState,
    owners: Mapping[str, Assignment],
    handovers: Mapping[str, str],
    ts: float,
    cause: str,
) -> dict[str, Takeover]:
    """Which VIPs their owners (or, while unowned, their next owners) take over from a
    member that may still announce them (see `Takeover`)."""
    takeovers: dict[str, Takeover] = {}
    for vip in _all_vips(new):
        before, after = old.owners.get(vip), owners.get(vip)
        was, now = (before.owner if before else None), (after.owner if after else None)
        record = old.takeovers.get(vip)
        if was != now and was is not None:
            gone = _gone_unconfirmed(new, was)
            record = Takeover(was, cause if was in new.members else "removed", ts) if gone else None
        keeper = old.handovers.get(vip)
        if keeper is not None and vip not in handovers and _gone_unconfirmed(new, keeper):
            # The member handing the VIP over died before it had withdrawn.
            record = Takeover(keeper, cause if keeper in new.members else "removed", ts)
        if record is not None and record.previous != now:
            takeovers[vip] = record
    return takeovers


def _handovers(
    old: ClusterState, new: ClusterState, owners: Mapping[str, Assignment]
) -> dict[str, str]:
    """Who keeps announcing each moved VIP until its new owner confirms.

    A VIP that moves away from a member that can still announce it (planned moves: drain,
    preemption, rebalancing, a graceful leave) is handed over; a VIP whose owner died or
    failed its check is not (there is nothing to keep).
    """
    handovers: dict[str, str] = {}
    for service in new.services:
        for vip in service.vips:
            after = owners.get(vip)
            if after is None:
                continue
            before = old.owners.get(vip)
            keeper = old.handovers.get(vip)
            if keeper is None and before is not None and before.owner != after.owner:
                keeper = before.owner
            if (
                keeper is not None
                and keeper != after.owner
                and new.can_still_announce(keeper, service.name)
            ):
                handovers[vip] = keeper
    return handovers


def _all_vips(state: ClusterState) -> list[str]:
    return [vip for s in state.services for vip in s.vips]


def _event(state: ClusterState, ts: float, kind: str, subject: str, detail: str) -> Event:
    return Event(state.version + 1, ts, kind, subject, detail)


def _bump(state: ClusterState, events: list[Event]) -> ClusterState:
    return evolve(
        state, version=state.version + 1, events=(state.events + tuple(events))[-MAX_EVENTS:]
    )


# --- snapshot -------------------------------------------------------------------------------


SNAPSHOT_VERSION = 1  # extended by optional keys only, so that older builds can read it


def state_to_wire(state: ClusterState) -> dict[str, Any]:
    return {
        "v": SNAPSHOT_VERSION,
        "version": state.version,
        "services": [_spec_to_wire(s) for s in state.services],
        "addresses": dict(state.addresses),
        "members": {
            name: {
                "alive": m.alive,
                "inc": m.incarnation,
                "seq": m.seq,
                "clock": m.clock,
                "healthy": dict(m.healthy),
                "since": dict(m.healthy_since),
                "drained": m.drained,
                "leaving": m.leaving,
                "restarting": m.restarting,
                "wire": m.wire,
            }
            for name, m in state.members.items()
        },
        "maintenance": sorted(state.maintenance),
        "pins": dict(state.pins),
        "owners": {vip: [a.owner, a.reason] for vip, a in state.owners.items()},
        "handovers": dict(state.handovers),
        "takeovers": {v: [t.previous, t.cause, t.ts] for v, t in state.takeovers.items()},
        "events": [[e.version, e.time, e.kind, e.subject, e.detail, e.index] for e in state.events],
        "formed": state.formed,
        # Optional keys (format 2): a format-1 reader ignores them, so "v" stays 1.
        "wire": state.wire,
        "layouts": {
            name: {
                "digest": lay.digest,
                "services": [_spec_to_wire(s) for s in lay.services],
                "timings": _timings_to_wire(lay.timings) if lay.timings else None,
                "ts": lay.ts,
                "summary": lay.summary,
            }
            for name, lay in state.layouts.items()
        },
    }


def state_from_wire(body: Any) -> ClusterState:
    """Inverse of `state_to_wire`; raises `CommandError` on a malformed snapshot."""
    try:
        if body["v"] != SNAPSHOT_VERSION:
            raise CommandError(f"unsupported snapshot version {body['v']!r}")
        return ClusterState(
            version=int(body["version"]),
            services=tuple(_spec_from_wire(s) for s in body["services"]),
            addresses=dict(body["addresses"]),
            members={
                name: MemberState(
                    name=name,
                    alive=bool(m["alive"]),
                    incarnation=int(m["inc"]),
                    seq=int(m["seq"]),
                    clock=float(m["clock"]),
                    healthy=dict(m["healthy"]),
                    healthy_since=dict(m["since"]),
                    drained=bool(m["drained"]),
                    leaving=bool(m["leaving"]),
                    restarting=bool(m.get("restarting", False)),
                    wire=int(m.get("wire", 1)),
                )
                for name, m in body["members"].items()
            },
            maintenance=frozenset(body["maintenance"]),
            pins=dict(body["pins"]),
            owners={vip: Assignment(o[0], o[1]) for vip, o in body["owners"].items()},
            handovers=dict(body["handovers"]),
            takeovers={
                vip: Takeover(str(t[0]), str(t[1]), float(t[2]))
                for vip, t in body.get("takeovers", {}).items()
            },
            events=tuple(
                Event(int(e[0]), float(e[1]), e[2], e[3], e[4], int(e[5])) for e in body["events"]
            ),
            formed=bool(body.get("formed", True)),
            wire=int(body.get("wire", 1)),
            layouts={
                name: MemberLayout(
                    digest=str(lay["digest"]),
                    services=tuple(_spec_from_wire(s) for s in lay["services"]),
                    timings=_timings_from_wire(lay["timings"]) if lay["timings"] else None,
                    ts=float(lay["ts"]),
                    summary=str(lay["summary"]),
                )
                for name, lay in body.get("layouts", {}).items()
            },
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CommandError(f"malformed snapshot: {exc!r}") from None
