"""What a member does with each committed log entry and with a received snapshot (pure).

The Raft wrapper (raftvip/cluster.py) calls these from pysyncobj's replicated method and its
snapshot loader; the simulator calls the same functions from its own replicated log.
"""

from __future__ import annotations

import logging
import traceback

from raftvip.core.leader import LeaderBook, report_applied
from raftvip.core.records import LogRecord
from raftvip.core.state import (
    ClusterState,
    CommandError,
    Report,
    apply,
    decode_command,
    refused,
)


def apply_entry(
    state: ClusterState, book: LeaderBook, payload: bytes, index: int, now: float
) -> tuple[ClusterState, LeaderBook, tuple[LogRecord, ...]]:
    """Apply the committed entry at Raft `index`. Total: never raises (an exception inside a
    pysyncobj replicated method halts the whole group)."""
    try:
        cmd = decode_command(payload)
    except CommandError as exc:
        # Every member refuses it the same way: one that cannot decode it, and (`refused`)
        # one that could but whose group does not speak its format yet.
        return state, book, (LogRecord(logging.ERROR, f"raft ignored a malformed command: {exc}"),)
    why = refused(state, cmd)
    if why is not None:
        record = LogRecord(
            logging.ERROR, f"raft refused command={type(cmd).__name__} at index {index}: {why}"
        )
        return state, book, (record,)
    try:
        new = apply(state, cmd, index=index)
    except Exception:
        record = LogRecord(
            logging.ERROR,
            f"raft command={type(cmd).__name__} failed to apply; ignored\n"
            + traceback.format_exc().rstrip(),
        )
        return state, book, (record,)
    if isinstance(cmd, Report) and new.members.get(cmd.member) is not state.members.get(cmd.member):
        # Only a report that counted renews the lease: one ignored as stale (an older
        # incarnation, a duplicate) says nothing about the member being alive.
        book = report_applied(book, cmd.member, now, index)
    return new, book, ()
