"""Rolling changes (pure): per-member layouts, the group's command format, agreed timings.

A VIP is placed only on members whose own config has it; the group's layout is the merge of
the members' own, whoever leads; the group speaks the lowest command format its members
report; a member's expiry and its own fence use the same (its own, replicated) timings.
"""

from __future__ import annotations

from dataclasses import replace

import msgpack
import pytest

from raftvip.config import Config
from raftvip.core.decide import agreed, fence_time
from raftvip.core.group import GroupObservation, RaftInfo
from raftvip.core.leader import (
    LeaderBook,
    leader_tick,
    member_timings,
    own_layout,
    service_specs,
    timings_of,
)
from raftvip.core.loop import Tick, start, step
from raftvip.core.placement import ServiceSpec
from raftvip.core.replica import apply_entry
from raftvip.core.state import (
    WIRE_VERSION,
    ClusterState,
    Command,
    CommandError,
    Configure,
    Expire,
    MemberLayout,
    Report,
    SetFormat,
    SetLayout,
    SetPin,
    apply,
    decode_command,
    encode_command,
    merge_layouts,
    state_from_wire,
    state_to_wire,
)
from raftvip.core.status import build_status, config_drift, render_status
from raftvip.testing.config import make_config, service

NAMES = ("lb1", "lb2", "lb3")
OLD = ("10.0.0.1", "10.0.0.2", "10.0.0.3")


def cfg_for(me: str, vips: tuple[str, ...] = OLD, **kwargs: object) -> Config:
    return make_config(me, services=[service(vips=vips, **kwargs)])  # type: ignore[arg-type]


def layout_cmd(cfg: Config, ts: float = 50.0, summary: str = "") -> SetLayout:
    digest, specs, timings = own_layout(cfg)
    return SetLayout(ts, cfg.me, digest, specs, timings, summary)


def run(state: ClusterState, *cmds: Command) -> ClusterState:
    for cmd in cmds:
        # every command as the members apply it: encoded, decoded, refused or applied
        state, _book, _records = apply_entry(
            state, LeaderBook(started_at=0.0), encode_command(cmd), 1, 0.0
        )
    return state


def healthy(state: ClusterState, ts: float, seq: int, wire: int = WIRE_VERSION) -> ClusterState:
    for name in NAMES:
        state = run(state, Report(ts, name, 1, seq, {"apex": True}, wire))
    return state


def format2_group() -> ClusterState:
    """Three members of this build, healthy for longer than the preempt delay, format 2."""
    state = run(
        ClusterState(), Configure(0.0, service_specs(cfg_for("lb1")), cfg_for("lb1").members)
    )
    state = healthy(state, 1.0, 1)
    state = healthy(state, 10.0, 2)
    state = run(state, SetFormat(10.0, 2))
    assert state.wire == 2
    return state


def lead(
    state: ClusterState,
    cfg: Config,
    now: float,
    book: LeaderBook | None = None,
    links: dict[str, bool] | None = None,
) -> tuple[LeaderBook, list[Command]]:
    """One tick of `cfg.me`'s leader duties at `now` (its wall clock reads the same)."""
    book, effects = leader_tick(
        book or LeaderBook(started_at=0.0),
        cfg,
        service_specs(cfg),
        state,
        is_leader=True,
        term=2,
        links=links or {},
        now=now,
        wall=now,
    )
    return book, list(effects.proposals)


def owners(state: ClusterState) -> dict[str, str]:
    return {vip: a.owner for vip, a in state.owners.items()}


# --- the command format -----------------------------------------------------------------


def test_the_group_moves_to_format_2_only_once_every_member_reported_it() -> None:
    cfg = cfg_for("lb1")
    state = run(ClusterState(), Configure(0.0, service_specs(cfg), cfg.members))
    for name in ("lb1", "lb2"):
        state = run(state, Report(1.0, name, 1, 1, {"apex": True}, 2))
    state = run(state, Report(1.0, "lb3", 1, 1, {"apex": True}))  # an older build: no "wire"
    assert run(state, SetFormat(2.0, 2)).wire == 1  # refused: lb3 speaks only format 1
    book, proposals = lead(state, cfg, 5.0)
    assert not [c for c in proposals if isinstance(c, SetFormat)]
    state = run(state, Report(3.0, "lb3", 2, 1, {"apex": True}, 2))  # lb3 upgraded
    _, proposals = lead(state, cfg, 7.0, book)
    (raise_it,) = [c for c in proposals if isinstance(c, SetFormat)]
    assert raise_it.version == 2
    before = owners(state)
    state = run(state, raise_it)
    assert state.wire == 2 and owners(state) == before  # nothing moves
    # Every member's layout starts as the one the group used: the leader's.
    assert {n: lay.services for n, lay in state.layouts.items()} == {
        n: state.services for n in NAMES
    }


