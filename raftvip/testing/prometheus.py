"""A real Prometheus (Debian's `prometheus` package) on 127.0.0.1 for tests.

`Prometheus(root, targets).start()` writes a prometheus.yml that scrapes `targets` every
`SCRAPE_INTERVAL` seconds, keeps its TSDB under `root`, listens on a free loopback port and
is ready when `/-/ready` answers 200. `query()` / `query_range()` call the HTTP API and
return its JSON document as is (status, data.resultType, data.result).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from raftvip.testing.wait import free_port

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
SCRAPE_INTERVAL = 1  # seconds
JOB = "raftvip"


class Prometheus:
    def __init__(self, root: Path, targets: Sequence[str], job: str = JOB) -> None:
        self.root = root
        self.targets = list(targets)
        self.job = job
        self.port = free_port()
        self.config = root / "prometheus.yml"
        self.log_path = root / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0  # wall clock, for range queries

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL}s\n"
            f"  scrape_timeout: {SCRAPE_INTERVAL}s\n"
            f"  evaluation_interval: {SCRAPE_INTERVAL}s\n"
            "scrape_configs:\n"
            f"  - job_name: {self.job}\n"
            "    static_configs:\n"
            f"      - targets: {json.dumps(self.targets)}\n"
        )
        check = subprocess.run(
            [PROMTOOL, "check", "config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if check.returncode != 0:
            raise RuntimeError(f"promtool rejects {self.config}: {check.stdout}{check.stderr}")
        self.started_at = time.time()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.root / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prometheus not ready within {timeout}s: {self.tail()}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET /api/v1/<path>; an HTTP error's JSON body (status "error") is returned too."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return dict(json.load(response))
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            try:
                return dict(json.loads(body))
            except ValueError:
                return {"status": "error", "error": f"HTTP {exc.code}: {body[:500]}"}

    def query(self, expr: str, at: float | None = None) -> dict[str, Any]:
        return self.api("query", query=expr, time=f"{at if at is not None else time.time():.3f}")

    def query_range(self, expr: str, start: float, end: float, step: float) -> dict[str, Any]:
        return self.api(
            "query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step:g}"
        )

    def label_values(self, label: str, match: str) -> list[str]:
        doc = self.api(f"label/{label}/values", **{"match[]": match})
        if doc.get("status") != "success":
            raise RuntimeError(f"label values of {label} for {match}: {doc}")
        return [str(v) for v in doc["data"]]

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def prometheus_available() -> bool:
    return os.access(PROMETHEUS, os.X_OK) and shutil.which(PROMTOOL) is not None


requires_prometheus = pytest.mark.skipif(
    not prometheus_available() and not os.environ.get("CI"),
    reason="Prometheus (Debian package `prometheus`) is not installed",
)


@contextlib.contextmanager
def running_prometheus(root: Path, targets: Sequence[str]) -> Iterator[Prometheus]:
    server = Prometheus(root, targets)
    server.start()
    try:
        yield server
    finally:
        server.stop()
