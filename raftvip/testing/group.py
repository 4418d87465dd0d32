"""Members as real OS processes, their stdout read as ExaBGP would.

Each member is `python -m raftvip run -c <its config>` with its stdin and stdout piped to a
`SpeakerStub` that answers every command with `done` (ExaBGP's default ack) and records the
announced set with timestamps. Shared by the integration tests, the chaos suite and the
benchmarks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raftvip.control import request
from raftvip.core.state import WIRE_VERSION
from raftvip.errors import ControlError
from raftvip.testing.bgplab import lab_ipv6_next_hop
from raftvip.testing.wait import free_port

SECRET = "test-secret-0123456789abcdef"


@dataclass
class Change:
    time: float
    action: str  # announce | withdraw
    vip: str
    line: str


class SpeakerStub:
    """Reads a member's stdout like ExaBGP: parses commands, acks each with `answer` (`done`,
    ExaBGP's default ack; `error` plays an ExaBGP that refuses every command)."""

    def __init__(self, proc: subprocess.Popen[bytes], name: str, answer: str = "done") -> None:
        self.proc = proc
        self.name = name
        self.started = time.monotonic()
        self.announced: dict[str, str] = {}
        self.changes: list[Change] = []
        self.lines: list[str] = []
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.ack = True
        self.answer = answer.encode() + b"\n"
        self.thread = threading.Thread(target=self._read, daemon=True, name=f"stub-{name}")
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode().strip()
            now = time.monotonic()
            words = line.split()
            with self.cond:
                self.lines.append(line)
                if len(words) >= 3 and words[0] in ("announce", "withdraw") and words[1] == "route":
                    vip = words[2].split("/")[0]
                    if words[0] == "announce":
                        self.announced[vip] = line
                    else:
                        self.announced.pop(vip, None)
                    self.changes.append(Change(now, words[0], vip, line))
                self.cond.notify_all()
            if self.ack:
                with contextlib.suppress(OSError, ValueError):
                    assert self.proc.stdin is not None
                    self.proc.stdin.write(self.answer)
                    self.proc.stdin.flush()

    def snapshot(self) -> set[str]:
        with self.lock:
            return set(self.announced)


@dataclass
class Member:
    name: str
    address: str
    config: Path
    health_file: Path
    stderr_path: Path
    proc: subprocess.Popen[bytes] | None = None
    stub: SpeakerStub | None = None
    stopped: bool = False
    history: list[SpeakerStub] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def announced(self) -> set[str]:
        if self.stub is None or not self.running or self.stopped:
            return set() if self.stub is None else self.stub.snapshot()
        return self.stub.snapshot()


