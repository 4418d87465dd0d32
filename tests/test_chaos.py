"""Quick mode of the fault-injection suite (tests/chaos.py) and the full-disk behaviour.

Long mode: `python -m tests.chaos --long --seed N` (README, "Fault injection").
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from raftvip.testing.group import Group
from raftvip.testing.wait import wait_until
from tests.chaos import KINDS, Chaos, Firewall, Recorder, Throttle

pytestmark = pytest.mark.slow

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not Firewall.available(), reason="needs root, iptables and cgroup v2"
)


def _run(tmp_path: Path, size: int, policy: str, seed: int, faults: int) -> None:
    lines: list[str] = []
    # Conservative window for a loaded 2-core CI machine: lease + 2 s.
    with Chaos(tmp_path, size=size, policy=policy, seed=seed, window=3.5, log=lines.append) as c:
        summary = c.run(faults)
    print("\n".join(lines))
    print(summary.table())
    assert sum(summary.faults[k] for k in KINDS) == faults
    assert not summary.violations, "\n".join(lines)


@needs_root
def test_quick_three_members_hold(tmp_path: Path) -> None:
    _run(tmp_path, 3, "hold", seed=20240601, faults=6)


@needs_root
def test_quick_five_members_withdraw(tmp_path: Path) -> None:
    _run(tmp_path, 5, "withdraw", seed=20240602, faults=5)


@needs_root
def test_partition_isolates_only_our_group(tmp_path: Path) -> None:
    """A symmetric cut moves the isolated member's VIP; healing brings it back."""
    with Chaos(tmp_path, size=3, seed=1, kinds={"partition": 1.0}) as chaos:
        group = chaos.group
        vip = next(v for v, m in group.preferred.items() if m == "lb1")
        for other in ("lb2", "lb3"):
            chaos._cut("lb1", other)
            chaos._cut(other, "lb1")
        wait_until(lambda: len(group.announcers(vip) - {"lb1"}) == 1, 10)
        assert vip in group.members["lb1"].announced()  # hold: the minority keeps it
        chaos.firewall.heal()
        wait_until(chaos._settled, 20)
    assert (
        chaos.firewall.chain
        not in subprocess.run(["iptables", "-S"], capture_output=True, text=True).stdout
    )


def test_intermittent_check_failures_never_withdraw(tmp_path: Path) -> None:
    """rise 2 / fall 2: a single failed probe between successes changes nothing."""
    with Chaos(tmp_path, size=3, seed=5, kinds={"health_intermittent": 1.0}) as chaos:
        summary = chaos.run(2)
    assert summary.checks["(5) intermittent flap: no change"] == 2
    assert not summary.violations


@needs_root
def test_withdraw_a_new_leader_waits_for_the_fence_of_a_member_it_lost_earlier(
    tmp_path: Path,
) -> None:
    """Double fault, `withdraw`: lb2's packets to P are lost (P's link to lb2 drops) while
    lb2 still reaches the leader and a majority, so it keeps its lease and its VIP. The
    leader dies and P wins the election (lb1 and lb5 have fast election timers: one leads,
    the other is P). P must not expire lb2 at once for that old link drop: lb2's lease
    fence is up to 0.85 s away, so its VIP would be announced twice. P waits for the fence."""
    chaos = Chaos(tmp_path, size=5, policy="withdraw", seed=3, kinds={"partition": 1.0})
    slow_election = "\n[raft]\nmin_timeout = 0.9\nmax_timeout = 1.0\n"
    for name in ("lb2", "lb3", "lb4"):
        config = chaos.group.members[name].config
        config.write_text(config.read_text() + slow_election)
    with chaos:
        group = chaos.group
        wait_until(lambda: group.leader() is not None, 20)
        leader = group.leader()
        if leader not in ("lb1", "lb5"):
            pytest.skip(f"a member with a slow election timer won ({leader})")
        future = "lb5" if leader == "lb1" else "lb1"
        vip = "10.20.0.2"  # lb2's preferred VIP
        wait_until(lambda: group.announcers(vip) == {"lb2"}, 20)
        chaos._cut("lb2", future)
        time.sleep(2.0)  # > connection_timeout: the future leader's link to lb2 has dropped
        assert group.announcers(vip) == {"lb2"}, "lb2 must keep its VIP (it has a majority)"
        killed = time.monotonic()
        chaos._kill(leader)
        wait_until(lambda: group.announcers(vip) - {"lb2"} != set(), 10)
        time.sleep(0.5)
        end = time.monotonic()
        both = [
            seg
            for seg in chaos.recorder.coverage(vip, killed, end)
            if len(seg.announcers) > 1 and seg.end - seg.start > 0.005
        ]
        assert not both, [(s.start - killed, s.end - killed, sorted(s.announcers)) for s in both]
        assert f"raft leader={future}" in group.stderr(future)


