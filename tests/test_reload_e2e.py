"""Live reload on real member processes: `raftvip reload` (and SIGHUP) change services, VIPs,
announce attributes and checks in place; untouched VIPs never move and never go dark.

Members are real processes (raftvip/testing/group.py) whose stdout a SpeakerStub reads and
acks as ExaBGP would; every route line is timestamped there. Each member's own layout is
replicated (format 2): a VIP is placed only on members whose config has it, whoever leads.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftvip.errors import ControlError
from raftvip.testing.group import Group, cli, longest_gap, settled
from raftvip.testing.routewatch import Best, RouteWatch
from raftvip.testing.wait import WaitTimeout, wait_until

pytestmark = pytest.mark.slow

SETTLE = 20.0
# web: two VIPs with their own MED, always healthy (no check).
WEB = """
[[service]]
name = "web"
vips = ["10.40.0.1", "10.40.0.2"]
preferred = { "10.40.0.1" = "lb1", "10.40.0.2" = "lb2" }
preempt_delay = 1

[service.announce]
next_hop = "self"
med = 150
"""
WEB_VIPS = {"10.40.0.1": "lb1", "10.40.0.2": "lb2"}
REMOVED, ADDED = "10.20.1.3", "10.20.9.9"  # apex: lb3's second VIP goes, a VIP for lb2 comes


@pytest.fixture
def group3(tmp_path: Path) -> Iterator[Group]:
    group = Group(tmp_path, size=3, vips_per_member=2, rise=2, extra_services=WEB)
    try:
        group.start_all()
        wait_until(lambda: settled(group) and web_settled(group), SETTLE)
        yield group
    finally:
        group.close()


def web_settled(group: Group) -> bool:
    return all(group.announcers(v) == {m} for v, m in WEB_VIPS.items())


def edit(group: Group, name: str, *replacements: tuple[str, str]) -> None:
    """Rewrite member `name`'s config file, each (old, new) replaced exactly once."""
    path = group.members[name].config
    text = path.read_text()
    for old, new in replacements:
        assert text.count(old) == 1, f"{old!r} in {path}"
        text = text.replace(old, new)
    path.write_text(text)


def med_250() -> tuple[str, str]:
    return ("med = 150", "med = 250")


def new_layout(group: Group, name: str) -> None:
    """apex: REMOVED out, ADDED in (preferred lb2), a changed check; web: MED 150 -> 250."""
    health = group.members[name].health_file
    edit(
        group,
        name,
        (f', "{REMOVED}"]', f', "{ADDED}"]'),
        (f'"{REMOVED}" = "lb3"', f'"{ADDED}" = "lb2"'),
        (f'command = "test -f {health}"', f'command = "test -r {health}"'),
        med_250(),
    )


def route_lines(group: Group, since: float, vip: str | None = None) -> dict[str, list[str]]:
    """member -> the route lines it wrote after `since` (for `vip` only, if given)."""
    lines: dict[str, list[str]] = {}
    for name, member in group.members.items():
        assert member.stub is not None
        with member.stub.lock:
            changes = list(member.stub.changes)
        lines[name] = [c.line for c in changes if c.time > since and vip in (None, c.vip)]
    return lines


def nothing_written(group: Group, since: float) -> bool:
    return all(not lines for lines in route_lines(group, since).values())


def announced_line(group: Group, member: str, vip: str) -> str:
    """The announce line that member's ExaBGP carries for `vip` ("" when none)."""
    stub = group.members[member].stub
    assert stub is not None
    with stub.lock:
        return stub.announced.get(vip, "")


def best_of(group: Group, vips: list[str], frozen: bool = False) -> Best:
    """What a router would see: each VIP's one announcer (several: joined with '+').
    `frozen`: a frozen (SIGSTOP) member's routes count: its ExaBGP keeps them."""
    best: Best = {}
    for vip in vips:
        announcers = sorted(group.announcers(vip, include_dead=frozen))
        best[vip] = "+".join(announcers) if announcers else None
    return best