def test_a_synthetic_newer_member_keeps_the_group_at_the_lowest_format() -> None:
    newer = WIRE_VERSION + 1
    state = run(format2_group(), SetFormat(11.0, WIRE_VERSION))
    assert state.wire == WIRE_VERSION
    state = run(state, Report(20.0, "lb3", 2, 1, {"apex": True}, newer))  # lb3 speaks newer
    assert state.members["lb3"].wire == newer
    cfg = cfg_for("lb1")
    _, proposals = lead(state, cfg, 30.0)
    assert not [c for c in proposals if isinstance(c, SetFormat)]  # the others speak less
    # A command of the newer format proposed anyway (a buggy newer member) is refused by this
    # build the same way on every member, logged, and the group goes on.
    future = msgpack.packb({"v": newer, "ts": 31.0, "op": "teleport", "vip": "10.0.0.1"})
    with pytest.raises(CommandError, match=f"format {newer} is newer than this build"):
        decode_command(future)
    after, _book, records = apply_entry(state, LeaderBook(started_at=0.0), future, 99, 31.0)
    assert after is state
    assert [r.message for r in records] == [
        f"raft ignored a malformed command: command format {newer} is newer than this build's"
        f" ({WIRE_VERSION}): a member of a newer raftvip proposed it before the whole group"
        " spoke it"
    ]
    # A SetFormat to it is refused by this build, which cannot speak it.
    with pytest.raises(CommandError):
        decode_command(encode_command(SetFormat(32.0, newer)))


def test_a_format_2_command_in_a_format_1_group_is_refused_identically() -> None:
    """A member of this build in a group with an older one: a SetLayout (proposed by a
    member that raced the format) changes nothing here, as it changes nothing on the older
    member, which cannot decode it."""
    cfg = cfg_for("lb1", vips=(*OLD, "10.0.0.9"))
    state = run(ClusterState(), Configure(0.0, service_specs(cfg_for("lb1")), cfg.members))
    cmd = layout_cmd(cfg)
    after, _book, records = apply_entry(
        state, LeaderBook(started_at=0.0), encode_command(cmd), 7, 1.0
    )
    assert after is state
    assert records[0].message == (
        "raft refused command=SetLayout at index 7: needs command format 2, the group speaks 1"
    )
    assert apply(state, cmd) is state


def test_reports_carry_the_format_and_older_reports_decode_as_format_1() -> None:
    report = Report(1.0, "lb1", 1, 1, {"apex": True}, WIRE_VERSION)
    assert decode_command(encode_command(report)) == report
    old = msgpack.packb(
        {"v": 1, "ts": 1.0, "op": "report", "member": "lb1", "inc": 1, "seq": 1, "health": {}}
    )
    assert decode_command(old) == Report(1.0, "lb1", 1, 1, {}, 1)
    # Every format-1 command still says v=1: an older build decodes it.
    assert msgpack.unpackb(encode_command(report))["v"] == 1
    assert msgpack.unpackb(encode_command(layout_cmd(cfg_for("lb1"))))["v"] == 2


# --- per-member layouts -----------------------------------------------------------------


def test_a_new_vip_is_placed_only_on_the_members_whose_config_has_it() -> None:
    state = format2_group()
    before = owners(state)
    new = cfg_for("lb2", vips=(*OLD, "10.0.0.9"))
    state = run(state, layout_cmd(new))
    assert state.owner_of("10.0.0.9") == "lb2"  # announced as soon as one member has it
    assert {v: o for v, o in owners(state).items() if v in OLD} == before  # untouched
    # lb2 fails: the VIP has nowhere else to go, the others keep theirs.
    state = run(state, Report(20.0, "lb2", 1, 3, {"apex": False}, 2))
    assert state.owner_of("10.0.0.9") is None
    state = run(state, layout_cmd(cfg_for("lb3", vips=(*OLD, "10.0.0.9")), ts=21.0))
    assert state.owner_of("10.0.0.9") == "lb3"


