"""Local health checks: a pure rise/fall state machine plus probe threads.

The states and transitions are those of ExaBGP's ``healthcheck.py`` (``loop``/``one``/
``trigger``), written as a pure ``step`` on frozen values:

* INIT: a success goes to RISING (straight to UP when ``rise <= 1``), a failure to FALLING
  (straight to DOWN when ``fall <= 1``).
* RISING: ``rise`` consecutive successes reach UP; a failure goes to FALLING (or DOWN).
* FALLING: ``fall`` consecutive failures reach DOWN; a success goes to RISING (or UP).
* UP stays UP on success; DOWN stays DOWN on failure.
* The disable file existing moves any state to DISABLED without running the probe; its
  removal moves DISABLED back to INIT. EXIT is terminal (the monitor was stopped).
* A probe that times out is a failure.
* Checks run every ``interval`` in INIT, UP, DOWN and DISABLED and every ``fast_interval``
  while RISING or FALLING; the first check runs as soon as the monitor starts.

What the agent announces on is ``CheckStatus.announcing``, latched exactly like
healthcheck.py's announcement: it turns on when UP is reached and off when DOWN, DISABLED, INIT
or EXIT is reached; RISING and FALLING keep whatever it was. So one failed probe between
successes (UP -> FALLING -> RISING -> UP) never withdraws, and a service whose first probes
fail (INIT -> FALLING) never announces. ``is_healthy(state)`` is the state-only
approximation (UP or FALLING) kept for display.

Deliberate deviations from healthcheck.py:

* When the disable file disappears, healthcheck.py runs the probe, discards its result, moves
  to INIT and sleeps a full ``interval``. raftvip moves to INIT and feeds that same probe result
  to ``step`` at once, so a re-enabled service comes back ``interval`` sooner.
* ``interval = 0`` means "exit after the first announcement" in healthcheck.py; a raftvip
  member never exits because of a check, and sleeps are floored at ``MIN_INTERVAL``.
* Probes run in worker threads with ``subprocess`` timeouts, never SIGALRM; on timeout the
  whole process group of a command check is killed so no child lingers.
* An HTTP check succeeds only on a 2xx answer; redirects are not followed (3xx is a
  failure) and proxy environment variables are ignored.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from raftvip.config import CheckConfig, ServiceConfig

log = logging.getLogger(__name__)

Clock = Callable[[], float]
T = TypeVar("T")

MIN_INTERVAL = 0.01  # seconds; keeps a zero interval from spinning a thread
STDERR_DETAIL_LIMIT = 200  # characters of the first stderr line kept in a probe detail
USER_AGENT = "raftvip-health/1"


class HealthState(enum.Enum):
    INIT = "INIT"
    RISING = "RISING"  # checks are succeeding, fewer than `rise` in a row so far
    UP = "UP"
    FALLING = "FALLING"  # checks are failing, fewer than `fall` in a row so far
    DOWN = "DOWN"
    DISABLED = "DISABLED"  # the disable file exists: no probes, not healthy
    EXIT = "EXIT"  # the monitor stopped: terminal


@dataclass(frozen=True)
class CheckStatus:
    """Where one service's check stands; the counters are consecutive results."""

    state: HealthState
    successes: int
    failures: int
    last_ok: bool | None
    last_detail: str
    last_duration: float
    # Latched like healthcheck.py's announcement: on at UP, off at DOWN/DISABLED/INIT/EXIT.
    announcing: bool = False


INITIAL = CheckStatus(HealthState.INIT, 0, 0, None, "", 0.0)


def is_healthy(state: HealthState) -> bool:
    """True when the member should announce the service's VIPs (UP, or FALLING towards DOWN)."""
    return state in (HealthState.UP, HealthState.FALLING)


