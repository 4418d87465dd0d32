"""Optional ZooKeeper mirror for fleets that come from ExaZK (`[zookeeper]` in the config).

Out (one-way, ExaZK's layout): every member holds an empty ephemeral znode
`<service_path>/<vip>` for each VIP it owns and announces (ExaZK named that node after the
instance's authoritative IP: with raftvip the owned VIPs are the equivalent). The leader
writes the replicated state as JSON to `<state_path>/state` when it changes.

In: ExaZK's maintenance znodes, watched (never polled). `<maintenance_path>` appearing commits
`maintenance on` for the service through Raft, its deletion `off`; with the per-node layout
(`maintenance_path` ending in `/{member}`) a child named after a member drains that member.
The znodes are edges, not levels: Raft stays the source of truth, so `raftvip maintenance on`
without a znode is kept, and `maintenance off` while the znode exists is refused (veto).

Who commits: every member watches and keeps the edges it saw as pending intents until the
replicated state matches them. The leader commits at once; a follower commits an intent
still pending after `FOLLOWER_GRACE` (the leader may have lost its ZooKeeper session).
Commits are idempotent, so a rare duplicate is harmless, and there is no storm.

ZooKeeper is never in the data path: `observe` only compares cheap values and hands the
latest desired state to one worker thread (coalesced); the kazoo listener and watches only
set flags. Nothing here changes what the agent announces.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    AuthFailedError,
    BadVersionError,
    KazooException,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import KeeperState
from kazoo.retry import KazooRetry
from kazoo.security import make_digest_acl

from raftvip.config import Config, ZookeeperConfig, load_zookeeper_auth
from raftvip.core.state import Command, SetDrain, SetMaintenance
from raftvip.core.status import build_status

if TYPE_CHECKING:
    from raftvip.agent import Agent, Snapshot

log = logging.getLogger(__name__)

FOLLOWER_GRACE = 3.0  # a follower commits a ZooKeeper edge the leader has not committed
COMMIT_TIMEOUT = 2.0
RECOMMIT_AFTER = 2.0  # committed but not yet seen in the replicated state: try again
MAX_BACKOFF = 5.0
STATE_NODE = "state"
_AUTH_RETRY = 10.0

# Fields of `status --json` that describe the member answering, not the group.
_MEMBER_FIELDS = (
    "member",
    "is_leader",
    "ready",
    "has_quorum",
    "no_quorum_for",
    "commit_index",
    "last_applied",
    "time",
)

Flag = tuple[str, str]  # ("maintenance", service) | ("drain", member)


# --- pure parts -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Intent:
    """An edge seen in ZooKeeper that the replicated state does not reflect yet."""

    on: bool
    since: float
    next_try: float = 0.0
    failures: int = 0


def edges(
    intents: Mapping[Flag, Intent],
    before: frozenset[Flag] | None,
    after: frozenset[Flag],
    now: float,
) -> dict[Flag, Intent]:
    """Intents after a scan. `before` is None on the first scan: only appearances count then
    (a znode deleted before this process looked is unknowable; Raft keeps its flag)."""
    result = dict(intents)
    for flag in after - (before or frozenset()):
        result[flag] = Intent(True, now)
    for flag in (before or frozenset()) - after:
        result[flag] = Intent(False, now)
    return result


def settle(intents: Mapping[Flag, Intent], replicated: frozenset[Flag]) -> dict[Flag, Intent]:
    """Drop the intents that the replicated state already satisfies."""
    return {flag: i for flag, i in intents.items() if i.on != (flag in replicated)}


def due(intents: Mapping[Flag, Intent], is_leader: bool, now: float) -> list[Flag]:
    return sorted(
        flag
        for flag, i in intents.items()
        if now >= i.next_try and (is_leader or now - i.since >= FOLLOWER_GRACE)
    )


def command_for(flag: Flag, on: bool, ts: float) -> Command:
    kind, subject = flag
    return SetMaintenance(ts, subject, on) if kind == "maintenance" else SetDrain(ts, subject, on)


def replicated_flags(snapshot: Snapshot) -> frozenset[Flag]:
    state = snapshot.state
    return frozenset(("maintenance", s) for s in state.maintenance) | frozenset(
        ("drain", name) for name, m in state.members.items() if m.drained
    )


def state_document(cfg: Config, snapshot: Snapshot) -> bytes:
    """`status --json` of the group without this-member fields; stable bytes (sorted keys)."""
    state = snapshot.state
    doc = build_status(
        cfg,
        state,
        snapshot.info,
        snapshot.decisions,
        snapshot.health,
        snapshot.quorum_lost_for,
        snapshot.reachable,
        now=snapshot.time,
    )
    for key in _MEMBER_FIELDS:
        doc.pop(key, None)
    for vip in doc.get("vips", {}).values():
        vip.pop("announced", None)
        vip.pop("reason", None)
    for service in doc.get("services", {}).values():
        service.pop("local_health", None)
    for name, member in doc.get("members", {}).items():
        member.pop("connected", None)
        replicated = state.members.get(name)
        member["healthy"] = {
            s.name: bool(replicated and replicated.is_healthy(s.name)) for s in cfg.services
        }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Paths:
    """Every znode path of this member, from the templates."""

    vips: Mapping[str, str]  # vip -> <service_path>/<vip>
    maintenance: Mapping[str, str]  # service -> its node (per service) or parent (per node)
    state_dir: str
    state: str
    per_member: bool

    @staticmethod
    def of(cfg: Config, zk: ZookeeperConfig) -> Paths:
        cluster = cfg.cluster.name
        vips = {
            vip: f"{zk.service_path.format(cluster=cluster, service=s.name)}/{vip}"
            for s in cfg.services
            for vip in s.vips
        }
        per_member = zk.per_member_maintenance
        template = (
            zk.maintenance_path.removesuffix("/{member}") if per_member else zk.maintenance_path
        )
        maintenance = {
            s.name: template.format(cluster=cluster, service=s.name) for s in cfg.services
        }
        state_dir = zk.state_path.format(cluster=cluster)
        return Paths(vips, maintenance, state_dir, f"{state_dir}/{STATE_NODE}", per_member)


# --- the mirror -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Desired:
    ephemerals: frozenset[str]
    flags: frozenset[Flag]  # maintenance / drain as replicated
    ready: bool
    is_leader: bool
    snapshot: Snapshot | None  # only on the leader: the state document is built from it


@dataclass
class _Wake:
    """What the worker must do next; written by observe, the listener and watches."""

    desired: _Desired | None = None
    sync: bool = False  # (re)connected: verify everything
    scan: bool = False  # a maintenance watch fired
    lost: bool = False  # session expired: the ephemerals are gone
    stop: bool = False
    reload: Config | None = None  # a reload changed the services (see ZkMirror.reload)
    zk_state: str = "LOST"
    changes: list[str] = field(default_factory=list)


class ZkMirror:
    """The `Extension` that mirrors the group into ZooKeeper and honours maintenance znodes."""

    name = "zookeeper"

    def __init__(self, cfg: Config, client: KazooClient | None = None) -> None:
        if cfg.zookeeper is None:
            raise ValueError("ZkMirror needs a [zookeeper] section")
        self.cfg = cfg
        self.zk = cfg.zookeeper
        self.paths = Paths.of(cfg, self.zk)
        auth = load_zookeeper_auth(self.zk)  # SecretError at start, like the Raft secret
        self._acl = None if auth is None else [make_digest_acl(auth[0], auth[1], all=True)]
        kazoo_log = logging.getLogger(f"{__name__}.kazoo")
        kazoo_log.setLevel(logging.ERROR)  # retries every second while ZooKeeper is down
        self._client = client or KazooClient(
            hosts=",".join(self.zk.hosts),
            timeout=self.zk.session_timeout,
            connection_retry=KazooRetry(
                max_tries=-1, delay=0.1, backoff=2, max_delay=1.0, max_jitter=0.2
            ),
            command_retry=KazooRetry(max_tries=3, delay=0.1, backoff=2, max_delay=1.0),
            auth_data=None if auth is None else [("digest", f"{auth[0]}:{auth[1]}")],
            logger=kazoo_log,
        )
        self._op_timeout = max(2.0, self.zk.session_timeout)
        self._cond = threading.Condition()
        self._wake = _Wake()
        self._thread: threading.Thread | None = None
        self._agent: Agent | None = None
        self._last_key: tuple[Any, ...] | None = None
        # Worker-owned (read by status() under the condition's lock).
        self._held: set[str] = set()
        self._foreign: set[str] = set()
        self._want: frozenset[str] = frozenset()
        self._seen: frozenset[Flag] | None = None
        self._seen_at: float | None = None
        self._intents: dict[Flag, Intent] = {}
        self._desired: _Desired | None = None
        self._written: bytes | None = None
        self._was_leader = False
        self._write_info: dict[str, Any] | None = None
        self._denied_doc: bytes | None = None
        self._error: str | None = None
        self._error_at: float | None = None
        self._retry_at: float | None = None
        self._backoff = 0.5
        self._auth_failed_at: float | None = None
        self._counters = {"connects": 0, "expirations": 0, "commits": 0}

    # --- Extension protocol (agent threads: never block) ---

    def start(self, agent: Agent) -> None:
        self._agent = agent
        self._client.add_listener(self._on_state)
        self._thread = threading.Thread(target=self._run, name="zkmirror", daemon=True)
        self._thread.start()
        self._client.start_async()  # a down ZooKeeper never delays the member
        log.info("zookeeper mirror starting hosts=%s", ",".join(self.zk.hosts))

    def observe(self, snapshot: Snapshot) -> None:
        vip_paths = self.paths.vips
        ephemerals = frozenset(
            vip_paths[vip]
            for vip, decision in snapshot.decisions.items()
            if decision.announce
            and decision.reason == "owner"
            and vip in snapshot.announced
            and vip in vip_paths  # a VIP of a config that a reload has just replaced
        )
        flags = replicated_flags(snapshot)
        leader = snapshot.info.is_leader
        version = (snapshot.state.version, snapshot.info.term) if leader else None
        key = (ephemerals, flags, snapshot.info.ready, leader, version)
        if key == self._last_key:
            return
        self._last_key = key
        desired = _Desired(
            ephemerals, flags, snapshot.info.ready, leader, snapshot if leader else None
        )
        with self._cond:
            self._wake.desired = desired  # only the latest matters
            self._cond.notify()

    def reload(self, cfg: Config) -> None:
        """A reload changed the member's services (the agent loop, before it observes
        decisions made with `cfg`): VIP nodes follow the new VIPs at once; the worker then
        forgets the maintenance nodes of removed services and watches those of new ones.
        [zookeeper] itself needs a restart, so the templates are the same."""
        self.paths = Paths.of(cfg, self.zk)
        with self._cond:
            self._wake.reload = cfg
            self._cond.notify()

    def _reloaded(self, cfg: Config) -> None:
        """Worker: drop what was seen of services that are gone (their node is no edge to
        commit), then scan the new set of maintenance nodes."""
        services = {s.name for s in cfg.services}

        def kept(flag: Flag) -> bool:
            return flag[0] == "drain" or flag[1] in services

        with self._cond:
            if self._seen is not None:
                self._seen = frozenset(f for f in self._seen if kept(f))
            self._intents = {f: i for f, i in self._intents.items() if kept(f)}
            self.cfg = cfg

    @property
    def connected(self) -> bool:
        """For the `raftvip_zookeeper_connected` gauge."""
        return bool(self._wake.zk_state == KazooState.CONNECTED)

    def status(self) -> dict[str, Any]:
        with self._cond:
            seen = sorted(self._flag_path(flag) for flag in self._seen or ())
            return {
                "connected": self._wake.zk_state == KazooState.CONNECTED,
                "state": str(self._wake.zk_state),
                "hosts": list(self.zk.hosts),
                "session_timeout": self.zk.session_timeout,
                "session_id": f"{self._session():#x}" if self.connected else None,
                "error": self._error,
                "error_time": self._error_at,
                "ephemeral_nodes": sorted(self._held),
                "waiting_for": sorted(self._foreign),
                "maintenance_nodes": seen,
                "maintenance_seen_at": self._seen_at,
                "maintenance_view": "live" if self.connected else "as last seen",
                "pending": [
                    {"node": self._flag_path(flag), "on": i.on, "since": i.since}
                    for flag, i in sorted(self._intents.items())
                ],
                "state_document": self._write_info,
                **self._counters,
            }

    def maintenance_veto(self, service: str, on: bool) -> str | None:
        if on or self.paths.per_member:
            return None
        with self._cond:
            held = self._seen is not None and ("maintenance", service) in self._seen
            seen_at = self._seen_at
        if not held:
            return None
        path = self.paths.maintenance[service]
        how = ""
        if not self.connected:
            ago = time.time() - (seen_at or 0.0)
            how = f" (as last seen {ago:.0f}s ago: ZooKeeper is disconnected)"
        return (
            f"maintenance of {service!r} is held by ZooKeeper node {path}{how}: delete that node"
            " to end it (ZooKeeper and raftvip would disagree otherwise)"
        )

    def drain_veto(self, member: str, on: bool) -> str | None:
        """`raftvip undrain` while a per-node maintenance znode still drains the member."""
        if on or not self.paths.per_member:
            return None
        with self._cond:
            held = self._seen is not None and ("drain", member) in self._seen
            seen_at = self._seen_at
        if not held:
            return None
        how = ""
        if not self.connected:
            ago = time.time() - (seen_at or 0.0)
            how = f" (as last seen {ago:.0f}s ago: ZooKeeper is disconnected)"
        node = self._flag_path(("drain", member))
        return (
            f"the drain of {member!r} is held by ZooKeeper node {node}"
            f"{how}: delete that node to end it (ZooKeeper and raftvip would disagree otherwise)"
        )

    def stop(self) -> None:
        with self._cond:
            self._wake.stop = True
            self._cond.notify()
        try:
            self._client.stop()
            self._client.close()
        except Exception:
            log.exception("zookeeper client stop failed")
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    # --- kazoo callbacks (kazoo's threads: only set flags) ---

    def _on_state(self, state: str) -> None:
        with self._cond:
            self._wake.zk_state = state
            self._wake.changes.append(state)
            if state == KazooState.CONNECTED:
                self._wake.sync = True
            elif state == KazooState.LOST:
                self._wake.lost = True
            self._cond.notify()

    def _on_watch(self, _event: Any) -> None:
        with self._cond:
            self._wake.scan = True
            self._cond.notify()

    # --- the worker ---

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._has_work(), timeout=self._wait_time())
                wake = self._wake
                self._wake = _Wake(zk_state=wake.zk_state)
            if wake.stop:
                return
            try:
                self._step(wake)
            except Exception:
                log.exception("zookeeper mirror step failed; retrying")
                self._fail("internal error (see the member's log)")

    def _has_work(self) -> bool:
        w = self._wake
        return bool(
            w.stop
            or w.sync
            or w.scan
            or w.lost
            or w.changes
            or w.desired is not None
            or w.reload is not None
        )

    def _wait_time(self) -> float:
        now = time.monotonic()
        times = [i.next_try for i in self._intents.values()]
        times += [i.since + FOLLOWER_GRACE for i in self._intents.values()]
        if self._retry_at is not None:
            times.append(self._retry_at)
        if self._auth_failed_at is not None:
            times.append(self._auth_failed_at + _AUTH_RETRY)
        return max(0.01, min([now + 1.0, *times]) - now)

    def _step(self, wake: _Wake) -> None:
        now = time.monotonic()
        for change in wake.changes:
            self._log_state(change)
        if wake.reload is not None:
            self._reloaded(wake.reload)
            wake.scan = True
        if wake.lost:
            with self._cond:
                self._held.clear()  # the session is gone, and its ephemerals with it
                self._foreign.clear()
            self._written = None
        if wake.desired is not None:
            self._desired = wake.desired
        sync = wake.sync or (self._retry_at is not None and now >= self._retry_at)
        self._maybe_restart_after_auth_failure(now)
        if self._client.state == KazooState.CONNECTED:
            try:
                if sync:
                    self._retry_at = None
                    self._verify_held()
                if sync or wake.scan:
                    self._scan()
                if sync or wake.desired is not None or wake.scan:
                    self._reconcile_ephemerals()
                    self._write_state(force=sync)
                if sync:
                    self._clear_error()
                    self._backoff = 0.5
            except (KazooException, KazooTimeoutError) as exc:
                self._fail(_describe(exc))
                self._retry_at = time.monotonic() + self._backoff
                self._backoff = min(MAX_BACKOFF, self._backoff * 2)
        self._commit_intents()

    def _log_state(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            self._counters["connects"] += 1
            log.info("zookeeper state=CONNECTED hosts=%s", ",".join(self.zk.hosts))
        elif state == KazooState.SUSPENDED:
            log.warning("zookeeper state=SUSPENDED: mirror paused, announcements unaffected")
        elif self._client.client_state == KeeperState.AUTH_FAILED:
            self._auth_failed_at = time.monotonic()
            self._fail("authentication failed: check zookeeper.auth_file")
        elif self._counters["connects"]:
            self._counters["expirations"] += 1
            log.warning("zookeeper state=LOST: session expired, ephemeral nodes will be re-created")

    def _maybe_restart_after_auth_failure(self, now: float) -> None:
        # kazoo stops connecting after AUTH_FAILED; try again now and then.
        if self._auth_failed_at is not None and now - self._auth_failed_at >= _AUTH_RETRY:
            self._auth_failed_at = None
            self._client.stop()
            self._client.start_async()

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs).get(timeout=self._op_timeout)

    def _session(self) -> int:
        return int(self._client.client_id[0]) if self._client.client_id else -1

    def _verify_held(self) -> None:
        """After a reconnect: which of our ephemerals still belong to this session."""
        session = self._session()
        held = set()
        for path in sorted(self._held | self._want):
            stat = self._call(self._client.exists_async, path)
            if stat is not None and stat.ephemeralOwner == session:
                held.add(path)
        with self._cond:
            self._held = held

    def _reconcile_ephemerals(self) -> None:
        want = self._desired.ephemerals if self._desired is not None else frozenset()
        self._want = want
        session = self._session()
        for path in sorted(self._held - want):
            stat = self._call(self._client.exists_async, path)
            if stat is not None and stat.ephemeralOwner == session:
                with contextlib.suppress(NoNodeError):
                    self._call(self._client.delete_async, path, version=stat.version)
                log.info("zookeeper node=%s action=delete", path)
            with self._cond:
                self._held.discard(path)
        foreign = set()
        for path in sorted(want - self._held):
            owner = self._create_ephemeral(path, session)
            if owner == session:
                with self._cond:
                    self._held.add(path)
            else:
                # Another session holds it (the previous owner until it sees the change, or a
                # crashed member until its session expires): the exists watch wakes us.
                foreign.add(path)
        with self._cond:
            if foreign - self._foreign:
                log.info("zookeeper nodes held by another session, waiting: %s", sorted(foreign))
            self._foreign = foreign

    def _create_ephemeral(self, path: str, session: int) -> int:
        """Create `path` for this session; the session that holds it afterwards."""
        while True:
            try:
                self._call(self._client.create_async, path, b"", ephemeral=True, makepath=True)
                log.info("zookeeper node=%s action=create", path)
                return session
            except NodeExistsError:
                stat = self._call(self._client.exists_async, path, watch=self._on_watch)
                if stat is not None:
                    return int(stat.ephemeralOwner)
                # Deleted in between (the watch now waits for a creation): create again.

    def _write_state(self, force: bool) -> None:
        desired = self._desired
        if desired is None or not desired.is_leader or desired.snapshot is None:
            self._was_leader = False
            return
        force = force or not self._was_leader
        self._was_leader = True
        doc = state_document(desired.snapshot.cfg or self.cfg, desired.snapshot)
        if doc == self._written and not force:
            return
        if doc == self._denied_doc and not force:
            return
        path = self.paths.state
        try:
            try:
                current, stat = self._call(self._client.get_async, path)
            except NoNodeError:
                self._call(
                    self._client.ensure_path_async, self.paths.state_dir.rsplit("/", 1)[0] or "/"
                )
                with contextlib.suppress(NodeExistsError):
                    self._call(self._client.create_async, self.paths.state_dir, b"", acl=self._acl)
                self._call(self._client.create_async, path, doc, acl=self._acl)
                version = 0
            else:
                if current == doc:
                    version = stat.version
                else:
                    version = self._call(
                        self._client.set_async, path, doc, version=stat.version
                    ).version
        except BadVersionError:
            self._retry_at = time.monotonic() + 0.1  # another writer (an old leader): re-read
            return
        except (NoAuthError, AuthFailedError) as exc:
            self._denied_doc = doc
            self._fail(
                f"not authorized to write {path} ({type(exc).__name__}): check the digest"
                " credentials in zookeeper.auth_file; the state document is not mirrored"
            )
            return
        self._written = doc
        self._denied_doc = None
        with self._cond:
            self._write_info = {
                "path": path,
                "zk_version": version,
                "state_version": desired.snapshot.state.version,
                "written_at": time.time(),
            }

    def _scan(self) -> None:
        """Read (and re-arm the watches on) the maintenance znodes; record the edges."""
        seen: set[Flag] = set()
        members = set(self.cfg.members)
        for service, path in self.paths.maintenance.items():
            if self.paths.per_member:
                self._call(self._client.ensure_path_async, path)  # world-open, as ExaZK's
                children = self._call(self._client.get_children_async, path, watch=self._on_watch)
                seen |= {("drain", child) for child in children if child in members}
            elif self._call(self._client.exists_async, path, watch=self._on_watch) is not None:
                seen.add(("maintenance", service))
        after = frozenset(seen)
        now = time.monotonic()
        with self._cond:
            before = self._seen
            if after != before:
                for flag in sorted(after - (before or frozenset())):
                    log.info("zookeeper maintenance node=%s appeared", self._flag_path(flag))
                for flag in sorted((before or frozenset()) - after):
                    log.info("zookeeper maintenance node=%s deleted", self._flag_path(flag))
            self._intents = edges(self._intents, before, after, now)
            self._seen = after
            self._seen_at = time.time()

    def _commit_intents(self) -> None:
        desired, agent = self._desired, self._agent
        if desired is None or agent is None or not desired.ready:
            return
        with self._cond:
            self._intents = settle(self._intents, desired.flags)
            todo = due(self._intents, desired.is_leader, time.monotonic())
        for flag in todo:
            intent = self._intents.get(flag)
            if intent is None:
                continue
            failure = agent.commit(
                command_for(flag, intent.on, time.time()), timeout=COMMIT_TIMEOUT
            )
            now = time.monotonic()
            with self._cond:
                if failure is None:
                    self._counters["commits"] += 1
                    log.info(
                        "zookeeper node=%s committed %s=%s",
                        self._flag_path(flag),
                        flag[0],
                        "on" if intent.on else "off",
                    )
                    self._intents[flag] = Intent(intent.on, intent.since, now + RECOMMIT_AFTER)
                else:
                    delay = min(MAX_BACKOFF, 0.2 * 2**intent.failures)
                    log.warning(
                        "zookeeper node=%s %s=%s not committed (%s); retry in %.1fs",
                        self._flag_path(flag),
                        flag[0],
                        "on" if intent.on else "off",
                        failure,
                        delay,
                    )
                    self._intents[flag] = Intent(
                        intent.on, intent.since, now + delay, intent.failures + 1
                    )

    # --- helpers ---

    def _flag_path(self, flag: Flag) -> str:
        kind, subject = flag
        if kind == "maintenance":
            # (a service a reload removed, until the worker has forgotten its flags)
            return self.paths.maintenance.get(subject, f"<maintenance node of {subject}>")
        parents = sorted(set(self.paths.maintenance.values()))
        return ",".join(f"{parent}/{subject}" for parent in parents)

    def _fail(self, message: str) -> None:
        with self._cond:
            repeated = message == self._error
            self._error = message
            self._error_at = time.time()
        if not repeated:
            log.error("zookeeper mirror: %s", message)

    def _clear_error(self) -> None:
        with self._cond:
            if self._denied_doc is None and self._auth_failed_at is None:
                self._error = None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
