"""raftvip benchmarks, side by side with the alternatives, in one run (a benchmark, not a test).

    python -m tests.bench            # full run (~30 min): regenerates deploy/BENCHMARKS.md
    python -m tests.bench --quick    # smoke run (~7 min): fewer trials, short idle; prints only
    deploy/bench [...]               # the same, with the project's venv

Failover is measured as seen by a real router: ONE BIRD 2 on 127.0.0.1 with every LB's real
ExaBGP 5 peering with it directly (the topology of tests/test_e2e_bgp.py; each LB its own AS,
hold time 3 s, `med metric on` so that MED ranks paths from different LBs as on a single
router with healthcheck). The bench polls BIRD's control socket every ~1.5 ms; a failover is
the time from the fault to BIRD's best path for the victim's VIP leading to another LB.
Three systems run in turn on the same BIRD, the same ExaBGP and the same fault injection:

* raftvip: `raftvip run` as each LB's ExaBGP process (raftvip/testing/group.py configs);
* ExaBGP's own `exabgp-healthcheck` with `--withdraw-on-down`, same interval, fast interval,
  rise and fall; every LB announces every VIP, its own with MED 100, the others 101, 102;
* an ExaZK-like ZooKeeper baseline (tests/exazk_baseline.py) against a real ZooKeeper 3.8
  (raftvip/testing/zk.py), once with kazoo's default session timeout (10 s) and once with the
  shortest the server allows (2 x tickTime = 1 s).

Scale (3/5/7 members x 10/500/2,000 VIPs) runs member processes with ExaBGP-like stubs
(raftvip.testing.group.Group, no health check command) and reports cold-start convergence, failover
of a member owning 1/N of the VIPs, idle CPU and RSS per member, and commit latency.
Benchmarks print figures and never assert. Every process started here is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import importlib.metadata
import math
import os
import platform
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raftvip.config import load_config
from raftvip.control import request
from raftvip.errors import ControlError
from raftvip.exabgp_config import render_exabgp_config
from raftvip.testing.bgplab import Bird, BirdPath, ExaBGP, member_peers, parse_routes
from raftvip.testing.group import Group
from raftvip.testing.wait import free_port, wait_until
from raftvip.testing.zk import TICK_MS, ZooKeeper, zookeeper_available

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = REPO / "deploy" / "BENCHMARKS.md"
ROUTER_AS = 65000
HOLD_TIME = 3  # BIRD <-> every LB: what bounds a hung speaker's stale path
POLL = 0.001  # sleep between two BIRD queries (a query + parse takes ~0.5 ms)
SETTLE_TIMEOUT = 90.0
# Health check of every system in the failover runs (raftvip, healthcheck, ExaZK-like).
INTERVAL, FAST_INTERVAL, RISE, FALL = 0.2, 0.1, 2, 2
LEASE = 1.5
PREEMPT_DELAY = 1.0

TARGETS = {
    "owner crash": "<= 100 ms median, <= 300 ms p99",
    "leader crash": "<= 800 ms median, <= 1500 ms p99",
    "owner hang": f"<= lease + 0.3 s = {(LEASE + 0.3) * 1000:.0f} ms",
    "owner check failure": f"<= fall x fast_interval + 50 ms = "
    f"{(FALL * FAST_INTERVAL + 0.05) * 1000:.0f} ms",
    "drain": "0 ms without a route",
}


def log(text: str = "") -> None:
    print(text, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: p99 of fewer than 100 samples is their maximum."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class Stats:
    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def p99(self) -> float:
        return percentile(self.values, 0.99)

    @property
    def max(self) -> float:
        return max(self.values)


def ms(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "-"
    if seconds >= 10:
        return f"{seconds:.1f} s"
    return f"{seconds * 1000:.0f} ms"


# ------------------------------------------------------------------------ the router


class Router(Bird):
    """BIRD with `med metric on`: MED compared between paths from different LB ASes, as the
    healthcheck and ExaZK set-ups expect of the router they talk to."""

    def render_config(self) -> str:
        return super().render_config().replace("  multihop;\n", "  multihop;\n  med metric on;\n")


@dataclass(frozen=True)
class Sample:
    """One failover trial as BIRD saw it (seconds from the fault)."""

    best: float  # BIRD's best path for the VIP leads to another LB
    other: float | None  # a path via another LB is present (best or not)
    no_route: float  # longest interval without any best path (sampled)
    victim: str


@dataclass
class Testbed:
    """One BIRD, three LBs whose ExaBGP runs raftvip, healthcheck or the ExaZK-like process."""

    root: Path
    group: Group
    bird: Router
    as_of: dict[str, int]
    zk: ZooKeeper | None = None
    mode: str = ""
    zk_timeout: float = 0.0
    speakers: dict[str, ExaBGP] = field(default_factory=dict)
    generation: int = 0
    code: Path | None = None  # raftvip run from this source tree (a baseline), else this one

    @classmethod
    @contextlib.contextmanager
    def running(
        cls,
        root: Path,
        with_zk: bool,
        *,
        takeover_margin: int | None = None,
        hold_time: int = HOLD_TIME,
        trace_routes: bool = False,
    ) -> Iterator[Testbed]:
        """`takeover_margin` (None: the default) and `hold_time` (BIRD's and the members'
        takeover_hold_time); `trace_routes`: BIRD logs every path it imports or removes."""
        root.mkdir(parents=True, exist_ok=True)
        port = free_port("127.0.0.1")
        group = Group(
            root,
            size=3,
            router=("127.0.0.1", port, ROUTER_AS),
            lease=LEASE,
            preempt_delay=PREEMPT_DELAY,
            rise=RISE,
            fall=FALL,
            takeover_margin=takeover_margin,
            hold_time=hold_time,  # the members' takeover_hold_time: BIRD's hold time here
        )
        addresses = {name: m.address for name, m in group.members.items()}
        as_of, peers = member_peers(addresses, port, ROUTER_AS, hold_time=hold_time)
        bird = Router(root / "bird", "127.0.0.1", peers, name="router", trace_routes=trace_routes)
        bed = cls(root, group, bird, as_of)
        try:
            bird.start()
            if with_zk:
                bed.zk = ZooKeeper(root / "zk")
                (root / "zk").mkdir(parents=True, exist_ok=True)
                bed.zk.start()
            yield bed
        finally:
            bed.stop_speakers(wait_routes=False)
            bird.stop()
            if bed.zk is not None:
                bed.zk.kill()

    # --- speakers ---

    def exabgp_config(self, name: str) -> str:
        member = self.group.members[name]
        cfg = load_config(str(member.config))
        if self.mode == "raftvip":
            run = [sys.executable, "-m", "raftvip", "run", "-c", str(member.config)]
            if self.code is not None:
                run = ["/usr/bin/env", f"PYTHONPATH={self.code}", *run]
            return render_exabgp_config(cfg, shlex.join(run))
        if self.mode == "healthcheck":
            command = self._healthcheck_command(name)
            process = "healthcheck-apex"
        else:
            command = self._exazk_command(name)
            process = "exazk-apex"
        cfg = dataclasses.replace(cfg, exabgp=dataclasses.replace(cfg.exabgp, process_name=process))
        return render_exabgp_config(cfg, command)

    def _rotated_vips(self, name: str) -> list[str]:
        """Every VIP, this LB's own first (healthcheck: MED 100, then 101, 102)."""
        names = list(self.group.members)
        index = names.index(name)
        order = names[index:] + names[:index]
        return [self.vip_of(n) for n in order]

    def _healthcheck_command(self, name: str) -> str:
        member = self.group.members[name]
        conf = self.root / name / "healthcheck-apex.conf"
        lines = [
            "name = apex",
            f"interval = {INTERVAL}",
            f"fast-interval = {FAST_INTERVAL}",
            f"rise = {RISE}",
            f"fall = {FALL}",
            f"command = test -f {member.health_file}",
            "withdraw-on-down",
            "no-syslog",
            "no-ip-setup",  # never touch the host's loopback
            *[f"ip = {vip}" for vip in self._rotated_vips(name)],
        ]
        conf.write_text("\n".join(lines) + "\n")
        healthcheck = Path(sys.executable).parent / "exabgp-healthcheck"
        return shlex.join([str(healthcheck), "--config", str(conf)])

    def _exazk_command(self, name: str) -> str:
        assert self.zk is not None
        member = self.group.members[name]
        return shlex.join(
            [
                sys.executable,
                str(REPO / "tests" / "exazk_baseline.py"),
                *["--hosts", self.zk.hosts, "--session-timeout", f"{self.zk_timeout:g}"],
                *["--service", f"apex-{self.generation}", "--vip", self.vip_of(name)],
                *["--vips", ",".join(self.group.vips), "--check-file", str(member.health_file)],
                *["--interval", str(INTERVAL), "--fast-interval", str(FAST_INTERVAL)],
                *["--rise", str(RISE), "--fall", str(FALL)],
            ]
        )

    def start_speaker(self, name: str) -> None:
        workdir = self.root / name
        workdir.mkdir(exist_ok=True)
        speaker = ExaBGP(workdir, self.exabgp_config(name), name=f"exabgp-{self.mode}")
        speaker.start()
        self.speakers[name] = speaker

    def stop_speakers(self, wait_routes: bool = True) -> None:
        for speaker in self.speakers.values():
            with contextlib.suppress(Exception):
                for pid in [p for p in [speaker.pid, *speaker.helper_pids()] if p]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
                speaker.stop()
        self.speakers.clear()
        if wait_routes:
            wait_until(lambda: not any(self.routes().get(v) for v in self.group.vips), 30, 0.05)

    def use(self, mode: str, zk_timeout: float = 0.0) -> None:
        """Replace every LB's ExaBGP by one running `mode`; wait until settled."""
        self.stop_speakers()
        self.mode, self.zk_timeout, self.code = mode, zk_timeout, None
        self.generation += 1  # the ExaZK-like instances use a fresh ZooKeeper path each time
        # The baselines start unhealthy and rise only once every BGP session is up. Started
        # healthy, an ExaZK-like instance up before the others' znodes exist announces their
        # VIPs and withdraws them ~0.1 s later, while its session is coming up; in 2 of 2
        # `--quick` runs one such path then stayed in BIRD (the 1 s baseline never settled).
        early = mode == "raftvip"
        for member in self.group.members.values():
            if early:
                member.health_file.touch()
            else:
                member.health_file.unlink(missing_ok=True)
        if mode == "raftvip":
            shutil.rmtree(self.root / "state", ignore_errors=True)  # a fresh group each time
        for name in self.group.members:
            self.start_speaker(name)
        self.bird.wait_established(timeout=30)
        for member in self.group.members.values():
            member.health_file.touch()
        self.wait_settled()

    # --- what BIRD sees ---

    def routes(self) -> dict[str, list[BirdPath]]:
        """VIP -> paths (BIRD's `show route all`, best path first)."""
        parsed = parse_routes(self.bird.command("show route all"))
        return {prefix.split("/")[0]: paths for prefix, paths in parsed.items()}

    def member_of(self, path: BirdPath) -> str | None:
        for name, asn in self.as_of.items():
            if path.as_path[:1] == (asn,):
                return name
        return None

    def best_member(self, paths: Sequence[BirdPath]) -> str | None:
        best = [p for p in paths if p.best and p.reachable]
        return self.member_of(best[0]) if best else None

    def vip_of(self, name: str) -> str:
        return next(v for v, m in self.group.preferred.items() if m == name)

    def sock(self, name: str) -> str:
        return str(self.root / f"{name}.sock")

    def group_status(self, skip: Sequence[str] = ()) -> dict[str, Any] | None:
        """The status of the first member that answers. ExaBGP runs the members here, not
        the Group harness, so Group.any_status (which skips members it did not start)
        would never find one."""
        for name in self.group.members:
            if name in skip:
                continue
            with contextlib.suppress(ControlError):
                return self.group.status(name, timeout=1.0)
        return None

    def leader(self) -> str:
        doc = wait_until(self.group_status, 30, 0.02, what="a member to answer")
        return str(doc["leader"])

    def settled(self) -> bool:
        return self.unsettled() is None

    def unsettled(self) -> str | None:
        """Why the testbed is not settled (every VIP on its preferred owner, one path each
        or one per LB for healthcheck, the group agreeing), or None."""
        routes = self.routes()
        for vip, owner in self.group.preferred.items():
            paths = routes.get(vip, [])
            best = self.best_member(paths)
            if best != owner:
                return f"router: {vip}'s best path leads to {best}, not {owner}"
            want = len(self.group.members) if self.mode == "healthcheck" else 1
            if len(paths) != want:
                via = ", ".join(str(self.member_of(p)) for p in paths) or "none"
                return f"router: {vip} has {len(paths)} paths (via {via}), not {want}"
        if self.mode != "raftvip":
            return None
        doc = self.group_status()
        if doc is None:
            return "no member answers status"
        if not doc.get("has_quorum") or not doc.get("leader"):
            return f"group: quorum={doc.get('has_quorum')} leader={doc.get('leader')}"
        for vip, member in self.group.preferred.items():
            if doc["vips"][vip]["owner"] != member:
                return f"group: {vip} owned by {doc['vips'][vip]['owner']}, not {member}"
        for name, m in doc["members"].items():
            if not m["alive"] or not all(m["healthy"].values()):
                return f"group: {name} alive={m['alive']} healthy={m['healthy']}"
        return None

    def wait_settled(self) -> None:
        for _ in range(2):  # settled twice, 0.3 s apart: no transient left
            try:
                wait_until(self.settled, SETTLE_TIMEOUT, 0.02)
            except TimeoutError as exc:
                raise TimeoutError(
                    f"not settled after {SETTLE_TIMEOUT:g}s: {self.unsettled()}"
                ) from exc
            time.sleep(0.3)

    # --- faults ---

    def pids(self, name: str) -> list[int]:
        speaker = self.speakers[name]
        return [p for p in [speaker.pid, *speaker.helper_pids()] if p is not None]

    def inject(self, name: str, kind: str) -> float:
        """Break LB `name`; returns the monotonic time of the fault."""
        if kind == "crash":
            pids = self.pids(name)
            for pid in pids:  # frozen first: no respawn, no "shutdown" to the helper
                os.kill(pid, signal.SIGSTOP)
            began = time.monotonic()
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            return began
        if kind == "hang":
            began = time.monotonic()
            for pid in self.pids(name):
                os.kill(pid, signal.SIGSTOP)
            return began
        if kind == "check":
            began = time.monotonic()
            self.group.members[name].health_file.unlink()
            return began
        raise ValueError(kind)

    def heal(self, name: str, kind: str) -> None:
        if kind == "crash":
            speaker = self.speakers.pop(name)
            with contextlib.suppress(Exception):
                speaker.stop(timeout=1.0)  # reap
            self.start_speaker(name)
        elif kind == "hang":
            for pid in self.pids(name):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        elif kind == "check":
            self.group.members[name].health_file.touch()

    def watch(self, vip: str, victim: str, began: float, timeout: float = 60.0) -> Sample:
        """Poll BIRD until its best path for `vip` leads to another LB."""
        other: float | None = None
        gaps = NoRoute()
        while True:
            paths = self.routes().get(vip, [])
            now = time.monotonic() - began
            best = self.best_member(paths)
            gaps.see(now, best is not None)
            if other is None and any(self.member_of(p) not in (None, victim) for p in paths):
                other = now
            if best is not None and best != victim:
                return Sample(now, other, gaps.longest, victim)
            if now > timeout:
                raise TimeoutError(f"{vip} still on {victim} after {timeout:g} s")
            time.sleep(POLL)


