"""The benchmark's tables render from recorded figures (a crash there loses a whole run)."""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from tests import bench
from tests.bench_lifecycle import BASELINE, ColdStart, LifecycleResults, lifecycle_table


def test_lifecycle_table_shows_now_beside_before() -> None:
    res = LifecycleResults(
        cold_now=[ColdStart(0.94, 0, 1), ColdStart(1.29, 0, 1)],
        cold_before=[ColdStart(0.93, 2, 3), ColdStart(0.91, 2, 3)],
        stop_leave=[0.0, 0.0],
        stop_sigterm=[0.007, 0.006],
        restart_now=[(0.0, 0, True), (0.0, 0, True)],
        restart_kill=[(0.0, 2, True), (0.0, 2, True)],
    )
    text = "\n".join(lifecycle_table(res))
    assert "| cold start: owner moves after that | 0 / 0 | 2 / 2 |" in text
    assert "| cold start: most VIPs on one LB at once | 1 / 1 | 3 / 3 |" in text
    assert "| planned stop: longest time without a path | 0 ms / 0 ms | 6 ms / 7 ms |" in text
    assert f"raftvip at {BASELINE}" in text
    assert "changed in 2/2 trials" in text


def test_lifecycle_table_without_a_baseline_says_so() -> None:
    res = LifecycleResults(cold_now=[ColdStart(1.0, 0, 1)], notes=["no git history here"])
    text = "\n".join(lifecycle_table(res))
    assert "| cold start: owner moves after that | 0 / 0 | - |" in text
    assert "- no git history here" in text


def _samples(values: list[float], victim: str = "lb2") -> list[bench.Sample]:
    return [bench.Sample(v, v, 0.0, victim) for v in values]


def test_a_failed_part_keeps_the_figures_of_the_others(tmp_path: Path) -> None:
    def broken() -> None:
        raise TimeoutError("not settled after 90s: router: 10.20.0.1 has 2 paths")

    failed = bench.run_part("scale", broken)
    assert failed.result is None
    assert failed.error is not None
    assert failed.error.startswith("TimeoutError: not settled after 90s")
    assert "test_bench_tables.py" in failed.error  # where it was raised
    fine = bench.run_part(
        "failover",
        lambda: bench.FailoverResults(raftvip={"owner crash": _samples([0.05, 0.07])}),
    )
    assert fine.error is None
    args = argparse.Namespace(command_line="python -m tests.bench", load_at_start="0.00")
    now = datetime.datetime.now(datetime.UTC)
    text = bench.render(args, [fine, failed], now, 60.0, tmp_path / "BENCHMARKS.md")
    assert "| owner crash | 2 | 60 ms | 70 ms | 70 ms |" in text
    assert "### Scale\n\n**This part failed**" in text
    assert "TimeoutError: not settled after 90s" in text


def test_the_failover_picture_shows_every_system(tmp_path: Path) -> None:
    res = bench.FailoverResults(
        raftvip={"owner crash": _samples([0.05, 0.06]), "owner hang": _samples([1.1, 2.9])},
        healthcheck=_samples([0.2, 0.21]),
        exazk={10.0: {"owner crash": _samples([9.5]), "owner hang": _samples([9.7])}},
    )
    series = bench.failover_series(res)
    assert set(series["owner crash"]) == {"raftvip", "ExaZK-like 10 s"}
    assert "ExaBGP healthcheck" not in series["owner crash"]
    lines = bench.failover_picture(res, tmp_path / "BENCHMARKS.md")
    png = tmp_path / "benchmarks-failover.png"
    assert lines == [f"![Failover time per fault, raftvip and each baseline]({png.name})"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_idle_table_shows_medians_with_the_leader_apart() -> None:
    from tests.bench_idle import IdleResult, IdleRow, idle_table

    row = IdleRow("raftvip", 3)
    row.add(2.0, [1.0, 1.2])
    row.add(3.0, [1.1, 1.3])
    row.add(2.5, [0.9, 1.0])
    hc = IdleRow("exabgp healthcheck", 1)
    hc.add(None, [0.0])
    text = "\n".join(idle_table(IdleResult(30.0, 3, [row, hc])))
    assert "| raftvip | 3 | 2.50 | 1.10 | 1.20 | 1.47 |" in text
    assert "| exabgp healthcheck | 1 | - | 0.00 | 0.00 | 0.00 |" in text
    assert "median of 3 windows" in text
