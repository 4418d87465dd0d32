"""The ZooKeeper mirror against a real ZooKeeper 3.8 (raftvip/testing/zk.py).

In-process tests drive `ZkMirror` with hand-made snapshots and a recording agent; the slow
tests run real member processes with a [zookeeper] section and read the announcements from
their SpeakerStub timelines.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import make_digest_acl

from raftvip.agent import Snapshot
from raftvip.config import Config, load_config
from raftvip.core.decide import Decision
from raftvip.core.group import RaftInfo
from raftvip.core.leader import service_specs
from raftvip.core.placement import Assignment
from raftvip.core.state import ClusterState, Command, MemberState, SetDrain, SetMaintenance
from raftvip.testing.group import Group, cli, settled
from raftvip.testing.wait import wait_until
from raftvip.testing.zk import ZooKeeper, running_zookeeper, zookeeper_available
from raftvip.zkmirror import FOLLOWER_GRACE, ZkMirror, due, edges, settle

pytestmark = pytest.mark.skipif(
    not zookeeper_available() and not os.environ.get("CI"),
    reason="ZooKeeper (Debian package `zookeeper`) is not installed",
)

VIPS = ("10.20.0.1", "10.20.0.2", "10.20.0.3")


@pytest.fixture(scope="module")
def zk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeper]:
    with running_zookeeper(tmp_path_factory.mktemp("zookeeper")) as server:
        yield server


@pytest.fixture
def client(zk: ZooKeeper) -> Iterator[KazooClient]:
    with fresh_client(zk) as kazoo:
        yield kazoo


# --- pure parts -----------------------------------------------------------------------------


def test_edges_first_scan_counts_only_appearances() -> None:
    flag = ("maintenance", "apex")
    assert edges({}, None, frozenset({flag}), 1.0)[flag].on is True
    assert edges({}, None, frozenset(), 1.0) == {}
    assert edges({}, frozenset({flag}), frozenset(), 2.0)[flag].on is False


def test_settle_and_due() -> None:
    flag, other = ("maintenance", "apex"), ("drain", "lb2")
    intents = edges({}, frozenset({other}), frozenset({flag}), 10.0)
    assert settle(intents, frozenset({flag})) == {}
    assert settle(intents, frozenset({flag, other})) == {other: intents[other]}
    assert settle(intents, frozenset()) == {flag: intents[flag]}
    assert due(intents, is_leader=True, now=10.0) == sorted([flag, other])
    assert due(intents, is_leader=False, now=10.0) == []
    assert due(intents, is_leader=False, now=10.0 + FOLLOWER_GRACE) == sorted([flag, other])


# --- in process: ZkMirror with a recording agent ---------------------------------------------


class RecordingAgent:
    """What ZkMirror uses of the agent: `commit`."""

    def __init__(self) -> None:
        self.commits: list[Command] = []

    def commit(self, cmd: Command, timeout: float = 5.0) -> str | None:
        self.commits.append(cmd)
        return None


def write_config(root: Path, zookeeper: str, member: str = "lb1") -> Config:
    """A member's config with a [zookeeper] section (the files a `Group` would run)."""
    group = Group(root, size=3, zookeeper=zookeeper)
    return load_config(str(group.members[member].config))


def snapshot(
    cfg: Config,
    owned: tuple[str, ...] = (),
    maintenance: tuple[str, ...] = (),
    leader: bool = True,
    version: int = 1,
    commit_index: int = 5,
) -> Snapshot:
    members = {
        m: MemberState(m, alive=True, healthy={"apex": True}, healthy_since={"apex": 0.0})
        for m in cfg.members
    }
    owners = {vip: Assignment(cfg.me if vip in owned else "lb3", "spread") for vip in VIPS}
    state = ClusterState(
        version=version,
        services=service_specs(cfg),
        addresses=dict(cfg.members),
        members=members,
        maintenance=frozenset(maintenance),
        owners=owners,
    )
    info = RaftInfo(
        leader=cfg.me if leader else "lb3",
        is_leader=leader,
        term=2,
        commit_index=commit_index,
        last_applied=commit_index,
        has_quorum=True,
        ready=True,
        connected=frozenset(cfg.members),
    )
    decisions = {
        vip: Decision(True, "owner") if vip in owned else Decision(False, "not_owner")
        for vip in VIPS
    }
    return Snapshot(
        state, info, decisions, frozenset(owned), {"apex": "up"}, 0.0, True, time.time()
    )


