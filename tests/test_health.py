"""Health checks: the pure state machine, real probes on 127.0.0.1, and the monitor threads."""

from __future__ import annotations

import http.server
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raftvip.config import CheckConfig, ServiceConfig
from raftvip.health import (
    INITIAL,
    MIN_INTERVAL,
    CheckStatus,
    HealthMonitor,
    HealthState,
    ProbeResult,
    carried_over,
    disabled,
    enabled,
    exited,
    is_healthy,
    next_interval,
    run_probe,
    step,
)

S = HealthState


def status(state: HealthState, successes: int = 0, failures: int = 0) -> CheckStatus:
    # A state that was reached through UP announces (FALLING from UP, UP itself).
    return CheckStatus(state, successes, failures, None, "", 0.0, state in (S.UP, S.FALLING))


# --- pure state machine -------------------------------------------------------------------

# (state, successes, failures, ok, rise, fall) -> (state, successes, failures)
TRANSITIONS = [
    # rise 3 / fall 3: hysteresis
    (S.INIT, 0, 0, True, 3, 3, S.RISING, 1, 0),
    (S.INIT, 0, 0, False, 3, 3, S.FALLING, 0, 1),
    (S.RISING, 1, 0, True, 3, 3, S.RISING, 2, 0),
    (S.RISING, 2, 0, True, 3, 3, S.UP, 3, 0),
    (S.RISING, 2, 0, False, 3, 3, S.FALLING, 0, 1),
    (S.UP, 3, 0, True, 3, 3, S.UP, 4, 0),
    (S.UP, 3, 0, False, 3, 3, S.FALLING, 0, 1),
    (S.FALLING, 0, 1, True, 3, 3, S.RISING, 1, 0),
    (S.FALLING, 0, 1, False, 3, 3, S.FALLING, 0, 2),
    (S.FALLING, 0, 2, False, 3, 3, S.DOWN, 0, 3),
    (S.DOWN, 0, 3, True, 3, 3, S.RISING, 1, 0),
    (S.DOWN, 0, 3, False, 3, 3, S.DOWN, 0, 4),
    # rise 1 / fall 1: healthcheck.py's RISING->UP and FALLING->DOWN shortcuts
    (S.INIT, 0, 0, True, 1, 1, S.UP, 1, 0),
    (S.INIT, 0, 0, False, 1, 1, S.DOWN, 0, 1),
    (S.RISING, 1, 0, True, 1, 1, S.UP, 2, 0),
    (S.RISING, 1, 0, False, 1, 1, S.DOWN, 0, 1),
    (S.UP, 1, 0, True, 1, 1, S.UP, 2, 0),
    (S.UP, 1, 0, False, 1, 1, S.DOWN, 0, 1),
    (S.FALLING, 0, 1, True, 1, 1, S.UP, 1, 0),
    (S.FALLING, 0, 1, False, 1, 1, S.DOWN, 0, 2),
    (S.DOWN, 0, 1, True, 1, 1, S.UP, 1, 0),
    (S.DOWN, 0, 1, False, 1, 1, S.DOWN, 0, 2),
    # mixed: rise 1 / fall 3
    (S.INIT, 0, 0, True, 1, 3, S.UP, 1, 0),
    (S.INIT, 0, 0, False, 1, 3, S.FALLING, 0, 1),
    (S.UP, 5, 0, False, 1, 3, S.FALLING, 0, 1),
    (S.FALLING, 0, 2, True, 1, 3, S.UP, 1, 0),
    (S.DOWN, 0, 3, True, 1, 3, S.UP, 1, 0),
    # mixed: rise 3 / fall 1
    (S.INIT, 0, 0, True, 3, 1, S.RISING, 1, 0),
    (S.INIT, 0, 0, False, 3, 1, S.DOWN, 0, 1),
    (S.UP, 3, 0, False, 3, 1, S.DOWN, 0, 1),
    (S.RISING, 2, 0, False, 3, 1, S.DOWN, 0, 1),
    (S.DOWN, 0, 1, True, 3, 1, S.RISING, 1, 0),
]


