"""A real ZooKeeper 3.8 (Debian's `zookeeper` package) on 127.0.0.1 for tests and benchmarks.

`ZooKeeper(root).start()` writes a zoo.cfg (tickTime=500, so session timeouts of 1–10 s are
accepted) and runs `ZooKeeperServerMain` in the foreground; ready when `srvr` answers
`Mode: standalone` (FIELD-NOTES.md: ~0.3 s). `stop()` / `kill()` / `start()` keep the data
directory and the port, so clients reconnect to the same address; `wipe()` empties the data
directory (every session and znode is gone: clients see their session expire).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from raftvip.testing.wait import free_port

ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")
CLASSPATH = f"{ZOOKEEPER_JAR}:/usr/share/java/slf4j-simple.jar"
TICK_MS = 500


def four_letter(port: int, word: str, timeout: float = 0.5) -> str:
    """Send a four-letter command; the answer, or "" when the server does not answer."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(word.encode())
            chunks = []
            while chunk := s.recv(4096):
                chunks.append(chunk)
            return b"".join(chunks).decode(errors="replace")
    except OSError:
        return ""


class ZooKeeper:
    """One standalone server on 127.0.0.1:<free port>; its data survives stop/start."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.data_dir = root / "zk-data"
        self.config = root / "zoo.cfg"
        self.log_path = root / "zookeeper.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f"tickTime={TICK_MS}\n"
            f"dataDir={self.data_dir}\n"
            f"clientPort={self.port}\n"
            "clientPortAddress=127.0.0.1\n"
            "admin.enableServer=false\n"
            "4lw.commands.whitelist=ruok,srvr,stat,mntr,cons\n"
            "forceSync=no\n"
            "maxClientCnxns=0\n"
        )
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    *["java", "-Xmx128m", "-XX:+UseSerialGC", "-XX:-UsePerfData"],
                    *["-Dfile.encoding=UTF-8", "-cp", CLASSPATH],
                    "org.apache.zookeeper.server.ZooKeeperServerMain",
                    str(self.config),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while "Mode: standalone" not in four_letter(self.port, "srvr"):
            if self.proc.poll() is not None:
                raise RuntimeError(f"ZooKeeper exited with {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"ZooKeeper not ready within {timeout}s: {self.tail()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM (a clean stop, ~0.35 s)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: the server vanishes without closing anything."""
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def wipe(self) -> None:
        """Forget every znode and session (the server must be stopped)."""
        if self.running:
            raise RuntimeError("stop ZooKeeper before wiping its data")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def _end(self, signum: int) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def zookeeper_available() -> bool:
    return ZOOKEEPER_JAR.exists() and shutil.which("java") is not None


@contextlib.contextmanager
def running_zookeeper(root: Path) -> Iterator[ZooKeeper]:
    root.mkdir(parents=True, exist_ok=True)
    zk = ZooKeeper(root)
    zk.start()
    try:
        yield zk
    finally:
        zk.kill()