class Group:
    """N members on 127.0.0.1x addresses with per-member health files."""

    def __init__(
        self,
        root: Path,
        size: int = 3,
        vips_per_member: int = 1,
        extra_vips: int = 0,
        lease: float = 1.5,
        preempt_delay: float = 1.0,
        on_quorum_loss: str = "hold",
        check: bool = True,
        rise: int = 1,
        fall: int = 1,
        extra_cluster: str = "",
        router: tuple[str, int, int] | None = None,
        zookeeper: str = "",
        metrics: bool = False,
        backup_prepend: int = 0,
        ipv6_vips: int = 0,
        env: Mapping[str, str] | None = None,
        takeover_margin: int | None = None,
        hold_time: int | None = None,
        extra_services: str = "",
    ) -> None:
        """`router`: (address, port, AS) of a BGP router the members' ExaBGPs peer with;
        member lbN then speaks from its own 127.0.0.x address as AS 65010 + N.
        `zookeeper`: the body of a [zookeeper] section added to every member's config.
        `ipv6_vips`: IPv6 VIPs 2001:db8::N without a preferred owner, announced over the IPv4
        sessions with the next hop `lab_ipv6_next_hop(<member address>)`.
        `env`: extra environment variables for every member process.
        `takeover_margin`: written to `[service.announce]` (None: the default, 1 with a
        `router`). `hold_time`: the `[exabgp]` neighbor's hold-time (None: ExaBGP's).
        `extra_services`: TOML of more `[[service]]` tables, the same in every member's file."""
        self.root = root
        self.env = dict(env or {})
        self.members: dict[str, Member] = {}
        self.vips: list[str] = []
        self.preferred: dict[str, str] = {}
        secret = root / "secret"
        secret.write_text(SECRET + "\n")
        secret.chmod(0o600)
        port = free_port("127.0.0.1")
        self.metrics_port = free_port("127.0.0.1") if metrics else None
        names = [f"lb{i}" for i in range(1, size + 1)]
        addresses = {n: f"127.0.0.{10 + i}:{port}" for i, n in enumerate(names, start=1)}
        for i, name in enumerate(names):
            for j in range(vips_per_member):
                vip = f"10.{20 + j // 256}.{j % 256}.{i + 1}"
                self.vips.append(vip)
                self.preferred[vip] = name
        self.vips += [f"10.30.0.{k + 1}" for k in range(extra_vips)]
        self.vips += [f"2001:db8::{k + 1}" for k in range(ipv6_vips)]
        for index, name in enumerate(names, start=1):
            health_file = root / f"{name}.healthy"
            health_file.touch()
            check_section = (
                f'[service.check]\ncommand = "test -f {health_file}"\n'
                f"interval = 0.2\nfast_interval = 0.1\nrise = {rise}\nfall = {fall}\n"
                f"timeout = 0.2\n"
                if check
                else ""
            )
            preferred = ", ".join(f'"{v}" = "{m}"' for v, m in self.preferred.items())
            host = addresses[name].rsplit(":", 1)[0]
            next_hop6 = f'next_hop6 = "{lab_ipv6_next_hop(host)}"' if ipv6_vips else ""
            cfg = root / f"{name}.toml"
            cfg.write_text(
                f"""
[cluster]
name = "test"
member = "{name}"
secret_file = "{secret}"
state_dir = "{root / "state" / name}"
control_socket = "{root / f"{name}.sock"}"
lease = {lease}
on_quorum_loss = "{on_quorum_loss}"
{extra_cluster}

[members]
{chr(10).join(f'{n} = "{a}"' for n, a in addresses.items())}

[[service]]
name = "apex"
vips = [{", ".join(f'"{v}"' for v in self.vips)}]
preferred = {{ {preferred} }}
preempt = true
preempt_delay = {preempt_delay}

{check_section}
[service.announce]
next_hop = "self"
med = 100
communities = ["65001:100"]
backup_prepend = {backup_prepend}
{"" if takeover_margin is None else f"takeover_margin = {takeover_margin}"}
{next_hop6}
{self._exabgp_section(router, addresses[name], index, hold_time)}
{f"[zookeeper]{chr(10)}{zookeeper}" if zookeeper else ""}
{self._metrics_section(addresses[name])}
{extra_services}
"""
            )
            self.members[name] = Member(
                name, addresses[name], cfg, health_file, root / f"{name}.stderr"
            )

    def metrics_url(self, name: str) -> str:
        host = self.members[name].address.rsplit(":", 1)[0]
        return f"http://{host}:{self.metrics_port}/metrics"

    def _metrics_section(self, address: str) -> str:
        if self.metrics_port is None:
            return ""
        host = address.rsplit(":", 1)[0]
        return f'\n[metrics]\nlisten = "{host}:{self.metrics_port}"\n'

    @staticmethod
    def _exabgp_section(
        router: tuple[str, int, int] | None, address: str, index: int, hold_time: int | None
    ) -> str:
        if router is None:
            return ""
        host, port, asn = router
        local = address.rsplit(":", 1)[0]
        hold = "" if hold_time is None else f", hold_time = {hold_time}"
        return (
            f'\n[exabgp]\nneighbors = [{{ address = "{host}", port = {port}, '
            f'peer_as = {asn}, local_address = "{local}", local_as = {65010 + index}{hold} }}]\n'
        )

    # --- process control ---

    def start(self, name: str, answer: str = "done") -> Member:
        """Start member `name`; its stub acks every command with `answer`."""
        m = self.members[name]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        env.pop("RAFTVIP_SECRET", None)
        with open(m.stderr_path, "ab") as err:
            m.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "raftvip",
                    "run",
                    "-c",
                    str(m.config),
                    "--log-level",
                    "info",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
            )
        m.stopped = False
        m.stub = SpeakerStub(m.proc, name, answer)
        m.history.append(m.stub)
        return m

    def start_all(self) -> None:
        for name in self.members:
            self.start(name)

    def kill(self, name: str) -> None:
        m = self.members[name]
        if m.proc is not None and m.proc.poll() is None:
            if m.stopped:
                m.proc.send_signal(signal.SIGCONT)
            m.proc.kill()
            m.proc.wait(5)
        m.stopped = False

    def stop_signal(self, name: str) -> None:
        m = self.members[name]
        assert m.proc is not None
        m.proc.send_signal(signal.SIGSTOP)
        m.stopped = True

    def cont(self, name: str) -> None:
        m = self.members[name]
        assert m.proc is not None
        m.proc.send_signal(signal.SIGCONT)
        m.stopped = False

    def terminate(self, name: str, timeout: float = 10.0) -> int | None:
        m = self.members[name]
        if m.proc is None:
            return None
        if m.stopped:
            m.proc.send_signal(signal.SIGCONT)
        m.proc.terminate()
        try:
            return m.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            m.proc.kill()
            return m.proc.wait(5)

    def close(self) -> None:
        for name, m in self.members.items():
            if m.proc is not None and m.proc.poll() is None:
                if m.stopped:
                    with contextlib.suppress(OSError):
                        m.proc.send_signal(signal.SIGCONT)
                m.proc.kill()
                m.proc.wait(5)
            _ = name

    # --- observation ---

    def announcers(self, vip: str, include_dead: bool = False) -> set[str]:
        return {
            name
            for name, m in self.members.items()
            if (include_dead or (m.running and not m.stopped)) and vip in m.announced()
        }

    def converged(self) -> bool:
        """Every VIP announced by exactly one live member."""
        return all(len(self.announcers(vip)) == 1 for vip in self.vips)

    def status(self, name: str, timeout: float = 20.0) -> dict[str, Any]:
        """Member `name`'s status document, from its control socket."""
        doc: dict[str, Any] = request(
            str(self.root / f"{name}.sock"), {"op": "status"}, timeout=timeout
        )
        return doc

    def any_status(
        self, skip: Sequence[str] = (), timeout: float = 1.0, with_leader: bool = False
    ) -> dict[str, Any] | None:
        """The status document of the first running member that answers (and, `with_leader`,
        knows a leader), or None."""
        for name, m in self.members.items():
            if name in skip or not m.running or m.stopped:
                continue
            with contextlib.suppress(ControlError):
                doc = self.status(name, timeout=timeout)
                if doc.get("leader") or not with_leader:
                    return doc
        return None

    def leader(self) -> str | None:
        doc = self.any_status(timeout=5.0, with_leader=True)
        return str(doc["leader"]) if doc is not None else None

    def stderr(self, name: str) -> str:
        return self.members[name].stderr_path.read_text(errors="replace")


