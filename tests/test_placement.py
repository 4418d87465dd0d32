"""Placement: deterministic, sticky, preferred owners, balanced, minimal movement."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from raftvip.core.placement import ServiceSpec, place

MEMBERS = ["lb1", "lb2", "lb3", "lb4", "lb5"]


def spec(vips: list[str], preferred: dict[str, str] | None = None, **kw: object) -> ServiceSpec:
    return ServiceSpec(name="apex", vips=tuple(vips), preferred=preferred or {}, **kw)  # type: ignore[arg-type]


def owners_of(result: dict) -> dict[str, str]:  # type: ignore[type-arg]
    return {vip: a.owner for vip, a in result.items()}


def counts(owners: dict[str, str], members: list[str]) -> dict[str, int]:
    return {m: sum(1 for o in owners.values() if o == m) for m in members}


VIPS = [f"10.0.0.{i}" for i in range(1, 11)]


def test_empty_eligible_assigns_nothing() -> None:
    assert place([spec(VIPS)], {"apex": frozenset()}, {}, {}, {}) == {}


def test_cold_start_spreads_evenly() -> None:
    members = frozenset(MEMBERS[:3])
    owners = owners_of(place([spec(VIPS)], {"apex": members}, {"apex": members}, {}, {}))
    assert set(owners) == set(VIPS)
    c = counts(owners, MEMBERS[:3])
    assert max(c.values()) - min(c.values()) <= 1


def test_preferred_owner_takes_its_vip_immediately_when_unowned() -> None:
    s = spec(["a", "b", "c"], {"a": "lb1", "b": "lb2", "c": "lb3"})
    members = frozenset(MEMBERS[:3])
    owners = owners_of(place([s], {"apex": members}, {"apex": frozenset()}, {}, {}))
    assert owners == {"a": "lb1", "b": "lb2", "c": "lb3"}


def test_returning_preferred_owner_waits_for_ready_then_preempts() -> None:
    s = spec(["a", "b", "c"], {"a": "lb1", "b": "lb2", "c": "lb3"})
    current = {"a": "lb1", "b": "lb3", "c": "lb3"}
    all3 = frozenset(MEMBERS[:3])
    not_ready = owners_of(
        place([s], {"apex": all3}, {"apex": frozenset({"lb1", "lb3"})}, {}, current)
    )
    assert not_ready["b"] == "lb3"
    ready = place([s], {"apex": all3}, {"apex": all3}, {}, current)
    assert ready["b"].owner == "lb2" and ready["b"].reason == "preempt"


def test_no_preempt_keeps_current_owner() -> None:
    s = spec(["a", "b"], {"a": "lb1", "b": "lb2"}, preempt=False)
    current = {"a": "lb1", "b": "lb1"}
    all2 = frozenset({"lb1", "lb2"})
    owners = owners_of(place([s], {"apex": all2}, {"apex": all2}, {}, current))
    assert owners["b"] == "lb1"


def test_pin_wins_while_eligible() -> None:
    s = spec(["a", "b"], {"a": "lb1"})
    all3 = frozenset(MEMBERS[:3])
    result = place([s], {"apex": all3}, {"apex": all3}, {"a": "lb3"}, {"a": "lb1"})
    assert result["a"].owner == "lb3" and result["a"].reason == "pinned"
    fallback = place([s], {"apex": frozenset({"lb1", "lb2"})}, {}, {"a": "lb3"}, {"a": "lb3"})
    assert fallback["a"].owner == "lb1"


def test_failure_moves_only_the_dead_members_vips() -> None:
    members = frozenset(MEMBERS[:3])
    before = owners_of(place([spec(VIPS)], {"apex": members}, {"apex": members}, {}, {}))
    survivors = frozenset({"lb1", "lb2"})
    after = owners_of(place([spec(VIPS)], {"apex": survivors}, {"apex": survivors}, {}, before))
    for vip, owner in before.items():
        if owner != "lb3":
            assert after[vip] == owner
        else:
            assert after[vip] in survivors


def test_rebalance_onto_ready_member_only() -> None:
    current = {vip: "lb1" for vip in VIPS}
    all2 = frozenset({"lb1", "lb2"})
    waiting = owners_of(
        place([spec(VIPS)], {"apex": all2}, {"apex": frozenset({"lb1"})}, {}, current)
    )
    assert waiting == current
    spread = owners_of(place([spec(VIPS)], {"apex": all2}, {"apex": all2}, {}, current))
    assert counts(spread, ["lb1", "lb2"]) == {"lb1": 5, "lb2": 5}


def test_rebalance_disabled_keeps_sticky() -> None:
    current = {vip: "lb1" for vip in VIPS}
    all2 = frozenset({"lb1", "lb2"})
    owners = owners_of(
        place([spec(VIPS, rebalance=False)], {"apex": all2}, {"apex": all2}, {}, current)
    )
    assert owners == current


member_sets = st.sets(st.sampled_from(MEMBERS), min_size=1)
currents = st.dictionaries(st.sampled_from(VIPS), st.sampled_from(MEMBERS))


@settings(max_examples=300, deadline=None)
@given(eligible=member_sets, current=currents, ready_all=st.booleans())
def test_property_every_vip_owned_by_one_eligible_member(
    eligible: set[str], current: dict[str, str], ready_all: bool
) -> None:
    members = frozenset(eligible)
    ready = members if ready_all else frozenset()
    result = place([spec(VIPS)], {"apex": members}, {"apex": ready}, {}, current)
    assert set(result) == set(VIPS)
    assert all(a.owner in members for a in result.values())
    # Deterministic: same inputs, same answer.
    assert result == place([spec(VIPS)], {"apex": members}, {"apex": ready}, {}, current)
    # Sticky: an eligible owner keeps its VIP unless rebalancing onto a ready member.
    if not ready_all:
        for vip, owner in current.items():
            if owner in members:
                assert result[vip].owner == owner


@settings(max_examples=300, deadline=None)
@given(eligible=member_sets, current=currents)
def test_property_balanced_when_all_ready_and_no_preferences(
    eligible: set[str], current: dict[str, str]
) -> None:
    members = frozenset(eligible)
    owners = owners_of(place([spec(VIPS)], {"apex": members}, {"apex": members}, {}, current))
    c = counts(owners, sorted(members))
    assert max(c.values()) - min(c.values()) <= 1


@settings(max_examples=200, deadline=None)
@given(eligible=member_sets, dead=st.sampled_from(MEMBERS))
def test_property_failure_moves_only_orphans(eligible: set[str], dead: str) -> None:
    members = frozenset(eligible | {dead})
    before = owners_of(place([spec(VIPS)], {"apex": members}, {"apex": members}, {}, {}))
    survivors = members - {dead}
    if not survivors:
        return
    after = owners_of(place([spec(VIPS)], {"apex": survivors}, {"apex": survivors}, {}, before))
    moved = {vip for vip in VIPS if before[vip] != after[vip]}
    assert moved == {vip for vip in VIPS if before[vip] == dead}


def test_a_member_restarting_in_place_keeps_its_vips_and_gains_none() -> None:
    """Seed 4422: a drain during a restart in place gave a VIP to the restarting member just
    before its process exited; nobody could then withdraw it or confirm the handover."""
    members = frozenset(["lb1", "lb2", "lb3"])
    service = spec(["v1", "v2", "v3"], {"v1": "lb1", "v2": "lb2", "v3": "lb1"}, rebalance=True)
    current = {"v1": "lb1", "v2": "lb2", "v3": "lb3"}  # lb3 is being drained: v3 must move
    eligible = {"apex": members - {"lb3"}}
    owners = owners_of(place([service], eligible, eligible, {}, current, frozenset(["lb1"])))
    assert owners == {"v1": "lb1", "v2": "lb2", "v3": "lb2"}  # not to lb1, its preferred
    # without the restart, v3 goes back to its preferred owner
    owners = owners_of(place([service], eligible, eligible, {}, current))
    assert owners["v3"] == "lb1"


def test_a_member_restarting_in_place_keeps_its_vips_against_preempt_and_pins() -> None:
    """Seed 4433: maintenance ended during a restart in place and preempt moved a VIP off
    the exiting member: its ExaBGP kept the route beside the new owner's."""
    members = frozenset(["lb1", "lb2", "lb3"])
    service = spec(["v1", "v2"], {"v1": "lb1", "v2": "lb2"}, preempt=True)
    current = {"v1": "lb3", "v2": "lb3"}
    args = ([service], {"apex": members}, {"apex": members})
    assert owners_of(place(*args, {}, current)) == {"v1": "lb1", "v2": "lb2"}
    kept = place(*args, {"v2": "lb1"}, current, frozenset(["lb3"]))
    assert owners_of(kept) == {"v1": "lb3", "v2": "lb3"}
    assert {a.reason for a in kept.values()} == {"sticky"}
    # Seed 6555: its preferred VIP pinned elsewhere during the restart stays too
    service = spec(["v1"], {"v1": "lb3"})
    kept = place(
        [service],
        {"apex": members},
        {"apex": members},
        {"v1": "lb2"},
        {"v1": "lb3"},
        frozenset(["lb3"]),
    )
    assert owners_of(kept) == {"v1": "lb3"}
