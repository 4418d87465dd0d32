"""A router's view sampled in a thread: which LB carries each VIP's best path, over time.

Used where an operation (a planned stop, a restart, a cold start) must be judged by what a
real BIRD saw all along: the longest interval a VIP had no best path, how often its best path
moved from one LB to another, the most VIPs one LB carried at once. The sampler calls `best`
(a router query that returns VIP -> LB name or None) as fast as `interval` allows; nothing
else may use that router's control socket while it runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

Best = dict[str, str | None]


@dataclass
class RouteWatch:
    best: Callable[[], Best]
    interval: float = 0.001
    samples: list[tuple[float, Best]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _done: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        while not self._done.is_set():
            try:
                seen = self.best()
            except Exception as exc:  # a sample lost is recorded, never silently skipped
                self.errors.append(f"{type(exc).__name__}: {exc}")
                seen = None
            if seen is not None:
                self.samples.append((time.monotonic(), seen))
            time.sleep(self.interval)

    @classmethod
    @contextmanager
    def running(cls, best: Callable[[], Best], interval: float = 0.001) -> Iterator[RouteWatch]:
        watch = cls(best, interval)
        thread = threading.Thread(target=watch._run, daemon=True, name="route-watch")
        thread.start()
        try:
            yield watch
        finally:
            watch._done.set()
            thread.join(5)

    def longest_dark(self, vip: str) -> float:
        """The longest interval between two samples in which `vip` had no best path (from
        the first sample without one to the next sample with one, or to the last sample)."""
        return max((end - start for start, end in self.dark_intervals(vip)), default=0.0)

    def dark_intervals(self, vip: str) -> list[tuple[float, float]]:
        intervals: list[tuple[float, float]] = []
        lost: float | None = None
        for when, best in self.samples:
            if best.get(vip) is None:
                lost = when if lost is None else lost
            elif lost is not None:
                intervals.append((lost, when))
                lost = None
        if lost is not None:
            intervals.append((lost, self.samples[-1][0]))
        return intervals

    def moves(self, since: float = -float("inf")) -> int:
        """Changes of a VIP's best path from one LB to another after `since` (a VIP that
        goes dark and comes back on the same LB does not count)."""
        moves = 0
        last: dict[str, str] = {}
        for when, best in self.samples:
            for vip, lb in best.items():
                if lb is None:
                    continue
                if when > since and last.get(vip, lb) != lb:
                    moves += 1
                last[vip] = lb
        return moves

    def owners_seen(self, vip: str) -> list[str]:
        """The LBs that carried `vip`'s best path, in order, repeats collapsed."""
        seen: list[str] = []
        for _when, best in self.samples:
            lb = best.get(vip)
            if lb is not None and (not seen or seen[-1] != lb):
                seen.append(lb)
        return seen

    def first_full(self, vips: list[str]) -> float | None:
        """When every one of `vips` first had a best path."""
        for when, best in self.samples:
            if all(best.get(v) is not None for v in vips):
                return when
        return None

    def peak(self) -> int:
        """The most VIPs whose best path led to one LB in one sample."""
        top = 0
        for _when, best in self.samples:
            counts: dict[str, int] = {}
            for lb in best.values():
                if lb is not None:
                    counts[lb] = counts.get(lb, 0) + 1
            top = max([top, *counts.values()])
        return top