@pytest.mark.parametrize(
    ("state", "successes", "failures", "ok", "rise", "fall", "want", "want_s", "want_f"),
    TRANSITIONS,
)
def test_step_transition(
    state: HealthState,
    successes: int,
    failures: int,
    ok: bool,
    rise: int,
    fall: int,
    want: HealthState,
    want_s: int,
    want_f: int,
) -> None:
    before = status(state, successes, failures)
    after = step(before, ok, rise, fall, "detail", 0.25)
    announcing = want is S.UP or (want not in (S.DOWN,) and before.announcing)
    assert after == CheckStatus(want, want_s, want_f, ok, "detail", 0.25, announcing)


@pytest.mark.parametrize("state", [S.DISABLED, S.EXIT])
@pytest.mark.parametrize("ok", [True, False])
def test_step_keeps_disabled_and_exit(state: HealthState, ok: bool) -> None:
    after = step(status(state), ok, 1, 1, "probe", 0.5)
    assert after == CheckStatus(state, 0, 0, ok, "probe", 0.5)


@pytest.mark.parametrize("state", [S.INIT, S.RISING, S.UP, S.FALLING, S.DOWN])
def test_disabled_then_enabled_goes_through_init(state: HealthState) -> None:
    before = CheckStatus(state, 2, 0, True, "exit 0", 0.1)
    off = disabled(before)
    assert off == CheckStatus(S.DISABLED, 0, 0, True, "exit 0", 0.1)
    assert disabled(off) == off
    assert enabled(off) == CheckStatus(S.INIT, 0, 0, True, "exit 0", 0.1)


@pytest.mark.parametrize("state", [S.INIT, S.RISING, S.UP, S.FALLING, S.DOWN, S.EXIT])
def test_enabled_leaves_other_states_alone(state: HealthState) -> None:
    before = status(state, 1, 0)
    assert enabled(before) == before


def test_exit_is_terminal() -> None:
    gone = exited(status(S.UP, 3))
    assert gone.state is S.EXIT
    assert disabled(gone) == gone
    assert step(gone, True, 1, 1).state is S.EXIT


CHECK = CheckConfig(kind="command", target="true", interval=5.0, fast_interval=1.0)


@pytest.mark.parametrize(
    ("state", "want"),
    [
        (S.INIT, 5.0),
        (S.RISING, 1.0),
        (S.UP, 5.0),
        (S.FALLING, 1.0),
        (S.DOWN, 5.0),
        (S.DISABLED, 5.0),
        (S.EXIT, 5.0),
    ],
)
def test_next_interval(state: HealthState, want: float) -> None:
    assert next_interval(status(state), CHECK) == want


def test_next_interval_never_zero() -> None:
    check = CheckConfig(interval=0.0, fast_interval=0.0)
    assert next_interval(status(S.UP), check) == MIN_INTERVAL
    assert next_interval(status(S.RISING), check) == MIN_INTERVAL


@pytest.mark.parametrize(
    ("state", "healthy"),
    [
        (S.INIT, False),
        (S.RISING, False),
        (S.UP, True),
        (S.FALLING, True),
        (S.DOWN, False),
        (S.DISABLED, False),
        (S.EXIT, False),
    ],
)
def test_is_healthy(state: HealthState, healthy: bool) -> None:
    assert is_healthy(state) is healthy


# An event in a history: a probe result, or the disable file appearing / disappearing.
events = st.lists(st.one_of(st.booleans(), st.sampled_from(["disable", "enable"])), max_size=40)
thresholds = st.integers(min_value=1, max_value=5)


def apply(current: CheckStatus, event: bool | str, rise: int, fall: int) -> CheckStatus:
    if event == "disable":
        return disabled(current)
    if event == "enable":
        return enabled(current)
    assert isinstance(event, bool)
    return step(current, event, rise, fall)


@given(history=events, rise=thresholds, fall=thresholds, ok=st.booleans())
def test_rise_successes_reach_up_and_fall_failures_reach_down(
    history: list[bool | str], rise: int, fall: int, ok: bool
) -> None:
    current = INITIAL
    for event in history:
        current = apply(current, event, rise, fall)
    current = enabled(current)  # from any state that is not DISABLED
    for _ in range(rise if ok else fall):
        current = step(current, ok, rise, fall)
    assert current.state is (S.UP if ok else S.DOWN)


