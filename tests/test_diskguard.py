"""The journal syncer (raftvip/diskguard.py): fsyncs off the Raft thread, warns on a slow disk.

A throttled block device is exercised by the chaos suite (`disk_slow`, tests/chaos.py); here
the syncer runs on real files with a clock that says how long each sync took.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from raftvip.diskguard import JournalSyncer
from raftvip.testing.wait import wait_until


class SteppingClock:
    """Each call returns the previous value + the next step (seconds)."""

    def __init__(self, steps: list[float]) -> None:
        self.now = 100.0
        self.steps = steps

    def __call__(self) -> float:
        self.now += self.steps.pop(0) if self.steps else 0.0
        return self.now


def test_syncs_existing_files_and_skips_missing_ones(tmp_path: Path) -> None:
    journal = tmp_path / "test-lb1.journal"
    journal.write_bytes(b"x" * 4096)
    syncer = JournalSyncer([str(journal), str(tmp_path / "absent.meta"), str(tmp_path)])
    syncer.sync()
    assert 0.0 <= syncer.last_duration < 1.0


def test_a_slow_sync_is_one_warning_and_recovery_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = tmp_path / "j"
    journal.write_bytes(b"x")
    # begin/end pairs plus the `now` read in _note: 3 clock reads per sync.
    clock = SteppingClock([0, 2.5, 0, 0, 3.0, 0, 0, 0.01, 0])
    syncer = JournalSyncer([str(journal)], slow=1.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="raftvip.diskguard"):
        syncer.sync()
        syncer.sync()
        syncer.sync()
    messages = [r.getMessage() for r in caplog.records]
    slow = [m for m in messages if "state_dir is slow" in m]
    assert slow == [
        "state_dir is slow: writing the Raft journal to disk took 2.5s (Raft keeps running "
        "from memory; a power loss now could lose that much)"
    ]  # the second slow sync within a minute is not repeated
    assert any("state_dir is fast again: journal synced in 0.010s" in m for m in messages)


def test_runs_in_the_background_until_stopped(tmp_path: Path) -> None:
    journal = tmp_path / "j"
    journal.write_bytes(b"x")
    syncer = JournalSyncer([str(journal)], interval=0.01)
    syncer.start()
    try:
        wait_until(lambda: syncer.count >= 3, 5)
    finally:
        syncer.stop(timeout=5)
    assert not syncer.running
