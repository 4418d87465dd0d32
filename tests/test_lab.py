"""The lab (deploy/labctl.py) end to end, and the deploy/ examples.

Real BIRD routers (3 ToRs + aggregation), real ExaBGP speakers and real raftvip members on
loopback. Each lab test uses its own 127.N block and a lab directory under tmp_path, so a
developer's running `deploy/lab` (127.0.x, <repo>/.lab) is never touched, and tears everything
down even when an assertion fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploy.labctl import (
    RELOAD_ADDED_VIP,
    Lab,
    LabState,
    Proc,
    ReloadResult,
    Stage,
    Topology,
    VipTrace,
    VipView,
    alive,
    check_ports,
    children,
    lab_layout,
    main,
    reload_layout,
    rollout,
)
from raftvip.testing.bgplab import LabError, exabgp_binary
from raftvip.testing.routewatch import Best, RouteWatch
from tests.exabgp_versions import EXABGP_VERSIONS

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
IS_ROOT = os.getuid() == 0
HAVE_BIRD = shutil.which("bird") is not None or os.access("/usr/sbin/bird", os.X_OK)
# Root binds BGP's real port on the lab's own addresses; anyone else a high one.
BGP_PORT = 179 if IS_ROOT else 10179

needs_bird = pytest.mark.skipif(
    not HAVE_BIRD and not IS_ROOT, reason="BIRD 2 is not installed (apt-get install bird2)"
)


def _require_bird() -> None:
    if not HAVE_BIRD:  # as root (CI) a missing BIRD is a broken setup, not a reason to skip
        pytest.fail("BIRD 2 is not installed: run deploy/test (it apt-get installs bird2)")


def every_pid(lab: Lab) -> list[Proc]:
    """Everything the lab runs now: recorded processes and ExaBGP's current helpers."""
    state = lab.load()
    assert state is not None
    procs = list(state.procs.values())
    for name, proc in state.procs.items():
        if name.endswith(".exabgp"):
            procs += children(proc.pid)
    return procs


@pytest.fixture
def lab_factory(tmp_path: Path) -> Iterator[list[Lab]]:
    """Labs created by a test; each is brought down at teardown, whatever happened (its files
    are copied to tmp_path/lab-logs-N first)."""
    labs: list[Lab] = []
    try:
        yield labs
    finally:
        for index, lab in enumerate(labs):
            if lab.dir.exists():  # keep configs and logs for a post-mortem
                shutil.copytree(
                    lab.dir,
                    tmp_path / f"lab-logs-{index}",
                    ignore=shutil.ignore_patterns("*.ctl", "*.sock", "*.journal*"),
                )
            lab.down(quiet=True)


@needs_bird
@pytest.mark.slow
def test_seed_scenario_healthcheck_vs_raftvip(tmp_path: Path, lab_factory: list[Lab]) -> None:
    _require_bird()
    topology = Topology(prefix="127.61", bgp_port=BGP_PORT)
    lab = Lab(tmp_path / "lab", topology)
    lab_factory.append(lab)
    vips = topology.vips
    spread = {topology.vip(rack): topology.lb(rack) for rack in topology.rack_numbers}

    result = lab.seed(keep=True)

    # (a) healthcheck: each ToR sees its LB's MEDs, its own VIP best (100), the others 101/102...
    for rack in topology.rack_numbers:
        meds = result.tor_meds[f"tor{rack}"]
        assert meds[topology.vip(rack)] == 100
        assert sorted(m for m in meds.values() if m is not None) == [100, 101, 102]
    # ...the aggregation router holds a path from every LB for every VIP, with no MED left...
    assert result.healthcheck_paths == dict.fromkeys(vips, 3)
    assert all(med is None for meds in result.healthcheck_agg_meds.values() for med in meds)
    # ...and sends every VIP to the same LB.
    assert None not in result.healthcheck.values()
    assert len(set(result.healthcheck.values())) == 1

    # (b) raftvip: one VIP per LB, one best path each; spread again after a crash + recovery.
    assert result.raftvip == spread
    assert result.raftvip_best_paths == dict.fromkeys(vips, 1)
    victim_vip = topology.vip(2)
    assert result.failover.vip == victim_vip
    assert result.after_failure[victim_vip] not in (None, "lb2")
    assert {v: lb for v, lb in result.after_failure.items() if v != victim_vip} == {
        v: lb for v, lb in spread.items() if v != victim_vip
    }
    assert result.after_recovery == spread
    routes = lab.agg().routes()
    assert all(sum(p.best for p in routes[f"{vip}/32"]) == 1 for vip in vips)

    procs = every_pid(lab)
    assert lab.down(quiet=True)
    assert not any(alive(p) for p in procs)


