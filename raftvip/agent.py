"""The member process: the thin shell around the pure loop (`raftvip.core.loop`).

Threads only turn I/O into events on one queue: the Raft tick thread (state changed, a
proposal's outcome), the health workers (local health changed), the stdin reader (acks,
neighbor events, shutdown, EOF), signals (a flag read at every iteration). The loop thread
takes the events, steps the core with the clock's `now`, and carries out the effects: it
alone writes to stdout (ExaBGP's channel), proposes, and logs what the core decided.

A reload (`raftvip reload`, SIGHUP) is read, validated and diffed on the thread that asked
(`Agent.reload`); the loop thread applies it: the core's `Reloaded`, then the shell's parts
that follow the config (the leader's duties, extensions, the changed checkers).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, Any, Protocol, runtime_checkable

from raftvip.cluster import RaftCluster
from raftvip.config import Config, load_config, load_secret
from raftvip.control import ControlServer, RequestError
from raftvip.core import loop as core
from raftvip.core import operator
from raftvip.core.decide import Decision
from raftvip.core.exabgp import parse_stdin_line
from raftvip.core.group import GroupObservation, RaftInfo
from raftvip.core.reload import ConfigDiff, config_digest, diff_configs, with_restart_needed
from raftvip.core.state import (
    ClusterState,
    Command,
    Confirm,
)
from raftvip.core.status import build_status
from raftvip.errors import ConfigError, SecretError
from raftvip.health import CheckStatus, HealthMonitor, HealthState, ProbeResult, carried_over

log = logging.getLogger(__name__)

MAX_STDIN_LINE = 64 * 1024
RESOLVE_WAIT = 1.0  # an unknown outcome: how long the state may take to show the command
RELOAD_WAIT = 5.0  # how long a reload waits for the loop to apply it


@dataclass(frozen=True)
class Snapshot:
    """What the loop decided in one iteration; immutable, safe to hand to other threads."""

    state: ClusterState
    info: RaftInfo
    decisions: Mapping[str, Decision]
    announced: frozenset[str]
    health: Mapping[str, str]  # service -> up | down | disabled (local)
    quorum_lost_for: float
    reachable: bool  # the group hears this member (its reports commit)
    time: float  # wall clock
    left: bool = False  # `raftvip leave` is done
    leave_outcome: str | None = None
    restart_outcome: str | None = None  # `raftvip restart`: asked | exiting | refused: ...
    cfg: Config | None = None  # the config these decisions were made with (reloads swap it)


class Extension(Protocol):
    """An optional part (ZooKeeper mirror, metrics) plugged into the agent.

    `observe` runs on the agent loop after every iteration: it must not block (hand work to
    your own thread). `status` adds a section to `raftvip status --json` (None: nothing).
    `maintenance_veto(service, on)` / `drain_veto(member, on)` may refuse an operator's change
    with a reason (e.g. the ZooKeeper node that holds it).
    """

    name: str

    def start(self, agent: Agent) -> None: ...

    def observe(self, snapshot: Snapshot) -> None: ...

    def status(self) -> dict[str, Any] | None: ...

    def maintenance_veto(self, service: str, on: bool) -> str | None: ...

    def drain_veto(self, member: str, on: bool) -> str | None: ...

    def stop(self) -> None: ...


@runtime_checkable
class Reloadable(Protocol):
    """An extension that follows a reload: `reload(cfg)` runs on the agent loop, before the
    first `observe` of decisions made with `cfg` (it must not block)."""

    def reload(self, cfg: Config) -> None: ...


@dataclass(frozen=True)
class ReloadOutcome:
    """What `Agent.reload` did: `lines` are `ConfigDiff.lines()`, one per change."""

    applied: bool
    dry_run: bool
    lines: tuple[str, ...]
    summary: str
    digest: str  # `config_digest` of the file's layout
    path: str


class ReloadRefused(Exception):
    """A reload that changes nothing: `lines` say why (every problem, or every key that
    needs a restart), the first one a heading."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = list(lines)
        super().__init__("\n".join(self.lines))


