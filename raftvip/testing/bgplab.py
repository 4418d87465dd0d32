"""Real BGP parts on loopback for tests, the lab and benchmarks: BIRD 2 routers, ExaBGP speakers.

Not a test module. Everything binds to 127.0.0.0/8 only; several BIRDs run side by side on
different 127.x addresses (`strict bind`), and a BIRD may peer with another BIRD (LB -> ToR ->
aggregation). Processes are started in their own session and always reaped by `stop()`.

Facts this relies on (FIELD-NOTES.md, re-checked with BIRD 2.0.12, ExaBGP 5.0.15 and 4.2.21):
* BIRD on loopback needs `multihop;` and an import filter setting `ifname = "lo"`, else every
  route is unreachable; `error wait time 1, 5;` keeps a dropped speaker from a 60 s lock-out.
* An IPv6 channel over an IPv4 session needs `next hop address <ipv6>` for what BIRD exports
  (BIRD logs "Missing next hop address" otherwise), and BIRD rejects an IPv4-mapped IPv6 next
  hop (`::ffff:127.0.0.11`) as "mismatched address family".
* The control socket speaks lines `DDDD-text` (more follows), ` text` (continuation of the same
  code) and `DDDD text` (last line); 0xxx = done, 1xxx = table entry, 2xxx = heading,
  8xxx = run-time error, 9xxx = parse error. The banner is `0001 BIRD 2.0.12 ready.`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from raftvip.exabgp_config import installed_exabgp_version
from raftvip.testing.wait import ProcessExited, WaitTimeout, wait_until

DEFAULT_STOP_TIMEOUT = 5.0
_LAB_IPV6_NEXT_HOP_BASE = ipaddress.IPv6Address("2001:db8:ffff::")


class LabError(RuntimeError):
    """A lab process failed to start, answer or stop."""


class BirdError(LabError):
    """BIRD answered a control-socket command with an error (8xxx/9xxx)."""


def lab_ipv6_next_hop(ipv4: str) -> str:
    """A documentation-range IPv6 address derived from a 127.x address: 2001:db8:ffff::7f00:b."""
    offset = int(ipaddress.IPv4Address(ipv4))
    return ipaddress.IPv6Address(int(_LAB_IPV6_NEXT_HOP_BASE) + offset).compressed


def _stop_process(proc: subprocess.Popen[bytes], *, timeout: float, group: bool) -> int:
    """SIGTERM the process, SIGKILL after `timeout`, always reap.

    With `group` (a process started in its own session), whatever is left of its process group
    afterwards is SIGKILLed too: helpers that outlived their parent.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc, group=group)
    if group:
        _killpg_quietly(proc.pid)
    return proc.wait(timeout=timeout)


def _kill(proc: subprocess.Popen[bytes], *, group: bool) -> None:
    if group:
        _killpg_quietly(proc.pid)
    else:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    proc.wait(timeout=DEFAULT_STOP_TIMEOUT)


def child_pids(pid: int) -> list[int]:
    """Live children of `pid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[1] == str(pid) and fields[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def _killpg_quietly(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


# --------------------------------------------------------------------------------------- BIRD


@dataclass(frozen=True)
class BirdPeer:
    """One BGP session of a BIRD. `local_*` is BIRD's side, the rest the neighbor's.

    For an ExaBGP speaker use `passive=True` (ExaBGP connects, it does not listen); for a BIRD
    neighbor set `port` to that BIRD's `local_port` and let both sides connect.
    """

    name: str  # BIRD protocol name, e.g. "lb11"
    address: str  # neighbor address
    asn: int  # neighbor AS
    local_address: str
    local_as: int
    local_port: int = 179  # where this BIRD listens (strict bind on local_address)
    port: int = 179  # where the neighbor listens, for BIRD's own connects
    passive: bool = False
    hold_time: int | None = None
    export: bool = True  # export all (a ToR re-announcing upward); False: export none
    # Next hop for exported IPv6 routes over an IPv4 session; default lab_ipv6_next_hop(local).
    ipv6_next_hop: str | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.name):
            raise ValueError(f"BIRD protocol name {self.name!r}: letters, digits and '_' only")
        ipaddress.ip_address(self.address)
        ipaddress.ip_address(self.local_address)


@dataclass(frozen=True)
class RouteEvent:
    """One line of BIRD's route trace (`debug { routes }`) for what a peer sent it."""

    protocol: str  # BIRD protocol name (the peer)
    action: str  # "added" or "removed"
    best: bool  # "added [best]": the new path became the best one
    prefix: str


