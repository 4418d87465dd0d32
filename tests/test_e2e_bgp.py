"""End to end with the real thing: 3 members, each under a real ExaBGP 5, peering with a real
BIRD 2 on loopback. The ExaBGP configs are the ones `raftvip exabgp-config` renders."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from raftvip.config import load_config
from raftvip.exabgp_config import render_exabgp_config
from raftvip.testing.bgplab import Bird, BirdPath, ExaBGP, member_peers
from raftvip.testing.group import Group
from raftvip.testing.wait import free_port, wait_until

pytestmark = pytest.mark.slow

ROUTER_AS = 65000


@dataclass
class Topology:
    group: Group
    bird: Bird
    speakers: dict[str, ExaBGP]
    as_of: dict[str, int]  # member -> its AS

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
        speaker = ExaBGP(workdir, render_exabgp_config(cfg, run), name=name)
        speaker.start()
        self.speakers[name] = speaker
        return speaker

    def single_path_owner(self, vip: str) -> str | None:
        paths = self.paths().get(vip, [])
        if len(paths) != 1 or not paths[0].best:
            return None
        return self.member_of(paths[0])


@pytest.fixture(params=[0], ids=["owners-only"])
def topology(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Topology]:
    if not os.path.exists("/usr/sbin/bird") and not os.path.exists("/usr/bin/bird"):
        pytest.skip("BIRD 2 is not installed (deploy/test installs it)")
    port = free_port("127.0.0.1")
    group = Group(
        tmp_path,
        size=3,
        router=("127.0.0.1", port, ROUTER_AS),
        backup_prepend=request.param,
    )
    # hold 3 s: a hung (SIGSTOPped) speaker's routes go after 3 s, not 90
    addresses = {name: m.address for name, m in group.members.items()}
    as_of, peers = member_peers(addresses, port, ROUTER_AS, hold_time=3)
    bird = Bird(tmp_path / "bird", "127.0.0.1", peers, name="router")
    (tmp_path / "bird").mkdir()
    speakers: dict[str, ExaBGP] = {}
    try:
        bird.start()
        topology = Topology(group, bird, speakers, as_of)
        for name in group.members:
            topology.start_speaker(name)
        yield topology
    finally:
        for speaker in speakers.values():
            speaker.stop()
        bird.stop()


def test_each_vip_has_one_path_from_its_owner_and_moves_on_kill(topology: Topology) -> None:
    group = topology.group
    topology.bird.wait_established(timeout=20)
    # After preempt_delay, each preferred owner is the single path for its VIP.
    wait_until(
        lambda: all(topology.single_path_owner(v) == m for v, m in group.preferred.items()),
        30,
        0.02,
    )
    for vip in group.preferred:
        (path,) = topology.paths()[vip]
        assert path.med == 100
        assert "(65001,100)" in path.communities

    victim = "lb2"
    vip = next(v for v, m in group.preferred.items() if m == victim)
    speaker = topology.speakers[victim]
    assert speaker.helper_pids(), "raftvip runs as ExaBGP's helper"
    speaker.kill_all()  # kill -9 of ExaBGP and its raftvip helper, at once
    wait_until(lambda: topology.single_path_owner(vip) in {"lb1", "lb3"}, 10, 0.005)
    # The other VIPs never moved.
    for v, m in group.preferred.items():
        if m != victim:
            assert topology.single_path_owner(v) == m


@pytest.mark.parametrize("topology", [2], ids=["backup-prepend-2"], indirect=True)
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
            if len(best[0].as_path) != 1 or any(len(p.as_path) != 3 for p in got if not p.best):
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
        if any(len(p.as_path) == 1 and topology.member_of(p) != victim for p in paths):
            raft_owner = time.monotonic() - t0
        time.sleep(0.001)
    assert backup_best is not None and raft_owner is not None
    # Traffic moved to a standby path before the group had even reassigned the VIP.
    assert backup_best <= raft_owner
    assert empty_samples == 0