@dataclass
class NoRoute:
    """The longest interval, over successive polls of a router, without a best path."""

    longest: float = 0.0
    lost_at: float | None = None

    def see(self, now: float, routed: bool) -> None:
        if not routed:
            self.lost_at = now if self.lost_at is None else self.lost_at
        elif self.lost_at is not None:
            self.longest, self.lost_at = max(self.longest, now - self.lost_at), None


# ------------------------------------------------------------------- failover trials


def failover_trials(bed: Testbed, kind: str, trials: int, label: str) -> list[Sample]:
    """`kind`: owner crash | leader crash | owner hang | owner check failure."""
    fault = {"owner hang": "hang", "owner check failure": "check"}.get(kind, "crash")
    names = list(bed.group.members)
    samples: list[Sample] = []
    phase = random.Random(f"{label}/{kind}")  # the same phases in every run
    for trial in range(trials):
        bed.wait_settled()
        if bed.mode == "raftvip":
            leader = bed.leader()
            others = [n for n in names if n != leader]
            victim = leader if kind == "leader crash" else others[trial % len(others)]
        else:
            victim = names[(trial + 1) % len(names)]
        vip = bed.vip_of(victim)
        # A random phase against the health checks: settling ends right after a check, so a
        # fixed pause would inject every check failure at the same point of the interval
        # (all 20 trials at ~300 ms in one run, ~200 ms in another).
        time.sleep(phase.uniform(0.0, INTERVAL))
        began = bed.inject(victim, fault)
        try:
            sample = bed.watch(vip, victim, began)
        finally:
            bed.heal(victim, fault)
        samples.append(sample)
        log(
            f"  {label:<34} {kind:<20} #{trial + 1:<3} {victim}: best path moved "
            f"{ms(sample.best):>8}, path via another LB {ms(sample.other):>8}"
        )
    return samples


