"""What a member announces and why; the ExaBGP lines that get it there."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftvip.config import AnnounceConfig, ClusterConfig, Config, ServiceConfig
from raftvip.core.decide import (
    GroupView,
    decide,
    desired_routes,
    fence_time,
    inputs_for,
    plan,
    resync_lines,
)
from raftvip.core.exabgp import GRACEFUL_SHUTDOWN, Route, route_for
from raftvip.core.placement import Assignment, ServiceSpec
from raftvip.core.state import ClusterState, MemberState

ANNOUNCE = AnnounceConfig(med=100, communities=("65001:100",))
SERVICE = ServiceConfig(name="apex", vips=("10.0.0.1", "10.0.0.2", "10.0.0.3"), announce=ANNOUNCE)


def config(policy: str = "hold") -> Config:
    return Config(
        path="x.toml",
        cluster=ClusterConfig(
            name="apex",
            member="lb1",
            secret_file=None,
            state_dir="/tmp/x",
            control_socket="/tmp/x.sock",
            lease=1.5,
            on_quorum_loss=policy,  # type: ignore[arg-type]
        ),
        members={"lb1": "127.0.0.11:7801", "lb2": "127.0.0.12:7801"},
        services=(SERVICE,),
    )


def state(**kw: object) -> ClusterState:
    base = ClusterState(
        services=(ServiceSpec("apex", SERVICE.vips, {}),),
        addresses={"lb1": "a", "lb2": "b"},
        members={
            "lb1": MemberState("lb1", alive=True, healthy={"apex": True}),
            "lb2": MemberState("lb2", alive=True, healthy={"apex": True}),
        },
        owners={
            "10.0.0.1": Assignment("lb1", "preferred"),
            "10.0.0.2": Assignment("lb2", "preferred"),
        },
    )
    return replace(base, **kw)  # type: ignore[arg-type]


UP = {"apex": "up"}
OK = GroupView(ready=True, reachable=True, quorum_lost_for=0.0)


def reasons(
    cfg: Config,
    st_: ClusterState,
    health: dict[str, str],
    view: GroupView,
    announced: set[str] | None = None,
) -> dict[str, tuple[bool, str]]:
    return {
        vip: (d.announce, d.reason)
        for vip, d in decide(cfg, inputs_for(cfg, st_, health, view, announced or set())).items()
    }


def test_owner_not_owner_unowned() -> None:
    assert reasons(config(), state(), UP, OK) == {
        "10.0.0.1": (True, "owner"),
        "10.0.0.2": (False, "not_owner"),
        "10.0.0.3": (False, "unowned"),
    }


@pytest.mark.parametrize(
    ("health", "st_kw", "view", "reason"),
    [
        ({"apex": "down"}, {}, OK, "unhealthy"),
        ({"apex": "disabled"}, {}, OK, "disabled"),
        (UP, {"maintenance": frozenset({"apex"})}, OK, "maintenance"),
        (
            UP,
            {
                "members": {
                    "lb1": MemberState("lb1", alive=True, healthy={"apex": True}, drained=True)
                }
            },
            OK,
            "drained",
        ),
        (UP, {}, GroupView(ready=False, reachable=True, quorum_lost_for=0.0), "starting"),
    ],
)
def test_local_reasons_withdraw(
    health: dict[str, str], st_kw: dict[str, object], view: GroupView, reason: str
) -> None:
    assert reasons(config(), state(**st_kw), health, view)["10.0.0.1"] == (False, reason)


def test_quorum_loss_hold_keeps_only_what_was_announced() -> None:
    lost = GroupView(ready=True, reachable=False, quorum_lost_for=60.0)
    got = reasons(config("hold"), state(), UP, lost, announced={"10.0.0.1", "10.0.0.3"})
    assert got["10.0.0.1"] == (True, "no_quorum_hold")
    assert got["10.0.0.3"] == (True, "no_quorum_hold")
    assert got["10.0.0.2"] == (False, "no_quorum")
    # Local health still wins while the group is unreachable.
    assert reasons(config("hold"), state(), {"apex": "down"}, lost, {"10.0.0.1"})["10.0.0.1"] == (
        False,
        "unhealthy",
    )


def test_quorum_loss_withdraw_once_the_own_lease_may_be_gone() -> None:
    # fence_time = min(lease 1.5, connection_timeout 1.0) - 0.15 = 0.85 s.
    assert fence_time(config("withdraw")) == pytest.approx(0.85)
    early = GroupView(ready=True, reachable=False, quorum_lost_for=0.5, lease_age=0.84)
    late = GroupView(ready=True, reachable=False, quorum_lost_for=0.5, lease_age=0.86)
    assert reasons(config("withdraw"), state(), UP, early, {"10.0.0.1"})["10.0.0.1"] == (
        True,
        "no_quorum_hold",
    )
    assert reasons(config("withdraw"), state(), UP, late, {"10.0.0.1"})["10.0.0.1"] == (
        False,
        "fenced",
    )
    # pysyncobj notices a silently dropped link only after connection_timeout: the stale
    # lease alone withdraws, even while the member still believes it has a quorum.
    stale = GroupView(ready=True, reachable=True, quorum_lost_for=0.0, lease_age=0.9)
    assert reasons(config("withdraw"), state(), UP, stale, {"10.0.0.1"})["10.0.0.1"] == (
        False,
        "fenced",
    )
    # `hold` never withdraws for that.
    assert reasons(config("hold"), state(), UP, stale)["10.0.0.1"] == (True, "owner")


def test_desired_routes_and_plan_lines() -> None:
    decisions = decide(config(), inputs_for(config(), state(), UP, OK, set()))
    desired = desired_routes(config(), decisions)
    assert desired == {"10.0.0.1": route_for("10.0.0.1", ANNOUNCE)}
    stale = {"10.0.0.2": route_for("10.0.0.2", ANNOUNCE)}
    assert plan(desired, stale) == [
        "withdraw route 10.0.0.2/32 next-hop self",
        "announce route 10.0.0.1/32 next-hop self med 100 community [ 65001:100 ]",
    ]
    assert plan(desired, desired) == []


def test_a_handover_path_carries_graceful_shutdown_and_replaces_the_owner_path() -> None:
    """RFC 8326: while lb1 keeps 10.0.0.1 only until lb2 confirms, its path also carries
    65535:0; moving from the owner's path to it is a re-announce (implicit withdraw)."""
    cfg = config()
    owned = desired_routes(cfg, decide(cfg, inputs_for(cfg, state(), UP, OK, set())))
    moved = state(
        owners={"10.0.0.1": Assignment("lb2", "drain"), "10.0.0.2": Assignment("lb2", "x")},
        handovers={"10.0.0.1": "lb1"},
    )
    decisions = decide(cfg, inputs_for(cfg, moved, UP, OK, {"10.0.0.1"}))
    assert decisions["10.0.0.1"].reason == "handover"
    handing = desired_routes(cfg, decisions)
    assert plan(handing, owned) == [
        "announce route 10.0.0.1/32 next-hop self med 100 community [ 65001:100 65535:0 ]"
    ]
    # Confirmed: the handover ends with the withdraw.
    done = state(owners=moved.owners)
    assert plan(
        desired_routes(cfg, decide(cfg, inputs_for(cfg, done, UP, OK, {"10.0.0.1"}))), handing
    ) == ["withdraw route 10.0.0.1/32 next-hop self"]
    # The owner's path does not carry it.
    assert GRACEFUL_SHUTDOWN not in owned["10.0.0.1"].communities


