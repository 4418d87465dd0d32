"""End to end with the real thing: 3 members, each under a real ExaBGP (pip's 5.0 or Debian's
4.2), peering with a real BIRD 2 on loopback. The ExaBGP configs are the ones
`raftvip exabgp-config` renders (with `encoder json` swapped in where a test says so)."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from raftvip.config import load_config
from raftvip.exabgp_config import render_exabgp_config
from raftvip.testing.bgplab import (
    Bird,
    BirdPath,
    ExaBGP,
    RouteEvent,
    lab_ipv6_next_hop,
    member_peers,
)
from raftvip.testing.group import Group, cli
from raftvip.testing.wait import free_port, wait_until
from tests.exabgp_versions import EXABGP_VERSIONS, requires_exabgp4

pytestmark = pytest.mark.slow

ROUTER_AS = 65000


@dataclass(frozen=True)
class Setup:
    """What a topology runs: the ExaBGP major version and encoder, and the members' options."""

    version: int = 5
    encoder: str = "text"
    backup_prepend: int = 0
    ipv6_vips: int = 0
    honour_graceful_shutdown: bool = False  # BIRD's import filter (RFC 8326 receiver side)

    @property
    def id(self) -> str:
        parts = [f"exabgp{self.version}", self.encoder]
        if self.backup_prepend:
            parts.append(f"backup-prepend-{self.backup_prepend}")
        if self.ipv6_vips:
            parts.append("ipv6")
        if self.honour_graceful_shutdown:
            parts.append("gshut")
        return "-".join(parts)


def setups(*candidates: Setup) -> list[object]:
    """Indirect parameters for `topology`; ExaBGP 4.2 ones skip where it is not installed."""
    return [
        pytest.param(s, id=s.id, marks=[requires_exabgp4] if s.version == 4 else [])
        for s in candidates
    ]


@dataclass
class Topology:
    group: Group
    bird: Bird
    speakers: dict[str, ExaBGP]
    as_of: dict[str, int]  # member -> its AS
    setup: Setup = Setup()

    def member_of(self, path: BirdPath) -> str | None:
        for name, asn in self.as_of.items():
            if path.as_path[:1] == (asn,):
                return name
        return None

    def paths(self) -> dict[str, list[BirdPath]]:
        return {prefix.split("/")[0]: paths for prefix, paths in self.bird.routes().items()}

    def start_speaker(self, name: str) -> ExaBGP:
        """(Re)start member `name`: a real ExaBGP running raftvip as its process."""
        member = self.group.members[name]
        cfg = load_config(str(member.config))
        run = f"{sys.executable} -m raftvip run -c {member.config}"
        workdir = self.group.root / name
        workdir.mkdir(exist_ok=True)
        text = render_exabgp_config(cfg, run)
        if self.setup.encoder != "text":
            text = text.replace("encoder text;", f"encoder {self.setup.encoder};")
        speaker = ExaBGP(workdir, text, name=name, version=self.setup.version)
        speaker.start()
        self.speakers[name] = speaker
        return speaker

    def single_path_owner(self, vip: str) -> str | None:
        paths = self.paths().get(vip, [])
        if len(paths) != 1 or not paths[0].best:
            return None
        return self.member_of(paths[0])

    def member_log(self, name: str) -> str:
        """What ExaBGP logged, raftvip's stderr included (ExaBGP's helpers inherit it)."""
        return self.speakers[name].log_text()


@pytest.fixture(params=[Setup()], ids=lambda s: s.id)
def topology(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Topology]:
    if not os.path.exists("/usr/sbin/bird") and not os.path.exists("/usr/bin/bird"):
        pytest.skip("BIRD 2 is not installed (deploy/test installs it)")
    setup: Setup = request.param
    port = free_port("127.0.0.1")
    group = Group(
        tmp_path,
        size=3,
        router=("127.0.0.1", port, ROUTER_AS),
        backup_prepend=setup.backup_prepend,
        ipv6_vips=setup.ipv6_vips,
    )
    # hold 3 s: a hung (SIGSTOPped) speaker's routes go after 3 s, not 90
    addresses = {name: m.address for name, m in group.members.items()}
    as_of, peers = member_peers(addresses, port, ROUTER_AS, hold_time=3)
    bird = Bird(
        tmp_path / "bird",
        "127.0.0.1",
        peers,
        name="router",
        honour_graceful_shutdown=setup.honour_graceful_shutdown,
        trace_routes=setup.honour_graceful_shutdown,
    )
    (tmp_path / "bird").mkdir()
    speakers: dict[str, ExaBGP] = {}
    try:
        bird.start()
        topology = Topology(group, bird, speakers, as_of, setup)
        for name in group.members:
            topology.start_speaker(name)
        yield topology
    finally:
        for speaker in speakers.values():
            speaker.stop()
        bird.stop()


