"""The Raft journal written to disk off the Raft thread (pysyncobj never syncs).

The guards that turn a full `state_dir` into a clear error patch pysyncobj's journal and
live with every other patch in raftvip/pysyncobj_patches.py.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

_FULL = (errno.ENOSPC, errno.EDQUOT)


class JournalSyncer:
    """Writes the Raft journal to disk every `interval` seconds, off the Raft thread.

    pysyncobj never syncs: its mmapped journal and its meta file live in the page cache until
    the kernel writes them back (FIELD-NOTES.md: survives a crash, not a power loss). This
    thread bounds what a power loss can take to about `interval`, and makes a slow disk
    visible (one warning a minute). Raft keeps running from memory while a sync is slow,
    unless the kernel blocks the Raft thread's own writes too (a journal page under
    writeback, a full ext4 journal): then the group expires this member like a hung one.
    """

    def __init__(
        self,
        paths: Sequence[str],
        interval: float = 1.0,
        slow: float = 1.0,
        on_full: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._paths = list(paths)
        self._interval = interval
        self._slow = slow
        self._on_full = on_full
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="journal-sync", daemon=True)
        self._slow_since: float | None = None
        self._warned_at = -float("inf")
        self.last_duration = 0.0  # seconds the last sync took
        self.count = 0  # syncs done

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 0.0) -> None:
        """Stop syncing; wait up to `timeout` for a sync in progress."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sync()

    def sync(self) -> None:
        begin = self._clock()
        for path in self._paths:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # the meta file appears with the first vote, a dump with a snapshot
            except OSError as exc:
                log.error("state_dir: cannot open %s to sync it: %s", path, exc.strerror)
                continue
            try:
                os.fsync(fd)
            except OSError as exc:
                if exc.errno in _FULL and self._on_full is not None:
                    self._on_full(f"{exc.strerror}: {path}")
                else:
                    log.error("state_dir: syncing %s failed: %s", path, exc.strerror)
            finally:
                os.close(fd)
        self._note(self._clock() - begin)

    def _note(self, took: float) -> None:
        self.last_duration = took
        self.count += 1
        now = self._clock()
        if took >= self._slow:
            if self._slow_since is None:
                self._slow_since = now
            if now - self._warned_at >= 60.0:
                self._warned_at = now
                log.warning(
                    "state_dir is slow: writing the Raft journal to disk took %.1fs "
                    "(Raft keeps running from memory; a power loss now could lose that much)",
                    took,
                )
        elif self._slow_since is not None:
            log.info(
                "state_dir is fast again: journal synced in %.3fs after %.0fs of slow syncs",
                took,
                now - self._slow_since,
            )
            self._slow_since = None
            self._warned_at = -float("inf")