@given(history=events, rise=thresholds, fall=thresholds)
def test_up_and_down_need_runs_of_rise_and_fall(
    history: list[bool | str], rise: int, fall: int
) -> None:
    current = INITIAL
    run_ok = run_fail = 0  # consecutive probe results since the last reset
    for event in history:
        previous = current
        current = apply(current, event, rise, fall)
        if isinstance(event, bool):
            run_ok, run_fail = (run_ok + 1, 0) if event else (0, run_fail + 1)
        if current.state is S.DISABLED or (event == "enable" and previous.state is S.DISABLED):
            run_ok = run_fail = 0
        if current.state is S.UP and previous.state is not S.UP:
            assert run_ok >= rise, f"{previous.state} -> UP after {run_ok} successes"
        if current.state is S.DOWN and previous.state is not S.DOWN:
            assert run_fail >= fall, f"{previous.state} -> DOWN after {run_fail} failures"
        if previous.state is S.DOWN and isinstance(event, bool) and rise > 1:
            assert current.state is not S.UP
        if current.state in (S.RISING, S.UP) and isinstance(event, bool):
            assert current.successes == run_ok
        if current.state in (S.FALLING, S.DOWN) and isinstance(event, bool):
            assert current.failures == run_fail


# --- real probes --------------------------------------------------------------------------


def command(target: str, timeout: float = 2.0) -> CheckConfig:
    return CheckConfig(kind="command", target=target, timeout=timeout)


def test_probe_none_is_ok() -> None:
    assert run_probe(CheckConfig(kind="none")).ok


@pytest.mark.parametrize(
    ("target", "ok", "detail"),
    [
        ("true", True, "exit 0"),
        ("false", False, "exit 1"),
        ("echo 'backend gone' >&2; echo second >&2; exit 3", False, "exit 3: backend gone"),
        (f"printf '%0{300}d' 0 >&2; exit 2", False, "exit 2: " + "0" * 200),
        ("kill -TERM $$", False, "signal 15"),
        ("   ", False, "empty command"),
    ],
)
def test_probe_command(target: str, ok: bool, detail: str) -> None:
    result = run_probe(command(target))
    assert (result.ok, result.detail) == (ok, detail)
    assert result.duration >= 0.0


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (an unreaped zombie no longer runs)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def _eventually(condition: Callable[[], bool], within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_probe_command_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pgid_file, pid_file = tmp_path / "pgid", tmp_path / "pid"
    # The shell forks `sleep` as a child, as a check script would fork curl.
    # Sleeps far longer than the deadlines below, so only a kill can make them pass.
    target = f"echo $$ > {pgid_file}; sleep 60 & echo $! > {pid_file}; wait"
    started = time.monotonic()
    result = run_probe(command(target, timeout=0.3))
    elapsed = time.monotonic() - started
    assert (result.ok, result.detail) == (False, "timeout after 0.3s")
    assert elapsed < 2.0
    sleep_pid, pgid = int(pid_file.read_text()), int(pgid_file.read_text())
    try:
        assert _eventually(lambda: not _alive(sleep_pid), 2.0), "sleep outlived its check"
        assert _eventually(lambda: not _group_alive(pgid), 2.0), "check group still running"
    finally:
        if _alive(sleep_pid):  # do not leak the child when the assertion fails
            os.kill(sleep_pid, signal.SIGKILL)


def test_probe_command_timeout_plain_sleep() -> None:
    started = time.monotonic()
    result = run_probe(command("sleep 60", timeout=0.3))
    assert not result.ok
    assert result.detail == "timeout after 0.3s"
    assert time.monotonic() - started < 2.0


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/ok":
            self._reply(200)
        elif self.path == "/empty":
            self._reply(204)
        elif self.path == "/fail":
            self._reply(503)
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/ok")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/slow":
            time.sleep(1.0)
            self._reply(200)
        else:
            self._reply(404)

    def _reply(self, code: int) -> None:
        body = b"" if code == 204 else b"body\n"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output quiet


@pytest.fixture
def http_base() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("path", "ok", "detail"),
    [
        ("/ok", True, "HTTP 200"),
        ("/empty", True, "HTTP 204"),
        ("/fail", False, "HTTP 503"),
        ("/redirect", False, "HTTP 302"),
        ("/missing", False, "HTTP 404"),
    ],
)
def test_probe_http(http_base: str, path: str, ok: bool, detail: str) -> None:
    result = run_probe(CheckConfig(kind="http", target=http_base + path, timeout=2.0))
    assert (result.ok, result.detail) == (ok, detail)