def zk_section(zk: ZooKeeper, prefix: str, extra: str = "") -> str:
    return (
        f'hosts = ["{zk.hosts}"]\n'
        f'service_path = "/{prefix}/exabgp/service/{{service}}"\n'
        f'maintenance_path = "/{prefix}/exabgp/maintenance/{{service}}"\n'
        f'state_path = "/{prefix}/raftvip/{{cluster}}"\n'
        f"session_timeout = 2\n{extra}"
    )


@pytest.fixture
def started() -> Iterator[list[ZkMirror]]:
    mirrors: list[ZkMirror] = []
    yield mirrors
    for mirror in mirrors:
        mirror.stop()


def start(mirror: ZkMirror, agent: RecordingAgent, started: list[ZkMirror]) -> ZkMirror:
    mirror.start(agent)  # type: ignore[arg-type]
    started.append(mirror)
    return mirror


def session_of(mirror: ZkMirror) -> int:
    session = mirror.status()["session_id"]
    return int(session, 16) if session else -1


def tree(client: KazooClient, path: str) -> dict[str, int]:
    """child -> ephemeral owner session of every child of `path`."""
    if client.exists(path) is None:
        return {}
    owners = {}
    for child in client.get_children(path):
        stat = client.exists(f"{path}/{child}")
        if stat is not None:
            owners[child] = stat.ephemeralOwner
    return owners


def test_ephemerals_and_state_document_follow_the_snapshots(
    tmp_path: Path, zk: ZooKeeper, client: KazooClient, started: list[ZkMirror]
) -> None:
    cfg = write_config(tmp_path, zk_section(zk, "a"))
    mirror = start(ZkMirror(cfg), RecordingAgent(), started)
    mirror.observe(snapshot(cfg, owned=("10.20.0.1", "10.20.0.2")))
    wait_until(lambda: mirror.connected, 10)
    service = "/a/exabgp/service/apex"
    wait_until(lambda: set(tree(client, service)) == {"10.20.0.1", "10.20.0.2"}, 5)
    assert set(tree(client, service).values()) == {session_of(mirror)}
    wait_until(lambda: client.exists("/a/raftvip/test/state") is not None, 5)
    data, stat = client.get("/a/raftvip/test/state")
    doc = json.loads(data)
    assert doc["state_version"] == 1 and doc["cluster"] == "test" and doc["leader"] == "lb1"
    for field in ("member", "is_leader", "ready", "time", "commit_index", "no_quorum_for"):
        assert field not in doc
    assert "announced" not in doc["vips"]["10.20.0.1"]
    assert doc["vips"]["10.20.0.1"]["owner"] == "lb1"

    # Only the commit index moved: nothing to write. Ownership moved: the tree follows.
    mirror.observe(snapshot(cfg, owned=("10.20.0.2",), version=2, commit_index=9))
    wait_until(lambda: set(tree(client, service)) == {"10.20.0.2"}, 5)
    wait_until(lambda: client.get("/a/raftvip/test/state")[1].version == stat.version + 1, 5)
    mirror.observe(snapshot(cfg, owned=("10.20.0.2",), version=2, commit_index=12))
    time.sleep(0.2)
    assert client.get("/a/raftvip/test/state")[1].version == stat.version + 1
    assert mirror.status()["state_document"]["state_version"] == 2

    # A follower writes no state document; its ephemerals stay.
    mirror.observe(snapshot(cfg, owned=("10.20.0.2",), leader=False, version=3))
    time.sleep(0.2)
    assert json.loads(client.get("/a/raftvip/test/state")[0])["state_version"] == 2
    assert set(tree(client, service)) == {"10.20.0.2"}


