"""The raftvip lab: 3 racks (LB + ToR), an aggregation router, all on loopback addresses.

    deploy/lab up [--mode raftvip|healthcheck] [--backup-prepend N]   start it and print it
    deploy/lab status                             the group and the aggregation router's table
    deploy/lab fail lb2 crash|hang|check          a fault, and the failover seen by the network
    deploy/lab heal lb2                           repair it, and the time the VIP took to return
    deploy/lab seed                               ExaBGP healthcheck vs raftvip, side by side
    deploy/lab bench --trials 10                  failover median / max per fault kind
    deploy/lab stop lb2 [--no-leave]              a planned stop (raftvip leave + SIGTERM)
    deploy/lab restart lb2 [--kill]               raftvip replaced in place (an upgrade)
    deploy/lab lifecycle --trials 5               both, measured, side by side with before
    deploy/lab reload [--back]                    a config change rolled out LB by LB, watched
    deploy/lab down                               stop everything the lab started

Rack k: LB `lbk` on 127.0.1.k (AS 6501k: a real ExaBGP whose `process` is `raftvip run`, Raft
port 7801, a tiny HTTP health server on port 8080), ToR BIRD `tork` on 127.0.2.k (AS 6510k),
and one aggregation BIRD `agg` on 127.0.3.1 (AS 65000) peering with the three ToRs: that is
where "the network" looks. Processes run detached in their own sessions, their logs and configs
live in the lab directory (default <repo>/.lab), and `state.json` there records every PID (with
its start time, so a recycled PID is never signalled). Nothing is added to the host: no address
(127.0.0.0/8 is all on `lo` already), no namespace, no iptables rule, no kernel route.

The BGP building blocks (Bird, BirdPeer, ExaBGP, wait_until) are the test harness's
(raftvip/testing/bgplab.py); the ExaBGP configs come from raftvip's own `render_exabgp_config`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import errno
import http.server
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raftvip.config import load_config
from raftvip.control import request
from raftvip.core.status import render_status
from raftvip.errors import RaftvipError
from raftvip.exabgp_config import default_run_command, render_exabgp_config
from raftvip.testing.bgplab import Bird, BirdPath, BirdPeer, ExaBGP, LabError, exabgp_binary
from raftvip.testing.routewatch import RouteWatch
from raftvip.testing.wait import WaitTimeout, wait_until

REPO = Path(__file__).resolve().parent.parent
MODES = ("raftvip", "healthcheck")
FAULTS = ("crash", "hang", "check")
SERVICE = "apex"
STATE_FILE = "state.json"
WAIT = 30.0  # bound for any convergence the lab waits for
POLL = 0.002  # aggregation-router poll period while timing a failover
STOP_GRACE = 2.0  # SIGTERM -> SIGKILL


def out(text: str = "") -> None:
    """The controller's terminal output (the lab processes log to files)."""
    print(text, flush=True)


# ------------------------------------------------------------------------------- topology


@dataclass
class Planned:
    """A planned stop or restart as the aggregation router saw it."""

    lb: str
    what: str  # "leave + SIGTERM", "SIGTERM", "raftvip restart", "helper SIGTERM"
    vip: str
    dark: float  # longest interval without a best path for `vip`, seconds
    moves: int  # best-path changes from one LB to another, every VIP
    owners: list[str]  # the LBs that carried `vip`'s best path, in order
    samples: int  # aggregation-router polls taken
    helper: tuple[int, int] | None = None  # a restart: the helper's pid before and after


@dataclass(frozen=True)
class Topology:
    """Addresses and AS numbers: `<prefix>.1.k` LB k, `<prefix>.2.k` ToR k, `<prefix>.3.1` agg."""

    prefix: str = "127.0"
    racks: int = 3
    bgp_port: int = 179
    raft_port: int = 7801
    health_port: int = 8080
    agg_as: int = 65000
    hold_time: int = 3  # LB <-> ToR: a hung LB's routes go when this expires
    # service.announce.backup_prepend of every LB: > 0 = non-owners announce prepended
    # standby paths, so the aggregation router holds one best path plus backups per VIP.
    backup_prepend: int = 0
    # service.announce.takeover_margin of every LB: owners' steady paths repeat the LB AS
    # this many more times; a takeover after a hang leaves them out (0: the lab's paths stay
    # ToR AS, LB AS, as documented in README-lab.md).
    takeover_margin: int = 0

    def __post_init__(self) -> None:
        octets = self.prefix.split(".")
        if len(octets) != 2 or octets[0] != "127" or not all(o.isdigit() for o in octets):
            raise ValueError(f"prefix {self.prefix!r}: must be 127.N (loopback only)")
        if not 0 <= self.backup_prepend <= 16:
            raise ValueError(f"backup_prepend {self.backup_prepend}: must be 0..16")
        if not 3 <= self.hold_time <= 65535:
            raise ValueError(f"hold_time {self.hold_time}: must be 3..65535")
        if not 0 <= self.takeover_margin <= 16:
            raise ValueError(f"takeover_margin {self.takeover_margin}: must be 0..16")
        if not 1 <= self.racks <= 9:
            raise ValueError(f"racks: 1..9, got {self.racks}")

    @property
    def rack_numbers(self) -> range:
        return range(1, self.racks + 1)

    def lb(self, rack: int) -> str:
        return f"lb{rack}"

    def lb_address(self, rack: int) -> str:
        return f"{self.prefix}.1.{rack}"

    def tor_address(self, rack: int) -> str:
        return f"{self.prefix}.2.{rack}"

    @property
    def agg_address(self) -> str:
        return f"{self.prefix}.3.1"

    def lb_as(self, rack: int) -> int:
        return 65010 + rack

    def tor_as(self, rack: int) -> int:
        return 65100 + rack

    def vip(self, rack: int) -> str:
        """The VIP that LB `rack` is preferred for (ExaZK's auth-ip)."""
        return f"10.20.255.{rack}"

    @property
    def vips(self) -> list[str]:
        return [self.vip(rack) for rack in self.rack_numbers]

    def rack_of(self, lb: str) -> int:
        if lb.startswith("lb") and lb[2:].isdigit() and int(lb[2:]) in self.rack_numbers:
            return int(lb[2:])
        raise LabError(f"no LB named {lb!r}: the lab has {', '.join(self.lb_names)}")

    @property
    def lb_names(self) -> list[str]:
        return [self.lb(rack) for rack in self.rack_numbers]

    def lb_of_path(self, path: BirdPath) -> str | None:
        """Which LB a path at the aggregation router leads to: AS path = ToR AS, LB AS (a
        backup path repeats the LB AS `backup_prepend` more times)."""
        for rack in self.rack_numbers:
            tor, lb = self.tor_as(rack), self.lb_as(rack)
            if (
                len(path.as_path) >= 2
                and path.as_path[0] == tor
                and all(asn == lb for asn in path.as_path[1:])
            ):
                return self.lb(rack)
        return None

    def is_backup(self, path: BirdPath) -> bool:
        """A prepended standby path (the LB does not own the VIP), not an owner's path (ToR
        AS, LB AS, and `takeover_margin` more LB AS in the steady form)."""
        return len(path.as_path) > 2 + self.takeover_margin

    def listeners(self) -> list[tuple[str, int, str]]:
        """Every (address, port) the lab listens on, with what listens there."""
        needed = [(self.agg_address, self.bgp_port, "BGP of the aggregation BIRD")]
        for rack in self.rack_numbers:
            needed.append((self.tor_address(rack), self.bgp_port, f"BGP of ToR BIRD tor{rack}"))
            needed.append((self.lb_address(rack), self.raft_port, f"Raft port of lb{rack}"))
            needed.append((self.lb_address(rack), self.health_port, f"health server of lb{rack}"))
        return needed


def check_ports(topology: Topology) -> None:
    """LabError naming the first (address, port) that is taken."""
    for address, port, what in topology.listeners():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As the daemons do: a connection in TIME_WAIT does not block a new listener.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise LabError(
                        f"{address}:{port} ({what}) is already in use: another lab or a BGP "
                        f"daemon? see `ss -ltnp 'sport = :{port}'`"
                    ) from None
                if exc.errno == errno.EACCES:
                    raise LabError(
                        f"{address}:{port} ({what}): permission denied; ports below 1024 "
                        "need root (sudo deploy/lab ...)"
                    ) from None
                raise LabError(f"{address}:{port} ({what}): cannot bind: {exc}") from None


# ------------------------------------------------------------------ service apex's layout


@dataclass(frozen=True)
class Layout:
    """Service apex as an LB's raftvip.toml has it: the lab's own (`up`) or the one the
    `reload` step rolls out."""

    vips: tuple[str, ...]
    preferred: tuple[tuple[str, str], ...]  # (VIP, LB), in config order
    med: int
    check_by_command: bool  # False: `http = URL`; True: the same GET by curl, a `command`


def lab_layout(t: Topology) -> Layout:
    """What `up` writes: every VIP, 10.20.255.k preferring lbk, MED 100, an HTTP check."""
    return Layout(
        vips=tuple(t.vips),
        preferred=tuple((t.vip(rack), t.lb(rack)) for rack in t.rack_numbers),
        med=100,
        check_by_command=False,
    )


BEFORE = "before the roll-out"  # the label of a roll-out's first stage
# After an LB's reload, the time its new check gets to fail before the next LB is reloaded:
# the lab's check (interval 0.2 s, fast_interval 0.1 s, timeout 0.2 s) needs at most about
# 0.7 s for `fall` (2) failures, then the group hears of it.
CHECK_DECIDES = 1.2
RELOAD_ADDED_VIP = "10.20.255.10"  # beside 10.20.255.1-9 (rack k's VIP is 10.20.255.k)
RELOAD_MED = 200


def reload_layout(t: Topology) -> Layout:
    """The lab's layout after `deploy/lab reload`: the last rack's VIP removed, a VIP added
    that prefers lb1 (the LB reloaded first), MED 100 -> 200 (`service.announce.med`: every
    VIP of apex that stays carries it), and the HTTP check replaced by the same GET by curl."""
    own = lab_layout(t)
    removed = t.vip(t.racks)
    return Layout(
        vips=(*(v for v in own.vips if v != removed), RELOAD_ADDED_VIP),
        preferred=(*(p for p in own.preferred if p[0] != removed), (RELOAD_ADDED_VIP, t.lb(1))),
        med=RELOAD_MED,
        check_by_command=True,
    )


def probe_command(url: str) -> str:
    """A shell command that succeeds when `url` answers 2xx (curl, else this Python)."""
    if shutil.which("curl"):
        return f"curl -sf --max-time 1 {url}"
    probe = f"import urllib.request; urllib.request.urlopen({url!r}, timeout=1)"
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(probe)}"


# ------------------------------------------------------------------ processes by PID only


@dataclass(frozen=True)
class Proc:
    """A process the lab started: PID plus its start time, so a recycled PID is never hit."""

    pid: int
    start: int  # /proc/<pid>/stat field 22, clock ticks since boot


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    return raw[raw.rfind(")") + 2 :].split()


def proc_of(pid: int) -> Proc:
    fields = _stat_fields(pid)
    if fields is None:
        raise LabError(f"process {pid} vanished right after it started")
    return Proc(pid, int(fields[19]))