@needs_bird
@pytest.mark.slow
def test_up_fail_heal_down(tmp_path: Path, lab_factory: list[Lab]) -> None:
    _require_bird()
    lab_dir = tmp_path / "lab"
    topology = Topology(prefix="127.62", bgp_port=BGP_PORT)
    lab = Lab(lab_dir, topology)
    lab_factory.append(lab)
    state = lab.up(quiet=True)
    assert state.up_seconds is not None
    assert lab.spread()
    with pytest.raises(LabError, match="already running"):
        Lab(lab_dir, topology).up(quiet=True)

    # Every later command is a new invocation: it works from state.json alone.
    assert main(["--lab-dir", str(lab_dir), "status"]) == 0
    later = Lab(lab_dir)

    crashed = later.fail("lb2", "crash", quiet=True)
    assert crashed.vip == "10.20.255.2" and crashed.new_lb in ("lb1", "lb3")
    dead = later.running().procs["lb2.exabgp"]
    assert not alive(dead)
    assert later.best_lbs()["10.20.255.2"] == crashed.new_lb
    assert later.heal("lb2", quiet=True) is not None
    assert later.spread()
    assert later.running().procs["lb2.exabgp"] != dead  # restarted

    hung = later.fail("lb3", "hang", quiet=True)
    assert hung.new_lb in ("lb1", "lb2")
    later.heal("lb3", quiet=True)
    assert later.spread()

    assert main(["--lab-dir", str(lab_dir), "fail", "lb2", "check"]) == 0
    assert Lab(lab_dir).best_lbs()["10.20.255.2"] in ("lb1", "lb3")
    assert main(["--lab-dir", str(lab_dir), "heal", "lb2"]) == 0
    assert later.spread()

    procs = every_pid(lab)
    assert len(procs) >= 4 + 3 * 3  # 4 BIRDs, per LB: health server, ExaBGP, raftvip
    assert main(["--lab-dir", str(lab_dir), "down"]) == 0
    assert not any(alive(p) for p in procs)
    assert not lab_dir.exists()
    assert main(["--lab-dir", str(lab_dir), "down"]) == 0  # twice is safe
    check_ports(topology)  # every port is free again (LabError otherwise)