def settled(topology: Topology) -> bool:
    return all(topology.single_path_owner(v) == m for v, m in topology.group.preferred.items())


@pytest.mark.parametrize(
    "topology", setups(Setup(version=4, ipv6_vips=1), Setup(version=5, ipv6_vips=1)), indirect=True
)
def test_each_vip_has_one_path_from_its_owner_and_moves_on_kill(topology: Topology) -> None:
    group = topology.group
    topology.bird.wait_established(timeout=20)
    # After preempt_delay, each preferred owner is the single path for its VIP, and the IPv6
    # VIP (no preferred owner) has one path too, with its owner's IPv6 next hop.
    vip6 = "2001:db8::1"
    wait_until(lambda: settled(topology) and topology.single_path_owner(vip6) is not None, 30, 0.02)
    for vip in group.preferred:
        (path,) = topology.paths()[vip]
        assert path.med == 100
        assert "(65001,100)" in path.communities
    (path6,) = topology.paths()[vip6]
    owner6 = topology.member_of(path6)
    assert owner6 is not None and path6.reachable
    assert path6.next_hop == lab_ipv6_next_hop(group.members[owner6].address.rsplit(":", 1)[0])

    victim = owner6  # its preferred IPv4 VIP and the IPv6 VIP move
    vip = next(v for v, m in group.preferred.items() if m == victim)
    speaker = topology.speakers[victim]
    assert speaker.helper_pids(), "raftvip runs as ExaBGP's helper"
    speaker.kill_all()  # kill -9 of ExaBGP and its raftvip helper, at once
    survivors = set(group.members) - {victim}
    wait_until(lambda: topology.single_path_owner(vip) in survivors, 10, 0.005)
    wait_until(lambda: topology.single_path_owner(vip6) in survivors, 10, 0.005)
    (moved6,) = topology.paths()[vip6]
    new_owner6 = topology.member_of(moved6)
    assert new_owner6 is not None and moved6.reachable
    assert moved6.next_hop == lab_ipv6_next_hop(group.members[new_owner6].address.rsplit(":", 1)[0])
    # The other VIPs never moved.
    for v, m in group.preferred.items():
        if m != victim:
            assert topology.single_path_owner(v) == m


@pytest.mark.parametrize(
    "topology",
    setups(Setup(version=4, backup_prepend=2), Setup(version=5, backup_prepend=2)),
    indirect=True,
)
def test_backup_paths_take_over_before_raft_reassigns(topology: Topology) -> None:
    group = topology.group
    topology.bird.wait_established(timeout=20)

    def shaped() -> bool:
        paths = topology.paths()
        for vip, owner in group.preferred.items():
            got = paths.get(vip, [])
            best = [p for p in got if p.best]
            if len(got) != 3 or len(best) != 1 or topology.member_of(best[0]) != owner:
                return False
            # steady owner path: its AS + takeover_margin 1; backups: + backup_prepend 2
            if len(best[0].as_path) != 2 or any(len(p.as_path) != 4 for p in got if not p.best):
                return False
        return True

    # The router holds one best path (the owner) and two prepended backups per VIP.
    wait_until(shaped, 30, 0.02)
    victim = "lb1"
    vip = next(v for v, m in group.preferred.items() if m == victim)
    speaker = topology.speakers[victim]
    t0 = time.monotonic()
    speaker.kill_all()
    backup_best = raft_owner = None
    empty_samples = 0
    while time.monotonic() - t0 < 10 and raft_owner is None:
        paths = topology.paths().get(vip, [])
        best = [p for p in paths if p.best]
        if not best:
            empty_samples += 1
        elif topology.member_of(best[0]) != victim and backup_best is None:
            backup_best = time.monotonic() - t0
        # the new owner's path (the takeover form: the victim's ExaBGP may still have had it)
        if any(len(p.as_path) <= 2 and topology.member_of(p) != victim for p in paths):
            raft_owner = time.monotonic() - t0
        time.sleep(0.001)
    assert backup_best is not None and raft_owner is not None
    # Traffic moved to a standby path before the group had even reassigned the VIP.
    assert backup_best <= raft_owner
    assert empty_samples == 0