def step(
    status: CheckStatus,
    ok: bool,
    rise: int,
    fall: int,
    detail: str = "",
    duration: float = 0.0,
) -> CheckStatus:
    """The status after one probe result; DISABLED and EXIT only record the result."""
    state = status.state
    if state in (HealthState.DISABLED, HealthState.EXIT):
        return replace(status, last_ok=ok, last_detail=detail, last_duration=duration)
    if ok:
        failures = 0
        if state is HealthState.UP:
            new_state, successes = HealthState.UP, status.successes + 1
        elif state is HealthState.RISING:
            successes = status.successes + 1
            new_state = HealthState.UP if successes >= rise else HealthState.RISING
        else:  # INIT, FALLING, DOWN: start rising (healthcheck.py's RISING->UP shortcut)
            successes = 1
            new_state = HealthState.UP if rise <= 1 else HealthState.RISING
    else:
        successes = 0
        if state is HealthState.DOWN:
            new_state, failures = HealthState.DOWN, status.failures + 1
        elif state is HealthState.FALLING:
            failures = status.failures + 1
            new_state = HealthState.DOWN if failures >= fall else HealthState.FALLING
        else:  # INIT, RISING, UP: start falling (healthcheck.py's FALLING->DOWN shortcut)
            failures = 1
            new_state = HealthState.DOWN if fall <= 1 else HealthState.FALLING
    if new_state is HealthState.UP:
        announcing = True
    elif new_state is HealthState.DOWN:
        announcing = False
    else:
        announcing = status.announcing and state is not HealthState.INIT
    return CheckStatus(new_state, successes, failures, ok, detail, duration, announcing)


def disabled(status: CheckStatus) -> CheckStatus:
    """The disable file exists: DISABLED with counters reset (EXIT stays EXIT)."""
    if status.state in (HealthState.DISABLED, HealthState.EXIT):
        return status
    return replace(status, state=HealthState.DISABLED, successes=0, failures=0, announcing=False)


def enabled(status: CheckStatus) -> CheckStatus:
    """The disable file is gone: DISABLED goes back to INIT; any other status is unchanged."""
    if status.state is not HealthState.DISABLED:
        return status
    return replace(status, state=HealthState.INIT, successes=0, failures=0, announcing=False)


def exited(status: CheckStatus) -> CheckStatus:
    """The monitor stopped: EXIT, terminal."""
    return replace(status, state=HealthState.EXIT, announcing=False)


def carried_over(local: str) -> CheckStatus:
    """The first status of a checker that replaces another one (a reload changed the check):
    the verdict the member acts on now ("up", "down", "disabled"), so that the new check goes
    on from there — `fall` failures to withdraw a service that is up, `rise` successes to
    announce one that is down — instead of withdrawing it while it rises from INIT."""
    if local == "up":
        return CheckStatus(HealthState.UP, 0, 0, None, "carried over", 0.0, announcing=True)
    if local == "disabled":
        return CheckStatus(HealthState.DISABLED, 0, 0, None, "carried over", 0.0)
    return CheckStatus(HealthState.DOWN, 0, 0, None, "carried over", 0.0)


def next_interval(status: CheckStatus, check: CheckConfig) -> float:
    """Seconds to wait before the next probe: fast while RISING/FALLING, else the interval."""
    if status.state in (HealthState.RISING, HealthState.FALLING):
        return max(check.fast_interval, MIN_INTERVAL)
    return max(check.interval, MIN_INTERVAL)


# --- probes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str
    duration: float


def run_probe(check: CheckConfig, clock: Clock = time.monotonic) -> ProbeResult:
    """Run one check within `check.timeout`. Never raises: any error is a failed result."""
    started = clock()
    try:
        ok, detail = _PROBES[check.kind](check)
    except Exception as exc:  # a probe must never take its thread down
        ok, detail = False, _describe(exc, check.timeout)
    return ProbeResult(ok, detail, clock() - started)


def _probe_none(check: CheckConfig) -> tuple[bool, str]:
    return True, "no check"


