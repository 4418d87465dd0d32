"""Every patch of pysyncobj's private internals, in one place, for one pinned version.

raftvip relies on pysyncobj 0.3.17 internals (name-mangled attributes of its TCP connection,
transport and journal classes). `check_version()` runs before a member starts and refuses
any other version with a clear message, instead of failing later in some obscure way.

- `BoundTcpConnection` / `Transport`: outgoing Raft connections bound to the member's own
  address, pings on idle peer links, a connect timeout, one log line per rejected peer
  (FIELD-NOTES.md "pysyncobj": why each is needed).
- `Channel`: the message encryption of one connection, ChaCha20-Poly1305 instead of
  pysyncobj's Fernet (AES-CBC + HMAC + base64 on every frame: most of a member's idle CPU
  after the heartbeats themselves), still accepting Fernet frames from older members.
- `install_cheap_zlib()`: small Raft messages leave as stored (uncompressed) zlib streams:
  deflate's set-up cost as much CPU per heartbeat as its encryption, to save ~10 bytes.
- `install_journal_guards(on_full)`: a full `state_dir` becomes a clear error instead of a
  silent SIGBUS, and a journal append that fails leaves nothing in memory (see
  `StateDirFull`).
- `PreVoteSyncObj`: Raft PreVote (thesis §9.6). A member whose election timer fires first
  asks the others whether they would vote for it; it raises its term and starts a real
  election only when a majority says yes. Members that heard from a live leader within the
  minimum election timeout say no, so a member that was cut off and comes back rejoins as a
  follower instead of forcing an election. The decisions are the pure functions
  `election_step` and `prevote_answer`. The same class carries raftvip's heartbeat leases
  (stamps on pysyncobj's append_entries, next_node_idx and response_vote; the bookkeeping
  is core/liveness.py) and polls an idle tick until its next deadline (`_AdaptivePoll`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import socket
import struct
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import pysyncobj
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from pysyncobj import SyncObj, journal, tcp_connection
from pysyncobj import monotonic as _pysyncobj_monotonic
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.syncobj import _RAFT_STATE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection, _getAddrType
from pysyncobj.transport import TCPTransport

from raftvip.config import RaftTuning
from raftvip.core.liveness import (
    FollowerLiveness,
    LeaderLiveness,
    answer_stamp,
    prior_contact,
)
from raftvip.errors import RaftvipError

log = logging.getLogger(__name__)

PYSYNCOBJ_VERSION = "0.3.17"
_PING = {"type": "raftvip_ping"}  # ignored by SyncObj: it dispatches on known types only
_LINK_CHECK = 0.05  # Transport: links are looked at (pings, connect timeouts) this often
IDLE_TICK = 0.3  # the longest an idle tick thread polls (pysyncobj: autoTickPeriod, 50 ms)


class _AdaptivePoll:
    """SyncObj's poller, polled for `wait(timeout)` instead of `timeout` (the rest as is)."""

    def __init__(self, poller: Any, wait: Callable[[float], float]) -> None:
        self._poller = poller
        self._wait = wait

    def poll(self, timeout: float) -> Any:
        return self._poller.poll(self._wait(timeout))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._poller, name)


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


# --- message encryption ---------------------------------------------------------------------
#
# pysyncobj's TcpConnection calls three methods of `conn.encryptor` (0.3.17): on send
# `encrypt_at_time(data, int(monotonic()))`; on receive `extract_timestamp(frame)` (it asserts
# the result never goes down on one connection) and then `decrypt(frame)`; an exception in
# either closes the connection. A `Channel` is one connection's encryptor (pysyncobj shares
# one Fernet between all connections; a channel keeps per-connection counters).
#
# Frame: MAGIC (1) | sender salt (16) | counter (8, big-endian) | ChaCha20-Poly1305 of the
# pickled + zlib'ed message with the first 25 bytes as associated data. No base64.
# - Keys: master = PBKDF2-SHA256(secret, raftvip's own salt, 100,000 rounds), as pysyncobj
#   stretches the secret but never the same key as its Fernet; each sending channel draws a
#   random 128-bit salt and encrypts under HKDF-SHA256(master, salt): a key of its own.
# - Nonces: the frame counter under that key, so a nonce never repeats for a key (no
#   birthday bound as with random 96-bit nonces under one long-lived key).
# - Replay: on one connection the receiver takes the peer's salt from its first frame that
#   authenticates, then only that salt and exactly the next counter: a frame replayed,
#   reordered or dropped on the stream closes the connection; frames carrying our own salt
#   (reflected back at us) are refused. Across connections pysyncobj's own handshake holds:
#   each side draws a random key that the other must include in every later message, so a
#   recorded connection does not replay into a new one (its second frame fails that check).
# - Old members speak Fernet (base64 text, first byte "g"): accepted on receive; a channel
#   answers in the format its peer used first, and sends `[raft] wire` when it speaks first.
#   No switching formats within a connection (no downgrade once AEAD was seen). An outgoing
#   connection whose peer closed it before one frame of it authenticated, after we spoke
#   AEAD, tries Fernet next time (an older member cannot read AEAD and says nothing), and
#   AEAD again after that: a mixed group forms, a link to an older member one connect retry
#   later. An attacker gains nothing by forcing Fernet: it is authenticated with the same
#   secret (it only costs CPU).