@needs_root
def test_full_state_dir_is_a_clear_error_and_no_corruption(tmp_path: Path) -> None:
    """pysyncobj's mmapped journal used to die of SIGBUS on a full tmpfs (exit -7, no log).

    Now the member logs one clear line, hands over, withdraws and exits 1; once space is
    freed it restarts from the same state_dir and rejoins.
    """
    group = Group(tmp_path, size=3)
    state = tmp_path / "state" / "lb1"
    state.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "raftvip-test", str(state)], check=True
    )
    try:
        group.start_all()
        vip = "10.20.0.1"
        wait_until(lambda: group.announcers(vip) == {"lb1"}, 20)
        filler = state / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
        member = group.members["lb1"]
        assert member.proc is not None
        assert member.proc.wait(30) == 1
        err = group.stderr("lb1")
        assert "is full, the Raft journal cannot be written" in err
        assert "Traceback" not in err
        wait_until(lambda: group.announcers(vip) - {"lb1"} != set(), 10)
        assert vip not in member.announced()  # it withdrew before leaving
        # Still full: a restart fails at once with a clear error (no crash loop of tracebacks).
        group.start("lb1")
        assert member.proc.wait(30) == 1
        assert "cluster.state_dir: cannot write" in group.stderr("lb1")
        filler.unlink()
        group.start("lb1")
        wait_until(lambda: group.announcers(vip) == {"lb1"}, 20)
        assert "Traceback" not in group.stderr("lb1")
    finally:
        group.close()
        subprocess.run(["umount", "-l", str(state)], check=False)


@needs_root
@pytest.mark.parametrize("fs", ["tmpfs", "ext4"])
def test_a_journal_append_on_a_full_disk_leaves_memory_and_file_equal(
    tmp_path: Path, fs: str
) -> None:
    """pysyncobj appended to its in-memory log before writing the file: on ENOSPC the entry
    stayed in memory only (and was acknowledged), the next one took its offset. The guarded
    journal undoes the in-memory append: what it holds is what a restart reads back.
    On ext4 a failed posix_fallocate also left the file longer than the mapping (every later
    write failed with "mmap slice assignment is wrong size")."""
    from pysyncobj import journal

    from raftvip import pysyncobj_patches

    if fs == "ext4" and not Throttle.available():
        pytest.skip("needs mkfs.ext4 and loop devices")
    pysyncobj_patches.install_journal_guards(lambda _detail: None)
    mount = tmp_path / "state"
    mount.mkdir()
    if fs == "tmpfs":
        command = ["mount", "-t", "tmpfs", "-o", "size=1m", "raftvip-test", str(mount)]
    else:
        image = tmp_path / "state.ext4"
        with open(image, "wb") as f:
            f.truncate(4 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
        command = ["mount", "-o", "loop", str(image), str(mount)]
    subprocess.run(command, check=True)
    try:
        path = str(mount / "test.journal")
        log = journal.FileJournal(path)
        filler = mount / "filler"
        # bs=64k leaves a little room: ext4 then grows the file part of the way and fails.
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
        idx, failures = 1, 0
        payload = b"x" * 512
        while failures < 3:
            try:
                log.add(payload, idx, 1)
                idx += 1
            except pysyncobj_patches.StateDirFull:
                failures += 1  # the same index is retried, as pysyncobj would
        filler.unlink()
        log.add(payload, idx, 1)
        in_memory = [(entry[1], entry[2]) for entry in (log[i] for i in range(len(log)))]
        log._destroy()
        reread = journal.FileJournal(path)
        on_disk = [(entry[1], entry[2]) for entry in (reread[i] for i in range(len(reread)))]
        reread._destroy()
        assert in_memory == on_disk
        assert [i for i, _term in on_disk] == list(range(1, idx + 1))
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_recorder_cuts_timelines_by_liveness(tmp_path: Path) -> None:
    group = Group(tmp_path, size=3)
    recorder = Recorder(group)
    assert recorder.coverage("10.20.0.1", 0.0, 1.0)[0].announcers == frozenset()


@needs_root
@pytest.mark.parametrize("policy", ["hold", "withdraw"])
def test_a_member_paused_past_its_lease_that_wakes_up_cut_off_withdraws(
    tmp_path: Path, policy: str
) -> None:
    """The pause fence on real processes: frozen longer than the lease, the member wakes up
    inside a partition. It must withdraw at once (reason `resuming`) and stay withdrawn until
    the group has committed a report it sent after the pause, then announce what it owns."""
    with Chaos(tmp_path, size=3, seed=1, policy=policy, kinds={"partition": 1.0}) as chaos:
        group = chaos.group
        wait_until(chaos._settled, 20)
        victim = next(n for n in group.members if n != group.leader())
        vip = next(v for v, m in group.preferred.items() if m == victim)
        chaos._stop(victim)
        wait_until(lambda: len(group.announcers(vip)) == 1, 10)  # moved to another member
        time.sleep(0.5)  # frozen for well over a lease (1.5 s) by now
        for other in group.members:
            if other != victim:
                chaos._cut(victim, other)
                chaos._cut(other, victim)
        chaos._cont(victim)
        wait_until(lambda: not group.members[victim].announced(), 2)
        doc = group.status(victim)
        assert doc["vips"][vip]["reason"] == "resuming"
        time.sleep(2.0)  # the partition lasts: the fence holds
        assert not group.members[victim].announced()
        assert group.status(victim)["vips"][vip]["reason"] == "resuming"
        chaos.firewall.heal()
        # Back in the group: preempt_delay (1 s) later it takes its preferred VIP back.
        wait_until(lambda: group.announcers(vip) == {victim}, 20)
        assert "is back in the group after a pause" in group.stderr(victim)