_TRACE_LINE = re.compile(
    r"<TRACE> (?P<protocol>[A-Za-z0-9_]+)\.ipv[46] > (?P<action>added|removed)"
    r"(?P<best> \[best\])? (?P<prefix>\S+)"
)


@dataclass(frozen=True)
class BirdPath:
    """One path BIRD holds for a prefix (`show route all`); BIRD keeps every path."""

    prefix: str
    protocol: str  # BIRD protocol name
    from_peer: str | None  # neighbor address the path was learned from
    as_path: tuple[int, ...]
    med: int | None
    best: bool  # BIRD's `*`
    next_hop: str | None  # BGP.next_hop (first address), else the gateway
    reachable: bool  # "unicast" (False: "unreachable" etc.)
    local_pref: int | None = None
    communities: tuple[str, ...] = ()  # as BIRD prints them: "(65001,100)"
    large_communities: tuple[str, ...] = ()  # "(65000, 1, 2)"
    ext_communities: tuple[str, ...] = ()  # "(rt, 65000, 1)"


_ROUTE_LINE = re.compile(
    r"^(?P<prefix>\S+)?\s+(?P<kind>[a-z]+) \[(?P<protocol>\S+) (?P<details>[^\]]*)\]"
    r"(?P<best> \*)?"
)
_FROM = re.compile(r"\bfrom (\S+)")
_PARENTHESISED = re.compile(r"\([^)]*\)")


def _reply_end(line: str) -> bool:
    return len(line) >= 5 and line[:4].isdigit() and line[4] == " "


