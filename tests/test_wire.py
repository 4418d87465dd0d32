"""The Raft port's message encryption (pysyncobj_patches.Channel): ChaCha20-Poly1305 frames,
Fernet frames of older members still accepted, and what a connection refuses."""

from __future__ import annotations

import contextlib
import inspect
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from pysyncobj import SyncObj, SyncObjConf, replicated, tcp_connection, transport
from pysyncobj.encryptor import getEncryptor

from raftvip import pysyncobj_patches
from raftvip.config import RaftTuning
from raftvip.pysyncobj_patches import MAGIC, Channel, WireError, WireKeys, derive_master_key
from raftvip.testing.wait import free_port, wait_until

SECRET = "wire-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def fernet() -> Any:
    return getEncryptor(SECRET)


@pytest.fixture(scope="module")
def master() -> bytes:
    return derive_master_key(SECRET)


def keys(fernet: Any, master: bytes, send: str = "aead") -> WireKeys:
    return WireKeys(fernet, master, send)


def deliver(receiver: Channel, frame: bytes) -> bytes:
    """What pysyncobj's TcpConnection does with a frame (0.3.17)."""
    assert receiver.extract_timestamp(frame) >= 0
    return receiver.decrypt(frame)


def test_frames_round_trip_without_base64(fernet: Any, master: bytes) -> None:
    a, b = Channel(keys(fernet, master)), Channel(keys(fernet, master))
    for i in range(5):
        frame = a.encrypt_at_time(b"message %d" % i, 0)
        assert frame[:1] == MAGIC
        assert b"message" not in frame  # encrypted
        assert deliver(b, frame) == b"message %d" % i
        assert deliver(a, b.encrypt_at_time(b"answer", 0)) == b"answer"
    assert a.peer_format == b.peer_format == "aead"


def test_a_wrong_secret_is_refused(fernet: Any, master: bytes) -> None:
    rogue = Channel(keys(getEncryptor("wrong"), derive_master_key("wrong-secret")))
    member = Channel(keys(fernet, master))
    with pytest.raises(WireError, match="does not authenticate"):
        deliver(member, rogue.encrypt_at_time(b"hello", 0))
    assert member.peer_format is None  # nothing pinned by a frame that failed


def test_tampering_replay_reorder_and_reflection_are_refused(fernet: Any, master: bytes) -> None:
    sender, receiver = Channel(keys(fernet, master)), Channel(keys(fernet, master))
    f0, f1, f2 = (sender.encrypt_at_time(b"m%d" % i, 0) for i in range(3))
    deliver(receiver, f0)
    with pytest.raises(WireError):
        deliver(receiver, f0)  # replayed
    with pytest.raises(WireError):
        deliver(receiver, f2)  # f1 dropped or reordered
    flipped = f1[:-1] + bytes([f1[-1] ^ 1])
    with pytest.raises(WireError):
        deliver(receiver, flipped)  # tampered
    assert deliver(receiver, f1) == b"m1"
    with pytest.raises(WireError, match="reflected"):
        deliver(sender, f2)  # our own frame sent back to us
    other = Channel(keys(fernet, master))
    with pytest.raises(WireError, match="another sender"):
        deliver(receiver, other.encrypt_at_time(b"x", 0))  # spliced from another connection


def test_every_channel_has_its_own_key_and_nonces(fernet: Any, master: bytes) -> None:
    a, b = Channel(keys(fernet, master)), Channel(keys(fernet, master))
    fa, fb = a.encrypt_at_time(b"same", 0), b.encrypt_at_time(b"same", 0)
    assert fa[1:17] != fb[1:17] and fa[25:] != fb[25:]  # salts, hence keys, differ


def test_fernet_from_an_older_member_is_accepted_and_answered_in_kind(
    fernet: Any, master: bytes
) -> None:
    member = Channel(keys(fernet, master, send="aead"))
    old = fernet.encrypt_at_time(b"from 0.x", int(time.monotonic()))
    assert deliver(member, old) == b"from 0.x"
    answer = member.encrypt_at_time(b"reply", int(time.monotonic()))
    assert answer[:1] != MAGIC and fernet.decrypt(answer) == b"reply"
    with pytest.raises(WireError):  # no switching formats within a connection
        deliver(member, Channel(keys(fernet, master)).encrypt_at_time(b"x", 0))


def test_wire_fernet_sends_what_older_members_read(fernet: Any, master: bytes) -> None:
    member = Channel(keys(fernet, master, send="fernet"))
    assert fernet.decrypt(member.encrypt_at_time(b"hi", int(time.monotonic()))) == b"hi"


def test_after_aead_a_fernet_frame_is_refused(fernet: Any, master: bytes) -> None:
    a, b = Channel(keys(fernet, master)), Channel(keys(fernet, master))
    deliver(b, a.encrypt_at_time(b"x", 0))
    with pytest.raises(WireError):
        deliver(b, fernet.encrypt_at_time(b"downgrade", 0))


