"""Every patch of pysyncobj's private internals, in one place, for one pinned version.

raftvip relies on pysyncobj 0.3.17 internals (name-mangled attributes of its TCP connection,
transport and journal classes). `check_version()` runs before a member starts and refuses
any other version with a clear message, instead of failing later in some obscure way.

- `BoundTcpConnection` / `Transport`: outgoing Raft connections bound to the member's own
  address, pings on idle peer links, a connect timeout, one log line per rejected peer
  (FIELD-NOTES.md "pysyncobj": why each is needed).
- `install_journal_guards(on_full)`: a full `state_dir` becomes a clear error instead of a
  silent SIGBUS, and a journal append that fails leaves nothing in memory (see
  `StateDirFull`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import pysyncobj
from pysyncobj import journal
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection, _getAddrType
from pysyncobj.transport import TCPTransport

from raftvip.config import RaftTuning
from raftvip.errors import RaftvipError

log = logging.getLogger(__name__)

PYSYNCOBJ_VERSION = "0.3.17"
_PING = {"type": "raftvip_ping"}  # ignored by SyncObj: it dispatches on known types only
_REJECT_LOG_INTERVAL = 60.0


def installed_version() -> str:
    from pysyncobj.version import VERSION

    return str(VERSION)


def check_version(version: str | None = None) -> None:
    """Refuse a pysyncobj other than the one these patches were written for."""
    found = installed_version() if version is None else version
    if found != PYSYNCOBJ_VERSION:
        raise RaftvipError(
            f"pysyncobj {found} is installed (at {os.path.dirname(pysyncobj.__file__)}), but "
            f"raftvip patches internals of pysyncobj {PYSYNCOBJ_VERSION} only: "
            f"run `pip install pysyncobj=={PYSYNCOBJ_VERSION}`"
        )


# --- transport ------------------------------------------------------------------------------


class BoundTcpConnection(TcpConnection):  # type: ignore[misc]
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


class Transport(TCPTransport):  # type: ignore[misc]
    """TCPTransport with idle-link pings, a connect timeout, outgoing connections bound to
    the member's own address, and rejected-peer logging."""

    def addNode(self, node: Any) -> None:
        super().addNode(node)
        old = self._connections.get(node)
        if old is None or self._selfNode is None:
            return
        # Same wiring as TCPTransport.addNode, on a connection bound to our address.
        conf = self._syncObj.conf
        conn = BoundTcpConnection(
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


# --- journal --------------------------------------------------------------------------------
#
# pysyncobj's journal is an mmapped file grown with `ftruncate`: on a full filesystem the first
# write to a new page kills the process with SIGBUS and no message (measured on a full tmpfs:
# exit -7, nothing logged). The guards make every growth reserve its blocks first
# (`posix_fallocate`), so a full disk raises ENOSPC before a page is touched, and turn
# pysyncobj's per-tick tracebacks for ENOSPC into one call of `on_full` (the member then hands
# over, withdraws and exits with a clear error instead of dying). A journal append that
# fails leaves the in-memory log as it was, so nothing unwritten is ever acknowledged.

_FULL = (errno.ENOSPC, errno.EDQUOT)
_installed: list[Callable[[str], None]] = []  # the current `on_full` (one Raft node per process)


class StateDirFull(OSError):
    """The Raft journal could not grow: no space left in `state_dir`."""


def _reserve(fd: int, size: int, name: str) -> None:
    before = os.fstat(fd).st_size
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in _FULL:
            # ext4 may have grown the file before giving up, and pysyncobj sizes its writes
            # by the file's size (mmap.size()): a longer file than the mapping made its next
            # write fail with "mmap slice assignment is wrong size". Put the size back.
            with contextlib.suppress(OSError):
                if os.fstat(fd).st_size != before:
                    os.ftruncate(fd, before)
            raise StateDirFull(exc.errno, f"cannot grow the Raft journal {name}", name) from None
        # EOPNOTSUPP and friends: this filesystem cannot reserve; keep pysyncobj's behaviour.


def _guarded_write(original: Callable[..., Any]) -> Callable[..., Any]:
    def write(self: Any, offset: int, values: bytes) -> Any:
        mapped = self._ResizableFile__mm
        end = offset + len(values)
        if end > len(mapped):  # the mapping's length (mapped.size() is the file's size)
            grown = max(int(len(mapped) * self._ResizableFile__resizeFactor), end)
            _reserve(self._ResizableFile__f.fileno(), grown, self._ResizableFile__fileName)
            # mmap.size() is the file's size: map what was just reserved, or pysyncobj
            # would see a large enough file and write past the end of the mapping.
            mapped.resize(grown)
        return original(self, offset, values)

    write.raftvip_guarded = True  # type: ignore[attr-defined]
    return write


def _guarded_init(original: Callable[..., Any]) -> Callable[..., Any]:
    def init(self: Any, fileName: str, *args: Any, **kwargs: Any) -> None:
        original(self, fileName, *args, **kwargs)
        # A journal left sparse (older run, or grown by ftruncate) gets its holes reserved.
        _reserve(self._ResizableFile__f.fileno(), self._ResizableFile__mm.size(), fileName)

    return init


def _atomic_add(original: Callable[..., Any]) -> Callable[..., Any]:
    """pysyncobj's FileJournal.add appends to its in-memory log before writing the file: a
    failed write left an entry in memory that was never on disk (acknowledged to the leader,
    then lost or replaced by the next entry at the same offset: a journal with a hole, and
    "truncating already-applied log entries" after a restart). Undo the in-memory append."""

    def add(self: Any, command: bytes, idx: int, term: int) -> None:
        entries = self._FileJournal__journal
        before = len(entries)
        try:
            original(self, command, idx, term)
        except BaseException:
            del entries[before:]
            raise

    return add


class _FullDiskFilter(logging.Filter):
    """Swallow pysyncobj's tracebacks for ENOSPC (logged once, clearly, by `on_full`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:
            if isinstance(exc, OSError) and exc.errno in _FULL:
                detail = exc.strerror or "no space left on device"
                if exc.filename:
                    detail += f": {exc.filename}"
                for on_full in _installed:
                    on_full(detail)
                return False
            exc = exc.__context__
        return True


def install_journal_guards(on_full: Callable[[str], None]) -> None:
    """Guard pysyncobj's journal growth; `on_full(detail)` runs (tick thread) on ENOSPC."""
    _installed[:] = [on_full]
    cls: Any = journal.ResizableFile
    if not getattr(cls.write, "raftvip_guarded", False):
        cls.write = _guarded_write(cls.write)
        cls.__init__ = _guarded_init(cls.__init__)
        journal.FileJournal.add = _atomic_add(journal.FileJournal.add)
        logging.getLogger("pysyncobj.syncobj").addFilter(_FullDiskFilter())