@needs_bird
@pytest.mark.slow
def test_planned_stop_and_restart_at_the_aggregation_router(
    tmp_path: Path, lab_factory: list[Lab]
) -> None:
    """`deploy/lab stop` (raftvip leave, then SIGTERM to ExaBGP, as deploy/'s unit does) and
    `deploy/lab restart` (raftvip restart): the network never loses a path to the VIP, and a
    restart moves nothing while the helper's pid changes."""
    _require_bird()
    lab_dir = tmp_path / "lab"
    lab = Lab(lab_dir, Topology(prefix="127.66", bgp_port=BGP_PORT))
    lab_factory.append(lab)
    lab.up(quiet=True)

    stopped = lab.stop("lb2", quiet=True)
    assert stopped.dark == 0.0 and stopped.samples > 10
    assert stopped.owners[0] == "lb2" and stopped.owners[-1] in ("lb1", "lb3")
    assert not alive(lab.running().procs["lb2.exabgp"])
    assert lab.running().faults["lb2"] == "stopped"
    with pytest.raises(LabError, match="heal lb2"):
        lab.restart("lb2", quiet=True)
    lab.heal("lb2", quiet=True)  # ExaBGP again: lb2 rejoins and takes 10.20.255.2 back
    assert lab.spread()

    restarted = lab.restart("lb3", quiet=True)
    assert restarted.dark == 0.0 and restarted.moves == 0 and restarted.owners == ["lb3"]
    assert restarted.helper is not None and restarted.helper[0] != restarted.helper[1]
    assert lab.running().procs["lb3.helper"].pid == restarted.helper[1]

    # The commands as an operator types them; the "before" variants work too.
    assert main(["--lab-dir", str(lab_dir), "stop", "lb1", "--no-leave"]) == 0
    assert main(["--lab-dir", str(lab_dir), "heal", "lb1"]) == 0
    assert main(["--lab-dir", str(lab_dir), "restart", "lb1", "--kill"]) == 0
    assert lab.spread()


@needs_bird
@pytest.mark.slow
def test_backup_paths_at_the_aggregation_router(tmp_path: Path, lab_factory: list[Lab]) -> None:
    """`up --backup-prepend 2`: one best path per VIP (the owner's) plus prepended backups via
    the other ToRs; after a crash the router falls back to a backup before the group has
    reassigned the VIP, and never lacks a best path."""
    _require_bird()
    lab_dir = tmp_path / "lab"
    up = ["up", "--prefix", "127.65", "--bgp-port", str(BGP_PORT), "--backup-prepend", "2"]
    assert main(["--lab-dir", str(lab_dir), *up]) == 0
    lab = Lab(lab_dir)
    lab_factory.append(lab)
    t = lab.topology
    assert t.backup_prepend == 2
    assert "backup_prepend = 2" in lab.config_path(1).read_text()
    routes = lab.agg().routes()
    for rack in t.rack_numbers:
        paths = routes[f"{t.vip(rack)}/32"]
        (best,) = [p for p in paths if p.best]
        assert best.as_path == (t.tor_as(rack), t.lb_as(rack))  # the owner, via its ToR
        backups = sorted((p for p in paths if not p.best), key=lambda p: p.as_path)
        assert [p.as_path for p in backups] == [
            (t.tor_as(r), t.lb_as(r), t.lb_as(r), t.lb_as(r)) for r in t.rack_numbers if r != rack
        ]
    assert "backup (65101 65011 65011 65011)" in lab.agg_table(lab.running())

    # kill -9 of lb2's ExaBGP and raftvip (by PID; the helper has its own process group).
    state = lab.running()
    victim, vip = t.lb(2), t.vip(2)
    procs = [state.procs["lb2.exabgp"], *children(state.procs["lb2.exabgp"].pid)]
    assert len(procs) == 2
    for proc in procs:
        os.kill(proc.pid, signal.SIGKILL)
    began = time.monotonic()
    backup_best: float | None = None
    reassigned: float | None = None
    samples = without_best = 0
    agg = lab.agg()
    while reassigned is None and time.monotonic() - began < 10:
        paths = agg.routes().get(f"{vip}/32", [])
        now = time.monotonic() - began
        samples += 1
        best_paths = [p for p in paths if p.best and p.reachable]
        if not best_paths:
            without_best += 1
        elif backup_best is None and t.lb_of_path(best_paths[0]) != victim:
            backup_best = now
        if any(t.lb_of_path(p) not in (None, victim) and not t.is_backup(p) for p in paths):
            reassigned = now  # another LB announces it unprepended: the group reassigned it
        time.sleep(0.001)
    assert reassigned is not None, "the group never reassigned the VIP"
    assert backup_best is not None and backup_best < reassigned
    assert without_best == 0 and samples > 5
    for proc in procs:
        assert not alive(proc)


