"""Replicated state transitions: total, idempotent, deterministic."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftvip.core import operator
from raftvip.core.placement import ServiceSpec
from raftvip.core.state import (
    AddMember,
    ClusterState,
    Command,
    CommandError,
    Configure,
    Expire,
    Form,
    MemberState,
    RemoveMember,
    Report,
    SetDrain,
    SetMaintenance,
    SetPin,
    SetRestarting,
    apply,
    decode_command,
    encode_command,
    state_from_wire,
    state_to_wire,
)

SPEC = ServiceSpec(
    name="apex",
    vips=("10.20.255.1", "10.20.255.2", "10.20.255.3"),
    preferred={"10.20.255.1": "lb1", "10.20.255.2": "lb2", "10.20.255.3": "lb3"},
    preempt=True,
    preempt_delay=5.0,
)
ADDRS = {"lb1": "127.0.0.11:7801", "lb2": "127.0.0.12:7801", "lb3": "127.0.0.13:7801"}


def configured() -> ClusterState:
    return apply(ClusterState(), Configure(0.0, (SPEC,), ADDRS))


def report(member: str, seq: int, ts: float, ok: bool = True, inc: int = 1) -> Report:
    return Report(ts, member, inc, seq, {"apex": ok})


def group(*members: str, ts: float = 100.0) -> ClusterState:
    """Members that joined at `ts` and have been healthy for the preempt delay."""
    state = configured()
    for m in members:
        state = apply(state, report(m, 1, ts))
    for m in members:
        state = apply(state, report(m, 2, ts + SPEC.preempt_delay))
    return state


def owners(state: ClusterState) -> dict[str, str]:
    return {vip: a.owner for vip, a in state.owners.items()}


def test_reports_before_configure_are_ignored() -> None:
    state = ClusterState()
    assert apply(state, report("lb1", 1, 1.0)) is state


def test_first_reporter_stands_in_until_preferred_owners_are_ready() -> None:
    state = configured()
    for m in ("lb1", "lb2", "lb3"):
        state = apply(state, report(m, 1, 100.0))
    # lb1 reported first and took every VIP; lb2 and lb3 are healthy but not for 5 s yet.
    assert set(owners(state).values()) == {"lb1"}
    for m in ("lb1", "lb2", "lb3"):
        state = apply(state, report(m, 2, 105.0))
    assert owners(state) == {"10.20.255.1": "lb1", "10.20.255.2": "lb2", "10.20.255.3": "lb3"}


def test_stale_and_duplicate_reports_are_ignored() -> None:
    state = group("lb1")
    newer = apply(state, report("lb1", 5, 106.0))
    assert apply(newer, report("lb1", 5, 102.0)) is newer
    assert apply(newer, report("lb1", 4, 103.0, ok=False)) is newer


def test_expire_moves_vips_and_is_ignored_after_renewal() -> None:
    state = group("lb1", "lb2", "lb3")
    renewed = apply(state, report("lb3", 3, 106.0))
    assert apply(renewed, Expire(106.5, "lb3", 1, 2, "lease")) is renewed
    expired = apply(renewed, Expire(106.5, "lb3", 1, 3, "lease"))
    assert not expired.members["lb3"].alive
    assert owners(expired)["10.20.255.3"] in {"lb1", "lb2"}
    assert owners(expired)["10.20.255.1"] == "lb1"
    assert any(e.kind == "alive" and e.subject == "lb3" for e in expired.events)


def test_returning_preferred_owner_preempts_after_delay_on_its_own_clock() -> None:
    state = group("lb1", "lb2", "lb3")
    state = apply(state, Expire(106.0, "lb2", 1, 2, "disconnect"))
    assert owners(state)["10.20.255.2"] != "lb2"
    # lb2 restarts (new incarnation); its clock is 1000 s off the others': no matter.
    state = apply(state, report("lb2", 1, 5000.0, inc=2))
    assert owners(state)["10.20.255.2"] != "lb2"
    state = apply(state, report("lb2", 2, 5004.0, inc=2))
    assert owners(state)["10.20.255.2"] != "lb2"
    state = apply(state, report("lb2", 3, 5005.0, inc=2))
    assert owners(state)["10.20.255.2"] == "lb2"
    assert state.owners["10.20.255.2"].reason == "preempt"


def test_unhealthy_report_moves_vip() -> None:
    state = group("lb1", "lb2", "lb3")
    state = apply(state, report("lb1", 3, 106.0, ok=False))
    assert owners(state)["10.20.255.1"] in {"lb2", "lb3"}


def test_pure_renewal_keeps_version() -> None:
    state = group("lb1", "lb2", "lb3")
    renewed = apply(state, report("lb1", 3, 105.5))
    assert renewed.version == state.version
    assert renewed.members["lb1"].seq == 3


def test_maintenance_drain_pin() -> None:
    state = group("lb1", "lb2", "lb3")
    m = apply(state, SetMaintenance(1.0, "apex", True))
    assert m.maintenance == {"apex"}
    assert apply(m, SetMaintenance(1.0, "apex", True)) is m
    assert apply(state, SetMaintenance(1.0, "nope", True)) is state
    d = apply(state, SetDrain(1.0, "lb1", True))
    assert owners(d)["10.20.255.1"] != "lb1"
    assert apply(d, report("lb1", 3, 106.0)).members["lb1"].drained
    p = apply(state, SetPin(1.0, "10.20.255.1", "lb3"))
    assert owners(p)["10.20.255.1"] == "lb3"
    assert apply(state, SetPin(1.0, "10.9.9.9", "lb3")) is state
    assert apply(state, SetPin(1.0, "10.20.255.1", "lb9")) is state
    assert owners(apply(p, SetPin(2.0, "10.20.255.1", None)))["10.20.255.1"] == "lb1"


COMMANDS: list[Command] = [
    Configure(1.0, (SPEC,), ADDRS),
    Configure(1.0, (SPEC,), ADDRS, forming=True),
    Form(1.5),
    SetRestarting(2.0, "lb1", 7),
    report("lb1", 3, 2.5),
    Expire(3.0, "lb2", 7, 9, "lease"),
    SetMaintenance(4.0, "apex", True),
    SetDrain(5.0, "lb3", False),
    SetPin(6.0, "10.20.255.1", None),
    SetPin(6.0, "10.20.255.1", "lb2"),
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: type(c).__name__)
def test_encode_decode_roundtrip(cmd: Command) -> None:
    assert decode_command(encode_command(cmd)) == cmd


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xc1", "not msgpack"),
        (msgpack.packb([1, 2]), "not a map"),
        (msgpack.packb({"v": 99, "op": "report"}), "command format 99 is newer than this build"),
        (msgpack.packb({"v": "2", "op": "report"}), "unsupported command version"),
        (msgpack.packb({"v": 1, "ts": 1.0, "op": "nope"}), "unknown op"),
        (
            msgpack.packb({"v": 1, "ts": 1.0, "op": "report", "member": 3, "health": {}}),
            "member: not a string",
        ),
        (msgpack.packb({"v": 1, "ts": True, "op": "drain"}), "ts: not a number"),
    ],
)
def test_decode_rejects_malformed(body: bytes, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        decode_command(body)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_decode_never_raises_anything_but_command_error(payload: bytes) -> None:
    with contextlib.suppress(CommandError):
        decode_command(payload)


members = st.sampled_from(["lb1", "lb2", "lb3", "lb9"])
vips = st.sampled_from(["10.20.255.1", "10.20.255.2", "10.20.255.3", "10.0.0.1"])
times = st.floats(min_value=0, max_value=1e6, allow_nan=False)
ints = st.integers(min_value=0, max_value=20)
commands = st.one_of(
    st.builds(
        Report,
        times,
        members,
        ints,
        ints,
        st.dictionaries(st.sampled_from(["apex", "x"]), st.booleans()),
    ),
    st.builds(Expire, times, members, ints, ints, st.just("lease")),
    st.builds(SetMaintenance, times, st.sampled_from(["apex", "x"]), st.booleans()),
    st.builds(SetDrain, times, members, st.booleans()),
    st.builds(SetPin, times, vips, st.one_of(st.none(), members)),
    st.builds(Form, times),
    st.builds(SetRestarting, times, members, ints),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(commands, max_size=40))
def test_apply_is_total_deterministic_and_snapshots_roundtrip(cmds: list[Command]) -> None:
    a = configured()
    b = configured()
    for cmd in cmds:
        a = apply(a, cmd)
        b = apply(b, decode_command(encode_command(cmd)))
    assert a == b
    for vip, assignment in a.owners.items():
        assert a.eligible(assignment.owner, "apex"), vip
    wire = msgpack.unpackb(msgpack.packb(state_to_wire(a)), raw=False)
    assert state_from_wire(wire) == a


# --- operator outcomes (raftvip/core/operator.py) -----------------------------------------


@pytest.mark.parametrize(
    ("err", "kind"),
    [
        (0, "committed"),
        (1, "not committed"),
        (2, "not committed"),
        (3, "not committed"),
        (4, "not committed"),
        (6, "not committed"),
        (5, "unknown"),  # LEADER_CHANGED: the new leader may commit it all the same
        (7, "unknown"),
        (None, "unknown"),  # no answer in time
        (99, "unknown"),
    ],
)
def test_outcome_of_a_proposal(err: int | None, kind: str) -> None:
    assert operator.outcome_of(err)[0] == kind


def test_the_effect_of_each_operator_command_is_read_from_the_state() -> None:
    state = ClusterState(
        services=(ServiceSpec("apex", ("10.0.0.1",), {}),),
        addresses={"lb1": "a:1", "lb2": "b:1"},
        members={"lb1": MemberState("lb1", alive=True)},
    )
    for cmd in (
        SetMaintenance(1.0, "apex", True),
        SetDrain(1.0, "lb1", True),
        SetDrain(1.0, "lb2", True),  # a member that never reported
        SetPin(1.0, "10.0.0.1", "lb2"),
        RemoveMember(1.0, "lb2"),
        AddMember(1.0, "lb3", "c:1"),
    ):
        assert not operator.effect_visible(cmd, state), cmd
        after = apply(state, cmd)
        assert operator.effect_visible(cmd, after), cmd
        assert operator.effect_visible(cmd, apply(after, cmd)), cmd  # twice: the same
    assert operator.effect_visible(SetMaintenance(1.0, "apex", False), state)
    assert operator.effect_visible(SetPin(1.0, "10.0.0.1", None), state)


# --- formation ------------------------------------------------------------------------------


def forming() -> ClusterState:
    return apply(ClusterState(), Configure(0.0, (SPEC,), ADDRS, forming=True))


def test_a_forming_group_places_nothing_until_form_then_everything_at_once() -> None:
    state = forming()
    assert not state.formed
    state = apply(state, report("lb2", 1, 100.0))
    state = apply(state, report("lb1", 1, 100.1))
    assert state.owners == {}  # the first to report does not get everything
    state = apply(state, report("lb3", 1, 100.2))
    state = apply(state, Form(100.3))
    # Everyone present counts as ready at once: the first placement is the final one.
    assert owners(state) == {"10.20.255.1": "lb1", "10.20.255.2": "lb2", "10.20.255.3": "lb3"}
    assert state.formed
    assert any(e.detail == "group formed" for e in state.events)
    later = apply(state, report("lb1", 2, 100.4))
    assert owners(later) == owners(state)  # and nothing moves afterwards


def test_form_with_a_member_missing_spreads_over_those_present() -> None:
    state = apply(apply(forming(), report("lb1", 1, 100.0)), report("lb2", 1, 100.0))
    state = apply(state, Form(101.0))
    assert owners(state)["10.20.255.1"] == "lb1" and owners(state)["10.20.255.2"] == "lb2"
    assert owners(state)["10.20.255.3"] in ("lb1", "lb2")
    # lb3 comes later: preempt_delay protects against flapping, then make before break.
    state = apply(state, report("lb3", 1, 102.0))
    assert owners(state)["10.20.255.3"] != "lb3"
    state = apply(state, report("lb3", 2, 102.0 + SPEC.preempt_delay))
    assert owners(state)["10.20.255.3"] == "lb3"
    assert state.handovers.get("10.20.255.3") in ("lb1", "lb2")


def test_a_log_written_before_formation_existed_replays_as_it_did() -> None:
    """A Configure without `forming` (every log written before it) leaves the group formed:
    replaying an old journal places exactly as before."""
    old = encode_command(Configure(0.0, (SPEC,), ADDRS))
    assert b"forming" not in old
    state = apply(ClusterState(), decode_command(old))
    assert state.formed
    state = apply(state, report("lb1", 1, 100.0))
    assert set(owners(state).values()) == {"lb1"}
    assert state_from_wire({k: v for k, v in state_to_wire(state).items() if k != "formed"}).formed


def test_only_the_bootstrap_configure_starts_a_formation() -> None:
    state = group("lb1", "lb2", "lb3")
    again = apply(state, Configure(9.0, (SPEC,), ADDRS, forming=True))
    assert again.formed and owners(again) == owners(state)


def test_restarting_is_set_for_the_current_incarnation_and_cleared_by_the_next_report() -> None:
    state = group("lb1", "lb2", "lb3")
    lb2 = state.members["lb2"]
    assert apply(state, SetRestarting(1.0, "lb2", lb2.incarnation + 1)) is state  # not it
    flagged = apply(state, SetRestarting(1.0, "lb2", lb2.incarnation))
    assert flagged.members["lb2"].restarting and owners(flagged) == owners(state)
    assert state_from_wire(state_to_wire(flagged)).members["lb2"].restarting
    back = apply(flagged, report("lb2", 1, 200.0, inc=lb2.incarnation + 1))
    assert not back.members["lb2"].restarting and owners(back) == owners(state)


def test_a_late_report_of_the_restarting_process_keeps_its_flag() -> None:
    """Seed 288: a report sent just before `raftvip restart` committed after the flag and
    cleared it; the leader then expired the exiting member (its link dropped) and moved its
    VIPs, the moves a restart in place must not make."""
    state = group("lb1", "lb2", "lb3")
    lb2 = state.members["lb2"]
    flagged = apply(state, SetRestarting(1.0, "lb2", lb2.incarnation))
    late = apply(flagged, report("lb2", lb2.seq + 1, 200.0, inc=lb2.incarnation))
    assert late.members["lb2"].restarting
    assert late.members["lb2"].seq == lb2.seq + 1