MAGIC = b"\x01"  # not a base64 character: never the first byte of a Fernet token
_SALT = 16
_HEADER = 1 + _SALT + 8
_KDF_SALT = b"raftvip raft aead v1"


def derive_master_key(secret: str | bytes) -> bytes:
    """The AEAD master key from the shared secret (stretched like pysyncobj's Fernet key)."""
    raw = secret.encode() if isinstance(secret, str) else secret
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=_KDF_SALT, iterations=100_000)
    return kdf.derive(raw)


def _channel_cipher(master: bytes, salt: bytes) -> ChaCha20Poly1305:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"raftvip raft frame key")
    return ChaCha20Poly1305(key.derive(master))


class WireError(ValueError):
    """A frame that this connection must not accept."""


class WireKeys:
    """The keys of both formats, shared by every connection of one member."""

    def __init__(self, fernet: Any, master: bytes, send: str) -> None:
        self.fernet = fernet
        self.master = master
        self.send = send  # "aead" | "fernet": what a channel sends before it hears its peer

    def channel(self, send: str | None = None) -> Channel:
        return Channel(self, send)


class Channel:
    """One connection's encryptor (the interface pysyncobj's TcpConnection calls)."""

    def __init__(self, keys: WireKeys, send: str | None = None) -> None:
        self._keys = keys
        self._send = send or keys.send
        self.peer_format: str | None = None  # what the peer sent first on this connection
        self.sent = False
        self._send_salt = os.urandom(_SALT)
        self._send_cipher: ChaCha20Poly1305 | None = None
        self._send_counter = 0
        self._recv_salt: bytes | None = None
        self._recv_cipher: ChaCha20Poly1305 | None = None
        self._recv_counter = 0

    @property
    def sends(self) -> str:
        return self.peer_format or self._send

    def encrypt_at_time(self, data: bytes, current_time: int) -> bytes:
        self.sent = True
        if self.sends == "fernet":
            return bytes(self._keys.fernet.encrypt_at_time(data, current_time))
        if self._send_cipher is None:
            self._send_cipher = _channel_cipher(self._keys.master, self._send_salt)
        header = MAGIC + self._send_salt + self._send_counter.to_bytes(8, "big")
        nonce = self._send_counter.to_bytes(12, "big")
        self._send_counter += 1
        return header + self._send_cipher.encrypt(nonce, data, header)

    def extract_timestamp(self, frame: bytes) -> int:
        if frame[:1] == MAGIC:
            return 0  # order is the counter's job (`decrypt`); 0 also fails after Fernet frames
        return int(self._keys.fernet.extract_timestamp(frame))

    def decrypt(self, frame: bytes) -> bytes:
        if frame[:1] != MAGIC:
            if self.peer_format == "aead":
                raise WireError("a Fernet frame on an AEAD connection")
            data = bytes(self._keys.fernet.decrypt(frame))
            self.peer_format = "fernet"
            return data
        if self.peer_format == "fernet" or len(frame) < _HEADER + 16:
            raise WireError("unexpected or short AEAD frame")
        header = frame[:_HEADER]
        salt = header[1 : 1 + _SALT]
        counter = int.from_bytes(header[1 + _SALT :], "big")
        if salt == self._send_salt:
            raise WireError("our own frame reflected back")
        if self._recv_salt is not None and salt != self._recv_salt:
            raise WireError("another sender's frame on this connection")
        if counter != self._recv_counter:
            raise WireError(f"frame {counter} where {self._recv_counter} was due (replay?)")
        cipher = self._recv_cipher or _channel_cipher(self._keys.master, salt)
        try:
            data = cipher.decrypt(counter.to_bytes(12, "big"), frame[_HEADER:], header)
        except InvalidTag:
            raise WireError("frame does not authenticate with our secret") from None
        self._recv_salt, self._recv_cipher = salt, cipher
        self._recv_counter = counter + 1
        self.peer_format = "aead"
        return data


