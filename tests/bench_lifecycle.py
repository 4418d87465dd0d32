"""Starts, stops and restarts as a real BIRD sees them, side by side with the behaviour before
(issue 13), measured in the same run: `python -m tests.bench --parts lifecycle`.

- cold start: 3 LBs (real ExaBGP + raftvip each) started at once with an empty state_dir;
  BIRD is polled from the first start: time until every VIP has a best path, owner moves
  after that first full announcement, the most VIPs one LB carried at once. "Before" runs
  raftvip at BASELINE (the landed code before this work: a git worktree of the repository),
  so the first member to report took every VIP.
- planned stop: `raftvip leave` then SIGTERM to ExaBGP (what deploy/'s unit does), against
  SIGTERM to ExaBGP alone (the unit before); the longest interval without a best path for
  the stopped LB's VIP.
- restart: `raftvip restart` (ExaBGP keeps the routes and starts the new process), against
  SIGTERM to the helper (an upgrade before: ExaBGP respawns it, it withdraws everything at
  start and takes its VIP back after preempt_delay); longest interval without a best path,
  owner moves at the router, the helper's pid before and after.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from raftvip.testing.group import cli
from raftvip.testing.routewatch import Best, RouteWatch
from raftvip.testing.wait import wait_until
from tests import bench

BASELINE = "6599f25"  # main before issue 13: cold start piled everything on one member


def watching(bed: bench.Testbed) -> contextlib.AbstractContextManager[RouteWatch]:
    def best() -> Best:
        routes = bed.routes()
        return {v: bed.best_member(routes.get(v, [])) for v in bed.group.vips}

    return RouteWatch.running(best, interval=bench.POLL)


@dataclass
class ColdStart:
    full: float  # seconds from the first start until every VIP has a best path
    moves: int  # owner changes at the router after that
    peak: int  # most VIPs one LB carried at once


@dataclass
class LifecycleResults:
    cold_now: list[ColdStart] = field(default_factory=list)
    cold_before: list[ColdStart] = field(default_factory=list)
    stop_leave: list[float] = field(default_factory=list)  # longest without a path, s
    stop_sigterm: list[float] = field(default_factory=list)
    restart_now: list[tuple[float, int, bool]] = field(default_factory=list)  # dark, moves, pid
    restart_kill: list[tuple[float, int, bool]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def baseline_tree(root: Path) -> Path | None:
    """A git worktree of BASELINE, or None (no git history: the rows say so)."""
    tree = root / "baseline"
    made = subprocess.run(
        ["git", "-C", str(bench.REPO), "worktree", "add", "--detach", str(tree), BASELINE],
        capture_output=True,
        text=True,
    )
    return tree if made.returncode == 0 else None


def cold_start(bed: bench.Testbed, code: Path | None, wait: float) -> ColdStart:
    """Every LB's ExaBGP started at once on an empty state_dir (`code`: raftvip from there)."""
    bed.stop_speakers()
    shutil.rmtree(bed.root / "state", ignore_errors=True)
    bed.mode, bed.code = "raftvip", code
    with watching(bed) as watch:
        start = time.monotonic()
        for name in bed.group.members:
            bed.start_speaker(name)
        vips = list(bed.group.vips)
        first = wait_until(lambda: watch.first_full(vips), 60, 0.01, what="every VIP's path")
        time.sleep(wait)  # past preempt_delay: the moves the start causes have happened
    bed.wait_settled()
    return ColdStart(first - start, watch.moves(first), watch.peak())


def planned_stop(bed: bench.Testbed, victim: str, leave: bool) -> float:
    vip = bed.vip_of(victim)
    with watching(bed) as watch:
        if leave:
            done = cli(bed.group, victim, "leave")
            if done.returncode != 0:
                raise RuntimeError(f"raftvip leave failed: {done.stderr.strip()}")
        bed.speakers[victim].stop()  # SIGTERM to ExaBGP, as systemd does
        wait_until(
            lambda: bed.best_member(bed.routes().get(vip, [])) not in (None, victim),
            30,
            0.005,
            what=f"{vip} to move",
        )
        time.sleep(0.3)
    bed.start_speaker(victim)
    bed.wait_settled()
    return watch.longest_dark(vip)


def restart(bed: bench.Testbed, victim: str, in_place: bool) -> tuple[float, int, bool]:
    vip = bed.vip_of(victim)
    speaker = bed.speakers[victim]
    (old,) = speaker.helper_pids()
    with watching(bed) as watch:
        began = time.monotonic()
        if in_place:
            done = cli(bed.group, victim, "restart")
            if done.returncode != 0:
                raise RuntimeError(f"raftvip restart failed: {done.stderr.strip()}")
        else:
            os.kill(old, signal.SIGTERM)  # replace the helper; ExaBGP respawns it
        wait_until(lambda: speaker.helper_pids() not in ([], [old]), 30, 0.01, what="respawn")
        wait_until(bed.settled, 30, 0.01, what="the group to settle")
        time.sleep(bench.PREEMPT_DELAY + 1.0)
    new = speaker.helper_pids()
    return watch.longest_dark(vip), watch.moves(began), bool(new) and new != [old]


