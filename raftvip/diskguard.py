"""A full `state_dir` becomes a clear error instead of a silent SIGBUS.

pysyncobj's journal is an mmapped file grown with `ftruncate`: on a full filesystem the first
write to a new page kills the process with SIGBUS and no message (measured on a full tmpfs:
exit -7, nothing logged). `install()` makes every growth reserve its blocks first
(`posix_fallocate`), so a full disk raises ENOSPC before a page is touched, and turns
pysyncobj's per-tick tracebacks for ENOSPC into one call of `on_full` (the member then hands
over, withdraws and exits with a clear error instead of dying). A journal append that
fails leaves the in-memory log as it was, so nothing unwritten is ever acknowledged.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from pysyncobj import journal

log = logging.getLogger(__name__)

_FULL = (errno.ENOSPC, errno.EDQUOT)
_installed: list[Callable[[str], None]] = []  # the current `on_full` (one Raft node per process)


class StateDirFull(OSError):
    """The Raft journal could not grow: no space left in `state_dir`."""


def _reserve(fd: int, size: int, name: str) -> None:
    before = os.fstat(fd).st_size
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in _FULL:
            # ext4 may have grown the file before giving up, and pysyncobj sizes its writes
            # by the file's size (mmap.size()): a longer file than the mapping made its next
            # write fail with "mmap slice assignment is wrong size". Put the size back.
            with contextlib.suppress(OSError):
                if os.fstat(fd).st_size != before:
                    os.ftruncate(fd, before)
            raise StateDirFull(exc.errno, f"cannot grow the Raft journal {name}", name) from None
        # EOPNOTSUPP and friends: this filesystem cannot reserve; keep pysyncobj's behaviour.


def _guarded_write(original: Callable[..., Any]) -> Callable[..., Any]:
    def write(self: Any, offset: int, values: bytes) -> Any:
        mapped = self._ResizableFile__mm
        end = offset + len(values)
        if end > len(mapped):  # the mapping's length (mapped.size() is the file's size)
            grown = max(int(len(mapped) * self._ResizableFile__resizeFactor), end)
            _reserve(self._ResizableFile__f.fileno(), grown, self._ResizableFile__fileName)
            # mmap.size() is the file's size: map what was just reserved, or pysyncobj
            # would see a large enough file and write past the end of the mapping.
            mapped.resize(grown)
        return original(self, offset, values)

    write.raftvip_guarded = True  # type: ignore[attr-defined]
    return write


def _guarded_init(original: Callable[..., Any]) -> Callable[..., Any]:
    def init(self: Any, fileName: str, *args: Any, **kwargs: Any) -> None:
        original(self, fileName, *args, **kwargs)
        # A journal left sparse (older run, or grown by ftruncate) gets its holes reserved.
        _reserve(self._ResizableFile__f.fileno(), self._ResizableFile__mm.size(), fileName)

    return init


def _atomic_add(original: Callable[..., Any]) -> Callable[..., Any]:
    """pysyncobj's FileJournal.add appends to its in-memory log before writing the file: a
    failed write left an entry in memory that was never on disk (acknowledged to the leader,
    then lost or replaced by the next entry at the same offset: a journal with a hole, and
    "truncating already-applied log entries" after a restart). Undo the in-memory append."""

    def add(self: Any, command: bytes, idx: int, term: int) -> None:
        entries = self._FileJournal__journal
        before = len(entries)
        try:
            original(self, command, idx, term)
        except BaseException:
            del entries[before:]
            raise

    return add


class _FullDiskFilter(logging.Filter):
    """Swallow pysyncobj's tracebacks for ENOSPC (logged once, clearly, by `on_full`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:
            if isinstance(exc, OSError) and exc.errno in _FULL:
                detail = exc.strerror or "no space left on device"
                if exc.filename:
                    detail += f": {exc.filename}"
                for on_full in _installed:
                    on_full(detail)
                return False
            exc = exc.__context__
        return True


def install(on_full: Callable[[str], None]) -> None:
    """Guard pysyncobj's journal growth; `on_full(detail)` runs (tick thread) on ENOSPC."""
    _installed[:] = [on_full]
    cls: Any = journal.ResizableFile
    if not getattr(cls.write, "raftvip_guarded", False):
        cls.write = _guarded_write(cls.write)
        cls.__init__ = _guarded_init(cls.__init__)
        journal.FileJournal.add = _atomic_add(journal.FileJournal.add)
        logging.getLogger("pysyncobj.syncobj").addFilter(_FullDiskFilter())


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