# --- compression ----------------------------------------------------------------------------
#
# TcpConnection.send runs `zlib.compress(pickle.dumps(message), 3)` on every message and the
# receiver `zlib.decompress`. For a heartbeat (~150 bytes) deflate costs ~9 us a message
# (measured: as much as the AEAD) and saves ~10 bytes. Messages up to COMPRESS_ABOVE bytes
# leave as a stored zlib stream (RFC 1950 header, one stored deflate block, Adler-32): what
# every zlib, an older member's included, decompresses like any other stream.

COMPRESS_ABOVE = 4096  # log entries in bulk, snapshots: deflate still pays there


def stored_zlib(data: bytes) -> bytes:
    """`data` as a valid zlib stream without compression (len(data) < 65536)."""
    size = len(data)
    return (
        b"\x78\x01\x01"  # zlib header (deflate, 32 KiB window); final stored block
        + struct.pack("<HH", size, size ^ 0xFFFF)
        + data
        + struct.pack(">I", zlib.adler32(data))
    )


class _CheapZlib:
    """What pysyncobj.tcp_connection sees as `zlib`."""

    @staticmethod
    def compress(data: bytes, level: int = -1) -> bytes:
        if len(data) <= COMPRESS_ABOVE:
            return stored_zlib(data)
        return zlib.compress(data, level)

    decompress = staticmethod(zlib.decompress)


def install_cheap_zlib() -> None:
    tcp_connection.zlib = _CheapZlib


# --- transport ------------------------------------------------------------------------------


class BoundTcpConnection(TcpConnection):  # type: ignore[misc]
    """A pysyncobj connection whose outgoing socket is bound to this member's own address.

    The stock one lets the kernel pick the source (127.0.0.1 on loopback, the route's address
    on a multi-homed host), so peers and firewalls cannot tell which member a connection
    comes from. `connect` mirrors TcpConnection.connect (pysyncobj 0.3.17) plus the bind.
    """

    def __init__(self, source: str, keys: WireKeys | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._source = source
        self._keys = keys
        self._fernet_next = False  # the last AEAD attempt was closed unanswered

    def disconnect(self) -> None:
        channel = self.encryptor
        keys = getattr(self, "_keys", None)  # None while TcpConnection.__init__ runs
        if isinstance(channel, Channel) and channel.sent and keys is not None:
            unanswered = channel.peer_format is None
            fell_back = unanswered and channel.sends == "aead" and keys.send == "aead"
            if fell_back and not self._fernet_next:
                log.info(
                    "raft peer=%s closed the link before answering our AEAD frames (an older "
                    "raftvip?): trying pysyncobj's Fernet next",
                    _peer_of(self),
                )
            self._fernet_next = fell_back
            channel.sent = False  # disconnect() runs more than once per connection
        super().disconnect()

    def connect(self, host: str | None, port: int) -> bool:
        if host is None:
            return False
        if self._keys is not None:
            # Every connection starts its own counters.
            self.encryptor = self._keys.channel("fernet" if self._fernet_next else None)
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
            self._wire_keys,
            poller=self._syncObj._poller,
            timeout=conf.connectionTimeout,
            sendBufferSize=conf.sendBufferSize,
            recvBufferSize=conf.recvBufferSize,
            keepalive=conf.tcp_keepalive,
        )
        if self._wire_keys is not None:
            conn.encryptor = self._wire_keys.channel()
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
        self._links_checked = -float("inf")
        install_cheap_zlib()
        # SyncObj made its Fernet (from conf.password) before it made this transport.
        fernet = syncObj.encryptor
        self._wire_keys = (
            WireKeys(fernet, derive_master_key(syncObj.conf.password), tuning.wire)
            if fernet is not None
            else None
        )
        super().__init__(syncObj, selfNode, otherNodes)

    def next_ping_at(self) -> float:
        """When the next idle-link ping is due (SyncObj's tick waits until then), and not
        before `_onTick` looks at the links again."""
        now = time.monotonic()
        sent = [
            self._last_sent.get(node, now)
            for node, conn in self._connections.items()
            if conn.state == CONNECTION_STATE.CONNECTED
        ]
        due = min(sent, default=now) + self._ping_interval
        return max(due, self._links_checked + _LINK_CHECK)

    def send(self, node: Any, message: Any) -> bool:
        self._last_sent[node] = time.monotonic()
        stamp = getattr(self._syncObj, "stamp_message", None)
        if stamp is not None and isinstance(message, dict):
            stamp(node, message)
        return bool(super().send(node, message))

    def _onTick(self) -> None:
        super()._onTick()
        now = time.monotonic()
        # SyncObj ticks on every message and at least every 50 ms: look at the links (for
        # pings and connect timeouts) at most every 50 ms.
        if now - self._links_checked < _LINK_CHECK:
            return
        self._links_checked = now
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
        if self._wire_keys is not None:
            conn.encryptor = self._wire_keys.channel()
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