def drain_trials(bed: Testbed, trials: int) -> list[tuple[float, float]]:
    """raftvip drain of an owner: (time until it announces nothing, longest no-route gap)."""
    names = list(bed.group.members)
    results = []
    for trial in range(trials):
        bed.wait_settled()
        leader = bed.leader()
        others = [n for n in names if n != leader]
        victim = others[trial % len(others)]
        vip = bed.vip_of(victim)
        began = time.monotonic()
        request(bed.sock(victim), {"op": "drain", "member": victim, "on": True}, timeout=10)
        gaps = NoRoute()
        while True:
            paths = bed.routes().get(vip, [])
            now = time.monotonic() - began
            best = bed.best_member(paths)
            gaps.see(now, best is not None)
            if best not in (None, victim) and all(bed.member_of(p) != victim for p in paths):
                break
            if now > 30:
                raise TimeoutError(f"drain of {victim} not done after 30 s")
            time.sleep(POLL)
        results.append((now, gaps.longest))
        log(
            f"  {'raftvip':<34} {'drain':<20} #{trial + 1:<3} {victim}: moved in {ms(now):>8}, "
            f"longest interval without a route {gaps.longest * 1000:.1f} ms"
        )
        request(bed.sock(victim), {"op": "drain", "member": victim, "on": False}, timeout=10)
    return results


