"""The pure member loop run in-process: a fake clock, a scripted group, a fake ExaBGP pipe.

    driver = LoopDriver(make_config(), state)   # `state`: the replicated state the test sets
    driver.run(1.0)                             # Tick every 0.1 s for a second
    driver.reason("10.0.0.1")                   # -> "owner"

The driver carries out the loop's effects as the shell would: lines go to a `FakeExabgp`
(acked at once unless `auto_ack` is off), proposals are recorded and, with `auto_commit`,
applied to `state` with `core.state.apply` and answered with `ProposalDone` (the member's
own view of a healthy group). Switch `auto_commit` off to cut the member from the group.
"""

from __future__ import annotations

from dataclasses import replace

from raftvip.config import Config
from raftvip.core import loop as core
from raftvip.core.group import GroupObservation, RaftInfo
from raftvip.core.records import LogRecord
from raftvip.core.state import ClusterState, apply
from raftvip.testing.clock import FakeClock
from raftvip.testing.exabgp import FakeExabgp

READY = RaftInfo(
    leader="lb2",
    is_leader=False,
    term=1,
    commit_index=1,
    last_applied=1,
    has_quorum=True,
    ready=True,
    connected=frozenset(),
)


class LoopDriver:
    def __init__(
        self,
        cfg: Config,
        state: ClusterState,
        info: RaftInfo = READY,
        clock: FakeClock | None = None,
        incarnation: int = 1,
        restart_until: float | None = None,
        exabgp: FakeExabgp | None = None,
    ) -> None:
        """`exabgp`: the fake ExaBGP to start against (e.g. one with `reject` set, so that
        even the start-up withdraws are answered `error`)."""
        self.cfg = cfg
        self.state = state
        self.info = info
        self.clock = clock or FakeClock()
        self.exabgp = exabgp or FakeExabgp()
        self.auto_ack = True
        self.auto_commit = True
        self.proposals: list[core.Proposal] = []
        self.pending: list[core.Proposal] = []  # proposed, not yet committed or failed
        self.logs: list[LogRecord] = []
        self.wake_at: float | None = None
        self.linger = 0.0
        self.loop, effects = core.start(cfg, incarnation, restart_until=restart_until)
        self.restart_until: float | None = None  # the note the loop asked to leave, if any
        self._carry_out(effects)

    # --- driving ---

    def send(self, event: core.Event) -> core.Effects:
        """Step the loop with `event` at the clock's time and carry out the effects."""
        self.loop, effects = core.step(self.loop, event, self.clock.now)
        self._carry_out(effects)
        return effects

    def tick(self) -> core.Effects:
        """One iteration: the loop sees `state` and `info` as they are now."""
        group = GroupObservation(self.state, self.info)
        effects = self.send(core.Tick(group, self.clock.wall()))
        if self.auto_commit:
            self.commit()
        return effects

    def run(self, seconds: float, step: float = core.TICK) -> None:
        """Tick every `step` (the shell's cadence) for `seconds` of fake time."""
        end = self.clock.now + seconds
        while self.clock.now + step <= end + 1e-9 and self.loop.exit_code is None:
            self.clock.advance(step)
            self.tick()

    def pause(self, seconds: float) -> None:
        """The process is frozen (SIGSTOP, VM pause): time passes, the loop does not run."""
        self.clock.advance(seconds)

    def commit(self) -> None:
        """Commit every pending proposal in order (a healthy group) and tell the loop."""
        while self.pending:
            proposal = self.pending.pop(0)
            self.state = apply(self.state, proposal.cmd)
            self._applied()
            if proposal.tag is not None:
                self.send(core.ProposalDone(proposal.tag, 0))

    def fail_pending(self, err: int = 4) -> None:
        """Every pending proposal fails (default: pysyncobj's LEADER_CHANGED)."""
        pending, self.pending = self.pending, []
        for proposal in pending:
            if proposal.tag is not None:
                self.send(core.ProposalDone(proposal.tag, err))

    def set_health(self, service: str, local: str) -> None:
        self.send(core.HealthChanged(service, local, "test"))

    def update(self, heard: bool = True, **changes: object) -> None:
        """Change the replicated state as another member's command would (`heard`: this
        member applied it, so its applied index advances: it hears the leader)."""
        self.state = replace(self.state, **changes)  # type: ignore[arg-type]
        if heard:
            self._applied()

    def _applied(self) -> None:
        self.info = replace(self.info, last_applied=self.info.last_applied + 1)

    # --- reading ---

    def reason(self, vip: str) -> str:
        decision = self.loop.decisions.get(vip)
        return decision.reason if decision is not None else "starting"

    def reasons(self) -> dict[str, str]:
        return {vip: d.reason for vip, d in self.loop.decisions.items()}

    def announced(self) -> set[str]:
        """What ExaBGP carries for this member."""
        return self.exabgp.announced()

    def messages(self) -> list[str]:
        return [record.message for record in self.logs]

    # --- effects ---

    def _carry_out(self, effects: core.Effects) -> None:
        self.logs.extend(effects.logs)
        if effects.lines:
            self.exabgp.receive(effects.lines)
        self.proposals.extend(effects.proposals)
        self.pending.extend(effects.proposals)
        if effects.wake_at is not None:
            self.wake_at = effects.wake_at
        if effects.linger:
            self.linger = effects.linger
        if effects.restart_until is not None:
            self.restart_until = effects.restart_until
        if self.auto_ack and self.exabgp.unacked:
            for ack in self.exabgp.acks():
                self.loop, more = core.step(self.loop, core.StdinLine(ack), self.clock.now)
                self.logs.extend(more.logs)
