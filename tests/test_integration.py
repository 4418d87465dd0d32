"""Members as real OS processes on 127.0.0.x, their stdout read (and acked) as ExaBGP would."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftvip.testing.group import Group, settled
from raftvip.testing.wait import wait_until

pytestmark = pytest.mark.slow

CONVERGE = 20.0
FAILOVER = 8.0


@pytest.fixture
def group3(tmp_path: Path) -> Iterator[Group]:
    group = Group(tmp_path, size=3)
    try:
        group.start_all()
        wait_until(group.converged, CONVERGE)
        yield group
    finally:
        group.close()


def owner_of(group: Group, vip: str) -> str:
    (owner,) = group.announcers(vip)
    return owner


def preferred_vip(group: Group, member: str) -> str:
    return next(v for v, m in group.preferred.items() if m == member)


def test_three_members_each_announce_exactly_their_vip(group3: Group) -> None:
    # After preempt_delay every preferred owner holds its VIP, and nobody else announces it.
    wait_until(lambda: settled(group3), CONVERGE)
    for name, member in group3.members.items():
        assert member.announced() == {preferred_vip(group3, name)}
        assert member.stub is not None
        for line in member.stub.lines:
            assert line.startswith(("announce route ", "withdraw route ")), line
    lb1_announced = group3.members["lb1"].announced()
    assert lb1_announced == {"10.20.0.1"}
    assert group3.members["lb1"].stub is not None
    assert group3.members["lb1"].stub.announced["10.20.0.1"] == (
        "announce route 10.20.0.1/32 next-hop self med 100 community [ 65001:100 ]"
    )


def test_status_json_shows_whole_group(group3: Group) -> None:
    wait_until(lambda: settled(group3), CONVERGE)
    doc = group3.status("lb2")
    for key in (
        "cluster",
        "member",
        "leader",
        "term",
        "commit_index",
        "has_quorum",
        "members",
        "vips",
        "services",
    ):
        assert key in doc
    assert doc["cluster"] == "test" and doc["member"] == "lb2" and doc["has_quorum"]
    assert doc["leader"] in group3.members
    assert set(doc["members"]) == {"lb1", "lb2", "lb3"}
    for m in doc["members"].values():
        assert m["alive"] and m["healthy"] == {"apex": True} and not m["drained"]
        assert m["address"].startswith("127.0.0.")
    assert doc["vips"]["10.20.0.2"] == {
        **doc["vips"]["10.20.0.2"],
        "service": "apex",
        "owner": "lb2",
        "preferred": "lb2",
        "announced": True,
        "reason": "owner",
    }
    assert doc["vips"]["10.20.0.1"]["announced"] is False
    assert doc["vips"]["10.20.0.1"]["reason"] == "not_owner"
    assert doc["services"] == {"apex": {"maintenance": False, "local_health": "up"}}
    assert "test-secret" not in json.dumps(doc)
    sock = group3.root / "lb2.sock"
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    human = subprocess.run(
        [sys.executable, "-m", "raftvip", "status", "-c", str(group3.members["lb2"].config)],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    assert "10.20.0.2" in human and "yes (owner)" in human


def _fail_and_check_moves(group: Group, victim: str, how: str) -> None:
    vip = preferred_vip(group, victim)
    wait_until(lambda: settled(group), CONVERGE)
    if how == "kill":
        group.kill(victim)
    elif how == "stop":
        group.stop_signal(victim)
    elif how == "check":
        group.members[victim].health_file.unlink()
    wait_until(lambda: len(group.announcers(vip) - {victim}) == 1, FAILOVER)
    if how == "check":
        # The failing member withdrew by itself.
        wait_until(lambda: vip not in group.members[victim].announced(), FAILOVER)
    survivors = {n for n in group.members if n != victim}
    assert group.announcers(vip) <= survivors | ({victim} if how == "stop" else set())
    # The survivors' own VIPs never moved.
    for name in survivors:
        assert preferred_vip(group, name) in group.members[name].announced()


def test_kill_non_leader_owner_moves_its_vip(group3: Group) -> None:
    leader = group3.leader()
    victim = next(n for n in group3.members if n != leader)
    _fail_and_check_moves(group3, victim, "kill")


def test_kill_leader_moves_its_vip(group3: Group) -> None:
    leader = group3.leader()
    assert leader is not None
    _fail_and_check_moves(group3, leader, "kill")
    wait_until(lambda: group3.leader() not in (None, leader), FAILOVER)


def test_sigstop_owner_is_caught_by_the_lease(group3: Group) -> None:
    leader = group3.leader()
    victim = next(n for n in group3.members if n != leader)
    _fail_and_check_moves(group3, victim, "stop")
    vip = preferred_vip(group3, victim)
    time.sleep(0.5)  # frozen for well over a lease (1.5 s) by now
    group3.cont(victim)
    # Back from the hang it knows its view is stale: it withdraws at once (so ExaBGP cannot
    # re-advertise the old route), rejoins, and after preempt_delay takes its VIP back.
    wait_until(lambda: vip not in group3.members[victim].announced(), 2)
    assert "was paused for" in group3.stderr(victim)
    wait_until(lambda: group3.announcers(vip) == {victim}, CONVERGE)
    assert "is back in the group after a pause" in group3.stderr(victim)


def test_failing_check_withdraws_then_moves_and_preempts_back(group3: Group) -> None:
    victim = "lb2"
    vip = preferred_vip(group3, victim)
    _fail_and_check_moves(group3, victim, "check")
    group3.members[victim].health_file.touch()
    # preempt_delay (1 s) after it is healthy again, lb2 takes 10.20.0.2 back.
    wait_until(lambda: group3.announcers(vip) == {victim}, CONVERGE)


def test_restarted_member_rejoins_and_takes_its_preferred_vip_back(group3: Group) -> None:
    victim = "lb3"
    vip = preferred_vip(group3, victim)
    _fail_and_check_moves(group3, victim, "kill")
    group3.start(victim)
    wait_until(lambda: group3.announcers(vip) == {victim}, CONVERGE)
    wait_until(group3.converged, CONVERGE)


def test_five_members_survive_two_kills(tmp_path: Path) -> None:
    group = Group(tmp_path, size=5)
    try:
        group.start_all()
        wait_until(lambda: settled(group), CONVERGE)
        leader = group.leader()
        assert leader is not None
        other = next(n for n in group.members if n != leader)
        group.kill(leader)
        group.kill(other)
        wait_until(group.converged, FAILOVER + 4)
        live = {n for n in group.members if n not in (leader, other)}
        for vip in group.vips:
            assert group.announcers(vip) <= live
    finally:
        group.close()


def test_sigterm_hands_over_and_exits_zero(group3: Group) -> None:
    vip = preferred_vip(group3, "lb1")
    wait_until(lambda: group3.announcers(vip) == {"lb1"}, CONVERGE)
    code = group3.terminate("lb1")
    assert code == 0
    assert vip not in group3.members["lb1"].announced()
    wait_until(lambda: len(group3.announcers(vip)) == 1, FAILOVER)
    err = group3.stderr("lb1")
    assert "stopping (SIGTERM): handing over" in err
    assert "Traceback" not in err


def test_eof_on_stdin_withdraws_and_exits(group3: Group) -> None:
    member = group3.members["lb2"]
    assert member.proc is not None and member.proc.stdin is not None
    member.proc.stdin.close()
    assert member.proc.wait(10) == 0
    assert "EOF on stdin" in group3.stderr("lb2")
    vip = preferred_vip(group3, "lb2")
    wait_until(lambda: len(group3.announcers(vip) - {"lb2"}) == 1, FAILOVER)


def test_garbage_on_stdin_is_logged_and_survived(group3: Group) -> None:
    member = group3.members["lb1"]
    assert member.proc is not None and member.proc.stdin is not None and member.stub is not None
    member.stub.ack = False
    for chunk in (
        b"error\n",
        b"\x00\xff\xfe garbage \x1b[31m\n",
        b"x" * 200_000 + b"\n",
        b"neighbor 127.0.0.1 down - hold timer expired\n",
        b"partial line without end",
    ):
        member.proc.stdin.write(chunk)
        member.proc.stdin.flush()
    wait_until(lambda: "state=down" in group3.stderr("lb1"), 5)
    err = group3.stderr("lb1")
    assert "unexpected stdin line" in err
    assert "exabgp rejected command=" in err
    assert "longer than 65536 bytes" in err
    assert member.running
    assert group3.status("lb1")["member"] == "lb1"
    assert "Traceback" not in err


def test_an_exabgp_that_refuses_the_classic_api_gets_the_fix_and_exit_one(tmp_path: Path) -> None:
    """lb1's ExaBGP answers `error` to everything (ExaBGP 6 without exabgp_api_version=4):
    lb1 says how to fix it and exits 1, at every start (ExaBGP restarts a helper that exits),
    and its VIP is served by the others."""
    group = Group(tmp_path, size=3)
    try:
        group.start("lb2")
        group.start("lb3")
        for start in (1, 2):
            member = group.start("lb1", answer="error")
            assert member.proc is not None and member.stub is not None
            assert member.proc.wait(30) == 1
            err = group.stderr("lb1")
            fatal = [line for line in err.splitlines() if " CRITICAL " in line]
            assert len(fatal) == start  # once per start
            assert "Set exabgp_api_version=4 in ExaBGP's environment" in fatal[-1]
            assert "or install ExaBGP 4.2 or 5.x" in fatal[-1]
            # It wrote its start-up withdraws and nothing after ExaBGP refused them.
            assert member.stub.lines == [f"withdraw route {v}/32 next-hop self" for v in group.vips]
            assert "Traceback" not in err
        vip = preferred_vip(group, "lb1")
        wait_until(lambda: len(group.announcers(vip)) == 1, CONVERGE)
        assert group.announcers(vip) <= {"lb2", "lb3"}
    finally:
        group.close()
