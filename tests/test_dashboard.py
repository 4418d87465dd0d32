"""deploy/grafana/raftvip.json against a real Prometheus scraping a live 3-member group.

The group runs with metrics and a ZooKeeper mirror (a real ZooKeeper, raftvip/testing/zk.py). A
failing health check on lb2 moves its VIP away and back, so every panel has something to
show. Every target's PromQL is then evaluated through Prometheus' HTTP API with Grafana's
variables substituted the way Grafana would, as an instant and as a range query, and must
return a well-formed, non-empty result. `promtool check metrics` must accept every member's
/metrics.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raftvip.testing.group import Group, settled
from raftvip.testing.prometheus import (
    PROMTOOL,
    SCRAPE_INTERVAL,
    Prometheus,
    requires_prometheus,
    running_prometheus,
)
from raftvip.testing.wait import wait_until
from raftvip.testing.zk import running_zookeeper, zookeeper_available

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "raftvip.json"
MOVED_VIP = "10.20.0.2"  # lb2's preferred VIP
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def load_dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that queries, including those inside collapsed rows."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def substitute(expr: str, variables: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise AssertionError(f"unknown variable ${name} in {expr!r}")
        return variables[name]

    return _VARIABLE.sub(value, expr)


# --- the document itself ----------------------------------------------------------------------


def test_dashboard_is_a_grafana_dashboard_on_a_prometheus_datasource_variable() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] == "raftvip" and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    ids += [inner["id"] for p in dashboard["panels"] for inner in p.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        where = f"panel {panel['title']!r}"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert panel["targets"], f"{where} has no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), where
        for target in panel["targets"]:
            assert target["expr"].strip(), where
            assert target["datasource"] == panel["datasource"], where
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, where
    for name in ("job", "cluster"):
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


# --- against a live group ---------------------------------------------------------------------


def scrape_text(group: Group, name: str) -> str:
    with urllib.request.urlopen(group.metrics_url(name), timeout=5) as response:
        return str(response.read().decode())


def targets_up(prom: Prometheus, count: int) -> bool:
    doc = prom.query(f'up{{job="{prom.job}"}} == 1')
    return doc.get("status") == "success" and len(doc["data"]["result"]) == count


def sees(prom: Prometheus, expr: str) -> bool:
    doc = prom.query(expr)
    return doc.get("status") == "success" and bool(doc["data"]["result"])


def template_values(prom: Prometheus, query: str, variables: dict[str, str]) -> list[str]:
    """A `label_values(selector, label)` variable, answered the way Grafana asks Prometheus."""
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", substitute(query, variables))
    assert match, f"unsupported variable query {query!r}"
    return prom.label_values(match.group(2), match.group(1))


def well_formed(doc: dict[str, Any], result_type: str) -> str | None:
    """None when `doc` is a successful, non-empty result of `result_type`, else what is wrong."""
    if doc.get("status") != "success":
        return f"status {doc.get('status')}: {doc.get('errorType')} {doc.get('error')}"
    data = doc["data"]
    if data.get("resultType") != result_type:
        return f"resultType {data.get('resultType')!r}, expected {result_type!r}"
    series = data["result"]
    if not series:
        return "no series"
    values: list[float] = []
    for one in series:
        if not isinstance(one.get("metric"), dict):
            return f"series without labels: {one}"
        points = [one["value"]] if result_type == "vector" else one["values"]
        values += [float(point[1]) for point in points]
    if not any(math.isfinite(v) for v in values):
        return f"no finite value in {series}"
    return None


def evaluate(prom: Prometheus, expr: str, start: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The instant result at now and the range result since `start`, once both are good."""
    outcome: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    problems: list[str] = []

    def good() -> bool:
        now = time.time()
        instant = prom.query(expr, at=now)
        # Steps run from the range's start: align it so that the last step is `now`.
        first = now - math.floor((now - start) / SCRAPE_INTERVAL) * SCRAPE_INTERVAL
        ranged = prom.query_range(expr, first, now, SCRAPE_INTERVAL)
        outcome["last"] = (instant, ranged)
        problems[:] = [
            f"{kind}: {problem}"
            for kind, problem in (
                ("instant", well_formed(instant, "vector")),
                ("range", well_formed(ranged, "matrix")),
            )
            if problem
        ]
        return not problems

    try:
        # A few scrape intervals of slack: a series can miss one scrape on a busy machine.
        wait_until(good, 10 * SCRAPE_INTERVAL, 0.5)
    except TimeoutError:
        raise AssertionError(f"{expr}\n  " + "\n  ".join(problems)) from None
    return outcome["last"]


def series_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["data"]["result"])


def panel_expr(dashboard: dict[str, Any], title: str, ref_id: str) -> str:
    [panel] = [p for p in panels(dashboard) if p["title"] == title]
    [target] = [t for t in panel["targets"] if t["refId"] == ref_id]
    return str(target["expr"])


def total(doc: dict[str, Any]) -> float:
    return sum(float(s["value"][1]) for s in series_of(doc)) if doc["status"] == "success" else -1


