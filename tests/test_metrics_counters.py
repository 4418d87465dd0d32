"""In-process checks of the counters the dashboard relies on (raftvip/metrics.py).

`Metrics` is fed hand-made snapshots the way the agent loop feeds it, and read back through
its registry; no HTTP server is started.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from raftvip.agent import Snapshot
from raftvip.config import Config, load_config
from raftvip.core.group import NO_INFO
from raftvip.core.state import ClusterState
from raftvip.metrics import OWNERSHIP_REASONS, Metrics, ZookeeperCollector
from raftvip.testing.group import Group


def config(tmp_path: Path) -> Config:
    """lb1's config in a 3-member group with metrics (the files a `Group` would run)."""
    group = Group(tmp_path, size=3, metrics=True)
    return load_config(str(group.members["lb1"].config))


def announcing(*vips: str) -> Snapshot:
    return Snapshot(ClusterState(), NO_INFO, {}, frozenset(vips), {}, 0.0, True, time.time())


def test_announce_and_withdraw_count_changes_of_the_announced_set(tmp_path: Path) -> None:
    metrics = Metrics(config(tmp_path))

    def count(action: str) -> float | None:
        return metrics.registry.get_sample_value(
            "raftvip_announced_changes_total", {"action": action}
        )

    assert (count("announce"), count("withdraw")) == (0.0, 0.0)  # present before any change
    for announced in [(), ("10.20.0.1",), ("10.20.0.1", "10.20.0.2"), ("10.20.0.2",)]:
        metrics.observe(announcing(*announced))
        metrics.observe(announcing(*announced))  # an unchanged set counts nothing
    assert (count("announce"), count("withdraw")) == (2.0, 1.0)
    metrics.observe(announcing("10.20.0.1", "10.20.0.3"))
    assert (count("announce"), count("withdraw")) == (4.0, 2.0)


def test_known_labels_start_at_zero(tmp_path: Path) -> None:
    registry = Metrics(config(tmp_path)).registry
    for reason in OWNERSHIP_REASONS:
        labels = {"reason": reason}
        assert registry.get_sample_value("raftvip_ownership_changes_total", labels) == 0.0
    for result in ("success", "failure"):
        labels = {"service": "apex", "result": result}
        assert registry.get_sample_value("raftvip_health_check_results_total", labels) == 0.0


def test_zookeeper_collector_reads_the_mirror_status_at_collect_time() -> None:
    status: dict[str, Any] = {
        "ephemeral_nodes": ["/exabgp/service/apex/10.20.0.1"],
        "maintenance_nodes": [],
        "connects": 2,
        "expirations": 1,
        "commits": 0,
    }
    collector = ZookeeperCollector(lambda: status)

    def samples() -> dict[str, float]:
        return {s.name: s.value for family in collector.collect() for s in family.samples}

    assert samples() == {
        "raftvip_zookeeper_ephemeral_nodes": 1.0,
        "raftvip_zookeeper_maintenance_nodes": 0.0,
        "raftvip_zookeeper_connects_total": 2.0,
        "raftvip_zookeeper_session_expirations_total": 1.0,
        "raftvip_zookeeper_commits_total": 0.0,
    }
    status["ephemeral_nodes"] = []
    status["maintenance_nodes"] = ["/exabgp/maintenance/apex"]
    assert samples()["raftvip_zookeeper_ephemeral_nodes"] == 0.0
    assert samples()["raftvip_zookeeper_maintenance_nodes"] == 1.0


def test_registering_the_zookeeper_collector_does_not_call_the_mirror() -> None:
    calls: list[int] = []

    def status() -> dict[str, Any]:
        calls.append(1)
        return {"ephemeral_nodes": ["/a", "/b"]}

    registry = CollectorRegistry()
    registry.register(ZookeeperCollector(status))
    assert calls == []
    assert registry.get_sample_value("raftvip_zookeeper_ephemeral_nodes") == 2.0
    assert calls
