"""VIP placement: a pure, deterministic function of the replicated state.

Every member runs `place` on the same inputs and gets the same owners. The rules, in order,
for each service (VIPs in configuration order, members in name order):

1. **pinned**: an operator pin holds while the pinned member is eligible.
2. **preferred**: the preferred owner (ExaZK's auth-ip) holds its VIP while eligible; it takes
   the VIP from another healthy owner only if `preempt` and it has been healthy for
   `preempt_delay` ("ready"). A VIP with no eligible owner goes to its eligible preferred
   owner at once.
3. **sticky**: an eligible owner keeps its VIP.
4. **rebalance** (`rebalance`): while the most loaded eligible member owns two VIPs more than
   the least loaded *ready* member, one VIP that is neither pinned nor has a preferred owner
   moves (preferred VIPs follow `preempt`). Only ready members receive, so a flapping member
   attracts nothing.
5. **orphans**: a VIP whose owner is gone goes to the eligible member owning the fewest VIPs
   of the service (ties: fewest VIPs overall, then name). Only those VIPs move on failure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceSpec:
    """The placement-relevant part of a service, replicated so all members agree."""

    name: str
    vips: tuple[str, ...]
    preferred: Mapping[str, str]
    preempt: bool = True
    preempt_delay: float = 5.0
    rebalance: bool = True


@dataclass(frozen=True)
class Assignment:
    owner: str
    reason: str  # pinned | preferred | preempt | sticky | rebalance | failover | initial


def place(
    services: Sequence[ServiceSpec],
    eligible: Mapping[str, frozenset[str]],
    ready: Mapping[str, frozenset[str]],
    pins: Mapping[str, str],
    current: Mapping[str, str],
    keep_only: frozenset[str] = frozenset(),
    holders: Mapping[str, frozenset[str]] | None = None,
    may_move: frozenset[str] | None = None,
) -> dict[str, Assignment]:
    """Owners for every VIP that has an eligible member.

    `eligible[service]`: members that may own the service's VIPs (alive, healthy, not drained).
    `ready[service]`: the eligible members healthy for at least `preempt_delay`.
    `current`: the owners before this decision (vip -> member).
    `keep_only`: eligible members that keep what they own but receive nothing new (a member
    restarting in place: its process is about to exit, and a VIP given to it then would be
    announced by nobody that can still withdraw it or confirm a handover).
    `holders`: vip -> the members whose own config has it (a roll-out in progress); a VIP
    goes only to those. None: every member has every VIP.
    `may_move`: the only VIPs rebalancing may move (None: any). A config change passes the
    VIPs a roll-out is adding: giving a loaded member a new VIP must not move one that every
    member had away from it (the next failure, join or drain rebalances as usual).
    """
    total_load: dict[str, int] = {}
    result: dict[str, Assignment] = {}
    for service in services:
        members = eligible.get(service.name, frozenset())
        assigned = _place_service(
            service,
            members,
            ready.get(service.name, frozenset()) & members,
            pins,
            current,
            total_load,
            keep_only,
            holders,
            may_move,
        )
        for assignment in assigned.values():
            total_load[assignment.owner] = total_load.get(assignment.owner, 0) + 1
        result.update(assigned)
    return result


def _place_service(
    service: ServiceSpec,
    eligible: frozenset[str],
    ready: frozenset[str],
    pins: Mapping[str, str],
    current: Mapping[str, str],
    total_load: Mapping[str, int],
    keep_only: frozenset[str] = frozenset(),
    holders: Mapping[str, frozenset[str]] | None = None,
    may_move: frozenset[str] | None = None,
) -> dict[str, Assignment]:
    owners: dict[str, Assignment] = {}
    if not eligible:
        return owners
    receivers = (eligible - keep_only) or eligible  # none left: better it than nobody

    def has(member: str, vip: str) -> bool:
        return holders is None or member in holders.get(vip, frozenset())

    def can_own(member: str | None, vip: str) -> bool:
        return member is not None and member in eligible and has(member, vip)

    def receives(member: str, vip: str) -> bool:
        return (member in receivers or current.get(vip) == member) and has(member, vip)

    def kept(vip: str) -> bool:
        """Owned by a member restarting in place: it stays there (no handover is possible
        while its process is being replaced)."""
        owner = current.get(vip)
        return owner is not None and owner in keep_only and can_own(owner, vip)

    held: set[str] = set()  # VIPs that rebalancing must not move

    for vip in service.vips:
        pinned = pins.get(vip)
        owner = current.get(vip)
        if kept(vip) and owner is not None:
            reason = "pinned" if pinned == owner else "sticky"
            if service.preferred.get(vip) == owner and reason == "sticky":
                reason = "preferred"
            owners[vip] = Assignment(owner, reason)
            held.add(vip)
            continue
        if pinned is not None and can_own(pinned, vip) and receives(pinned, vip):
            owners[vip] = Assignment(pinned, "pinned")
            held.add(vip)
            continue
        preferred = service.preferred.get(vip)
        if preferred is None or not can_own(preferred, vip) or not receives(preferred, vip):
            continue
        owner = current.get(vip)
        if owner == preferred:
            owners[vip] = Assignment(preferred, "preferred")
        elif owner is None or not can_own(owner, vip):
            owners[vip] = Assignment(preferred, "preferred" if owner is None else "failover")
        elif service.preempt and preferred in ready:
            owners[vip] = Assignment(preferred, "preempt")
        else:
            continue
        held.add(vip)

    for vip in service.vips:
        owner = current.get(vip)
        if vip not in owners and owner is not None and can_own(owner, vip):
            owners[vip] = Assignment(owner, "sticky")

    load = {member: 0 for member in eligible}
    for assignment in owners.values():
        load[assignment.owner] += 1

    def least_loaded(candidates: frozenset[str]) -> str:
        return min(candidates, key=lambda m: (load[m], total_load.get(m, 0), m))

    for vip in service.vips:
        if vip in owners:
            continue
        candidates = frozenset(m for m in receivers if has(m, vip)) or frozenset(
            m for m in eligible if has(m, vip)
        )
        if not candidates:
            continue  # no eligible member has it in its config (yet)
        owner = least_loaded(candidates)
        owners[vip] = Assignment(owner, "initial" if current.get(vip) is None else "failover")
        load[owner] += 1

    if service.rebalance and ready:
        # Each move lowers the sum of squared loads, so this ends within len(vips) moves.
        for _ in range(len(service.vips)):
            if not ready - keep_only:
                break
            receiver = least_loaded(ready - keep_only)
            giver = max(receivers, key=lambda m: (load[m], m))  # a restart moves nothing
            if load[giver] - load[receiver] <= 1:
                break
            movable = [
                v
                for v in service.vips
                if v in owners
                and owners[v].owner == giver
                and v not in held
                and v not in service.preferred
                and has(receiver, v)
                and (may_move is None or v in may_move)
            ]
            if not movable:
                break
            vip = movable[-1]
            owners[vip] = Assignment(receiver, "rebalance")
            load[giver] -= 1
            load[receiver] += 1
    return owners
