"""Takeovers beat stale paths on a real router (issue 14): ExaBGP 5 + BIRD 2, hold time 9 s.

The hung LB is lb1, the lowest router ID: with equal AS paths its stale path would stay best
at BIRD until the hold timer drops its session. The new owner's takeover form is one AS
shorter, so it is best as soon as it is announced, while the hung session is still up.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raftvip.testing.bgplab import BirdPath
from raftvip.testing.wait import wait_until
from tests.bench_takeover import HOLD_TIME, takeover_bed

pytestmark = pytest.mark.slow


def test_the_new_owner_wins_at_once_over_a_hung_owner_then_returns_to_steady(
    tmp_path: Path,
) -> None:
    if not os.path.exists("/usr/sbin/bird") and not os.path.exists("/usr/bin/bird"):
        pytest.skip("BIRD 2 is not installed (deploy/test installs it)")
    with takeover_bed(tmp_path, margin=None, trace_routes=True) as bed:  # the default margin
        victim = "lb1"
        vip = bed.vip_of(victim)
        prefix = f"{vip}/32"
        (steady,) = bed.routes()[vip]
        assert steady.as_path == (bed.as_of[victim],) * 2  # steady form: its AS + margin 1

        def new_best() -> BirdPath | None:
            best = [p for p in bed.routes().get(vip, []) if p.best]
            return best[0] if best and bed.member_of(best[0]) != victim else None

        before = len(bed.bird.route_trace())
        bed.inject(victim, "hang")
        try:
            moved = wait_until(new_best, 3 * HOLD_TIME, 0.002, what="another LB's path best")
            # Before the hold timer expired: the hung session is up, its stale path still
            # in BIRD's table, and the new owner's takeover form is best regardless.
            assert bed.bird.protocols()[victim] == "Established"
            stale = [p for p in bed.routes()[vip] if bed.member_of(p) == victim]
            assert [p.as_path for p in stale] == [steady.as_path]
            new_owner = bed.member_of(moved)
            assert new_owner is not None
            assert moved.as_path == (bed.as_of[new_owner],)  # the takeover form
            doc = bed.group.status(new_owner, timeout=2.0)
            assert doc["vips"][vip]["took_over_from"] == victim
            assert "takeover form until" in doc["vips"][vip]["path"]

            # Once the old path must be gone (hold time after the expiry), the steady form.
            def back_to_steady() -> bool:
                paths = [p for p in bed.routes().get(vip, []) if bed.member_of(p) == new_owner]
                return bool(paths) and paths[0].as_path == (bed.as_of[new_owner],) * 2

            wait_until(back_to_steady, 3 * HOLD_TIME, 0.01, what="the steady form")
            (path,) = [p for p in bed.routes()[vip] if bed.member_of(p) == new_owner]
            assert path.best
        finally:
            bed.heal(victim, "hang")
        # In place: BIRD saw the new owner's path added (best), then replaced, never removed.
        trace = bed.bird.route_trace()[before:]
        ours = [e for e in trace if e.prefix == prefix and e.protocol == new_owner]
        assert [e.action for e in ours[:2]] == ["added", "added"]
        assert ours[0].best  # the takeover form became best on arrival