@needs_bird
@pytest.mark.slow
def test_reload_rolls_a_change_out_lb_by_lb_and_back(
    tmp_path: Path, lab_factory: list[Lab]
) -> None:
    """`deploy/lab reload`: a VIP added (preferred lb1), lb3's VIP removed, the MED and the
    check changed, one LB at a time with `raftvip reload`. At the aggregation router the VIPs
    in both configs never lose their path nor move, the added one comes with lb1's reload and
    stays on lb1, the removed one goes with lb3's; `raftvip status` drifts half-way only.
    `reload --back` restores the lab's own layout, so the step can run again."""
    _require_bird()
    lab_dir = tmp_path / "lab"
    t = Topology(prefix="127.67", bgp_port=BGP_PORT)
    lab = Lab(lab_dir, t)
    lab_factory.append(lab)
    lab.up(quiet=True)
    seen: list[str] = []

    result = lab.reload(on_stage=lambda stage: seen.append(stage.label))

    assert seen == [
        "before the roll-out",
        "after lb1's reload",
        "after lb2's reload",
        "after lb3's reload",
        "after the roll-out",
    ]
    assert result.order == ("lb1", "lb2", "lb3") and result.stopped is None
    assert result.kept == (t.vip(1), t.vip(2))
    assert (result.added, result.removed) == ((RELOAD_ADDED_VIP,), (t.vip(3),))
    assert result.problems() == []
    assert result.samples > 100 and result.sampler_errors == ()
    for rack, vip in enumerate(result.kept, start=1):
        trace = result.traces[vip]
        assert trace.owners == (t.lb(rack),) and trace.dark == ()  # never moved, never dark
        before, after = result.before.view[vip], result.after.view[vip]
        assert before.lb == after.lb == t.lb(rack)
        # The new MED reached the network with that LB's own reload. The ToR is where it
        # shows: a ToR passes no MED on to the aggregation router (another AS).
        assert (before.tor_med, after.tor_med) == (100, 200)
        assert after.agg_med is None
        assert result.med_changed_with(vip) == t.lb(rack)
    added, removed = result.appeared(RELOAD_ADDED_VIP), result.disappeared(t.vip(3))
    assert added is not None and added.lb == "lb1"
    assert result.traces[RELOAD_ADDED_VIP].owners == ("lb1",)
    assert result.after.view[RELOAD_ADDED_VIP].lb == "lb1"
    assert removed is not None and removed.lb == "lb3"
    assert result.traces[t.vip(3)].owners == ("lb3",)  # it never moved before it went
    assert result.after.view[t.vip(3)].lb is None
    routes = lab.agg().routes()
    assert f"{t.vip(3)}/32" not in routes and f"{RELOAD_ADDED_VIP}/32" in routes
    # Every reload printed its changes; status drifted while the layouts differed.
    first = result.steps[0]
    assert f"service apex: VIP {RELOAD_ADDED_VIP} added" in first.output
    assert "service apex: announce.med 100 -> 200 (announced VIPs re-announced in place)" in (
        first.output
    )
    assert any(line.startswith("service apex: check http ") for line in first.output)
    assert "+med = 200" in first.edit
    assert [stage.drift for stage in result.stages] == [False, True, True, False, False]
    assert any(
        RELOAD_ADDED_VIP in line and "[only in the config of lb1]" in line
        for line in first.status_lines
    )
    assert any(line.startswith("CONFIG DRIFT") for line in first.status_lines)
    assert result.after.status_lines == ()
    assert RELOAD_ADDED_VIP in lab.agg_table(lab.running())  # `deploy/lab status` shows it

    # The changed layout stays until rolled back: the step refuses to run twice, and the
    # commands that expect the lab's own layout say what to do.
    with pytest.raises(LabError, match="reload --back"):
        lab.reload()
    with pytest.raises(LabError, match="reload --back"):
        lab.fail("lb2", "crash", quiet=True)

    assert main(["--lab-dir", str(lab_dir), "reload", "--back"]) == 0
    assert lab.layouts(lab.running()) == dict.fromkeys(t.lb_names, lab_layout(t))
    assert lab.spread()
    assert f"{RELOAD_ADDED_VIP}/32" not in lab.agg().routes()
    with pytest.raises(LabError, match="nothing to roll back"):
        lab.reload(back=True)


