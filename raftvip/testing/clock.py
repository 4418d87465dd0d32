"""A clock that only moves when told to (in the spirit of trio's MockClock)."""

from __future__ import annotations

# Wall clock = monotonic + this: a plausible epoch, so that timestamps look like real ones.
WALL_OFFSET = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class FakeClock:
    """Monotonic seconds (`clock()` or `clock.now`) and a wall clock (`clock.wall()`).

    `advance(s)` moves both; `step_wall(s)` moves only the wall clock (an NTP step), which is
    what a host's clock does across a reboot or a bad sync.
    """

    def __init__(self, start: float = 1000.0, wall_offset: float = WALL_OFFSET) -> None:
        self.now = start
        self.wall_offset = wall_offset

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self.wall_offset

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back ({seconds} s)")
        self.now += seconds
        return self.now

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))

    def step_wall(self, seconds: float) -> None:
        self.wall_offset += seconds