def alive(proc: Proc) -> bool:
    """Still running (a zombie is not) and still the process we started."""
    fields = _stat_fields(proc.pid)
    if fields is None or fields[0] in ("Z", "X") or int(fields[19]) != proc.start:
        _reap(proc.pid)
        return False
    return True


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our own child (tests run the lab in-process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def children(pid: int) -> list[Proc]:
    """Live children of `pid` (ExaBGP's helper runs in a process group of its own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None and fields[1] == str(pid) and fields[0] not in ("Z", "X"):
            found.append(Proc(int(entry.name), int(fields[19])))
    return found


def signal_proc(proc: Proc, signum: int) -> None:
    if alive(proc):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signum)


def stop_procs(procs: Sequence[Proc], grace: float = STOP_GRACE) -> list[Proc]:
    """SIGCONT + SIGTERM, SIGKILL after `grace`; returns the processes still alive after that."""
    for proc in procs:
        signal_proc(proc, signal.SIGCONT)
        signal_proc(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.02)
    for proc in procs:
        signal_proc(proc, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while any(alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.01)
    return [p for p in procs if alive(p)]


# ---------------------------------------------------------------------- the health server


class _HealthHandler(http.server.BaseHTTPRequestHandler):
    flag_file = Path("/nonexistent")

    def do_GET(self) -> None:
        try:
            healthy = self.flag_file.read_text().strip() == "ok"
        except OSError:
            healthy = False
        body = b"OK\n" if healthy else b"FAIL\n"
        self.send_response(200 if healthy else 503)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one probe every 0.1 s per LB: not worth a log line


def serve_health(address: str, port: int, flag_file: Path) -> None:
    """HTTP 200 while `flag_file` says "ok", else 503 (`fail lbN check` writes "fail")."""
    handler = type("Handler", (_HealthHandler,), {"flag_file": flag_file})
    with http.server.ThreadingHTTPServer((address, port), handler) as server:
        server.serve_forever()


# ----------------------------------------------------------------------------- the lab


@dataclass
class LabState:
    """What a later invocation needs: the topology, the mode and every PID started."""

    topology: Topology
    mode: str
    procs: dict[str, Proc] = field(default_factory=dict)
    faults: dict[str, str] = field(default_factory=dict)  # lb -> crash | hang | check
    created: float = field(default_factory=time.time)
    up_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "topology": dataclasses.asdict(self.topology),
            "mode": self.mode,
            "procs": {name: dataclasses.asdict(p) for name, p in self.procs.items()},
            "faults": self.faults,
            "created": self.created,
            "up_seconds": self.up_seconds,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LabState:
        return cls(
            topology=Topology(**doc["topology"]),
            mode=str(doc["mode"]),
            procs={name: Proc(**p) for name, p in doc["procs"].items()},
            faults={str(k): str(v) for k, v in doc.get("faults", {}).items()},
            created=float(doc.get("created", 0.0)),
            up_seconds=doc.get("up_seconds"),
        )


@dataclass(frozen=True)
class Failover:
    """What the aggregation router saw after a fault (times from the fault, in seconds)."""

    lb: str
    fault: str
    vip: str
    new_lb: str
    seconds: float  # best path for `vip` leads to another LB
    gone_after: float | None  # the victim's path stopped being the best (None: never seen)
    # A path via another LB reached the aggregation router (raftvip moved the VIP), best or
    # not: after a hang the victim's stale path can stay best until the BGP hold timer.
    other_after: float | None = None


@dataclass(frozen=True)
class SeedResult:
    """The side-by-side comparison, as data for the test."""

    tor_meds: dict[str, dict[str, int | None]]  # tor -> vip -> MED of its LB's path
    healthcheck_agg_meds: dict[str, list[int | None]]  # vip -> MEDs of the agg's paths
    healthcheck_paths: dict[str, int]  # vip -> number of paths at the agg
    healthcheck: dict[str, str | None]  # vip -> LB of the agg's best path
    raftvip: dict[str, str | None]
    raftvip_best_paths: dict[str, int]  # vip -> number of best paths at the agg
    after_failure: dict[str, str | None]
    after_recovery: dict[str, str | None]
    failover: Failover


@dataclass(frozen=True)
class VipView:
    """One VIP at the aggregation router: its best path, and that path's MED as the LB's ToR
    received it. A ToR passes no MED on to the aggregation router (another AS: BIRD zeroes a
    received MED on export over eBGP), so `agg_med` stays None and `tor_med` is the MED."""

    lb: str | None  # the LB the best path leads to (None: no route)
    as_path: tuple[int, ...] = ()
    via: str | None = None  # the ToR address the aggregation router learned it from
    agg_med: int | None = None
    tor: str | None = None  # that LB's ToR
    tor_med: int | None = None  # the MED of the LB's path at its ToR


@dataclass(frozen=True)
class Stage:
    """The lab at one point of a roll-out: before it, after one LB's reload, or after it."""

    label: str  # "before the roll-out", "after lb1's reload", "after the roll-out"
    view: dict[str, VipView]  # the VIPs of both layouts, old ones first
    drift: bool  # `raftvip status --json` of `status_lb`: config_drift
    status_lb: str
    status_config: str  # its raftvip.toml
    status_lines: tuple[str, ...]  # its `raftvip status` lines about drift
    digest: str  # the layout digest `status_lb` runs
    lb: str | None = None  # the LB reloaded (None: before or after the roll-out)
    config: str = ""  # its raftvip.toml
    edit: tuple[str, ...] = ()  # the lines of that file the edit changed: "-old", "+new"
    output: tuple[str, ...] = ()  # what `raftvip reload` printed
    began: float = 0.0  # time.monotonic() when `raftvip reload` started...
    returned: float = 0.0  # ...and when it returned


@dataclass(frozen=True)
class Moment:
    """When the aggregation router saw something, relative to the last reload begun before."""

    lb: str | None  # None: before the first reload began
    after_start: float  # seconds after that `raftvip reload` started
    after_return: float  # ...and after it returned (< 0: it had not yet)

    def describe(self) -> str:
        if self.lb is None:
            return "before the first reload"
        if self.after_return < 0:
            return (
                f"{self.after_start * 1000:.0f} ms after {self.lb}'s `raftvip reload` started "
                "(before it returned)"
            )
        return f"{self.after_return * 1000:.0f} ms after {self.lb}'s `raftvip reload` returned"


@dataclass(frozen=True)
class VipTrace:
    """One VIP's best path at the aggregation router in every sample of a roll-out."""

    owners: tuple[str, ...]  # the LBs that carried it, in order, repeats collapsed
    moved_at: tuple[float, ...]  # when each move from one LB to the next was seen
    dark: tuple[tuple[float, float], ...]  # intervals without a best path (RouteWatch's)
    first_seen: float | None  # the first sample with a best path
    gone_at: float | None  # the first sample without one after the last with one (None:
    # there at the end)

    @classmethod
    def of(cls, watch: RouteWatch, vip: str) -> VipTrace:
        seen = [when for when, best in watch.samples if best.get(vip) is not None]
        moved_at: list[float] = []
        last: str | None = None
        for when, best in watch.samples:
            lb = best.get(vip)
            if lb is not None and last is not None and lb != last:
                moved_at.append(when)
            last = lb or last
        gone_at = None
        if seen and watch.samples[-1][1].get(vip) is None:
            gone_at = next(when for when, _best in watch.samples if when > seen[-1])
        return cls(
            owners=tuple(watch.owners_seen(vip)),
            moved_at=tuple(moved_at),
            dark=tuple(watch.dark_intervals(vip)),
            first_seen=seen[0] if seen else None,
            gone_at=gone_at,
        )

    @property
    def gaps(self) -> tuple[tuple[float, float], ...]:
        """Intervals without a path once it had appeared, other than its final going."""
        first = self.first_seen
        return tuple(
            (start, end)
            for start, end in self.dark
            if first is not None and start > first and start != self.gone_at
        )


@dataclass(frozen=True)
class ReloadResult:
    """`Lab.reload`: a config change rolled out one LB at a time, as the network saw it."""

    back: bool  # rolled the lab's own layout back in
    old: Layout
    new: Layout
    order: tuple[str, ...]  # the LBs, in the order they were reloaded
    stages: tuple[Stage, ...]  # before, one per LB of `order`, after
    traces: dict[str, VipTrace]  # every VIP of both layouts
    samples: int  # aggregation-router polls taken
    sampler_errors: tuple[str, ...] = ()
    # Why the roll-out stopped before the last LB (a refused reload, a lab that did not
    # settle); the LBs after it were not reloaded.
    stopped: str | None = None

    @property
    def kept(self) -> tuple[str, ...]:
        """The VIPs in both layouts: they must never lose their path nor move."""
        return tuple(v for v in self.old.vips if v in self.new.vips)

    @property
    def added(self) -> tuple[str, ...]:
        return tuple(v for v in self.new.vips if v not in self.old.vips)

    @property
    def removed(self) -> tuple[str, ...]:
        return tuple(v for v in self.old.vips if v not in self.new.vips)

    @property
    def before(self) -> Stage:
        return self.stages[0]

    @property
    def after(self) -> Stage:
        return self.stages[-1]

    @property
    def steps(self) -> tuple[Stage, ...]:
        return self.stages[1:-1]

    def moment(self, when: float) -> Moment:
        begun = [s for s in self.steps if s.began <= when]
        if not begun:
            return Moment(None, 0.0, 0.0)
        return Moment(begun[-1].lb, when - begun[-1].began, when - begun[-1].returned)

    def appeared(self, vip: str) -> Moment | None:
        first = self.traces[vip].first_seen
        return None if first is None else self.moment(first)

    def disappeared(self, vip: str) -> Moment | None:
        gone = self.traces[vip].gone_at
        return None if gone is None else self.moment(gone)

    def med_changed_with(self, vip: str) -> str | None:
        """The LB whose reload brought `vip`'s new MED to the network (None: it never came)."""
        return next(
            (s.lb for s in self.steps if s.view[vip].tor_med == self.new.med),
            None,
        )

    def problems(self) -> list[str]:
        """Every promise of a rolling change that the aggregation router saw broken."""
        found: list[str] = []
        if self.stopped:
            found.append(
                f"the roll-out stopped: {self.stopped}; the lab is left half-way (`deploy/lab "
                "down` and `deploy/lab up` start afresh)"
            )
        if self.samples == 0:
            found.append("no sample of the aggregation router was taken")
        if self.sampler_errors:
            found.append(
                f"{len(self.sampler_errors)} polls of the aggregation router failed "
                f"(first: {self.sampler_errors[0]}): what they missed is unknown"
            )
        for vip in self.kept:
            trace, was = self.traces[vip], self.before.view[vip].lb
            if trace.dark:
                longest = max(end - start for start, end in trace.dark)
                found.append(
                    f"{vip} (in both configs) had no path at the aggregation router "
                    f"{len(trace.dark)} time(s), for up to {longest * 1000:.1f} ms"
                )
            if trace.owners != ((was,) if was else ()):
                when = f" (first {self.moment(trace.moved_at[0]).describe()})"
                found.append(
                    f"{vip} (in both configs) moved: {' -> '.join(trace.owners) or 'nowhere'}"
                    + (when if trace.moved_at else "")
                )
            med = self.after.view[vip].tor_med
            if med != self.new.med and not self.stopped:
                found.append(f"{vip}: MED {med} after the roll-out, expected {self.new.med}")
        first, last = self.order[0], self.order[-1]
        for vip in self.added:
            appeared, trace = self.appeared(vip), self.traces[vip]
            expected = dict(self.new.preferred).get(vip)
            if appeared is None:
                found.append(f"{vip} (added) never appeared at the aggregation router")
            elif appeared.lb != first:
                found.append(
                    f"{vip} (added) appeared {appeared.describe()}, not with {first}'s "
                    "reload (the first LB whose config has it)"
                )
            if trace.gaps or trace.gone_at is not None:
                found.append(f"{vip} (added) lost its path after it had appeared")
            if self.after.view[vip].lb != expected and not self.stopped:
                found.append(
                    f"{vip} (added) is on {self.after.view[vip].lb or 'no LB'} after the "
                    f"roll-out, not on {expected} (its preferred LB)"
                )
        for vip in self.removed:
            gone, trace = self.disappeared(vip), self.traces[vip]
            if gone is None:
                if not self.stopped:
                    found.append(f"{vip} (removed) is still at the aggregation router")
            elif gone.lb != last:
                found.append(
                    f"{vip} (removed) disappeared {gone.describe()}, not with {last}'s "
                    "reload (the last LB whose config had it)"
                )
            if trace.gaps:
                found.append(f"{vip} (removed) lost its path before the last LB dropped it")
        return found


class Lab:
    """One lab in `lab_dir`; every method works from a fresh process (state is on disk)."""

    def __init__(self, lab_dir: Path | str, topology: Topology | None = None) -> None:
        self.dir = Path(lab_dir).resolve()
        self.state_path = self.dir / STATE_FILE
        self._requested = topology or Topology()

    # ------------------------------------------------------------------- state on disk

    def load(self) -> LabState | None:
        try:
            doc = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise LabError(f"{self.state_path}: unreadable ({exc}); remove {self.dir}") from exc
        return LabState.from_json(doc)

    def save(self, state: LabState) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state.to_json(), indent=2) + "\n")
        tmp.replace(self.state_path)

    def running(self) -> LabState:
        state = self.load()
        if state is None:
            raise LabError(f"no lab is running in {self.dir}: start one with `deploy/lab up`")
        return state

    @property
    def topology(self) -> Topology:
        state = self.load()
        return state.topology if state else self._requested

    # -------------------------------------------------------------------- the routers

    def tor(self, rack: int, topology: Topology | None = None) -> Bird:
        t = topology or self.topology
        address, asn = t.tor_address(rack), t.tor_as(rack)
        peers = [
            BirdPeer(
                f"lb{rack}",
                t.lb_address(rack),
                t.lb_as(rack),
                address,
                asn,
                local_port=t.bgp_port,
                port=t.bgp_port,
                passive=True,  # ExaBGP connects, it does not listen
                hold_time=t.hold_time,
                export=False,  # the LB needs no routes
            ),
            BirdPeer(
                "agg",
                t.agg_address,
                t.agg_as,
                address,
                asn,
                local_port=t.bgp_port,
                port=t.bgp_port,
            ),
        ]
        return Bird(self.dir / f"tor{rack}", address, peers, name=f"tor{rack}")

    def agg(self, topology: Topology | None = None) -> Bird:
        t = topology or self.topology
        peers = [
            BirdPeer(
                f"tor{rack}",
                t.tor_address(rack),
                t.tor_as(rack),
                t.agg_address,
                t.agg_as,
                local_port=t.bgp_port,
                port=t.bgp_port,
                export=False,  # the top of this lab: it only looks
            )
            for rack in t.rack_numbers
        ]
        return Bird(self.dir / "agg", t.agg_address, peers, name="agg")

    def best_lbs(
        self, routes: dict[str, list[BirdPath]] | None = None, vips: Sequence[str] | None = None
    ) -> dict[str, str | None]:
        """VIP -> the LB the aggregation router's best path leads to (None: no route), for
        `vips` (default: the lab's own, 10.20.255.1-3)."""
        t = self.topology
        routes = self.agg().routes() if routes is None else routes
        best: dict[str, str | None] = {}
        for vip in t.vips if vips is None else vips:
            paths = [p for p in routes.get(f"{vip}/32", []) if p.best and p.reachable]
            best[vip] = t.lb_of_path(paths[0]) if paths else None
        return best

    def spread(self) -> bool:
        """Every VIP's best path at the aggregation router leads to its preferred LB."""
        t = self.topology
        return self.best_lbs() == {t.vip(rack): t.lb(rack) for rack in t.rack_numbers}

    # ---------------------------------------------------------------------- configs

    def config_path(self, rack: int) -> Path:
        return self.dir / f"lb{rack}" / "raftvip.toml"

    def _write_configs(self, t: Topology) -> None:
        secret = self.dir / "secret"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
        for rack in t.rack_numbers:
            lb_dir = self.dir / f"lb{rack}"
            lb_dir.mkdir(parents=True, exist_ok=True)
            (lb_dir / "health").write_text("ok\n")
            self.config_path(rack).write_text(self.config_text(t, rack, lab_layout(t)))
            self._write_healthcheck_config(t, rack)

    def config_text(self, t: Topology, rack: int, layout: Layout) -> str:
        """lbN's raftvip.toml with service apex laid out as `layout` (the same text for the
        same layout: `reload` tells the lab's own file from its changed one by it)."""
        lb_dir = self.dir / f"lb{rack}"
        members = "\n".join(
            f'{t.lb(r)} = "{t.lb_address(r)}:{t.raft_port}"' for r in t.rack_numbers
        )
        vips = ", ".join(f'"{v}"' for v in layout.vips)
        preferred = ", ".join(f'"{vip}" = "{lb}"' for vip, lb in layout.preferred)
        url = f"http://{t.lb_address(rack)}:{t.health_port}/healthcheck"
        check = (
            f"command = {json.dumps(probe_command(url))}"  # a TOML basic string
            if layout.check_by_command
            else f'http = "{url}"'
        )
        return f"""\
# lb{rack} of the raftvip lab (generated by deploy/labctl.py)
[cluster]
name = "lab"
member = "{t.lb(rack)}"
secret_file = "{self.dir / "secret"}"
state_dir = "{lb_dir / "state"}"
control_socket = "{lb_dir / "raftvip.sock"}"
lease = 1.5

[members]
{members}

[[service]]
name = "{SERVICE}"
vips = [{vips}]
preferred = {{ {preferred} }}
preempt = true
preempt_delay = 2

[service.check]
{check}
interval = 0.2
fast_interval = 0.1
rise = 2
fall = 2
timeout = 0.2

[service.announce]
next_hop = "self"
med = {layout.med}
backup_prepend = {t.backup_prepend}
takeover_margin = {t.takeover_margin}

[exabgp]
neighbors = [{{ address = "{t.tor_address(rack)}", peer_as = {t.tor_as(rack)}, \
local_address = "{t.lb_address(rack)}", local_as = {t.lb_as(rack)}, port = {t.bgp_port}, \
hold_time = {t.hold_time} }}]
"""

    def _write_healthcheck_config(self, t: Topology, rack: int) -> None:
        """The seed's healthcheck-apex.conf: same VIPs everywhere, rotated so LB k has MED 100
        on its own VIP (healthcheck adds 1 per further --ip)."""
        order = [t.vip(1 + (rack - 1 + i) % t.racks) for i in range(t.racks)]
        url = f"http://{t.lb_address(rack)}:{t.health_port}/healthcheck"
        command = probe_command(url)
        lines = [
            f"name = {SERVICE}",
            "interval = 1",
            "fast-interval = 0.2",
            "rise = 2",
            "fall = 2",
            "timeout = 1",
            f"command = {command}",
            "no-syslog",
            "no-ip-setup",  # do not add the VIPs to the host's loopback
            *[f"ip = {vip}" for vip in order],
        ]
        path = self.dir / f"lb{rack}" / "healthcheck-apex.conf"
        path.write_text("\n".join(lines) + "\n")

    def exabgp_config_text(self, rack: int, mode: str) -> str:
        cfg = load_config(str(self.config_path(rack)))
        if mode == "raftvip":
            return render_exabgp_config(cfg, default_run_command(str(self.config_path(rack))))
        # Same neighbors, the exabgp package's healthcheck as the process, as the seed ran it.
        healthcheck = Path(sys.executable).parent / "exabgp-healthcheck"
        conf = self.dir / f"lb{rack}" / "healthcheck-apex.conf"
        command = shlex.join([str(healthcheck), "--config", str(conf)])
        cfg = dataclasses.replace(
            cfg, exabgp=dataclasses.replace(cfg.exabgp, process_name="healthcheck-apex")
        )
        return render_exabgp_config(cfg, command)

    # -------------------------------------------------------------------- processes

    def _exabgp(self, rack: int, mode: str) -> ExaBGP:
        return ExaBGP(
            self.dir / f"lb{rack}",
            self.exabgp_config_text(rack, mode),
            name="exabgp",
            env={"exabgp_api_cli": "false"},
        )

    def _start_exabgp(self, state: LabState, rack: int) -> None:
        exabgp = self._exabgp(rack, state.mode)
        exabgp.start()
        assert exabgp.pid is not None
        state.procs[f"lb{rack}.exabgp"] = proc_of(exabgp.pid)
        self.save(state)

    def _wait_exabgp(self, state: LabState, rack: int) -> None:
        """ExaBGP loaded its config and started its helper; the helper's PID is recorded."""
        exabgp = state.procs[f"lb{rack}.exabgp"]
        log = self.dir / f"lb{rack}" / "exabgp.log"

        def helper() -> Proc | None:
            if not alive(exabgp):
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise LabError(f"ExaBGP of lb{rack} exited; {log}:\n{tail}")
            found = children(exabgp.pid)
            return found[0] if found else None

        state.procs[f"lb{rack}.helper"] = wait_until(
            helper, timeout=WAIT, what=f"ExaBGP of lb{rack} to start its process", interval=0.02
        )
        self.save(state)

    def _start_health(self, state: LabState, rack: int) -> None:
        t = state.topology
        log = self.dir / f"lb{rack}" / "health.log"
        with open(log, "ab") as handle:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "health-server",
                    t.lb_address(rack),
                    str(t.health_port),
                    str(self.dir / f"lb{rack}" / "health"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        state.procs[f"lb{rack}.health"] = proc_of(proc.pid)
        self.save(state)

    def _wait_health(self, state: LabState, rack: int) -> None:
        t = state.topology

        def answers() -> bool:
            if not alive(state.procs[f"lb{rack}.health"]):
                log = (self.dir / f"lb{rack}" / "health.log").read_text(errors="replace")
                raise LabError(f"the health server of lb{rack} exited:\n{log[-2000:]}")
            with socket.create_connection((t.lb_address(rack), t.health_port), timeout=0.5):
                return True

        wait_until(answers, timeout=10.0, what=f"health server of lb{rack}", interval=0.02)

    # -------------------------------------------------------------------------- up

    def up(self, mode: str = "raftvip", *, quiet: bool = False) -> LabState:
        """Start the lab (detached) and wait until the network sees the VIPs."""
        if mode not in MODES:
            raise LabError(f"mode {mode!r}: one of {', '.join(MODES)}")
        existing = self.load()
        if existing is not None:
            if any(alive(p) for p in existing.procs.values()):
                raise LabError(
                    f"a lab is already running in {self.dir} (mode {existing.mode}); "
                    "`deploy/lab status` shows it, `deploy/lab down` stops it"
                )
            out(f"cleaning up the remains of an earlier lab in {self.dir}")
            self.down(quiet=True)
        elif self.dir.exists() and any(self.dir.iterdir()):
            shutil.rmtree(self.dir)  # a lab dir without state: nothing of it can be running
        t = self._requested
        bird_binary = shutil.which("bird") or "/usr/sbin/bird"
        if not os.access(bird_binary, os.X_OK):
            raise LabError("BIRD 2 (`bird`) not found: apt-get install bird2")
        exabgp_binary()  # LabError when missing
        check_ports(t)
        began = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        state = LabState(topology=t, mode=mode)
        self.save(state)
        try:
            self._write_configs(t)
            routers = [self.agg(t), *(self.tor(rack, t) for rack in t.rack_numbers)]
            for router in routers:
                router.start()
                assert router.pid is not None
                state.procs[router.name] = proc_of(router.pid)
                self.save(state)
            for rack in t.rack_numbers:
                self._start_health(state, rack)
            for rack in t.rack_numbers:
                self._wait_health(state, rack)
            for rack in t.rack_numbers:
                self._start_exabgp(state, rack)
            for rack in t.rack_numbers:
                self._wait_exabgp(state, rack)
            self._wait_converged(state)
        except BaseException:
            out(f"lab start failed: stopping what was started (logs in {self.dir})")
            self._stop_all(state)
            raise
        state.up_seconds = time.monotonic() - began
        self.save(state)
        if not quiet:
            self.print_status()
            out(f"\nlab up in {state.up_seconds:.1f} s ({mode} mode), files in {self.dir}")
            out("next: deploy/lab fail lb2 crash|hang|check, deploy/lab heal lb2, deploy/lab down")
        return state

    def _wait_converged(self, state: LabState) -> None:
        t = state.topology
        for rack in t.rack_numbers:
            self.tor(rack, t).wait_established(timeout=WAIT)
        self.agg(t).wait_established(timeout=WAIT)
        if state.mode == "raftvip":
            wait_until(
                self.spread,
                timeout=WAIT,
                what="each VIP at the aggregation router via its preferred LB",
                interval=0.02,
            )
            if t.backup_prepend:
                wait_until(
                    lambda: self.backups_in_place(t),
                    timeout=WAIT,
                    what="a backup path from every other LB at the aggregation router",
                    interval=0.02,
                )
        else:
            wait_until(
                lambda: self._all_paths_seen(t),
                timeout=WAIT,
                what="every LB's healthcheck announcements at the aggregation router",
                interval=0.02,
            )

    def backups_in_place(self, t: Topology) -> bool:
        """Per VIP: the best path is its preferred LB's own (not prepended) and every other LB
        has a prepended backup path at the aggregation router."""
        routes = self.agg(t).routes()
        for rack in t.rack_numbers:
            paths = [p for p in routes.get(f"{t.vip(rack)}/32", []) if p.reachable]
            best = [p for p in paths if p.best]
            if len(best) != 1 or t.lb_of_path(best[0]) != t.lb(rack) or t.is_backup(best[0]):
                return False
            backups = {t.lb_of_path(p) for p in paths if t.is_backup(p)}
            if backups != {t.lb(r) for r in t.rack_numbers if r != rack}:
                return False
        return True

    def _all_paths_seen(self, t: Topology) -> bool:
        routes = self.agg(t).routes()
        return all(len(routes.get(f"{vip}/32", [])) == t.racks for vip in t.vips)

    def switch(self, mode: str) -> None:
        """Replace every LB's ExaBGP by one running `mode`; routers and health servers stay."""
        state = self.running()
        t = state.topology
        doomed = [p for name, p in state.procs.items() if name.endswith((".exabgp", ".helper"))]
        for rack in t.rack_numbers:
            exabgp = state.procs.get(f"lb{rack}.exabgp")
            if exabgp is not None:
                doomed += children(exabgp.pid)
        left = stop_procs(doomed)
        if left:
            raise LabError(f"could not stop {[p.pid for p in left]}")
        for rack in t.rack_numbers:
            state.procs.pop(f"lb{rack}.exabgp", None)
            state.procs.pop(f"lb{rack}.helper", None)
            (self.dir / f"lb{rack}" / "health").write_text("ok\n")
        state.faults.clear()
        state.mode = mode
        self.save(state)
        self.agg(t).wait_routes(
            lambda routes: not any(f"{vip}/32" in routes for vip in t.vips),
            timeout=WAIT,
            what="the old announcements to go",
        )
        for rack in t.rack_numbers:
            self._start_exabgp(state, rack)
        for rack in t.rack_numbers:
            self._wait_exabgp(state, rack)
        self._wait_converged(state)

    # ------------------------------------------------------------------------ down

    def _stop_all(self, state: LabState) -> None:
        procs = list(state.procs.values())
        for name, proc in state.procs.items():
            if name.endswith(".exabgp"):
                procs += children(proc.pid)  # a helper ExaBGP restarted since it was recorded
        left = stop_procs(procs)
        if left:
            raise LabError(
                "still running after SIGKILL: "
                + ", ".join(str(p.pid) for p in left)
                + f"; {self.state_path} is kept so that `deploy/lab down` can retry"
            )

    def down(self, *, quiet: bool = False) -> bool:
        """Stop every recorded process (by PID), verify, remove the lab dir. Idempotent."""
        state = self.load()
        if state is None:
            if self.dir.exists():
                shutil.rmtree(self.dir)
            if not quiet:
                out(f"no lab running in {self.dir}; nothing to do")
            return False
        count = sum(1 for p in state.procs.values() if alive(p))
        self._stop_all(state)
        shutil.rmtree(self.dir)
        if not quiet:
            out(f"lab down: {count} processes stopped, {self.dir} removed")
        return True

    # ---------------------------------------------------------------------- status

    def group_status(self, state: LabState) -> dict[str, Any] | None:
        """`raftvip status` of the first LB that answers (skipping broken ones)."""
        for rack in state.topology.rack_numbers:
            if state.faults.get(f"lb{rack}") in ("crash", "hang"):
                continue
            socket_path = str(self.dir / f"lb{rack}" / "raftvip.sock")
            with contextlib.suppress(RaftvipError, OSError):
                doc: dict[str, Any] = request(socket_path, {"op": "status"}, timeout=2.0)
                return doc
        return None

    def agg_table(self, state: LabState) -> str:
        t = state.topology
        routes = self.agg(t).routes()
        # Wider columns when a backup path (longer AS path) can be the best one.
        lb_w, path_w = (16, 25) if t.backup_prepend else (11, 13)
        lines = [
            f"aggregation router agg {t.agg_address} AS {t.agg_as} (`show route all`):",
            f"  {'VIP':<15} {'BEST -> LB':<{lb_w}} {'AS PATH':<{path_w}} {'VIA':<12} {'MED':<5} "
            "OTHER PATHS",
        ]
        # The lab's VIPs, then any other the router holds (`deploy/lab reload` adds one).
        held = sorted(
            (prefix.removesuffix("/32") for prefix in routes if prefix.endswith("/32")),
            key=socket.inet_aton,
        )
        for vip in [*t.vips, *(v for v in held if v not in t.vips)]:
            paths = routes.get(f"{vip}/32", [])
            best = next((p for p in paths if p.best), None)
            others = [p for p in paths if p is not best]
            other_text = ", ".join(
                f"{t.lb_of_path(p) or '?'}{' backup' if t.is_backup(p) else ''} "
                f"({' '.join(map(str, p.as_path))})"
                for p in others
            )
            if best is None:
                lines.append(f"  {vip:<15} {'(no route)':<{lb_w}}")
                continue
            best_lb = (t.lb_of_path(best) or "?") + (" (backup)" if t.is_backup(best) else "")
            lines.append(
                f"  {vip:<15} {best_lb:<{lb_w}} "
                f"{' '.join(map(str, best.as_path)):<{path_w}} {best.from_peer or '-':<12} "
                f"{'-' if best.med is None else best.med:<5} {other_text or '-'}"
            )
        return "\n".join(lines)

    def tor_table(self, state: LabState) -> str:
        t = state.topology
        lines = ["top-of-rack routers (what each ToR learned from its LB):"]
        for rack in t.rack_numbers:
            routes = self.tor(rack, t).routes()
            cells = []
            for vip in t.vips:
                mine = [p for p in routes.get(f"{vip}/32", []) if p.protocol == f"lb{rack}"]
                if mine:
                    med = "-" if mine[0].med is None else str(mine[0].med)
                    cells.append(f"{vip} med {med}")
            lines.append(
                f"  tor{rack} {t.tor_address(rack)} AS {t.tor_as(rack)} <- lb{rack}: "
                + (", ".join(cells) or "nothing")
            )
        return "\n".join(lines)

    def print_status(self) -> None:
        state = self.running()
        t = state.topology
        prepend = t.backup_prepend
        out(
            f"raftvip lab in {self.dir} ({state.mode} mode"
            + (f", backup_prepend {prepend}" if prepend and state.mode == "raftvip" else "")
            + ")"
        )
        out("")
        lbs = []
        for rack in t.rack_numbers:
            lb = t.lb(rack)
            exabgp = state.procs.get(f"{lb}.exabgp")
            running = exabgp is not None and alive(exabgp)
            helper = children(exabgp.pid) if exabgp is not None and running else []
            fault = state.faults.get(lb)
            lbs.append(
                f"  {lb}  {t.lb_address(rack):<11} AS {t.lb_as(rack)}  "
                f"exabgp {'pid ' + str(exabgp.pid) if running and exabgp else 'DOWN':<10} "
                f"{state.mode} {'pid ' + str(helper[0].pid) if helper else 'DOWN':<10} "
                f"-> tor{rack} {t.tor_address(rack)} AS {t.tor_as(rack)}"
                + (f"   FAULT: {fault}" if fault else "")
            )
        out("load balancers:")
        out("\n".join(lbs))
        out("")
        if state.mode == "raftvip":
            doc = self.group_status(state)
            if doc is None:
                out("raftvip status: no member answers on its control socket")
            else:
                out(f"raftvip status (as {doc['member']} sees it):")
                out("\n".join(f"  {line}".rstrip() for line in render_status(doc).splitlines()))
        else:
            out(self.tor_table(state))
        out("")
        out(self.agg_table(state))

    # ---------------------------------------------------------------------- faults

    def _rack(self, state: LabState, lb: str) -> int:
        return state.topology.rack_of(lb)

    def _lb_procs(self, state: LabState, rack: int) -> list[Proc]:
        """The LB's ExaBGP and its helper(s), if running."""
        exabgp = state.procs.get(f"lb{rack}.exabgp")
        if exabgp is None or not alive(exabgp):
            return []
        return [exabgp, *children(exabgp.pid)]

    def fail(self, lb: str, kind: str, *, watch: bool = True, quiet: bool = False) -> Failover:
        """Break `lb` and time the failover on the aggregation router."""
        state = self.running()
        if state.mode != "raftvip" and watch:
            raise LabError("fail/heal time raftvip's failover: start the lab in raftvip mode")
        if kind not in FAULTS:
            raise LabError(f"fault {kind!r}: one of {', '.join(FAULTS)}")
        self._require_lab_layout(state, "fail")
        rack = self._rack(state, lb)
        if lb in state.faults:
            raise LabError(f"{lb} is already failed ({state.faults[lb]}): `deploy/lab heal {lb}`")
        t = state.topology
        vip = t.vip(rack)
        before = self.best_lbs().get(vip)
        if before != lb:
            raise LabError(
                f"{vip} is not on {lb} at the aggregation router (it is on {before}): "
                "wait until the lab has settled"
            )
        procs = self._lb_procs(state, rack)
        if kind in ("crash", "hang") and not procs:
            raise LabError(f"{lb}'s ExaBGP is not running")
        agg = self.agg(t)
        if kind == "crash":
            # Freeze first: ExaBGP must neither respawn the helper nor tell it "shutdown",
            # and the helper must not start a graceful handover on EOF. Then kill both.
            for proc in procs:
                signal_proc(proc, signal.SIGSTOP)
            began = time.monotonic()
            for proc in procs:
                signal_proc(proc, signal.SIGKILL)
            what = "kill -9 of ExaBGP and raftvip (pids " + " ".join(str(p.pid) for p in procs)
        elif kind == "hang":
            began = time.monotonic()
            for proc in procs:
                signal_proc(proc, signal.SIGSTOP)
            what = "SIGSTOP of ExaBGP and raftvip (pids " + " ".join(str(p.pid) for p in procs)
        else:
            began = time.monotonic()
            (self.dir / f"lb{rack}" / "health").write_text("fail\n")
            what = f"health server of {lb} answers 503 (check failure"
        state.faults[lb] = kind
        self.save(state)
        if not quiet:
            out(f"fail {lb} {kind}: {what})")
        result = self._watch_away(agg, t, vip, lb, kind, began) if watch else None
        if result is None:
            return Failover(lb, kind, vip, "?", float("nan"), None)
        for proc in procs if kind == "crash" else []:
            _reap(proc.pid)
        if not quiet:
            gone = (
                f"the path via {lb} was gone after {result.gone_after * 1000:.0f} ms, "
                if result.gone_after is not None and result.gone_after < result.seconds
                else ""
            )
            out(
                f"aggregation router: {vip} {lb} -> {result.new_lb} in "
                f"{result.seconds * 1000:.0f} ms ({gone}measured by polling BIRD every "
                f"{POLL * 1000:.0f} ms)"
            )
            if t.backup_prepend and result.seconds < (result.other_after or float("inf")):
                out(
                    f"  a backup path (via {result.new_lb}, AS path prepended) became best "
                    "before the group had reassigned the VIP"
                )
            elif result.other_after is not None and result.other_after < result.seconds - 0.05:
                out(
                    f"  raftvip moved it after {result.other_after * 1000:.0f} ms, but {lb}'s "
                    "stale path won BGP's tie-break (lower ToR router id) until its session's "
                    "hold timer expired"
                )
            out("")
            out(self.agg_table(state))
        return result

    def _watch_away(
        self, agg: Bird, t: Topology, vip: str, lb: str, kind: str, began: float
    ) -> Failover:
        gone_after: float | None = None
        other_after: float | None = None

        def moved() -> Failover | None:
            nonlocal gone_after, other_after
            routes = agg.routes()
            now = time.monotonic() - began
            best = self.best_lbs(routes).get(vip)
            if best != lb and gone_after is None:
                gone_after = now
            paths = routes.get(f"{vip}/32", [])
            if other_after is None and any(
                t.lb_of_path(p) not in (None, lb) and not t.is_backup(p) for p in paths
            ):
                other_after = now
            if best is not None and best != lb:
                return Failover(lb, kind, vip, best, now, gone_after, other_after)
            return None

        return wait_until(moved, timeout=WAIT, what=f"{vip} to leave {lb}", interval=POLL)

    def heal(self, lb: str, *, watch: bool = True, quiet: bool = False) -> float | None:
        """Repair `lb` (restart / continue / health 200); returns the seconds until its VIP
        is back on it at the aggregation router (preempt_delay included)."""
        state = self.running()
        rack = self._rack(state, lb)
        t = state.topology
        kind = state.faults.get(lb)
        began = time.monotonic()
        exabgp = state.procs.get(f"{lb}.exabgp")
        if exabgp is None or not alive(exabgp):
            orphan = state.procs.get(f"{lb}.helper")  # the crashed ExaBGP's helper, if alive
            if orphan is not None:
                signal_proc(orphan, signal.SIGKILL)
            self._start_exabgp(state, rack)
            self._wait_exabgp(state, rack)
            action = "restarted ExaBGP (and with it raftvip)"
        else:
            for proc in self._lb_procs(state, rack):
                signal_proc(proc, signal.SIGCONT)
            action = "SIGCONT to ExaBGP and raftvip" if kind == "hang" else "processes running"
        (self.dir / f"lb{rack}" / "health").write_text("ok\n")
        if kind == "check":
            action = "health server answers 200 again"
        state.faults.pop(lb, None)
        self.save(state)
        if not quiet:
            out(f"heal {lb}: {action}")
        if not watch or state.mode != "raftvip":
            return None
        vip = t.vip(rack)

        def back() -> bool:
            # The group must agree too: after a hang, ExaBGP re-sends the routes it held
            # before the stop when its session comes back, until raftvip withdraws them.
            if self.best_lbs(self.agg(t).routes()).get(vip) != lb:
                return False
            doc = self.group_status(state)
            return doc is not None and doc["vips"][vip]["owner"] == lb

        try:
            wait_until(back, timeout=WAIT, what=f"{vip} to return to {lb}", interval=0.01)
        except (LabError, WaitTimeout) as exc:
            doc = self.group_status(state)
            owner = doc["vips"][vip] if doc is not None else "no member answers"
            raise LabError(
                f"{exc}: the aggregation router's best path leads to "
                f"{self.best_lbs().get(vip) or 'nobody'}, the group says {owner}; "
                f"see {self.dir / lb / 'exabgp.log'} (ExaBGP and raftvip)"
            ) from exc
        seconds = time.monotonic() - began
        if not quiet:
            out(
                f"aggregation router: {vip} back on {lb} after {seconds:.2f} s "
                "(rise + preempt_delay 2 s: a returning owner proves itself first)"
            )
            out("")
            out(self.agg_table(state))
        return seconds

    # ------------------------------------------------------------ planned operations

    def _watch(self, t: Topology) -> contextlib.AbstractContextManager[RouteWatch]:
        agg = self.agg(t)
        return RouteWatch.running(lambda: self.best_lbs(agg.routes()), interval=POLL)

    def _planned_precheck(self, lb: str) -> tuple[LabState, int, str]:
        state = self.running()
        if state.mode != "raftvip":
            raise LabError("stop/restart are raftvip's: start the lab in raftvip mode")
        self._require_lab_layout(state, "stop/restart")
        rack = self._rack(state, lb)
        if lb in state.faults:
            raise LabError(f"{lb} is failed ({state.faults[lb]}): `deploy/lab heal {lb}` first")
        vip = state.topology.vip(rack)
        if not self._lb_procs(state, rack):
            raise LabError(f"{lb}'s ExaBGP is not running")
        if self.best_lbs().get(vip) != lb:
            raise LabError(f"{vip} is not on {lb} at the aggregation router: wait until settled")
        return state, rack, vip

    def _raftvip(self, rack: int, *args: str) -> str:
        """`raftvip ARGS -c lbN/raftvip.toml`, as an operator (or systemd) runs it."""
        done = subprocess.run(
            [sys.executable, "-m", "raftvip", *args, "-c", str(self.config_path(rack))],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        if done.returncode != 0:
            raise LabError(f"raftvip {' '.join(args)} on lb{rack}: {done.stderr.strip()}")
        return done.stdout.strip()

    def stop(self, lb: str, *, leave: bool = True, quiet: bool = False) -> Planned:
        """A planned stop of `lb` as deploy/'s unit does it (`raftvip leave`, then SIGTERM to
        ExaBGP), or SIGTERM alone (`leave=False`, the unit without ExecStop); `heal` starts
        it again."""
        state, rack, vip = self._planned_precheck(lb)
        t = state.topology
        exabgp = state.procs[f"{lb}.exabgp"]
        said = ""
        with self._watch(t) as watch:
            if leave:
                said = self._raftvip(rack, "leave")
            stop_procs([exabgp], grace=15.0)  # systemd's TimeoutStopSec
            _reap(exabgp.pid)
            state.faults[lb] = "stopped"
            self.save(state)
            wait_until(
                lambda: self.best_lbs().get(vip) not in (None, lb),
                timeout=WAIT,
                what=f"{vip} to leave {lb}",
                interval=0.01,
            )
            time.sleep(0.5)  # what follows the move (the ToR's session going down) too
        result = Planned(
            lb,
            "leave + SIGTERM" if leave else "SIGTERM",
            vip,
            watch.longest_dark(vip),
            watch.moves(),
            watch.owners_seen(vip),
            len(watch.samples),
        )
        if not quiet:
            out(
                f"stop {lb}: {said + '; then ' if said else ''}SIGTERM to ExaBGP (pid {exabgp.pid})"
            )
            out(_planned_line(result))
            out("")
            out(self.agg_table(state))
        return result

    def restart(self, lb: str, *, in_place: bool = True, quiet: bool = False) -> Planned:
        """Replace `lb`'s raftvip process under a running ExaBGP: `raftvip restart` (in
        place), or SIGTERM to the helper (`in_place=False`: an upgrade without it), which
        ExaBGP respawns. Waits until the group is settled again."""
        state, rack, vip = self._planned_precheck(lb)
        t = state.topology
        exabgp = state.procs[f"{lb}.exabgp"]
        old = children(exabgp.pid)
        if len(old) != 1:
            raise LabError(f"{lb}'s ExaBGP runs {len(old)} helpers, not 1")
        said = ""

        def new_helper() -> Proc | None:
            found = children(exabgp.pid)
            return found[0] if found and found[0] != old[0] else None

        with self._watch(t) as watch:
            if in_place:
                said = self._raftvip(rack, "restart")
            else:
                signal_proc(old[0], signal.SIGTERM)
            helper = wait_until(new_helper, timeout=WAIT, what="the new helper", interval=0.01)
            state.procs[f"{lb}.helper"] = helper
            self.save(state)
            wait_until(self.settled, timeout=WAIT, what="the lab to settle", interval=0.05)
            time.sleep(0.5)
        result = Planned(
            lb,
            "raftvip restart" if in_place else "helper SIGTERM",
            vip,
            watch.longest_dark(vip),
            watch.moves(),
            watch.owners_seen(vip),
            len(watch.samples),
            (old[0].pid, helper.pid),
        )
        if not quiet:
            how = said if said else f"SIGTERM to the helper (pid {old[0].pid}), ExaBGP respawns it"
            out(f"restart {lb}: {how}")
            out(_planned_line(result))
            out("")
            out(self.agg_table(state))
        return result

    def lifecycle(self, trials: int) -> dict[str, list[Planned]]:
        """`trials` of each planned operation, each measured on the aggregation router."""
        results: dict[str, list[Planned]] = {kind: [] for kind in LIFECYCLE_KINDS}
        self._require_lab_layout(self.running(), "lifecycle")
        t = self.running().topology
        for trial in range(trials):
            victim = t.lb_names[trial % len(t.lb_names)]
            for kind in LIFECYCLE_KINDS:
                for _ in range(2):  # settled twice, 0.5 s apart: no transient left
                    wait_until(self.settled, timeout=WAIT, what="the lab to settle", interval=0.05)
                    time.sleep(0.5)
                if kind.startswith("stop"):
                    result = self.stop(victim, leave=kind == "stop: leave + SIGTERM", quiet=True)
                    self.heal(victim, quiet=True)
                else:
                    result = self.restart(
                        victim, in_place=kind == "restart: raftvip restart", quiet=True
                    )
                results[kind].append(result)
                out(f"  {kind:<30} #{trial + 1:<3} {_planned_line(result)}")
        return results

    # ------------------------------------------------------------------- reload step

    def layouts(self, state: LabState) -> dict[str, Layout | None]:
        """LB -> the layout its raftvip.toml has: the lab's own (`up`), the one `reload`
        rolls out, or None (neither: edited otherwise)."""
        t = state.topology
        known = (lab_layout(t), reload_layout(t))
        found: dict[str, Layout | None] = {}
        for rack in t.rack_numbers:
            text = self.config_path(rack).read_text()
            found[t.lb(rack)] = next(
                (layout for layout in known if self.config_text(t, rack, layout) == text), None
            )
        return found

    def _require_lab_layout(self, state: LabState, what: str) -> None:
        """LabError when an LB runs the layout of `deploy/lab reload`: `what` (fail, stop,
        bench...) expects every VIP of the lab's own layout on its preferred LB."""
        changed = reload_layout(state.topology)
        ran = [lb for lb, layout in self.layouts(state).items() if layout == changed]
        if ran:
            raise LabError(
                f"{', '.join(ran)} run{'s' if len(ran) == 1 else ''} the layout of "
                f"`deploy/lab reload` ({describe_change(lab_layout(state.topology), changed)}); "
                f"{what} works on the lab's own: `deploy/lab reload --back` first"
            )

    def reload(
        self, *, back: bool = False, on_stage: Callable[[Stage], None] | None = None
    ) -> ReloadResult:
        """Roll `reload_layout` out over the LBs, one at a time (`back`: the lab's own layout
        back in): edit each LB's raftvip.toml, `raftvip reload -c` it, wait until the
        network and the group show the change, while the aggregation router is polled all
        along. `on_stage` gets each stage as it is reached (before, per LB, after)."""
        state = self.running()
        t = state.topology
        if state.mode != "raftvip":
            raise LabError("reload is raftvip's: start the lab in raftvip mode")
        if t.racks < 2:
            raise LabError(f"reload needs 2 racks or more (one VIP stays), the lab has {t.racks}")
        if state.faults:
            lb, kind = next(iter(state.faults.items()))
            raise LabError(f"{lb} is failed ({kind}): `deploy/lab heal {lb}` first")
        old, new, order = rollout(t, back=back)
        self._check_rollout_start(state, old, new, back)
        vips = [*old.vips, *(v for v in new.vips if v not in old.vips)]
        everywhere = dict.fromkeys(t.lb_names, old)
        self._settle(
            lambda: self._pending(state, vips, everywhere, spread=True),
            "the lab to settle before the roll-out",
        )
        stages: list[Stage] = []

        def reached(stage: Stage) -> None:
            stages.append(stage)
            if on_stage is not None:
                on_stage(stage)

        agg = self.agg(t)
        with RouteWatch.running(lambda: self.best_lbs(agg.routes(), vips), interval=POLL) as watch:
            reached(self._stage(state, BEFORE, vips, order[0]))
            running = dict(everywhere)
            stopped: str | None = None
            for lb in order:
                rack = t.rack_of(lb)
                path = self.config_path(rack)
                was = path.read_text()
                text = self.config_text(t, rack, new)
                _write_atomically(path, text)
                began = time.monotonic()
                try:
                    said = self._raftvip(rack, "reload")
                except LabError as exc:
                    _write_atomically(path, was)  # the file says again what lbN runs
                    stopped = f"{exc} ({path} is restored)"
                    break
                returned = time.monotonic()
                running[lb] = new
                try:
                    self._settle(
                        lambda: self._pending(state, vips, running, spread=False),
                        f"the network and the group to show {lb}'s reload",
                    )
                except LabError as exc:
                    stopped = f"after {lb}'s reload: {exc}"
                stopped = stopped or self._healthy_after_reload(state, lb, returned)
                reached(
                    dataclasses.replace(
                        self._stage(state, f"after {lb}'s reload", vips, lb),
                        lb=lb,
                        config=str(path),
                        edit=changed_lines(was, text),
                        output=tuple(said.splitlines()),
                        began=began,
                        returned=returned,
                    )
                )
                if stopped:
                    break
            time.sleep(0.5)  # whatever would follow the last reload (nothing should)
            reached(self._stage(state, "after the roll-out", vips, order[-1]))
        return ReloadResult(
            back=back,
            old=old,
            new=new,
            order=order,
            stages=tuple(stages),
            traces={vip: VipTrace.of(watch, vip) for vip in vips},
            samples=len(watch.samples),
            sampler_errors=tuple(watch.errors),
            stopped=stopped,
        )

    def _healthy_after_reload(self, state: LabState, lb: str, returned: float) -> str | None:
        """Once `lb`'s new check has had time to fail (CHECK_DECIDES), is `lb` still alive
        and healthy in the group? None if so, else why the roll-out must stop there: the
        next LB would take the same change (a canary, one LB at a time)."""
        time.sleep(max(0.0, returned + CHECK_DECIDES - time.monotonic()))
        try:
            doc = wait_until(
                lambda: self.group_status(state), timeout=WAIT, what="a member to answer"
            )
        except WaitTimeout as exc:
            return f"after {lb}'s reload: {exc}"
        member = doc["members"].get(lb)
        down = [name for name, ok in (member or {}).get("healthy", {}).items() if not ok]
        if member is not None and member["alive"] and not down:
            return None
        up = member is not None and member["alive"]
        what = f"unhealthy ({', '.join(down)} down)" if up else "not alive"
        return (
            f"{lb} is {what} in the group {CHECK_DECIDES:g} s after its reload (its new check "
            f"fails? see {self.dir / lb / 'exabgp.log'})"
        )

    def _check_rollout_start(self, state: LabState, old: Layout, new: Layout, back: bool) -> None:
        """Every LB's file has `old`, and every member runs its file."""
        t = state.topology
        layouts = self.layouts(state)
        odd = [lb for lb, layout in layouts.items() if layout is None]
        if odd:
            files = ", ".join(str(self.config_path(t.rack_of(lb))) for lb in odd)
            raise LabError(
                f"{files}: neither the lab's own config nor the one `deploy/lab reload` "
                "writes (edited by hand?); restore it, or start afresh with `deploy/lab down` "
                "and `deploy/lab up`"
            )
        at_new = [lb for lb, layout in layouts.items() if layout == new]
        if len(at_new) == len(layouts):
            raise LabError(
                "nothing to roll back: every LB runs the lab's own layout (`deploy/lab reload` "
                "rolls the change out)"
                if back
                else "every LB runs the changed layout already: `deploy/lab reload --back` "
                "rolls it back, then `deploy/lab reload` can run again"
            )
        if at_new:
            rest = [lb for lb in layouts if lb not in at_new]
            ours, changed = "the lab's own layout", "the changed layout"
            raise LabError(
                f"{', '.join(at_new)} run {ours if back else changed} and {', '.join(rest)} "
                f"{changed if back else ours} (an interrupted roll-out?): start afresh with "
                "`deploy/lab down` and `deploy/lab up`"
            )
        for rack in t.rack_numbers:
            said = self._raftvip(rack, "reload", "--dry-run")
            if not said.startswith("no change"):
                raise LabError(
                    f"lb{rack} does not run what {self.config_path(rack)} says (`raftvip "
                    f"reload --dry-run` prints: {said.splitlines()[0]} ...): reload it, or "
                    "start afresh with `deploy/lab down` and `deploy/lab up`"
                )

    def _settle(self, pending: Callable[[], str | None], what: str) -> None:
        """Wait until `pending` returns None; LabError with its last answer after WAIT."""
        last: list[str | None] = [None]

        def settled() -> bool:
            last[0] = pending()
            return last[0] is None

        try:
            wait_until(settled, timeout=WAIT, what=what, interval=0.02)
        except WaitTimeout as exc:
            cause = f" ({exc.__cause__})" if exc.__cause__ else ""
            raise LabError(f"{exc}: {last[0] or 'no answer'}{cause}") from None

    def _pending(
        self, state: LabState, vips: Sequence[str], running: Mapping[str, Layout], *, spread: bool
    ) -> str | None:
        """What still differs from a lab whose LB `lb` runs `running[lb]` (None: nothing):
        the group holds every member's layout, drifts exactly while the layouts differ and
        places each VIP where the aggregation router's best path leads, on an LB whose
        config has the VIP, announced with that config's MED; a VIP no config has is gone.
        `spread`: also every member alive and healthy and each VIP on its preferred LB."""
        t = state.topology
        doc = self.group_status(state)
        if doc is None:
            return "no member answers on its control socket"
        if doc.get("layouts_pending"):
            return f"the group does not hold the layout of {', '.join(doc['layouts_pending'])}"
        drift = len(set(running.values())) > 1
        if bool(doc.get("config_drift")) != drift:
            return f"raftvip status says config_drift {doc.get('config_drift')}, expected {drift}"
        if spread:
            if not doc.get("has_quorum") or not doc.get("leader"):
                return "the group has no quorum or no leader"
            for name, member in doc["members"].items():
                if not member["alive"] or not all(member["healthy"].values()):
                    return f"{name} is not alive and healthy in the group"
        view = self.view(t, vips)
        for vip in vips:
            holders = [lb for lb in t.lb_names if vip in running[lb].vips]
            seen = view[vip].lb
            if not holders:
                if seen is not None:
                    return f"{vip} is still at the aggregation router (via {seen})"
                continue
            if seen is None:
                return f"{vip} has no path at the aggregation router ({', '.join(holders)} have it)"
            owner = doc["vips"].get(vip, {}).get("owner")
            if owner != seen:
                return f"{vip}: the group gives it to {owner}, the best path leads to {seen}"
            if seen not in holders:
                return f"{vip} is on {seen}, whose config does not have it"
            if view[vip].tor_med != running[seen].med:
                return (
                    f"{vip}: MED {view[vip].tor_med} at {view[vip].tor}, {seen}'s config "
                    f"says {running[seen].med}"
                )
            preferred = dict(running[seen].preferred).get(vip)
            if spread and seen != preferred:
                return f"{vip} is on {seen}, not on its preferred LB {preferred}"
        return None

    def view(self, t: Topology, vips: Sequence[str]) -> dict[str, VipView]:
        """VIP -> its best path at the aggregation router, and the MED of that LB's path at
        the LB's ToR."""
        routes = self.agg(t).routes()
        tor_routes: dict[int, dict[str, list[BirdPath]]] = {}
        views: dict[str, VipView] = {}
        for vip in vips:
            best = next((p for p in routes.get(f"{vip}/32", []) if p.best and p.reachable), None)
            if best is None:
                views[vip] = VipView(None)
                continue
            lb = t.lb_of_path(best)
            tor, tor_med = None, None
            if lb is not None:
                rack = t.rack_of(lb)
                if rack not in tor_routes:
                    tor_routes[rack] = self.tor(rack, t).routes()
                tor = f"tor{rack}"
                tor_med = next(
                    (p.med for p in tor_routes[rack].get(f"{vip}/32", []) if p.protocol == lb),
                    None,
                )
            views[vip] = VipView(lb, best.as_path, best.from_peer, best.med, tor, tor_med)
        return views

    def _stage(
        self,
        state: LabState,
        label: str,
        vips: Sequence[str],
        status_lb: str,
    ) -> Stage:
        """The aggregation router's view now, and the drift `raftvip status` of `status_lb`
        shows (its --json, and the lines about drift of the same text `raftvip status`
        prints)."""
        view = self.view(state.topology, vips)
        doc = json.loads(self._raftvip(state.topology.rack_of(status_lb), "status", "--json"))
        lines = tuple(
            line
            for line in render_status(doc).splitlines()
            if "CONFIG DRIFT" in line or "[only in the config of" in line
        )
        return Stage(
            label=label,
            view=view,
            drift=bool(doc.get("config_drift")),
            status_lb=status_lb,
            status_config=str(self.config_path(state.topology.rack_of(status_lb))),
            status_lines=lines,
            digest=str(doc.get("config_digest", "")),
        )

    # ------------------------------------------------------------------------ seed

    def seed(self, *, keep: bool = False) -> SeedResult:
        """ExaBGP's healthcheck (the seed's setup) then raftvip, on the same topology."""
        t = self._requested
        out("== (a) ExaBGP healthcheck, as in the seed: every LB announces every VIP, MED-ranked")
        out("   (LB k lists its own VIP first: MED 100, then 101, 102 for the others)")
        self.up("healthcheck", quiet=True)
        try:
            return self._seed_compare(t, keep)
        finally:
            if not keep:
                self.down(quiet=True)

    def _seed_compare(self, t: Topology, keep: bool) -> SeedResult:
        state = self.running()
        tor_meds: dict[str, dict[str, int | None]] = {}
        for rack in t.rack_numbers:
            routes = self.tor(rack, t).routes()
            tor_meds[f"tor{rack}"] = {
                vip: next(
                    (p.med for p in routes.get(f"{vip}/32", []) if p.protocol == f"lb{rack}"),
                    None,
                )
                for vip in t.vips
            }
        agg_routes = self.agg(t).routes()
        hc_meds = {vip: [p.med for p in agg_routes.get(f"{vip}/32", [])] for vip in t.vips}
        hc_paths = {vip: len(agg_routes.get(f"{vip}/32", [])) for vip in t.vips}
        healthcheck = self.best_lbs(agg_routes)
        out(self.tor_table(state))
        out("")
        out(self.agg_table(state))
        out("")
        out("== (b) raftvip on the same topology: one owner per VIP, decided by the Raft group")
        began = time.monotonic()
        self.switch("raftvip")
        out(f"   (switched in {time.monotonic() - began:.1f} s)")
        state = self.running()
        routes = self.agg(t).routes()
        raftvip = self.best_lbs(routes)
        best_paths = {vip: sum(1 for p in routes.get(f"{vip}/32", []) if p.best) for vip in t.vips}
        out(self.agg_table(state))
        out("")
        victim = t.lb(2 if t.racks >= 2 else 1)
        out(f"== (b) after a crash of {victim}")
        failover = self.fail(victim, "crash", quiet=False)
        after_failure = self.best_lbs()
        out("")
        out(f"== (b) after {victim} recovers")
        self.heal(victim, quiet=False)
        after_recovery = self.best_lbs()
        out("")
        out("== summary: who carries each VIP at the aggregation router")
        out("   healthcheck: " + _owners_line(healthcheck) + "  (MED lost at the ToR)")
        out("   raftvip:     " + _owners_line(raftvip))
        out(f"   raftvip after {victim} crashed: " + _owners_line(after_failure))
        out(f"   raftvip after {victim} returned: " + _owners_line(after_recovery))
        if keep:
            out("\nthe lab stays up in raftvip mode: deploy/lab status | fail | heal | down")
        return SeedResult(
            tor_meds=tor_meds,
            healthcheck_agg_meds=hc_meds,
            healthcheck_paths=hc_paths,
            healthcheck=healthcheck,
            raftvip=raftvip,
            raftvip_best_paths=best_paths,
            after_failure=after_failure,
            after_recovery=after_recovery,
            failover=failover,
        )

    # ----------------------------------------------------------------------- bench

    def leader(self) -> str:
        state = self.running()
        doc = wait_until(lambda: self.group_status(state), timeout=WAIT, what="a member to answer")
        return str(doc["leader"])

    def settled(self) -> bool:
        """Spread at the aggregation router and every member alive and healthy in the group."""
        if not self.spread():
            return False
        state = self.running()
        doc = self.group_status(state)
        if doc is None or not doc.get("has_quorum") or not doc.get("leader"):
            return False
        t = state.topology
        if any(doc["vips"][t.vip(r)]["owner"] != t.lb(r) for r in t.rack_numbers):
            return False
        return all(m["alive"] and all(m["healthy"].values()) for m in doc["members"].values())

    def bench(self, trials: int, kinds: Sequence[str]) -> dict[str, list[Failover]]:
        """`trials` faults of each kind, each measured on the aggregation router."""
        results: dict[str, list[Failover]] = {kind: [] for kind in kinds}
        self._require_lab_layout(self.running(), "bench")
        t = self.running().topology
        for kind in kinds:
            for trial in range(trials):
                for _ in range(2):  # settled twice, 0.5 s apart: no transient left
                    wait_until(self.settled, timeout=WAIT, what="the lab to settle", interval=0.05)
                    time.sleep(0.5)
                leader = self.leader()
                if kind == "leader crash":
                    victim = leader
                else:
                    others = [lb for lb in t.lb_names if lb != leader]
                    victim = others[trial % len(others)]
                fault = {"owner check failure": "check", "owner hang": "hang"}.get(kind, "crash")
                result = self.fail(victim, fault, quiet=True)
                results[kind].append(result)
                other = "-" if result.other_after is None else f"{result.other_after * 1000:.1f}"
                out(
                    f"  {kind:<20} #{trial + 1:<3} {victim} -> {result.new_lb}  "
                    f"best path moved {result.seconds * 1000:7.1f} ms   "
                    f"path via {result.new_lb} present {other} ms"
                )
                self.heal(victim, quiet=True)
        return results


def _owners_line(best: dict[str, str | None]) -> str:
    return ", ".join(f"{vip} -> {lb or 'nobody'}" for vip, lb in best.items())


LIFECYCLE_KINDS = (
    "stop: leave + SIGTERM",
    "stop: SIGTERM only",
    "restart: raftvip restart",
    "restart: helper SIGTERM",
)


def _planned_line(r: Planned) -> str:
    pid = f", helper pid {r.helper[0]} -> {r.helper[1]}" if r.helper else ""
    return (
        f"aggregation router: {r.vip} {' -> '.join(r.owners) or 'nobody'}, longest without a "
        f"path {r.dark * 1000:.1f} ms, {r.moves} owner moves{pid} ({r.samples} polls)"
    )


def lifecycle_table(results: dict[str, list[Planned]], trials: int) -> str:
    lines = [
        "planned stops and restarts as seen on the aggregation router:",
        f"  {'OPERATION':<27} {'TRIALS':>6} {'DARK MEDIAN':>12} {'DARK MAX':>9} "
        f"{'MOVES MAX':>9} {'PID CHANGED':>11}",
    ]
    for kind, found in results.items():
        if not found:
            continue
        dark = [r.dark for r in found]
        changed = sum(1 for r in found if r.helper and r.helper[0] != r.helper[1])
        pid = f"{changed}/{len(found)}" if kind.startswith("restart") else "-"
        lines.append(
            f"  {kind:<27} {len(found):>6} {statistics.median(dark) * 1000:>9.1f} ms "
            f"{max(dark) * 1000:>6.1f} ms {max(r.moves for r in found):>9} {pid:>11}"
        )
    lines.append(
        "  (a stop moves the stopped LB's VIP once; it moves back after `heal`, not counted)"
    )
    lines.append(f"  reproduce: sudo deploy/lab lifecycle --trials {trials}")
    return "\n".join(lines)


def rollout(t: Topology, *, back: bool = False) -> tuple[Layout, Layout, tuple[str, ...]]:
    """(from, to, LB order) of `deploy/lab reload`: lb1 first, which the added VIP prefers,
    and last the LB of the removed VIP, which keeps it until then; `back` the reverse."""
    if back:
        return reload_layout(t), lab_layout(t), tuple(reversed(t.lb_names))
    return lab_layout(t), reload_layout(t), tuple(t.lb_names)


def describe_change(old: Layout, new: Layout) -> str:
    """`+10.20.255.10 (preferred lb1), -10.20.255.3, MED 100 -> 200, check ...` (one line)."""
    preferred = dict(new.preferred)
    parts = [
        f"+{vip}" + (f" (preferred {preferred[vip]})" if vip in preferred else "")
        for vip in new.vips
        if vip not in old.vips
    ]
    parts += [f"-{vip}" for vip in old.vips if vip not in new.vips]
    if old.med != new.med:
        parts.append(f"MED {old.med} -> {new.med}")
    if old.check_by_command != new.check_by_command:
        kinds = ("an HTTP GET", "the same GET by curl (a command)")
        parts.append(f"check: {kinds[old.check_by_command]} -> {kinds[new.check_by_command]}")
    return ", ".join(parts)


def changed_lines(before: str, after: str) -> tuple[str, ...]:
    """The lines an edit changed, as `-old` / `+new` (a diff without context)."""
    return tuple(
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), n=0, lineterm="")
        if not line.startswith(("---", "+++", "@@"))
    )


