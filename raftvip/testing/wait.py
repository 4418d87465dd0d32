"""Polling and ports: the one copy of `wait_until` and `free_port` (tests, benchmarks, lab)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """`wait_until` gave up; the probe's last exception, if any, is chained."""


class ProcessExited(RuntimeError):
    """A process exited while we waited for it: `wait_until` stops at once."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now (the kernel picks it; close to race-free)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    probe: Callable[[], T | None],
    timeout: float,
    interval: float = 0.005,
    *,
    what: str = "the condition",
) -> T:
    """Call `probe` until it returns something other than None or False, and return that.

    Exceptions from `probe` count as "not yet" (a process may be still starting) and the last
    one is chained to the timeout error, except ProcessExited, which propagates at once.
    Raises WaitTimeout naming `what` after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = probe()
        except ProcessExited:
            raise
        except Exception as exc:  # retried until the deadline, then reported with the timeout
            last_error = exc
        else:
            if value is not None and value is not False:
                return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}") from last_error
        time.sleep(interval)