def test_a_removed_vip_stays_until_the_last_member_drops_it_and_its_pin_goes_with_it() -> None:
    state = format2_group()
    owner = state.owner_of("10.0.0.3")
    assert owner is not None
    state = run(state, SetPin(11.0, "10.0.0.3", owner))
    fewer = ("10.0.0.1", "10.0.0.2")
    others = [n for n in NAMES if n != owner]
    for name in others:
        state = run(state, layout_cmd(cfg_for(name, vips=fewer)))
        assert state.owner_of("10.0.0.3") == owner  # still in the owner's config
    state = run(state, layout_cmd(cfg_for(owner, vips=fewer)))
    assert state.owner_of("10.0.0.3") is None and "10.0.0.3" not in state.pins
    assert all("10.0.0.3" not in s.vips for s in state.services)


def test_a_vip_added_to_a_loaded_member_moves_no_other_vip() -> None:
    """Rebalancing would give one of lb2's VIPs to a less loaded member once lb2 also owns
    the new ones: a config change moves only what it changes (seed 2868 of the simulator).
    The VIPs the roll-out adds are spread as members that have them reload."""
    state = format2_group()
    state = run(state, *(layout_cmd(cfg_for(n)) for n in NAMES))
    before = owners(state)
    more = ("10.0.0.7", "10.0.0.8", "10.0.0.9")  # no preferred owners
    new = (*OLD, *more)
    state = run(state, layout_cmd(cfg_for("lb2", vips=new)))
    assert {v: owners(state)[v] for v in OLD} == before  # lb2 has 4 VIPs, the others 1
    assert {owners(state)[v] for v in more} == {"lb2"}
    for name in ("lb1", "lb3"):
        state = run(state, layout_cmd(cfg_for(name, vips=new), ts=30.0))
        assert {v: owners(state)[v] for v in OLD} == before
    # the added VIPs were spread as the others reloaded: 2 VIPs each
    assert sorted(owners(state).values()) == ["lb1", "lb1", "lb2", "lb2", "lb3", "lb3"]


def test_a_vip_dropped_by_its_owner_moves_to_a_member_that_still_has_it() -> None:
    state = format2_group()
    owner = state.owner_of("10.0.0.1")
    assert owner is not None
    state = run(state, layout_cmd(cfg_for(owner, vips=("10.0.0.2", "10.0.0.3"))))
    new_owner = state.owner_of("10.0.0.1")
    assert new_owner is not None and new_owner != owner
    # it was handed over: the old owner keeps announcing until the new one confirms
    assert state.handovers.get("10.0.0.1") == owner


def test_a_roll_out_over_every_member_moves_no_vip_present_before_and_after() -> None:
    """Add a VIP, remove one, change a MED (not in the layout): member by member, whoever
    leads, the VIPs kept by the change never change owner."""
    state = format2_group()
    before = owners(state)
    new_vips = ("10.0.0.1", "10.0.0.2", "10.0.0.9")  # 10.0.0.3 removed, 10.0.0.9 added
    for ts, name in enumerate(("lb3", "lb1", "lb2"), start=20):
        state = run(state, layout_cmd(cfg_for(name, vips=new_vips), ts=float(ts)))
        for vip in ("10.0.0.1", "10.0.0.2"):
            assert state.owner_of(vip) == before[vip]
        assert state.owner_of("10.0.0.9") is not None
    assert state.owner_of("10.0.0.3") is None
    assert config_drift(cfg_for("lb1", vips=new_vips), state).drifting is False


def test_the_groups_layout_does_not_depend_on_who_leads() -> None:
    state = format2_group()
    state = run(state, layout_cmd(cfg_for("lb1", vips=(*OLD, "10.0.0.9"))))
    for leader in NAMES:
        cfg = cfg_for(leader)  # lb2 and lb3 still run the old config
        _, proposals = lead(state, cfg, 40.0)
        assert not [c for c in proposals if isinstance(c, Configure)]
    # An older leader's Configure (format 1) changes nothing of the services at format 2.
    assert run(state, Configure(41.0, service_specs(cfg_for("lb3")), {})).services == (
        state.services
    )