def run_lifecycle(root: Path, trials: int) -> LifecycleResults:
    results = LifecycleResults()
    tree = baseline_tree(root)
    if tree is None:
        results.notes.append(
            f"no git history here: the cold start was not measured at {BASELINE} (before)"
        )
    wait = bench.PREEMPT_DELAY + 1.5
    with bench.Testbed.running(root / "lifecycle", with_zk=False) as bed:
        names = list(bed.group.members)
        for trial in range(trials):
            now = cold_start(bed, None, wait)
            results.cold_now.append(now)
            bench.log(
                f"  cold start #{trial + 1}: full in {bench.ms(now.full)}, {now.moves} moves, "
                f"peak {now.peak} VIPs on one LB"
            )
            if tree is not None:
                before = cold_start(bed, tree, wait)
                results.cold_before.append(before)
                bench.log(
                    f"  cold start at {BASELINE} #{trial + 1}: full in {bench.ms(before.full)}, "
                    f"{before.moves} moves, peak {before.peak}"
                )
        bed.use("raftvip")
        for trial in range(trials):
            victim = names[trial % len(names)]
            results.stop_leave.append(planned_stop(bed, victim, leave=True))
            results.stop_sigterm.append(planned_stop(bed, victim, leave=False))
            bench.log(
                f"  planned stop of {victim}: leave + SIGTERM "
                f"{bench.ms(results.stop_leave[-1])} without a path, SIGTERM alone "
                f"{bench.ms(results.stop_sigterm[-1])}"
            )
        for trial in range(trials):
            victim = names[trial % len(names)]
            results.restart_now.append(restart(bed, victim, in_place=True))
            results.restart_kill.append(restart(bed, victim, in_place=False))
            (d1, m1, _), (d2, m2, _) = results.restart_now[-1], results.restart_kill[-1]
            bench.log(
                f"  restart of {victim}: raftvip restart {bench.ms(d1)} dark, {m1} moves; "
                f"helper replaced {bench.ms(d2)} dark, {m2} moves"
            )
        bed.stop_speakers()
    if tree is not None:
        subprocess.run(
            ["git", "-C", str(bench.REPO), "worktree", "remove", "--force", str(tree)],
            capture_output=True,
        )
    return results


def lifecycle_table(res: LifecycleResults) -> list[str]:
    def stats(values: list[float]) -> str:
        if not values:
            return "-"
        return f"{bench.ms(bench.percentile(values, 0.5))} / {bench.ms(max(values))}"

    def counts(values: list[int]) -> str:
        if not values:
            return "-"
        return f"{bench.percentile([float(v) for v in values], 0.5):g} / {max(values)}"

    n = len(res.cold_now)
    return [
        f"### Starts, stops and restarts ({n} trials each; median / max)",
        "",
        "| what (3 LBs, 1 VIP each, one BIRD) | raftvip now | before | before is |",
        "|---|---:|---:|---|",
        bench._row(
            [
                "cold start: first start -> every VIP has a path",
                stats([c.full for c in res.cold_now]),
                stats([c.full for c in res.cold_before]),
                f"raftvip at {BASELINE}",
            ]
        ),
        bench._row(
            [
                "cold start: owner moves after that",
                counts([c.moves for c in res.cold_now]),
                counts([c.moves for c in res.cold_before]),
                f"raftvip at {BASELINE}",
            ]
        ),
        bench._row(
            [
                "cold start: most VIPs on one LB at once",
                counts([c.peak for c in res.cold_now]),
                counts([c.peak for c in res.cold_before]),
                f"raftvip at {BASELINE}",
            ]
        ),
        bench._row(
            [
                "planned stop: longest time without a path",
                stats(res.stop_leave),
                stats(res.stop_sigterm),
                "SIGTERM to ExaBGP without `raftvip leave`",
            ]
        ),
        bench._row(
            [
                "restart: longest time without a path",
                stats([d for d, _, _ in res.restart_now]),
                stats([d for d, _, _ in res.restart_kill]),
                "the helper replaced (SIGTERM), ExaBGP respawns it",
            ]
        ),
        bench._row(
            [
                "restart: owner moves at the router",
                counts([m for _, m, _ in res.restart_now]),
                counts([m for _, m, _ in res.restart_kill]),
                "the helper replaced (SIGTERM), ExaBGP respawns it",
            ]
        ),
        "",
        "- now: `raftvip leave` then SIGTERM to ExaBGP (deploy/'s unit, `ExecStop`); "
        "`raftvip restart` (the helper's pid changed in "
        f"{sum(1 for *_, p in res.restart_now if p)}/{len(res.restart_now)} trials). "
        "BIRD polled every ~1 ms.",
        *[f"- {note}" for note in res.notes],
    ]


if __name__ == "__main__":  # pragma: no cover - `python -m tests.bench --parts lifecycle`
    sys.exit(bench.main(["--parts", "lifecycle", *sys.argv[1:]]))
