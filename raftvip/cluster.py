"""The Raft group: a pysyncobj `SyncObj` that replicates `ClusterState`.

- One replicated method, `submit(payload)`, carries msgpack commands (`state.encode_command`);
  it is total: a malformed or inapplicable command is logged and ignored, never raised.
- Snapshots are msgpack too (custom serializer), so raftvip never stores a pickle.
- The transport adds what FIELD-NOTES.md measured as necessary: pings on idle peer links,
  a connect timeout, binding to the member's own address, and one log line per rejected
  (unauthenticated) peer — pysyncobj itself logs nothing.
- Leader duties run on the tick thread: grant every member a fresh lease when leadership is
  won, expire members whose lease lapsed or whose TCP link dropped (after a short grace),
  and propose this member's service layout when the replicated one differs.

All pysyncobj callbacks run on its single tick thread; readers on other threads only ever see
an immutable `ClusterState` reference.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.node import TCPNode
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection, _getAddrType
from pysyncobj.transport import TCPTransport

from raftvip import diskguard
from raftvip.config import Config, RaftTuning
from raftvip.errors import RaftvipError
from raftvip.placement import ServiceSpec
from raftvip.state import (
    ClusterState,
    Command,
    CommandError,
    Configure,
    Expire,
    Report,
    apply,
    decode_command,
    encode_command,
    state_from_wire,
    state_to_wire,
)

log = logging.getLogger(__name__)

FAIL_REASONS = {
    0: "success",
    1: "queue full",
    2: "no leader",
    3: "discarded by a new leader",
    4: "leader changed",
    5: "leader changed",
    6: "request denied",
    7: "unknown outcome",
}
_PING = {"type": "raftvip_ping"}  # ignored by SyncObj: it dispatches on known types only
_REJECT_LOG_INTERVAL = 60.0


def service_specs(cfg: Config) -> tuple[ServiceSpec, ...]:
    return tuple(
        ServiceSpec(
            name=s.name,
            vips=s.vips,
            preferred=dict(s.preferred),
            preempt=s.preempt,
            preempt_delay=float(s.preempt_delay),
            rebalance=s.rebalance,
        )
        for s in cfg.services
    )


class _BoundTcpConnection(TcpConnection):  # type: ignore[misc]
    """A pysyncobj connection whose outgoing socket is bound to this member's own address.

    The stock one lets the kernel pick the source (127.0.0.1 on loopback, the route's address
    on a multi-homed host), so peers and firewalls cannot tell which member a connection
    comes from. `connect` mirrors TcpConnection.connect (pysyncobj 0.3.17) plus the bind.
    """

    def __init__(self, source: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._source = source

    def connect(self, host: str | None, port: int) -> bool:
        if host is None:
            return False
        self._TcpConnection__state = CONNECTION_STATE.DISCONNECTED
        self._TcpConnection__fileno = None
        sock = socket.socket(_getAddrType(host), socket.SOCK_STREAM)
        self._TcpConnection__socket = sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._TcpConnection__sendBufferSize)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._TcpConnection__recvBufferSize)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.setSockoptKeepalive()
        sock.setblocking(False)
        self._TcpConnection__readBuffer = b""
        self._TcpConnection__writeBuffer = b""
        self._TcpConnection__lastReadTime = time.monotonic()
        try:
            sock.bind((self._source, 0))
        except OSError as exc:
            log.warning("raft cannot bind source address %s: %s", self._source, exc.strerror)
        try:
            sock.connect((host, port))
        except OSError as exc:
            if exc.errno not in (errno.EINPROGRESS, errno.EWOULDBLOCK):
                return False
        self._TcpConnection__fileno = sock.fileno()
        self._TcpConnection__state = CONNECTION_STATE.CONNECTING
        self._TcpConnection__poller.subscribe(
            self._TcpConnection__fileno,
            self._TcpConnection__processConnection,
            POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.WRITE | POLL_EVENT_TYPE.ERROR,
        )
        return True


class _Transport(TCPTransport):  # type: ignore[misc]
    """TCPTransport with idle-link pings, a connect timeout, outgoing connections bound to
    the member's own address, and rejected-peer logging."""

    def addNode(self, node: Any) -> None:
        super().addNode(node)
        old = self._connections.get(node)
        if old is None or self._selfNode is None:
            return
        # Same wiring as TCPTransport.addNode, on a connection bound to our address.
        conf = self._syncObj.conf
        conn = _BoundTcpConnection(
            self._selfNode.host,
            poller=self._syncObj._poller,
            timeout=conf.connectionTimeout,
            sendBufferSize=conf.sendBufferSize,
            recvBufferSize=conf.recvBufferSize,
            keepalive=conf.tcp_keepalive,
        )
        conn.encryptor = self._syncObj.encryptor
        conn.setOnConnectedCallback(functools.partial(self._onOutgoingConnected, conn))
        conn.setOnMessageReceivedCallback(functools.partial(self._onMessageReceived, node))
        conn.setOnDisconnectedCallback(functools.partial(self._onDisconnected, conn))
        self._connections[node] = conn

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        tuning: RaftTuning = syncObj.raftvip_tuning
        self._ping_interval = tuning.ping_interval
        self._connect_timeout = tuning.connect_timeout
        self._last_sent: dict[Any, float] = {}
        self._connecting_since: dict[Any, float] = {}
        self._authenticated: set[int] = set()
        self._last_reject_log: dict[str, float] = {}
        super().__init__(syncObj, selfNode, otherNodes)

    def send(self, node: Any, message: Any) -> bool:
        self._last_sent[node] = time.monotonic()
        return bool(super().send(node, message))

    def _onTick(self) -> None:
        super()._onTick()
        now = time.monotonic()
        encrypted = self._syncObj.encryptor is not None
        for node, conn in list(self._connections.items()):
            if conn.state == CONNECTION_STATE.CONNECTING:
                since = self._connecting_since.setdefault(node, now)
                if now - since > self._connect_timeout:
                    self._connecting_since.pop(node, None)
                    conn.disconnect()  # stock transport waits on the kernel's SYN backoff
                continue
            self._connecting_since.pop(node, None)
            if conn.state != CONNECTION_STATE.CONNECTED or (encrypted and not conn.sendRandKey):
                continue
            if now - self._last_sent.get(node, 0.0) >= self._ping_interval:
                self.send(node, _PING)

    def _onNewIncomingConnection(self, conn: Any) -> None:
        super()._onNewIncomingConnection(conn)
        try:
            sock: socket.socket = conn._TcpConnection__socket
            host, port = sock.getpeername()[:2]
            peer = f"{host}:{port}"
        except OSError:
            peer = "unknown peer"
        conn.setOnDisconnectedCallback(lambda: self._on_incoming_closed(conn, peer))

    def _onIncomingMessageReceived(self, conn: Any, message: Any) -> None:
        # Reaching here means the frame decrypted with the shared secret.
        self._authenticated.add(id(conn))
        if (
            conn.sendRandKey
            and isinstance(message, str)
            and message not in self._nodeAddrToNode
            and message != "readonly"
        ):
            log.warning(
                "raft peer=%s rejected: authenticated but not a configured member "
                "(it claims address %r)",
                _peer_of(conn),
                message[:80],
            )
        super()._onIncomingMessageReceived(conn, message)

    def _on_incoming_closed(self, conn: Any, peer: str) -> None:
        if id(conn) not in self._authenticated:
            host = peer.rsplit(":", 1)[0]
            now = time.monotonic()
            if now - self._last_reject_log.get(host, -_REJECT_LOG_INTERVAL) >= (
                _REJECT_LOG_INTERVAL
            ):
                self._last_reject_log[host] = now
                log.warning(
                    "raft peer=%s rejected: connection closed before it sent one frame "
                    "that decrypts with our secret (wrong or missing secret, not raftvip, or "
                    "a network cut during the handshake)",
                    peer,
                )
        self._authenticated.discard(id(conn))
        self._onDisconnected(conn)