def test_maintenance_znode_edges_commit_and_veto_off(
    tmp_path: Path, zk: ZooKeeper, client: KazooClient, started: list[ZkMirror]
) -> None:
    cfg = write_config(tmp_path, zk_section(zk, "b"))
    agent = RecordingAgent()
    mirror = start(ZkMirror(cfg), agent, started)
    mirror.observe(snapshot(cfg))
    wait_until(lambda: mirror.connected, 10)
    node = "/b/exabgp/maintenance/apex"
    client.create(node, makepath=True)
    wait_until(lambda: bool(agent.commits), 2)
    assert isinstance(agent.commits[0], SetMaintenance)
    assert (agent.commits[0].service, agent.commits[0].on) == ("apex", True)
    veto = mirror.maintenance_veto("apex", on=False)
    assert veto is not None and node in veto and "delete" in veto
    assert mirror.maintenance_veto("apex", on=True) is None
    assert mirror.status()["maintenance_nodes"] == [node]

    mirror.observe(snapshot(cfg, maintenance=("apex",), version=2))  # the commit applied
    client.delete(node)
    wait_until(lambda: len(agent.commits) == 2, 2)
    assert isinstance(agent.commits[1], SetMaintenance) and agent.commits[1].on is False
    assert mirror.maintenance_veto("apex", on=False) is None


def test_a_reload_moves_vip_nodes_and_maintenance_watches_to_the_new_services(
    tmp_path: Path, zk: ZooKeeper, client: KazooClient, started: list[ZkMirror]
) -> None:
    cfg = write_config(tmp_path, zk_section(zk, "r"))
    agent = RecordingAgent()
    mirror = start(ZkMirror(cfg), agent, started)
    mirror.observe(snapshot(cfg, owned=("10.20.0.1",), maintenance=("apex",)))
    wait_until(lambda: mirror.connected, 10)
    apex_node, web_node = "/r/exabgp/maintenance/apex", "/r/exabgp/maintenance/web"
    client.create(apex_node, makepath=True)  # apex is in maintenance, replicated as such
    client.create(web_node, makepath=True)  # web is not configured yet: nobody watches it
    wait_until(lambda: mirror.status()["maintenance_nodes"] == [apex_node], 5)
    wait_until(lambda: set(tree(client, "/r/exabgp/service/apex")) == {"10.20.0.1"}, 5)
    assert agent.commits == []

    # The reload replaces apex by web (10.20.9.1, owned and announced here).
    web = replace(cfg.services[0], name="web", vips=("10.20.9.1",), preferred={})
    new = replace(cfg, services=(web,))
    mirror.reload(new)
    mirror.observe(
        replace(
            snapshot(cfg, maintenance=("apex",), version=2),
            decisions={"10.20.9.1": Decision(True, "owner")},
            announced=frozenset({"10.20.9.1"}),
            cfg=new,
        )
    )
    wait_until(lambda: set(tree(client, "/r/exabgp/service/web")) == {"10.20.9.1"}, 5)
    wait_until(lambda: tree(client, "/r/exabgp/service/apex") == {}, 5)
    wait_until(lambda: mirror.status()["maintenance_nodes"] == [web_node], 5)
    wait_until(lambda: bool(agent.commits), 5)
    # web's node is now watched and committed; apex's is forgotten, not taken for a deletion.
    assert [(c.service, c.on) for c in agent.commits if isinstance(c, SetMaintenance)] == [
        ("web", True)
    ]


def test_follower_leaves_the_commit_to_the_leader_for_a_grace_period(
    tmp_path: Path, zk: ZooKeeper, client: KazooClient, started: list[ZkMirror]
) -> None:
    cfg = write_config(tmp_path, zk_section(zk, "c"))
    agent = RecordingAgent()
    mirror = start(ZkMirror(cfg), agent, started)
    mirror.observe(snapshot(cfg, leader=False))
    wait_until(lambda: mirror.connected, 10)
    client.create("/c/exabgp/maintenance/apex", makepath=True)
    wait_until(lambda: bool(mirror.status()["pending"]), 2)
    time.sleep(0.5)
    assert agent.commits == []  # the leader commits at once; this follower waits
    wait_until(lambda: bool(agent.commits), FOLLOWER_GRACE + 2)


