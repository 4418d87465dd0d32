"""The control socket: 0600, msgpack frames, every bad request answered, server survives."""

from __future__ import annotations

import os
import socket
import stat
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftvip.control import MAX_FRAME, ControlServer, RequestError, recv_frame, request
from raftvip.errors import ControlError, RaftvipError


def handler(req: dict[str, Any]) -> Any:
    if req["op"] == "echo":
        return req.get("value")
    if req["op"] == "boom":
        raise ValueError("exploded")
    raise RequestError(f"unknown op {req['op']!r}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "run" / "ctl.sock")
    srv = ControlServer(path, handler)
    srv.start()
    try:
        yield path
    finally:
        srv.stop()


def raw_exchange(path: str, data: bytes) -> Any:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return recv_frame(sock)


def test_socket_is_private_and_answers(server: str) -> None:
    assert stat.S_IMODE(os.stat(server).st_mode) == 0o600
    assert request(server, {"op": "echo", "value": [1, "x"]}) == [1, "x"]


def test_errors_are_replies_and_the_server_keeps_running(server: str) -> None:
    with pytest.raises(ControlError, match="unknown op 'nope'"):
        request(server, {"op": "nope"})
    with pytest.raises(ControlError, match="internal error: exploded"):
        request(server, {"op": "boom"})
    frame = msgpack.packb([1, 2])
    reply = raw_exchange(server, struct.pack(">I", len(frame)) + frame)
    assert reply == {"ok": False, "error": "bad request: not {'op': ...}"}
    reply = raw_exchange(server, struct.pack(">I", MAX_FRAME + 1))
    assert reply["ok"] is False and "exceeds" in reply["error"]
    reply = raw_exchange(server, struct.pack(">I", 100) + b"short")
    assert reply["ok"] is False and "truncated" in reply["error"]
    reply = raw_exchange(server, struct.pack(">I", 3) + b"\xc1\xc1\xc1")
    assert reply["ok"] is False and reply["error"].startswith("bad request")
    assert request(server, {"op": "echo", "value": 7}) == 7


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=64))
def test_fuzz_any_payload_gets_a_reply(server: str, payload: bytes) -> None:
    reply = raw_exchange(server, struct.pack(">I", len(payload)) + payload)
    assert isinstance(reply, dict) and "ok" in reply


def test_stale_socket_is_replaced_and_live_one_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "ctl.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # a file left by a member that died
    first = ControlServer(path, handler)
    first.start()
    try:
        with pytest.raises(RaftvipError, match="in use by a running member"):
            ControlServer(path, handler).start()
    finally:
        first.stop()
    assert not os.path.exists(path)


def test_missing_socket_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="is `raftvip run` running"):
        request(str(tmp_path / "none.sock"), {"op": "status"})