@dataclass
class _ReloadJob:
    """A validated reload for the loop thread; the thread that asked waits on `done`."""

    cfg: Config
    diff: ConfigDiff
    origin: str
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


_WAKE = None  # a queue item that only wakes the loop (the replicated state changed)


def local_health(status: CheckStatus) -> str:
    """A check's status as the loop sees it: up | down | disabled."""
    if status.state is HealthState.DISABLED:
        return "disabled"
    return "up" if status.announcing else "down"


class Agent:
    def __init__(
        self,
        cfg: Config,
        secret: str,
        out: IO[str],
        inp: IO[bytes],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        member: str | None = None,
    ) -> None:
        """`member`: the `--member` the process was started with (a reload reads the file
        with it again)."""
        # The running config: read by any thread, replaced whole by a reload (`_reloaded`).
        self.cfg = cfg
        self._secret = secret
        self._member_override = member
        self._reload_lock = threading.Lock()  # one reload at a time, from start to applied
        self._sighup = False
        self._out = out
        self._inp = inp
        self._clock = clock
        self._wall = wall
        self._events: queue.Queue[core.Event | _ReloadJob | None] = queue.Queue()
        self.cluster = RaftCluster(cfg, secret)
        self._seen_state = self.cluster.state
        self.cluster.add_listener(self._on_state)
        checked = [s for s in cfg.services if s.check.kind != "none"]
        self._probe_listeners: list[Callable[[str, ProbeResult], None]] = []
        self._monitor = HealthMonitor(
            checked,
            on_change=lambda name, st: self._events.put(
                core.HealthChanged(name, local_health(st), st.last_detail)
            ),
            on_result=self._on_probe,
        )
        self._control = ControlServer(cfg.cluster.control_socket, self._handle_control)
        self._incarnation = time.time_ns() // 1000
        self._loop: core.LoopState | None = None  # the loop thread's alone
        self._wake_at = 0.0
        self._signal: str | None = None
        self._linger = 0.0
        self._status_lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._extensions: list[Extension] = []

    # --- lifecycle ---

    def run(self) -> int:
        """Run until ExaBGP goes away or a signal arrives; return the exit code."""
        self._control.start()
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self._on_signal)
            signal.signal(signal.SIGHUP, self._on_sighup)
            for extension in self._extensions:
                extension.start(self)
            until = self._take_restart_note()
            self._loop, effects = core.start(self.cfg, self._incarnation, restart_until=until)
            self._execute(effects)
            self.cluster.start()
            self._monitor.start()
            threading.Thread(target=self._read_stdin, name="stdin", daemon=True).start()
            log.info(
                "member=%s started: cluster=%s members=%d vips=%d",
                self.cfg.me,
                self.cfg.cluster.name,
                len(self.cfg.members),
                sum(len(s.vips) for s in self.cfg.services),
            )
            self._wake_at = self._clock()
            while self._loop.exit_code is None:
                self._iterate()
            if self._linger:
                time.sleep(self._linger)
            return self._loop.exit_code
        finally:
            for extension in self._extensions:
                try:
                    extension.stop()
                except Exception:
                    log.exception("extension=%s stop failed", extension.name)
            self._monitor.stop(timeout=1.0)
            self._control.stop()
            self.cluster.stop()

    def _on_state(self, state: ClusterState) -> None:
        """Raft tick thread: wake the loop for a change it cares about."""
        before, self._seen_state = self._seen_state, state
        if core.worth_a_step(self.cfg, before, state):
            self._events.put(_WAKE)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only a flag: a signal handler must not take the queue's lock (it may be held by
        # the very thread the handler interrupts). The loop reads it every iteration.
        if self._signal is None:
            self._signal = signal.Signals(signum).name

    def _on_sighup(self, _signum: int, _frame: FrameType | None) -> None:
        self._sighup = True  # a flag, as for the other signals; the loop starts the reload

    def _iterate(self) -> None:
        """Wait for an event or the core's timer, step through what arrived, then Tick."""
        timeout = max(0.0, self._wake_at - self._clock())
        events: list[core.Event | _ReloadJob | None] = []
        try:
            events.append(self._events.get(timeout=timeout))
            while True:
                events.append(self._events.get_nowait())
        except queue.Empty:
            pass
        for event in events:
            if isinstance(event, _ReloadJob):
                self._reloaded(event)
            elif event is not None:
                self._step(event)
        if self._sighup:
            self._sighup = False
            # On its own thread: a reload waits for this loop to apply it.
            threading.Thread(target=self._reload_on_sighup, name="reload", daemon=True).start()
        if self._signal is not None:
            self._step(core.StopRequested(self._signal))
        if self.cluster.fatal is not None:
            self._step(core.StopRequested(self.cluster.fatal, fatal=True))
        # The Raft view first: its lease stamp counts once the state shows what it was
        # computed with, and the state read after it shows at least that.
        info = self.cluster.info()
        group = GroupObservation(self.cluster.state, info)
        self._step(core.Tick(group, self._wall()))
        self.cluster.loop_stepped(self._clock())
        self._publish()

    def _step(self, event: core.Event) -> None:
        assert self._loop is not None
        try:
            self._loop, effects = core.step(self._loop, event, self._clock())
            self._execute(effects)
        except BrokenPipeError:
            self._loop, _ = core.step(self._loop, core.StdoutClosed(), self._clock())
        except Exception:
            # Survive a failed iteration: ExaBGP stops respawning a helper that dies often.
            log.exception("agent iteration failed; continuing")

    def _execute(self, effects: core.Effects) -> None:
        for record in effects.logs:
            log.log(record.level, "%s", record.message)
        if effects.lines:
            for line in effects.lines:
                self._out.write(line + "\n")
            self._out.flush()
            for line in effects.lines:
                log.info("exabgp %s", line)
        for proposal in effects.proposals:
            callback = None
            if proposal.tag is not None:
                tag = proposal.tag
                callback = self._proposal_callback(tag)
            self.cluster.propose(proposal.cmd, callback=callback)
        if effects.wake_at is not None:
            self._wake_at = effects.wake_at
        if effects.transfer_leadership:
            self.cluster.transfer_leadership()
        if effects.restart_until is not None:
            self._leave_restart_note(effects.restart_until)
        if effects.linger:
            # Slept once the loop has finished and its last snapshot is published: a
            # last-moment leave reaches the leader, `raftvip restart` gets its answer.
            self._linger = max(self._linger, effects.linger)

    # --- restarts in place ---

    @property
    def _restart_note(self) -> str:
        """A file in state_dir that a process restarting in place leaves to the next one."""
        name = f"{self.cfg.cluster.name}-{self.cfg.me}.restarting"
        return os.path.join(self.cfg.cluster.state_dir, name)

    def _leave_restart_note(self, until: float) -> None:
        try:
            os.makedirs(self.cfg.cluster.state_dir, mode=0o700, exist_ok=True)
            tmp = self._restart_note + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"incarnation": self._loop_incarnation(), "until": until}, f)
            os.replace(tmp, self._restart_note)
        except OSError as exc:
            log.error("cannot leave the restart note %s: %s", self._restart_note, exc.strerror)

    def _take_restart_note(self) -> float | None:
        """The wall time until which the note of a process that restarted in place holds
        (ExaBGP still carries its routes), or None. The note is used once."""
        try:
            with open(self._restart_note, encoding="utf-8") as f:
                note = json.load(f)
            os.unlink(self._restart_note)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("restart note %s unreadable (%s): a normal start", self._restart_note, exc)
            with contextlib.suppress(OSError):
                os.unlink(self._restart_note)
            return None
        until = note.get("until") if isinstance(note, dict) else None
        if not isinstance(until, int | float) or isinstance(until, bool):
            return None
        if until <= self._wall():
            log.warning("member=%s: restart note too old: a normal start", self.cfg.me)
            return None
        log.info("member=%s: restarting in place: ExaBGP keeps our routes", self.cfg.me)
        return float(until)

    def _loop_incarnation(self) -> int:
        return self._loop.incarnation if self._loop is not None else self._incarnation

    def _proposal_callback(self, tag: core.Tag) -> Callable[[Any, int], None]:
        """Raft tick thread: hand a tagged proposal's outcome back to the loop."""
        return lambda _result, err: self._events.put(core.ProposalDone(tag, err))

    # --- reloads ---

    def reload(self, dry_run: bool = False, origin: str = "raftvip reload") -> ReloadOutcome:
        """Re-read the file this process was started with and apply it in place (any thread
        but the loop's): validated as `check-config` does, refused whole if a key changed
        that needs a restart (`ReloadRefused`), else applied by the loop before this returns.
        `dry_run`: only say what would change."""
        with self._reload_lock:
            current = self.cfg
            try:
                new = load_config(current.path, member=self._member_override)
            except ConfigError as exc:
                raise self._refused(
                    [f"{current.path}: invalid configuration; nothing changed:", *exc.problems],
                    origin,
                ) from None
            diff = diff_configs(current, new, self.cluster.state.addresses)
            if self._secret_changed(new):
                diff = with_restart_needed(
                    diff,
                    "cluster.secret_file: the secret changed: needs a restart (the Raft "
                    "port's keys are derived from the secret when the process starts)",
                )
            if diff.restart_needed:
                raise self._refused(
                    [
                        f"{current.path}: refused, nothing changed: these keys cannot change"
                        " while the member runs (they need a restart):",
                        *diff.restart_needed,
                    ],
                    origin,
                )
            outcome = ReloadOutcome(
                applied=False,
                dry_run=dry_run,
                lines=tuple(diff.lines()),
                summary=diff.summary(),
                digest=config_digest(new),
                path=current.path,
            )
            if dry_run or diff.empty:
                return outcome
            # Stopped here, before the loop sees the new config: whatever they reported until
            # now reaches the loop first, and nothing of them after it.
            self._monitor.retire(diff.checks_replaced)
            job = _ReloadJob(new, diff, origin)
            self._events.put(job)
            if not job.done.wait(RELOAD_WAIT):
                raise self._refused(
                    [
                        f"the member's loop did not apply the reload within {RELOAD_WAIT:g}s "
                        "(is it stopping? see its log); it may still apply it: `raftvip reload "
                        "--dry-run` shows what is left to apply"
                    ],
                    origin,
                )
            if job.error is not None:
                raise self._refused([job.error], origin)
            return ReloadOutcome(
                True, False, outcome.lines, outcome.summary, outcome.digest, outcome.path
            )

    def _secret_changed(self, new: Config) -> bool:
        try:
            return load_secret(new.cluster) != self._secret
        except SecretError:
            # load_config could read it a moment ago: it is being changed right now. Refuse
            # rather than guess; the next reload reads it again.
            return True

    @staticmethod
    def _refused(lines: list[str], origin: str) -> ReloadRefused:
        for line in lines:
            log.warning("config reload (%s) refused: %s", origin, line)
        return ReloadRefused(lines)

    def _reloaded(self, job: _ReloadJob) -> None:
        """Loop thread: the loop takes the new config, then the shell follows it — the
        leader's duties, the extensions, the checkers of the services whose check changed."""
        old = self.cfg
        try:
            self._step(core.Reloaded(job.cfg))
            assert self._loop is not None
            if self._loop.cfg is not job.cfg:
                job.error = "the loop failed to take the new config (see the member's log)"
                self._start_checks(old, job.diff)  # back to the old checks
                return
            self.cfg = job.cfg
            self.cluster.reconfigure(job.cfg)
            for extension in self._extensions:
                if isinstance(extension, Reloadable):
                    try:
                        extension.reload(job.cfg)
                    except Exception:
                        log.exception("extension=%s reload failed", extension.name)
            self._start_checks(job.cfg, job.diff)
            for line in job.diff.lines():
                log.info("config reload (%s): %s", job.origin, line)
        except Exception:
            log.exception("config reload failed")
            job.error = "internal error while applying the reload (see the member's log)"
        finally:
            job.done.set()

    def _start_checks(self, cfg: Config, diff: ConfigDiff) -> None:
        """Start the checkers that `diff` retired, as `cfg` has them: a changed check goes
        on from the loop's current verdict (`carried_over`), an added one from INIT."""
        assert self._loop is not None
        services = {s.name: s for s in cfg.services}
        start = [
            services[name]
            for name in diff.checks_replaced
            if name in services and services[name].check.kind != "none"
        ]
        health = self._loop.health
        seeds = {
            s.name: carried_over(health[s.name])
            for s in start
            if s.name in health and s.name not in diff.added_services
        }
        self._monitor.add(start, initial=seeds)

    def _reload_on_sighup(self) -> None:
        try:
            outcome = self.reload(origin="SIGHUP")
        except ReloadRefused:
            return  # logged, line by line
        except Exception:
            log.exception("config reload (SIGHUP) failed")
            return
        if not outcome.applied:
            log.info("config reload (SIGHUP): no change in %s", outcome.path)

    def _publish(self) -> None:
        loop = self._loop
        assert loop is not None
        snapshot = Snapshot(
            state=loop.group.state,
            info=loop.group.info,
            decisions=loop.decisions,
            announced=frozenset(loop.announced),
            health=dict(loop.health),
            quorum_lost_for=loop.quorum_lost_for,
            reachable=core.reachable(loop, self._clock()),
            time=self._wall(),
            left=loop.left,
            leave_outcome=loop.leave_outcome,
            restart_outcome=loop.restart[0] if loop.restart is not None else None,
            cfg=loop.cfg,
        )
        with self._status_lock:
            self._snapshot = snapshot  # the status document is built on request
        for extension in self._extensions:
            try:
                extension.observe(snapshot)
            except Exception:
                log.exception("extension=%s observe failed", extension.name)

    # --- ExaBGP side ---

    def _read_stdin(self) -> None:
        """Drain ExaBGP's stdin for ever: an unread pipe blocks ExaBGP (FIELD-NOTES.md)."""
        try:
            while True:
                raw = self._inp.readline(MAX_STDIN_LINE)
                if not raw:
                    break
                if not raw.endswith(b"\n") and len(raw) >= MAX_STDIN_LINE:
                    log.error("exabgp stdin line longer than %d bytes; discarded", MAX_STDIN_LINE)
                    while raw and not raw.endswith(b"\n"):
                        raw = self._inp.readline(MAX_STDIN_LINE)
                    continue
                text = raw.decode("utf-8", errors="replace")
                self._events.put(core.StdinLine(parse_stdin_line(text)))
        except (OSError, ValueError) as exc:
            log.error("exabgp stdin read failed: %s", exc)
        self._events.put(core.StdinClosed())

    # --- for extensions and the control socket (any thread) ---

    @property
    def snapshot(self) -> Snapshot | None:
        with self._status_lock:
            return self._snapshot

    def add_extension(self, extension: Extension) -> None:
        """Plug in an optional part before `run()`."""
        self._extensions.append(extension)

    @property
    def extensions(self) -> tuple[Extension, ...]:
        return tuple(self._extensions)

    def add_probe_listener(self, listener: Callable[[str, ProbeResult], None]) -> None:
        """`listener(service, result)` after every probe, on the check's thread."""
        self._probe_listeners.append(listener)

    def _on_probe(self, service: str, result: ProbeResult) -> None:
        for listener in self._probe_listeners:
            listener(service, result)

    def reachable(self) -> bool:
        """Whether the group hears this member, as of the loop's last iteration."""
        snap = self.snapshot
        return snap is not None and snap.reachable

    def commit(self, cmd: Command, timeout: float = 5.0) -> str | None:
        """Commit an operator command through the group (any thread): None once it is known
        to be committed, else a message that says why not, and whether anything changed.

        An answer that does not say (LEADER_CHANGED, no answer in time) is resolved by
        reading the replicated state, and the command proposed again while it is not
        visible (operator commands set a value: twice is harmless).
        """
        if not self.reachable():
            return "no quorum: this member cannot reach a majority; nothing changed"
        deadline = time.monotonic() + timeout
        unknown = ""  # why an earlier attempt's outcome is unknown: it may still commit
        while True:
            remaining = deadline - time.monotonic()
            err = self.cluster.propose_and_wait(cmd, timeout=max(0.1, remaining))
            outcome, why = operator.outcome_of(err)
            if outcome == "committed":
                return None
            if outcome == "not committed" and not unknown:
                return f"not committed ({why}); nothing changed"
            unknown = unknown or why
            log.info("command=%s outcome unknown (%s): reading the state", type(cmd).__name__, why)
            settle = time.monotonic() + min(RESOLVE_WAIT, max(0.0, deadline - time.monotonic()))
            while True:
                if operator.effect_visible(cmd, self.cluster.state):
                    return None
                if time.monotonic() >= settle:
                    break
                time.sleep(0.02)
            if time.monotonic() >= deadline:
                return (
                    f"outcome unknown ({unknown}) after {timeout:g}s: it may still be "
                    "committed; check `raftvip status`, then run the command again if needed"
                )

    # --- control socket (runs on control threads) ---

    def status(self) -> dict[str, Any]:
        snap = self.snapshot
        if snap is None:
            raise RequestError("starting: no status yet")
        doc = build_status(
            snap.cfg or self.cfg,
            snap.state,
            snap.info,
            snap.decisions,
            snap.health,
            snap.quorum_lost_for,
            snap.reachable,
            now=snap.time,
        )
        doc["left"] = snap.left
        doc["leave_outcome"] = snap.leave_outcome
        doc["pid"] = os.getpid()
        for extension in self._extensions:
            try:
                section = extension.status()
            except Exception:
                log.exception("extension=%s status failed", extension.name)
                section = {"error": "status unavailable (see the member's log)"}
            if section is not None:
                doc[extension.name] = section
        return doc

    def _handle_control(self, request: dict[str, Any]) -> Any:
        try:
            return self._control_op(request)
        except operator.Refused as exc:
            raise RequestError(str(exc)) from None

    def _control_op(self, request: dict[str, Any]) -> Any:
        op = request["op"]
        state = self.cluster.state
        if op == "status":
            return self.status()
        if op == "restart":
            return self._restart()
        if op == "reload":
            return self._reload_op(request)
        if op == "leave":
            self._events.put(core.LeaveRequested())
            return {"leaving": True}
        if op == "commit_latency":
            return self._commit_latency(request.get("samples"))
        if op == "maintenance":
            service, on = _arg(request, "service"), _flag(request, "on")
            vetoes = [e.maintenance_veto(service, on) for e in self._extensions]
            return self._commit(
                operator.maintenance(self.cfg, state, service, on, vetoes, self._wall())
            )
        if op == "drain":
            member = str(request.get("member") or self.cfg.me)
            on = _flag(request, "on")
            vetoes = [e.drain_veto(member, on) for e in self._extensions]
            force = bool(request.get("force"))
            return self._commit(
                operator.drain(self.cfg, state, member, on, force, vetoes, self._wall())
            )
        if op == "pin":
            target = request.get("member")
            if target is not None and not isinstance(target, str):
                raise RequestError("invalid 'member' (expected a member name or nil)")
            vip = _arg(request, "vip")
            return self._commit(operator.pin(self.cfg, state, vip, target, self._wall()))
        if op == "members_add":
            return self._members_add(_arg(request, "member"), _arg(request, "address"))
        if op == "members_remove":
            return self._members_remove(_arg(request, "member"), bool(request.get("force")))
        raise RequestError(f"unknown op {op!r}")

    def _reload_op(self, request: dict[str, Any]) -> dict[str, Any]:
        """`{"op": "reload", "path": FILE, "dry_run": bool}` -> what changed (see `reload`)."""
        dry_run = request.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise RequestError("invalid 'dry_run' (expected true/false)")
        path = _arg(request, "path")
        if not _same_file(path, self.cfg.path):
            raise RequestError(
                f"this member runs with {os.path.abspath(self.cfg.path)}, not {path}: a reload "
                "re-reads the file the member was started with (ExaBGP starts it with that file "
                f"again); edit it and run `raftvip reload -c {os.path.abspath(self.cfg.path)}`"
            )
        try:
            outcome = self.reload(dry_run=dry_run)
        except ReloadRefused as exc:
            raise RequestError(str(exc)) from None
        return {
            "applied": outcome.applied,
            "dry_run": outcome.dry_run,
            "changes": list(outcome.lines),
            "summary": outcome.summary,
            "digest": outcome.digest,
            "path": os.path.abspath(outcome.path),
        }

    def _restart(self) -> dict[str, Any]:
        """Ask the loop to restart in place; answer once the group has the flag (the process
        then exits, ExaBGP starts the next one) or the loop refused."""
        self._events.put(core.RestartRequested())
        deadline = time.monotonic() + core.RESTART_WAIT + 2.0
        while time.monotonic() < deadline:
            snap = self.snapshot
            outcome = snap.restart_outcome if snap is not None else None
            if outcome is not None and outcome.startswith("refused"):
                raise RequestError(outcome)
            if outcome == "exiting":
                return {"restarting": True, "pid": os.getpid()}
            time.sleep(0.01)
        raise RequestError("the loop did not answer the restart request in time; nothing changed")

    def _members_add(self, name: str, address: str) -> dict[str, Any]:
        cmd = operator.members_add(
            self.cfg,
            self.cluster.state,
            name,
            address,
            self.reachable(),
            self._wall(),
        )
        peers = {node.address for node in self.cluster.replica.otherNodes}
        if address not in peers and address != self.cfg.self_address:
            failure = self.cluster.change_membership(add=True, address=address, timeout=10.0)
            if failure is not None:
                raise RequestError(f"Raft peer {address} not added ({failure}); nothing changed")
        return self._commit(cmd)

    def _members_remove(self, name: str, force: bool) -> dict[str, Any]:
        state = self.cluster.state
        address = self.cfg.members.get(name)
        peers = {node.address for node in self.cluster.replica.otherNodes}
        if (
            address is not None
            and state.addresses
            and name not in state.addresses
            and address in peers
        ):
            # An earlier `members remove` committed but its answer was lost (or it failed
            # between its two steps): finish it by removing the Raft peer.
            failure = self.cluster.change_membership(add=False, address=address, timeout=10.0)
            if failure is not None:
                raise RequestError(f"Raft peer {address} of {name} not removed ({failure})")
            return {"version": state.version}
        members = operator.known_members(self.cfg, state)
        deadline = time.monotonic() + 3.0  # a just-stopped leader is replaced in < 1 s
        while self.cluster.info().leader == name and time.monotonic() < deadline:
            time.sleep(0.05)
        cmd = operator.members_remove(
            self.cfg, self.cluster.state, name, force, self.cluster.info().leader, self._wall()
        )
        result = self._commit(cmd)
        failure = self.cluster.change_membership(add=False, address=members[name], timeout=10.0)
        if failure is not None:
            raise RequestError(
                f"{name} removed from the VIP group but its Raft peer was not ({failure}); "
                "run the command again"
            )
        return result

    def _commit_latency(self, samples: Any) -> list[float]:
        """Time to commit one no-op command through the log, as seen by this member (a
        benchmark: an empty Confirm changes nothing when applied)."""
        if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= 1000:
            raise RequestError("samples: expected an integer in 1..1000")
        latencies = []
        for _ in range(samples):
            start = time.perf_counter()
            err = self.cluster.propose_and_wait(Confirm(self._wall(), self.cfg.me, ()), 5.0)
            outcome, why = operator.outcome_of(err)
            if outcome != "committed":
                raise RequestError(f"command {outcome}: {why}")
            latencies.append(time.perf_counter() - start)
        return latencies

    def _commit(self, cmd: Command) -> dict[str, Any]:
        failure = self.commit(cmd)
        if failure is not None:
            raise RequestError(failure)
        return {"version": self.cluster.state.version}


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _arg(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise RequestError(f"missing or invalid {key!r}")
    return value


def _flag(request: dict[str, Any], key: str) -> bool:
    value = request.get(key)
    if not isinstance(value, bool):
        raise RequestError(f"missing or invalid {key!r} (expected true/false)")
    return value