def test_per_node_layout_drains_the_named_member(
    tmp_path: Path, zk: ZooKeeper, client: KazooClient, started: list[ZkMirror]
) -> None:
    section = zk_section(zk, "d").replace('{service}"\nstate', '{service}/{member}"\nstate')
    cfg = write_config(tmp_path, section)
    assert cfg.zookeeper is not None and cfg.zookeeper.per_member_maintenance
    agent = RecordingAgent()
    mirror = start(ZkMirror(cfg), agent, started)
    mirror.observe(snapshot(cfg))
    wait_until(lambda: mirror.connected, 10)
    parent = "/d/exabgp/maintenance/apex"
    wait_until(lambda: client.exists(parent) is not None, 2)  # created for ExaZK tooling
    client.create(f"{parent}/not-a-member")
    client.create(f"{parent}/lb2")
    wait_until(lambda: bool(agent.commits), 2)
    assert agent.commits == [SetDrain(agent.commits[0].ts, "lb2", True)]
    assert mirror.maintenance_veto("apex", on=False) is None
    veto = mirror.drain_veto("lb2", on=False)
    assert veto is not None and f"{parent}/lb2" in veto and "delete that node" in veto
    assert mirror.drain_veto("lb1", on=False) is None
    assert mirror.drain_veto("lb2", on=True) is None


def test_expired_session_recreates_the_ephemeral_nodes(
    tmp_path: Path, zk: ZooKeeper, client: KazooClient, started: list[ZkMirror]
) -> None:
    cfg = write_config(tmp_path, zk_section(zk, "e"))
    mirror = start(ZkMirror(cfg), RecordingAgent(), started)
    mirror.observe(snapshot(cfg, owned=("10.20.0.3",)))
    service = "/e/exabgp/service/apex"
    wait_until(lambda: set(tree(client, service)) == {"10.20.0.3"}, 10)
    first = session_of(mirror)
    # kazoo's harness recipe: a second client on the same session closes it server-side.
    session_id, password = mirror._client.client_id
    thief = KazooClient(hosts=zk.hosts, client_id=(session_id, password), timeout=2)
    thief.start(timeout=10)
    thief.stop()
    thief.close()
    wait_until(lambda: mirror.status()["expirations"] >= 1, 10)
    wait_until(lambda: set(tree(client, service).values()) - {first} != set(), 10)
    assert set(tree(client, service)) == {"10.20.0.3"}
    assert set(tree(client, service).values()) == {session_of(mirror)} != {first}


def test_wrong_credentials_are_reported_and_nothing_else_breaks(
    tmp_path: Path, zk: ZooKeeper, client: KazooClient, started: list[ZkMirror]
) -> None:
    acl = [make_digest_acl("raftvip", "right-password", all=True)]
    client.ensure_path("/f/raftvip")
    client.create("/f/raftvip/test", acl=acl)  # as the rightful raftvip left it
    auth = tmp_path / "zk-auth"
    auth.write_text("raftvip:wrong-password\n")
    auth.chmod(0o600)
    cfg = write_config(tmp_path, zk_section(zk, "f", f'auth_file = "{auth}"\n'))
    mirror = start(ZkMirror(cfg), RecordingAgent(), started)
    mirror.observe(snapshot(cfg, owned=("10.20.0.1",)))
    wait_until(lambda: bool(mirror.status()["error"]), 10)
    status = mirror.status()
    assert "not authorized" in status["error"] and "auth_file" in status["error"]
    assert "wrong-password" not in json.dumps(status)
    assert status["connected"] is True
    # The world-open ExaZK paths still work.
    wait_until(lambda: set(tree(client, "/f/exabgp/service/apex")) == {"10.20.0.1"}, 5)


