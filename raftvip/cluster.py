"""The Raft group: a pysyncobj `SyncObj` that replicates `ClusterState`.

- One replicated method, `submit(payload)`, carries msgpack commands (`state.encode_command`);
  it is total: a malformed or inapplicable command is logged and ignored, never raised.
- Snapshots are msgpack too (custom serializer), so raftvip never stores a pickle.
- The transport (raftvip/pysyncobj_patches.py, with every other patch of pysyncobj's
  internals) adds what FIELD-NOTES.md measured as necessary: pings on idle peer links, a
  connect timeout, binding to the member's own address, and one log line per rejected
  (unauthenticated) peer — pysyncobj itself logs nothing — and PreVote, so that a member
  that was cut off rejoins as a follower instead of forcing an election.
- Leader duties (raftvip/core/leader.py, pure) run on the tick thread: grant every member a
  fresh lease when leadership is won, expire members whose lease lapsed or whose TCP link
  dropped (after a short grace), raise the group's command format once every member speaks
  it, and, in a group still on format 1, propose this member's service layout when the
  replicated one differs (the running config's: a reload swaps it, `reconfigure`; from
  format 2 on every member's loop proposes its own, `SetLayout`).

All pysyncobj callbacks run on its single tick thread; readers on other threads only ever see
an immutable `ClusterState` reference.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgpack
from pysyncobj import SyncObjConf, replicated
from pysyncobj.node import TCPNode

from raftvip import diskguard, pysyncobj_patches
from raftvip.config import Config
from raftvip.core.group import RaftInfo
from raftvip.core.leader import LeaderBook, leader_tick, service_specs, snapshot_loaded
from raftvip.core.operator import outcome_of
from raftvip.core.replica import apply_entry
from raftvip.core.state import (
    ClusterState,
    Command,
    encode_command,
    state_from_wire,
    state_to_wire,
)
from raftvip.core.values import evolve
from raftvip.errors import RaftvipError

log = logging.getLogger(__name__)


class _Replica(pysyncobj_patches.PreVoteSyncObj):
    def __init__(
        self,
        cfg: Config,
        conf: Any,
        on_state: Callable[[ClusterState], None],
        prevote: bool = True,
    ) -> None:
        self.raftvip_tuning = cfg.raft
        self._cfg = cfg
        self._me = cfg.me
        self._state = ClusterState()
        self._on_state = on_state
        # The running config and its service layout, for the leader's duties: one value,
        # swapped whole by a reload (`reconfigure`), read once per tick.
        self._running = (cfg, service_specs(cfg))
        # Leader bookkeeping (tick thread only; every member tracks its links).
        self._book = LeaderBook(started_at=time.monotonic())
        self.transfer_requested = False  # set by any thread, acted on by the tick thread
        self._confirmed = -float("inf")  # `lease_confirmed()` as of the last tick
        self._links_seen: dict[str, bool] | None = None  # as the last leader tick saw them
        self._names: tuple[Mapping[str, str], dict[str, str]] | None = None  # name_of cache
        conf.serializer = self._dump
        conf.deserializer = self._load
        others = [addr for name, addr in cfg.members.items() if name != cfg.me]
        super().__init__(
            cfg.self_address,
            others,
            conf,
            transportClass=pysyncobj_patches.Transport,
            prevote=prevote,
        )
        self.loop_fresh_for = cfg.cluster.report_interval
        self._journal_marked = False
        self.addOnTickCallback(self._leader_tick)

    def name_of(self, address: str) -> str | None:
        addresses = self._state.addresses
        cached = self._names
        if cached is None or cached[0] is not addresses:
            # address -> name, rebuilt when the replicated list changes (every tick asks)
            names = {addr: name for name, addr in self._cfg.members.items()}
            names.update({addr: name for name, addr in (addresses or self._cfg.members).items()})
            cached = self._names = (addresses, names)
        return cached[1].get(address)

    @property
    def _nodes(self) -> dict[str, Any]:
        """Peer name -> pysyncobj node, for the peers pysyncobj currently has."""
        nodes = {}
        for node in self.otherNodes:
            name = self.name_of(node.address)
            nodes[name if name is not None else node.address] = node
        return nodes

    @property
    def state(self) -> ClusterState:
        return self._state

    def reconfigure(self, cfg: Config) -> None:
        """A reload: the leader's next tick uses `cfg` and its service layout (any thread)."""
        self._running = (cfg, service_specs(cfg))

    @replicated  # type: ignore[untyped-decorator]
    def submit(self, payload: bytes) -> None:
        """The one replicated method. Total: never raises (that would halt the group)."""
        # During an apply pysyncobj has not yet counted this entry as applied.
        index = int(self.raftLastApplied) + 1
        new, self._book, records = apply_entry(
            self._state, self._book, payload, index, time.monotonic()
        )
        for record in records:
            log.log(record.level, "%s", record.message)
        if new is not self._state:
            self._state = new
            self._notify()

    def _notify(self) -> None:
        try:
            self._on_state(self._state)
        except Exception:
            log.exception("state listener failed")

    # --- snapshots (msgpack, never pickle) ---

    def _dump(self, filename: str, data: Any) -> None:
        last, prev, cluster = data
        body = {
            "raft": [list(last), list(prev)],
            "cluster": sorted(n.address for n in cluster),
            "state": state_to_wire(self._state),
        }
        with open(filename, "wb") as f:
            f.write(msgpack.packb(body, use_bin_type=True))
            f.flush()
            os.fsync(f.fileno())

    def _load(self, filename: str) -> tuple[Any, Any, Any]:
        with open(filename, "rb") as f:
            body = msgpack.unpackb(f.read(), raw=False)
        self._state = state_from_wire(body["state"])
        self._book = snapshot_loaded(self._book, self._state, time.monotonic())
        self._notify()
        last, prev = (tuple(e) for e in body["raft"])
        return last, prev, [TCPNode(a) for a in body["cluster"]]

    # --- leader duties (tick thread) ---

    def _leader_tick(self) -> None:
        if not self._journal_marked:
            # The first callback comes before the first poll: the log is what the journal
            # held (LeaderBook.journal_end).
            self._journal_marked = True
            end = int(self._SyncObj__getCurrentLogIndex())
            self._book = evolve(self._book, journal_end=end)
        try:
            # On the tick thread, which alone touches the lease bookkeeping; `info()` reads
            # the value, computed with the state applied so far.
            self._confirmed = self.lease_confirmed()
        except Exception:
            log.exception("raft lease check failed; retrying next tick")
        if self.transfer_requested:
            self.transfer_requested = False
            self.transferLeadership(callback=self._on_transfer)
        try:
            links = {name: bool(self.isNodeConnected(node)) for name, node in self._nodes.items()}
            is_leader = bool(self._isLeader())
            if not is_leader and not self._book.was_leader and links == self._links_seen:
                return  # a follower's duties only track links: nothing changed
            self._links_seen = links
            cfg, specs = self._running
            alive: dict[str, float] = {}
            if is_leader:
                for peer, until in self.lease_counted().items():
                    name = self.name_of(peer)
                    if name is not None:
                        alive[name] = until
                if self.loop_alive is not None:
                    alive[self._me] = self.loop_alive
            self._book, effects = leader_tick(
                self._book,
                cfg,
                specs,
                self._state,
                is_leader=is_leader,
                term=int(self._getTerm()),
                links=links,
                now=time.monotonic(),
                wall=time.time(),
                alive=alive,
                prior_contact=self.prior_contact,
            )
            for record in effects.logs:
                log.log(record.level, "%s", record.message)
            for cmd in effects.proposals:
                self.propose(cmd)
        except Exception:
            log.exception("leader duties failed; retrying next tick")

    @staticmethod
    def _on_transfer(_result: Any, err: int) -> None:
        if err != 0:
            log.info("raft leadership not handed over (%s)", outcome_of(err)[1])

    def propose(self, cmd: Command, callback: Callable[[Any, int], None] | None = None) -> None:
        self.submit(encode_command(cmd), callback=callback)

    def info(self) -> RaftInfo:
        leader = self._getLeader()
        connected = frozenset(n for n, node in self._nodes.items() if self.isNodeConnected(node))
        return RaftInfo(
            leader=self.name_of(leader.address) if leader is not None else None,
            is_leader=bool(self._isLeader()),
            term=int(self.raftCurrentTerm),
            commit_index=int(self.raftCommitIndex),
            last_applied=int(self.raftLastApplied),
            has_quorum=bool(self.hasQuorum),
            ready=bool(self.isReady()),
            connected=connected,
            confirmed=self._confirmed,
            leader_echoes=bool(self._isLeader()) or self.leader_echoes,
        )