def _rollout_seen(change: dict[str, Callable[[float], str | None]]) -> ReloadResult:
    """A forward roll-out (lb1, lb2, lb3 reloaded at 1.0, 2.0, 3.0 s, each returning 0.2 s
    later) whose aggregation router was polled every 10 ms from 0.5 s to 4 s and saw each
    VIP where the lab puts it, except where `change` says otherwise."""
    t = Topology()
    old, new, order = rollout(t)
    removed, added = t.vip(3), RELOAD_ADDED_VIP
    expected: dict[str, Callable[[float], str | None]] = {
        t.vip(1): lambda now: "lb1",
        t.vip(2): lambda now: "lb2",
        removed: lambda now: "lb3" if now < 3.1 else None,
        added: lambda now: "lb1" if now >= 1.1 else None,
        **change,
    }
    watch = RouteWatch(lambda: {})
    for tick in range(50, 400):
        now = tick / 100
        best: Best = {vip: where(now) for vip, where in expected.items()}
        watch.samples.append((now, best))

    def view(now: float, med: int) -> dict[str, VipView]:
        return {vip: VipView(where(now), tor_med=med) for vip, where in expected.items()}

    def stage(label: str, now: float, med: int, lb: str | None = None) -> Stage:
        return Stage(
            label,
            view(now, med),
            False,
            "lb1",
            "",
            (),
            "",
            lb=lb,
            began=now - 0.25,
            returned=now - 0.05,
        )

    steps = [stage(f"after {lb}'s reload", 1.25 + i, 200, lb) for i, lb in enumerate(order)]
    return ReloadResult(
        back=False,
        old=old,
        new=new,
        order=order,
        stages=(stage("before the roll-out", 0.5, 100), *steps, stage("after", 3.99, 200)),
        traces={vip: VipTrace.of(watch, vip) for vip in expected},
        samples=len(watch.samples),
    )


def test_a_clean_roll_out_has_no_problems() -> None:
    result = _rollout_seen({})
    assert result.problems() == []
    added, removed = result.appeared(RELOAD_ADDED_VIP), result.disappeared("10.20.255.3")
    assert added is not None and added.lb == "lb1" and 0.09 < added.after_start < 0.11
    assert removed is not None and removed.lb == "lb3" and removed.after_return < 0


@pytest.mark.parametrize(
    ("vip", "where", "problem"),
    [
        (
            "10.20.255.2",
            lambda now: None if 2.1 <= now < 2.13 else "lb2",
            "10.20.255.2 (in both configs) had no path at the aggregation router 1 time(s)",
        ),
        (
            "10.20.255.1",
            lambda now: "lb2" if now >= 3.5 else "lb1",
            "10.20.255.1 (in both configs) moved: lb1 -> lb2 (first 300 ms after lb3's",
        ),
        (
            "10.20.255.3",
            lambda now: "lb3" if now < 2.1 else None,
            "10.20.255.3 (removed) disappeared 100 ms after lb2's `raftvip reload` started "
            "(before it returned), not with lb3's reload",
        ),
        (
            RELOAD_ADDED_VIP,
            lambda now: "lb1" if now >= 2.1 else None,
            f"{RELOAD_ADDED_VIP} (added) appeared 100 ms after lb2's `raftvip reload` started",
        ),
        (
            RELOAD_ADDED_VIP,
            lambda now: "lb1" if 1.1 <= now < 2.5 else None,
            f"{RELOAD_ADDED_VIP} (added) lost its path after it had appeared",
        ),
    ],
)
def test_a_roll_out_that_breaks_a_promise_names_it(
    vip: str, where: Callable[[float], str | None], problem: str
) -> None:
    problems = _rollout_seen({vip: where}).problems()
    assert any(p.startswith(problem) for p in problems), problems