def test_members_that_disagree_on_a_setting_keep_the_one_that_moves_nothing() -> None:
    def spec(**kw: object) -> ServiceSpec:
        base = ServiceSpec("apex", OLD, {"10.0.0.1": "lb1"}, True, 5.0, True)
        return replace(base, **kw)  # type: ignore[arg-type]

    merged = merge_layouts(
        {
            "lb1": MemberLayout("a", (spec(),)),
            "lb2": MemberLayout(
                "b", (spec(preferred={"10.0.0.1": "lb2"}, preempt=False, preempt_delay=9.0),)
            ),
            "lb3": MemberLayout("c", (spec(vips=(*OLD, "10.0.0.9")),)),
        }
    )
    (apex,) = merged
    assert apex.vips == (*OLD, "10.0.0.9")
    assert apex.preferred == {}  # lb1 and lb2 disagree on 10.0.0.1: no preference
    assert apex.preempt is False and apex.preempt_delay == 9.0 and apex.rebalance is True


def test_merged_vips_keep_first_appearance_order_and_a_preference_needs_every_holder() -> None:
    def spec(vips: tuple[str, ...], preferred: dict[str, str]) -> ServiceSpec:
        return ServiceSpec("apex", vips, preferred, True, 5.0, True)

    merged = merge_layouts(
        {
            # sorted by member name: lb1's order first, then what lb2 and lb3 add
            "lb2": MemberLayout("b", (spec(("10.0.0.3", "10.0.0.1", "10.0.0.4"), {}),)),
            "lb1": MemberLayout("a", (spec(("10.0.0.2", "10.0.0.1"), {"10.0.0.2": "lb1"}),)),
            "lb3": MemberLayout("c", (spec(("10.0.0.4",), {"10.0.0.4": "lb3"}),)),
        }
    )
    (apex,) = merged
    assert apex.vips == ("10.0.0.2", "10.0.0.1", "10.0.0.3", "10.0.0.4")
    # 10.0.0.2: only lb1 has it and names lb1; 10.0.0.4: lb2 has it without a preference
    assert apex.preferred == {"10.0.0.2": "lb1"}


def test_layouts_survive_a_snapshot() -> None:
    state = format2_group()
    state = run(state, layout_cmd(cfg_for("lb2", vips=(*OLD, "10.0.0.9")), summary="+1 VIP"))
    body = msgpack.unpackb(msgpack.packb(state_to_wire(state)), strict_map_key=False)
    again = state_from_wire(body)
    assert again == state
    assert body["v"] == 1  # optional keys only: an older build still reads it


# --- timings ------------------------------------------------------------------------------


def test_the_leader_expires_a_member_with_that_members_own_lease() -> None:
    state = format2_group()
    slow = make_config("lb2", services=[service(vips=OLD)], lease=3.0, report_interval=1.0)
    state = run(state, layout_cmd(slow))
    leader = cfg_for("lb1")  # lease 1.5
    assert member_timings(leader, state, "lb2").lease == 3.0
    book = LeaderBook(started_at=0.0)
    expired: list[tuple[float, str]] = []
    for tenth in range(0, 40):
        now = 100.0 + tenth / 10
        book, proposals = lead(state, leader, now, book, {"lb2": True, "lb3": True})
        expired += [(now, c.member) for c in proposals if isinstance(c, Expire)]
    first = {m: t for t, m in reversed(expired)}
    assert first["lb3"] == pytest.approx(101.6)  # lb3's lease: the leader's 1.5 s
    assert first["lb2"] == pytest.approx(103.1)  # lb2's own 3 s, not the leader's 1.5 s


def test_a_member_fences_with_the_shorter_of_its_new_and_its_replicated_lease() -> None:
    state = format2_group()
    state = run(state, layout_cmd(cfg_for("lb2")))  # lb2's lease 1.5 is replicated
    longer = make_config("lb2", services=[service(vips=OLD)], lease=3.0, report_interval=1.0)
    assert fence_time(agreed(longer, state)) == fence_time(cfg_for("lb2"))  # reload in flight
    state = run(state, layout_cmd(longer))
    assert fence_time(agreed(longer, state)) == pytest.approx(1.0 - 0.15)  # connection_timeout
    plain = cfg_for("lb1")
    assert agreed(plain, ClusterState()) is plain  # nothing replicated: its own settings