def _probe_command(check: CheckConfig) -> tuple[bool, str]:
    if not check.target.strip():
        return False, "empty command"
    # Popen rather than subprocess.run: on timeout run() kills only the shell, and the
    # process group id (= the shell's pid) is needed to kill its children as well.
    with subprocess.Popen(
        check.target,
        shell=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    ) as proc:
        try:
            _, stderr = proc.communicate(timeout=check.timeout)
        except subprocess.TimeoutExpired:
            # The shell is not reaped yet, so its pid (the group id) cannot have been reused.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            # Reap the shell; do not read stderr, which a process outside the group may hold.
            proc.wait()
            return False, f"timeout after {check.timeout}s"
    code = proc.returncode
    if code == 0:
        return True, "exit 0"
    detail = f"signal {-code}" if code < 0 else f"exit {code}"
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    if lines:
        detail = f"{detail}: {lines[0].strip()[:STDERR_DETAIL_LIMIT]}"
    return False, detail


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is the check's answer, not a hop: returning None makes urllib raise HTTPError."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _probe_http(check: CheckConfig) -> tuple[bool, str]:
    # A fresh opener per probe: no state shared between threads. ProxyHandler({}) ignores
    # http_proxy & co, which would send a local health check through a proxy.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    request = urllib.request.Request(check.target, headers={"User-Agent": USER_AGENT})
    # `timeout` bounds each socket operation (connect, each read), not the whole exchange.
    try:
        with opener.open(request, timeout=check.timeout) as response:
            code = response.status
    except urllib.error.HTTPError as exc:  # any status outside 2xx, redirects included
        exc.close()
        return False, f"HTTP {exc.code}"
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, BaseException):
            return False, _describe(reason, check.timeout)
        return False, str(reason)
    return 200 <= code < 300, f"HTTP {code}"


def _probe_tcp(check: CheckConfig) -> tuple[bool, str]:
    host, port = _split_host_port(check.target)
    with socket.create_connection((host, port), timeout=check.timeout):
        pass
    return True, "connected"


def _split_host_port(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"tcp target {target!r} is not host:port")
    return host.strip("[]"), int(port)


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):  # socket.timeout is an alias
        return f"timeout after {timeout}s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_PROBES: dict[str, Callable[[CheckConfig], tuple[bool, str]]] = {
    "none": _probe_none,
    "command": _probe_command,
    "http": _probe_http,
    "tcp": _probe_tcp,
}


# --- shell --------------------------------------------------------------------------------

OnChange = Callable[[str, CheckStatus], None]
OnResult = Callable[[str, ProbeResult], None]


@dataclass
class _Worker:
    """One service's checker: its thread, its stop signal and its latest status."""

    service: ServiceConfig
    status: CheckStatus
    stopping: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    retired: bool = False  # replaced or removed by a reload: it reports nothing more