def test_tcp_connection_calls_the_encryptor_as_channel_expects() -> None:
    """If pysyncobj changes how it calls its encryptor, the channel no longer fits: fail here."""
    source = inspect.getsource(tcp_connection.TcpConnection)
    for call in (
        "self.encryptor.encrypt_at_time(data, int(monotonicTime()))",
        "dataTimestamp = self.encryptor.extract_timestamp(data)",
        "assert dataTimestamp >= self.recvLastTimestamp",
        "data = self.encryptor.decrypt(data)",
        "except:",
    ):
        assert call in source, call
    incoming = inspect.getsource(transport.TCPTransport._onNewIncomingConnection)
    assert "conn.encryptor = encryptor" in incoming
    assert "getEncryptor(self.__conf.password)" in inspect.getsource(SyncObj.__init__)


@pytest.mark.parametrize("size", [0, 1, 150, 4096, 65535])
def test_stored_zlib_streams_decompress_anywhere(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    assert zlib.decompress(pysyncobj_patches.stored_zlib(data)) == data
    assert zlib.decompressobj().decompress(pysyncobj_patches.stored_zlib(data)) == data


def test_large_messages_are_still_compressed() -> None:
    big = b"a" * (pysyncobj_patches.COMPRESS_ABOVE + 1)
    assert len(pysyncobj_patches._CheapZlib.compress(big, 3)) < 100


def test_tcp_connection_compresses_as_the_shim_expects() -> None:
    source = inspect.getsource(tcp_connection)
    assert "import zlib" in source
    assert "zlib.compress(pickle.dumps(message), 3)" in source
    assert "pickle.loads(zlib.decompress(data))" in source


# --- live pysyncobj nodes in this process ---------------------------------------------------


class _Node(SyncObj):  # type: ignore[misc]
    def __init__(self, me: str, peers: list[str], wire: str | None) -> None:
        conf = SyncObjConf(
            password=SECRET,
            bindAddress=me,
            raftMinTimeout=0.2,
            raftMaxTimeout=0.5,
            appendEntriesPeriod=0.05,
            appendEntriesUseBatch=False,
            connectionTimeout=1.0,
            connectionRetryTime=0.3,
        )
        self.raftvip_tuning = RaftTuning(wire="aead" if wire is None else wire)  # type: ignore[arg-type]
        self.value = 0
        if wire is None:  # an older member: stock transport, Fernet
            super().__init__(me, peers, conf)
        else:
            super().__init__(me, peers, conf, transportClass=pysyncobj_patches.Transport)

    @replicated  # type: ignore[untyped-decorator]
    def bump(self) -> None:
        self.value += 1


@contextlib.contextmanager
def _group(wires: list[str | None]) -> Iterator[list[_Node]]:
    port = free_port("127.0.0.1")
    addrs = [f"127.0.2.{10 + i}:{port}" for i in range(len(wires))]
    nodes = [_Node(a, [b for b in addrs if b != a], w) for a, w in zip(addrs, wires, strict=True)]
    try:
        yield nodes
    finally:
        for node in nodes:
            node.destroy()


def _all_connected(nodes: list[_Node]) -> bool:
    return all(n.isNodeConnected(o) for n in nodes for o in n.otherNodes)


def _commits(nodes: list[_Node]) -> bool:
    leader = next((n for n in nodes if n._isLeader()), None)
    if leader is None:
        return False
    target = max(n.value for n in nodes) + 1
    leader.bump(sync=True, timeout=2)
    wait_until(lambda: all(n.value >= target for n in nodes), 5)
    return True


@pytest.mark.parametrize(
    "wires",
    [
        ["aead", "aead", "aead"],
        # a roll-out: upgraded members told to send Fernet first talk to an older one
        ["fernet", "fernet", None],
        # upgraded members that speak AEAD first: an older member that connects to them is
        # answered in Fernet (every link here is opened by the higher address: the old node)
        [None, "aead", "aead"][::-1],
    ],
)
def test_groups_form_and_commit(wires: list[str | None]) -> None:
    with _group(wires) as nodes:
        wait_until(lambda: _all_connected(nodes), 10)
        wait_until(lambda: _commits(nodes), 10)


def test_an_upgraded_member_falls_back_to_fernet_for_an_older_one() -> None:
    """The older member cannot read AEAD and closes the link: the next attempt speaks Fernet."""
    with _group([None, "aead", "aead"]) as nodes:  # the AEAD members connect to the old one
        wait_until(lambda: _all_connected(nodes), 10)
        wait_until(lambda: _commits(nodes), 10)
        new = nodes[2]._SyncObj__transport._connections
        formats = {node.address: conn.encryptor.sends for node, conn in new.items()}
        assert formats == {nodes[0].selfNode.address: "fernet", nodes[1].selfNode.address: "aead"}