@pytest.mark.parametrize(
    ("announce", "communities"),
    [
        (ANNOUNCE, ("65001:100", "65535:0")),
        (AnnounceConfig(), ("65535:0",)),
        (AnnounceConfig(communities=("65535:0", "65001:1")), ("65535:0", "65001:1")),  # no twice
        (replace(ANNOUNCE, graceful_shutdown_community=False), ("65001:100",)),
    ],
)
def test_graceful_shutdown_community_of_a_handover_route(
    announce: AnnounceConfig, communities: tuple[str, ...]
) -> None:
    assert route_for("10.0.0.1", announce, handover=True).communities == communities
    assert route_for("10.0.0.1", announce).communities == announce.communities


def test_resync_withdraws_every_managed_vip() -> None:
    assert resync_lines(config()) == [
        f"withdraw route 10.0.0.{i}/32 next-hop self" for i in (1, 2, 3)
    ]


routes = st.dictionaries(
    st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3", "2001:db8::1"]),
    st.builds(lambda med: med, st.one_of(st.none(), st.integers(0, 5))),
)


@settings(max_examples=300, deadline=None)
@given(desired=routes, announced=routes)
def test_property_plan_turns_announced_into_desired(
    desired: dict[str, int | None], announced: dict[str, int | None]
) -> None:
    want = {vip: Route(vip, med=med) for vip, med in desired.items()}
    have = {vip: Route(vip, med=med) for vip, med in announced.items()}
    current = dict(have)
    for line in plan(want, have):
        words = line.split()
        vip = words[2].split("/")[0]
        if words[0] == "withdraw":
            current.pop(vip)
        else:
            current[vip] = want[vip]
    assert current == want
    # Nothing is sent twice, nothing is sent for a route already right.
    assert len(plan(want, have)) == len(
        {*want, *have} - {v for v in want if have.get(v) == want[v]}
    )