class RaftCluster:
    """This member's handle on the group (thread-safe for readers and proposers)."""

    def __init__(self, cfg: Config, secret: str) -> None:
        self._cfg = cfg
        self._secret = secret
        self._listeners: list[Callable[[ClusterState], None]] = []
        self._replica: _Replica | None = None
        self.last_change = time.monotonic()  # when the replicated state last changed here
        self._syncer: diskguard.JournalSyncer | None = None
        # Set (tick thread) when state_dir is full: the agent hands over and exits.
        self.fatal: str | None = None

    def reconfigure(self, cfg: Config) -> None:
        """A reload changed the config in place (only keys that may change live differ)."""
        self._cfg = cfg
        if self._replica is not None:
            self._replica.reconfigure(cfg)

    def add_listener(self, listener: Callable[[ClusterState], None]) -> None:
        """`listener(state)` runs on the Raft tick thread after each change: keep it cheap."""
        self._listeners.append(listener)

    def start(self) -> None:
        pysyncobj_patches.check_version()
        state_dir = self._cfg.cluster.state_dir
        try:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
            probe = os.path.join(state_dir, ".write-test")
            with open(probe, "wb") as f:
                f.write(b"ok")
            os.unlink(probe)
        except OSError as exc:
            raise RaftvipError(
                f"cluster.state_dir: cannot write to {state_dir!r}: {exc.strerror}"
            ) from None
        pysyncobj_patches.install_journal_guards(self._on_disk_full)
        base = os.path.join(state_dir, f"{self._cfg.cluster.name}-{self._cfg.me}")
        tuning = self._cfg.raft
        conf = SyncObjConf(
            password=self._secret,
            bindAddress=self._cfg.self_address,
            journalFile=base + ".journal",
            fullDumpFile=base + ".snapshot",
            raftMinTimeout=tuning.min_timeout,
            raftMaxTimeout=tuning.max_timeout,
            appendEntriesPeriod=tuning.heartbeat,
            connectionTimeout=tuning.connection_timeout,
            connectionRetryTime=tuning.connection_retry,
            leaderFallbackTimeout=tuning.leader_fallback,
            appendEntriesUseBatch=False,
            commandsWaitLeader=False,
            dynamicMembershipChange=True,
            tcp_keepalive=(1, 1, 3),
            maxBindRetries=0,
            bindRetryTime=0.5,
        )
        self._replica = _Replica(
            self._cfg, conf, self._dispatch, prevote=pysyncobj_patches.prevote_wanted(os.environ)
        )
        self._syncer = diskguard.JournalSyncer(
            # pysyncobj keeps term and vote in "<journalFile>.meta" (journal.MetaStorer).
            [conf.journalFile, f"{conf.journalFile}.meta", conf.fullDumpFile, state_dir],
            on_full=self._on_disk_full,
        )
        self._syncer.start()

    def _on_disk_full(self, detail: str) -> None:
        if self.fatal is None:
            self.fatal = (
                f"cluster.state_dir: {self._cfg.cluster.state_dir!r} is full, the Raft journal "
                f"cannot be written ({detail})"
            )
            log.error("%s", self.fatal)

    def _dispatch(self, state: ClusterState) -> None:
        self.last_change = time.monotonic()
        for listener in self._listeners:
            listener(state)

    @property
    def replica(self) -> _Replica:
        if self._replica is None:
            raise RaftvipError("the Raft group is not started")
        return self._replica

    @property
    def state(self) -> ClusterState:
        return self._replica.state if self._replica is not None else ClusterState()

    def info(self) -> RaftInfo:
        return self.replica.info()

    def loop_stepped(self, now: float) -> None:
        """The member loop completed a step at `now` (monotonic): its heartbeat answers
        renew this member's lease up to there (core/liveness.py)."""
        if self._replica is not None:
            self._replica.loop_alive = now

    def propose(self, cmd: Command, callback: Callable[[Any, int], None] | None = None) -> None:
        self.replica.propose(cmd, callback)

    def propose_and_wait(self, cmd: Command, timeout: float) -> int | None:
        """Propose `cmd` and wait for pysyncobj's answer: its FAIL_REASON (0: committed), or
        None when none came within `timeout` (see `core.operator.outcome_of`)."""
        done = threading.Event()
        outcome: list[int] = []

        def on_result(_res: Any, err: int) -> None:
            outcome.append(err)
            done.set()

        self.replica.propose(cmd, on_result)
        if not done.wait(timeout):
            return None
        return outcome[0]

    def transfer_leadership(self) -> None:
        """Hand Raft leadership to a caught-up follower now (TimeoutNow), before this member
        goes: the group elects at once instead of after a timeout. Done on the tick thread
        (pysyncobj's transferLeadership is not thread-safe)."""
        self.replica.transfer_requested = True

    def change_membership(self, add: bool, address: str, timeout: float) -> str | None:
        """Add or remove a Raft peer (pysyncobj dynamic membership; one change at a time).

        None on success, else why it failed.
        """
        done = threading.Event()
        outcome: list[int] = []

        def on_result(_res: Any, err: int) -> None:
            outcome.append(err)
            done.set()

        if add:
            self.replica.addNodeToCluster(address, callback=on_result)
        else:
            self.replica.removeNodeFromCluster(address, callback=on_result)
        if not done.wait(timeout):
            return f"not committed within {timeout:g}s"
        if outcome[0] == 6:
            return "refused by the leader (another membership change is in progress?)"
        return None if outcome[0] == 0 else outcome_of(outcome[0])[1]

    def stop(self) -> None:
        if self._syncer is not None:
            self._syncer.stop()
        if self._replica is not None:
            self._replica.destroy()
        if self._syncer is not None:
            self._syncer.sync()  # a graceful stop leaves everything on disk
