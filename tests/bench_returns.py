"""Returning members (issue 14): a follower cut off from the group for a few seconds, then let
back in, with PreVote (now) and with pysyncobj's stock elections (before:
`RAFTVIP_NO_PREVOTE=1` in every member), measured in the same run:

    python -m tests.bench_returns --returns 20

3 member processes (raftvip/testing/group.py, no health check command) on 127.0.0.x. A cut
drops every packet between the follower and the other two on the group's Raft port (iptables
rules matched by the member's cgroup, tests/chaos.py `Firewall`): both directions, on
connections either side opened. Counted per return, from the moment the group agrees on a
leader and a term until it agrees again after the heal: leadership wins (each member logs
`raft leader=... granted every member a fresh lease` when it wins) and the rise of the
group's highest term. Then the leader is killed (`kill -9`) a few times: how long until the
survivors agree on a new one, to show that PreVote does not slow a real failover.
Needs root, iptables and cgroup v2. Benchmarks print figures and never assert.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from raftvip.errors import ControlError
from raftvip.pysyncobj_patches import PREVOTE_ENV
from raftvip.testing.group import Group
from raftvip.testing.wait import wait_until
from tests.chaos import Firewall

CUT = 3.0  # seconds a follower stays cut off
SETTLE = 2.0  # after the heal: a forced election comes within ~1 s of the links coming back
WON = ": granted every member a fresh lease"  # logged once by each member that wins
KILLS = 5


@dataclass(frozen=True)
class ReturnCount:
    """What `returns` cuts of a follower caused."""

    returns: int
    leader_changes: int  # leaderships won
    term_changes: int  # how far the group's highest term rose
    elections: int  # returns after which the term had risen


@dataclass
class ReturnsResult:
    """With PreVote (the fields without prefix) and with stock pysyncobj elections."""

    returns: int
    leader_changes: int
    term_changes: int
    elections: int
    stock_leader_changes: int
    stock_term_changes: int
    stock_elections: int
    cut: float = CUT
    new_leader: list[float] = field(default_factory=list)  # kill -9 of the leader -> agreed
    stock_new_leader: list[float] = field(default_factory=list)


class ReturnsBed:
    """A 3-member group whose members can be cut off (iptables). A context manager."""

    def __init__(
        self, root: Path, prevote: bool = True, log: Callable[[str], None] = print
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        env = {} if prevote else {PREVOTE_ENV: "1"}
        self.group = Group(root, size=3, check=False, env=env)
        self.firewall = Firewall()
        self.port = int(next(iter(self.group.members.values())).address.rsplit(":", 1)[1])
        self.log = log

    def __enter__(self) -> ReturnsBed:
        try:
            self.firewall.setup()
            for name in self.group.members:
                self.start(name)
            self.wait_stable()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.group.close()
        finally:
            self.firewall.teardown()

    def start(self, name: str) -> None:
        member = self.group.start(name)
        assert member.proc is not None
        self.firewall.attach(name, member.proc.pid)

    # --- observation ---

    def agreed(self, names: list[str] | None = None) -> tuple[str, int] | None:
        """(leader, term) when every member in `names` (default all) reports the same leader
        and the same term, else None."""
        seen: set[tuple[str, int]] = set()
        for name in names or list(self.group.members):
            try:
                doc = self.group.status(name, timeout=1.0)
            except ControlError:
                return None
            if not doc.get("leader"):
                return None
            seen.add((str(doc["leader"]), int(doc["term"])))
        return seen.pop() if len(seen) == 1 else None

    def wait_stable(self, names: list[str] | None = None, timeout: float = 30.0) -> tuple[str, int]:
        """The group's (leader, term) once it has agreed twice, 0.3 s apart."""
        while True:
            first = wait_until(lambda: self.agreed(names), timeout, 0.02, what="one leader")
            time.sleep(0.3)
            if self.agreed(names) == first:
                return first

    def highest_term(self) -> int:
        terms = [int(self.group.status(n, timeout=5.0)["term"]) for n in self.group.members]
        return max(terms)

    def wins(self) -> int:
        return sum(self.group.stderr(name).count(WON) for name in self.group.members)

    # --- faults ---

    def cut_off(self, victim: str) -> None:
        """Nothing passes between `victim` and the others on the Raft port, either way."""
        for other in self.group.members:
            if other == victim:
                continue
            for a, b in ((victim, other), (other, victim)):
                host = self.group.members[b].address.rsplit(":", 1)[0]
                self.firewall.drop(a, host, self.port)
                self.firewall.reply_drop(a, host, self.port)

    def one_return(self, victim: str, cut: float) -> tuple[int, int]:
        """Cut `victim` off for `cut` s, let it back: (leaderships won, term rise)."""
        _, term = self.wait_stable()
        term = max(term, self.highest_term())
        wins = self.wins()
        self.cut_off(victim)
        time.sleep(cut)
        self.firewall.heal()
        time.sleep(SETTLE)
        self.wait_stable()
        return self.wins() - wins, self.highest_term() - term

    def returns(self, count: int, cut: float = CUT) -> ReturnCount:
        """`count` returns of a follower (alternating between the two)."""
        won = rose = elections = 0
        for index in range(count):
            leader, _ = self.wait_stable()
            followers = [n for n in self.group.members if n != leader]
            victim = followers[index % len(followers)]
            wins, rise = self.one_return(victim, cut)
            won, rose, elections = won + wins, rose + rise, elections + int(rise > 0)
            self.log(f"  return #{index + 1} of {victim}: {wins} leaderships won, term +{rise}")
        return ReturnCount(count, won, rose, elections)

    def kill_leader(self, timeout: float = 10.0) -> tuple[str, str, float]:
        """kill -9 the leader: (old, new leader, seconds until the survivors agree on it).
        The old leader is started again and the group waited for."""
        leader, _ = self.wait_stable()
        survivors = [n for n in self.group.members if n != leader]
        killed = time.monotonic()
        self.group.kill(leader)

        def replaced() -> tuple[str, int] | None:
            agreed = self.agreed(survivors)
            return agreed if agreed is not None and agreed[0] != leader else None

        new, _ = wait_until(replaced, timeout, 0.005, what="a new leader after a kill")
        elapsed = time.monotonic() - killed
        self.start(leader)
        self.wait_stable()
        return leader, new, elapsed


