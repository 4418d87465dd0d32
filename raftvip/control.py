"""The local control socket: a unix stream socket, mode 0600, msgpack frames.

Frame: 4-byte big-endian length, then a msgpack map. Requests are `{"op": ..., ...}`;
replies are `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`. Malformed,
oversized, truncated and unknown requests get an error reply; the server keeps running.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import struct
import threading
from collections.abc import Callable
from typing import Any

import msgpack

from raftvip.errors import ControlError, RaftvipError

log = logging.getLogger(__name__)

MAX_FRAME = 1 << 20
_HEADER = struct.Struct(">I")
Handler = Callable[[dict[str, Any]], Any]


class RequestError(Exception):
    """Raised by a handler to answer `{"ok": false, "error": message}`."""


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    while size:
        chunk = sock.recv(min(size, 65536))
        if not chunk:
            raise ConnectionError("connection closed mid-frame (truncated message)")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def send_frame(sock: socket.socket, body: Any) -> None:
    payload = msgpack.packb(body, use_bin_type=True)
    if len(payload) > MAX_FRAME:
        raise ValueError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    sock.sendall(_HEADER.pack(len(payload)) + payload)


def recv_frame(sock: socket.socket) -> Any:
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes exceeds the {MAX_FRAME}-byte limit")
    return msgpack.unpackb(_recv_exact(sock, size), raw=False, strict_map_key=True)


class ControlServer:
    def __init__(self, path: str, handler: Handler) -> None:
        self._path = path
        self._handler = handler
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closing = False

    def start(self) -> None:
        directory = os.path.dirname(self._path) or "."
        try:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise RaftvipError(
                f"cluster.control_socket: cannot create {directory!r}: {exc.strerror}"
            ) from None
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(self._path)
        except OSError as exc:
            sock.close()
            raise RaftvipError(
                f"cluster.control_socket: cannot bind {self._path!r}: {exc.strerror}"
            ) from None
        finally:
            os.umask(old_umask)
        os.chmod(self._path, 0o600)
        sock.listen(16)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()

    def _remove_stale(self) -> None:
        try:
            mode = os.lstat(self._path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise RaftvipError(f"cluster.control_socket: {self._path!r} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(0.5)
        try:
            probe.connect(self._path)
        except OSError:
            os.unlink(self._path)  # left behind by a member that died
            return
        finally:
            probe.close()
        raise RaftvipError(f"cluster.control_socket: {self._path!r} is in use by a running member")

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._closing:
            try:
                conn, _ = self._sock.accept()
            except OSError as exc:
                if self._closing:
                    return
                log.error("control accept failed: %s", exc)
                continue
            threading.Thread(
                target=self._handle, args=(conn,), name="control-conn", daemon=True
            ).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5.0)
            try:
                request = recv_frame(conn)
            except (ValueError, ConnectionError, OSError, msgpack.UnpackException) as exc:
                log.warning("control bad request: %s", exc)
                with contextlib.suppress(OSError, ValueError):
                    send_frame(conn, {"ok": False, "error": f"bad request: {exc}"})
                return
            except Exception as exc:  # msgpack raises assorted types on garbage
                log.warning("control bad request: %s", exc)
                with contextlib.suppress(OSError, ValueError):
                    send_frame(conn, {"ok": False, "error": f"bad request: {exc}"})
                return
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                reply: dict[str, Any] = {"ok": False, "error": "bad request: not {'op': ...}"}
            else:
                try:
                    reply = {"ok": True, "result": self._handler(request)}
                except RequestError as exc:
                    reply = {"ok": False, "error": str(exc)}
                except Exception as exc:
                    log.exception("control op=%s failed", request.get("op"))
                    reply = {"ok": False, "error": f"internal error: {exc}"}
            try:
                send_frame(conn, reply)
            except (OSError, ValueError) as exc:
                log.warning("control reply failed: %s", exc)

    def stop(self) -> None:
        self._closing = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)


def request(path: str, body: dict[str, Any], timeout: float = 10.0) -> Any:
    """Send one request to a member's control socket and return its `result`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ControlError(
                f"no control socket at {path!r}: is `raftvip run` running for this config?"
            ) from None
        except OSError as exc:
            if exc.errno == errno.EACCES:
                raise ControlError(
                    f"permission denied on {path!r}: run as the user that runs raftvip"
                ) from None
            raise ControlError(f"cannot connect to {path!r}: {exc.strerror}") from None
        send_frame(sock, body)
        reply = recv_frame(sock)
    except (OSError, ValueError, ConnectionError) as exc:
        raise ControlError(f"control socket {path!r}: {exc}") from None
    finally:
        sock.close()
    if not isinstance(reply, dict) or "ok" not in reply:
        raise ControlError("malformed reply from the member")
    if not reply["ok"]:
        raise ControlError(str(reply.get("error", "request failed")))
    return reply.get("result")
