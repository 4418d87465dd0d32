"""RouteWatch's judgements on recorded samples (the thread itself is a plain poll loop)."""

from __future__ import annotations

from raftvip.testing.routewatch import Best, RouteWatch
from raftvip.testing.wait import wait_until


def watch(*samples: tuple[float, Best]) -> RouteWatch:
    w = RouteWatch(lambda: {})
    w.samples = list(samples)
    return w


def test_longest_dark_runs_from_the_first_sample_without_a_path_to_the_next_with_one() -> None:
    w = watch(
        (0.0, {"v": "lb1"}),
        (1.0, {"v": None}),
        (1.5, {"v": None}),
        (2.0, {"v": "lb2"}),
        (3.0, {"v": None}),
        (3.2, {"v": "lb2"}),
    )
    assert w.dark_intervals("v") == [(1.0, 2.0), (3.0, 3.2)]
    assert w.longest_dark("v") == 1.0
    assert w.owners_seen("v") == ["lb1", "lb2"]


def test_a_vip_still_dark_at_the_end_counts_up_to_the_last_sample() -> None:
    w = watch((0.0, {"v": "lb1"}), (1.0, {"v": None}), (4.0, {"v": None}))
    assert w.longest_dark("v") == 3.0
    assert watch((0.0, {"v": "lb1"})).longest_dark("v") == 0.0


def test_moves_count_changes_of_lb_not_gaps() -> None:
    w = watch(
        (0.0, {"a": "lb1", "b": None}),
        (1.0, {"a": None, "b": "lb1"}),
        (2.0, {"a": "lb1", "b": "lb2"}),  # a: gap, same LB; b: lb1 -> lb2
        (3.0, {"a": "lb3", "b": "lb2"}),  # a: lb1 -> lb3
    )
    assert w.moves() == 2
    assert w.moves(since=2.5) == 1


def test_first_full_and_peak() -> None:
    w = watch(
        (0.0, {"a": "lb1", "b": None, "c": None}),
        (1.0, {"a": "lb1", "b": "lb1", "c": None}),
        (2.0, {"a": "lb1", "b": "lb2", "c": "lb3"}),
    )
    assert w.first_full(["a", "b", "c"]) == 2.0
    assert w.first_full(["a", "b"]) == 1.0
    assert w.peak() == 2


def test_the_thread_samples_and_records_errors() -> None:
    calls: list[Best | Exception] = [{"v": "lb1"}, ValueError("bird went away"), {"v": None}]

    def best() -> Best:
        item: Best | Exception = calls.pop(0) if calls else {"v": None}
        if isinstance(item, Exception):
            raise item
        return item

    with RouteWatch.running(best, interval=0.0) as w:
        wait_until(lambda: len(w.samples) >= 3, 10, 0.001, what="three samples")
    assert w.samples[0][1] == {"v": "lb1"}
    assert w.errors == ["ValueError: bird went away"]
