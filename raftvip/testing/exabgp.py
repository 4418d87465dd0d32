"""An in-process ExaBGP pipe: what a member wrote, what ExaBGP would carry, and acks on demand."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from raftvip.core.exabgp import StdinEvent, parse_stdin_line


@dataclass(frozen=True)
class RouteCommand:
    action: str  # announce | withdraw
    vip: str
    line: str


def parse_route_command(line: str) -> RouteCommand | None:
    """`announce route 10.0.0.1/32 ...` / `withdraw route ...` -> (action, vip); else None."""
    words = line.split()
    if len(words) >= 3 and words[0] in ("announce", "withdraw") and words[1] == "route":
        return RouteCommand(words[0], words[2].split("/")[0], line)
    return None


class FakeExabgp:
    """The ExaBGP side of a member's stdout: its RIB (vip -> announce line) and its acks.

    `receive(lines)` is what the member wrote; `acks(n)` gives the `done` events ExaBGP would
    write back for the oldest `n` unacked lines (all of them by default). Routes enter the RIB
    when received, as ExaBGP's `done` means "entered the RIB" (FIELD-NOTES.md). `reject` makes
    the next acks `error` instead (a command ExaBGP refused: the RIB keeps what it had).
    """

    def __init__(self) -> None:
        self.rib: dict[str, str] = {}
        self.lines: list[str] = []
        self._unacked: deque[str] = deque()
        self.reject = False

    def receive(self, lines: tuple[str, ...] | list[str]) -> None:
        for line in lines:
            self.lines.append(line)
            self._unacked.append(line)
            if self.reject:
                continue
            command = parse_route_command(line)
            if command is None:
                continue
            if command.action == "announce":
                self.rib[command.vip] = line
            else:
                self.rib.pop(command.vip, None)

    @property
    def unacked(self) -> int:
        return len(self._unacked)

    def acks(self, n: int | None = None) -> list[StdinEvent]:
        count = len(self._unacked) if n is None else min(n, len(self._unacked))
        word = "error" if self.reject else "done"
        events = []
        for _ in range(count):
            self._unacked.popleft()
            events.append(parse_stdin_line(word))
        return events

    def announced(self) -> set[str]:
        return set(self.rib)
