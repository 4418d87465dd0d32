"""What a reload of a member's configuration changes, and whether it may change live (pure).

`raftvip reload` and SIGHUP re-read the member's file; `diff_configs(running, new)` says what
differs. Everything about services changes in place: services and VIPs added or removed,
announce attributes (re-announced in place: BGP's implicit withdraw), health checks (only
that service's checker is replaced) and placement settings. Keys that the running process
cannot take without being restarted are listed in `restart_needed`, each with its key path
and why; the shell then refuses the whole reload. `[members]` changes through the log
(`raftvip members add/remove`), never through a reload.

`config_digest` is a short digest of the placement-relevant layout (services, VIPs,
preferred owners, preempt, preempt_delay, rebalance): two members with the same digest place
every VIP the same way.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from raftvip.config import CheckConfig, Config, ServiceConfig
from raftvip.core.leader import service_specs
from raftvip.core.state import layout_digest

# --- keys that need a restart ---------------------------------------------------------------

_CLUSTER_RESTART: Mapping[str, str] = {
    "name": "the Raft journal, the snapshot and every peer know the member by it",
    "member": "the group knows this process by its name",
    "secret_file": "the Raft port's keys are derived from the secret when the process starts",
    "state_dir": "the Raft journal is open in it",
    "control_socket": "the socket is bound at start (and `raftvip` finds the member by it)",
    "lease": "lease deadlines and the withdraw fence already running would move: the leader "
    "could expire members at once, a fenced member could announce again",
    "report_interval": "it is bound to the lease and to the withdraw fence",
    "on_quorum_loss": "a member cut off from the group must not switch between keeping and "
    "withdrawing its routes in the middle of a partition",
}
_LIVE_CLUSTER_KEYS = ("shutdown_timeout", "handover_timeout")
_RAFT_WHY = "pysyncobj reads its timings and wire format when the process starts"
_METRICS_WHY = "the metrics server is bound at start"
_ZOOKEEPER_WHY = "the ZooKeeper session, its credentials and its watches are set up at start"
_ME_WHY = "pysyncobj binds this member's Raft address at start"
_EXABGP_NOTE = (
    "read by `raftvip exabgp-config` only: regenerate ExaBGP's configuration and reload "
    "ExaBGP for its sessions to change"
)
_PLACEMENT_KEYS = ("preempt", "preempt_delay", "rebalance")
_CHECK_KEYS = tuple(
    f.name for f in dataclasses.fields(CheckConfig) if f.name not in ("kind", "target")
)


@dataclass(frozen=True)
class KeyChange:
    """One key of a service that changed: `key` relative to the service (`announce.med`)."""

    key: str
    old: str  # as written in TOML, e.g. `100`, `["65001:100"]`, `unset`
    new: str

    def describe(self) -> str:
        return f"{self.key} {self.old} -> {self.new}"


@dataclass(frozen=True)
class ConfigDiff:
    """What a reload changes, by service (names), and what it cannot change live.

    Services are matched by name: a renamed service is one removed and one added. A VIP
    that moves from one service to another is removed from the first and added to the
    second. `other_changed` holds changes outside `[[service]]` that apply live.
    """

    added_services: tuple[str, ...] = ()
    removed_services: tuple[str, ...] = ()
    added_vips: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # kept services
    removed_vips: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    announce_changed: Mapping[str, tuple[KeyChange, ...]] = field(default_factory=dict)
    check_changed: Mapping[str, tuple[KeyChange, ...]] = field(default_factory=dict)
    placement_changed: Mapping[str, tuple[KeyChange, ...]] = field(default_factory=dict)
    other_changed: tuple[str, ...] = ()  # "cluster.handover_timeout 5 -> 3"
    # "cluster.name: 'apex' -> 'beta': needs a restart (why)": the reload is refused
    restart_needed: tuple[str, ...] = ()
    # what the added/removed services carry, for `lines()` (service -> its VIPs, its check)
    _vips_of: Mapping[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    _check_of: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def empty(self) -> bool:
        """Nothing to apply and nothing refused: the file says what the member runs."""
        return not (self.lines() or self.restart_needed)

    @property
    def checks_replaced(self) -> tuple[str, ...]:
        """Services whose checker stops or starts: removed, added, or with a changed check."""
        return tuple(
            sorted({*self.added_services, *self.removed_services, *self.check_changed.keys()})
        )

    def lines(self) -> list[str]:
        """One human-readable line per change that applies live (not `restart_needed`)."""
        lines: list[str] = []
        for name in self.added_services:
            vips = self._vips_of.get(name, ())
            lines.append(
                f"service {name}: added ({_count(len(vips), 'VIP')}: {', '.join(vips)}; "
                f"check: {self._check_of.get(name, 'none')})"
            )
        for name in self.removed_services:
            vips = self._vips_of.get(name, ())
            lines.append(
                f"service {name}: removed ({_count(len(vips), 'VIP')}: {', '.join(vips)};"
                " withdrawn if this member announced them)"
            )
        for name, vips in self.added_vips.items():
            lines += [f"service {name}: VIP {vip} added" for vip in vips]
        for name, vips in self.removed_vips.items():
            lines += [
                f"service {name}: VIP {vip} removed (withdrawn if this member announced it)"
                for vip in vips
            ]
        for name, changes in self.announce_changed.items():
            lines += [
                f"service {name}: {c.describe()} (announced VIPs re-announced in place)"
                for c in changes
            ]
        for name, changes in self.check_changed.items():
            lines += [
                f"service {name}: {c.describe()} (new checker; the current health holds "
                "until it decides)"
                for c in changes
            ]
        for name, changes in self.placement_changed.items():
            lines += [f"service {name}: {c.describe()}" for c in changes]
        lines += list(self.other_changed)
        return lines

    def summary(self) -> str:
        """One short line for logs and events: `3 changes: +1 VIP, -1 VIP, announce web`."""
        if self.restart_needed:
            keys = ", ".join(item.split(":", 1)[0] for item in self.restart_needed)
            return f"refused: needs a restart ({keys})"
        parts: list[str] = []
        if self.added_services:
            parts.append(f"+service {','.join(self.added_services)}")
        if self.removed_services:
            parts.append(f"-service {','.join(self.removed_services)}")
        added = sum(len(v) for v in self.added_vips.values())
        removed = sum(len(v) for v in self.removed_vips.values())
        if added:
            parts.append(f"+{_count(added, 'VIP')}")
        if removed:
            parts.append(f"-{_count(removed, 'VIP')}")
        for what, changed in (
            ("announce", self.announce_changed),
            ("check", self.check_changed),
            ("placement", self.placement_changed),
        ):
            if changed:
                parts.append(f"{what} {','.join(changed)}")
        if self.other_changed:
            parts.append(
                ", ".join(item.split(" ", 1)[0].rstrip(":") for item in self.other_changed)
            )
        count = len(self.lines())
        return f"{_count(count, 'change')}: {'; '.join(parts)}" if count else "no change"


def diff_configs(
    old: Config, new: Config, members_now: Mapping[str, str] | None = None
) -> ConfigDiff:
    """What changes from the running config `old` to `new` (both valid, from `load_config`).

    `members_now`: the group's membership as replicated (`ClusterState.addresses`). A
    `[members]` equal to it is accepted: the file catches up with `raftvip members add/remove`.
    Any other `[members]` change is refused.
    """
    restart = _restart_needed(old, new, members_now)
    other = _other_changed(old, new, members_now)
    old_services = {s.name: s for s in old.services}
    new_services = {s.name: s for s in new.services}
    added = tuple(s.name for s in new.services if s.name not in old_services)
    removed = tuple(s.name for s in old.services if s.name not in new_services)
    added_vips: dict[str, tuple[str, ...]] = {}
    removed_vips: dict[str, tuple[str, ...]] = {}
    announce: dict[str, tuple[KeyChange, ...]] = {}
    check: dict[str, tuple[KeyChange, ...]] = {}
    placement: dict[str, tuple[KeyChange, ...]] = {}
    for service in new.services:
        before = old_services.get(service.name)
        if before is None:
            continue
        name = service.name
        if plus := tuple(v for v in service.vips if v not in before.vips):
            added_vips[name] = plus
        if minus := tuple(v for v in before.vips if v not in service.vips):
            removed_vips[name] = minus
        if changes := _announce_changes(before, service):
            announce[name] = changes
        if changes := _check_changes(before.check, service.check):
            check[name] = changes
        if changes := _placement_changes(before, service):
            placement[name] = changes
    kept_order = [s.name for s in old.services if s.name in new_services]
    if kept_order != [s.name for s in new.services if s.name in old_services]:
        other.append(
            f"services: order {', '.join(kept_order)} -> "
            f"{', '.join(s.name for s in new.services if s.name in old_services)} "
            "(placement visits services in this order)"
        )
    return ConfigDiff(
        added_services=added,
        removed_services=removed,
        added_vips=added_vips,
        removed_vips=removed_vips,
        announce_changed=announce,
        check_changed=check,
        placement_changed=placement,
        other_changed=tuple(other),
        restart_needed=tuple(restart),
        _vips_of={
            **{n: old_services[n].vips for n in removed},
            **{n: new_services[n].vips for n in added},
        },
        _check_of={n: _probe(new_services[n].check) for n in added},
    )


def with_restart_needed(diff: ConfigDiff, *items: str) -> ConfigDiff:
    """`diff` with more restart-only changes that the shell found (e.g. a new secret)."""
    return dataclasses.replace(diff, restart_needed=(*diff.restart_needed, *items))


def config_digest(cfg: Config) -> str:
    """The digest of this config's service layout (`state.layout_digest`): what the member
    proposes to the group and what `status` compares across members."""
    return layout_digest(service_specs(cfg))


def initial_health(service: ServiceConfig) -> str:
    """A service's local health before its checker has said anything: up without a check,
    else down until the check rises."""
    return "up" if service.check.kind == "none" else "down"


def health_after_reload(old: Config, new: Config, health: Mapping[str, str]) -> dict[str, str]:
    """The loop's local health once `new` replaces `old`.

    Removed services are dropped; added ones start as at start-up (`initial_health`); a kept
    service keeps its health, also when its check changed: the new checker decides, and until
    it does the last verdict holds (a reload must not withdraw a healthy service). A check
    removed leaves the service always up.
    """
    before = {s.name: s for s in old.services}
    result: dict[str, str] = {}
    for service in new.services:
        previous = before.get(service.name)
        if previous is None or service.name not in health:
            result[service.name] = initial_health(service)
        elif service.check.kind == "none":
            result[service.name] = "up"
        else:
            result[service.name] = health[service.name]
    return result


# --- helpers --------------------------------------------------------------------------------


def _restart_needed(old: Config, new: Config, members_now: Mapping[str, str] | None) -> list[str]:
    items: list[str] = []
    for key, why in _CLUSTER_RESTART.items():
        before, after = getattr(old.cluster, key), getattr(new.cluster, key)
        if before != after:
            items.append(
                f"cluster.{key}: {_show(before)} -> {_show(after)}: needs a restart ({why})"
            )
    for f in dataclasses.fields(old.raft):
        before, after = getattr(old.raft, f.name), getattr(new.raft, f.name)
        if before != after:
            items.append(
                f"raft.{f.name}: {_show(before)} -> {_show(after)}: needs a restart ({_RAFT_WHY})"
            )
    items += _members_refused(old, new, members_now)
    if old.metrics != new.metrics:
        before_listen = old.metrics.listen if old.metrics else None
        after_listen = new.metrics.listen if new.metrics else None
        items.append(
            f"metrics.listen: {_show(before_listen)} -> {_show(after_listen)}: needs a restart"
            f" ({_METRICS_WHY})"
        )
    if old.zookeeper != new.zookeeper:
        if old.zookeeper is None or new.zookeeper is None:
            keys = ["zookeeper"]
        else:
            keys = [
                f"zookeeper.{f.name}"
                for f in dataclasses.fields(old.zookeeper)
                if getattr(old.zookeeper, f.name) != getattr(new.zookeeper, f.name)
            ]
        items += [f"{key}: changed: needs a restart ({_ZOOKEEPER_WHY})" for key in keys]
    return items


def _members_refused(old: Config, new: Config, members_now: Mapping[str, str] | None) -> list[str]:
    me = old.me
    items: list[str] = []
    if old.members.get(me) != new.members.get(me):
        items.append(
            f"members.{me}: this member's Raft address {_show(old.members.get(me))} -> "
            f"{_show(new.members.get(me))}: needs a restart ({_ME_WHY})"
        )
    if dict(old.members) == dict(new.members) or (
        members_now and dict(new.members) == dict(members_now)
    ):
        return items
    for name, address in new.members.items():
        if name == me:
            continue
        if name not in old.members:
            items.append(
                f"members.{name}: added: membership changes through the group, not a reload: "
                f"run `raftvip members add {name} {address}`, then list it in every file"
            )
        elif old.members[name] != address:
            items.append(
                f"members.{name}: address {old.members[name]} -> {address}: membership changes "
                f"through the group, not a reload: run `raftvip members remove {name}`, then "
                f"`raftvip members add {name} {address}`"
            )
    for name in old.members:
        if name not in new.members and name != me:
            items.append(
                f"members.{name}: removed: membership changes through the group, not a reload:"
                f" run `raftvip members remove {name}`, then remove it from every file"
            )
    return items


def _other_changed(old: Config, new: Config, members_now: Mapping[str, str] | None) -> list[str]:
    lines: list[str] = []
    for key in _LIVE_CLUSTER_KEYS:
        before, after = getattr(old.cluster, key), getattr(new.cluster, key)
        if before != after:
            lines.append(f"cluster.{key} {_show(before)} -> {_show(after)}")
    if (
        dict(old.members) != dict(new.members)
        and members_now
        and dict(new.members) == dict(members_now)
        and old.members.get(old.me) == new.members.get(new.me)
    ):
        lines.append(
            "members: the file now lists the group's membership "
            f"({', '.join(new.members)}; changed with `raftvip members`)"
        )
    for f in dataclasses.fields(old.exabgp):
        before, after = getattr(old.exabgp, f.name), getattr(new.exabgp, f.name)
        if before != after:
            lines.append(f"exabgp.{f.name} changed ({_EXABGP_NOTE})")
    return lines


def _announce_changes(old: ServiceConfig, new: ServiceConfig) -> tuple[KeyChange, ...]:
    return tuple(
        KeyChange(f"announce.{f.name}", _show(getattr(old.announce, f.name)), _show(after))
        for f in dataclasses.fields(new.announce)
        if getattr(old.announce, f.name) != (after := getattr(new.announce, f.name))
    )


def _check_changes(old: CheckConfig, new: CheckConfig) -> tuple[KeyChange, ...]:
    changes: list[KeyChange] = []
    if (old.kind, old.target) != (new.kind, new.target):
        changes.append(KeyChange("check", _probe(old), _probe(new)))
    for key in _CHECK_KEYS:
        before, after = getattr(old, key), getattr(new, key)
        if before != after:
            changes.append(KeyChange(f"check.{key}", _show(before), _show(after)))
    return tuple(changes)


def _placement_changes(old: ServiceConfig, new: ServiceConfig) -> tuple[KeyChange, ...]:
    changes: list[KeyChange] = []
    kept = [v for v in new.vips if v in old.vips]
    if kept != [v for v in old.vips if v in new.vips]:
        changes.append(
            KeyChange("vips (order)", _show([v for v in old.vips if v in new.vips]), _show(kept))
        )
    for vip in sorted({*old.preferred, *new.preferred}):
        before, after = old.preferred.get(vip), new.preferred.get(vip)
        if before != after:
            changes.append(KeyChange(f"preferred.{_quoted_key(vip)}", _show(before), _show(after)))
    for key in _PLACEMENT_KEYS:
        before, after = getattr(old, key), getattr(new, key)
        if before != after:
            changes.append(KeyChange(key, _show(before), _show(after)))
    return tuple(changes)


def _probe(check: CheckConfig) -> str:
    return "none" if check.kind == "none" else f"{check.kind} {json.dumps(check.target)}"


def _quoted_key(key: str) -> str:
    return json.dumps(key) if ":" in key or "." in key else key


def _show(value: object) -> str:
    """A value as written in TOML."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:g}"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_show(v)}" for k, v in value.items()) + " }"
    return str(value)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