def longest_gap(group: Group, vip: str, start: float, end: float) -> float:
    """Longest interval in [start, end] during which no member announced `vip`.

    Built from every member's recorded timeline (event-driven, exact to the read time), so
    it does not depend on a sampling period.
    """
    events: list[tuple[float, int]] = []
    initially = 0
    for member in group.members.values():
        for stub in member.history:
            with stub.lock:
                changes = list(stub.changes)
            on = False
            for change in changes:
                if change.vip != vip:
                    continue
                if change.time <= start:
                    on = change.action == "announce"
                    continue
                if change.action == "announce" and not on:
                    events.append((change.time, +1))
                    on = True
                elif change.action == "withdraw" and on:
                    events.append((change.time, -1))
                    on = False
            initially += int(_state_at(changes, vip, start))
    count = initially
    gap_start = start if count == 0 else None
    longest = 0.0
    for when, delta in sorted(events):
        if when > end:
            break
        count += delta
        if count == 0 and gap_start is None:
            gap_start = when
        elif count > 0 and gap_start is not None:
            longest = max(longest, when - gap_start)
            gap_start = None
    if gap_start is not None:
        longest = max(longest, end - gap_start)
    return longest


def _state_at(changes: list[Change], vip: str, when: float) -> bool:
    on = False
    for change in changes:
        if change.vip == vip and change.time <= when:
            on = change.action == "announce"
    return on


def settled(group: Group) -> bool:
    """Past the cold start: every preferred owner announces its own VIP, and only it, and
    the group speaks this build's command format with every member's own layout committed."""
    if not all(group.announcers(v) == {m} for v, m in group.preferred.items()):
        return False
    name = next((n for n, m in group.members.items() if m.running), None)
    if name is None:
        return True
    try:
        doc = group.status(name, timeout=2.0)
    except ControlError:
        return False
    return bool(doc.get("format") == WIRE_VERSION and not doc.get("layouts_pending"))


def cli(
    group: Group, member: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`raftvip ARGS -c <member's config>`, as an operator on that host runs it."""
    return subprocess.run(
        [sys.executable, "-m", "raftvip", *args, "-c", str(group.members[member].config)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def running_group(root: Path, **kwargs: Any) -> Iterator[Group]:
    group = Group(root, **kwargs)
    try:
        group.start_all()
        yield group
    finally:
        group.close()
