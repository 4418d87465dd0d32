"""ExaBGP text API: a pure formatter for route commands and a parser for what ExaBGP writes back.

Formats verified against ExaBGP 5.0.15 and 4.2.21 talking to BIRD 2.0.12 (tests/test_bgplab.py):

* commands (helper stdout), one per line:
  ``announce route 10.20.255.1/32 next-hop self med 100 community [ 65001:100 ]``,
  ``withdraw route 10.20.255.1/32 next-hop self``. A withdraw matches on the prefix alone.
* ``next-hop self`` only works when the route has the address family of the BGP session:
  an IPv6 VIP over an IPv4 session needs an explicit IPv6 next hop (ExaBGP acks ``error``),
  and BIRD rejects an IPv4-mapped one (``::ffff:a.b.c.d``) as "mismatched address family".
* helper stdin (text encoder): ``done`` / ``error`` after each command; ``neighbor <ip> connected``,
  ``neighbor <ip> up``, ``neighbor <ip> down - <reason>`` and ``shutdown <pid> <ppid>``, each
  event followed by an empty line; answers to ``version``/``show ...`` are free text then ``done``.
  Acks of ``announce``/``withdraw route`` commands come in command order, but a line ExaBGP
  cannot parse at all (and ``version``) is answered at once, ahead of queued route commands.
* helper stdin (``encoder json``, ExaBGP 4.2 and 5.0 alike): every event is one JSON object on
  one line, ``{"exabgp": "5.0.0", ..., "type": "state", "neighbor": {"address": {"local": ...,
  "peer": "127.0.0.1"}, ..., "state": "down", "reason": "..."}}`` and ``{..., "type":
  "notification", "notification": "shutdown"}``, with no empty line after it; acks stay plain
  ``done`` / ``error``.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Literal

from raftvip.config import AnnounceConfig

MAX_EVENT_TEXT = 512
_MAX_U32 = 2**32 - 1

# One ExaBGP token: no whitespace, no control characters, no '[' ']' ';' '{' '}' quotes or '#'.
# Communities ("65001:100", "no-export"), large ("65000:1:2") and extended
# ("target:65000:1", "origin:10.0.0.1:5", "0x0002fde800000001") communities all fit.
_TOKEN = re.compile(r"[A-Za-z0-9:._/+-]+")


def _check_token(field: str, value: str) -> None:
    """Raise ValueError unless `value` is one harmless ExaBGP token (no command injection)."""
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected a string, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{field}: must not be empty")
    if _TOKEN.fullmatch(value):
        return
    for char in value:
        if _TOKEN.fullmatch(char):
            continue
        if char in "\r\n":
            what = "a newline"
        elif not char.isprintable() or ord(char) < 0x20 or ord(char) == 0x7F:
            what = "a control character"
        elif char.isspace():
            what = "whitespace"
        else:
            what = f"the character {char!r}"
        raise ValueError(
            f"{field}: {value!r} contains {what} "
            "(one token of letters, digits and ':._/+-' is expected)"
        )


def _check_u32(field: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field}: expected an integer, got {value!r}")
    if not minimum <= value <= _MAX_U32:
        raise ValueError(f"{field}: must be in [{minimum}, {_MAX_U32}], got {value}")


def _parse_ip(field: str, value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    _check_token(field, value)
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{field}: {value!r} is not an IP address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise ValueError(f"{field}: {value!r} has a scope id, which BGP cannot carry")
    return address


@dataclass(frozen=True)
class Route:
    """One host route for a VIP, with the attributes ExaBGP sends. Validated on construction."""

    vip: str  # normalised on construction: "10.20.255.1", "2001:db8::1"
    next_hop: str = "self"
    med: int | None = None
    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()
    extended_communities: tuple[str, ...] = ()
    as_path: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        vip = _parse_ip("vip", self.vip)
        object.__setattr__(self, "vip", vip.compressed)
        if self.next_hop != "self":
            hop = _parse_ip("next_hop", self.next_hop)
            if vip.version == 6 and hop.version == 4:
                raise ValueError(
                    f"next_hop: {self.next_hop!r} is IPv4 but VIP {vip.compressed} is IPv6; "
                    "an IPv6 route needs an IPv6 next hop"
                )
            object.__setattr__(self, "next_hop", hop.compressed)
        if self.med is not None:
            _check_u32("med", self.med, minimum=0)
        for field, values in (
            ("communities", self.communities),
            ("large_communities", self.large_communities),
            ("extended_communities", self.extended_communities),
        ):
            if not isinstance(values, tuple):
                raise ValueError(f"{field}: expected a tuple, got {type(values).__name__}")
            for index, value in enumerate(values):
                _check_token(f"{field}[{index}]", value)
        if not isinstance(self.as_path, tuple):
            raise ValueError(f"as_path: expected a tuple, got {type(self.as_path).__name__}")
        for index, asn in enumerate(self.as_path):
            _check_u32(f"as_path[{index}]", asn, minimum=1)

    @property
    def prefix(self) -> str:
        """The host prefix: "10.20.255.1/32" or "2001:db8::1/128"."""
        return f"{self.vip}/{32 if ':' not in self.vip else 128}"


GRACEFUL_SHUTDOWN = "65535:0"  # RFC 8326's well-known community


@functools.lru_cache(maxsize=1 << 16)  # routes are rebuilt for every VIP on every decision
def route_for(
    vip: str,
    announce: AnnounceConfig,
    prepend: int = 0,
    handover: bool = False,
    takeover: bool = False,
) -> Route:
    """The route for `vip` with a service's attributes; `prepend` > 0 builds a backup path.

    `handover`: the member keeps the VIP only until its new owner confirms; with
    `announce.graceful_shutdown_community` the path also carries GRACEFUL_SHUTDOWN, which
    routers honouring RFC 8326 rank last (local-pref 0), so traffic moves before the withdraw.

    `takeover`: the owner took the VIP over from a member that may still announce it (see
    `decide.takeover_form`): the path leaves out the `announce.takeover_margin` prepends that
    every other path carries, so it is strictly shorter than the stale one and wins at once.

    Paths put `announce.local_as` in front of the path the owner would send without any
    prepend: `takeover_margin` times for the steady form (not for a takeover), and
    `prepend` more times for a backup, which is so longer than both owner forms. AS-path
    length is transitive and compared before MED, so it survives a ToR. ExaBGP sends an
    explicit `as-path` verbatim but fills in `[local_as]` when there is none, so with no
    configured path the bare path is `(local_as,)` and a backup's is
    `(local_as,) * (margin + prepend + 1)` (literally prepending to `()` would make `prepend=1`
    a no-op).
    """
    if isinstance(prepend, bool) or not isinstance(prepend, int) or prepend < 0:
        raise ValueError(f"prepend: must be an integer >= 0, got {prepend!r}")
    as_path = tuple(announce.as_path)
    extra = prepend + (0 if takeover else announce.takeover_margin)
    if extra:
        if announce.local_as is None:
            what = f"a backup path (prepend {prepend})" if prepend else "takeover_margin"
            raise ValueError(f"VIP {vip}: {what} needs announce.local_as to be set")
        as_path = (announce.local_as,) * extra + (as_path or (announce.local_as,))
    next_hop = announce.next_hop
    if announce.next_hop6 is not None and ipaddress.ip_address(vip).version == 6:
        next_hop = announce.next_hop6
    communities = tuple(announce.communities)
    if handover and announce.graceful_shutdown_community and GRACEFUL_SHUTDOWN not in communities:
        communities += (GRACEFUL_SHUTDOWN,)
    return Route(
        vip=vip,
        next_hop=next_hop,
        med=announce.med,
        communities=communities,
        large_communities=tuple(announce.large_communities),
        extended_communities=tuple(announce.extended_communities),
        as_path=as_path,
    )


def _bracketed(keyword: str, values: tuple[str, ...]) -> str:
    return f" {keyword} [ {' '.join(values)} ]" if values else ""


def announce_line(route: Route) -> str:
    """The ExaBGP command that announces `route` (no trailing newline)."""
    line = f"announce route {route.prefix} next-hop {route.next_hop}"
    if route.med is not None:
        line += f" med {route.med}"
    line += _bracketed("as-path", tuple(str(asn) for asn in route.as_path))
    line += _bracketed("community", route.communities)
    line += _bracketed("large-community", route.large_communities)
    line += _bracketed("extended-community", route.extended_communities)
    return line


def withdraw_line(route: Route) -> str:
    """The ExaBGP command that withdraws `route` (no trailing newline).

    ExaBGP matches a withdraw on the prefix, but resolves `next-hop self` first: an IPv6 VIP over
    an IPv4 session must be withdrawn with the explicit next hop it was announced with.
    """
    return f"withdraw route {route.prefix} next-hop {route.next_hop}"


# "ignored": a message ExaBGP sends only when its api block asks for more than raftvip needs
# (`receive { update; }`, `negotiated;`, `fsm;`, ...): nothing to act on, nothing to warn about.
StdinKind = Literal["ack_done", "ack_error", "neighbor", "shutdown", "blank", "ignored", "unknown"]


@dataclass(frozen=True)
class StdinEvent:
    """One line ExaBGP wrote on the helper's stdin, classified."""

    kind: StdinKind
    text: str  # the raw line, stripped, truncated to MAX_EVENT_TEXT characters
    neighbor: str | None = None  # neighbor events: the peer address
    state: str | None = None  # neighbor events: "connected", "up" or "down"
    reason: str | None = None  # "down" events: ExaBGP's reason, e.g. "closing connection"