def _peer_of(conn: Any) -> str:
    try:
        host, port = conn._TcpConnection__socket.getpeername()[:2]
        return f"{host}:{port}"
    except (OSError, AttributeError):
        return "unknown peer"


@dataclass(frozen=True)
class RaftInfo:
    """This member's view of the group, for status, metrics and announce decisions."""

    leader: str | None
    is_leader: bool
    term: int
    commit_index: int
    last_applied: int
    has_quorum: bool
    ready: bool
    connected: frozenset[str]


class _Replica(SyncObj):  # type: ignore[misc]
    def __init__(
        self,
        cfg: Config,
        conf: Any,
        on_state: Callable[[ClusterState], None],
    ) -> None:
        self.raftvip_tuning = cfg.raft
        self._cfg = cfg
        self._me = cfg.me
        self._state = ClusterState()
        self._on_state = on_state
        self._specs = service_specs(cfg)
        # Leader bookkeeping (tick thread only).
        self._was_leader = False
        self._leader_since = 0.0
        self._lease_seen: dict[str, float] = {}
        # member -> when its last report was applied here (never reset by lease grants).
        self._report_applied: dict[str, float] = {}
        self._started_at = time.monotonic()
        self._was_connected: set[str] = set()
        self._down_since: dict[str, float] = {}
        self._expire_sent: dict[tuple[str, int, int], float] = {}
        self._configure_sent = 0.0
        conf.serializer = self._dump
        conf.deserializer = self._load
        others = [addr for name, addr in cfg.members.items() if name != cfg.me]
        super().__init__(cfg.self_address, others, conf, transportClass=_Transport)
        self.addOnTickCallback(self._leader_tick)

    def _addresses(self) -> dict[str, str]:
        """member -> address: the replicated list (dynamic membership), else the config's."""
        return dict(self._state.addresses) or dict(self._cfg.members)

    def name_of(self, address: str) -> str | None:
        for name, addr in self._addresses().items():
            if addr == address:
                return name
        for name, addr in self._cfg.members.items():
            if addr == address:
                return name
        return None

    @property
    def _nodes(self) -> dict[str, Any]:
        """Peer name -> pysyncobj node, for the peers pysyncobj currently has."""
        nodes = {}
        for node in self.otherNodes:
            name = self.name_of(node.address)
            nodes[name if name is not None else node.address] = node
        return nodes

    @property
    def state(self) -> ClusterState:
        return self._state

    @replicated  # type: ignore[untyped-decorator]
    def submit(self, payload: bytes) -> None:
        """The one replicated method. Total: never raises (that would halt the group)."""
        try:
            cmd = decode_command(payload)
        except CommandError as exc:
            log.error("raft ignored a malformed command: %s", exc)
            return
        try:
            # During an apply pysyncobj has not yet counted this entry as applied.
            new = apply(self._state, cmd, index=int(self.raftLastApplied) + 1)
        except Exception:
            log.exception("raft command=%s failed to apply; ignored", type(cmd).__name__)
            return
        if isinstance(cmd, Report):
            self._lease_seen[cmd.member] = self._report_applied[cmd.member] = time.monotonic()
        if new is not self._state:
            self._state = new
            self._notify()

    def _notify(self) -> None:
        try:
            self._on_state(self._state)
        except Exception:
            log.exception("state listener failed")

    # --- snapshots (msgpack, never pickle) ---

    def _dump(self, filename: str, data: Any) -> None:
        last, prev, cluster = data
        body = {
            "raft": [list(last), list(prev)],
            "cluster": sorted(n.address for n in cluster),
            "state": state_to_wire(self._state),
        }
        with open(filename, "wb") as f:
            f.write(msgpack.packb(body, use_bin_type=True))
            f.flush()
            os.fsync(f.fileno())

    def _load(self, filename: str) -> tuple[Any, Any, Any]:
        with open(filename, "rb") as f:
            body = msgpack.unpackb(f.read(), raw=False)
        self._state = state_from_wire(body["state"])
        self._notify()
        last, prev = (tuple(e) for e in body["raft"])
        return last, prev, [TCPNode(a) for a in body["cluster"]]

    # --- leader duties (tick thread) ---

    def _leader_tick(self) -> None:
        try:
            self._leader_duties()
        except Exception:
            log.exception("leader duties failed; retrying next tick")

    def _track_links(self, now: float) -> None:
        """Every member watches its peer links, so a new leader already knows which peer
        dropped (the old leader, typically) and since when."""
        for name, node in self._nodes.items():
            if self.isNodeConnected(node):
                self._was_connected.add(name)
                self._down_since.pop(name, None)
            elif name in self._was_connected:
                self._down_since.setdefault(name, now)

    def _leader_duties(self) -> None:
        now = time.monotonic()
        self._track_links(now)
        if not self._isLeader():
            self._was_leader = False
            return
        state = self._state
        if not self._was_leader:
            self._was_leader = True
            self._leader_since = now
            self._lease_seen = {name: now for name in self._addresses()}
            log.info(
                "raft leader=%s term=%d: granted every member a fresh lease",
                self._me,
                self._getTerm(),
            )
        if (state.services != self._specs or not state.addresses) and (
            now - self._configure_sent > 1.0
        ):
            self._configure_sent = now
            self.propose(Configure(time.time(), self._specs, dict(self._cfg.members)))
        lease = self._cfg.cluster.lease
        grace = self._cfg.raft.disconnect_grace
        for name, member in state.members.items():
            if not member.alive:
                continue
            reason = None
            down_since = self._down_since.get(name)
            if now - self._lease_seen.get(name, now) > lease:
                reason = "lease"
            elif (
                name != self._me
                and down_since is not None
                and now - down_since >= grace
                and self._fenced_by(name, down_since, now)
            ):
                reason = "disconnect"
            if reason is None:
                continue
            key = (name, member.incarnation, member.seq)
            if now - self._expire_sent.get(key, 0.0) < 0.25:
                continue
            self._expire_sent = {k: v for k, v in self._expire_sent.items() if now - v < 5.0}
            self._expire_sent[key] = now
            log.info("raft leader expires member=%s reason=%s", name, reason)
            self.propose(Expire(time.time(), name, member.incarnation, member.seq, reason))

    def _fenced_by(self, name: str, down_since: float, now: float) -> bool:
        """May a member whose link to this leader dropped at `down_since` be expired now?

        A link that dropped while this member led carried the member's reports: it dropped
        after `connection_timeout` of silence following the last of them (or the member
        died), so the member's own fence has fallen. A link that dropped before this member
        became leader says nothing about reports the member got committed through the old
        leader since: with `on_quorum_loss = "withdraw"` (at most one announcer) wait until
        `connection_timeout` after the member's last report applied here, when its fence
        has fallen for sure. `hold` keeps the fast path (two announcers are its trade-off).
        """
        if self._cfg.cluster.on_quorum_loss != "withdraw" or down_since >= self._leader_since:
            return True
        applied = self._report_applied.get(name, self._started_at)
        return now - applied >= self._cfg.raft.connection_timeout

    def propose(self, cmd: Command, callback: Callable[[Any, int], None] | None = None) -> None:
        self.submit(encode_command(cmd), callback=callback)

    def info(self) -> RaftInfo:
        leader = self._getLeader()
        connected = frozenset(n for n, node in self._nodes.items() if self.isNodeConnected(node))
        return RaftInfo(
            leader=self.name_of(leader.address) if leader is not None else None,
            is_leader=bool(self._isLeader()),
            term=int(self.raftCurrentTerm),
            commit_index=int(self.raftCommitIndex),
            last_applied=int(self.raftLastApplied),
            has_quorum=bool(self.hasQuorum),
            ready=bool(self.isReady()),
            connected=connected,
        )


