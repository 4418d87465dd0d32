"""The benchmark's tables render from recorded figures (a crash there loses a whole run)."""

from __future__ import annotations

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