def test_the_reload_layout_changes_what_the_step_says() -> None:
    t = Topology()
    own, changed = lab_layout(t), reload_layout(t)
    assert set(own.vips) - set(changed.vips) == {t.vip(3)}
    assert set(changed.vips) - set(own.vips) == {RELOAD_ADDED_VIP}
    assert dict(changed.preferred)[RELOAD_ADDED_VIP] == "lb1"
    assert (own.med, changed.med) == (100, 200)
    assert (own.check_by_command, changed.check_by_command) == (False, True)
    assert rollout(t, back=True) == (changed, own, ("lb3", "lb2", "lb1"))


def test_down_after_a_crashed_up_kills_what_was_recorded(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    lab_dir.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        state = LabState(Topology(prefix="127.63"), "raftvip")
        recorded = Proc(sleeper.pid, _start_time(sleeper.pid))
        state.procs["agg"] = recorded
        state.procs["recycled"] = Proc(sleeper.pid, 1)  # same PID, other process: not touched
        (lab_dir / "state.json").write_text(json.dumps(state.to_json()))
        lab = Lab(lab_dir)
        with pytest.raises(LabError, match="already running"):
            lab.up(quiet=True)
        assert lab.down(quiet=True)
        assert not alive(recorded)
        assert not lab_dir.exists()
        assert lab.down(quiet=True) is False
    finally:
        sleeper.kill()
        sleeper.wait()


def _start_time(pid: int) -> int:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return int(raw[raw.rfind(")") + 2 :].split()[19])


def test_a_taken_port_is_named(tmp_path: Path) -> None:
    topology = Topology(prefix="127.64", bgp_port=BGP_PORT)
    with socket.socket() as taken:
        taken.bind(("127.64.1.2", topology.raft_port))
        taken.listen()
        with pytest.raises(LabError, match=r"127\.64\.1\.2:7801 \(Raft port of lb2\) is already"):
            Lab(tmp_path / "lab", topology).up(quiet=True)
    assert not (tmp_path / "lab" / "state.json").exists()


def test_topology_is_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        Topology(prefix="10.0")
    t = Topology()
    assert (t.lb_address(2), t.tor_address(2), t.agg_address) == (
        "127.0.1.2",
        "127.0.2.2",
        "127.0.3.1",
    )
    assert {address.split(".")[0] for address, _, _ in t.listeners()} == {"127"}


def test_lab_needs_root() -> None:
    if not IS_ROOT:
        result = subprocess.run([str(DEPLOY / "lab"), "up"], capture_output=True, text=True)
    else:  # run a copy of the entry point as nobody (the checkout may be private to root)
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv (util-linux) is needed to drop root for this check")
        with tempfile.TemporaryDirectory() as public:
            os.chmod(public, 0o755)
            script = Path(public) / "lab"
            shutil.copy(DEPLOY / "lab", script)
            script.chmod(0o755)
            drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            result = subprocess.run(
                [*drop, str(script), "up"], capture_output=True, text=True, cwd=public
            )
    assert result.returncode == 1
    assert "must run as root" in result.stderr


# --------------------------------------------------------------------- deploy/ examples

SECRET_ENV = {"RAFTVIP_SECRET": "example-secret-0123456789"}


def _raftvip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "raftvip", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, **SECRET_ENV),
        cwd=REPO,
        timeout=30,
    )


def test_example_config_is_valid() -> None:
    result = _raftvip("check-config", "-c", "deploy/raftvip.toml.example")
    assert (result.returncode, result.stdout, result.stderr) == (0, "OK\n", "")