def run_returns(
    root: Path,
    returns: int,
    cut: float = CUT,
    kills: int = KILLS,
    log: Callable[[str], None] = print,
) -> ReturnsResult:
    """`returns` returns of a cut-off follower with PreVote, then as many with stock
    elections, each in a fresh group; `kills` leader kills in each."""
    counts: dict[bool, ReturnCount] = {}
    failover: dict[bool, list[float]] = {True: [], False: []}
    for prevote in (True, False):
        label = "PreVote" if prevote else "stock elections"
        log(f"== {label}: {returns} returns of a follower cut off for {cut:g} s")
        with ReturnsBed(root / ("prevote" if prevote else "stock"), prevote, log) as bed:
            counts[prevote] = bed.returns(returns, cut)
            for _ in range(kills):
                old, new, elapsed = bed.kill_leader()
                failover[prevote].append(elapsed)
                log(f"  leader {old} killed: {new} leads after {elapsed * 1000:.0f} ms")
    now, stock = counts[True], counts[False]
    return ReturnsResult(
        returns=returns,
        leader_changes=now.leader_changes,
        term_changes=now.term_changes,
        elections=now.elections,
        stock_leader_changes=stock.leader_changes,
        stock_term_changes=stock.term_changes,
        stock_elections=stock.elections,
        cut=cut,
        new_leader=failover[True],
        stock_new_leader=failover[False],
    )


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values) * 1000:.0f} ms / {max(values) * 1000:.0f} ms"


def returns_table(res: ReturnsResult) -> list[str]:
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    n = res.returns
    return [
        f"### Returning members ({n} returns of a follower cut off for {res.cut:g} s, 3 members)",
        "",
        "| what | PreVote (now) | stock pysyncobj elections (before) |",
        "|---|---:|---:|",
        row(
            [
                "leaderships won during the returns",
                f"{res.leader_changes}",
                f"{res.stock_leader_changes}",
            ]
        ),
        row(["rise of the group's term", f"{res.term_changes}", f"{res.stock_term_changes}"]),
        row(
            [
                "returns that forced an election",
                f"{res.elections}/{n}",
                f"{res.stock_elections}/{n}",
            ]
        ),
        row(
            [
                f"leader killed -> survivors agree on a new one (median / max of "
                f"{len(res.new_leader)})",
                _ms(res.new_leader),
                _ms(res.stock_new_leader),
            ]
        ),
        "",
        "- before: the same code with `RAFTVIP_NO_PREVOTE=1` in every member; the cut drops "
        "both directions on the Raft port (iptables); a new leader is read from the members' "
        "status (control socket, polled every ~5 ms).",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench_returns", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--returns", type=int, default=20)
    parser.add_argument("--cut", type=float, default=CUT, help="seconds cut off (default 3)")
    parser.add_argument("--kills", type=int, default=KILLS, help="leader kills per mode")
    args = parser.parse_args(argv)
    if not Firewall.available():
        print("needs root, iptables and cgroup v2", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="raftvip-returns-"))
    try:
        res = run_returns(root, args.returns, args.cut, args.kills)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    print("\n".join(returns_table(res)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
