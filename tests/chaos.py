"""Fault injection for raftvip groups, with invariants checked from recorded timelines.

Runs a group of real member processes (raftvip/testing/group.py: each member's stdout read and acked
as ExaBGP would, every announce/withdraw timestamped), injects faults chosen by a seeded RNG
and checks invariants from the recorded timelines (exact timestamps, no sampling):

faults   kill -9 + restart, SIGSTOP/SIGCONT (hang), partitions (iptables on loopback
         addresses: symmetric minority/majority, asymmetric one-direction, leader isolated),
         full-group crash + restart, health flaps (hard, and intermittent single failed probes
         that must not withdraw), control commands (drain/maintenance/pin) racing the fault,
         full state_dir (filled up), slow state_dir (its loop-backed ext4 throttled to a few
         writes per second with cgroup v1 blkio).
invariants
  1 availability: outside `window` after every event, while a healthy, eligible member sits
    in a majority partition, every VIP not in maintenance has >= 1 live announcer (after a
    restart the window counts from the moment the processes logged `started`; a slow disk
    is checked once over: its stalls have no fixed start);
  2 exclusivity: when quiet (no fault active) for `window`, no VIP has two live announcers for
    longer than a make-before-break handover (`handover`);
  3 maintenance, drain and pin flags equal what the harness committed (full restarts too);
  4 no member process exits unless the harness killed it (a full state_dir: exit 1 with a
    clear error is the documented behaviour);
  5 announcer-set changes per VIP per fault <= `max_changes`; an intermittent flap changes
    nothing;
  6 on_quorum_loss: a member cut off in a minority takes no new VIP and (hold) keeps what it
    announced, or (withdraw) announces nothing once the fencing time has passed and no VIP
    is announced on both sides of the cut (at most one announcer).

CLI: `python -m tests.chaos --quick` (~2 min) or `python -m tests.chaos --long --seed N`
(>= 500 faults). The same seed and fault count replay the same sequence of fault choices.
Root is needed for partitions (iptables) and the full-disk fault (tmpfs); without it those
kinds are skipped and the summary says so.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raftvip.config import FENCE_MARGIN
from raftvip.control import request
from raftvip.errors import ControlError
from raftvip.testing.group import Group, Member, SpeakerStub

CHAIN_PREFIX = "RAFTVIP_CHAOS_"
DISK_FULL_ERROR = "is full, the Raft journal cannot be written"


# --- slow disks ---------------------------------------------------------------------------


class Throttle:
    """Write IOPS limits on the block device under a state_dir (cgroup v1 blkio, root group:
    every writer to that device is throttled, kernel writeback included)."""

    CONTROL = Path("/sys/fs/cgroup/blkio/blkio.throttle.write_iops_device")

    def __init__(self) -> None:
        self.limited: list[str] = []  # "major:minor"

    @classmethod
    def available(cls) -> bool:
        return (
            os.geteuid() == 0
            and cls.CONTROL.exists()
            and shutil.which("mkfs.ext4") is not None
            and shutil.which("losetup") is not None
        )

    @staticmethod
    def device(path: Path) -> str:
        source = subprocess.run(
            ["findmnt", "-no", "SOURCE", str(path)], capture_output=True, text=True, check=True
        ).stdout.strip()
        rdev = os.stat(source).st_rdev
        return f"{os.major(rdev)}:{os.minor(rdev)}"

    def limit(self, path: Path, iops: int) -> None:
        dev = self.device(path)
        self.CONTROL.write_text(f"{dev} {iops}\n")
        self.limited.append(dev)

    def reset(self, path: Path) -> None:
        """No limit on the device under `path` (0 removes a cgroup v1 throttle rule)."""
        self.CONTROL.write_text(f"{self.device(path)} 0\n")

    def clear(self) -> None:
        for dev in self.limited:
            with contextlib.suppress(OSError):
                self.CONTROL.write_text(f"{dev} 0\n")
        self.limited.clear()


# --- iptables partitions ------------------------------------------------------------------


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, check=check)


def _pid_alive(text: str) -> bool:
    if not text.isdigit() or int(text) == os.getpid():
        return False
    try:
        os.kill(int(text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Firewall:
    """Partitions between members: DROP rules in an iptables chain of our own.

    pysyncobj connects from 127.0.0.1 (the kernel's source for loopback), so a packet's
    source address does not say which member sent it. Each member process is put in its own
    cgroup (v2) and rules match the sending cgroup: `-m cgroup --path <member>` with the peer's
    address and the group's Raft port (other groups, e.g. tests running in parallel, use the
    same 127.0.0.x addresses with other ports). The chain `RAFTVIP_CHAOS_<pid>` is jumped to
    from OUTPUT for `-o lo` only; a dropped packet vanishes silently (TCP retransmits), as on a
    real network. Nothing else on the host is touched; leftovers of a crashed run are removed
    by chain-name prefix at start.
    """

    CGROUPS = Path("/sys/fs/cgroup/unified")

    def __init__(self) -> None:
        self.chain = f"{CHAIN_PREFIX}{os.getpid()}"
        self.cgroups = self.CGROUPS / f"raftvip-chaos-{os.getpid()}"
        self.active = False
        self.cuts: set[tuple[str, str]] = set()

    @classmethod
    def available(cls) -> bool:
        if os.geteuid() != 0 or shutil.which("iptables") is None or not cls.CGROUPS.is_dir():
            return False
        try:
            return _iptables("-S", "OUTPUT", check=False).returncode == 0
        except OSError:
            return False

    @classmethod
    def remove_leftovers(cls) -> None:
        listing = _iptables("-S", check=False).stdout.splitlines()
        for line in listing:
            words = line.split()
            chains = [w for w in words if w.startswith(CHAIN_PREFIX)]
            if words[:1] == ["-A"] and chains and not _pid_alive(chains[0][len(CHAIN_PREFIX) :]):
                _iptables("-D", *words[1:], check=False)
        for line in listing:
            words = line.split()
            if words[:1] == ["-N"] and words[1].startswith(CHAIN_PREFIX):
                if _pid_alive(words[1][len(CHAIN_PREFIX) :]):
                    continue  # another harness running right now
                _iptables("-F", words[1], check=False)
                _iptables("-X", words[1], check=False)
        if cls.CGROUPS.is_dir():
            for path in cls.CGROUPS.glob("raftvip-chaos-*"):
                if not _pid_alive(path.name.rsplit("-", 1)[1]):
                    _remove_cgroup(path)

    def setup(self) -> None:
        self.remove_leftovers()
        _iptables("-N", self.chain)
        _iptables("-I", "OUTPUT", "1", "-o", "lo", "-j", self.chain)
        self.cgroups.mkdir(exist_ok=True)
        self.active = True
        atexit.register(self.teardown)

    def attach(self, member: str, pid: int) -> None:
        """Put a (re)started member process in its own cgroup."""
        if self.active:
            path = self.cgroups / member
            path.mkdir(exist_ok=True)
            with contextlib.suppress(ProcessLookupError, OSError):
                (path / "cgroup.procs").write_text(str(pid))

    def _rule(self, member: str, *match: str) -> None:
        path = f"{self.cgroups.relative_to(self.CGROUPS)}/{member}"
        _iptables("-A", self.chain, "-m", "cgroup", "--path", path, *match, "-j", "DROP")

    def drop(self, member: str, peer_address: str, port: int) -> None:
        """`member` can no longer open (or use) its connections to `peer_address`."""
        self._rule(member, "-d", peer_address, "-p", "tcp", "--dport", str(port))
        self.cuts.add((member, peer_address))

    def reply_drop(self, member: str, peer_address: str, port: int) -> None:
        """`member` can no longer answer `peer_address` on connections the peer opened."""
        self._rule(member, "-d", peer_address, "-p", "tcp", "--sport", str(port))

    def mute(self, member: str, address: str, port: int) -> None:
        """`member` can no longer answer on connections that peers opened to it."""
        self._rule(member, "-s", address, "-p", "tcp", "--sport", str(port))

    def heal(self) -> None:
        if self.active:
            _iptables("-F", self.chain, check=False)
        self.cuts.clear()

    def teardown(self) -> None:
        if not self.active:
            return
        self.active = False
        _iptables("-D", "OUTPUT", "-o", "lo", "-j", self.chain, check=False)
        _iptables("-F", self.chain, check=False)
        _iptables("-X", self.chain, check=False)
        _remove_cgroup(self.cgroups)


def _remove_cgroup(path: Path) -> None:
    """Move any process left back to the root cgroup, then remove the directories."""
    for child in sorted(path.glob("*/"), reverse=True):
        with contextlib.suppress(OSError):
            for pid in (child / "cgroup.procs").read_text().split():
                (Firewall.CGROUPS / "cgroup.procs").write_text(pid)
        with contextlib.suppress(OSError):
            child.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


# --- the recorder: effective announced sets from the stubs' timelines ---------------------


def _host(member: Member) -> str:
    return member.address.rsplit(":", 1)[0]


Interval = tuple[float, float]


def _stub_intervals(stub: SpeakerStub, vip: str, end: float) -> list[Interval]:
    with stub.lock:
        # Only what happened up to `end`: a later re-announcement must not count as an
        # interval that was still open at `end`.
        changes = [c for c in stub.changes if c.vip == vip and c.time <= end]
    out: list[Interval] = []
    since: float | None = None
    for change in changes:
        if change.action == "announce" and since is None:
            since = change.time
        elif change.action == "withdraw" and since is not None:
            out.append((since, change.time))
            since = None
    if since is not None:
        out.append((since, end))
    return out


def _intersect(a: list[Interval], b: list[Interval]) -> list[Interval]:
    out = []
    for a0, a1 in a:
        for b0, b1 in b:
            lo, hi = max(a0, b0), min(a1, b1)
            if lo < hi:
                out.append((lo, hi))
    return out


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    announcers: frozenset[str]


class Recorder:
    """Who announces what, when: stub timelines cut by process liveness.

    A killed or SIGSTOPped member's routes do not count (its helper cannot withdraw: real
    ExaBGP would keep them until the restart's resync, which the stub timeline shows).
    """

    def __init__(self, group: Group) -> None:
        self.group = group
        self.alive: dict[str, list[tuple[float, bool]]] = {n: [] for n in group.members}

    def mark(self, name: str, up: bool, when: float | None = None) -> None:
        self.alive[name].append((time.monotonic() if when is None else when, up))

    def _alive_intervals(self, name: str, end: float) -> list[Interval]:
        out: list[Interval] = []
        since: float | None = None
        for when, up in self.alive[name]:
            if up and since is None:
                since = when
            elif not up and since is not None:
                out.append((since, when))
                since = None
        if since is not None:
            out.append((since, end))
        return out

    def member_intervals(self, name: str, vip: str, end: float) -> list[Interval]:
        announced: list[Interval] = []
        history = self.group.members[name].history
        for i, stub in enumerate(history):
            # A replaced process was dead before its successor started: its routes end there.
            until = min(end, history[i + 1].started) if i + 1 < len(history) else end
            announced += _stub_intervals(stub, vip, until)
        return _intersect(announced, self._alive_intervals(name, end))

    def coverage(self, vip: str, start: float, end: float) -> list[Segment]:
        """[start, end] cut into segments with a constant set of live announcers."""
        points = {start, end}
        spans: dict[str, list[Interval]] = {}
        for name in self.group.members:
            spans[name] = self.member_intervals(name, vip, end)
            for a, b in spans[name]:
                points.update(p for p in (a, b) if start < p < end)
        ordered = sorted(points)
        segments: list[Segment] = []
        for a, b in itertools.pairwise(ordered):
            mid = (a + b) / 2
            who = frozenset(n for n, iv in spans.items() if any(x <= mid < y for x, y in iv))
            if segments and segments[-1].announcers == who:
                segments[-1] = Segment(segments[-1].start, b, who)
            else:
                segments.append(Segment(a, b, who))
        return segments

    def changes(self, name: str, start: float, end: float) -> list[tuple[float, str, str]]:
        out = []
        for stub in self.group.members[name].history:
            with stub.lock:
                out += [(c.time, c.action, c.vip) for c in stub.changes if start <= c.time <= end]
        return sorted(out)


# --- faults -------------------------------------------------------------------------------


@dataclass
class Episode:
    index: int
    kind: str
    detail: str = ""
    inject: float = 0.0
    heal: float = 0.0
    end: float = 0.0
    last_event: float = 0.0  # the last change made by the harness (window starts here)
    majority_ok: bool = True  # some healthy eligible member sits in a majority partition
    minority: tuple[str, ...] = ()  # members cut off from any majority during the fault
    victims: tuple[str, ...] = ()
    command: str = ""
    command_outcome: str = ""
    maintenance_unknown: bool = False
    gap_measured: bool = False  # not while the service is (maybe) in maintenance
    timeline: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    worst_gap: float = 0.0
    max_changes: int = 0


@dataclass
class Flags:
    maintenance: bool = False
    drained: set[str] = field(default_factory=set)
    pins: dict[str, str] = field(default_factory=dict)


@dataclass
class Summary:
    seed: int
    size: int
    policy: str
    faults: Counter[str] = field(default_factory=Counter)
    checks: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    worst_gap: dict[str, float] = field(default_factory=dict)
    max_changes: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    startup: list[float] = field(default_factory=list)  # restart -> `started` logged

    def merge(self, other: Summary) -> None:
        self.faults.update(other.faults)
        self.checks.update(other.checks)
        self.violations += other.violations
        for kind, gap in other.worst_gap.items():
            self.worst_gap[kind] = max(self.worst_gap.get(kind, 0.0), gap)
        for kind, n in other.max_changes.items():
            self.max_changes[kind] = max(self.max_changes.get(kind, 0), n)
        self.skipped = sorted(set(self.skipped) | set(other.skipped))
        self.startup += other.startup
        self.elapsed += other.elapsed

    def table(self) -> str:
        lines = [
            f"{'FAULT KIND':<22}{'COUNT':>7}{'WORST UNANNOUNCED':>19}{'MAX CHANGES/VIP':>17}",
        ]
        for kind in sorted(self.faults):
            gap = self.worst_gap.get(kind)
            lines.append(
                f"{kind:<22}{self.faults[kind]:>7}"
                f"{(f'{gap:.3f}s' if gap is not None else '-'):>19}"
                f"{self.max_changes.get(kind, 0):>17}"
            )
        total = sum(self.faults.values())
        worst = max(self.worst_gap.values(), default=0.0)
        lines.append(f"{'total':<22}{total:>7}{f'{worst:.3f}s':>19}")
        if self.startup:
            ups = sorted(self.startup)
            lines.append(
                f"process start-up after a restart (until `started` is logged; the quiet "
                f"window counts from there): median {ups[len(ups) // 2]:.2f}s, "
                f"max {ups[-1]:.2f}s over {len(ups)}"
            )
        lines.append("")
        lines.append(f"{'INVARIANT CHECK':<40}{'RUN':>8}")
        for name in sorted(self.checks):
            lines.append(f"{name:<40}{self.checks[name]:>8}")
        lines.append("")
        lines.append(f"violations: {len(self.violations)}")
        lines += [f"  {v}" for v in self.violations]
        if self.skipped:
            lines.append(f"skipped fault kinds: {', '.join(self.skipped)}")
        lines.append(f"elapsed: {self.elapsed:.0f}s")
        return "\n".join(lines)


KINDS: dict[str, float] = {
    "kill_restart": 2.0,
    "hang": 2.0,
    "partition": 2.0,
    "partition_asym": 1.0,
    "isolate_leader": 1.0,
    "full_restart": 0.5,
    "health_flap": 1.0,
    "health_intermittent": 1.0,
    "disk_full": 0.5,
    "disk_slow": 0.5,
}
COMMANDS = ("maintenance", "drain", "pin")


class Chaos:
    """One group under fault injection. Use as a context manager."""

    def __init__(
        self,
        root: Path,
        size: int = 3,
        seed: int = 1,
        policy: str = "hold",
        lease: float = 1.5,
        window: float | None = None,
        handover: float = 1.0,
        max_changes: int = 10,
        settle_timeout: float = 20.0,
        command_rate: float = 0.35,
        kinds: dict[str, float] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.root = root
        self.size = size
        self.seed = seed
        self.rng = random.Random(seed)
        self.policy = policy
        self.lease = lease
        self.window = lease + 1.0 if window is None else window
        self.handover = handover
        self.fence = min(lease, 1.0) - FENCE_MARGIN  # fence_time() at connection_timeout 1 s
        self.max_changes = max_changes
        self.settle_timeout = settle_timeout
        self.command_rate = command_rate
        self.log = log or (lambda line: None)
        self.group = Group(
            root,
            size=size,
            lease=lease,
            on_quorum_loss=policy,
            rise=2,
            fall=2,
            preempt_delay=1.0,
        )
        self.recorder = Recorder(self.group)
        self.firewall = Firewall()
        self.throttle = Throttle()
        self.flags = Flags()
        self.mounts: list[Path] = []
        self.summary = Summary(seed=seed, size=size, policy=policy)
        wanted = dict(KINDS if kinds is None else kinds)
        if not Firewall.available():
            for kind in ("partition", "partition_asym", "isolate_leader"):
                if wanted.pop(kind, None) is not None:
                    self.summary.skipped.append(f"{kind} (needs root + iptables)")
        if wanted.get("disk_full") and os.geteuid() != 0:
            wanted.pop("disk_full")
            self.summary.skipped.append("disk_full (needs root for tmpfs)")
        if wanted.get("disk_slow") and not Throttle.available():
            wanted.pop("disk_slow")
            self.summary.skipped.append(
                "disk_slow (needs root, mkfs.ext4, loop devices and cgroup v1 blkio throttling)"
            )
        self.kinds = wanted
        self.expected_exit: dict[str, int] = {}  # member -> exit code the harness expects
        self._stderr_mark: dict[str, int] = {}  # member -> its stderr size at its last start

    # --- lifecycle ---

    def __enter__(self) -> Chaos:
        try:
            if any(k in self.kinds for k in ("partition", "partition_asym", "isolate_leader")):
                self.firewall.setup()
            if "disk_full" in self.kinds or "disk_slow" in self.kinds:
                for name in self.group.members:
                    self._mount_state_dir(name)
            for name in self.group.members:
                self._start(name)
            self._wait_settled(self.settle_timeout * 2)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.group.close()
        finally:
            self.firewall.teardown()
            self.throttle.clear()
            for path in self.mounts:
                subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
            self.mounts.clear()

    def _mount_state_dir(self, name: str) -> None:
        """A small filesystem per member: ext4 on a loop device when a slow disk is wanted
        (the block device can be throttled), else tmpfs (enough to fill it up)."""
        path = self.root / "state" / name
        path.mkdir(parents=True, exist_ok=True)
        if "disk_slow" in self.kinds:
            image = self.root / f"{name}.ext4"
            with open(image, "wb") as f:
                f.truncate(8 << 20)
            subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
            subprocess.run(["mount", "-o", "loop", str(image), str(path)], check=True)
            path.chmod(0o700)
            # A harness killed mid-fault leaves its limit on the loop device's number, which
            # this new loop device may reuse.
            self.throttle.reset(path)
        else:
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "raftvip-chaos", str(path)],
                check=True,
                capture_output=True,
            )
        self.mounts.append(path)

    # --- process control, recorded ---

    def _start(self, name: str) -> None:
        path = self.group.members[name].stderr_path
        self._stderr_mark[name] = path.stat().st_size if path.exists() else 0
        member = self.group.start(name)
        assert member.proc is not None
        self.firewall.attach(name, member.proc.pid)
        self.recorder.mark(name, True)

    def _wait_started(self, names: list[str], episode: Episode) -> None:
        """Until each restarted process has logged `started` (journal loaded, Raft up).

        The quiet window counts from there: interpreter start-up is not part of the Raft
        bound; the summary reports it separately."""
        begin = time.monotonic()
        pending = set(names)
        while pending and time.monotonic() - begin < self.settle_timeout:
            for name in sorted(pending):
                path = self.group.members[name].stderr_path
                with open(path, "rb") as f:
                    f.seek(self._stderr_mark.get(name, 0))
                    if b" started: cluster=" in f.read():
                        pending.discard(name)
            if pending:
                time.sleep(0.01)
        self.summary.startup.append(time.monotonic() - begin)
        if pending:
            episode.violations.append(
                f"(4) {','.join(sorted(pending))} not started {self.settle_timeout:.0f}s "
                "after the restart"
            )

    def _kill(self, name: str) -> None:
        self.recorder.mark(name, False)
        self.group.kill(name)

    def _stop(self, name: str) -> None:
        self.recorder.mark(name, False)
        self.group.stop_signal(name)

    def _cont(self, name: str) -> None:
        self.group.cont(name)
        self.recorder.mark(name, True)

    def _live(self) -> list[str]:
        return [n for n, m in self.group.members.items() if m.running and not m.stopped]

    # --- observation ---

    def _status(self, names: list[str] | None = None) -> dict[str, Any] | None:
        for name in names or self._live():
            with contextlib.suppress(ControlError, OSError):
                doc = request(str(self.root / f"{name}.sock"), {"op": "status"}, timeout=3.0)
                if isinstance(doc, dict):
                    return doc
        return None

    def _expected_owner(self, vip: str) -> str | None:
        if self.flags.maintenance:
            return None
        pinned = self.flags.pins.get(vip)
        if pinned is not None and pinned not in self.flags.drained:
            return pinned
        preferred = self.group.preferred.get(vip)
        if preferred is not None and preferred not in self.flags.drained:
            return preferred
        return ""  # someone (exactly one)

    def _settled(self) -> bool:
        live = set(self._live())
        for vip in self.group.vips:
            who = self.group.announcers(vip) & live
            expected = self._expected_owner(vip)
            if expected is None:
                if who:
                    return False
            elif len(who) != 1 or (expected and who != {expected}):
                return False
        return True

    def _wait_settled(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._settled():
                return True
            time.sleep(0.02)
        return False

    # --- the run ---

    def run(self, faults: int, deadline: float | None = None) -> Summary:
        started = time.monotonic()
        for index in range(faults):
            if deadline is not None and time.monotonic() > deadline:
                break
            kind = self.rng.choices(list(self.kinds), weights=list(self.kinds.values()))[0]
            episode = Episode(index=index, kind=kind)
            self._episode(episode)
            self.summary.faults[kind] += 1
            if episode.command:
                self.summary.faults[f"control:{episode.command.split()[0]}"] += 1
            self.summary.worst_gap[kind] = max(
                self.summary.worst_gap.get(kind, 0.0), episode.worst_gap
            )
            self.summary.max_changes[kind] = max(
                self.summary.max_changes.get(kind, 0), episode.max_changes
            )
            status = "ok" if not episode.violations else f"{len(episode.violations)} VIOLATIONS"
            raced = f" + {episode.command} -> {episode.command_outcome}" if episode.command else ""
            self.log(
                f"[seed {self.seed} #{index}] {kind} {episode.detail}{raced}"
                f": gap {f'{episode.worst_gap:.3f}s' if episode.gap_measured else 'n/a'}"
                f" changes {episode.max_changes} {status}"
            )
            for violation in episode.violations:
                text = (
                    f"seed={self.seed} size={self.size} policy={self.policy} fault#{index} "
                    f"{kind}: {violation}"
                )
                self.summary.violations.append(text)
                self.log("VIOLATION " + text)
                for line in episode.timeline:
                    self.log("    " + line)
        self.summary.elapsed = time.monotonic() - started
        self.summary.checks["(4) no traceback in any member's log"] += 1
        for name in self.group.members:
            err = self.group.stderr(name)
            tracebacks = err.count("Traceback")
            if tracebacks:
                first = err[err.index("Traceback") :].splitlines()[:30]
                error = next((x for x in first[1:] if x and not x.startswith(" ")), "?")
                text = (
                    f"seed={self.seed} size={self.size} policy={self.policy}: (4) {name} logged "
                    f"{tracebacks} traceback(s), the first: {error}"
                )
                self.summary.violations.append(text)
                self.log("VIOLATION " + text)
                for line in first:
                    self.log("    " + line)
        return self.summary

    def _note(self, episode: Episode, text: str) -> None:
        episode.timeline.append(f"{time.monotonic() - episode.inject:+8.3f}s {text}")

    def _event(self, episode: Episode) -> None:
        episode.last_event = time.monotonic()

    def _episode(self, episode: Episode) -> None:
        rng = self.rng
        names = list(self.group.members)
        majority = self.size // 2 + 1
        hold = rng.uniform(0.5, 4.5)
        with_command = episode.kind not in ("full_restart", "health_intermittent") and (
            rng.random() < self.command_rate
        )
        command = self._pick_command(rng) if with_command else None
        command_delay = rng.uniform(0.0, 0.3)
        episode.inject = time.monotonic()
        heal: Callable[[], None] = lambda: None  # noqa: E731
        kind = episode.kind
        eligible = [n for n in names if n not in self.flags.drained]

        if kind == "kill_restart":
            k = 2 if self.size >= 5 and rng.random() < 0.3 else 1
            victims = rng.sample(names, k)
            for v in victims:
                self._kill(v)
            episode.detail = f"{','.join(victims)} for {hold:.2f}s"

            def heal() -> None:
                for v in victims:
                    self._start(v)
                self._wait_started(victims, episode)

        elif kind == "hang":
            k = 2 if self.size >= 5 and rng.random() < 0.3 else 1
            victims = rng.sample(names, k)
            for v in victims:
                self._stop(v)
            episode.detail = f"{','.join(victims)} for {hold:.2f}s"

            def heal() -> None:
                for v in victims:
                    self._cont(v)

        elif kind in ("partition", "isolate_leader"):
            if kind == "isolate_leader":
                doc = self._status()
                leader = str(doc.get("leader")) if doc and doc.get("leader") else rng.choice(names)
                small = [leader]
            else:
                small = rng.sample(names, rng.randint(1, self.size - majority))
            big = [n for n in names if n not in small]
            for a in small:
                for b in big:
                    self._cut(a, b)
                    self._cut(b, a)
            victims = small
            episode.minority = tuple(small)
            episode.detail = f"{','.join(small)} | {','.join(big)} for {hold:.2f}s"
            heal = self.firewall.heal

        elif kind == "partition_asym":
            # One direction: everything the victim sends is dropped, it still receives.
            (victim,) = rng.sample(names, 1)
            for other in names:
                if other != victim:
                    self._cut(victim, other)
            member = self.group.members[victim]
            self.firewall.mute(victim, _host(member), int(member.address.rsplit(":", 1)[1]))
            victims = [victim]
            episode.minority = (victim,)
            episode.detail = f"{victim} -> others dropped (it still receives) for {hold:.2f}s"
            heal = self.firewall.heal

        elif kind == "full_restart":
            victims = list(names)
            for v in victims:
                self._kill(v)
            hold = rng.uniform(0.2, 1.5)
            episode.detail = f"down for {hold:.2f}s"

            def heal() -> None:
                for v in victims:
                    self._start(v)
                self._wait_started(victims, episode)

        elif kind == "health_flap":
            (victim,) = rng.sample(names, 1)
            self.group.members[victim].health_file.unlink()
            victims = [victim]
            episode.detail = f"{victim} check failing for {hold:.2f}s"

            def heal() -> None:
                self.group.members[victim].health_file.touch()

        elif kind == "health_intermittent":
            (victim,) = rng.sample(names, 1)
            victims = [victim]
            flaps = rng.randint(3, 6)
            health = self.group.members[victim].health_file
            # Each failure lasts 40 ms, shorter than fast_interval (0.1 s): at most one probe
            # in a row fails, and fall = 2 needs two.
            for _ in range(flaps):
                health.unlink()
                time.sleep(0.04)
                health.touch()
                time.sleep(rng.uniform(0.25, 0.45))
            hold = 0.0
            episode.detail = f"{victim} {flaps} single failed probes"

        elif kind == "disk_full":
            (victim,) = rng.sample(names, 1)
            victims = [victim]
            filler = self.root / "state" / victim / "filler"
            err_path = self.group.members[victim].stderr_path
            err_mark = err_path.stat().st_size
            subprocess.run(
                ["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, check=False
            )
            self.expected_exit[victim] = 1
            hold = rng.uniform(2.0, 5.0)
            episode.detail = f"{victim} state_dir full for {hold:.2f}s"

            def disk_full_logged() -> bool:
                with open(err_path, "rb") as f:
                    f.seek(err_mark)
                    return DISK_FULL_ERROR.encode() in f.read()

            def heal() -> None:
                filler.unlink(missing_ok=True)
                member = self.group.members[victim]
                assert member.proc is not None
                if member.running and disk_full_logged():
                    # It hit the full disk and is handing over: its exit may still be a
                    # few seconds away; it belongs to this fault, not to the next one.
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        member.proc.wait(self.settle_timeout)
                if not member.running:
                    code = member.proc.returncode
                    self._note(episode, f"{victim} exited {code} during the full disk")
                    if code != 1 or not disk_full_logged():
                        episode.violations.append(
                            f"(4) {victim} on a full state_dir exited {code} "
                            "without the clear error line"
                        )
                    self.recorder.mark(victim, False)
                    self._start(victim)
                    self._wait_started([victim], episode)
                self.expected_exit.pop(victim, None)

        elif kind == "disk_slow":
            (victim,) = rng.sample(names, 1)
            victims = [victim]
            iops = rng.choice([2, 5, 20])
            self.throttle.limit(self.root / "state" / victim, iops)
            hold = rng.uniform(2.0, 6.0)
            episode.detail = f"{victim} state_dir throttled to {iops} writes/s for {hold:.2f}s"

            def heal() -> None:
                self.throttle.clear()

        else:
            raise ValueError(kind)

        episode.victims = tuple(victims)
        dead = set(victims) if kind in ("kill_restart", "hang", "full_restart") else set()
        unhealthy = set(victims) if kind in ("health_flap", "disk_full") else set()
        episode.majority_ok = self._majority_ok(dead, set(episode.minority), unhealthy, eligible)
        self._note(episode, f"inject {kind} {episode.detail}")
        self._event(episode)

        thread = None
        if command is not None:
            time.sleep(command_delay)
            thread = threading.Thread(target=self._run_command, args=(episode, command))
            thread.start()
        time.sleep(hold)
        if thread is not None:
            thread.join(15)
        episode.heal = time.monotonic()
        self._check_fault_phase(episode)
        heal()
        self._note(episode, "heal")
        self._event(episode)
        self._resolve_command(episode, command)
        time.sleep(self.window)
        settled = self._wait_settled(self.settle_timeout)
        time.sleep(0.3)
        episode.end = time.monotonic()
        if not settled:
            episode.violations.append(
                f"(1/2) not settled {self.settle_timeout:.0f}s after the heal: "
                + "; ".join(f"{v}={sorted(self.group.announcers(v))}" for v in self.group.vips)
            )
        self._check_quiet_phase(episode)
        self._check_flags(episode)
        self._check_processes(episode)
        self._end_maintenance(episode)

    def _cut(self, a: str, b: str) -> None:
        """Nothing `a` sends reaches `b`: neither on connections `a` opened to `b` nor as
        replies on connections `b` opened to `a` (raftvip binds each member's outgoing
        connections to its own address, so replies to `b` go to `b`'s address)."""
        port = int(self.group.members[a].address.rsplit(":", 1)[1])
        self.firewall.drop(a, _host(self.group.members[b]), port)
        self.firewall.reply_drop(a, _host(self.group.members[b]), port)

    def _majority_ok(
        self, dead: set[str], minority: set[str], unhealthy: set[str], eligible: list[str]
    ) -> bool:
        majority = self.size // 2 + 1
        side = [n for n in self.group.members if n not in dead and n not in minority]
        if len(side) < majority:
            return False
        return any(n in eligible and n not in unhealthy for n in side)

    # --- control commands racing with faults ---

    def _pick_command(self, rng: random.Random) -> tuple[str, dict[str, Any]]:
        op = rng.choice(COMMANDS)
        if op == "maintenance":
            on = not self.flags.maintenance
            return (f"maintenance {'on' if on else 'off'}", {"service": "apex", "on": on})
        if op == "drain":
            if self.flags.drained:
                member = next(iter(self.flags.drained))
                return (f"undrain {member}", {"member": member, "on": False})
            member = rng.choice(list(self.group.members))
            return (f"drain {member}", {"member": member, "on": True})
        if self.flags.pins:
            vip = next(iter(self.flags.pins))
            return (f"unpin {vip}", {"vip": vip, "member": None})
        vip = rng.choice(self.group.vips)
        member = rng.choice([n for n in self.group.members if n not in self.flags.drained])
        return (f"pin {vip} {member}", {"vip": vip, "member": member})

    def _end_maintenance(self, episode: Episode) -> None:
        """Maintenance withdraws every VIP (the group has one service): once the episode that
        set it is checked (flags kept through its fault), switch it off again so that the
        next faults are checked for availability too."""
        if not self.flags.maintenance:
            return
        body = {"service": "apex", "on": False}
        for _ in range(5):
            live = sorted(self._live())
            if live and self._send(live[0], "maintenance off", body) == "ok":
                self._apply_flag("maintenance off", body)
                self._note(episode, "harness: maintenance off again")
                self._wait_settled(self.settle_timeout)
                return
            time.sleep(self.window)
        episode.violations.append("(3) maintenance off could not be committed after the checks")

    def _apply_flag(self, text: str, body: dict[str, Any]) -> None:
        op = text.split()[0]
        if op == "maintenance":
            self.flags.maintenance = bool(body["on"])
        elif op in ("drain", "undrain"):
            if body["on"]:
                self.flags.drained.add(body["member"])
            else:
                self.flags.drained.discard(body["member"])
        elif op in ("pin", "unpin"):
            if body["member"] is None:
                self.flags.pins.pop(body["vip"], None)
            else:
                self.flags.pins[body["vip"]] = body["member"]

    def _send(self, via: str, text: str, body: dict[str, Any]) -> str:
        op = {"undrain": "drain", "unpin": "pin"}.get(text.split()[0], text.split()[0])
        try:
            request(str(self.root / f"{via}.sock"), {"op": op, **body}, timeout=10.0)
        except ControlError as exc:
            message = str(exc)
            definite = "not committed within" not in message and (
                "no quorum" in message
                or "refusing" in message
                or "not eligible" in message
                or "no control socket" in message
                or "cannot connect" in message
                or "starting" in message
            )
            return ("refused: " if definite else "uncertain: ") + message
        return "ok"

    def _run_command(self, episode: Episode, command: tuple[str, dict[str, Any]]) -> None:
        text, body = command
        live = self._live() or list(self.group.members)
        via = self.rng.choice(sorted(live))
        if text.startswith("maintenance"):
            episode.maintenance_unknown = True
        episode.command = f"{text} via {via}"
        self._note(episode, f"control {text} via {via}")
        self._event(episode)
        outcome = self._send(via, text, body)
        episode.command_outcome = outcome.split(":")[0]
        self._note(episode, f"control {text} -> {outcome}")
        self._event(episode)
        if outcome == "ok":
            self._apply_flag(text, body)

    def _resolve_command(
        self, episode: Episode, command: tuple[str, dict[str, Any]] | None
    ) -> None:
        """An uncertain outcome (timed out, may still commit) is made definite by re-issuing
        the same idempotent command once the group is whole again."""
        if command is None or not episode.command_outcome.startswith("uncertain"):
            return
        text, body = command
        for _ in range(5):
            time.sleep(self.window)
            outcome = self._send(sorted(self._live())[0], text, body)
            self._note(episode, f"control retry {text} -> {outcome}")
            self._event(episode)
            if outcome == "ok":
                self._apply_flag(text, body)
                return
        episode.violations.append(f"(3) {text} could not be committed after the heal")

    # --- invariant checks ---

    def _vips_checked(self, episode: Episode) -> list[str]:
        if self.flags.maintenance or episode.maintenance_unknown:
            return []
        return list(self.group.vips)

    def _check_fault_phase(self, episode: Episode) -> None:
        start, end = episode.last_event + self.window, episode.heal
        if episode.kind == "health_intermittent":
            self._check_intermittent(episode)
        # A throttled disk stalls its member's Raft thread at unpredictable times during the
        # fault (no fixed start for the window): checked once it is over.
        if episode.majority_ok and end > start and episode.kind != "disk_slow":
            if self._vips_checked(episode):
                self.summary.checks["(1) availability during fault"] += 1
            for vip in self._vips_checked(episode):
                for seg in self.recorder.coverage(vip, start, end):
                    if not seg.announcers and seg.end - seg.start > 0.0:
                        episode.violations.append(
                            f"(1) {vip} announced by nobody for {seg.end - seg.start:.3f}s at "
                            f"{seg.start - episode.inject:+.3f}s (fault phase)"
                        )
                        break
        if episode.minority and end - episode.inject > 0.5:
            self._check_quorum_policy(episode)

    def _check_intermittent(self, episode: Episode) -> None:
        self.summary.checks["(5) intermittent flap: no change"] += 1
        (victim,) = episode.victims
        changes = self.recorder.changes(victim, episode.inject, time.monotonic())
        if changes and not episode.command:
            episode.violations.append(
                f"(5) intermittent check failures on {victim} changed its routes: {changes[:4]}"
            )

    def _check_quorum_policy(self, episode: Episode) -> None:
        delta = 0.3
        for name in episode.minority:
            if name in self.flags.drained:
                continue
            start = episode.inject + delta
            changes = self.recorder.changes(name, start, episode.heal)
            new = [c for c in changes if c[1] == "announce"]
            self.summary.checks[f"(6) quorum loss ({self.policy})"] += 1
            if new:
                episode.violations.append(
                    f"(6) {name} cut off in a minority announced {new[0][2]} at "
                    f"{new[0][0] - episode.inject:+.3f}s"
                )
            if self.policy == "hold":
                gone = [c for c in changes if c[1] == "withdraw"]
                if gone and not episode.command:
                    episode.violations.append(
                        f"(6) hold: {name} withdrew {gone[0][2]} at "
                        f"{gone[0][0] - episode.inject:+.3f}s while cut off and healthy"
                    )
            else:
                # The last report the minority member got committed was sent before the cut:
                # its fence falls at most fence_time after the cut (+ its write to ExaBGP).
                fence_by = episode.inject + self.fence + 0.1
                if episode.heal > fence_by:
                    held = [
                        v
                        for v in self.group.vips
                        if any(
                            b > fence_by
                            for _a, b in self.recorder.member_intervals(name, v, episode.heal)
                        )
                    ]
                    if held:
                        spans = [
                            (round(a - episode.inject, 3), round(b - episode.inject, 3))
                            for v in held
                            for a, b in self.recorder.member_intervals(name, v, episode.heal)
                        ]
                        episode.violations.append(
                            f"(6) withdraw: {name} still announced {held} "
                            f"{fence_by - episode.inject:.2f}s after it was cut off "
                            f"(announced during {spans}, relative to the cut)"
                        )
        if self.policy == "withdraw":
            self._check_single_announcer(episode)

    def _check_single_announcer(self, episode: Episode) -> None:
        """`withdraw` promises at most one announcer: a member cut off in a minority must be
        gone before the majority gives its VIPs to someone else (a make-before-break
        handover the harness started is the one allowed overlap)."""
        self.summary.checks["(6) withdraw: one announcer across the cut"] += 1
        minority = set(episode.minority)
        allowed = self.handover if episode.command else 0.005
        for vip in self.group.vips:
            for seg in self.recorder.coverage(vip, episode.inject, episode.heal):
                crossing = seg.announcers & minority and seg.announcers - minority
                if crossing and seg.end - seg.start > allowed:
                    episode.violations.append(
                        f"(6) withdraw: {vip} announced by {sorted(seg.announcers)} for "
                        f"{seg.end - seg.start:.3f}s at {seg.start - episode.inject:+.3f}s "
                        "across the partition"
                    )
                    break

    def _check_quiet_phase(self, episode: Episode) -> None:
        start, end = episode.last_event + self.window, episode.end
        if end <= start:
            return
        if self._vips_checked(episode):
            self.summary.checks["(1) availability when quiet"] += 1
        else:
            self.summary.checks["(1) not checked: service in maintenance"] += 1
        self.summary.checks["(2) exclusivity when quiet"] += 1
        for vip in self._vips_checked(episode) if not self.flags.maintenance else []:
            for seg in self.recorder.coverage(vip, start, end):
                if not seg.announcers:
                    episode.violations.append(
                        f"(1) {vip} announced by nobody for {seg.end - seg.start:.3f}s at "
                        f"{seg.start - episode.inject:+.3f}s (quiet)"
                    )
                    break
        for vip in self.group.vips:
            for seg in self.recorder.coverage(vip, start, end):
                if len(seg.announcers) > 1 and seg.end - seg.start > self.handover:
                    episode.violations.append(
                        f"(2) {vip} announced by {sorted(seg.announcers)} for "
                        f"{seg.end - seg.start:.3f}s at {seg.start - episode.inject:+.3f}s"
                    )
                    break
        # Measures for the summary: the whole episode, windows included.
        self.summary.checks["(5) changes per fault bounded"] += 1
        for vip in self.group.vips:
            segments = self.recorder.coverage(vip, episode.inject, episode.end)
            episode.max_changes = max(episode.max_changes, len(segments) - 1)
            if not (self.flags.maintenance or episode.maintenance_unknown):
                episode.gap_measured = True
                for seg in segments:
                    if not seg.announcers:
                        episode.worst_gap = max(episode.worst_gap, seg.end - seg.start)
        if episode.max_changes > self.max_changes:
            episode.violations.append(
                f"(5) {episode.max_changes} announcer changes for one VIP in one fault "
                f"(bound {self.max_changes})"
            )

    def _check_flags(self, episode: Episode) -> None:
        self.summary.checks["(3) flags preserved"] += 1
        want = self.flags
        # Every live member must agree once caught up (a member that has just restarted
        # shows an empty state until it has replayed its journal: poll, bounded).
        deadline = time.monotonic() + self.settle_timeout
        while True:
            docs = [self._status([name]) for name in self._live()]
            seen: set[tuple[Any, ...]] = set()
            for doc in docs:
                if doc is None:
                    seen.add(("no status",))
                    continue
                seen.add(
                    (
                        bool(doc["services"]["apex"]["maintenance"]),
                        tuple(sorted(n for n, m in doc["members"].items() if m.get("drained"))),
                        tuple(
                            sorted(
                                (v, d["pinned"]) for v, d in doc["vips"].items() if d.get("pinned")
                            )
                        ),
                    )
                )
            expected: tuple[Any, ...] = (
                want.maintenance,
                tuple(sorted(want.drained)),
                tuple(sorted(want.pins.items())),
            )
            if seen == {expected} or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        if seen != {expected}:
            differs = next(iter(seen - {expected}), ("?", "?", "?"))
            maintenance, drained, pins = (*differs, "?", "?", "?")[:3]
            episode.violations.append(
                f"(3) flags differ: group has maintenance={maintenance} drained={sorted(drained)} "
                f"pins={pins}; committed maintenance={want.maintenance} "
                f"drained={sorted(want.drained)} pins={want.pins}"
            )

    def _check_processes(self, episode: Episode) -> None:
        self.summary.checks["(4) no unexpected exit"] += 1
        for name, member in self.group.members.items():
            if member.proc is not None and member.proc.poll() is not None:
                documented = (
                    episode.kind == "disk_full"
                    and name in episode.victims
                    and member.proc.returncode == 1
                    and DISK_FULL_ERROR in self.group.stderr(name)
                )
                if documented:  # it noticed the full disk late: the documented clean exit
                    self._note(episode, f"{name} exited 1 (state_dir full), restarted")
                else:
                    episode.violations.append(
                        f"(4) {name} exited with code {member.proc.returncode} (not killed)"
                    )
                self.recorder.mark(name, False)
                self._start(name)
                self._wait_settled(self.settle_timeout)


@contextlib.contextmanager
def chaos_group(root: Path, **kwargs: Any) -> Iterator[Chaos]:
    with Chaos(root, **kwargs) as chaos:
        yield chaos


def run_suite(
    runs: list[dict[str, Any]],
    faults: int,
    seed: int,
    log: Callable[[str], None],
    budget: float | None = None,
) -> Summary:
    """`budget`: seconds per run (each run stops injecting when it is spent)."""
    total = Summary(seed=seed, size=0, policy="mixed")
    for i, params in enumerate(runs):
        deadline = None if budget is None else time.monotonic() + budget
        with tempfile.TemporaryDirectory(prefix="raftvip-chaos-") as tmp:
            run_seed = seed * 100 + i
            log(f"== run {i}: seed {run_seed} {params}")
            with Chaos(Path(tmp), seed=run_seed, log=log, **params) as chaos:
                summary = chaos.run(faults, deadline=deadline)
            log(summary.table())
            total.merge(summary)
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos", description=__doc__.split("\n")[0]
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="~2 min: 3 + 5 members (default)")
    mode.add_argument("--long", action="store_true", help=">= 500 faults over 3 and 5 members")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    parser.add_argument("--faults", type=int, default=None, help="faults per run")
    parser.add_argument("--minutes", type=float, default=None, help="stop after this long")
    parser.add_argument("--window", type=float, default=None, help="lease + election bound")
    parser.add_argument("--size", type=int, default=None, help="only groups of this size")
    parser.add_argument("--policy", choices=["hold", "withdraw"], default=None)
    args = parser.parse_args(argv)
    runs: list[dict[str, Any]] = [
        {"size": 3, "policy": "hold"},
        {"size": 5, "policy": "withdraw"},
    ]
    if args.long:
        runs += [{"size": 3, "policy": "withdraw"}, {"size": 5, "policy": "hold"}]
    runs = [
        r for r in runs if args.size in (None, r["size"]) and args.policy in (None, r["policy"])
    ] or [{"size": args.size or 3, "policy": args.policy or "hold"}]
    faults = args.faults or (130 if args.long else 8)
    for run in runs:
        run["window"] = args.window
    budget = args.minutes * 60 / len(runs) if args.minutes else None
    if Firewall.available():
        Firewall.remove_leftovers()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    command = f"python -m tests.chaos {'--long' if args.long else '--quick'} --seed {args.seed}"
    for flag, value in (
        ("--faults", args.faults),
        ("--minutes", args.minutes),
        ("--window", args.window),
        ("--size", args.size),
        ("--policy", args.policy),
    ):
        if value is not None:
            command += f" {flag} {value:g}" if isinstance(value, float) else f" {flag} {value}"
    print(f"# {command}", flush=True)
    summary = run_suite(runs, faults, args.seed, lambda line: print(line, flush=True), budget)
    print(f"\n## summary ({command}; seed {args.seed})")
    print(summary.table())
    return 1 if summary.violations else 0


if __name__ == "__main__":
    sys.exit(main())