def test_reload_changes_vips_med_and_check_in_place_and_never_touches_the_rest(
    group3: Group,
) -> None:
    untouched = [v for v in group3.vips if v != REMOVED]  # apex's VIPs that stay
    owners = {v: next(iter(group3.announcers(v))) for v in [*untouched, *WEB_VIPS]}
    leader = group3.leader()
    assert leader is not None
    start = time.monotonic()
    watched = [*untouched, *WEB_VIPS]
    with RouteWatch.running(lambda: best_of(group3, watched), interval=0.005) as watch:
        # The leader last (test_a_rolling_roll_out_... covers the other orders).
        for name in sorted(group3.members, key=lambda n: n == leader):
            new_layout(group3, name)
            result = cli(group3, name, "reload")
            assert result.returncode == 0, result.stderr
            assert f"service apex: VIP {ADDED} added" in result.stdout
            assert f"service apex: VIP {REMOVED} removed" in result.stdout
            assert "service web: announce.med 150 -> 250" in result.stdout
            assert 'service apex: check command "test -f' in result.stdout
            assert "reloaded " in result.stdout and "layout digest" in result.stdout
        wait_until(lambda: group3.announcers(ADDED) == {"lb2"}, 10)
        wait_until(lambda: not group3.announcers(REMOVED), 10)
        wait_until(
            lambda: all(" med 250" in announced_line(group3, o, v) for v, o in WEB_VIPS.items()), 5
        )
    end = time.monotonic()
    assert watch.samples and not watch.errors
    for vip in [*untouched, *WEB_VIPS]:
        # Never dark, never another owner, never two announcers.
        assert watch.owners_seen(vip) == [owners[vip]], vip
        assert watch.longest_dark(vip) == 0.0, vip
        assert longest_gap(group3, vip, start, end) == 0.0, vip
    for vip, owner in WEB_VIPS.items():
        # Re-announced in place: one new announce with the new MED, no withdraw before it.
        assert route_lines(group3, start, vip) == {
            **{n: [] for n in group3.members},
            owner: [f"announce route {vip}/32 next-hop self med 250"],
        }
    for vip in untouched:
        assert route_lines(group3, start, vip) == {n: [] for n in group3.members}, vip
    wait_until(lambda: group3.status("lb1")["vips"][ADDED]["owner"] == "lb2", 5)
    doc = group3.status("lb1")
    assert REMOVED not in doc["vips"]
    assert all(m["healthy"] == {"apex": True, "web": True} for m in doc["members"].values())
    for name in group3.members:
        log = group3.stderr(name)
        assert "config reload (raftvip reload): service web: announce.med 150 -> 250" in log
        # The new apex check went on from the old one's verdict: the service never went down.
        assert "service=apex health checker started (UP)" in log
        assert "local_health=down" not in log