def test_a_hold_leader_waits_for_a_withdraw_members_fence() -> None:
    state = format2_group()
    strict = make_config("lb2", services=[service(vips=OLD)], policy="withdraw")
    state = run(state, layout_cmd(strict))
    assert member_timings(cfg_for("lb1"), state, "lb2") == timings_of(strict)
    book = LeaderBook(started_at=0.0, was_leader=True, leader_since=50.0)
    book = replace(book, report_applied={"lb2": 99.9}, lease_seen={"lb2": 99.9, "lb3": 99.9})
    # lb2's link dropped before this member led: under lb2's "withdraw" the leader waits for
    # connection_timeout after lb2's last report, although its own policy is "hold".
    book = replace(book, was_connected=frozenset({"lb2", "lb3"}), down_since={"lb2": 40.0})
    cfg = cfg_for("lb1")
    _, proposals = lead(state, cfg, 100.5, book, {"lb2": False, "lb3": True})
    assert not [c for c in proposals if isinstance(c, Expire) and c.member == "lb2"]


# --- the loop proposes its layout; status shows drift --------------------------------------


def observed(state: ClusterState) -> GroupObservation:
    info = RaftInfo("lb1", True, 2, 10, 10, True, True, frozenset({"lb2", "lb3"}))
    return GroupObservation(state, info)


def test_the_loop_proposes_its_own_layout_once_the_group_speaks_format_2() -> None:
    cfg = cfg_for("lb2", vips=(*OLD, "10.0.0.9"))
    loop, _ = start(cfg, incarnation=1)
    state = format2_group()
    loop, effects = step(loop, Tick(observed(state), wall=60.0), 1.0)
    layouts = [p.cmd for p in effects.proposals if isinstance(p.cmd, SetLayout)]
    assert [c.digest for c in layouts] == [own_layout(cfg)[0]]
    kinds = [type(p.cmd).__name__ for p in effects.proposals]
    assert kinds.index("SetLayout") < kinds.index("Report")  # the layout first
    loop, again = step(loop, Tick(observed(state), wall=60.5), 1.5)
    assert not [p for p in again.proposals if isinstance(p.cmd, SetLayout)]  # retried later
    state = run(state, layouts[0])
    loop, done = step(loop, Tick(observed(state), wall=62.0), 3.0)
    assert not [p for p in done.proposals if isinstance(p.cmd, SetLayout)]
    reports = [p.cmd for p in done.proposals if isinstance(p.cmd, Report)]
    assert all(r.wire == WIRE_VERSION for r in reports)


def test_status_shows_drift_while_a_roll_out_is_half_done() -> None:
    state = format2_group()
    new = cfg_for("lb1", vips=(*OLD, "10.0.0.9"))
    state = run(state, layout_cmd(new))
    info = observed(state).info
    doc = build_status(cfg_for("lb2"), state, info, {}, {"apex": "up"}, 0.0, True, 100.0)
    assert doc["config_drift"] is True
    digests = {n: m["config_digest"] for n, m in doc["members"].items()}
    assert digests["lb1"] == own_layout(new)[0] and digests["lb2"] == digests["lb3"]
    assert doc["members"]["lb1"]["config_differs"] is True
    assert doc["vips"]["10.0.0.9"]["known_to"] == ["lb1"]
    assert doc["vips"]["10.0.0.9"]["reason"] == "not_in_config"  # lb2 lists it all the same
    text = render_status(doc)
    assert "CONFIG DRIFT" in text and "(lb1 differs from the others)" in text
    assert "[only in the config of lb1]" in text
    for name in ("lb2", "lb3"):
        state = run(state, layout_cmd(cfg_for(name, vips=(*OLD, "10.0.0.9"))))
    doc = build_status(new, state, info, {}, {"apex": "up"}, 0.0, True, 100.0)
    assert doc["config_drift"] is False and "CONFIG DRIFT" not in render_status(doc)
    assert doc["vips"]["10.0.0.9"]["known_to"] is None


def test_a_reload_not_yet_committed_is_drift_too() -> None:
    state = format2_group()
    for name in NAMES:
        state = run(state, layout_cmd(cfg_for(name)))
    assert config_drift(cfg_for("lb1"), state).drifting is False
    assert config_drift(cfg_for("lb1", vips=OLD[:2]), state).drifting is True