_NEIGHBOR_STATES = ("connected", "up", "down")
# Text messages of a neighbor's api `send`/`receive` options: `neighbor <ip> receive update ...`.
_MESSAGE_DIRECTIONS = ("receive", "send")
# Every other `"type"` ExaBGP 4.2 and 5.0 write with `encoder json` (reactor/api/response/json.py).
# A "notification" with a "neighbor" is a BGP NOTIFICATION; the `down` event that follows says it.
_IGNORED_JSON_TYPES = frozenset(
    {"update", "keepalive", "open", "refresh", "operational", "negotiated", "fsm", "signal"}
)


def parse_stdin_line(line: str) -> StdinEvent:
    """Classify one line from ExaBGP (text or JSON encoder). Never raises; unknown lines are
    "unknown"."""
    if isinstance(line, bytes | bytearray):  # tolerate a reader that forgot to decode
        line = bytes(line).decode("utf-8", errors="replace")
    if not isinstance(line, str):
        return StdinEvent(kind="unknown", text="")
    stripped = line.strip()
    text = stripped[:MAX_EVENT_TEXT].rstrip()
    if not stripped:
        return StdinEvent(kind="blank", text="")
    if stripped == "done":
        return StdinEvent(kind="ack_done", text=text)
    if stripped == "error":
        return StdinEvent(kind="ack_error", text=text)
    if stripped.startswith("{"):
        return _parse_json_event(stripped, text)
    words = stripped.split(maxsplit=3)
    if words[0] == "shutdown" and all(word.isdigit() for word in words[1:]) and len(words) <= 3:
        return StdinEvent(kind="shutdown", text=text)
    if words[0] == "neighbor" and len(words) >= 3 and words[2] in _MESSAGE_DIRECTIONS:
        kind: StdinKind = "unknown" if _address(words[1]) is None else "ignored"
        return StdinEvent(kind=kind, text=text)
    if words[0] == "neighbor" and len(words) >= 3 and words[2] in _NEIGHBOR_STATES:
        address = _address(words[1])
        if address is None:
            return StdinEvent(kind="unknown", text=text)
        state = words[2]
        rest = words[3] if len(words) > 3 else ""
        if state != "down":
            if rest:
                return StdinEvent(kind="unknown", text=text)
            return StdinEvent(kind="neighbor", text=text, neighbor=address, state=state)
        reason = rest[1:].strip() if rest.startswith("-") else rest
        return StdinEvent(
            kind="neighbor",
            text=text,
            neighbor=address,
            state=state,
            reason=reason[:MAX_EVENT_TEXT] or None,
        )
    return StdinEvent(kind="unknown", text=text)