# --- PreVote --------------------------------------------------------------------------------
#
# Stock pysyncobj starts an election whenever its timer fires: a member cut off for a few
# seconds raised its term on every timeout and, once back, forced the healthy leader out
# (FIELD-NOTES.md "pysyncobj elections": 4-6 terms and an election on every return). With
# PreVote a member first asks "would you vote for me in term T+1?" and only raises its term
# once a majority says yes. A member says no while it leads, or while it heard from a leader
# whose link is up within the minimum election timeout, or when the asker's log is behind.
#
# CheckQuorum is pysyncobj's own `leaderFallbackTimeout` (raft.leader_fallback, 1 s): a
# leader that has heard from no majority for that long steps down, so a leader refusing
# pre-votes can only hold the group up while it really leads.
#
# Times here are pysyncobj's clock (`pysyncobj.monotonic`: CLOCK_MONOTONIC_RAW on Linux, not
# `time.monotonic`), the clock of its election timer.

PREVOTE_REQUEST = "raftvip_prevote"  # unknown to SyncObj, which dispatches on known types only
PREVOTE_REPLY = "raftvip_prevote_reply"
PREVOTE_ENV = "RAFTVIP_NO_PREVOTE"  # "1": stock elections (benchmarks measure the difference)

ElectionAction = Literal["wait", "prevote", "elect"]
raft_clock: Callable[[], float] = _pysyncobj_monotonic.monotonic  # its election timer's clock

# sha256 of the source of every pysyncobj method that PreVoteSyncObj overrides, in 0.3.17
# (tests/test_prevote.py fails when they change: the override must be re-read against them).
OVERRIDDEN_SOURCES = {
    "_onTick": "cc9eb08232d005ba4e21a33ec453e5d02fe3537dadebda8571406c57f65a3c37",
    "_SyncObj__onMessageReceived": (
        "ddfe34b6c02821795146dc533fb7c0fcf6574a082a68a227b4c885c9e14be206"
    ),
    "_SyncObj__onBecomeLeader": (
        "5a3fd97bc17dc1cf3070b007538b6a8d46adb71f0b6523f3922dc953420645e8"
    ),
    "_SyncObj__sendAppendEntries": (
        "9cb9073128c392fa9e5efc4691420ba435bfafb4c74e83a34f931fa16aa760c6"
    ),
}
# ... and of those it relies on without overriding them: heartbeat leases stamp the message
# that `__sendNextNodeIdx` hands to the transport while an append_entries is being handled.
RELIED_ON_SOURCES = {
    "_SyncObj__sendNextNodeIdx": (
        "68aaeefc267b8896bc1074280ac2aa014c3306d9f207949ed945569cef5d114c"
    ),
}


def prevote_wanted(environ: Mapping[str, str]) -> bool:
    """PreVote is on unless `RAFTVIP_NO_PREVOTE=1` (for before/after measurements only)."""
    return environ.get(PREVOTE_ENV, "") not in ("1", "true", "yes")


@dataclass(frozen=True)
class PreVoteRound:
    """This member's current pre-vote: the term it asks for and who said yes (itself too)."""

    term: int
    granted: frozenset[str]


def prevote_won(round_: PreVoteRound | None, term: int, voters: int) -> bool:
    """A majority of the `voters` said yes to this member's round for term `term + 1`."""
    return round_ is not None and round_.term == term + 1 and len(round_.granted) > voters / 2