def test_state_path_carries_the_digest_acl(
    tmp_path: Path, zk: ZooKeeper, client: KazooClient, started: list[ZkMirror]
) -> None:
    auth = tmp_path / "zk-auth"
    auth.write_text("raftvip:right-password\n")
    auth.chmod(0o600)
    cfg = write_config(tmp_path, zk_section(zk, "g", f'auth_file = "{auth}"\n'))
    mirror = start(ZkMirror(cfg), RecordingAgent(), started)
    mirror.observe(snapshot(cfg, owned=("10.20.0.1",)))
    wait_until(lambda: mirror.status()["state_document"] is not None, 10)
    assert mirror.status()["error"] is None
    assert client.exists("/g/raftvip/test/state") is not None
    with pytest.raises(NoAuthError):
        client.get("/g/raftvip/test/state")
    authed = KazooClient(hosts=zk.hosts, auth_data=[("digest", "raftvip:right-password")])
    authed.start(timeout=10)
    try:
        assert json.loads(authed.get("/g/raftvip/test/state")[0])["cluster"] == "test"
        for path in ("/g/raftvip/test", "/g/raftvip/test/state"):
            assert [a.id.scheme for a in authed.get_acls(path)[0]] == ["digest"]
    finally:
        authed.stop()
        authed.close()
    assert [a.id.scheme for a in client.get_acls("/g/exabgp/service/apex")[0]] == ["world"]


def test_zookeeper_down_at_start_does_not_delay_the_mirror_start(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, 'hosts = ["127.0.0.1:9"]\nsession_timeout = 2\n')
    mirror = ZkMirror(cfg)
    begin = time.monotonic()
    mirror.start(RecordingAgent())  # type: ignore[arg-type]
    mirror.observe(snapshot(cfg, owned=("10.20.0.1",)))
    try:
        assert time.monotonic() - begin < 0.5
        assert mirror.status()["connected"] is False and mirror.connected is False
    finally:
        mirror.stop()


# --- real member processes --------------------------------------------------------------------

CONVERGE = 20.0


def sessions(group: Group) -> dict[int, str]:
    result = {}
    for name, member in group.members.items():
        if member.running:
            session = group.status(name)["zookeeper"]["session_id"]
            if session:
                result[int(session, 16)] = name
    return result


def tree_matches(group: Group, client: KazooClient, service: str, who: dict[int, str]) -> bool:
    """The ephemeral nodes are exactly the announced VIPs, each held by its announcer."""
    expected: dict[str, str] = {}
    for vip in group.vips:
        announcers = group.announcers(vip)
        if len(announcers) != 1:
            return False
        (expected[vip],) = announcers
    return {vip: who.get(owner, "?") for vip, owner in tree(client, service).items()} == expected


@pytest.fixture(scope="module")
def zgroup(tmp_path_factory: pytest.TempPathFactory, zk: ZooKeeper) -> Iterator[Group]:
    root = tmp_path_factory.mktemp("zgroup")
    group = Group(root, size=3, zookeeper=zk_section(zk, "m"))
    try:
        group.start_all()
        wait_until(lambda: settled(group), CONVERGE)
        yield group
    finally:
        group.close()


@pytest.mark.slow
def test_members_service_maintenance_node_withdraws_and_restores(
    zgroup: Group, client: KazooClient
) -> None:
    wait_until(lambda: settled(zgroup), CONVERGE)
    node = "/m/exabgp/maintenance/apex"
    client.create(node, makepath=True)
    wait_until(lambda: not any(zgroup.announcers(v) for v in zgroup.vips), 1.0)
    refused = cli(zgroup, "lb2", "maintenance", "off", "apex")
    assert refused.returncode == 1
    assert f"held by ZooKeeper node {node}" in refused.stderr
    assert "apex" in zgroup.status("lb3")["zookeeper"]["maintenance_nodes"][0]
    client.delete(node)
    wait_until(lambda: settled(zgroup), 1.0)


