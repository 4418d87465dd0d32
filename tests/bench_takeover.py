"""Takeover after a hang, as a real router sees it (a benchmark, not a test; issue 14).

    python -m tests.bench_takeover --trials 5

One BIRD 2 with every LB's real ExaBGP 5 peering with it directly (tests/bench.py's Testbed),
hold time 9 s, every path with MED 100: equal AS-path lengths leave the choice to BIRD's
tie-break, the lowest router ID (the LB's address). An owner hangs (SIGSTOP of its raftvip
and its ExaBGP: the TCP session stays open, its path stays in BIRD's table until the hold
timer expires). The group moves the VIP after about a lease; "router moved" is the time from
the hang to BIRD's best path leading to another LB. Four cells:

* the stale path wins the tie-break (the hung LB has the lowest router ID: lb1) or the new
  path wins it (the hung LB has the highest: lb3, whose VIP goes to lb1 or lb2);
* each with `takeover_margin = 1` (the default: the new owner's takeover form is one AS
  shorter than every steady path) and with `takeover_margin = 0` (one form for everyone).

Without a margin, a stale path that wins the tie-break holds the traffic until BIRD's hold
timer drops the hung session, 8-9 s with hold 9 s (90-180 s with common hold times).
Benchmarks print figures and never assert; `tests/test_takeover_bgp.py` checks the behaviour.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.bench import (
    LEASE,
    Sample,
    Stats,
    Testbed,
    log,
    ms,
)

HOLD_TIME = 9  # BIRD <-> every LB, and the LBs' [exabgp] hold_time (takeover_hold_time)
TIE_BREAK = {"stale path wins the tie-break": "lb1", "new path wins the tie-break": "lb3"}
MARGINS = (1, 0)
TARGET = f"<= lease + 0.3 s = {(LEASE + 0.3) * 1000:.0f} ms median, <= lease + 0.6 s = " + (
    f"{(LEASE + 0.6) * 1000:.0f} ms p99"
)


@contextlib.contextmanager
def takeover_bed(
    root: Path, margin: int | None, hold_time: int = HOLD_TIME, trace_routes: bool = False
) -> Iterator[Testbed]:
    """tests/bench.py's Testbed (one BIRD, three LBs running raftvip under ExaBGP 5) with
    `takeover_margin = margin` (None: the default) and hold time `hold_time` on both sides;
    `trace_routes`: BIRD logs every path it imports or removes (`Bird.route_trace`)."""
    with Testbed.running(
        root, False, takeover_margin=margin, hold_time=hold_time, trace_routes=trace_routes
    ) as bed:
        bed.use("raftvip")
        yield bed


@dataclass(frozen=True)
class HangSample:
    sample: Sample
    new_owner: str | None  # whose path became best
    established: bool  # BIRD still had the hung LB's session up when its best path moved


def hang_trial(bed: Testbed, victim: str) -> HangSample:
    """Hang `victim` (SIGSTOP of raftvip + ExaBGP), time BIRD's best path moving, heal."""
    bed.wait_settled()
    vip = bed.vip_of(victim)
    began = bed.inject(victim, "hang")
    try:
        sample = bed.watch(vip, victim, began, timeout=3 * HOLD_TIME)
        established = bed.bird.protocols().get(victim) == "Established"
        new_owner = bed.best_member(bed.routes().get(vip, []))
    finally:
        bed.heal(victim, "hang")
    return HangSample(sample, new_owner, established)


@dataclass
class TakeoverResult:
    """Router-moved seconds per (tie-break case, takeover_margin)."""

    trials: int
    cells: dict[tuple[str, int], list[HangSample]] = field(default_factory=dict)

    def stats(self, case: str, margin: int) -> Stats | None:
        samples = self.cells.get((case, margin), [])
        return Stats([s.sample.best for s in samples]) if samples else None


def run_takeover(root: Path, trials: int) -> TakeoverResult:
    """`trials` hangs per cell: {stale, new path wins the tie-break} x takeover_margin {1, 0}."""
    result = TakeoverResult(trials)
    for margin in MARGINS:
        with takeover_bed(root / f"margin{margin}", margin) as bed:
            for case, victim in TIE_BREAK.items():
                samples = result.cells.setdefault((case, margin), [])
                for trial in range(trials):
                    got = hang_trial(bed, victim)
                    samples.append(got)
                    log(
                        f"  takeover_margin={margin} {case:<30} #{trial + 1:<3} {victim} hung: "
                        f"router moved {ms(got.sample.best):>8} to {got.new_owner} "
                        f"(hung session {'Established' if got.established else 'down'})"
                    )
    return result


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def takeover_table(res: TakeoverResult) -> list[str]:
    """Markdown: router-moved median / p99 per tie-break case, with and without the margin."""
    lines = [
        f"Owner hang (SIGSTOP of raftvip + ExaBGP, TCP open), hold time {HOLD_TIME} s, lease "
        f"{LEASE:g} s, {res.trials} trials per cell; router moved = the hang to BIRD's best "
        f"path leading to another LB. Target: {TARGET}.",
        "",
        _row(["case", "takeover_margin", "median", "p99", "max", "hung session up at the move"]),
        _row(["---", "---:", "---:", "---:", "---:", "---:"]),
    ]
    for case in TIE_BREAK:
        for margin in MARGINS:
            stats = res.stats(case, margin)
            if stats is None:
                continue
            samples = res.cells[(case, margin)]
            up = sum(1 for s in samples if s.established)
            lines.append(
                _row(
                    [
                        case,
                        f"{margin}" + (" (default)" if margin == 1 else ""),
                        ms(stats.median),
                        ms(stats.p99),
                        ms(stats.max),
                        f"{up}/{len(samples)}",
                    ]
                )
            )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="raftvip-bench-takeover-"))
    started = time.monotonic()
    try:
        result = run_takeover(root, args.trials)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    log("")
    for line in takeover_table(result):
        log(line)
    log(f"\n({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