@dataclass(frozen=True)
class ElectionView:
    """What a follower or candidate knows when it ticks."""

    deadline: float  # its election timer
    term: int
    connected: bool  # it has a link to at least one peer (stock pysyncobj waits otherwise)
    transfer: bool  # the leader asked it to take over (TimeoutNow)
    voters: int  # members of the group, itself included
    round: PreVoteRound | None


def election_step(view: ElectionView, now: float) -> tuple[ElectionAction, str]:
    """Whether a follower/candidate waits, asks for pre-votes, or starts a real election
    (raises its term) now; with the reason. A won pre-vote elects at once; one won for a
    term that has passed since counts for nothing (the timer decides again)."""
    won = prevote_won(view.round, view.term, view.voters)
    if now <= view.deadline and not won:
        return "wait", "timer"
    if not view.connected:
        return "wait", "isolated"
    if view.transfer:
        return "elect", "transfer"  # the leader itself handed over: no pre-vote needed
    if won:
        return "elect", "prevote_won"
    return "prevote", "timeout"


@dataclass(frozen=True)
class PreVoteRequest:
    term: int  # the term the asker would stand in: its current term + 1
    last_log_index: int
    last_log_term: int


@dataclass(frozen=True)
class VoterView:
    """What a member knows when a pre-vote request reaches it."""

    is_leader: bool
    term: int
    last_log_index: int
    last_log_term: int
    leader_heard: float | None  # when an append_entries of the current term last arrived
    leader_connected: bool  # it follows a leader and its link to that leader is up
    min_timeout: float  # raft.min_timeout


def prevote_answer(view: VoterView, request: PreVoteRequest, now: float) -> tuple[bool, str]:
    """Would this member vote for the asker in `request.term`? Never changes any state."""
    if view.is_leader:
        return False, "leader"
    if (
        view.leader_connected
        and view.leader_heard is not None
        and now - view.leader_heard < view.min_timeout
    ):
        return False, "leader_alive"
    if request.term <= view.term:
        return False, "stale_term"
    if (request.last_log_term, request.last_log_index) < (view.last_log_term, view.last_log_index):
        return False, "log_behind"
    return True, "granted"


def tick_wait(
    stock: float, now: float, *, leading: bool, settled: bool, due: float, ping_at: float | None
) -> float:
    """How long pysyncobj's tick thread may poll (messages and proposals wake it anyway).

    `due`: the leader's next heartbeat, or a follower's or candidate's election timer;
    `settled`: the transport is ready and every link is up; `stock`: pysyncobj's period.

    Settled: until `due` or the next idle-link ping, at most IDLE_TICK. Otherwise the stock
    period, except that an election timer is met to the millisecond: on the stock 50 ms
    grid (which peers' messages phase-lock) two followers whose timers differ by up to
    50 ms fired on the same tick after their leader died, stood together and split the vote,
    round after round (deploy/bench: one leader crash took 1.66 s).
    """
    left = due - now
    if not settled:
        if leading or left <= 0:
            return stock  # a timer already past is the tick's to act on (or it is isolated)
        return min(stock, left + 0.001)
    if ping_at is not None:
        left = min(left, ping_at - now)
    return max(stock / 10, min(IDLE_TICK, left + 0.001))