def drift_gauge(group: Group, name: str) -> float:
    with urllib.request.urlopen(group.metrics_url(name), timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("raftvip_config_drift "):
                return float(line.split()[1])
    raise AssertionError("no raftvip_config_drift")


def change_leader(group: Group) -> str:
    """Freeze the leader for 0.4 s until the others have elected another (election timeouts
    0.2-0.5 s: it may take a few tries); the old leader's name. 0.4 s stays below a pause
    (a gap of 0.85 s between two steps of its loop, which steps at least every 0.4 s): it
    neither withdraws nor is expired."""
    old = group.leader()
    assert old is not None
    others = [n for n in group.members if n != old]
    for _ in range(10):
        group.stop_signal(old)
        try:
            deadline = time.monotonic() + 0.4
            while time.monotonic() < deadline:
                if group.status(others[0], 0.5)["leader"] not in (None, old):
                    break
                time.sleep(0.02)
        except ControlError:
            pass
        finally:
            group.cont(old)
        try:
            seen = wait_until(lambda: leaders_seen(group), 5)
        except WaitTimeout:
            continue
        if old not in seen:
            return old
        time.sleep(1.0)  # the old leader kept it: let it settle, freeze it again
    raise AssertionError(f"{old} kept the leadership through 10 freezes of 0.4 s")


def leaders_seen(group: Group) -> set[str] | None:
    """The one leader every member names, as a set (None while they disagree or one names
    none)."""
    seen = {group.status(n, 2.0).get("leader") for n in group.members}
    return {str(s) for s in seen} if len(seen) == 1 and None not in seen else None


def digests(group: Group, via: str) -> dict[str, str]:
    return {n: m["config_digest"] for n, m in group.status(via)["members"].items()}


def test_a_rolling_roll_out_with_a_leader_change_moves_only_what_it_changes(
    tmp_path: Path,
) -> None:
    """Member by member (lb2 first: the new VIP is for it), a leader change in the middle:
    ADDED is announced as soon as lb2 has reloaded, REMOVED until the last member drops it;
    drift shows half-way (status, --json, /metrics) and clears at the end; the leader change
    changes no layout; the VIPs in both configs never go dark and never move."""
    group = Group(tmp_path, size=3, vips_per_member=2, rise=2, extra_services=WEB, metrics=True)
    try:
        group.start_all()
        wait_until(lambda: settled(group) and web_settled(group), SETTLE)
        untouched = [v for v in group.vips if v != REMOVED]
        owners = {v: next(iter(group.announcers(v))) for v in [*untouched, *WEB_VIPS]}
        removed_owner = next(iter(group.announcers(REMOVED)))
        watched = [*untouched, *WEB_VIPS]
        start = time.monotonic()
        with RouteWatch.running(lambda: best_of(group, watched, True), interval=0.005) as watch:
            new_layout(group, "lb2")
            assert cli(group, "lb2", "reload").returncode == 0
            wait_until(lambda: group.announcers(ADDED) == {"lb2"}, 10)
            # Half-way: drift everywhere, REMOVED still in two members' configs.
            assert group.announcers(REMOVED) == {removed_owner}
            wait_until(lambda: group.status("lb1")["config_drift"], 5)
            doc = group.status("lb1")
            assert doc["members"]["lb2"]["config_differs"] is True
            assert doc["vips"][ADDED]["known_to"] == ["lb2"]
            assert doc["vips"][ADDED]["reason"] == "not_in_config"
            assert sorted(doc["vips"][REMOVED]["known_to"]) == ["lb1", "lb3"]
            text = cli(group, "lb3", "status").stdout
            assert "CONFIG DRIFT" in text and "(lb2 differs from the others)" in text
            wait_until(lambda: all(drift_gauge(group, n) == 1.0 for n in group.members), 10)
            before = digests(group, "lb1")
            assert len(set(before.values())) == 2
            # A leader change: the leader frozen for less than a pause (nothing moves).
            change_leader(group)
            assert digests(group, "lb1") == before  # the layout did not follow the leader
            assert group.announcers(ADDED) == {"lb2"}
            for name in ("lb3", "lb1"):
                new_layout(group, name)
                assert cli(group, name, "reload").returncode == 0
                if name == "lb3":
                    time.sleep(0.5)  # REMOVED is still in lb1's config: still announced
                    assert len(group.announcers(REMOVED)) == 1
            wait_until(lambda: not group.announcers(REMOVED), 10)
            wait_until(lambda: not group.status("lb2")["config_drift"], 10)
        end = time.monotonic()
        assert watch.samples and not watch.errors
        for vip in watched:
            lines = route_lines(group, start, vip)
            assert watch.owners_seen(vip) == [owners[vip]], (vip, lines)
            assert watch.longest_dark(vip) == 0.0, (vip, lines, group.stderr(owners[vip]))
            assert longest_gap(group, vip, start, end) == 0.0, (vip, lines)
        assert group.announcers(ADDED) == {"lb2"}
        doc = group.status("lb3")
        assert doc["vips"][ADDED]["known_to"] is None and REMOVED not in doc["vips"]
        assert len(set(digests(group, "lb3").values())) == 1
        wait_until(lambda: all(drift_gauge(group, n) == 0.0 for n in group.members), 10)
        reloads = [
            e
            for e in doc["events"]
            if e["kind"] == "config" and e["detail"].startswith("layout ") and "VIP" in e["detail"]
        ]
        assert {e["subject"] for e in reloads} == set(group.members), reloads
    finally:
        group.close()


@pytest.mark.parametrize("kind", ["invalid values", "invalid TOML"])
def test_an_invalid_file_is_refused_with_every_problem_and_changes_nothing(
    group3: Group, kind: str
) -> None:
    if kind == "invalid values":
        edit(
            group3,
            "lb1",
            ("rise = 2", "rise = 0"),
            ("preempt = true", "preempt = true\nprempt = 1"),
            med_250(),
        )
    else:
        edit(group3, "lb1", med_250(), ('[[service]]\nname = "web"', '[[service]\nname = "web"'))
    before = time.monotonic()
    result = cli(group3, "lb1", "reload")
    assert result.returncode == 1 and result.stdout == ""
    if kind == "invalid values":
        # The member validated the file as check-config does, and said so.
        assert "invalid configuration; nothing changed" in result.stderr
        assert "service[0].check.rise: must be >= 1, got 0" in result.stderr
        assert "service[0].prempt: unknown key (did you mean 'preempt'?)" in result.stderr
        assert "refused: service[0].check.rise" in group3.stderr("lb1")
    else:
        assert "invalid TOML" in result.stderr
    check = cli(group3, "lb1", "check-config")
    assert check.returncode == 1
    for problem in check.stderr.splitlines():
        assert problem in result.stderr
    assert group3.status("lb1")["vips"]["10.40.0.1"]["reason"] == "owner"
    assert nothing_written(group3, before)
    assert " med 150" in announced_line(group3, "lb1", "10.40.0.1")


def test_keys_that_need_a_restart_refuse_the_whole_reload(group3: Group) -> None:
    port = group3.members["lb1"].address.rsplit(":", 1)[1]
    edit(
        group3,
        "lb1",
        ("lease = 1.5", "lease = 2.0"),
        ('name = "test"', 'name = "other"'),
        (f'lb3 = "127.0.0.13:{port}"', f'lb3 = "127.0.0.13:{port}"\nlb4 = "127.0.0.14:{port}"'),
        med_250(),  # a change that could apply live: refused with the rest
    )
    before = time.monotonic()
    result = cli(group3, "lb1", "reload")
    assert result.returncode == 1 and result.stdout == ""
    err = result.stderr
    assert "refused, nothing changed" in err
    assert 'cluster.name: "test" -> "other": needs a restart' in err
    assert "cluster.lease: 1.5 -> 2: needs a restart" in err
    assert "members.lb4: added: membership changes through the group, not a reload: run " in err
    assert f"`raftvip members add lb4 127.0.0.14:{port}`" in err
    assert "announce.med" not in err
    dry = cli(group3, "lb1", "reload", "--dry-run")
    assert dry.returncode == 1 and "needs a restart" in dry.stderr
    assert nothing_written(group3, before)
    assert group3.status("lb1")["cluster"] == "test"


def test_sighup_reloads_the_file_the_process_was_started_with(group3: Group) -> None:
    lb1 = group3.members["lb1"]
    assert lb1.proc is not None and lb1.stub is not None
    start = time.monotonic()
    edit(group3, "lb1", med_250())
    lb1.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: " med 250" in announced_line(group3, "lb1", "10.40.0.1"), 5)
    assert route_lines(group3, start, "10.40.0.1")["lb1"] == [
        "announce route 10.40.0.1/32 next-hop self med 250"
    ]
    # Nothing else was written: every other VIP kept its path, on its owner.
    others = {
        n: [x for x in lines if "10.40.0.1/" not in x]
        for n, lines in route_lines(group3, start).items()
    }
    assert others == {n: [] for n in group3.members}
    assert lb1.running
    log = group3.stderr("lb1")
    assert "config reload (SIGHUP): service web: announce.med 150 -> 250" in log
    assert "config reloaded: 1 change: announce web" in log
    # A bad file on SIGHUP: logged with its key paths, nothing changes, the process runs on.
    edit(group3, "lb1", ("med = 250", "med = -1"))
    lb1.proc.send_signal(signal.SIGHUP)
    problem = "service[1].announce.med: must be between 0 and 4294967295, got -1"
    wait_until(lambda: problem in group3.stderr("lb1"), 5)
    assert "config reload (SIGHUP) refused: " in group3.stderr("lb1")
    assert lb1.running and " med 250" in announced_line(group3, "lb1", "10.40.0.1")
    # `raftvip reload` says the same as SIGHUP did once the file is fixed.
    edit(group3, "lb1", ("med = -1", "med = 150"))
    result = cli(group3, "lb1", "reload")
    assert result.returncode == 0, result.stderr
    assert (
        "service web: announce.med 250 -> 150 (announced VIPs re-announced in place)"
        in result.stdout
    )


def test_dry_run_prints_the_changes_and_applies_nothing(group3: Group) -> None:
    edit(group3, "lb1", med_250())
    before = time.monotonic()
    dry = cli(group3, "lb1", "reload", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[0] == (
        "service web: announce.med 150 -> 250 (announced VIPs re-announced in place)"
    )
    assert dry.stdout.splitlines()[1].startswith("dry run: 1 change would apply; nothing changed")
    assert nothing_written(group3, before)
    assert "config reloaded" not in group3.stderr("lb1")
    # The change is still there to apply: the dry run took nothing.
    applied = cli(group3, "lb1", "reload")
    assert applied.returncode == 0 and applied.stdout.splitlines()[0] == dry.stdout.splitlines()[0]
    again = cli(group3, "lb1", "reload")
    assert again.returncode == 0 and again.stdout == (
        "no change: the running member already has this configuration\n"
    )


def test_a_reload_names_the_file_the_member_runs_with(group3: Group, tmp_path: Path) -> None:
    copy = tmp_path / "copy.toml"
    copy.write_text(group3.members["lb1"].config.read_text())
    result = subprocess.run(
        [sys.executable, "-m", "raftvip", "reload", "-c", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"this member runs with {group3.members['lb1'].config}, not {copy}" in result.stderr