def max_value(series: dict[str, Any]) -> float:
    points = series["values"] if "values" in series else [series["value"]]
    return max(float(p[1]) for p in points)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[Group, Prometheus]]:
    """A 3-member group with metrics and a ZooKeeper mirror, scraped by Prometheus."""
    with running_zookeeper(tmp_path / "zookeeper") as zk:
        root = tmp_path / "group"
        root.mkdir()
        group = Group(
            root,
            size=3,
            metrics=True,
            zookeeper=f'hosts = ["{zk.hosts}"]\nsession_timeout = 2\n',
        )
        try:
            group.start_all()
            wait_until(lambda: settled(group), 30)
            targets = [group.metrics_url(n).split("/")[2] for n in group.members]
            with running_prometheus(tmp_path / "prometheus", targets) as prom:
                wait_until(lambda: targets_up(prom, len(targets)), 30, 0.2)
                yield group, prom
        finally:
            group.close()


@requires_prometheus
@pytest.mark.skipif(
    not zookeeper_available() and not os.environ.get("CI"),
    reason="ZooKeeper (Debian package `zookeeper`) is not installed",
)
@pytest.mark.slow
def test_every_panel_query_returns_data_from_a_live_group(live: tuple[Group, Prometheus]) -> None:
    group, prom = live
    for name in group.members:
        check = subprocess.run(
            [PROMTOOL, "check", "metrics"],
            input=scrape_text(group, name),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert check.returncode == 0, f"{name}: {check.stdout}{check.stderr}"

    # lb2's check fails: its VIP moves to another member; then lb2 is healthy again and,
    # after preempt_delay, takes its VIP back.
    lb2 = group.members["lb2"]
    lb2.health_file.unlink()
    wait_until(lambda: bool(group.announcers(MOVED_VIP) - {"lb2"}), 15)
    taker = next(iter(group.announcers(MOVED_VIP) - {"lb2"}))
    wait_until(lambda: sees(prom, f'raftvip_vip_owned{{vip="{MOVED_VIP}"}} == 1'), 15, 0.2)
    lb2.health_file.touch()
    wait_until(lambda: settled(group), 20)
    lb2_instance = group.metrics_url("lb2").split("/")[2]
    wait_until(
        lambda: sees(
            prom, f'raftvip_vip_owned{{vip="{MOVED_VIP}", instance="{lb2_instance}"}} == 1'
        ),
        15,
        0.2,
    )

    dashboard = load_dashboard()
    variables: dict[str, str] = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "datasource":
            variables[variable["name"]] = "prometheus-under-test"
            continue
        values = template_values(prom, variable["query"]["query"], variables)
        assert values, f"variable {variable['name']} has no value"
        variables[variable["name"]] = values[0]
    assert variables["job"] == prom.job and variables["cluster"] == "test"
    now = time.time()
    # Grafana: $__rate_interval = max($__interval + scrape interval, 4 * scrape interval),
    # and $__interval is the scrape interval at this range; $__range is the time range.
    variables["__rate_interval"] = f"{4 * SCRAPE_INTERVAL}s"
    variables["__interval"] = f"{SCRAPE_INTERVAL}s"
    variables["__range"] = f"{math.ceil(now - prom.started_at)}s"

    results: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for panel in panels(dashboard):
        for target in panel["targets"]:
            expr = substitute(target["expr"], variables)
            try:
                results.setdefault(panel["title"], []).append(evaluate(prom, expr, prom.started_at))
            except AssertionError as exc:
                raise AssertionError(f"panel {panel['title']!r} {target['refId']}: {exc}") from None

    # What the panels show is what happened.
    leader = group.leader()
    [(instant, _)] = results["Leader"]
    assert [s["metric"]["member"] for s in series_of(instant)] == [leader]
    quorum, scraped = results["Members with quorum"]
    assert [float(s["value"][1]) for s in series_of(quorum[0])] == [3.0]
    assert [float(s["value"][1]) for s in series_of(scraped[0])] == [3.0]
    [(_, owners)] = results["Owner per VIP"]
    moved = {s["metric"]["member"] for s in series_of(owners) if s["metric"]["vip"] == MOVED_VIP}
    assert moved == {"lb2", taker}
    [(_, changes)] = results["Ownership changes by reason"]
    seen = {s["metric"]["reason"]: max_value(s) for s in series_of(changes)}
    assert seen.get("failover", 0) > 0 and seen.get("preempt", 0) > 0, seen
    [(_, flips)] = results["Announce / withdraw per member"]
    withdrawn = [
        s for s in series_of(flips) if s["metric"] == {"member": "lb2", "action": "withdraw"}
    ]
    assert withdrawn and max_value(withdrawn[0]) >= 1
    [(_, failures)] = results["Health-check failures"]
    assert any(s["metric"]["member"] == "lb2" and max_value(s) > 0 for s in series_of(failures))
    [(connected, _)] = results["ZooKeeper connected"]
    assert {s["metric"]["member"]: float(s["value"][1]) for s in series_of(connected)} == {
        n: 1.0 for n in group.members
    }
    # One ephemeral znode per VIP once the handover back to lb2 has reached ZooKeeper.
    held = substitute(panel_expr(dashboard, "ZooKeeper znodes", "A"), variables)
    wait_until(lambda: total(prom.query(held)) == len(group.vips), 10 * SCRAPE_INTERVAL, 0.5)