class PreVoteSyncObj(SyncObj):  # type: ignore[misc]
    """SyncObj with PreVote. Overrides `_onTick` (before the stock tick, which starts an
    election when the timer has fired: the timer is pushed back unless a pre-vote was won)
    and SyncObj's private `__onMessageReceived` (pre-vote messages, leader contact).
    `prevote=False` behaves exactly like stock pysyncobj."""

    _SyncObj__raftElectionDeadline: float  # SyncObj's election timer (written here too)
    _poller: Any  # SyncObj's poller (wrapped here: `_AdaptivePoll`)
    _SyncObj__raftLeader: Any

    def __init__(self, *args: Any, prevote: bool = True, **kwargs: Any) -> None:
        self._prevote = prevote
        self._prevote_round: PreVoteRound | None = None
        self._leader_heard: float | None = None
        # Heartbeat leases (core/liveness.py). `loop_alive`: when this member's loop last
        # stepped (set by the agent's thread; a float assignment is atomic).
        self.loop_alive: float | None = None
        self.loop_fresh_for = 0.5  # the loop steps at least this often (report_interval)
        self._lead: LeaderLiveness | None = None  # while leading
        self._follower = FollowerLiveness(raft_clock())
        self._answering: tuple[Any, float] | None = None  # (leader node, lt) being answered
        # The heartbeat round being sent (leader): (lt, last log index, voter ids).
        self._round: tuple[float, int, tuple[str, ...]] | None = None
        self.leader_echoes = False  # the current leader renews our lease from heartbeats
        # When this process last accepted an append of any leader (its start until then),
        # and the votes of the current election: (term, [receipt - age of each]).
        self._contact = raft_clock()
        self._votes: tuple[int, list[float | None]] = (0, [])
        self.prior_contact: float | None = None  # of the current leadership (liveness.py)
        super().__init__(*args, **kwargs)
        # Idle ticks: poll until the next thing to do, not every autoTickPeriod (50 ms).
        self._stock_tick = float(self._SyncObj__conf.autoTickPeriod)
        self._poller = _AdaptivePoll(self._poller, self._tick_wait)
        if not prevote:
            log.warning(
                "raft prevote=off (%s=1): a returning member forces an election", PREVOTE_ENV
            )

    # --- the tick (tick thread) ---

    def _onTick(self, timeToWait: float = 0.0) -> None:
        if self._prevote:
            try:
                self._prevote_tick(raft_clock())
            except Exception:
                log.exception("raft prevote tick failed; retrying next tick")
        super()._onTick(timeToWait)

    def _prevote_tick(self, now: float) -> None:
        if self._SyncObj__raftState not in (_RAFT_STATE.FOLLOWER, _RAFT_STATE.CANDIDATE):
            return
        if self._SyncObj__selfNode is None or not self._SyncObj__transport.ready:
            return
        if self._prevote_round is None and now <= self._SyncObj__raftElectionDeadline:
            return  # what election_step says then ("wait", "timer"), without building a view
        term = int(self._SyncObj__raftCurrentTerm)
        view = ElectionView(
            deadline=float(self._SyncObj__raftElectionDeadline),
            term=term,
            connected=bool(self._SyncObj__connectedToAnyone()),
            transfer=bool(self._SyncObj__transferInProgress),
            voters=len(self._SyncObj__otherNodes) + 1,
            round=self._prevote_round,
        )
        action, reason = election_step(view, now)
        if action == "wait":
            return
        if action == "elect":
            self._elect_now(term, reason)
            return
        # Ask for pre-votes, and push the timer back so the stock tick does not elect: the
        # next round comes one election timeout later, unless a majority says yes first.
        self._SyncObj__raftElectionDeadline = now + self._SyncObj__generateRaftTimeout()
        self._prevote_round = PreVoteRound(term + 1, frozenset({self._SyncObj__selfNode.id}))
        request = {
            "type": PREVOTE_REQUEST,
            "term": term + 1,
            "last_log_index": int(self._SyncObj__getCurrentLogIndex()),
            "last_log_term": int(self._SyncObj__getCurrentLogTerm()),
        }
        log.debug("raft prevote asked term=%d", term + 1)
        for node in list(self._SyncObj__otherNodes):
            self._SyncObj__transport.send(node, request)
        if prevote_won(self._prevote_round, term, view.voters):  # a group of one
            self._elect_now(term, "prevote_won")

    def _elect_now(self, term: int, reason: str) -> None:
        """Let the stock tick that follows start the election (it raises the term)."""
        self._prevote_round = None
        self._SyncObj__raftElectionDeadline = 0.0
        log.info("raft election term=%d reason=%s", term + 1, reason)

    def _tick_wait(self, stock: float) -> float:
        """How long the tick thread may poll after a tick's work (`tick_wait`)."""
        if stock != self._stock_tick:
            return stock  # a manual tick, or one that waits on purpose
        try:
            transport = self._SyncObj__transport
            others, connected = self._SyncObj__otherNodes, self._SyncObj__connectedNodes
            leading = self._SyncObj__raftState == _RAFT_STATE.LEADER
            ping = getattr(transport, "next_ping_at", None)
            return tick_wait(
                stock,
                raft_clock(),
                leading=leading,
                settled=bool(transport.ready) and others <= connected,
                due=float(
                    self._SyncObj__newAppendEntriesTime
                    if leading
                    else self._SyncObj__raftElectionDeadline
                ),
                ping_at=ping() if ping is not None else None,
            )
        except Exception:
            log.exception("raft tick wait failed; polling as pysyncobj does")
            return stock

    # --- heartbeat leases (tick thread) ---

    def _SyncObj__onBecomeLeader(self) -> None:
        term, votes = self._votes
        if term == int(self._SyncObj__raftCurrentTerm):
            self.prior_contact = prior_contact(votes, self._contact)
        else:
            self.prior_contact = None if self._SyncObj__otherNodes else self._contact
        self._lead = LeaderLiveness(raft_clock())
        SyncObj._SyncObj__onBecomeLeader(self)

    def _SyncObj__sendAppendEntries(self) -> None:
        lead = self._lead
        if lead is not None:
            # Once per round, not per message: the log does not change while it is sent.
            lt, index = raft_clock(), int(self._SyncObj__getCurrentLogIndex())
            lead.sent_round(lt, index)
            self._round = (lt, index, self._voter_ids())
        try:
            SyncObj._SyncObj__sendAppendEntries(self)
        finally:
            self._round = None

    def _voter_ids(self) -> tuple[str, ...]:
        return tuple(n.id for n in self._SyncObj__otherNodes)

    def stamp_message(self, node: Any, message: dict[str, Any]) -> None:
        """Transport.send: the stamps of an outgoing append_entries (leader) or of the
        answer to one (follower). Never raises: a message without stamps is valid."""
        try:
            kind = message.get("type")
            if kind == "append_entries":
                round_, lead = self._round, self._lead
                if round_ is None or lead is None:
                    return
                lt, index, voters = round_
                message["rv_t"] = lt
                echo = lead.echo_for(node.id, voters, lt)
                if echo is not None:
                    message["rv_e"] = (echo, index)
            elif kind == "next_node_idx":
                answering, alive = self._answering, self.loop_alive
                if answering is None or answering[0] is not node:
                    return
                message["rv_t"] = answering[1]
                stamp = answer_stamp(raft_clock(), alive, self.loop_fresh_for)
                if stamp is not None:
                    message["rv_s"], message["rv_a"] = stamp
            elif kind == "response_vote":
                message["rv_x"] = raft_clock() - self._contact
        except Exception:
            log.exception("raft lease stamp failed; message sent without it")

    def _heartbeat_lease(self, node: Any, message: Mapping[str, Any]) -> None:
        """An append_entries or its answer arrives: note what its stamps say."""
        kind = message.get("type")
        if kind == "append_entries":
            if message["term"] < self._SyncObj__raftCurrentTerm:
                return  # the stock code ignores it, and answers nothing
            lt = message.get("rv_t")
            self._contact = raft_clock()
            self.leader_echoes = isinstance(lt, float)
            self._answering = (node, lt) if isinstance(lt, float) else None
            echo = message.get("rv_e")
            if isinstance(echo, tuple) and len(echo) == 2:
                self._follower.echoed(float(echo[0]), int(echo[1]))
        elif kind == "response_vote":
            term = int(message["term"])
            if (
                self._SyncObj__raftState != _RAFT_STATE.CANDIDATE
                or term != self._SyncObj__raftCurrentTerm
            ):
                return  # the stock code does not count it either
            age = message.get("rv_x")
            vote = raft_clock() - age if isinstance(age, float) and age >= 0 else None
            if self._votes[0] != term:
                self._votes = (term, [])
            self._votes[1].append(vote)
        elif kind == "next_node_idx":
            lead = self._lead
            lt = message.get("rv_t")
            if lead is None or not isinstance(lt, float):
                return
            if self._SyncObj__raftState != _RAFT_STATE.LEADER:
                return
            alive, age = message.get("rv_s"), message.get("rv_a")
            known = isinstance(alive, float) and isinstance(age, float)
            lead.answered(
                node.id,
                lt,
                alive if known else None,
                age if known else None,
                raft_clock(),
            )

    def lease_confirmed(self) -> float:
        """This member's newest stamp that a leader vouches for (core/liveness.py), once
        applied as far as that leader's log went; -inf: none (tick thread: the bookkeeping
        is not locked; `_Replica` keeps the value for other threads)."""
        applied = int(self.raftLastApplied)
        lead = self._lead
        own = self._follower.confirmed(applied)
        if lead is not None and self._SyncObj__raftState == _RAFT_STATE.LEADER:
            mine = lead.own_stamp(self._voter_ids(), raft_clock(), applied)
            if mine is not None:
                return max(mine, own)
        return own

    def lease_counted(self) -> dict[str, float]:
        """Leader: peer id -> until when its member loop is known to have run."""
        lead = self._lead
        if lead is None or self._SyncObj__raftState != _RAFT_STATE.LEADER:
            return {}
        return dict(lead.counted)

    # --- messages (tick thread) ---

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
        if isinstance(message, dict) and message.get("type") in (
            "append_entries",
            "next_node_idx",
            "response_vote",
        ):
            try:
                self._heartbeat_lease(node, message)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("raft lease ignored a malformed %s: %r", message.get("type"), exc)
            try:
                self._prevote_message(node, message)
            finally:
                self._answering = None
            return
        self._prevote_message(node, message)

    def _prevote_message(self, node: Any, message: Any) -> None:
        if self._prevote and isinstance(message, dict):
            kind = message.get("type")
            try:
                if kind == PREVOTE_REQUEST:
                    self._on_prevote_request(node, message)
                    return
                if kind == PREVOTE_REPLY:
                    self._on_prevote_reply(node, message)
                    return
                if kind == "append_entries" and message["term"] >= self._SyncObj__raftCurrentTerm:
                    self._leader_heard = raft_clock()  # stock code follows it as leader
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("raft prevote ignored a malformed %s message: %r", kind, exc)
                return
        SyncObj._SyncObj__onMessageReceived(self, node, message)

    def _on_prevote_request(self, node: Any, message: Mapping[str, Any]) -> None:
        if self._SyncObj__selfNode is None or node not in self._SyncObj__otherNodes:
            return  # read-only nodes neither ask nor vote
        request = PreVoteRequest(
            int(message["term"]), int(message["last_log_index"]), int(message["last_log_term"])
        )
        leader = self._SyncObj__raftLeader
        view = VoterView(
            is_leader=self._SyncObj__raftState == _RAFT_STATE.LEADER,
            term=int(self._SyncObj__raftCurrentTerm),
            last_log_index=int(self._SyncObj__getCurrentLogIndex()),
            last_log_term=int(self._SyncObj__getCurrentLogTerm()),
            leader_heard=self._leader_heard,
            leader_connected=leader is not None and leader in self._SyncObj__connectedNodes,
            min_timeout=float(self._SyncObj__conf.raftMinTimeout),
        )
        now = raft_clock()
        granted, reason = prevote_answer(view, request, now)
        # Granting is rare in a healthy group (an election follows): say when and why.
        log.log(
            logging.INFO if granted else logging.DEBUG,
            "raft prevote from=%s term=%d granted=%s reason=%s leader_heard=%s",
            node.id,
            request.term,
            granted,
            reason,
            "never" if self._leader_heard is None else f"{now - self._leader_heard:.3f}s_ago",
        )
        self._SyncObj__transport.send(
            node,
            {
                "type": PREVOTE_REPLY,
                "term": request.term,
                "granted": granted,
                "reason": reason,
                "voter_term": view.term,
            },
        )

    def _on_prevote_reply(self, node: Any, message: Mapping[str, Any]) -> None:
        if node not in self._SyncObj__otherNodes:
            return
        term = int(self._SyncObj__raftCurrentTerm)
        voter_term = int(message["voter_term"])
        if voter_term > term and self._SyncObj__raftState != _RAFT_STATE.LEADER:
            # This member is behind in terms: catch up (as a follower) so that its next
            # pre-vote can succeed; the group's term does not change.
            self._SyncObj__setCurrentTerm(voter_term, None)
            self._SyncObj__setState(_RAFT_STATE.FOLLOWER)
            self._SyncObj__raftLeader = None
            self._prevote_round = None
            return
        current = self._prevote_round
        if not message["granted"] or current is None or int(message["term"]) != current.term:
            return
        self._prevote_round = replace(current, granted=current.granted | {node.id})
        voters = len(self._SyncObj__otherNodes) + 1
        if prevote_won(self._prevote_round, term, voters) and not prevote_won(
            current, term, voters
        ):
            log.info(
                "raft prevote won term=%d votes=%d/%d",
                term + 1,
                len(self._prevote_round.granted),
                voters,
            )  # the next tick (right after this poll) elects
