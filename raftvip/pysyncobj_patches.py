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
- `PreVoteSyncObj`: Raft PreVote (thesis §9.6). A member whose election timer fires first
  asks the others whether they would vote for it; it raises its term and starts a real
  election only when a majority says yes. Members that heard from a live leader within the
  minimum election timeout say no, so a member that was cut off and comes back rejoins as a
  follower instead of forcing an election. The decisions are the pure functions
  `election_step` and `prevote_answer`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import pysyncobj
from pysyncobj import SyncObj, journal
from pysyncobj import monotonic as _pysyncobj_monotonic
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.syncobj import _RAFT_STATE
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


class PreVoteSyncObj(SyncObj):  # type: ignore[misc]
    """SyncObj with PreVote. Overrides `_onTick` (before the stock tick, which starts an
    election when the timer has fired: the timer is pushed back unless a pre-vote was won)
    and SyncObj's private `__onMessageReceived` (pre-vote messages, leader contact).
    `prevote=False` behaves exactly like stock pysyncobj."""

    _SyncObj__raftElectionDeadline: float  # SyncObj's election timer (written here too)
    _SyncObj__raftLeader: Any

    def __init__(self, *args: Any, prevote: bool = True, **kwargs: Any) -> None:
        self._prevote = prevote
        self._prevote_round: PreVoteRound | None = None
        self._leader_heard: float | None = None
        super().__init__(*args, **kwargs)
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

    # --- messages (tick thread) ---

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
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