def test_probe_http_timeout(http_base: str) -> None:
    result = run_probe(CheckConfig(kind="http", target=http_base + "/slow", timeout=0.2))
    assert (result.ok, result.detail) == (False, "timeout after 0.2s")


def test_probe_http_connection_refused() -> None:
    target = f"http://127.0.0.1:{closed_port()}/"
    result = run_probe(CheckConfig(kind="http", target=target, timeout=1.0))
    assert (result.ok, result.detail) == (False, "connection refused")


def test_probe_tcp() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = run_probe(CheckConfig(kind="tcp", target=f"127.0.0.1:{port}", timeout=1.0))
    assert (result.ok, result.detail) == (True, "connected")
    result = run_probe(CheckConfig(kind="tcp", target=f"127.0.0.1:{closed_port()}", timeout=1.0))
    assert (result.ok, result.detail) == (False, "connection refused")


@pytest.mark.parametrize(
    "check",
    [
        CheckConfig(kind="tcp", target="no-port-here"),
        CheckConfig(kind="http", target="not a url"),
        CheckConfig(kind="http", target="ftp-ish://127.0.0.1/"),
    ],
)
def test_probe_never_raises(check: CheckConfig) -> None:
    result = run_probe(check)
    assert not result.ok
    assert result.detail


def test_probe_duration_uses_the_injected_clock() -> None:
    ticks = iter([10.0, 12.5])
    result = run_probe(CheckConfig(kind="none"), clock=lambda: next(ticks))
    assert result.duration == 2.5


# --- monitor ------------------------------------------------------------------------------


