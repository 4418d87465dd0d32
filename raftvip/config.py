"""TOML configuration -> frozen dataclasses.

Every problem names its key path and the offending value
(`service[0].vips[2]: '10.0.0.300' is not an IP address`). Unknown keys are errors.
`load_config` collects *all* problems and raises one `ConfigError` listing them.
`load_secret` obtains the Raft shared secret (env or a mode-0600 file) without ever
putting it in a message.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import stat
import string
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, TypeVar

from raftvip.errors import ConfigError, SecretError

QuorumLossPolicy = Literal["hold", "withdraw"]
CheckKind = Literal["none", "command", "http", "tcp"]
WireFormat = Literal["aead", "fernet"]


@dataclass(frozen=True)
class RaftTuning:
    """pysyncobj timings (FIELD-NOTES.md "Measured better"); `[raft]` section, all optional."""

    # 0.1 s heartbeats (pysyncobj wants min_timeout > 3 heartbeats): a third less idle CPU
    # than 50 ms ones, ~25 ms more to replace a crashed leader (tests/bench_idle.py IDLE_NOTES).
    min_timeout: float = 0.31
    max_timeout: float = 0.5
    heartbeat: float = 0.1  # appendEntriesPeriod
    connection_timeout: float = 1.0
    connection_retry: float = 0.5
    leader_fallback: float = 1.0
    # Keep idle follower<->follower links warm: well inside connection_timeout, which
    # pysyncobj checks only when a message arrives (FIELD-NOTES.md "Why pings matter").
    ping_interval: float = 0.3
    connect_timeout: float = 1.0  # give up on a connect that the kernel keeps retrying
    disconnect_grace: float = 0.03  # leader: closed TCP link older than this -> expire
    # Message encryption on the Raft port: "aead" (ChaCha20-Poly1305, after raftvip 0.1.0) or
    # "fernet" (pysyncobj's own, what older raftvip speaks: for a roll-out across versions).
    # Both are accepted on receive whatever this says; it picks what this member sends first.
    wire: WireFormat = "aead"


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    member: str
    secret_file: str | None
    state_dir: str
    control_socket: str
    lease: float = 1.5
    on_quorum_loss: QuorumLossPolicy = "hold"
    # How often a member renews its lease through the log; default lease / 3.
    report_interval: float = 0.5
    # Graceful handover bound on SIGTERM (seconds).
    shutdown_timeout: float = 5.0
    # A member handing a VIP over (drain, preemption, rebalance) keeps announcing it until the
    # new owner confirms through the log, at most this long (then withdraws, and says so).
    handover_timeout: float = 5.0


@dataclass(frozen=True)
class CheckConfig:
    kind: CheckKind = "none"
    # command: a shell command line; http: a URL (http:// or https://); tcp: "host:port".
    target: str = ""
    interval: float = 5.0
    fast_interval: float = 1.0
    rise: int = 3
    fall: int = 3
    timeout: float = 2.0
    disable_file: str | None = None


@dataclass(frozen=True)
class AnnounceConfig:
    next_hop: str = "self"
    # Next hop for IPv6 VIPs; needed when the BGP sessions are IPv4 (`self` would be an IPv4
    # address, which ExaBGP refuses for an IPv6 route). None: use `next_hop`.
    next_hop6: str | None = None
    med: int | None = None
    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()
    extended_communities: tuple[str, ...] = ()
    as_path: tuple[int, ...] = ()
    backup_prepend: int = 0
    # The AS number a backup announcement prepends (defaults to the first
    # [exabgp] neighbor's local_as); required when backup_prepend > 0.
    local_as: int | None = None
    # RFC 8326: while a member keeps a VIP only for a handover, its path also carries the
    # well-known GRACEFUL_SHUTDOWN community 65535:0, so routers that honour it (local-pref 0)
    # move traffic to the new owner before the old path is withdrawn.
    graceful_shutdown_community: bool = True
    # An owner's steady path carries its local AS this many extra times; a member that takes
    # a VIP over from one that may still announce it (expired: hang, crash, partition) omits
    # them until the old path must be gone, so routers prefer the new path at once instead of
    # keeping a stale one until their hold timer. 0: off. Config files default to 1 when the
    # local AS is known (`local_as` or [exabgp]); the dataclass default keeps it off.
    takeover_margin: int = 0
    # The routers' BGP hold time (s): a hung speaker's stale path is gone this long after the
    # takeover at the latest. Default: the largest [exabgp] neighbor hold_time (ExaBGP's 180
    # where unset); inf when a neighbor has hold_time 0 (no hold timer: the takeover form
    # lasts until the previous owner is back in the group).
    takeover_hold_time: float = 180.0


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    vips: tuple[str, ...]  # normalised (ipaddress.ip_address(...).compressed), config order
    preferred: Mapping[str, str] = field(default_factory=dict)  # vip -> member
    preempt: bool = True
    preempt_delay: float = 5.0
    # Move VIPs without a preferred owner onto a member that has been healthy for
    # preempt_delay when the spread is uneven by more than one.
    rebalance: bool = True
    check: CheckConfig = field(default_factory=CheckConfig)
    announce: AnnounceConfig = field(default_factory=AnnounceConfig)


@dataclass(frozen=True)
class NeighborConfig:
    address: str
    peer_as: int
    local_address: str
    local_as: int
    port: int = 179
    router_id: str | None = None  # defaults to local_address when it is IPv4
    hold_time: int | None = None


@dataclass(frozen=True)
class ExabgpConfig:
    neighbors: tuple[NeighborConfig, ...] = ()
    process_name: str | None = None  # default "raftvip-<cluster>"
    # Command ExaBGP runs; default: this interpreter's `raftvip run -c <config path>`.
    run: str | None = None


@dataclass(frozen=True)
class MetricsConfig:
    listen: str  # "host:port"


@dataclass(frozen=True)
class ZookeeperConfig:
    """`[zookeeper]`: the optional ExaZK-compatible mirror (raftvip/zkmirror.py).

    Path templates take `{cluster}` and `{service}`; `maintenance_path` may end with
    `/{member}` (ExaZK's per-node layout: that node drains the member).
    """

    hosts: tuple[str, ...]
    service_path: str = "/exabgp/service/{service}"
    maintenance_path: str = "/exabgp/maintenance/{service}"
    state_path: str = "/raftvip/{cluster}"
    session_timeout: float = 10.0
    auth_file: str | None = None  # "user:password", mode 0600: digest ACL on state_path

    @property
    def per_member_maintenance(self) -> bool:
        return self.maintenance_path.endswith("/{member}")


@dataclass(frozen=True)
class Config:
    path: str
    cluster: ClusterConfig
    members: Mapping[str, str]  # name -> "host:port", config order
    services: tuple[ServiceConfig, ...]
    exabgp: ExabgpConfig = field(default_factory=ExabgpConfig)
    raft: RaftTuning = field(default_factory=RaftTuning)
    metrics: MetricsConfig | None = None
    zookeeper: ZookeeperConfig | None = None
    notes: tuple[str, ...] = ()  # not problems, worth knowing (`check-config` prints them)

    @property
    def me(self) -> str:
        return self.cluster.member

    @property
    def self_address(self) -> str:
        return self.members[self.cluster.member]

    def service_of(self, vip: str) -> ServiceConfig | None:
        # A vip -> service index, built once per `services` (called per VIP per step: with
        # thousands of VIPs a scan was quadratic). Kept beside the fields and checked by
        # identity, so a copy with other services (`evolve`, `replace`) never reads a stale one.
        index = self.__dict__.get("_by_vip")
        if index is None or index[0] is not self.services:
            by_vip: dict[str, ServiceConfig] = {}
            for service in self.services:
                for address in service.vips:
                    by_vip.setdefault(address, service)
            index = (self.services, by_vip)
            self.__dict__["_by_vip"] = index
        return index[1].get(vip)


# --------------------------------------------------------------------------- public API

SECRET_ENV: Final = "RAFTVIP_SECRET"
MIN_SECRET_LENGTH: Final = 16
MAX_SECRET_FILE_BYTES: Final = 65536


def load_config(
    path: str, member: str | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Read, validate and freeze the TOML file at `path`.

    `member` overrides `cluster.member` (`raftvip run --member lb2`). The Raft secret must
    be obtainable (see `load_secret`) but is not part of the result. Raises `ConfigError`
    listing every problem found, each starting with its key path (or the file name).
    """
    document = _read_document(path)
    report = _Report()
    root = _Reader(report, "", document, _TOP_KEYS)
    cluster = _read_cluster(root.table("cluster", _CLUSTER_KEYS, required=True), member)
    members = _read_members(root.table("members", None, required=_MEMBERS_REQUIRED))
    exabgp = _read_exabgp(root.table("exabgp", _EXABGP_KEYS))
    service_tables = root.tables("service", _SERVICE_KEYS, required=_SERVICE_REQUIRED)
    services = _read_services(service_tables, members, exabgp)
    raft = _read_raft(root.table("raft", _RAFT_KEYS))
    metrics = _read_metrics(root.table("metrics", _METRICS_KEYS))
    zookeeper = (
        _read_zookeeper(root.table("zookeeper", _ZOOKEEPER_KEYS)) if root.has("zookeeper") else None
    )

    _check_member(report, cluster, members, overridden=member is not None)
    _check_lease(report, cluster, raft)
    if report.ok("cluster", "cluster.secret_file"):
        try:
            load_secret(cluster, environ)
        except SecretError as exc:
            report.add_line(str(exc))
    if zookeeper is not None and zookeeper.auth_file and report.ok("zookeeper.auth_file"):
        try:
            load_zookeeper_auth(zookeeper)
        except SecretError as exc:
            report.add_line(str(exc))

    if report.problems:
        raise ConfigError(report.problems)
    return Config(
        path=path,
        cluster=cluster,
        members=members,
        services=services,
        exabgp=exabgp,
        raft=raft,
        metrics=metrics,
        zookeeper=zookeeper,
        notes=tuple(report.notes),
    )


def load_secret(cluster: ClusterConfig, environ: Mapping[str, str] | None = None) -> str:
    """The Raft shared secret: `$RAFTVIP_SECRET` if set and non-empty, else `cluster.secret_file`.

    Trailing whitespace is stripped from either source so that members reading the same
    value from different places agree. Raises `SecretError` naming the source, never the
    secret itself.
    """
    env = os.environ if environ is None else environ
    from_env = env.get(SECRET_ENV, "")
    if from_env:
        return _checked_secret(from_env.rstrip(), SECRET_ENV)
    path = cluster.secret_file
    if path is None:
        raise SecretError(
            f"cluster.secret_file: required (or set {SECRET_ENV}): the Raft port is encrypted"
        )
    where = f"cluster.secret_file: {path}"
    return _checked_secret(_read_private_file(path, where).rstrip(), where)


def load_zookeeper_auth(zookeeper: ZookeeperConfig) -> tuple[str, str] | None:
    """ZooKeeper digest credentials (user, password) from `zookeeper.auth_file`, or None.

    Same rules as the Raft secret file (regular file, mode 0600, UTF-8); the file holds
    `user:password`. Raises `SecretError` naming the file, never the password.
    """
    path = zookeeper.auth_file
    if path is None:
        return None
    where = f"zookeeper.auth_file: {path}"
    user, colon, password = _read_private_file(path, where).strip().partition(":")
    if not colon or not user or not password:
        raise SecretError(f"{where}: expected one line 'user:password'")
    return user, password


def _read_private_file(path: str, where: str) -> str:
    """The text of a file that must be readable by its owner only (secrets)."""
    try:
        # O_NONBLOCK: a FIFO must not hang the loader; the regular-file check rejects it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SecretError(f"{where}: cannot read: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise SecretError(f"{where}: not a regular file")
        if mode & 0o077:
            raise SecretError(
                f"{where}: accessible by group or others (mode {stat.S_IMODE(mode):04o});"
                f" run `chmod 600 {path}`"
            )
        raw = os.read(fd, MAX_SECRET_FILE_BYTES + 1)
        if len(raw) > MAX_SECRET_FILE_BYTES:
            raise SecretError(f"{where}: larger than {MAX_SECRET_FILE_BYTES} bytes, not a secret")
    except OSError as exc:
        raise SecretError(f"{where}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # The decoder's own message quotes a byte of the secret: do not repeat it.
        raise SecretError(f"{where}: not valid UTF-8 text") from None
    return text


def _checked_secret(secret: str, where: str) -> str:
    if not secret:
        raise SecretError(f"{where}: the secret is empty")
    if len(secret) < MIN_SECRET_LENGTH:
        raise SecretError(
            f"{where}: the secret is shorter than {MIN_SECRET_LENGTH} characters;"
            " use a long random string (e.g. `openssl rand -base64 32`)"
        )
    return secret


# ------------------------------------------------------------------- keys and syntax

_TOP_KEYS: Final = ("cluster", "members", "service", "exabgp", "raft", "metrics", "zookeeper")
_CLUSTER_KEYS: Final = (
    *["name", "member", "secret_file", "state_dir", "control_socket"],
    *["lease", "on_quorum_loss", "report_interval", "shutdown_timeout", "handover_timeout"],
)
_SERVICE_KEYS: Final = (
    *["name", "vips", "preferred", "preempt", "preempt_delay"],
    *["rebalance", "check", "announce"],
)
_CHECK_KINDS: Final = ("command", "http", "tcp")
_CHECK_KEYS: Final = (
    *_CHECK_KINDS,
    *["interval", "fast_interval", "rise", "fall", "timeout", "disable_file"],
)
_ANNOUNCE_KEYS: Final = tuple(f.name for f in dataclasses.fields(AnnounceConfig))
_EXABGP_KEYS: Final = tuple(f.name for f in dataclasses.fields(ExabgpConfig))
_NEIGHBOR_KEYS: Final = tuple(f.name for f in dataclasses.fields(NeighborConfig))
_RAFT_KEYS: Final = tuple(f.name for f in dataclasses.fields(RaftTuning))
_METRICS_KEYS: Final = ("listen",)
_ZOOKEEPER_KEYS: Final = tuple(f.name for f in dataclasses.fields(ZookeeperConfig))

_MEMBERS_REQUIRED: Final = 'required (a table of member name = "host:port")'
_SERVICE_REQUIRED: Final = "at least one [[service]] is required"

MAX_PORT: Final = 65535
MAX_U16: Final = 65535
MAX_U32: Final = 4294967295
MAX_BACKUP_PREPEND: Final = 16
MAX_TAKEOVER_MARGIN: Final = 16
EXABGP_DEFAULT_HOLD_TIME: Final = 180  # what ExaBGP offers when a neighbor sets no hold-time
# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_UNIX_SOCKET_PATH: Final = 107

_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_NAME_RULE: Final = (
    "letters, digits, '_', '.', '-', starting with a letter or digit, at most 63 characters"
)
# Anything that could split or corrupt a line of ExaBGP's text API or configuration:
# C0 controls, DEL, C1 controls and the Unicode line/paragraph separators.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_.:/-]+")
_HOST_LABEL: Final = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_DIGITS: Final = re.compile(r"[0-9]+")
_COMMUNITY: Final = re.compile(r"([0-9]{1,5}):([0-9]{1,5})")
_WELL_KNOWN_COMMUNITIES: Final = ("no-export", "no-advertise", "no-export-subconfed", "nopeer")
_LARGE_COMMUNITY: Final = re.compile(r"([0-9]{1,10}):([0-9]{1,10}):([0-9]{1,10})")
_EXTENDED_COMMUNITY: Final = re.compile(r"(target|origin|l2info|redirect):[^\s\[\]]+")
_SHOWN_CHARS: Final = 60

T = TypeVar("T")

# on_quorum_loss = "withdraw": seconds kept between a member's lease fence and the earliest
# time a leader can expire it (see reconcile.fence_time).
FENCE_MARGIN = 0.15


def _read_document(path: str) -> dict[str, object]:
    try:
        with open(path, "rb") as config_file:
            raw = config_file.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{path}: invalid TOML: not UTF-8 ({exc.reason} at byte {exc.start})"]
        ) from None
    try:
        return tomllib.loads(text)
    except (ValueError, RecursionError) as exc:
        # ValueError covers TOMLDecodeError and integers longer than Python accepts.
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ConfigError([f"{path}: invalid TOML: {reason}"]) from None


# --------------------------------------------------------------- the problem collector


class _Report:
    """Collects problems (`path: message`) and remembers which key paths failed."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.notes: list[str] = []
        self._failed: set[str] = set()

    def add(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")
        self._failed.add(path)

    def add_line(self, problem: str) -> None:
        self.problems.append(problem)

    def ok(self, *paths: str) -> bool:
        """True when none of `paths` has a problem: cross-checks on them make sense."""
        return self._failed.isdisjoint(paths)


class _Invalid(Exception):
    """A string failed a syntax check; the message says why, without the key path."""


_MISSING: Final = object()


class _Reader:
    """Typed access to one TOML table; every problem is recorded under its key path.

    Readers never raise: a missing or invalid value is reported and read as None (or an
    empty collection), and the caller substitutes a default so that checking continues.
    `quiet` readers stand for a table that is absent or not a table: their required keys
    are not reported again.
    """

    def __init__(
        self,
        report: _Report,
        path: str,
        data: Mapping[str, object],
        known: Sequence[str] | None,
        *,
        quiet: bool = False,
    ) -> None:
        self.report = report
        self.path = path
        self.data = data
        self.quiet = quiet
        if known is not None:
            for key in data:
                if key not in known:
                    hint = difflib.get_close_matches(key, known, n=1)
                    suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
                    report.add(self.sub(key), f"unknown key{suffix}")

    def sub(self, key: str) -> str:
        shown = key if _BARE_KEY.fullmatch(key) else json.dumps(key)
        return f"{self.path}.{shown}" if self.path else shown

    def has(self, key: str) -> bool:
        return key in self.data

    def add(self, key: str, message: str) -> None:
        self.report.add(self.sub(key), message)

    def ok(self, *keys: str) -> bool:
        return self.report.ok(*(self.sub(key) for key in keys))

    def _lookup(self, key: str, required: bool | str) -> object:
        if key in self.data:
            return self.data[key]
        if required and not self.quiet:
            self.add(key, required if isinstance(required, str) else "required")
        return _MISSING

    def text(self, key: str, *, required: bool | str = False) -> str | None:
        value = self._lookup(key, required)
        return None if value is _MISSING else _as_text(self.report, self.sub(key), value)

    def parsed(
        self, key: str, parse: Callable[[str], str], *, required: bool | str = False
    ) -> str | None:
        value = self._lookup(key, required)
        return None if value is _MISSING else _as_parsed(self.report, self.sub(key), value, parse)

    def integer(
        self, key: str, *, lo: int, hi: int | None = None, required: bool = False
    ) -> int | None:
        value = self._lookup(key, required)
        return None if value is _MISSING else _as_int(self.report, self.sub(key), value, lo, hi)

    def number(self, key: str, *, gt: float | None = None, ge: float | None = None) -> float | None:
        value = self._lookup(key, False)
        if value is _MISSING:
            return None
        return _as_number(self.report, self.sub(key), value, gt=gt, ge=ge)

    def boolean(self, key: str) -> bool | None:
        value = self._lookup(key, False)
        if value is _MISSING:
            return None
        if isinstance(value, bool):
            return value
        self.add(key, f"expected a boolean (true or false), got {_show(value)}")
        return None

    def array(self, key: str, *, required: bool | str = False) -> list[tuple[str, object]]:
        """The items of an array with their key paths; [] when missing or invalid."""
        value = self._lookup(key, required)
        if value is _MISSING:
            return []
        if not isinstance(value, list):
            self.add(key, f"expected an array, got {_show(value)}")
            return []
        return [(f"{self.sub(key)}[{i}]", item) for i, item in enumerate(value)]

    def parsed_items(self, key: str, parse: Callable[[str], str]) -> tuple[str, ...]:
        items = (_as_parsed(self.report, p, item, parse) for p, item in self.array(key))
        return tuple(item for item in items if item is not None)

    def table(
        self, key: str, known: Sequence[str] | None, *, required: bool | str = False
    ) -> _Reader:
        value = self._lookup(key, required)
        if isinstance(value, dict):
            return _Reader(self.report, self.sub(key), value, known)
        if value is not _MISSING:
            self.add(key, f"expected a table, got {_show(value)}")
        return _Reader(self.report, self.sub(key), {}, None, quiet=True)

    def tables(
        self, key: str, known: Sequence[str], *, required: bool | str = False
    ) -> list[_Reader]:
        value = self._lookup(key, required)
        if value is _MISSING:
            return []
        if not isinstance(value, list):
            self.add(key, f"expected an array of tables, got {_show(value)}")
            return []
        if not value and required and not self.quiet:
            self.add(key, required if isinstance(required, str) else "must not be empty")
        readers = []
        for i, item in enumerate(value):
            item_path = f"{self.sub(key)}[{i}]"
            if isinstance(item, dict):
                readers.append(_Reader(self.report, item_path, item, known))
            else:
                self.report.add(item_path, f"expected a table, got {_show(item)}")
        return readers


def _show(value: object) -> str:
    """A value as a person would recognise it from the TOML file, kept short."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    shown = repr(value)
    return shown if len(shown) <= _SHOWN_CHARS else shown[: _SHOWN_CHARS - 3] + "..."


def _fmt(number: float) -> str:
    return f"{number:.10g}"


def _or(value: T | None, default: T) -> T:
    return default if value is None else value


def _as_text(report: _Report, path: str, value: object) -> str | None:
    if not isinstance(value, str):
        report.add(path, f"expected a string, got {_show(value)}")
        return None
    if not value:
        report.add(path, "must not be empty")
        return None
    control = _CONTROL.search(value)
    if control:
        report.add(path, f"contains a control character (U+{ord(control.group()):04X})")
        return None
    return value


def _as_parsed(
    report: _Report, path: str, value: object, parse: Callable[[str], str]
) -> str | None:
    text = _as_text(report, path, value)
    if text is None:
        return None
    try:
        return parse(text)
    except _Invalid as exc:
        report.add(path, str(exc))
        return None


def _as_int(report: _Report, path: str, value: object, lo: int, hi: int | None) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        report.add(path, f"expected an integer, got {_show(value)}")
        return None
    if hi is None and value < lo:
        report.add(path, f"must be >= {lo}, got {_show(value)}")
        return None
    if hi is not None and not lo <= value <= hi:
        report.add(path, f"must be between {lo} and {hi}, got {_show(value)}")
        return None
    return value


def _as_number(
    report: _Report, path: str, value: object, *, gt: float | None, ge: float | None
) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        report.add(path, f"expected a number, got {_show(value)}")
        return None
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        report.add(path, f"expected a finite number, got {_show(value)}")
        return None
    if gt is not None and not number > gt:
        report.add(path, f"must be > {_fmt(gt)}, got {_show(value)}")
        return None
    if ge is not None and not number >= ge:
        report.add(path, f"must be >= {_fmt(ge)}, got {_show(value)}")
        return None
    return number


# ----------------------------------------------------------------------- string syntax


def _name(text: str) -> str:
    if not _NAME.fullmatch(text):
        raise _Invalid(f"{text!r} is not a valid name ({_NAME_RULE})")
    return text


def _ip(text: str) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise _Invalid(f"{text!r} is not an IP address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise _Invalid(f"{text!r} is not an IP address (no %zone here)")
    return address.compressed


def _ipv4(text: str) -> str:
    try:
        return ipaddress.IPv4Address(text).compressed
    except ValueError:
        raise _Invalid(f"{text!r} is not an IPv4 address") from None


def _ipv6(text: str) -> str:
    address = ipaddress.ip_address(_ip(text))
    if address.version != 6:
        raise _Invalid(f"{text!r} is not an IPv6 address")
    return address.compressed


def _vip(text: str) -> str:
    """A host address, optionally written as a /32 or /128 prefix; normalised."""
    address_text, slash, prefix = text.partition("/")
    try:
        address = ipaddress.ip_address(_ip(address_text))
    except _Invalid:
        raise _Invalid(f"{text!r} is not an IP address") from None
    if slash and prefix != str(address.max_prefixlen):
        raise _Invalid(f"{text!r} must be a host address (/32 or /128)")
    if address.is_unspecified or address.is_multicast:
        raise _Invalid(f"{text!r} is not a unicast host address")
    return address.compressed


def _next_hop(text: str) -> str:
    if text == "self":
        return text
    try:
        return _ip(text)
    except _Invalid:
        raise _Invalid(f"{text!r} must be 'self' or an IP address") from None


def _split_host_port(text: str) -> tuple[str, int]:
    """`host:port` or `[ipv6]:port` -> (host without brackets, port)."""
    example = "(IPv6 as [addr]:port)"
    if text.startswith("["):
        host, bracket_colon, port_text = text[1:].partition("]:")
        if not bracket_colon:
            raise _Invalid(f"{text!r} is not host:port {example}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _Invalid(f"{text!r}: only IPv6 addresses go in brackets") from None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or not host:
            raise _Invalid(f"{text!r} is not host:port {example}")
        if ":" in host:
            raise _Invalid(f"{text!r}: write an IPv6 address in brackets, e.g. '[{host}]:7801'")
    port = int(port_text) if _DIGITS.fullmatch(port_text) and len(port_text) <= 5 else -1
    if not 1 <= port <= MAX_PORT:
        raise _Invalid(f"port {port_text!r} in {text!r} is not between 1 and {MAX_PORT}")
    return host, port


def _member_address(text: str) -> str:
    """An IP `host:port` normalised the way pysyncobj splits it: `addr:port`, no brackets."""
    host, port = _split_host_port(text)
    try:
        address = _ip(host)
    except _Invalid:
        raise _Invalid(f"host {host!r} in {text!r} is not an IP address") from None
    return f"{address}:{port}"


def check_member(name: str, address: str) -> str | None:
    """A problem with a member name and its `host:port` Raft address, or None.

    For `raftvip members add`; `address` must already be in the normalised form that
    [members] values take (`addr:port`, IPv6 without brackets).
    """
    try:
        _name(name)
    except _Invalid as exc:
        return f"member name: {exc}"
    try:
        normalised = _member_address(address)
    except _Invalid as exc:
        return f"member address: {exc}"
    if normalised != address:
        return f"member address: write it as {normalised!r}"
    return None


def _is_hostname(host: str) -> bool:
    labels = host.rstrip(".").split(".")
    return (
        len(host) <= 253
        and all(_HOST_LABEL.fullmatch(label) for label in labels)
        # An all-numeric last label is a mistyped IPv4 address, not a name.
        and not _DIGITS.fullmatch(labels[-1])
    )


def _host_port(text: str) -> str:
    """`host:port` with an IP address or a host name; returned as written."""
    host, _port = _split_host_port(text)
    try:
        _ip(host)
    except _Invalid:
        if not _is_hostname(host):
            raise _Invalid(f"host {host!r} in {text!r} is not an IP address or host name") from None
    return text


def _http_url(text: str) -> str:
    if not text.lower().startswith(("http://", "https://")):
        raise _Invalid(f"{text!r} must start with http:// or https://")
    try:
        host = urllib.parse.urlsplit(text).hostname
    except ValueError:
        host = None
    if not host:
        raise _Invalid(f"{text!r} is not a valid URL with a host")
    return text


def _community(text: str) -> str:
    if text.lower() in _WELL_KNOWN_COMMUNITIES:
        return text.lower()
    match = _COMMUNITY.fullmatch(text)
    if not match or any(int(part) > MAX_U16 for part in match.groups()):
        raise _Invalid(
            f"{text!r} is not a community (ASN:VALUE, each 0..{MAX_U16},"
            f" or one of {', '.join(_WELL_KNOWN_COMMUNITIES)})"
        )
    return f"{int(match[1])}:{int(match[2])}"


def _large_community(text: str) -> str:
    match = _LARGE_COMMUNITY.fullmatch(text)
    if not match or any(int(part) > MAX_U32 for part in match.groups()):
        raise _Invalid(
            f"{text!r} is not a large community (GLOBAL:LOCAL1:LOCAL2, each 0..{MAX_U32})"
        )
    return ":".join(str(int(part)) for part in match.groups())


def _extended_community(text: str) -> str:
    if not _EXTENDED_COMMUNITY.fullmatch(text):
        raise _Invalid(
            f"{text!r} is not an extended community (e.g. 'target:65000:1' or 'origin:65000:1')"
        )
    return text


# ---------------------------------------------------------------------------- sections


def _read_cluster(r: _Reader, member: str | None) -> ClusterConfig:
    defaults = ClusterConfig(name="", member="", secret_file=None, state_dir="", control_socket="")
    name = r.parsed("name", _name, required=True)
    configured_member = r.parsed("member", _name)
    if member is None and not r.has("member") and not r.quiet:
        r.add("member", "required (or pass --member)")
    lease = _or(r.number("lease", gt=0), defaults.lease)
    policy_text = r.text("on_quorum_loss")
    if policy_text not in (None, "hold", "withdraw"):
        r.add("on_quorum_loss", f"must be 'hold' or 'withdraw', got {policy_text!r}")
    policy: QuorumLossPolicy = "withdraw" if policy_text == "withdraw" else "hold"
    report_interval = _or(r.number("report_interval", gt=0), lease / 3)
    if r.ok("lease", "report_interval") and report_interval > lease / 2:
        r.add(
            "report_interval",
            f"must be <= lease / 2 ({_fmt(lease / 2)}), got {_fmt(report_interval)}:"
            " impossible timings, a member must renew its lease at least twice per lease",
        )
    control_socket = r.text("control_socket", required=True)
    if control_socket is not None and len(os.fsencode(control_socket)) > MAX_UNIX_SOCKET_PATH:
        r.add(
            "control_socket",
            f"is {len(os.fsencode(control_socket))} bytes long; a Unix socket path must be at"
            f" most {MAX_UNIX_SOCKET_PATH} bytes",
        )
    return ClusterConfig(
        name=_or(name, ""),
        member=_or(member, _or(configured_member, "")),
        secret_file=r.text("secret_file"),
        state_dir=_or(r.text("state_dir", required=True), ""),
        control_socket=_or(control_socket, ""),
        lease=lease,
        on_quorum_loss=policy,
        report_interval=report_interval,
        shutdown_timeout=_or(r.number("shutdown_timeout", gt=0), defaults.shutdown_timeout),
        handover_timeout=_or(r.number("handover_timeout", gt=0), defaults.handover_timeout),
    )


def _read_members(r: _Reader) -> dict[str, str]:
    """name -> "addr:port" in config order; an address may serve only one member.

    A member whose address has a problem maps to "" so that the cross-checks (cluster.member,
    preferred owners) still know its name and do not report it a second time.
    """
    if not r.data and not r.quiet:
        r.report.add(r.path, "at least one member is required")
    members: dict[str, str] = {}
    used_by: dict[str, str] = {}
    for key in r.data:
        try:
            name: str | None = _name(key)
        except _Invalid as exc:
            r.add(key, str(exc))
            name = None
        address = r.parsed(key, _member_address)
        if address is not None and address in used_by:
            r.add(key, f"address {address} is already used by {used_by[address]}")
        elif address is not None:
            used_by[address] = r.sub(key)
        if name is not None:
            members[name] = _or(address, "")
    return members


def _read_services(
    readers: list[_Reader], members: Mapping[str, str], exabgp: ExabgpConfig
) -> tuple[ServiceConfig, ...]:
    vip_places: dict[str, str] = {}  # normalised VIP -> key path of its first listing
    name_places: dict[str, str] = {}
    defaults = _announce_defaults(exabgp)
    return tuple(_read_service(r, members, defaults, vip_places, name_places) for r in readers)


@dataclass(frozen=True)
class _AnnounceDefaults:
    """What `[exabgp]` implies for every service's `[service.announce]`."""

    local_as: int | None  # backup and steady paths prepend it: the first neighbor's local_as
    hold_time: float  # the routers' hold time: the largest a neighbor can negotiate
    why_no_margin: str | None = None  # the AS is known but prepending it is wrong (iBGP)


def _announce_defaults(exabgp: ExabgpConfig) -> _AnnounceDefaults:
    neighbors = exabgp.neighbors
    local_as = neighbors[0].local_as if neighbors else None
    holds = [EXABGP_DEFAULT_HOLD_TIME if n.hold_time is None else n.hold_time for n in neighbors]
    # BGP negotiates the smaller of both sides' hold times: ours bounds the router's.
    hold = (math.inf if 0 in holds else float(max(holds))) if holds else EXABGP_DEFAULT_HOLD_TIME
    ibgp = [n.address for n in neighbors if n.local_as and n.local_as == n.peer_as]
    why = f"iBGP session to {ibgp[0]}: a router rejects its own AS in a path" if ibgp else None
    return _AnnounceDefaults(local_as or None, float(hold), why)


def _read_service(
    r: _Reader,
    members: Mapping[str, str],
    announce_defaults: _AnnounceDefaults,
    vip_places: dict[str, str],
    name_places: dict[str, str],
) -> ServiceConfig:
    defaults = ServiceConfig(name="", vips=())
    name = r.parsed("name", _name, required=True)
    if name is not None:
        if name in name_places:
            r.add("name", f"{name!r} is already used by {name_places[name]}")
        else:
            name_places[name] = r.path

    vips: list[str] = []
    vip_items = r.array("vips", required=True)
    if r.has("vips") and r.ok("vips") and not vip_items:
        r.add("vips", "must not be empty")
    for item_path, item in vip_items:
        vip = _as_parsed(r.report, item_path, item, _vip)
        if vip is None:
            continue
        if vip in vip_places:
            r.report.add(item_path, f"{item!r} is already listed at {vip_places[vip]}")
            continue
        vip_places[vip] = item_path
        vips.append(vip)
    # Judge preferred owners only against a complete VIP list, or every typo cascades.
    vips_complete = len(vips) == len(vip_items) and bool(vips)
    preferred = _read_preferred(
        r.table("preferred", None), name or r.path, vips if vips_complete else None, members
    )
    return ServiceConfig(
        name=_or(name, ""),
        vips=tuple(vips),
        preferred=preferred,
        preempt=_or(r.boolean("preempt"), defaults.preempt),
        preempt_delay=_or(r.number("preempt_delay", ge=0), defaults.preempt_delay),
        rebalance=_or(r.boolean("rebalance"), defaults.rebalance),
        check=_read_check(r.table("check", _CHECK_KEYS)),
        announce=_read_announce(r.table("announce", _ANNOUNCE_KEYS), announce_defaults),
    )


def _read_preferred(
    r: _Reader, service: str, vips: Sequence[str] | None, members: Mapping[str, str]
) -> dict[str, str]:
    """vip -> member. `vips` is None when the service's VIP list already has problems."""
    preferred: dict[str, str] = {}
    for key in r.data:
        owner = r.text(key)
        try:
            vip: str | None = _vip(key)
        except _Invalid:
            vip = None
        if vips is not None and vip not in vips:
            r.report.add(r.path, f"{key!r} is not a VIP of service {service!r}")
            continue
        if owner is None or vip is None:
            continue
        if vip in preferred:
            r.add(key, f"{vip} already has a preferred owner")
        elif members and owner not in members:
            r.add(key, f"unknown member {owner!r}")
        else:
            preferred[vip] = owner
    return preferred


def _read_check(r: _Reader) -> CheckConfig:
    defaults = CheckConfig()
    command = r.text("command")
    url = r.parsed("http", _http_url)
    tcp = r.parsed("tcp", _host_port)
    kinds = [kind for kind in _CHECK_KINDS if r.has(kind)]
    if len(kinds) > 1:
        r.report.add(r.path, f"set only one of command, http, tcp (found {' and '.join(kinds)})")
    kind: CheckKind = "none"
    target = ""
    if command is not None:
        kind, target = "command", command
    elif url is not None:
        kind, target = "http", url
    elif tcp is not None:
        kind, target = "tcp", tcp

    interval = _or(r.number("interval", gt=0), defaults.interval)
    fast_interval = _or(r.number("fast_interval", gt=0), defaults.fast_interval)
    timeout = _or(r.number("timeout", gt=0), defaults.timeout)
    if r.ok("interval", "fast_interval") and fast_interval > interval:
        r.add("fast_interval", f"must be <= interval ({_fmt(interval)}), got {_fmt(fast_interval)}")
    if r.ok("interval", "timeout") and timeout > interval:
        r.add(
            "timeout",
            f"must be <= interval ({_fmt(interval)}), got {_fmt(timeout)}:"
            " a check must end before the next one starts",
        )
    return CheckConfig(
        kind=kind,
        target=target,
        interval=interval,
        fast_interval=fast_interval,
        rise=_or(r.integer("rise", lo=1), defaults.rise),
        fall=_or(r.integer("fall", lo=1), defaults.fall),
        timeout=timeout,
        disable_file=r.text("disable_file"),
    )


def _read_announce(r: _Reader, given: _AnnounceDefaults) -> AnnounceConfig:
    defaults = AnnounceConfig()
    backup_prepend = _or(
        r.integer("backup_prepend", lo=0, hi=MAX_BACKUP_PREPEND), defaults.backup_prepend
    )
    margin = r.integer("takeover_margin", lo=0, hi=MAX_TAKEOVER_MARGIN)
    local_as = r.integer("local_as", lo=1, hi=MAX_U32)
    if local_as is None and not r.has("local_as"):
        local_as = given.local_as
        if local_as is None and backup_prepend > 0:
            r.add(
                "local_as", "required when backup_prepend > 0 (or set exabgp.neighbors[0].local_as)"
            )
        elif local_as is None and margin:
            r.add(
                "local_as",
                "required when takeover_margin > 0 (or set exabgp.neighbors[0].local_as)",
            )
    if margin is None and not r.has("takeover_margin"):
        # On by default wherever the AS to prepend is known (and prepending it is right).
        margin = 1 if local_as is not None and given.why_no_margin is None else 0
        if not margin:
            why = given.why_no_margin or "the local AS is unknown"
            r.report.notes.append(
                f"{r.sub('takeover_margin')}: 0 ({why}): after a hang, routers may keep the "
                "old owner's path until their hold timer expires; set local_as or [exabgp] "
                "neighbors for takeovers that routers prefer at once"
            )
    hold = r.number("takeover_hold_time", gt=0)
    as_path = (
        _as_int(r.report, item_path, item, 1, MAX_U32) for item_path, item in r.array("as_path")
    )
    return AnnounceConfig(
        next_hop=_or(r.parsed("next_hop", _next_hop), defaults.next_hop),
        next_hop6=r.parsed("next_hop6", _ipv6),
        med=r.integer("med", lo=0, hi=MAX_U32),
        communities=r.parsed_items("communities", _community),
        large_communities=r.parsed_items("large_communities", _large_community),
        extended_communities=r.parsed_items("extended_communities", _extended_community),
        as_path=tuple(asn for asn in as_path if asn is not None),
        backup_prepend=backup_prepend,
        local_as=local_as,
        graceful_shutdown_community=_or(
            r.boolean("graceful_shutdown_community"), defaults.graceful_shutdown_community
        ),
        takeover_margin=_or(margin, 0),
        takeover_hold_time=_or(hold, given.hold_time),
    )


def _read_exabgp(r: _Reader) -> ExabgpConfig:
    neighbors = tuple(_read_neighbor(n) for n in r.tables("neighbors", _NEIGHBOR_KEYS))
    return ExabgpConfig(
        neighbors=neighbors,
        process_name=r.parsed("process_name", _name),
        run=r.text("run"),
    )


def _read_neighbor(r: _Reader) -> NeighborConfig:
    address = r.parsed("address", _ip, required=True)
    local_address = r.parsed("local_address", _ip, required=True)
    if (
        address is not None
        and local_address is not None
        and ipaddress.ip_address(address).version != ipaddress.ip_address(local_address).version
    ):
        r.add("local_address", f"{local_address} is not of the same IP version as {address}")
    router_id = r.parsed("router_id", _ipv4)
    if router_id is None and not r.has("router_id") and local_address is not None:
        if ipaddress.ip_address(local_address).version == 4:
            router_id = local_address
        else:
            r.add("router_id", "required when local_address is IPv6 (an IPv4 address)")
    hold_time = r.integer("hold_time", lo=0)
    if hold_time is not None and not (hold_time == 0 or 3 <= hold_time <= MAX_U16):
        r.add("hold_time", f"must be 0 or between 3 and {MAX_U16}, got {hold_time}")
        hold_time = None
    return NeighborConfig(
        address=_or(address, ""),
        peer_as=_or(r.integer("peer_as", lo=1, hi=MAX_U32, required=True), 0),
        local_address=_or(local_address, ""),
        local_as=_or(r.integer("local_as", lo=1, hi=MAX_U32, required=True), 0),
        port=_or(r.integer("port", lo=1, hi=MAX_PORT), NeighborConfig.port),
        router_id=router_id,
        hold_time=hold_time,
    )


def _read_raft(r: _Reader) -> RaftTuning:
    """pysyncobj's own `validate()` asserts, reported as problems with key paths."""
    defaults = RaftTuning()
    numbers = [key for key in _RAFT_KEYS if key != "wire"]
    values = {key: _or(r.number(key, gt=0), getattr(defaults, key)) for key in numbers}
    wire_text = r.text("wire")
    if wire_text not in (None, "aead", "fernet"):
        r.add("wire", f"must be 'aead' or 'fernet', got {wire_text!r}")
    wire: WireFormat = "fernet" if wire_text == "fernet" else "aead"
    raft = RaftTuning(**values, wire=wire)
    _check_raft_bound(r, raft, "min_timeout", ">", "heartbeat", factor=3)
    _check_raft_bound(r, raft, "max_timeout", ">", "min_timeout")
    _check_raft_bound(r, raft, "connection_timeout", ">=", "max_timeout")
    _check_raft_bound(r, raft, "leader_fallback", ">", "heartbeat")
    return raft


def _check_raft_bound(
    r: _Reader, raft: RaftTuning, key: str, relation: str, other: str, *, factor: int = 1
) -> None:
    """Report `raft.KEY` unless it is RELATION factor * `raft.OTHER`."""
    value: float = getattr(raft, key)
    bound: float = factor * getattr(raft, other)
    holds = value >= bound if relation == ">=" else value > bound
    if not holds and r.ok(key, other):
        scale = f"{factor} * " if factor != 1 else ""
        r.add(key, f"must be {relation} {scale}{r.sub(other)} ({_fmt(bound)}), got {_fmt(value)}")


def _read_metrics(r: _Reader) -> MetricsConfig | None:
    """Metrics are served only when `metrics.listen` is set (an empty [metrics] is allowed)."""
    listen = r.parsed("listen", _host_port)
    return None if listen is None else MetricsConfig(listen=listen)


def _read_zookeeper(r: _Reader) -> ZookeeperConfig:
    defaults = ZookeeperConfig(hosts=())
    hosts = r.parsed_items("hosts", _host_port)
    if not r.has("hosts"):
        r.add("hosts", 'required (e.g. ["127.0.0.1:2181"])')
    elif r.ok("hosts") and not r.array("hosts"):
        r.add("hosts", "must not be empty")

    def path(key: str, fields: tuple[str, ...], default: str) -> str:
        return _or(r.parsed(key, lambda text: _zk_path(text, fields)), default)

    return ZookeeperConfig(
        hosts=hosts,
        service_path=path("service_path", ("cluster", "service"), defaults.service_path),
        maintenance_path=path(
            "maintenance_path", ("cluster", "service", "member"), defaults.maintenance_path
        ),
        state_path=path("state_path", ("cluster",), defaults.state_path),
        session_timeout=_or(r.number("session_timeout", gt=0), defaults.session_timeout),
        auth_file=r.text("auth_file"),
    )


def _zk_path(text: str, fields: tuple[str, ...]) -> str:
    """An absolute znode path template using only `fields` as {placeholders}."""
    if not text.startswith("/") or text == "/" or text.endswith("/") or "//" in text:
        raise _Invalid(
            f"{text!r} is not an absolute znode path (e.g. '/exabgp/service/{{service}}')"
        )
    parts = text.split("/")[1:]
    if any(part in (".", "..") for part in parts) or parts[0] == "zookeeper":
        raise _Invalid(f"{text!r}: '.', '..' and /zookeeper are reserved by ZooKeeper")
    try:
        placeholders = [
            (name, spec, conversion)
            for _, name, spec, conversion in string.Formatter().parse(text)
            if name is not None
        ]
    except ValueError as exc:
        raise _Invalid(f"{text!r}: {exc}") from None
    allowed = ", ".join("{" + name + "}" for name in fields)
    for name, spec, conversion in placeholders:
        if name not in fields or spec or conversion:
            raise _Invalid(f"{text!r}: unknown placeholder {{{name}}} (allowed: {allowed})")
    if "{member}" in text and not (text.endswith("/{member}") and text.count("{member}") == 1):
        raise _Invalid(f"{text!r}: {{member}} may only be the last path component")
    return text


# ----------------------------------------------------------------------- cross-checks


def _check_member(
    report: _Report, cluster: ClusterConfig, members: Mapping[str, str], *, overridden: bool
) -> None:
    if not members or cluster.member in members or not (cluster.member or overridden):
        return
    origin = " (from --member)" if overridden else ""
    known = ", ".join(members)
    report.add(
        "cluster.member",
        f"{cluster.member!r}{origin} is not in [members] (known: {known})",
    )


def _check_lease(report: _Report, cluster: ClusterConfig, raft: RaftTuning) -> None:
    bound = raft.max_timeout + raft.heartbeat
    if cluster.lease <= bound and report.ok("cluster.lease", "raft.max_timeout", "raft.heartbeat"):
        report.add(
            "cluster.lease",
            f"must be > raft.max_timeout + raft.heartbeat ({_fmt(bound)}), got"
            f" {_fmt(cluster.lease)}: a new leader must be elected within one lease",
        )
    fence = min(cluster.lease, raft.connection_timeout) - FENCE_MARGIN
    if (
        cluster.on_quorum_loss == "withdraw"
        and cluster.report_interval >= fence
        and report.ok("cluster.lease", "cluster.report_interval", "raft.connection_timeout")
    ):
        report.add(
            "cluster.report_interval",
            f"must be < min(lease, raft.connection_timeout) - {_fmt(FENCE_MARGIN)}"
            f' ({_fmt(fence)}) with on_quorum_loss = "withdraw", got'
            f" {_fmt(cluster.report_interval)}: the member would withdraw between two reports",
        )