@pytest.mark.parametrize(
    "topology",
    setups(
        Setup(version=4, encoder="text"),
        Setup(version=4, encoder="json"),
        Setup(version=5, encoder="text"),
        Setup(version=5, encoder="json"),
    ),
    indirect=True,
)
def test_stopping_exabgp_hands_the_vips_over_in_either_encoder(topology: Topology) -> None:
    """systemd stops ExaBGP (SIGTERM): ExaBGP tells raftvip `shutdown` (text) or sends the
    shutdown notification (json); raftvip tells the group it leaves, and exits 0."""
    group = topology.group
    topology.bird.wait_established(timeout=20)
    wait_until(lambda: settled(topology), 30, 0.02)
    victim = "lb2"
    vip = next(v for v, m in group.preferred.items() if m == victim)
    log = topology.member_log(victim)
    # ExaBGP's events reached raftvip, parsed (the json ones too), and nothing was unexpected.
    assert "exabgp neighbor=127.0.0.1 state=up" in log
    assert "unexpected stdin line" not in log
    assert topology.speakers[victim].stop() == 0
    log = topology.member_log(victim)
    # It acted on ExaBGP's own stop message (not on the SIGTERM that follows 0.1 s later).
    assert "member=lb2 stopped: ExaBGP shutdown" in log
    assert "unexpected stdin line" not in log
    assert "exabgp neighbor=127.0.0.1 state=down" in log
    assert "Traceback" not in log
    wait_until(lambda: topology.single_path_owner(vip) in {"lb1", "lb3"}, 10, 0.005)
    # The group heard that lb2 left (it did not wait for lb2's lease to lapse).
    lb2 = group.status("lb1")["members"]["lb2"]
    assert (lb2["alive"], lb2["leaving"]) == (False, True)


def best_moved_before_withdraw(trace: list[RouteEvent], prefix: str, old: str) -> bool:
    """Replay BIRD's route trace for `prefix`: was there a moment, before `old`'s path was
    withdrawn, when `old`'s path was still there but another peer's path was the best?"""
    present: set[str] = set()
    best: str | None = None
    for event in (e for e in trace if e.prefix == prefix):
        if event.action == "removed":
            if event.protocol == old and best is not None and best != old:
                return True
            present.discard(event.protocol)
            best = None if best == event.protocol else best
            continue
        present.add(event.protocol)
        if event.best:
            best = event.protocol
        elif best == event.protocol or best is None:
            best = "another"  # the peer's new path lost: some other path is best now
    return False


def test_replaying_a_route_trace() -> None:
    def added(protocol: str, best: bool = False) -> RouteEvent:
        return RouteEvent(protocol, "added", best, "10.20.0.1/32")

    removed = RouteEvent("lb1", "removed", False, "10.20.0.1/32")
    # With the community: lb1's re-announce loses the best path to lb2's (either order).
    assert best_moved_before_withdraw(
        [added("lb1", True), added("lb2"), added("lb1"), removed], "10.20.0.1/32", "lb1"
    )
    assert best_moved_before_withdraw(
        [added("lb1", True), added("lb1", True), added("lb2", True), removed], "10.20.0.1/32", "lb1"
    )
    # Without it: lb1's path (lowest router ID) stays best until withdrawn.
    assert not best_moved_before_withdraw(
        [added("lb1", True), added("lb2"), removed], "10.20.0.1/32", "lb1"
    )
    assert not best_moved_before_withdraw(
        [added("lb1", True), added("lb2"), added("lb1", True), removed], "10.20.0.1/32", "lb1"
    )


