"""Prometheus metrics scraped from live members and parsed with prometheus-client's parser."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from raftvip.testing.group import Group
from raftvip.testing.wait import wait_until

pytestmark = pytest.mark.slow


def scrape(group: Group, member: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(group.metrics_url(member), timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def value(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    for got, v in samples[name]:
        if all(got.get(k) == want for k, want in labels.items()):
            return v
    raise KeyError(f"{name}{labels}")


def test_metrics_follow_the_group(tmp_path: Path) -> None:
    group = Group(tmp_path, size=3, metrics=True)
    try:
        group.start_all()
        wait_until(lambda: all(group.announcers(v) == {m} for v, m in group.preferred.items()), 20)
        wait_until(
            lambda: value(scrape(group, "lb1"), "raftvip_vip_announced", vip="10.20.0.1") == 1,
            5,
            0.1,
        )
        leaders = [n for n in group.members if value(scrape(group, n), "raftvip_is_leader") == 1]
        assert len(leaders) == 1
        s = scrape(group, "lb2")
        assert value(s, "raftvip_info", cluster="test", member="lb2") == 1
        assert value(s, "raftvip_has_quorum") == 1
        assert value(s, "raftvip_raft_term") >= 1
        assert value(s, "raftvip_raft_commit_index") > 0
        assert value(s, "raftvip_vip_owned", vip="10.20.0.2", service="apex") == 1
        assert value(s, "raftvip_vip_owned", vip="10.20.0.1", service="apex") == 0
        for name in group.members:
            assert value(s, "raftvip_member_alive", member=name) == 1
            assert value(s, "raftvip_member_healthy", member=name, service="apex") == 1
            assert value(s, "raftvip_member_drained", member=name) == 0
        # The cold start placed every VIP on its preferred owner at once: nothing preempted.
        assert value(s, "raftvip_ownership_changes_total", reason="preferred") >= 1
        assert value(s, "raftvip_ownership_changes_total", reason="preempt") == 0
        assert value(s, "raftvip_health_check_results_total", service="apex", result="success") >= 1
        assert value(s, "raftvip_health_check_duration_seconds_count", service="apex") >= 1
        assert 0 <= value(s, "raftvip_last_apply_age_seconds") < 5
        assert "raftvip_zookeeper_connected" not in s
        # A failing check shows up in the counters and, after the move, in ownership.
        group.members["lb3"].health_file.unlink()
        wait_until(
            lambda: (
                value(scrape(group, "lb1"), "raftvip_member_healthy", member="lb3", service="apex")
                == 0
            ),
            5,
            0.1,
        )
        s3 = scrape(group, "lb3")
        assert (
            value(s3, "raftvip_health_check_results_total", service="apex", result="failure") >= 1
        )
        assert value(s3, "raftvip_vip_announced", vip="10.20.0.3", service="apex") == 0
    finally:
        group.close()