class HealthMonitor:
    """One daemon thread per service running its check; reports state changes.

    `on_change(service, status)` runs in the worker thread after every state change (EXIT
    included, once the thread stops); `on_result(service, result)` after every probe. Both
    must be cheap (put on a queue); their exceptions are logged and swallowed.

    A reload replaces the checkers of some services only (`retire`, then `add`); the other
    threads run on untouched. Once `retire` has returned, the retired checkers call back no
    more, even from a probe that was still running.
    """

    def __init__(
        self,
        services: Sequence[ServiceConfig],
        on_change: OnChange,
        on_result: OnResult | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        names = [service.name for service in services]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate service names: {', '.join(duplicates)}")
        self._on_change = on_change
        self._on_result = on_result
        self._clock = clock
        self._lock = threading.Lock()  # guards _workers and every worker's status
        # Held while a worker records and reports a change, and while a worker is retired:
        # after `retire` returns, nothing of the retired worker reaches the callbacks.
        self._emit = threading.Lock()
        self._workers: dict[str, _Worker] = {s.name: _Worker(s, INITIAL) for s in services}
        self._threads: list[threading.Thread] = []  # every thread started, retired ones too
        self._started = False
        self._stopped = False

    def start(self) -> None:
        """Start one thread per service; each runs its first probe at once."""
        if self._started:
            raise RuntimeError("HealthMonitor already started")
        self._started = True
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            self._launch(worker)

    def add(
        self, services: Sequence[ServiceConfig], initial: Mapping[str, CheckStatus] | None = None
    ) -> None:
        """Start checkers for `services` (none of them may have one): each from its
        `initial` status (default INITIAL, as at start), probing at once."""
        if not self._started or self._stopped:
            raise RuntimeError("HealthMonitor is not running")
        seeds = initial or {}
        workers = [_Worker(s, seeds.get(s.name, INITIAL)) for s in services]
        with self._lock:
            taken = sorted(w.service.name for w in workers if w.service.name in self._workers)
            if taken or len({w.service.name for w in workers}) != len(workers):
                raise ValueError(f"services already checked: {', '.join(taken) or 'duplicates'}")
            for worker in workers:
                self._workers[worker.service.name] = worker
        for worker in workers:
            log.info(
                "service=%s health checker started (%s)",
                worker.service.name,
                worker.status.state.value,
            )
            self._launch(worker)

    def retire(self, names: Collection[str]) -> None:
        """Stop the checkers of `names` (unknown names are ignored) without waiting for a
        probe in progress; they report nothing more (no EXIT either) and leave `snapshot`."""
        with self._emit, self._lock:
            for name in names:
                worker = self._workers.pop(name, None)
                if worker is not None:
                    worker.retired = True
                    worker.stopping.set()
                    log.info("service=%s health checker stopped (reload)", name)

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the threads; True when all ended within `timeout`.

        A thread in the middle of a probe ends when the probe does (bounded by its
        check's timeout); a sleeping thread ends at once.
        """
        self._stopped = True
        with self._lock:
            workers = list(self._workers.values())
            threads = list(self._threads)
        for worker in workers:
            worker.stopping.set()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    def snapshot(self) -> dict[str, CheckStatus]:
        """A copy of every current checker's status."""
        with self._lock:
            return {name: worker.status for name, worker in self._workers.items()}

    def _launch(self, worker: _Worker) -> None:
        thread = threading.Thread(
            target=self._run, args=(worker,), name=f"health-{worker.service.name}", daemon=True
        )
        worker.thread = thread
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _run(self, worker: _Worker) -> None:
        service = worker.service
        while not worker.stopping.is_set():
            try:
                self._check_once(worker)
            except Exception:  # keep the check alive; a dead thread would freeze its state
                log.exception("service=%s health check iteration failed", service.name)
            wait = next_interval(self._status(worker), service.check)
            if worker.stopping.wait(wait):
                break
        self._update(worker, exited(self._status(worker)), "monitor stopped")

    def _check_once(self, worker: _Worker) -> None:
        name, check = worker.service.name, worker.service.check
        current = self._status(worker)
        if check.disable_file is not None and os.path.exists(check.disable_file):
            self._update(worker, disabled(current), f"disable file {check.disable_file} exists")
            return
        if current.state is HealthState.DISABLED:
            current = self._update(worker, enabled(current), "disable file removed")
        result = run_probe(check, self._clock)
        if worker.retired:
            return
        self._notify("on_result", self._on_result, name, result)
        if not result.ok:
            log.debug("service=%s probe=failed detail=%r", name, result.detail)
        status = step(current, result.ok, check.rise, check.fall, result.detail, result.duration)
        self._update(worker, status, result.detail)

    def _status(self, worker: _Worker) -> CheckStatus:
        with self._lock:
            return worker.status

    def _update(self, worker: _Worker, status: CheckStatus, detail: str) -> CheckStatus:
        # Only the service's own thread writes its status, so old -> new is race-free.
        name = worker.service.name
        with self._emit:
            if worker.retired:
                return status
            with self._lock:
                old = worker.status
                worker.status = status
            if old.state is not status.state:
                log.info(
                    "service=%s health=%s->%s detail=%r",
                    name,
                    old.state.value,
                    status.state.value,
                    detail,
                )
                self._notify("on_change", self._on_change, name, status)
        return status

    @staticmethod
    def _notify(what: str, callback: Callable[[str, T], None] | None, name: str, value: T) -> None:
        if callback is None:
            return
        try:
            callback(name, value)
        except Exception:
            log.exception("service=%s callback=%s failed", name, what)
