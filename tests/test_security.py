"""Security and bad input against live members: the Raft port, secrets, the control socket,
ExaBGP's stdin.

`RAFTVIP_FUZZ_EXAMPLES` sets the control-socket fuzz size (default 300; long mode: 10000).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pysyncobj import SyncObj, SyncObjConf

from raftvip.control import recv_frame, request
from raftvip.testing.group import SECRET, Group, settled
from raftvip.testing.wait import wait_until

pytestmark = pytest.mark.slow

FUZZ_EXAMPLES = int(os.environ.get("RAFTVIP_FUZZ_EXAMPLES", "300"))


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Group]:
    g = Group(tmp_path_factory.mktemp("security"), size=3, metrics=True)
    try:
        g.start_all()
        wait_until(lambda: settled(g), 30)
        yield g
    finally:
        g.close()


def raft_address(group: Group, name: str) -> tuple[str, int]:
    host, port = group.members[name].address.rsplit(":", 1)
    return host, int(port)


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {EVIDENCE}",))


EVIDENCE = Path(f"/tmp/raftvip-pwned-{os.getpid()}")


@pytest.mark.parametrize("password", ["wrong-secret-0123456789abcdef", None])
def test_rogue_peer_cannot_join_read_or_inject(group: Group, password: str | None) -> None:
    version = group.status("lb1")["state_version"]
    members = [m.address for m in group.members.values()]
    conf = SyncObjConf(password=password, bindAddress="127.0.0.99:0", autoTick=True)
    # The rogue claims to be lb1 (a configured address) and uses the real peer list.
    rogue = SyncObj("127.0.0.99:" + members[0].rsplit(":", 1)[1], members, conf)
    try:
        time.sleep(3.0)
        assert not any(rogue.isNodeConnected(n) for n in rogue.otherNodes)
        assert rogue._getLeader() is None
        assert rogue.raftCommitIndex <= 1  # read nothing
    finally:
        rogue.destroy()
    after = group.status("lb1")
    assert after["state_version"] >= version and after["has_quorum"]
    assert set(after["members"]) == {"lb1", "lb2", "lb3"}
    assert settled(group)
    logs = "".join(group.stderr(n) for n in group.members)
    assert "rejected: connection closed before it sent one frame" in logs


def test_unauthenticated_bytes_never_reach_pickle(group: Group) -> None:
    """A pysyncobj frame that would run code if unpickled: the member must not run it."""
    EVIDENCE.unlink(missing_ok=True)
    version = group.status("lb2")["state_version"]
    payload = zlib.compress(pickle.dumps(_Evil()))
    frames = [
        struct.pack("i", len(payload)) + payload,  # what pysyncobj without a password accepts
        b"\x00\x00\x00\x10" + os.urandom(16),
        b"gAAAAA" + os.urandom(200),  # Fernet-looking junk
        os.urandom(4096),
    ]
    for frame in frames:
        with socket.create_connection(raft_address(group, "lb2"), timeout=5) as sock:
            sock.sendall(frame)
            sock.settimeout(2)
            try:
                while sock.recv(4096):
                    pass
            except (TimeoutError, ConnectionError):
                pass
    time.sleep(0.5)
    assert not EVIDENCE.exists(), "an unauthenticated pickle was loaded"
    assert group.members["lb2"].running
    doc = group.status("lb2")
    assert doc["has_quorum"] and doc["state_version"] >= version
    assert "raft peer=127.0.0.1:" in group.stderr("lb2") and "rejected" in group.stderr("lb2")


def test_secret_never_in_argv_logs_status_or_metrics(group: Group) -> None:
    for name, member in group.members.items():
        assert member.proc is not None
        cmdline = Path(f"/proc/{member.proc.pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{member.proc.pid}/environ").read_bytes()
        assert SECRET.encode() not in cmdline and SECRET.encode() not in environ
        assert SECRET not in group.stderr(name)
        assert SECRET not in json.dumps(group.status(name))
        with urllib.request.urlopen(group.metrics_url(name), timeout=5) as response:
            assert SECRET not in response.read().decode()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_secret_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    g = Group(tmp_path, size=3)
    (tmp_path / "secret").chmod(mode)
    result = subprocess.run(
        [sys.executable, "-m", "raftvip", "run", "-c", str(g.members["lb1"].config)],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if k != "RAFTVIP_SECRET"},
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    assert f"accessible by group or others (mode {mode:04o})" in result.stderr
    assert "chmod 600" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_control_socket_is_private(group: Group) -> None:
    path = group.root / "lb1.sock"
    st_ = path.stat()
    assert st_.st_mode & 0o777 == 0o600 and st_.st_uid == os.getuid()


def _exchange(path: str, data: bytes) -> Any:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return recv_frame(sock)


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
_requests = st.fixed_dictionaries(
    {"op": st.sampled_from(["drain", "pin", "maintenance", "status", "nope", "commit_latency"])},
    optional={
        "member": _values | st.sampled_from(["lb1", "lb9"]),
        "vip": _values,
        "service": _values,
        "on": _values,
        "samples": _values,
        "force": _values,
    },
)


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


_frames = st.one_of(
    st.binary(max_size=64).map(_frame),
    _values.map(lambda v: _frame(msgpack.packb(v))),
    # Read-only or refused requests only: never drain/pin/maintenance with valid arguments.
    _requests.filter(lambda r: r["op"] not in ("drain", "pin", "maintenance")).map(
        lambda r: _frame(msgpack.packb(r))
    ),
    _requests.map(lambda r: _frame(msgpack.packb({**r, "member": "lb9", "vip": 7, "on": "x"}))),
    st.binary(max_size=64).map(lambda b: struct.pack(">I", len(b) + 50) + b),  # truncated
    st.integers(min_value=1 << 20, max_value=(1 << 32) - 1).map(lambda n: struct.pack(">I", n)),
)


def test_control_socket_fuzz_on_a_live_member(group: Group) -> None:
    path = str(group.root / "lb3.sock")
    before = group.status("lb3")

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(_frames)
    def check(frame: bytes) -> None:
        reply = _exchange(path, frame)
        assert isinstance(reply, dict) and "ok" in reply
        if frame[4:] and not reply["ok"]:
            assert isinstance(reply["error"], str)

    check()
    assert group.members["lb3"].running
    after = request(path, {"op": "status"})
    assert after["services"] == before["services"]
    assert {n: m["drained"] for n, m in after["members"].items()} == {
        n: m["drained"] for n, m in before["members"].items()
    }
    assert "Traceback" not in group.stderr("lb3")


def test_exabgp_stdin_eof_at_any_point_exits_cleanly(tmp_path: Path) -> None:
    """Garbage, partial lines, `error` acks, huge lines, then EOF mid-stream: exit 0."""
    rng = random.Random(4242)
    stream = (
        b"done\nerror\n\x00\xff garbage\n"
        + b"neighbor 127.0.0.1 up\n\n"
        + b"y" * 100_000
        + b"\nshow neighbor summary\npartial-without-newline"
    )
    g = Group(tmp_path, size=3)
    try:
        g.start_all()
        wait_until(lambda: settled(g), 30)
        for name in ("lb1", "lb2", "lb3"):
            member = g.members[name]
            assert member.proc is not None and member.proc.stdin is not None
            assert member.stub is not None
            member.stub.ack = False
            cut = rng.randrange(len(stream))
            member.proc.stdin.write(stream[:cut])
            member.proc.stdin.flush()
            member.proc.stdin.close()
            assert member.proc.wait(15) == 0
            err = g.stderr(name)
            assert "EOF on stdin" in err and "Traceback" not in err
    finally:
        g.close()