class RaftCluster:
    """This member's handle on the group (thread-safe for readers and proposers)."""

    def __init__(self, cfg: Config, secret: str) -> None:
        self._cfg = cfg
        self._secret = secret
        self._listeners: list[Callable[[ClusterState], None]] = []
        self._replica: _Replica | None = None
        self.last_change = time.monotonic()  # when the replicated state last changed here
        self._syncer: diskguard.JournalSyncer | None = None
        # Set (tick thread) when state_dir is full: the agent hands over and exits.
        self.fatal: str | None = None

    def add_listener(self, listener: Callable[[ClusterState], None]) -> None:
        """`listener(state)` runs on the Raft tick thread after each change: keep it cheap."""
        self._listeners.append(listener)

    def start(self) -> None:
        state_dir = self._cfg.cluster.state_dir
        try:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
            probe = os.path.join(state_dir, ".write-test")
            with open(probe, "wb") as f:
                f.write(b"ok")
            os.unlink(probe)
        except OSError as exc:
            raise RaftvipError(
                f"cluster.state_dir: cannot write to {state_dir!r}: {exc.strerror}"
            ) from None
        diskguard.install(self._on_disk_full)
        base = os.path.join(state_dir, f"{self._cfg.cluster.name}-{self._cfg.me}")
        tuning = self._cfg.raft
        conf = SyncObjConf(
            password=self._secret,
            bindAddress=self._cfg.self_address,
            journalFile=base + ".journal",
            fullDumpFile=base + ".snapshot",
            raftMinTimeout=tuning.min_timeout,
            raftMaxTimeout=tuning.max_timeout,
            appendEntriesPeriod=tuning.heartbeat,
            connectionTimeout=tuning.connection_timeout,
            connectionRetryTime=tuning.connection_retry,
            leaderFallbackTimeout=tuning.leader_fallback,
            appendEntriesUseBatch=False,
            commandsWaitLeader=False,
            dynamicMembershipChange=True,
            tcp_keepalive=(1, 1, 3),
            maxBindRetries=0,
            bindRetryTime=0.5,
        )
        self._replica = _Replica(self._cfg, conf, self._dispatch)
        self._syncer = diskguard.JournalSyncer(
            # pysyncobj keeps term and vote in "<journalFile>.meta" (journal.MetaStorer).
            [conf.journalFile, f"{conf.journalFile}.meta", conf.fullDumpFile, state_dir],
            on_full=self._on_disk_full,
        )
        self._syncer.start()

    def _on_disk_full(self, detail: str) -> None:
        if self.fatal is None:
            self.fatal = (
                f"cluster.state_dir: {self._cfg.cluster.state_dir!r} is full, the Raft journal "
                f"cannot be written ({detail})"
            )
            log.error("%s", self.fatal)

    def _dispatch(self, state: ClusterState) -> None:
        self.last_change = time.monotonic()
        for listener in self._listeners:
            listener(state)

    @property
    def replica(self) -> _Replica:
        if self._replica is None:
            raise RaftvipError("the Raft group is not started")
        return self._replica

    @property
    def state(self) -> ClusterState:
        return self._replica.state if self._replica is not None else ClusterState()

    def info(self) -> RaftInfo:
        return self.replica.info()

    def propose(self, cmd: Command, callback: Callable[[Any, int], None] | None = None) -> None:
        self.replica.propose(cmd, callback)

    def propose_and_wait(self, cmd: Command, timeout: float) -> str | None:
        """Commit `cmd`; None on success, else why it failed (for control commands)."""
        done = threading.Event()
        outcome: list[int] = []

        def on_result(_res: Any, err: int) -> None:
            outcome.append(err)
            done.set()

        self.replica.propose(cmd, on_result)
        if not done.wait(timeout):
            return f"not committed within {timeout:g}s (no quorum?)"
        return None if outcome[0] == 0 else FAIL_REASONS.get(outcome[0], str(outcome[0]))

    def change_membership(self, add: bool, address: str, timeout: float) -> str | None:
        """Add or remove a Raft peer (pysyncobj dynamic membership; one change at a time).

        None on success, else why it failed.
        """
        done = threading.Event()
        outcome: list[int] = []

        def on_result(_res: Any, err: int) -> None:
            outcome.append(err)
            done.set()

        if add:
            self.replica.addNodeToCluster(address, callback=on_result)
        else:
            self.replica.removeNodeFromCluster(address, callback=on_result)
        if not done.wait(timeout):
            return f"not committed within {timeout:g}s"
        if outcome[0] == 6:
            return "refused by the leader (another membership change is in progress?)"
        return None if outcome[0] == 0 else FAIL_REASONS.get(outcome[0], str(outcome[0]))

    def stop(self) -> None:
        if self._syncer is not None:
            self._syncer.stop()
        if self._replica is not None:
            self._replica.destroy()
        if self._syncer is not None:
            self._syncer.sync()  # a graceful stop leaves everything on disk