@pytest.mark.parametrize("topology", setups(Setup(honour_graceful_shutdown=True)), indirect=True)
def test_a_drain_moves_the_best_path_before_the_old_one_is_withdrawn(topology: Topology) -> None:
    """RFC 8326 on a router that honours it (local-pref 0 for 65535:0): during `raftvip drain`
    the old owner's path carries GRACEFUL_SHUTDOWN while the handover lasts, so BIRD's best
    path moves to the new owner while the old path is still there.

    lb1 has the lowest router ID, which wins BIRD's tie-break between equal paths: without the
    community its path would stay best until it is withdrawn. The handover lasts a few
    milliseconds (until the new owner's confirmation commits), so the order is read from
    BIRD's own route trace; BIRD's table is sampled throughout for gaps."""
    group = topology.group
    topology.bird.wait_established(timeout=20)
    wait_until(lambda: settled(topology), 30, 0.02)
    vip = next(v for v, m in group.preferred.items() if m == "lb1")
    prefix = f"{vip}/32"
    samples: list[list[BirdPath]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(topology.paths().get(vip, []))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        drained = cli(group, "lb2", "drain", "lb1")
        assert drained.returncode == 0, drained.stdout + drained.stderr
        wait_until(lambda: topology.single_path_owner(vip) in {"lb2", "lb3"}, 10, 0.005)
    finally:
        stop.set()
        sampler.join(5)
    assert all(any(p.best for p in paths) for paths in samples), "a moment without a route"
    assert best_moved_before_withdraw(topology.bird.route_trace(), prefix, "lb1"), (
        "the best path stayed on lb1 until lb1 withdrew it:\n" + topology.bird.log_text()
    )
    # What lb1 wrote: its owner's path, then (implicit withdraw) the handover path with the
    # community (the steady form: its AS + takeover_margin 1), then the withdraw.
    asn = topology.as_of["lb1"]
    written = [
        line.split("raftvip.agent exabgp ", 1)[1]
        for line in topology.member_log("lb1").splitlines()
        if f"raftvip.agent exabgp announce route {prefix}" in line
        or f"raftvip.agent exabgp withdraw route {prefix}" in line
    ]
    assert written[-2:] == [
        f"announce route {prefix} next-hop self med 100 as-path [ {asn} {asn} ] "
        "community [ 65001:100 65535:0 ]",
        f"withdraw route {prefix} next-hop self",
    ]
    (new,) = topology.paths()[vip]
    assert new.communities == ("(65001,100)",) and new.local_pref == 100


# An ExaBGP 6 stand-in: between a real ExaBGP and raftvip, it answers `error` where ExaBGP said
# `done` (ExaBGP 6 without exabgp_api_version=4 refuses every classic command).
_REFUSING_SHIM = """\
import subprocess, sys, threading
child = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE, stdout=sys.stdout)
def pump():
    for line in sys.stdin:
        child.stdin.write(b"error\\n" if line.strip() == "done" else line.encode())
        child.stdin.flush()
threading.Thread(target=pump, daemon=True).start()
sys.exit(child.wait())
"""


@pytest.mark.parametrize("version", EXABGP_VERSIONS)
def test_under_an_exabgp_that_refuses_the_api_the_fix_is_logged_and_exabgp_stops(
    tmp_path: Path, version: int
) -> None:
    """raftvip exits 1 at each start with the fix in the log; ExaBGP's respawn limit then
    stops ExaBGP itself (exit 0: systemd's Restart=on-failure does not loop on it)."""
    group = Group(tmp_path, size=3, router=("127.0.0.1", free_port("127.0.0.1"), ROUTER_AS))
    member = group.members["lb1"]
    shim = tmp_path / "refusing.py"
    shim.write_text(_REFUSING_SHIM)
    run = f"{sys.executable} {shim} {sys.executable} -m raftvip run -c {member.config}"
    text = render_exabgp_config(load_config(str(member.config)), run, version)
    speaker = ExaBGP(tmp_path / "lb1", text, name="lb1", version=version)
    try:
        speaker.start()
        assert speaker.wait(60) == 0
        log = speaker.log_text()
    finally:
        speaker.stop()
    fatal = [line for line in log.splitlines() if " CRITICAL " in line]
    starts = log.count("member=lb1 started: cluster=")
    # Said once per start: the first and ExaBGP's respawns (5 in a 64 s window aligned to the
    # wall clock, so 4.2 and 5.0 end after 5 or 6 starts, more across a window boundary).
    assert len(fatal) == starts >= 5
    assert all("Set exabgp_api_version=4 in ExaBGP's environment" in line for line in fatal)
    assert "Too many death" in log
    assert "Traceback" not in log