def _address(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return ipaddress.ip_address(value).compressed
    except ValueError:
        return None


def _parse_json_event(stripped: str, text: str) -> StdinEvent:
    """One `encoder json` event: the same kinds as the text encoder's lines."""
    unknown = StdinEvent(kind="unknown", text=text)
    try:
        message = json.loads(stripped)
    except (ValueError, RecursionError):
        return unknown
    if not isinstance(message, dict):
        return unknown
    kind = message.get("type")
    if not isinstance(kind, str):
        return unknown
    if kind == "notification" and message.get("notification") == "shutdown":
        return StdinEvent(kind="shutdown", text=text)
    neighbor = message.get("neighbor")
    if kind == "state" and isinstance(neighbor, dict):
        addresses = neighbor.get("address")
        peer = _address(addresses.get("peer")) if isinstance(addresses, dict) else None
        state = neighbor.get("state")
        if peer is None or not isinstance(state, str) or state not in _NEIGHBOR_STATES:
            return unknown
        reason = neighbor.get("reason")
        if state != "down" or not isinstance(reason, str) or not reason:
            reason = None
        return StdinEvent(
            kind="neighbor",
            text=text,
            neighbor=peer,
            state=state,
            reason=None if reason is None else reason[:MAX_EVENT_TEXT],
        )
    if kind in _IGNORED_JSON_TYPES or (kind == "notification" and isinstance(neighbor, dict)):
        return StdinEvent(kind="ignored", text=text)
    return unknown