class Recorder:
    """Collects the monitor's callbacks, as the agent's queue would."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changes: list[tuple[str, HealthState]] = []
        self.results: list[tuple[str, ProbeResult]] = []

    def on_change(self, service: str, current: CheckStatus) -> None:
        with self.lock:
            self.changes.append((service, current.state))

    def on_result(self, service: str, result: ProbeResult) -> None:
        with self.lock:
            self.results.append((service, result))

    def states(self, service: str) -> list[HealthState]:
        with self.lock:
            return [state for name, state in self.changes if name == service]


def file_service(tmp_path: Path, name: str = "apex") -> tuple[ServiceConfig, Path, Path]:
    healthy, disable = tmp_path / f"{name}.ok", tmp_path / f"{name}.disabled"
    check = CheckConfig(
        kind="command",
        target=f"test -f {healthy}",
        interval=0.1,
        fast_interval=0.05,
        rise=2,
        fall=2,
        timeout=1.0,
        disable_file=str(disable),
    )
    return ServiceConfig(name=name, vips=("10.0.0.1",), check=check), healthy, disable


def wait_state(monitor: HealthMonitor, service: str, want: HealthState) -> None:
    assert _eventually(lambda: monitor.snapshot()[service].state is want), (
        f"{service} never reached {want}: {monitor.snapshot()[service]}"
    )


def test_monitor_follows_the_check(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="raftvip.health")
    service, healthy, disable = file_service(tmp_path)
    healthy.touch()
    seen = Recorder()
    monitor = HealthMonitor([service], seen.on_change, seen.on_result)
    assert monitor.snapshot() == {"apex": INITIAL}
    monitor.start()
    try:
        assert "health-apex" in {thread.name for thread in threading.enumerate()}
        wait_state(monitor, "apex", S.UP)

        healthy.unlink()
        wait_state(monitor, "apex", S.DOWN)
        assert monitor.snapshot()["apex"].last_detail == "exit 1"

        disable.touch()
        wait_state(monitor, "apex", S.DISABLED)
        probes = len(seen.results)
        time.sleep(0.3)  # several intervals: a disabled check runs no probe
        assert len(seen.results) == probes

        healthy.touch()
        disable.unlink()
        wait_state(monitor, "apex", S.UP)
    finally:
        assert monitor.stop(timeout=5.0)
    assert not any(thread.name == "health-apex" for thread in threading.enumerate())
    assert monitor.snapshot()["apex"].state is S.EXIT
    assert seen.states("apex") == [
        S.RISING,
        S.UP,
        S.FALLING,
        S.DOWN,
        S.DISABLED,
        S.INIT,
        S.RISING,
        S.UP,
        S.EXIT,
    ]
    assert seen.results and all(name == "apex" for name, _ in seen.results)
    assert "service=apex health=UP->FALLING detail='exit 1'" in caplog.messages


def test_monitor_starts_disabled_without_probing(tmp_path: Path) -> None:
    service, _, disable = file_service(tmp_path)
    disable.touch()
    seen = Recorder()
    monitor = HealthMonitor([service], seen.on_change, seen.on_result)
    monitor.start()
    try:
        wait_state(monitor, "apex", S.DISABLED)
    finally:
        assert monitor.stop()
    assert seen.results == []


def test_monitor_survives_failing_callbacks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service, healthy, _ = file_service(tmp_path)
    healthy.touch()

    def broken(service: str, value: object) -> None:
        raise RuntimeError("consumer bug")

    monitor = HealthMonitor([service], broken, broken)
    monitor.start()
    try:
        wait_state(monitor, "apex", S.UP)  # the thread kept going past the exceptions
    finally:
        assert monitor.stop()
    messages = [record.getMessage() for record in caplog.records]
    assert "service=apex callback=on_change failed" in messages
    assert "service=apex callback=on_result failed" in messages


def test_monitor_runs_services_independently_and_stops_promptly(tmp_path: Path) -> None:
    good, good_file, _ = file_service(tmp_path, "good")
    bad, _, _ = file_service(tmp_path, "bad")
    slow = CheckConfig(kind="none", interval=60.0, rise=1)
    idle = ServiceConfig(name="idle", vips=("10.0.0.9",), check=slow)
    good_file.touch()
    seen = Recorder()
    monitor = HealthMonitor([good, bad, idle], seen.on_change)
    monitor.start()
    try:
        wait_state(monitor, "good", S.UP)
        wait_state(monitor, "bad", S.DOWN)
        wait_state(monitor, "idle", S.UP)  # first probe runs at once, not after 60 s
    finally:
        assert monitor.stop(timeout=5.0)  # the idle thread is woken from its 60 s sleep
    assert {name: s.state for name, s in monitor.snapshot().items()} == dict.fromkeys(
        ["good", "bad", "idle"], S.EXIT
    )


def test_monitor_uses_the_injected_clock(tmp_path: Path) -> None:
    service = ServiceConfig(name="apex", vips=("10.0.0.1",), check=CheckConfig(kind="none"))
    seen = Recorder()
    counter = iter(range(1_000_000))
    monitor = HealthMonitor(
        [service], seen.on_change, seen.on_result, clock=lambda: 3.0 * next(counter)
    )
    monitor.start()
    try:
        assert _eventually(lambda: bool(seen.results))
    finally:
        assert monitor.stop()
    assert seen.results[0][1] == ProbeResult(True, "no check", 3.0)


def test_monitor_rejects_duplicate_services() -> None:
    service = ServiceConfig(name="apex", vips=("10.0.0.1",))
    with pytest.raises(ValueError, match="duplicate service names: apex"):
        HealthMonitor([service, service], lambda name, current: None)


@pytest.mark.parametrize(
    ("results", "announcing"),
    [
        ([True, True, True], True),  # rise reached
        ([True, True, True, False, True], True),  # one blip while UP never withdraws
        ([True, True, True, False, False, False], False),  # fall reached
        ([False, True], False),  # INIT -> FALLING -> RISING: never announced
        ([False, False, True, True], False),  # still rising
    ],
)
def test_announcing_is_latched_like_healthcheck_py(results: list[bool], announcing: bool) -> None:
    current = INITIAL
    for ok in results:
        current = step(current, ok, rise=3, fall=3)
    assert current.announcing is announcing
    assert not disabled(current).announcing
    assert not exited(current).announcing


# --- reload: replacing some checkers --------------------------------------------------------


@pytest.mark.parametrize(
    ("local", "results", "states", "announcing"),
    [
        ("up", [True], [S.UP], True),  # the new check agrees: nothing changes
        ("up", [False], [S.FALLING], True),  # one failure is not a verdict
        ("up", [False, False, False], [S.FALLING, S.FALLING, S.DOWN], False),
        ("down", [True, True], [S.RISING, S.RISING], False),
        ("down", [True, True, True], [S.RISING, S.RISING, S.UP], True),
        ("disabled", [True], [S.DISABLED], False),
    ],
)
def test_a_carried_over_status_goes_on_from_the_verdict_of_the_old_check(
    local: str, results: list[bool], states: list[HealthState], announcing: bool
) -> None:
    current = carried_over(local)
    assert current.announcing is (local == "up")
    seen = []
    for ok in results:
        current = step(current, ok, rise=3, fall=3)
        seen.append(current.state)
    assert seen == states
    assert current.announcing is announcing


def test_retire_and_add_replace_only_the_named_checkers(tmp_path: Path) -> None:
    changed, changed_ok, _ = file_service(tmp_path, "changed")
    kept, kept_ok, _ = file_service(tmp_path, "kept")
    gone, gone_ok, _ = file_service(tmp_path, "gone")
    for path in (changed_ok, kept_ok, gone_ok):
        path.touch()
    seen = Recorder()
    monitor = HealthMonitor([changed, kept, gone], seen.on_change, seen.on_result)
    monitor.start()
    try:
        for name in ("changed", "kept", "gone"):
            wait_state(monitor, name, S.UP)
        kept_thread = [t for t in threading.enumerate() if t.name == "health-kept"]
        before = {name: seen.states(name) for name in ("changed", "kept", "gone")}
        monitor.retire(["changed", "gone", "never-checked"])
        assert set(monitor.snapshot()) == {"kept"}
        # The new check of "changed" fails; it starts from the old verdict (up).
        failing = replace(changed, check=replace(changed.check, target="false"))
        monitor.add([failing], initial={"changed": carried_over("up")})
        assert monitor.snapshot()["changed"].state is S.UP
        wait_state(monitor, "changed", S.DOWN)
        with pytest.raises(ValueError, match="already checked: kept"):
            monitor.add([kept])
        assert [t for t in threading.enumerate() if t.name == "health-kept"] == kept_thread
        assert seen.states("kept") == before["kept"]  # untouched, still UP
        assert monitor.snapshot()["kept"].state is S.UP
        # The replacement went UP -> FALLING -> DOWN: never through INIT or RISING (which
        # the agent would have turned into a withdraw right after the reload).
        assert seen.states("changed")[len(before["changed"]) :] == [S.FALLING, S.DOWN]
        assert seen.states("gone") == before["gone"]  # no EXIT, nothing after the retire
    finally:
        assert monitor.stop(timeout=5.0)
    assert set(monitor.snapshot()) == {"kept", "changed"}
    assert not any(t.name.startswith("health-") for t in threading.enumerate())


def test_a_retired_checker_reports_nothing_even_from_a_probe_in_progress(tmp_path: Path) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    # The probe signals that it runs, then waits until the test lets it fail.
    target = f"touch {started}; while [ ! -f {release} ]; do sleep 0.01; done; exit 1"
    check = CheckConfig(kind="command", target=target, interval=0.1, rise=1, fall=1, timeout=5.0)
    service = ServiceConfig(name="apex", vips=("10.0.0.1",), check=check)
    seen = Recorder()
    monitor = HealthMonitor([service], seen.on_change, seen.on_result)
    monitor.start()
    try:
        assert _eventually(started.exists)
        monitor.retire(["apex"])
        release.touch()  # the probe in progress now fails: a DOWN nobody must hear of
        assert _eventually(lambda: not any(t.name == "health-apex" for t in threading.enumerate()))
    finally:
        assert monitor.stop()
    assert seen.changes == [] and seen.results == []
    assert monitor.snapshot() == {}