def test_exabgp_conf_example_is_what_raftvip_prints() -> None:
    result = _raftvip("exabgp-config", "--exabgp-version", "5", "-c", "deploy/raftvip.toml.example")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (DEPLOY / "exabgp.conf.example").read_text()


@pytest.mark.parametrize("version", EXABGP_VERSIONS)
def test_exabgp_accepts_the_example(tmp_path: Path, version: int) -> None:
    # ExaBGP's check tests that the `run` program exists: point it at one that does.
    text = (DEPLOY / "exabgp.conf.example").read_text()
    assert "run /usr/local/bin/raftvip run -c /etc/raftvip/raftvip.toml;" in text
    conf = tmp_path / "exabgp.conf"
    conf.write_text(text.replace("/usr/local/bin/raftvip", shutil.which("true") or "/bin/true"))
    check = ["validate", str(conf)] if version == 5 else ["--validate", str(conf)]
    result = subprocess.run(
        [exabgp_binary(version), *check],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "exabgp_api_cli": "false"},
    )
    assert result.returncode == 0, result.stdout + result.stderr


UNIT = DEPLOY / "exabgp-raftvip.service"


def test_systemd_unit_runs_exabgp_with_raftvip() -> None:
    unit = UNIT.read_text().splitlines()
    settings = [line for line in unit if line and not line.startswith("#")]
    # No path: systemd finds pip's /usr/local/bin/exabgp (5.0) or Debian's /usr/sbin (4.2);
    # both read `exabgp FILE` as `run FILE`.
    assert "ExecStart=exabgp /etc/raftvip/exabgp.conf" in settings
    assert "Conflicts=exabgp.service" in settings  # Debian's own unit, from the same package
    assert "ExecStartPre=/usr/local/bin/raftvip check-config -c /etc/raftvip/raftvip.toml" in (
        settings
    )
    # A planned stop hands over and withdraws before ExaBGP gets SIGTERM.
    assert "ExecStop=/usr/local/bin/raftvip leave -c /etc/raftvip/raftvip.toml" in settings
    for env in ("exabgp_api_cli=false", "exabgp_daemon_user=raftvip", "exabgp_api_ack=true"):
        assert f"Environment={env}" in settings
    # The directories the example config uses exist under systemd's management.
    assert "StateDirectory=raftvip" in settings and "RuntimeDirectory=raftvip" in settings
    example = (DEPLOY / "raftvip.toml.example").read_text()
    assert 'state_dir = "/var/lib/raftvip"' in example
    assert 'control_socket = "/run/raftvip/' in example


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None and not os.environ.get("CI"),
    reason="systemd-analyze is not installed",
)
@pytest.mark.parametrize("version", EXABGP_VERSIONS)
def test_systemd_analyze_verifies_the_unit_with_either_exabgp(tmp_path: Path, version: int) -> None:
    """`systemd-analyze verify` checks the unit's syntax and that its programs exist. The
    paths it names are made to point at this host's raftvip and at the ExaBGP of `version`:
    4.2 is Debian's /usr/sbin/exabgp, which the bare `exabgp` finds as systemd would (when no
    /usr/local/bin/exabgp is in front of it); 5.0 is the venv's."""
    text = UNIT.read_text()
    raftvip = Path(sys.executable).parent / "raftvip"
    text = text.replace("/usr/local/bin/raftvip", str(raftvip))
    if version == 5 or os.path.exists("/usr/local/bin/exabgp"):
        text = text.replace("ExecStart=exabgp ", f"ExecStart={exabgp_binary(version)} ")
    else:
        assert shutil.which("exabgp", path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin") == (
            exabgp_binary(4)
        )
    unit = tmp_path / "exabgp-raftvip.service"
    unit.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    # and it does fail a unit whose ExaBGP is not there, so the check above can fail
    unit.write_text(text.replace("ExecStart=", "ExecStart=/nonexistent/", 1))
    broken = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert broken.returncode != 0 and "/nonexistent/" in broken.stderr
