"""Domain errors. The CLI turns these into `Error: ...` on stderr and exit 1."""

from __future__ import annotations


class RaftvipError(Exception):
    """Base class of every error raftvip reports to a person."""


class ConfigError(RaftvipError):
    """One or more problems in a configuration file, each naming its key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class SecretError(RaftvipError):
    """The Raft shared secret could not be obtained safely."""


class ControlError(RaftvipError):
    """A control-socket request failed (member not running, refused, bad reply)."""