@pytest.mark.slow
def test_members_tree_follows_ownership_on_start_drain_and_failover(
    zgroup: Group, client: KazooClient
) -> None:
    wait_until(lambda: settled(zgroup), CONVERGE)
    service = "/m/exabgp/service/apex"
    who = sessions(zgroup)
    wait_until(lambda: tree_matches(zgroup, client, service, who), 5)
    state = json.loads(client.get("/m/raftvip/test/state")[0])
    assert {v["owner"] for v in state["vips"].values()} == {"lb1", "lb2", "lb3"}

    assert cli(zgroup, "lb2", "drain", "lb2").returncode == 0
    wait_until(lambda: tree_matches(zgroup, client, service, who), 5)
    assert "lb2" not in {who[s] for s in tree(client, service).values()}
    assert cli(zgroup, "lb2", "undrain", "lb2").returncode == 0
    wait_until(lambda: settled(zgroup) and tree_matches(zgroup, client, service, who), 10)

    # Failover: a killed member's node goes with its session (session_timeout = 2 s).
    zgroup.kill("lb3")
    wait_until(lambda: tree_matches(zgroup, client, service, who), 10)
    zgroup.start("lb3")
    wait_until(lambda: settled(zgroup), CONVERGE)
    who = sessions(zgroup)
    wait_until(lambda: tree_matches(zgroup, client, service, who), 10)


@contextlib.contextmanager
def fresh_client(zk: ZooKeeper) -> Iterator[KazooClient]:
    kazoo = KazooClient(hosts=zk.hosts, timeout=5)
    kazoo.start(timeout=10)
    try:
        yield kazoo
    finally:
        kazoo.stop()
        kazoo.close()


def sessions_when_connected(group: Group, timeout: float) -> dict[int, str]:
    wait_until(
        lambda: all(group.status(n)["zookeeper"]["connected"] for n in group.members), timeout
    )
    return sessions(group)


@pytest.mark.slow
def test_members_zookeeper_down_30s_changes_no_announcement(zgroup: Group, zk: ZooKeeper) -> None:
    wait_until(lambda: settled(zgroup), CONVERGE)
    service = "/m/exabgp/service/apex"
    before = {name: m.announced() for name, m in zgroup.members.items()}
    changes = {name: len(m.stub.changes) for name, m in zgroup.members.items() if m.stub}
    zk.kill()
    down_at = time.monotonic()
    wait_until(lambda: not zgroup.status("lb1")["zookeeper"]["connected"], 10)
    assert zgroup.status("lb1")["zookeeper"]["maintenance_view"] == "as last seen"
    time.sleep(max(0.0, 30.0 - (time.monotonic() - down_at)))
    for name, m in zgroup.members.items():
        assert m.stub is not None
        assert len(m.stub.changes) == changes[name], m.stub.changes[-3:]
        assert m.announced() == before[name]

    zk.start()
    back = time.monotonic()
    with fresh_client(zk) as client:
        # Consistent 2 s after ZooKeeper is back (each status call costs a CLI start).
        wait_until(lambda: len(tree(client, service)) == len(zgroup.vips), 2.0)
        reconnected = time.monotonic() - back
        who = sessions_when_connected(zgroup, 5)
        assert tree_matches(zgroup, client, service, who), (reconnected, tree(client, service))
    assert settled(zgroup)


@pytest.mark.slow
def test_members_recreate_their_nodes_after_the_session_expires(
    zgroup: Group, zk: ZooKeeper
) -> None:
    wait_until(lambda: settled(zgroup), CONVERGE)
    service = "/m/exabgp/service/apex"
    # A stopped process sends no pings: ZooKeeper expires its session (2 s) and drops its node.
    before = zgroup.status("lb3")["zookeeper"]["expirations"]
    lb3 = next(session for session, name in sessions(zgroup).items() if name == "lb3")
    zgroup.stop_signal("lb3")
    with fresh_client(zk) as client:
        # Its node goes with its session (the VIP's new owner then creates its own).
        wait_until(lambda: lb3 not in tree(client, service).values(), 10)
        time.sleep(0.5)
        zgroup.cont("lb3")
        wait_until(lambda: settled(zgroup), CONVERGE)
        wait_until(lambda: zgroup.status("lb3")["zookeeper"]["expirations"] > before, 10)
        who = sessions_when_connected(zgroup, 5)
        wait_until(lambda: tree_matches(zgroup, client, service, who), 5)