class BirdControl:
    """A client of BIRD's control socket; one connection per command."""

    def __init__(self, socket_path: Path | str, timeout: float = 2.0) -> None:
        self.socket_path = str(socket_path)
        self.timeout = timeout

    def command(self, command: str) -> list[tuple[str, str]]:
        """Run one CLI command; returns (code, text) per reply line. BirdError on 8xxx/9xxx."""
        if "\n" in command:
            raise ValueError(f"one BIRD command per call, got {command!r}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
            with sock.makefile("rb") as reader:
                banner = read_reply(reader)
                if not banner or banner[0][0] != "0001":
                    raise LabError(f"unexpected BIRD banner {banner!r}")
                sock.sendall(command.encode() + b"\n")
                reply = read_reply(reader)
        code, text = reply[-1]
        if code[0] in "89":
            raise BirdError(f"BIRD {command!r}: {code} {text}")
        return reply


def read_reply(reader: IO[bytes]) -> list[tuple[str, str]]:
    """Read one reply from BIRD's control socket: (code, text) per line, continuations
    carrying the code of the line they continue, up to and including the `DDDD ` last line."""
    lines: list[tuple[str, str]] = []
    code = ""
    while True:
        raw = reader.readline()
        if not raw:
            raise LabError("BIRD closed the control connection mid-reply")
        line = raw.decode("utf-8", errors="replace").rstrip("\n")
        if line.startswith("+"):  # spontaneous printout, not part of the reply
            continue
        if len(line) >= 5 and line[:4].isdigit() and line[4] in "- ":
            code, text = line[:4], line[5:]
        elif line.startswith(" "):
            text = line[1:]
        else:
            text = line
        lines.append((code, text))
        if _reply_end(line):
            return lines


def parse_routes(reply: Sequence[tuple[str, str]]) -> dict[str, list[BirdPath]]:
    """`show route all` reply lines -> {prefix: [paths]}, in BIRD's order (best path first)."""
    routes: dict[str, list[BirdPath]] = {}
    current: BirdPath | None = None
    for _code, text in reply:
        if text.startswith("\t"):  # attributes and gateway of the current path
            if current is not None:
                current = _with_attribute(current, text.strip())
            continue
        match = _ROUTE_LINE.match(text)
        if match is None:  # "Table master4:", blank lines, the final "0000"
            continue
        if current is not None:
            routes.setdefault(current.prefix, []).append(current)
        # A further path of the same prefix leaves the prefix column blank.
        prefix = match["prefix"] or (current.prefix if current is not None else "")
        from_match = _FROM.search(match["details"])
        current = BirdPath(
            prefix=prefix,
            protocol=match["protocol"],
            from_peer=from_match[1] if from_match else None,
            as_path=(),
            med=None,
            best=bool(match["best"]),
            next_hop=None,
            reachable=match["kind"] == "unicast",
        )
    if current is not None:
        routes.setdefault(current.prefix, []).append(current)
    return routes


def _with_attribute(path: BirdPath, text: str) -> BirdPath:
    key, _, value = text.partition(":")
    value = value.strip()
    if key == "BGP.as_path":  # AS sets print as "{65001 65002}": flattened
        return replace(path, as_path=tuple(int(asn) for asn in re.findall(r"\d+", value)))
    if key == "BGP.med":
        return replace(path, med=int(value))
    if key == "BGP.local_pref":
        return replace(path, local_pref=int(value))
    if key == "BGP.next_hop":  # IPv6 may add a link-local second address
        return replace(path, next_hop=value.split()[0] if value else None)
    if key == "BGP.community":
        return replace(path, communities=tuple(_PARENTHESISED.findall(value)))
    if key == "BGP.large_community":
        return replace(path, large_communities=tuple(_PARENTHESISED.findall(value)))
    if key == "BGP.ext_community":
        return replace(path, ext_communities=tuple(_PARENTHESISED.findall(value)))
    if text.startswith("via ") and path.next_hop is None:
        return replace(path, next_hop=text.split()[1])
    return path


def parse_protocols(reply: Sequence[tuple[str, str]]) -> dict[str, str]:
    """`show protocols` reply -> {name: BGP state ("Established", "Active", ...) or State}.

    Needs `timeformat protocol iso long` (the "Since" column is then always two words).
    """
    protocols: dict[str, str] = {}
    for code, text in reply:
        if code != "1002":
            continue
        fields = text.split()
        if len(fields) < 6:
            continue
        name, state = fields[0], fields[3]
        protocols[name] = fields[6] if len(fields) > 6 else state
    return protocols


def member_peers(
    addresses: Mapping[str, str], port: int, router_as: int, hold_time: int | None = None
) -> tuple[dict[str, int], list[BirdPeer]]:
    """A router's passive BIRD peers for members `name -> "host:port"` that speak BGP from
    their own address as AS 65010 + N (raftvip.testing.group.Group's `[exabgp]` section)."""
    as_of = {name: 65010 + i for i, name in enumerate(addresses, start=1)}
    peers = [
        BirdPeer(
            name=name,
            address=address.rsplit(":", 1)[0],
            asn=as_of[name],
            local_address="127.0.0.1",
            local_as=router_as,
            local_port=port,
            passive=True,
            hold_time=hold_time,
        )
        for name, address in addresses.items()
    ]
    return as_of, peers


class Bird:
    """A BIRD 2 router in the foreground with a generated config; no kernel protocol."""

    def __init__(
        self,
        workdir: Path | str,
        router_id: str,
        peers: Sequence[BirdPeer],
        *,
        name: str = "bird",
        binary: str | None = None,
        honour_graceful_shutdown: bool = False,
        trace_routes: bool = False,
    ) -> None:
        """`honour_graceful_shutdown`: paths carrying RFC 8326's GRACEFUL_SHUTDOWN community
        (65535:0) get local-pref 0, as a router configured for it does. `trace_routes`: BIRD
        logs every route it imports or removes, and whether it became the best path
        (`route_trace`), in the order it happened."""
        self.workdir = Path(workdir)
        self.router_id = router_id
        self.peers = tuple(peers)
        self.name = name
        self.honour_graceful_shutdown = honour_graceful_shutdown
        self.trace_routes = trace_routes
        self.binary = binary or shutil.which("bird") or "/usr/sbin/bird"
        self.config_path = self.workdir / f"{name}.conf"
        self.socket_path = self.workdir / f"{name}.ctl"
        self.log_path = self.workdir / f"{name}.log"
        self.control = BirdControl(self.socket_path)
        self._proc: subprocess.Popen[bytes] | None = None
        names = [peer.name for peer in self.peers]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate BIRD protocol names in {names}")

    def render_config(self) -> str:
        # The one-line receiver side of RFC 8326 (README, "Graceful shutdown").
        gshut = (
            " if (65535, 0) ~ bgp_community then bgp_local_pref = 0;"
            if self.honour_graceful_shutdown
            else ""
        )
        lines = [
            f"# {self.name}: generated by raftvip.testing.bgplab",
            f"router id {self.router_id};",
            "log stderr all;",
            "timeformat protocol iso long;",
            "timeformat route iso long;",
            "protocol device { }",
            # Loopback next hops are never "directly connected": pin them to lo.
            f'filter lab_import {{ ifname = "lo";{gshut} accept; }}',
        ]
        for peer in self.peers:
            lines += self._protocol_block(peer, self.trace_routes)
        return "\n".join(lines) + "\n"

    @staticmethod
    def _protocol_block(peer: BirdPeer, trace_routes: bool = False) -> list[str]:
        export = "export all" if peer.export else "export none"
        lines = [
            f"protocol bgp {peer.name} {{",
            f"  local {peer.local_address} port {peer.local_port} as {peer.local_as};",
            f"  neighbor {peer.address} port {peer.port} as {peer.asn};",
            "  multihop;",
            "  strict bind on;",
            "  error wait time 1, 5;",
            "  connect retry time 1;",
        ]
        if trace_routes:
            lines.append("  debug { routes };")
        if peer.passive:
            lines.append("  passive on;")
        else:
            lines.append("  connect delay time 1;")  # default 5 s before the first connect
        if peer.hold_time is not None:
            lines.append(f"  hold time {peer.hold_time};")
        lines.append(f"  ipv4 {{ import filter lab_import; {export}; }};")
        ipv6_extra = ""
        if ipaddress.ip_address(peer.local_address).version == 4:
            hop = peer.ipv6_next_hop or lab_ipv6_next_hop(peer.local_address)
            ipv6_extra = f" next hop address {hop};"
        lines.append(f"  ipv6 {{ import filter lab_import; {export};{ipv6_extra} }};")
        lines.append("}")
        return lines

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 5.0) -> None:
        """Start BIRD and wait until its control socket answers."""
        if self._proc is not None:
            raise LabError(f"{self.name} already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.render_config())
        self.socket_path.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, "-f", "-c", str(self.config_path), "-s", str(self.socket_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_until(self._answers, timeout=timeout, what=f"{self.name} control socket")
        except (LabError, WaitTimeout) as exc:
            self.stop()
            raise LabError(f"{exc}; {self.name} log:\n{self.log_text()}") from exc

    def _answers(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise ProcessExited(f"{self.name} exited with {self._proc.returncode}")
        self.control.command("show status")
        return True

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> int | None:
        """SIGTERM, SIGKILL after `timeout`; always reaped. Idempotent."""
        if self._proc is None:
            return None
        return _stop_process(self._proc, timeout=timeout, group=False)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def command(self, command: str) -> list[tuple[str, str]]:
        return self.control.command(command)

    def route_trace(self) -> list[RouteEvent]:
        """What the peers' updates did to BIRD's table, in order (needs `trace_routes`): each
        imported path, whether it became the best, and each removed path."""
        events = []
        for line in self.log_text().splitlines():
            match = _TRACE_LINE.search(line)
            if match is not None:
                events.append(
                    RouteEvent(
                        match["protocol"], match["action"], bool(match["best"]), match["prefix"]
                    )
                )
        return events

    def routes(self) -> dict[str, list[BirdPath]]:
        """Every path in every table: {prefix: [paths]}.

        BIRD omits "from <address>" when it equals the gateway; the protocol's configured
        neighbor address fills `from_peer` then.
        """
        neighbors = {peer.name: peer.address for peer in self.peers}
        routes = parse_routes(self.command("show route all"))
        return {
            prefix: [
                path
                if path.from_peer is not None or path.protocol not in neighbors
                else replace(path, from_peer=neighbors[path.protocol])
                for path in paths
            ]
            for prefix, paths in routes.items()
        }

    def protocols(self) -> dict[str, str]:
        """{protocol name: state}; BGP protocols give their BGP state ("Established", ...)."""
        return parse_protocols(self.command("show protocols"))

    def wait_established(self, names: Iterable[str] | None = None, timeout: float = 10.0) -> None:
        wanted = list(names) if names is not None else [peer.name for peer in self.peers]

        def established() -> bool:
            states = self.protocols()
            return all(states.get(name) == "Established" for name in wanted)

        wait_until(established, timeout=timeout, what=f"{self.name}: {wanted} Established")

    def wait_routes(
        self,
        predicate: Callable[[dict[str, list[BirdPath]]], bool],
        timeout: float = 10.0,
        what: str = "routes",
        interval: float = 0.002,
    ) -> dict[str, list[BirdPath]]:
        """Poll `routes()` until `predicate` holds; returns the routes that satisfied it."""

        def probe() -> dict[str, list[BirdPath]] | None:
            routes = self.routes()
            return routes if predicate(routes) else None

        return wait_until(probe, timeout=timeout, what=f"{self.name}: {what}", interval=interval)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# ------------------------------------------------------------------------------------- ExaBGP


EXABGP4_BINARY = "/usr/sbin/exabgp"  # Debian 12's ExaBGP 4.2 (`apt-get install exabgp`)
EXABGP_VERSIONS = (4, 5)


def exabgp_binary(version: int = 5) -> str:
    """The `exabgp` of major `version`: 5 is the one beside this interpreter (the venv's, pip's
    5.0), else the one on PATH; 4 is Debian's at /usr/sbin/exabgp. LabError when it is missing
    or is another version (`exabgp_version`)."""
    if version not in EXABGP_VERSIONS:
        raise ValueError(f"ExaBGP version: 4 or 5, got {version!r}")
    if version == 4:
        candidates = [EXABGP4_BINARY]
        hint = "apt-get install exabgp"
    else:
        beside = Path(sys.executable).parent / "exabgp"
        candidates = [str(beside)] if beside.exists() else []
        found = shutil.which("exabgp")
        if found is not None and found not in candidates:
            candidates.append(found)
        hint = "pip install exabgp==5.0.15"
    for candidate in candidates:
        if os.access(candidate, os.X_OK) and exabgp_version(candidate) == version:
            return candidate
    raise LabError(f"ExaBGP {version} not found (looked at {candidates or 'PATH'}): {hint}")


@functools.lru_cache(maxsize=8)
def exabgp_version(binary: str) -> int | None:
    """The major version of the ExaBGP at `binary` (4 or 5), None if it does not answer."""
    found = installed_exabgp_version(binary)
    return None if found is None else found[0]


def exabgp_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for one of several ExaBGPs on a host: no CLI pipe, helpers run as us."""
    env = dict(os.environ)
    env.update(
        {
            "exabgp_api_cli": "false",  # several instances would fight over one named pipe
            "exabgp_daemon_user": pwd.getpwuid(os.getuid()).pw_name,  # not `nobody`
            "exabgp_daemon_daemonize": "false",
            "exabgp_log_destination": "stdout",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


class ExaBGP:
    """`exabgp CONF` in its own session; stdout and stderr go to `<name>.log`.

    `exabgp CONF` is ExaBGP 4.2's command line, and 5.0 reads it as `exabgp server CONF`:
    the same argv (and the same `exabgp_<section>_<key>` environment) runs either `version`.
    """

    def __init__(
        self,
        workdir: Path | str,
        config_text: str,
        *,
        name: str = "exabgp",
        env: Mapping[str, str] | None = None,
        binary: str | None = None,
        version: int = 5,
    ) -> None:
        self.workdir = Path(workdir)
        self.config_text = config_text
        self.name = name
        self.env = exabgp_env(env)
        self.version = version
        self.binary = binary or exabgp_binary(version)
        self.config_path = self.workdir / f"{name}.conf"
        self.log_path = self.workdir / f"{name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self._proc is not None:
            raise LabError(f"{self.name} already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.workdir,
                start_new_session=True,
            )

    def wait(self, timeout: float) -> int:
        """Wait for ExaBGP to exit by itself; its exit code (TimeoutExpired after `timeout`)."""
        if self._proc is None:
            raise LabError(f"{self.name} was not started")
        return self._proc.wait(timeout=timeout)

    def helper_pids(self) -> list[int]:
        """ExaBGP's `process` helpers: its live children. ExaBGP starts each helper in a
        process group of its own (os.setpgrp), so killing ExaBGP's group misses them."""
        if self._proc is None or self._proc.poll() is not None:
            return []
        return child_pids(self._proc.pid)

    def kill_all(self) -> None:
        """kill -9 of ExaBGP and its helpers at once (a crashed LB host)."""
        helpers = self.helper_pids()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        for pid in helpers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait(timeout=DEFAULT_STOP_TIMEOUT)

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> int | None:
        """SIGTERM ExaBGP alone (it tells its helpers `down`/`shutdown` and stops them), SIGKILL
        its process group after `timeout`, then kill any helper left. Idempotent."""
        if self._proc is None:
            return None
        helpers = self.helper_pids()
        code = _stop_process(self._proc, timeout=timeout, group=True)
        for pid in helpers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return code

    def wait_configured(self, timeout: float = 10.0) -> None:
        """Wait until ExaBGP has loaded its configuration; ProcessExited (with the log) if it
        rejected it and exited."""

        def loaded() -> bool:
            if "loaded new configuration successfully" in self.log_text():
                return True
            if self._proc is None or self._proc.poll() is not None:
                raise ProcessExited(f"{self.name} is not running; log:\n{self.log_text()}")
            return False

        wait_until(loaded, timeout=timeout, what=f"{self.name} to load its configuration")

    def crash(self) -> None:
        """kill -9 ExaBGP itself (not its helpers, which then see EOF); stop() still cleans up."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=DEFAULT_STOP_TIMEOUT)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# ------------------------------------------------------------------------------ scripted helper

_HELPER_SCRIPT = """\
# An ExaBGP process for tests (written by raftvip.testing.bgplab): prints the lines of
# `commands` at start, then every line written to `commands.fifo`; logs both directions to
# `log.jsonl`; drains stdin.
import json, os, sys, threading, time

directory = sys.argv[1]
lock = threading.Lock()
log = open(os.path.join(directory, "log.jsonl"), "a", buffering=1)


def record(direction, line):
    log.write(json.dumps({"t": time.time(), "dir": direction, "line": line}) + "\\n")


def emit(line):
    with lock:
        sys.stdout.write(line + "\\n")
        sys.stdout.flush()
        record("out", line)


def pump(fifo):
    for line in fifo:
        emit(line.rstrip("\\n"))


# O_RDWR: never sees EOF between writers, and a writer's open never blocks.
fifo = os.fdopen(os.open(os.path.join(directory, "commands.fifo"), os.O_RDWR))
with lock:
    record("start", str(os.getpid()))
threading.Thread(target=pump, args=(fifo,), daemon=True).start()
with open(os.path.join(directory, "commands")) as commands:
    for line in commands.read().splitlines():
        emit(line)
for line in sys.stdin:
    with lock:
        record("in", line.rstrip("\\n"))
with lock:
    record("eof", "")
"""


@dataclass(frozen=True)
class HelperRecord:
    """One line the scripted helper saw: dir is "start", "out" (to ExaBGP), "in" or "eof"."""

    t: float  # time.time() when the helper saw it
    dir: str
    line: str


class ScriptedHelper:
    """A tiny ExaBGP process: sends `initial` lines at every (re)start, then what `send()` gives.

    Everything it wrote and everything ExaBGP wrote back (acks, neighbor events) is logged.
    """

    def __init__(self, directory: Path | str, initial: Sequence[str] = ()) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.script_path = self.directory / "helper.py"
        self.script_path.write_text(_HELPER_SCRIPT)
        (self.directory / "commands").write_text("".join(f"{line}\n" for line in initial))
        self.fifo_path = self.directory / "commands.fifo"
        if not self.fifo_path.exists():
            os.mkfifo(self.fifo_path)
        self.log_path = self.directory / "log.jsonl"

    @property
    def run_command(self) -> str:
        """The command line for ExaBGP's `run` (shell syntax)."""
        return shlex.join([sys.executable, str(self.script_path), str(self.directory)])

    def send(self, *lines: str, timeout: float = 5.0) -> None:
        """Have the helper print `lines` to ExaBGP; waits up to `timeout` for it to be running."""
        data = "".join(f"{line}\n" for line in lines).encode()
        fd = wait_until(self._open_fifo, timeout=timeout, what=f"helper in {self.directory} to run")
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def _open_fifo(self) -> int | None:
        try:
            return os.open(self.fifo_path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no reader: the helper is not (yet) running
                return None
            raise

    def records(self) -> list[HelperRecord]:
        if not self.log_path.exists():
            return []
        records = []
        for raw in self.log_path.read_text().splitlines():
            if raw.strip():
                item = json.loads(raw)
                records.append(HelperRecord(t=item["t"], dir=item["dir"], line=item["line"]))
        return records

    def stdin_lines(self) -> list[str]:
        """What ExaBGP wrote on the helper's stdin, in order, blank lines included."""
        return [record.line for record in self.records() if record.dir == "in"]

    def wait_stdin(
        self, predicate: Callable[[list[str]], bool], timeout: float = 10.0, what: str = ""
    ) -> list[str]:
        def probe() -> list[str] | None:
            lines = self.stdin_lines()
            return lines if predicate(lines) else None

        return wait_until(probe, timeout=timeout, what=what or f"{self.directory} stdin")