@dataclass
class FailoverResults:
    raftvip: dict[str, list[Sample]] = field(default_factory=dict)
    healthcheck: list[Sample] = field(default_factory=list)
    exazk: dict[float, dict[str, list[Sample]]] = field(default_factory=dict)
    drain: list[tuple[float, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


RAFTVIP_KINDS = ("owner crash", "leader crash", "owner hang", "owner check failure")


def run_failover(root: Path, trials: int, zk_timeouts: Sequence[float]) -> FailoverResults:
    results = FailoverResults()
    with_zk = bool(zk_timeouts) and zookeeper_available()
    if zk_timeouts and not with_zk:
        results.notes.append("ZooKeeper is not installed: the ExaZK-like baseline was skipped.")

    def system(label: str, body: Callable[[], None]) -> None:
        """One system's rows; a failure there is a note, and the next system still runs."""
        log(f"== {label} on BIRD")
        try:
            body()
        except Exception as exc:  # reported; the other systems keep theirs
            log(f"{label} failed:")
            log("".join(traceback.format_exception(exc)).rstrip())
            results.notes.append(f"{label}: failed, so its rows are missing: {failure(exc)}.")

    def raftvip() -> None:
        bed.use("raftvip")
        for kind in RAFTVIP_KINDS:
            results.raftvip[kind] = failover_trials(bed, kind, trials, "raftvip")
        results.drain = drain_trials(bed, trials)

    def healthcheck() -> None:
        bed.use("healthcheck")
        results.healthcheck = failover_trials(
            bed, "owner check failure", trials, "exabgp-healthcheck --withdraw-on-down"
        )

    def exazk(timeout: float, label: str) -> None:
        bed.use("exazk", zk_timeout=timeout)
        results.exazk[timeout] = {
            kind: failover_trials(bed, kind, trials, label)
            for kind in ("owner crash", "owner hang")
        }

    with Testbed.running(root, with_zk) as bed:
        system("raftvip", raftvip)
        system("ExaBGP healthcheck", healthcheck)
        for timeout in zk_timeouts if with_zk else ():
            label = f"ExaZK-like, session {timeout:g} s"
            system(label, functools.partial(exazk, timeout, label))
        bed.stop_speakers()
    return results


# ---------------------------------------------------------------------------- scale


@dataclass
class ScaleResult:
    members: int
    vips: int
    cold_start: float
    failover: list[float]
    moved: int  # VIPs the killed member owned
    idle_cpu: list[float]  # % of a core, per member
    rss_mb: list[float]
    commit: list[float]  # seconds, from a follower


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def announcer_counts(group: Group) -> tuple[Counter[str], dict[str, set[str]]]:
    held = {
        name: m.stub.snapshot()
        for name, m in group.members.items()
        if m.stub is not None and m.running and not m.stopped
    }
    counts: Counter[str] = Counter()
    for vips in held.values():
        counts.update(vips)
    return counts, held


def converged(group: Group) -> bool:
    counts, _ = announcer_counts(group)
    return all(counts[v] == 1 for v in group.vips)


def scale_settled(group: Group) -> bool:
    """Every VIP has exactly one announcer, its preferred owner where it has one."""
    counts, held = announcer_counts(group)
    if any(counts[v] != 1 for v in group.vips):
        return False
    return all(vip in held.get(owner, ()) for vip, owner in group.preferred.items())


def taken_over(group: Group, victim: str, vips: set[str]) -> bool:
    """Every one of `vips` is announced by a member other than `victim`."""
    _, held = announcer_counts(group)
    elsewhere: set[str] = set().union(*(v for n, v in held.items() if n != victim))
    return vips <= elsewhere


def scale_config(root: Path, members: int, vips: int, trials: int, idle: float) -> ScaleResult:
    group = Group(
        root,
        size=members,
        vips_per_member=vips // members,
        extra_vips=vips - members * (vips // members),
        check=False,
        lease=LEASE,
        preempt_delay=PREEMPT_DELAY,
    )
    try:
        start = time.monotonic()
        group.start_all()
        wait_until(lambda: converged(group), 120, 0.01)
        cold = time.monotonic() - start  # from the processes' start
        failovers: list[float] = []
        moved = 0
        names = list(group.members)
        for trial in range(trials):
            wait_until(lambda: scale_settled(group), 120, 0.05)
            time.sleep(0.5)
            leader = status_of(group)["leader"]
            others = [n for n in names if n != leader]
            victim = others[trial % len(others)]
            victim_stub = group.members[victim].stub
            assert victim_stub is not None
            mine = victim_stub.snapshot()
            moved = len(mine)
            t0 = time.monotonic()
            group.kill(victim)

            wait_until(functools.partial(taken_over, group, victim, mine), 60, 0.002)
            last = max(first_announce(group, vip, victim, t0) for vip in mine)
            failovers.append(last - t0)
            log(
                f"  scale {members} x {vips:<5} failover #{trial + 1}: {victim} "
                f"({len(mine)} VIPs) -> {ms(last - t0)}"
            )
            group.start(victim)
        wait_until(lambda: scale_settled(group), 120, 0.05)
        leader = status_of(group)["leader"]
        follower = next(n for n in names if n != leader)
        commit = request(
            str(group.root / f"{follower}.sock"),
            {"op": "commit_latency", "samples": 200},
            timeout=120,
        )
        time.sleep(2.0)
        pids = {n: m.proc.pid for n, m in group.members.items() if m.proc is not None}
        cpu0 = {n: proc_cpu_seconds(p) for n, p in pids.items()}
        t0 = time.monotonic()
        time.sleep(idle)
        elapsed = time.monotonic() - t0
        cpu = [(proc_cpu_seconds(p) - cpu0[n]) / elapsed * 100 for n, p in pids.items()]
        rss = [proc_rss_mb(p) for p in pids.values()]
        log(
            f"  scale {members} x {vips:<5} cold start {ms(cold)}, idle CPU "
            f"{statistics.mean(cpu):.2f} % (max {max(cpu):.2f} %), RSS max {max(rss):.1f} MB, "
            f"commit median {statistics.median(commit) * 1000:.2f} ms"
        )
        return ScaleResult(members, vips, cold, failovers, moved, cpu, rss, list(commit))
    finally:
        group.close()


def status_of(group: Group) -> dict[str, Any]:
    for name, m in group.members.items():
        if m.running and not m.stopped:
            with contextlib.suppress(Exception):
                doc = group.status(name, timeout=5)
                if doc.get("leader"):
                    return doc
    raise RuntimeError("no member knows a leader")


def first_announce(group: Group, vip: str, victim: str, since: float) -> float:
    best = math.inf
    for name, member in group.members.items():
        if name == victim:
            continue
        for stub in member.history:
            with stub.lock:
                for change in stub.changes:
                    if change.vip == vip and change.action == "announce" and change.time >= since:
                        best = min(best, change.time)
                        break
    return best


def run_scale(
    root: Path, sizes: Sequence[int], counts: Sequence[int], trials: int, idle: float
) -> list[ScaleResult]:
    results = []
    for members in sizes:
        for vips in counts:
            log(f"== scale: {members} members x {vips} VIPs")
            where = root / f"scale-{members}x{vips}"
            where.mkdir(parents=True)
            results.append(scale_config(where, members, vips, trials, idle))
    return results


# --------------------------------------------------------------------------- report


def _version(command: Sequence[str], pattern: str) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return "?"
    match = re.search(pattern, out.stdout + out.stderr)
    return match.group(1) if match else "?"


def _dist(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def machine() -> list[str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    os_name = "?"
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    bird = shutil.which("bird") or "/usr/sbin/bird"
    zookeeper = _version(["dpkg-query", "-W", "-f", "${Version}", "zookeeper"], r"(\S+)")
    bird_version = _version([bird, "--version"], r"BIRD version (\S+)")
    return [
        f"- machine: {os.cpu_count()} CPUs ({cpu}), {mem} RAM, {os_name}, "
        f"Linux {platform.release()}",
        f"- versions: Python {platform.python_version()}, raftvip {_dist('raftvip')}, "
        f"pysyncobj {_dist('pysyncobj')}, ExaBGP {_dist('exabgp')}, "
        f"BIRD {bird_version}, "
        f"ZooKeeper {zookeeper}, kazoo {_dist('kazoo')}, cryptography {_dist('cryptography')}",
    ]


def _commit() -> str:
    """The commit measured (and whether the tree had changes), so a figure can be traced."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"commit {head}" + (" with uncommitted changes" if dirty else "")


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _ratio(ours: float, theirs: float) -> str:
    if theirs <= 0:
        return "-"
    ratio = ours / theirs
    return f"{ratio:.3f}" if ratio < 0.1 else f"{ratio:.2f}"


def failover_tables(res: FailoverResults) -> list[str]:
    lines = [
        "### Failover as seen by the router",
        "",
        "Time from the fault to BIRD's best path for the victim's VIP leading to another LB "
        "(median / p99 / max; p99 is the nearest rank, so the maximum below 100 trials). "
        "For a hang, the second line is the time until a path via the new owner reached BIRD "
        "(the system moved the VIP) while the hung speaker's stale path may still be best "
        f"until BIRD's hold timer ({HOLD_TIME} s) expires.",
        "",
        _row(
            [
                "fault",
                "n",
                "raftvip median",
                "p99",
                "max",
                "target",
                "baseline",
                "baseline median",
                "p99",
                "max",
                "ratio raftvip/baseline (median, p99)",
            ]
        ),
        _row(["---", "---:", "---:", "---:", "---:", "---", "---", "---:", "---:", "---:", "---:"]),
    ]

    def add(kind: str, ours: Stats, target: str, base: str, theirs: Stats | None) -> None:
        cells = [kind, str(len(ours.values)), ms(ours.median), ms(ours.p99), ms(ours.max), target]
        if theirs is None:
            cells += [base, "-", "-", "-", "-"]
        else:
            cells += [
                base,
                ms(theirs.median),
                ms(theirs.p99),
                ms(theirs.max),
                f"{_ratio(ours.median, theirs.median)}, {_ratio(ours.p99, theirs.p99)}",
            ]
        lines.append(_row(cells))

    def zk(timeout: float, kind: str, other: bool = False) -> Stats | None:
        samples = res.exazk.get(timeout, {}).get(kind)
        if not samples:
            return None
        return Stats([(s.other if other and s.other is not None else s.best) for s in samples])

    for kind in RAFTVIP_KINDS:
        samples = res.raftvip.get(kind)
        if not samples:
            continue
        best = Stats([s.best for s in samples])
        if kind == "owner check failure":
            hc = Stats([s.best for s in res.healthcheck]) if res.healthcheck else None
            add(kind, best, TARGETS[kind], "ExaBGP healthcheck --withdraw-on-down", hc)
            continue
        zk_kind = "owner hang" if kind == "owner hang" else "owner crash"
        name = kind + (": router moved" if kind == "owner hang" else "")
        timeouts: list[float | None] = [*sorted(res.exazk)] or [None]
        for timeout in timeouts:
            base = "-" if timeout is None else f"ExaZK-like, session {timeout:g} s"
            if kind == "leader crash" and timeout is not None:
                base += " (no leader among instances: = owner crash)"
            add(name, best, TARGETS[kind], base, None if timeout is None else zk(timeout, zk_kind))
        if kind == "owner hang":
            other = Stats([s.other if s.other is not None else s.best for s in samples])
            for timeout in timeouts:
                base = "-" if timeout is None else f"ExaZK-like, session {timeout:g} s"
                add(
                    "owner hang: VIP moved (path via new owner present)",
                    other,
                    TARGETS[kind],
                    base,
                    None if timeout is None else zk(timeout, zk_kind, other=True),
                )
    if res.drain:
        took = Stats([d[0] for d in res.drain])
        gaps = Stats([d[1] for d in res.drain])
        lines.append(
            _row(
                [
                    "drain of an owner: longest interval without a route",
                    str(len(gaps.values)),
                    ms(gaps.median),
                    ms(gaps.p99),
                    ms(gaps.max),
                    TARGETS["drain"],
                    f"(drain completed in {ms(took.median)} median, {ms(took.max)} max)",
                    "-",
                    "-",
                    "-",
                    "-",
                ]
            )
        )
    no_route = [s.no_route for v in res.raftvip.values() for s in v]
    if no_route:
        lines += [
            "",
            "raftvip without backup paths: after a crash BIRD drops the dead speaker's path at "
            "once and holds no route until the new owner's announcement arrives; the longest "
            f"such interval over every raftvip trial above was {ms(max(no_route))}.",
        ]
    return lines


def scale_table(results: Sequence[ScaleResult]) -> list[str]:
    lines = [
        "### Scale (member processes with ExaBGP-like stubs, no health check command)",
        "",
        _row(
            [
                "members",
                "VIPs",
                "cold start to one announcer per VIP",
                "failover of 1/N of the VIPs: median",
                "max",
                "VIPs moved",
                "idle CPU per member: mean",
                "max",
                "RSS per member: max",
                "commit latency: median",
                "p99",
            ]
        ),
        _row(["---:"] * 11),
    ]
    for r in results:
        f = Stats(r.failover) if r.failover else None
        lines.append(
            _row(
                [
                    str(r.members),
                    str(r.vips),
                    ms(r.cold_start),
                    ms(f.median) if f else "-",
                    ms(f.max) if f else "-",
                    str(r.moved),
                    f"{statistics.mean(r.idle_cpu):.2f} %",
                    f"{max(r.idle_cpu):.2f} %",
                    f"{max(r.rss_mb):.1f} MB",
                    f"{statistics.median(r.commit) * 1000:.2f} ms",
                    f"{percentile(r.commit, 0.99) * 1000:.2f} ms",
                ]
            )
        )
    by = {(r.members, r.vips): r for r in results}
    big, small = by.get((7, 2000)), by.get((7, 10))
    if big and small and big.failover and small.failover:
        extra = statistics.median(big.failover) - statistics.median(small.failover)
        lines += [
            "",
            f"7 x 2,000 VIPs vs 7 x 10: failover {ms(extra)} more (median; target <= 200 ms), "
            f"idle CPU {max(big.idle_cpu):.2f} % of a core at most (target < 1 %), "
            f"RSS {max(big.rss_mb):.1f} MB at most (target < 60 MB).",
        ]
    return lines


TITLES = {
    "failover": "Failover as seen by the router",
    "scale": "Scale",
    "lifecycle": "Starts, stops and restarts",
    "takeover": "Takeover after a hang",
    "returns": "Returning members",
    "idle": "Idle CPU",
}


def part_lines(part: Part, out: Path | None) -> list[str]:
    if part.error is not None:
        return [
            f"### {TITLES.get(part.name, part.name)}",
            "",
            f"**This part failed** after {part.seconds / 60:.1f} min, so it has no figures "
            f"here (the other parts are unaffected): {part.error}. The run's log has the "
            "traceback.",
        ]
    if part.name == "failover":
        lines = failover_tables(part.result)
        lines += [f"- {note}" for note in part.result.notes]
        if out is not None:
            lines += ["", *failover_picture(part.result, out)]
        return lines
    if part.name == "scale":
        return scale_table(part.result)
    if part.name == "lifecycle":
        from tests.bench_lifecycle import lifecycle_table

        return lifecycle_table(part.result)
    if part.name == "returns":
        from tests.bench_returns import returns_table

        return returns_table(part.result)
    if part.name == "idle":
        from tests.bench_idle import IDLE_NOTES, idle_table

        return ["### Idle CPU", "", *idle_table(part.result), "", *[f"- {n}" for n in IDLE_NOTES]]
    if part.name == "takeover":
        from tests.bench_takeover import takeover_table

        return [
            "### Takeover after a hang (stale path vs new path)",
            "",
            *takeover_table(part.result),
        ]
    raise ValueError(part.name)


def render(
    args: argparse.Namespace,
    parts: Sequence[Part],
    started: datetime.datetime,
    seconds: float,
    out: Path | None = None,
) -> str:
    lines = [
        "# raftvip benchmarks",
        "",
        "Generated by `" + args.command_line + "` (tests/bench.py; do not edit by hand).",
        "",
        f"- date: {started.strftime('%Y-%m-%d %H:%M %Z').strip()} (took {seconds / 60:.0f} min; "
        f"load average at the start {args.load_at_start}, at the end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}: other work on the machine skews "
        "the timings)",
        *machine(),
        f"- code: {getattr(args, 'commit', None) or _commit()} (at the start of the run)",
        f"- failover set-up: 3 LBs, each a real ExaBGP peering with one BIRD on 127.0.0.1 (hold "
        f"time {HOLD_TIME} s, `med metric on`); health check every {INTERVAL:g} s, "
        f"{FAST_INTERVAL:g} s while rising/falling, rise {RISE}, fall {FALL} (raftvip, "
        f"healthcheck and the ExaZK-like process alike); raftvip lease {LEASE:g} s, "
        f"preempt_delay {PREEMPT_DELAY:g} s, default [raft] timings; ZooKeeper tickTime "
        f"{TICK_MS} ms; BIRD polled every ~{POLL * 1000 + 0.5:.1f} ms.",
        "- faults: crash = SIGSTOP then SIGKILL of the LB's ExaBGP and its process (by PID; "
        "the helper has a process group of its own); hang = SIGSTOP of both; check failure = "
        "the health file removed; owner = a member that is not the Raft leader; the victim "
        "rotates.",
        "",
    ]
    for part in parts:
        lines += part_lines(part, out)
        lines.append("")
    lines += NOTES
    return "\n".join(lines) + "\n"


def failover_series(res: FailoverResults) -> dict[str, dict[str, list[float]]]:
    """fault -> system -> failover times in s (BIRD's best path moved), for the picture."""
    series: dict[str, dict[str, list[float]]] = {}
    for kind in RAFTVIP_KINDS:
        samples = res.raftvip.get(kind)
        if samples:
            series.setdefault(kind, {})["raftvip"] = [s.best for s in samples]
    if res.healthcheck:
        series.setdefault("owner check failure", {})["ExaBGP healthcheck"] = [
            s.best for s in res.healthcheck
        ]
    for timeout, kinds in sorted(res.exazk.items()):
        for kind, samples in kinds.items():
            if samples:
                label = f"ExaZK-like {timeout:g} s"
                series.setdefault(kind, {})[label] = [s.best for s in samples]
    return series


def failover_picture(res: FailoverResults, out: Path) -> list[str]:
    """Draw the failover distributions next to `out`; the markdown that embeds them."""
    series = failover_series(res)
    if not series:
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["(no picture: matplotlib is not installed; `pip install -e .[bench]`)"]
    png = out.with_name(out.stem.lower() + "-failover.png")
    systems = sorted({name for kinds in series.values() for name in kinds}, key=_system_order)
    faults = [k for k in (*RAFTVIP_KINDS, *series) if k in series]
    faults = list(dict.fromkeys(faults))
    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=100)
    width = 0.8 / len(systems)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, system in enumerate(systems):
        positions, data = [], []
        for j, fault in enumerate(faults):
            values = series[fault].get(system)
            if values:
                positions.append(j - 0.4 + width * (i + 0.5))
                data.append([max(v, 1e-4) * 1000 for v in values])
        if not data:
            continue
        colour = colours[i % len(colours)]
        parts = ax.boxplot(
            data,
            positions=positions,
            widths=width * 0.85,
            patch_artist=True,
            showfliers=True,
            manage_ticks=False,
        )
        for box in parts["boxes"]:
            box.set_facecolor(colour)
            box.set_alpha(0.6)
        ax.plot([], [], color=colour, linewidth=8, alpha=0.6, label=system)
    ax.set_yscale("log")
    ax.set_ylabel("failover: fault to BIRD's best path moved (ms, log scale)")
    ax.set_xticks(range(len(faults)))
    ax.set_xticklabels(faults)
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title("Failover per fault: raftvip and the baselines on the same BIRD")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return [f"![Failover time per fault, raftvip and each baseline]({png.name})"]


def _system_order(name: str) -> tuple[int, str]:
    return (0 if name == "raftvip" else 1 if "healthcheck" in name else 2, name)


NOTES = [
    "### Notes",
    "",
    "- **Owner crash.** BIRD drops the dead speaker's path within a few ms (its TCP session "
    "closes); the leader sees the Raft link close, waits `disconnect_grace` (30 ms), expires "
    "the member and commits the new owner, whose raftvip prints `announce`. With "
    "`backup_prepend` the router falls back to a standby path in milliseconds instead "
    "(tests/test_lab.py::test_backup_paths_at_the_aggregation_router).",
    "- **Leader crash.** A Raft election comes first (election timeout 0.31-0.5 s after the "
    "last heartbeat), then the new leader expires the old one at once.",
    "- **Hang.** Only the lease (1.5 s) detects a stopped member; raftvip moves the VIP after "
    "~1.1 s. The hung speaker's path stays in BIRD until the hold timer. Without "
    "`takeover_margin` (0), when that stale path wins the tie-break it stays best, so "
    '"router moved" is bounded by the hold time. With the default margin (1) owners announce '
    "one extra prepend of their own AS in steady state and a takeover omits it, so the new "
    "owner's path is shorter and best at once; it returns to the steady form in place after "
    "the routers' hold time (the takeover table above; the failover table uses the default).",
    "- **ExaZK-like baseline.** A crashed or hung instance's znode goes only when ZooKeeper "
    "expires its session, so failover is bounded by the session timeout (10 s kazoo default; "
    "1 s at least with tickTime 500 ms); survivors announce with MED 200, so a hung "
    "instance's stale MED-100 path also stays best until the hold timer. ExaZK also withdraws "
    "everything while ZooKeeper is unreachable, which raftvip never does.",
    "- **Idle CPU.** See the idle CPU part above (its notes: what costs CPU, each lever "
    "measured). Idle CPU is utime + stime from /proc/<pid>/stat over the window; all members "
    "and the bench's stub threads share the machine.",
    "- **Commit latency** is one report (a health report) proposed by a follower until applied "
    "there (control op `commit_latency`, 200 samples): a round trip to the leader, "
    "replication to a majority, and the commit index coming back.",
]


# ----------------------------------------------------------------------------- main


@dataclass
class Part:
    """One part of the run: its figures, or why it failed (the other parts keep theirs)."""

    name: str
    result: Any = None
    error: str | None = None
    seconds: float = 0.0


def failure(exc: BaseException) -> str:
    """What went wrong, in one line: the exception and where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    if frames:
        last = frames[-1]
        where = f" (at {Path(last.filename).name}:{last.lineno} in {last.name})"
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message}{where}" if message else type(exc).__name__ + where


def run_part(name: str, body: Callable[[], Any]) -> Part:
    """Run one part; a failure is logged with its traceback and kept as a reason."""
    began = time.monotonic()
    try:
        result = body()
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # reported; the other parts go on
        log(f"part {name!r} failed:")
        log("".join(traceback.format_exception(exc)).rstrip())
        return Part(name, error=failure(exc), seconds=time.monotonic() - began)
    return Part(name, result=result, seconds=time.monotonic() - began)


PARTS = ("failover", "takeover", "returns", "idle", "scale", "lifecycle")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 trials, short idle")
    parser.add_argument("--trials", type=int, help="failover trials per row (default 20)")
    parser.add_argument("--scale-trials", type=int, help="failover trials per scale config")
    parser.add_argument("--idle-seconds", type=float, help="idle CPU window (default 60)")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help="comma-separated: " + ", ".join(PARTS),
    )
    parser.add_argument(
        "--zk-timeouts",
        default=f"10,{2 * TICK_MS / 1000:g}",
        help="ExaZK-like session timeouts in s ('' to skip ZooKeeper)",
    )
    parser.add_argument("--members", default="3,5,7")
    parser.add_argument("--vips", default="10,500,2000")
    parser.add_argument(
        "--out",
        type=Path,
        help=f"markdown output (default: {BENCHMARKS_MD.relative_to(REPO)} on a full run of "
        "every part, else none)",
    )
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"--parts: unknown part {', '.join(unknown)} (known: {', '.join(PARTS)})")
    args.command_line = shlex.join(["python", "-m", "tests.bench", *(argv or sys.argv[1:])])
    trials = args.trials or (3 if args.quick else 20)
    scale_trials = args.scale_trials or (1 if args.quick else 5)
    idle = args.idle_seconds or (5.0 if args.quick else 60.0)
    complete = not args.quick and set(PARTS) <= set(parts)
    out = args.out or (BENCHMARKS_MD if complete else None)
    zk_timeouts = [float(t) for t in args.zk_timeouts.split(",") if t.strip()]
    args.load_at_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    args.commit = _commit()
    started = datetime.datetime.now(datetime.UTC)
    began = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="raftvip-bench-"))
    log(f"# raftvip benchmarks: {args.command_line}; files in {root}")

    def lifecycle() -> Any:
        from tests.bench_lifecycle import run_lifecycle

        log("== starts, stops and restarts on BIRD")
        return run_lifecycle(root, 2 if args.quick else 5)

    def takeover() -> Any:
        from tests.bench_takeover import run_takeover

        log("== takeover after a hang on BIRD (hold time 9 s)")
        return run_takeover(root / "takeover", 2 if args.quick else 10)

    def returns() -> Any:
        from tests.bench_returns import run_returns

        log("== returning members (a follower cut off for 3 s), with and without PreVote")
        return run_returns(root / "returns", 5 if args.quick else 20)

    def idle_part() -> Any:
        from tests.bench_idle import run_idle

        log("== idle CPU beside bare pysyncobj and ExaBGP healthcheck")
        sizes = [int(m) for m in args.members.split(",")]
        return run_idle(root / "idle", sizes, min(idle, 30.0), repeats=1 if args.quick else 3)

    bodies: dict[str, Callable[[], Any]] = {
        "failover": lambda: run_failover(root / "failover", trials, zk_timeouts),
        "scale": lambda: run_scale(
            root,
            [int(m) for m in args.members.split(",")],
            [int(v) for v in args.vips.split(",")],
            scale_trials,
            idle,
        ),
        "lifecycle": lifecycle,
        "takeover": takeover,
        "returns": returns,
        "idle": idle_part,
    }
    done: list[Part] = []
    try:
        for name in parts:
            done.append(run_part(name, bodies[name]))
    except KeyboardInterrupt:
        log("interrupted: every process started here was stopped")
        return 130
    text = render(args, done, started, time.monotonic() - began, out)
    log("")
    log(text)
    if out is not None:
        out.write_text(text)
        log(f"written to {out}")
    shutil.rmtree(root, ignore_errors=True)
    failed = [p.name for p in done if p.error is not None]
    if failed:
        log(f"failed parts: {', '.join(failed)} (the others' figures are above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
