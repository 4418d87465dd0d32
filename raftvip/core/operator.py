"""The rules of operator commands (pure): what a request becomes, or why it is refused.

The control socket's handlers (raftvip/agent.py) read the request, ask the extensions for
their vetoes (e.g. the ZooKeeper node that holds a maintenance flag), call these rules with
the replicated state, and commit the command they return. Every refusal says what to do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from raftvip.config import Config, check_member
from raftvip.core.state import (
    AddMember,
    ClusterState,
    Command,
    RemoveMember,
    SetDrain,
    SetMaintenance,
    SetPin,
)


class Refused(Exception):
    """An operator request that cannot be carried out; the message says why and what to do."""


def known_members(cfg: Config, state: ClusterState) -> dict[str, str]:
    """member -> address: the replicated list (it changes at run time), else the config's."""
    return dict(state.addresses) or dict(cfg.members)


def _unknown_member(name: str, members: Mapping[str, str]) -> Refused:
    return Refused(f"unknown member {name!r} (known: {', '.join(members)})")


def _first_veto(vetoes: Sequence[str | None]) -> None:
    for veto in vetoes:
        if veto is not None:
            raise Refused(veto)


def maintenance(
    cfg: Config,
    state: ClusterState,
    service: str,
    on: bool,
    vetoes: Sequence[str | None],
    wall: float,
) -> SetMaintenance:
    if state.service(service) is None and all(s.name != service for s in cfg.services):
        raise Refused(f"unknown service {service!r}")
    _first_veto(vetoes)
    return SetMaintenance(wall, service, on)


def drain(
    cfg: Config,
    state: ClusterState,
    member: str,
    on: bool,
    force: bool,
    vetoes: Sequence[str | None],
    wall: float,
) -> SetDrain:
    members = known_members(cfg, state)
    if member not in members:
        raise _unknown_member(member, members)
    _first_veto(vetoes)
    if on and not force:
        refuse_last_eligible(cfg, state, member)
    return SetDrain(wall, member, on)


def refuse_last_eligible(cfg: Config, state: ClusterState, member: str) -> None:
    """Draining `member` would leave a service it serves with nobody to announce it."""
    members = known_members(cfg, state)
    for service in cfg.services:
        owns = any(state.owner_of(v) == member for v in service.vips)
        others = [m for m in members if m != member and state.eligible(m, service.name)]
        if owns and not others:
            raise Refused(
                f"refusing to drain {member}: it is the last eligible member for service "
                f"{service.name!r}, whose VIPs would be withdrawn; use --force to drain anyway"
            )


def pin(cfg: Config, state: ClusterState, vip: str, target: str | None, wall: float) -> SetPin:
    service = cfg.service_of(vip)
    if service is None:
        raise Refused(f"unknown VIP {vip!r}")
    if target is not None:
        members = known_members(cfg, state)
        if target not in members:
            raise _unknown_member(target, members)
        if not state.eligible(target, service.name):
            raise Refused(
                f"{target} is not eligible for service {service.name!r} "
                f"({why_not_eligible(state, target, service.name)}); nothing changed"
            )
    return SetPin(wall, vip, target)


def why_not_eligible(state: ClusterState, member: str, service: str) -> str:
    m = state.members.get(member)
    if m is None or not m.alive:
        return "not alive"
    if m.drained:
        return "drained"
    return f"unhealthy for {service}"


def members_add(
    cfg: Config, state: ClusterState, name: str, address: str, reachable: bool, wall: float
) -> AddMember:
    problem = check_member(name, address)
    if problem:
        raise Refused(problem)
    members = known_members(cfg, state)
    if name in members and members[name] != address:
        raise Refused(f"member {name!r} already exists with address {members[name]}")
    if name not in members and address in members.values():
        raise Refused(f"address {address} is already used by another member")
    if not reachable:
        raise Refused("no quorum: this member cannot reach a majority; nothing changed")
    return AddMember(wall, name, address)


def members_remove(
    cfg: Config, state: ClusterState, name: str, force: bool, leader: str | None, wall: float
) -> RemoveMember:
    members = known_members(cfg, state)
    if name not in members:
        raise _unknown_member(name, members)
    if name == cfg.me:
        raise Refused("a member cannot remove itself: run this on another member")
    if leader == name:
        raise Refused(
            f"{name} is the leader: stop raftvip on {name} first (a new leader is "
            "elected in under a second), then remove it"
        )
    target = state.members.get(name)
    if target is not None and target.alive and not force:
        raise Refused(
            f"{name} is still alive: drain and stop it first, or use --force "
            "(it would keep announcing what it holds until it notices)"
        )
    return RemoveMember(wall, name)


# --- outcomes -------------------------------------------------------------------------------
#
# pysyncobj answers a proposal with a FAIL_REASON. Some say the command was never appended;
# LEADER_CHANGED does not: a follower fails every forwarded command still waiting for the
# leader's answer when it sees a new leader, even one that the old leader had appended and
# that the new one commits. A timeout says nothing either. Such an outcome is resolved by
# reading the replicated state: operator commands set a value, so the effect is visible and
# proposing the command again is harmless.

NOT_APPENDED = {
    1: "the proposal queue is full",
    2: "there is no leader (an election is in progress?)",
    3: "a new leader discarded it",
    4: "the leader changed before it took the command",
    6: "the leader refused it",
}
UNKNOWN = {5: "the leader changed before it answered", 7: "pysyncobj cannot tell"}


def outcome_of(err: int | None) -> tuple[str, str]:
    """("committed" | "not committed" | "unknown", why) for a proposal's FAIL_REASON (None:
    no answer in time)."""
    if err == 0:
        return "committed", ""
    if err is None:
        return "unknown", "no answer in time"
    if err in NOT_APPENDED:
        return "not committed", NOT_APPENDED[err]
    return "unknown", UNKNOWN.get(err, f"pysyncobj error {err}")


def effect_visible(cmd: Command, state: ClusterState) -> bool:
    """Whether `state` already has what operator command `cmd` sets."""
    match cmd:
        case SetMaintenance():
            return (cmd.service in state.maintenance) == cmd.on
        case SetDrain():
            member = state.members.get(cmd.member)
            return (member is not None and member.drained) == cmd.on
        case SetPin():
            return state.pins.get(cmd.vip) == cmd.member
        case AddMember():
            return state.addresses.get(cmd.member) == cmd.address
        case RemoveMember():
            return cmd.member not in state.addresses
    return False
