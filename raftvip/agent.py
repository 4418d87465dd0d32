"""The member process: the one loop that owns stdout (ExaBGP's channel).

Threads hand the loop events through a queue: the Raft tick thread (state changed), the
health workers (local health changed), the stdin reader (acks, neighbor events, shutdown,
EOF). The loop reports to the group, decides (`reconcile.decide`) and prints the difference.
Signals only set a flag, which the loop reads at least every 100 ms.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import IO, Any, Protocol

from raftvip.cluster import RaftCluster, RaftInfo
from raftvip.config import Config, check_member
from raftvip.control import ControlServer, RequestError
from raftvip.exabgp import Route, parse_stdin_line
from raftvip.health import CheckStatus, HealthMonitor, HealthState, ProbeResult
from raftvip.reconcile import (
    Decision,
    GroupView,
    decide,
    desired_routes,
    fence_time,
    fenced,
    plan,
    resync_lines,
)
from raftvip.state import (
    AddMember,
    ClusterState,
    Command,
    Confirm,
    Expire,
    RemoveMember,
    Report,
    SetDrain,
    SetMaintenance,
    SetPin,
)
from raftvip.status import build_status

log = logging.getLogger(__name__)

MAX_STDIN_LINE = 64 * 1024
_TICK = 0.1


@dataclass(frozen=True)
class Snapshot:
    """What the loop decided in one iteration; immutable, safe to hand to other threads."""

    state: ClusterState
    info: RaftInfo
    decisions: Mapping[str, Decision]
    announced: frozenset[str]
    health: Mapping[str, str]  # service -> up | down | disabled (local)
    quorum_lost_for: float
    time: float  # wall clock


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


@dataclass(frozen=True)
class _Event:
    kind: str  # state | lease | health | stdin | eof
    payload: Any = None


class Agent:
    def __init__(
        self,
        cfg: Config,
        secret: str,
        out: IO[str],
        inp: IO[bytes],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self._out = out
        self._inp = inp
        self._clock = clock
        self._wall = wall
        self._events: queue.Queue[_Event] = queue.Queue()
        self.cluster = RaftCluster(cfg, secret)
        self.cluster.add_listener(lambda _state: self._events.put(_Event("state")))
        checked = [s for s in cfg.services if s.check.kind != "none"]
        self._health: dict[str, str] = {
            s.name: ("up" if s.check.kind == "none" else "down") for s in cfg.services
        }
        self._probe_listeners: list[Callable[[str, ProbeResult], None]] = []
        self._monitor = HealthMonitor(
            checked,
            on_change=lambda name, st: self._events.put(_Event("health", (name, st))),
            on_result=self._on_probe,
        )
        self._control = ControlServer(cfg.cluster.control_socket, self._handle_control)
        self._announced: dict[str, Route] = {}
        self._pending_acks: deque[str] = deque()
        self._decisions: dict[str, Decision] = {}
        self._incarnation = time.time_ns() // 1000
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._report_due = True
        self._next_report = 0.0
        self._last_report = 0.0
        self._report_failed = False
        self._lease_renewed_at = -float("inf")  # send time of our last committed report
        self._quorum_lost_at: float | None = None
        self._stop_reason: str | None = None
        self._exabgp_gone = False
        self._status_lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._extensions: list[Extension] = []
        # Make before break: VIPs whose current announce ExaBGP acked, confirmations sent,
        # and since when this member has been handing each VIP over.
        self._acked: set[str] = set()
        self._confirm_sent: dict[str, float] = {}
        self._handover_since: dict[str, float] = {}
        self._leave_deadline: float | None = None
        # (incarnation, seq) that our pending Expire("leaving") names; None: none pending.
        self._leave_key: tuple[int, int] | None = None
        self._decided_key: tuple[Any, ...] | None = None
        self._last_step = clock()
        self._fence_seq: int | None = None
        self._announced_set: frozenset[str] = frozenset()
        self._announced_version = 0

    # --- lifecycle ---

    def run(self) -> int:
        """Run until ExaBGP goes away or a signal arrives; return the exit code."""
        self._control.start()
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self._on_signal)
            for extension in self._extensions:
                extension.start(self)
            self._write(resync_lines(self.cfg))
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
            self._last_step = self._clock()  # start-up is not a pause
            while not self._done_leaving():
                self._step()
            return self._shutdown()
        finally:
            for extension in self._extensions:
                try:
                    extension.stop()
                except Exception:
                    log.exception("extension=%s stop failed", extension.name)
            self._monitor.stop(timeout=1.0)
            self._control.stop()
            self.cluster.stop()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._stop_reason is None:
            self._stop_reason = signal.Signals(signum).name

    def _done_leaving(self) -> bool:
        """False while running; on a stop request, hand over first (make before break).

        SIGTERM: ask the group to move this member's VIPs and keep announcing them until their
        new owners confirm, at most `shutdown_timeout`. When ExaBGP itself stops (EOF,
        `shutdown`) its sessions are going down anyway: ask once and leave.
        """
        if self._stop_reason is None:
            return False
        if self._exabgp_gone:
            return True
        now = self._clock()
        if self._leave_deadline is None:
            log.info("member=%s stopping (%s): handing over", self.cfg.me, self._stop_reason)
            self._leave_deadline = now + self.cfg.cluster.shutdown_timeout
            if not self._propose_leave():
                return True
        state = self.cluster.state
        me = state.members.get(self.cfg.me)
        # Our leave names an (incarnation, seq) that is no longer current: a report of ours was
        # still in flight when we proposed it and was committed first, so the group ignored the
        # leave as stale (or the proposal failed). Ask again: otherwise the leader expires us
        # for "lease" a lease later, without a handover, and our VIPs see a gap.
        if (
            me is not None
            and me.alive
            and (me.incarnation, me.seq) != self._leave_key
            and self._propose_leave()
        ):
            log.info("member=%s leave not applied: asking again", self.cfg.me)
        if me is not None and not me.alive:
            mine = [v for v, a in state.owners.items() if a.owner == self.cfg.me]
            handing = [v for v, m in state.handovers.items() if m == self.cfg.me]
            if not mine and not handing:
                return True
        if now >= self._leave_deadline:
            log.warning(
                "member=%s handover not confirmed within shutdown_timeout=%gs; withdrawing anyway",
                self.cfg.me,
                self.cfg.cluster.shutdown_timeout,
            )
            return True
        return False

    def _propose_leave(self) -> bool:
        me = self.cluster.state.members.get(self.cfg.me)
        if me is None or not me.alive or not self.cluster.info().has_quorum:
            return False
        key = (me.incarnation, me.seq)
        self._leave_key = key
        self.cluster.propose(
            Expire(self._wall(), self.cfg.me, me.incarnation, me.seq, "leaving"),
            callback=lambda _res, err: self._on_leave_result(key, err),
        )
        return True

    def _on_leave_result(self, key: tuple[int, int], err: int) -> None:
        """Raft tick thread: our leave failed to commit (leader change): ask again."""
        if err != 0 and self._leave_key == key:
            self._leave_key = None

    def _step(self) -> None:
        now = self._clock()
        if now - self._last_step > self.cfg.cluster.lease:
            # This process was frozen (SIGSTOP, VM pause) for longer than a lease: the group
            # has moved on without us. Withdraw until a fresh report of ours is committed, so
            # ExaBGP does not re-advertise stale routes when its sessions come back.
            self._fence_seq = self._seq + 1
            self._report_due = True
            log.warning(
                "member=%s was paused for %.1fs (longer than the lease): withdrawing until the "
                "group has heard from it again",
                self.cfg.me,
                now - self._last_step,
            )
        self._last_step = now
        timeout = min(_TICK, max(0.0, self._next_report - now))
        if self.cfg.cluster.on_quorum_loss == "withdraw":
            # Wake up when the lease fence falls, not up to a tick later.
            until_fence = self._lease_renewed_at + fence_time(self.cfg) - now
            if until_fence > 0:
                timeout = min(timeout, until_fence + 0.001)
        try:
            event: _Event | None = self._events.get(timeout=timeout)
        except queue.Empty:
            event = None
        try:
            while event is not None:
                self._handle_event(event)
                event = self._events.get_nowait()
        except queue.Empty:
            pass
        if self.cluster.fatal is not None and self._stop_reason is None:
            self._stop_reason = self.cluster.fatal  # hand over, withdraw, exit 1
        try:
            self._maybe_report()
            self._reconcile()
        except BrokenPipeError:
            self._exabgp_gone = True
            self._stop_reason = "stdout closed"
        except Exception:
            # Survive a failed iteration: ExaBGP stops respawning a helper that dies often.
            log.exception("agent iteration failed; continuing")

    def _handle_event(self, event: _Event) -> None:
        if event.kind == "health":
            name, status = event.payload
            self._on_health(name, status)
        elif event.kind == "stdin":
            self._on_stdin(event.payload)
        elif event.kind == "eof":
            self._exabgp_gone = True
            self._stop_reason = "EOF on stdin (ExaBGP stopped)"

    def _on_health(self, service: str, status: CheckStatus) -> None:
        if status.state is HealthState.DISABLED:
            local = "disabled"
        elif status.announcing:
            local = "up"
        else:
            local = "down"
        if self._health.get(service) != local:
            log.info("service=%s local_health=%s detail=%r", service, local, status.last_detail)
            self._health[service] = local
            self._report_due = True  # withdraw happens in this very iteration, then report

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
                self._events.put(_Event("stdin", parse_stdin_line(text)))
        except (OSError, ValueError) as exc:
            log.error("exabgp stdin read failed: %s", exc)
        self._events.put(_Event("eof"))

    def _on_stdin(self, event: Any) -> None:
        if event.kind == "ack_done":
            if self._pending_acks:
                line = self._pending_acks.popleft()
                if line.startswith("announce route "):
                    self._acked.add(line.split()[2].split("/")[0])
        elif event.kind == "ack_error":
            command = self._pending_acks.popleft() if self._pending_acks else "<unknown>"
            log.error("exabgp rejected command=%r", command)
        elif event.kind == "shutdown":
            self._exabgp_gone = True
            self._stop_reason = "ExaBGP shutdown"
        elif event.kind == "neighbor":
            log.info("exabgp neighbor=%s state=%s", event.neighbor, event.state)
        elif event.kind == "unknown":
            log.warning("exabgp unexpected stdin line=%r", event.text)

    def _write(self, lines: list[str]) -> None:
        if not lines:
            return
        for line in lines:
            self._out.write(line + "\n")
            self._pending_acks.append(line)
        self._out.flush()
        for line in lines:
            log.info("exabgp %s", line)

    # --- group side ---

    def _maybe_report(self) -> None:
        if self._leave_deadline is not None:
            return  # leaving: a report would make this member alive again
        if not self.cluster.info().ready:
            return  # not caught up with the group yet: claiming health would attract VIPs
        now = self._clock()
        me = self.cluster.state.members.get(self.cfg.me)
        if (
            self._report_failed or me is None or not me.alive or me.incarnation != self._incarnation
        ) and now - self._last_report >= _TICK:
            # Not (yet) known as alive, or the last report failed (leader change): retry at
            # once, not a report interval later.
            self._report_due = True
            self._report_failed = False
        if not self._report_due and now < self._next_report:
            return
        self._report_due = False
        self._last_report = now
        self._next_report = now + self.cfg.cluster.report_interval
        health = {name: value == "up" for name, value in self._health.items()}
        self.cluster.propose(
            Report(self._wall(), self.cfg.me, self._incarnation, self._next_seq(), health),
            callback=lambda _res, err: self._on_report_result(now, err),
        )

    def _on_report_result(self, sent: float, err: int) -> None:
        """Raft tick thread: a report of ours was committed (err 0) or failed."""
        if err == 0:
            self._lease_renewed_at = max(self._lease_renewed_at, sent)
            self._events.put(_Event("lease"))  # a fenced member announces again at once
        else:
            self._report_failed = True  # retry soon rather than a report interval later

    def _group_view(self, info: RaftInfo) -> GroupView:
        now = self._clock()
        if info.has_quorum:
            if self._quorum_lost_at is not None:
                log.info("quorum regained after %.2fs", now - self._quorum_lost_at)
            self._quorum_lost_at = None
        elif self._quorum_lost_at is None:
            self._quorum_lost_at = now
            if info.ready:
                log.warning("quorum lost: policy=%s", self.cfg.cluster.on_quorum_loss)
        lost_for = 0.0 if self._quorum_lost_at is None else now - self._quorum_lost_at
        return GroupView(
            ready=info.ready,
            has_quorum=info.has_quorum,
            quorum_lost_for=lost_for,
            lease_age=now - self._lease_renewed_at,
        )

    def _reconcile(self) -> None:
        state = self.cluster.state
        info = self.cluster.info()
        view = self._group_view(info)
        expired = self._handover_expired(state)
        strict_out = fenced(self.cfg, view)
        resuming = self._resuming(state)
        # Everything `decide` reads. Pure lease renewals replace the state object but keep
        # its version, so with thousands of VIPs the loop does no work while nothing changes.
        key = (
            state.version,
            id(state.owners),
            id(state.handovers),
            tuple(self._health.items()),
            view.ready,
            view.has_quorum,
            strict_out,
            expired,
            resuming,
            self._announced_version,
        )
        if key != self._decided_key:
            decisions = decide(self.cfg, state, self._health, view, self._announced.keys(), expired)
            desired = desired_routes(self.cfg, decisions)
            lines = plan(desired, self._announced)
            if lines:
                for vip, route in desired.items():
                    if self._announced.get(vip) != route:
                        self._acked.discard(vip)  # a new announce: wait for its ack
                self._acked &= desired.keys()
                self._write(lines)
                self._announced = desired
                self._announced_set = frozenset(desired)
                self._announced_version += 1
            self._decisions = decisions
            self._decided_key = (*key[:-1], self._announced_version)
        self._confirm(state)
        snapshot = Snapshot(
            state=state,
            info=info,
            decisions=self._decisions,
            announced=self._announced_set,
            health=dict(self._health),
            quorum_lost_for=view.quorum_lost_for,
            time=self._wall(),
        )
        with self._status_lock:
            self._snapshot = snapshot  # the status document is built on request
        for extension in self._extensions:
            try:
                extension.observe(snapshot)
            except Exception:
                log.exception("extension=%s observe failed", extension.name)

    def _resuming(self, state: ClusterState) -> bool:
        """True after a pause until the group has committed a report sent after it."""
        if self._fence_seq is None:
            return False
        me = state.members.get(self.cfg.me)
        if (
            me is not None
            and me.alive
            and me.incarnation == self._incarnation
            and me.seq >= self._fence_seq
        ):
            log.info("member=%s is back in the group after a pause", self.cfg.me)
            self._fence_seq = None
            return False
        return True

    def _handover_expired(self, state: ClusterState) -> frozenset[str]:
        now = self._clock()
        handing = {v for v, m in state.handovers.items() if m == self.cfg.me}
        self._handover_since = {v: self._handover_since.get(v, now) for v in handing}
        expired = frozenset(
            v
            for v, t in self._handover_since.items()
            if now - t > self.cfg.cluster.handover_timeout
        )
        for vip in expired:
            if self._decisions.get(vip, Decision(False, "")).reason == "handover":
                log.warning(
                    "vip=%s handover to %s not confirmed within handover_timeout=%gs; "
                    "withdrawing anyway",
                    vip,
                    state.owner_of(vip),
                    self.cfg.cluster.handover_timeout,
                )
        return expired

    def _confirm(self, state: ClusterState) -> None:
        """Tell the group which handed-over VIPs this member now announces (ExaBGP acked)."""
        if not state.handovers:
            return
        now = self._clock()
        due = sorted(
            vip
            for vip in self._acked
            if vip in state.handovers
            and state.owner_of(vip) == self.cfg.me
            and now - self._confirm_sent.get(vip, -1.0) > 0.5
        )
        if due:
            for vip in due:
                self._confirm_sent[vip] = now
            self.cluster.propose(Confirm(self._wall(), self.cfg.me, tuple(due)))
        self._confirm_sent = {v: t for v, t in self._confirm_sent.items() if now - t < 5.0}

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

    def commit(self, cmd: Command, timeout: float = 5.0) -> str | None:
        """Commit a command through the group (any thread); None, or why it failed."""
        if not self.cluster.info().has_quorum:
            return "no quorum: this member cannot reach a majority"
        return self.cluster.propose_and_wait(cmd, timeout=timeout)

    def _shutdown(self) -> int:
        """Withdraw everything (after the handover in `_done_leaving`) and report."""
        if self._exabgp_gone and self._leave_deadline is None and self._propose_leave():
            time.sleep(0.1)  # let the leave reach the leader before our links close
        if not self._exabgp_gone:
            with contextlib.suppress(OSError, ValueError):
                self._write(plan({}, self._announced))
        self._announced = {}
        log.info("member=%s stopped: %s", self.cfg.me, self._stop_reason)
        return 0 if self.cluster.fatal is None else 1

    # --- control socket (runs on control threads) ---

    def status(self) -> dict[str, Any]:
        snap = self.snapshot
        if snap is None:
            raise RequestError("starting: no status yet")
        doc = build_status(
            self.cfg, snap.state, snap.info, snap.decisions, snap.health, snap.quorum_lost_for
        )
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
        op = request["op"]
        if op == "status":
            return self.status()
        if op == "commit_latency":
            return self._commit_latency(request.get("samples"))
        if op == "maintenance":
            service = _arg(request, "service")
            if self.cluster.state.service(service) is None and all(
                s.name != service for s in self.cfg.services
            ):
                raise RequestError(f"unknown service {service!r}")
            on = _flag(request, "on")
            for extension in self._extensions:
                veto = extension.maintenance_veto(service, on)
                if veto is not None:
                    raise RequestError(veto)
            return self._commit(SetMaintenance(self._wall(), service, on))
        if op == "drain":
            member = str(request.get("member") or self.cfg.me)
            if member not in self._members():
                raise RequestError(
                    f"unknown member {member!r} (known: {', '.join(self._members())})"
                )
            on = _flag(request, "on")
            for extension in self._extensions:
                veto = extension.drain_veto(member, on)
                if veto is not None:
                    raise RequestError(veto)
            if on and not request.get("force"):
                self._refuse_last_eligible(member)
            return self._commit(SetDrain(self._wall(), member, on))
        if op == "pin":
            vip = _arg(request, "vip")
            pinned_service = self.cfg.service_of(vip)
            if pinned_service is None:
                raise RequestError(f"unknown VIP {vip!r}")
            target = request.get("member")
            if target is not None:
                if target not in self._members():
                    raise RequestError(
                        f"unknown member {target!r} (known: {', '.join(self._members())})"
                    )
                state = self.cluster.state
                name = pinned_service.name
                if not state.eligible(target, name):
                    raise RequestError(
                        f"{target} is not eligible for service {name!r} "
                        f"({_why_not_eligible(state, target, name)}); nothing changed"
                    )
            return self._commit(SetPin(self._wall(), vip, target))
        if op == "members_add":
            return self._members_add(_arg(request, "member"), _arg(request, "address"))
        if op == "members_remove":
            return self._members_remove(_arg(request, "member"), bool(request.get("force")))
        raise RequestError(f"unknown op {op!r}")

    def _members(self) -> dict[str, str]:
        """member -> address: the replicated list (it changes at run time), else the config's."""
        return dict(self.cluster.state.addresses) or dict(self.cfg.members)

    def _members_add(self, name: str, address: str) -> dict[str, Any]:
        problem = check_member(name, address)
        if problem:
            raise RequestError(problem)
        members = self._members()
        if name in members and members[name] != address:
            raise RequestError(f"member {name!r} already exists with address {members[name]}")
        if name not in members and address in members.values():
            raise RequestError(f"address {address} is already used by another member")
        if not self.cluster.info().has_quorum:
            raise RequestError("no quorum: this member cannot reach a majority; nothing changed")
        peers = {node.address for node in self.cluster.replica.otherNodes}
        if address not in peers and address != self.cfg.self_address:
            failure = self.cluster.change_membership(add=True, address=address, timeout=10.0)
            if failure is not None:
                raise RequestError(f"Raft peer {address} not added ({failure}); nothing changed")
        return self._commit(AddMember(self._wall(), name, address))

    def _members_remove(self, name: str, force: bool) -> dict[str, Any]:
        members = self._members()
        if name not in members:
            raise RequestError(f"unknown member {name!r} (known: {', '.join(members)})")
        if name == self.cfg.me:
            raise RequestError("a member cannot remove itself: run this on another member")
        deadline = time.monotonic() + 3.0  # a just-stopped leader is replaced in < 1 s
        while self.cluster.info().leader == name and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.cluster.info().leader == name:
            raise RequestError(
                f"{name} is the leader: stop raftvip on {name} first (a new leader is "
                "elected in under a second), then remove it"
            )
        state = self.cluster.state
        target = state.members.get(name)
        if target is not None and target.alive and not force:
            raise RequestError(
                f"{name} is still alive: drain and stop it first, or use --force "
                "(it would keep announcing what it holds until it notices)"
            )
        result = self._commit(RemoveMember(self._wall(), name))
        failure = self.cluster.change_membership(add=False, address=members[name], timeout=10.0)
        if failure is not None:
            raise RequestError(
                f"{name} removed from the VIP group but its Raft peer was not ({failure}); "
                "run the command again"
            )
        return result

    def _refuse_last_eligible(self, member: str) -> None:
        state = self.cluster.state
        for service in self.cfg.services:
            owns = any(state.owner_of(v) == member for v in service.vips)
            others = [m for m in self._members() if m != member and state.eligible(m, service.name)]
            if owns and not others:
                raise RequestError(
                    f"refusing to drain {member}: it is the last eligible member for service "
                    f"{service.name!r}, whose VIPs would be withdrawn; use --force to drain anyway"
                )

    def _next_seq(self) -> int:
        with self._seq_lock:
            self._seq += 1
            return self._seq

    def _commit_latency(self, samples: Any) -> list[float]:
        """Time to commit one lease-renewal report, as seen by this member (a benchmark)."""
        if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= 1000:
            raise RequestError("samples: expected an integer in 1..1000")
        latencies = []
        for _ in range(samples):
            health = {name: value == "up" for name, value in self._health.items()}
            cmd = Report(self._wall(), self.cfg.me, self._incarnation, self._next_seq(), health)
            start = time.perf_counter()
            failure = self.cluster.propose_and_wait(cmd, timeout=5.0)
            if failure is not None:
                raise RequestError(f"report not committed: {failure}")
            latencies.append(time.perf_counter() - start)
        return latencies

    def _commit(self, cmd: Command) -> dict[str, Any]:
        failure = self.commit(cmd)
        if failure is not None:
            raise RequestError(f"not committed ({failure}); nothing changed")
        return {"version": self.cluster.state.version}


def _why_not_eligible(state: ClusterState, member: str, service: str) -> str:
    m = state.members.get(member)
    if m is None or not m.alive:
        return "not alive"
    if m.drained:
        return "drained"
    return f"unhealthy for {service}"


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