def _write_atomically(path: Path, text: str) -> None:
    """A member that reads the file in the middle of the write sees the old or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def stage_text(stage: Stage, agg: str) -> str:
    """A stage of a roll-out as `deploy/lab reload` prints it; `agg` names the router."""
    lines: list[str] = []
    if stage.lb is not None:
        lines.append(f"== {stage.lb}: edit {stage.config}")
        lines += [f"  {line}" for line in stage.edit]
        lines.append(f"$ raftvip reload -c {stage.config}")
        lines += [f"  {line}" for line in stage.output]
        took = f" (`raftvip reload` returned after {stage.returned - stage.began:.2f} s)"
    else:
        took = ""
    lines.append(f"{stage.label}{took}: aggregation router {agg}")
    lines.append(
        f"  {'VIP':<15} {'BEST -> LB':<11} {'AS PATH':<13} {'VIA':<12} {'MED':<5} "
        "MED AT THE LB'S TOR"
    )
    for vip, view in stage.view.items():
        if view.lb is None and not view.as_path:
            lines.append(f"  {vip:<15} (no route)")
            continue
        tor = "-" if view.tor_med is None else str(view.tor_med)
        lines.append(
            f"  {vip:<15} {view.lb or '?':<11} {' '.join(map(str, view.as_path)):<13} "
            f"{view.via or '-':<12} {'-' if view.agg_med is None else view.agg_med:<5} "
            f"{tor} ({view.tor or '?'})"
        )
    status = f"$ raftvip status -c {stage.status_config}"
    if stage.status_lines:
        lines.append(f"{status}   (its lines about drift)")
        lines += [f"  {line}" for line in stage.status_lines]
    else:
        lines.append(f"{status}   no CONFIG DRIFT: every member runs layout {stage.digest}")
    return "\n".join(lines)


def reload_summary(result: ReloadResult) -> str:
    """Per VIP, what the aggregation router saw during the roll-out, then the verdict."""
    last = result.steps[-1].lb if result.steps else result.order[0]
    lines = [
        f"the roll-out at the aggregation router ({result.samples} polls, from before "
        f"{result.order[0]}'s reload to 0.5 s after {last}'s):"
    ]
    for vip in result.kept:
        trace, before, after = result.traces[vip], result.before.view[vip], result.after.view[vip]
        if trace.owners == (before.lb,):
            where = f"always on {before.lb}"
        else:
            where = f"MOVED: {' -> '.join(trace.owners) or 'nowhere'}"
        if trace.dark:
            longest = max(end - start for start, end in trace.dark) * 1000
            dark = f"WITHOUT A PATH {len(trace.dark)} time(s), up to {longest:.1f} ms"
        else:
            dark = "never without a path"
        if after.lb is None:
            med = "no path after the roll-out"
        elif after.tor != before.tor:
            med = f"MED {before.tor_med} at {before.tor} -> {after.tor_med} at {after.tor}"
        else:
            med = f"MED at {after.tor} {before.tor_med} -> {after.tor_med}"
            changed = result.med_changed_with(vip)
            if changed and before.tor_med != after.tor_med:
                med += f" with {changed}'s reload"
        lines.append(f"  {vip:<15} in both configs: {where}, {dark}; {med}")
    for vip in result.added:
        appeared = result.appeared(vip)
        if appeared is None:
            lines.append(f"  {vip:<15} added: NEVER APPEARED")
            continue
        owners = " -> ".join(result.traces[vip].owners)
        lines.append(f"  {vip:<15} added: appeared via {owners}, {appeared.describe()}")
    for vip in result.removed:
        gone = result.disappeared(vip)
        owners = " -> ".join(result.traces[vip].owners)
        if gone is None:
            lines.append(f"  {vip:<15} removed: STILL THERE (via {owners})")
            continue
        lines.append(f"  {vip:<15} removed: via {owners}; gone {gone.describe()}")
    problems = result.problems()
    lines.append("")
    if problems:
        lines.append("reload: FAILED:")
        lines += [f"  {problem}" for problem in problems]
    else:
        again = "deploy/lab reload" if result.back else "deploy/lab reload --back"
        lines.append(
            "reload: OK: no VIP in both configs lost its path or moved; the added one came "
            f"with the first LB's reload, the removed one went with the last's (next: {again})"
        )
    return "\n".join(lines)


BENCH_KINDS = ("owner crash", "leader crash", "owner hang", "owner check failure")


def bench_table(results: dict[str, list[Failover]], trials: int) -> str:
    """Median and max per fault kind of (a) the best path moving to another LB and (b) a path
    via another LB being present at all (raftvip's part; differs from (a) only for a hang)."""
    lines = [
        "failover as seen on the aggregation router, from the fault to:",
        "  (a) its best path for the victim's VIP leading to another LB",
        "  (b) a path via another LB being present (raftvip moved the VIP; best or not)",
        f"  {'FAULT':<21} {'TRIALS':>6} {'(a) MEDIAN':>11} {'(a) MAX':>9} "
        f"{'(b) MEDIAN':>11} {'(b) MAX':>9}",
    ]
    for kind, found in results.items():
        if not found:
            continue
        best = [f.seconds for f in found]
        other = [f.other_after if f.other_after is not None else f.seconds for f in found]
        lines.append(
            f"  {kind:<21} {len(found):>6} {_ms(statistics.median(best)):>11} {_ms(max(best)):>9} "
            f"{_ms(statistics.median(other)):>11} {_ms(max(other)):>9}"
        )
    lines.append(f"  reproduce: sudo deploy/lab bench --trials {trials}")
    return "\n".join(lines)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


# --------------------------------------------------------------------------------- CLI


def _lab_dir(args: argparse.Namespace) -> Path:
    return Path(args.lab_dir or os.environ.get("RAFTVIP_LAB_DIR") or REPO / ".lab")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="deploy/lab",
        description="raftvip lab: 3 LBs (raftvip + ExaBGP), 3 ToR BIRDs, 1 aggregation BIRD.",
    )
    parser.add_argument(
        "--lab-dir",
        help="state and logs (default <repo>/.lab; env RAFTVIP_LAB_DIR)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start the lab (detached) and print it")
    p_up.add_argument("--mode", choices=MODES, default="raftvip")
    p_up.add_argument("--prefix", default="127.0", help="addresses <prefix>.{1,2,3}.k")
    p_up.add_argument("--bgp-port", type=int, default=179)
    p_up.add_argument(
        "--backup-prepend",
        type=int,
        default=0,
        metavar="N",
        help="non-owners announce each VIP with their AS prepended N more times (backup paths)",
    )
    p_up.add_argument(
        "--hold-time",
        type=int,
        default=Topology.hold_time,
        metavar="S",
        help="BGP hold time between each LB and its ToR (a hung LB's path goes after it)",
    )
    p_up.add_argument(
        "--takeover-margin",
        type=int,
        default=0,
        metavar="N",
        help="owners' steady paths carry their AS N more times; a takeover after a hang "
        "leaves them out, so the aggregation router prefers it at once",
    )
    sub.add_parser("status", help="the group and the aggregation router's table")
    p_fail = sub.add_parser("fail", help="break an LB and time the failover")
    p_fail.add_argument("lb")
    p_fail.add_argument("kind", nargs="?", choices=FAULTS, default="crash")
    p_heal = sub.add_parser("heal", help="repair an LB and time the VIP's return")
    p_heal.add_argument("lb")
    p_seed = sub.add_parser("seed", help="ExaBGP healthcheck vs raftvip on the same topology")
    p_seed.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    p_seed.add_argument("--prefix", default="127.0")
    p_seed.add_argument("--bgp-port", type=int, default=179)
    p_bench = sub.add_parser("bench", help="failover median/max per fault kind")
    p_bench.add_argument("--trials", type=int, default=10)
    p_bench.add_argument("--kind", action="append", choices=BENCH_KINDS)
    p_stop = sub.add_parser("stop", help="a planned stop of an LB (raftvip leave + SIGTERM)")
    p_stop.add_argument("lb")
    p_stop.add_argument(
        "--no-leave", action="store_true", help="SIGTERM to ExaBGP alone (the unit before)"
    )
    p_restart = sub.add_parser("restart", help="replace an LB's raftvip process in place")
    p_restart.add_argument("lb")
    p_restart.add_argument(
        "--kill", action="store_true", help="SIGTERM to the helper instead of raftvip restart"
    )
    p_life = sub.add_parser("lifecycle", help="planned stops and restarts, measured")
    p_life.add_argument("--trials", type=int, default=5)
    p_reload = sub.add_parser(
        "reload", help="a config change rolled out one LB at a time, watched by the network"
    )
    p_reload.add_argument(
        "--back", action="store_true", help="roll the lab's own config back in (to repeat)"
    )
    sub.add_parser("down", help="stop everything the lab started")
    p_health = sub.add_parser("health-server", help=argparse.SUPPRESS)
    p_health.add_argument("address")
    p_health.add_argument("port", type=int)
    p_health.add_argument("flag_file", type=Path)
    args = parser.parse_args(argv)

    if args.command == "health-server":
        serve_health(args.address, args.port, args.flag_file)
        return 0
    try:
        return _run(args)
    except (LabError, RaftvipError, ValueError, WaitTimeout) as exc:
        print(f"deploy/lab: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `deploy/lab status | head`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
    except KeyboardInterrupt:
        print("deploy/lab: interrupted (`deploy/lab down` cleans up)", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    lab_dir = _lab_dir(args)
    command = args.command
    if command in ("up", "seed"):
        topology = Topology(
            prefix=args.prefix,
            bgp_port=args.bgp_port,
            backup_prepend=getattr(args, "backup_prepend", 0),
            takeover_margin=getattr(args, "takeover_margin", 0),
            hold_time=getattr(args, "hold_time", Topology.hold_time),
        )
        lab = Lab(lab_dir, topology)
        if command == "up":
            lab.up(args.mode)
        else:
            lab.seed(keep=args.keep)
        return 0
    lab = Lab(lab_dir)
    if command == "status":
        lab.print_status()
    elif command == "fail":
        lab.fail(args.lb, args.kind)
    elif command == "heal":
        lab.heal(args.lb)
    elif command == "stop":
        lab.stop(args.lb, leave=not args.no_leave)
    elif command == "restart":
        lab.restart(args.lb, in_place=not args.kill)
    elif command == "lifecycle":
        _lifecycle(lab, args.trials)
    elif command == "reload":
        return _reload(lab, args.back)
    elif command == "down":
        lab.down()
    elif command == "bench":
        _bench(lab, args.trials, args.kind or list(BENCH_KINDS))
    return 0


def _reload(lab: Lab, back: bool) -> int:
    started_here = lab.load() is None
    if started_here and back:
        raise LabError(
            f"no lab is running in {lab.dir}: `reload --back` rolls back a `deploy/lab reload` "
            "on a running lab"
        )
    if started_here:
        out(f"no lab running in {lab.dir}: starting one (it is taken down at the end)")
        lab.up("raftvip", quiet=True)
    try:
        t = lab.running().topology
        old, new, order = rollout(t, back=back)
        agg = f"agg {t.agg_address} AS {t.agg_as} (`show route all`, best paths):"

        def show(stage: Stage) -> None:
            if stage.label == BEFORE:  # the checks have passed: say what comes
                out(
                    f"reload{' --back' if back else ''}: {describe_change(old, new)}; "
                    f"one LB at a time: {', '.join(order)}"
                )
                out(
                    "(a ToR passes no MED on to the aggregation router, another AS: its MED "
                    "column stays '-'; the last column is the MED of the LB's path at its ToR)"
                )
            out(f"\n{stage_text(stage, agg)}")

        result = lab.reload(back=back, on_stage=show)
    finally:
        if started_here:
            lab.down(quiet=True)
    out("")
    out(reload_summary(result))
    problems = result.problems()
    if problems:
        print(f"deploy/lab: error: reload: {problems[0]}", file=sys.stderr)
        return 1
    return 0


def _bench(lab: Lab, trials: int, kinds: Sequence[str]) -> None:
    if trials < 1:
        raise LabError("--trials: at least 1")
    started_here = lab.load() is None
    if started_here:
        lab.up("raftvip", quiet=True)
    elif lab.running().mode != "raftvip":
        raise LabError("bench needs the lab in raftvip mode: deploy/lab down; deploy/lab up")
    try:
        results = lab.bench(trials, kinds)
    finally:
        if started_here:
            lab.down(quiet=True)
    out("")
    out(bench_table(results, trials))


def _lifecycle(lab: Lab, trials: int) -> None:
    if trials < 1:
        raise LabError("--trials: at least 1")
    started_here = lab.load() is None
    if started_here:
        lab.up("raftvip", quiet=True)
    try:
        results = lab.lifecycle(trials)
    finally:
        if started_here:
            lab.down(quiet=True)
    out("")
    out(lifecycle_table(results, trials))


if __name__ == "__main__":
    sys.exit(main())
