"""Log records: what the pure core asks the shell to log (it never logs itself)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LogRecord:
    level: int  # a `logging` level
    message: str
