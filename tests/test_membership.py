"""Membership without restarting the group: add a host, drain and remove another."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftvip.testing.group import Group, Member, cli, settled
from raftvip.testing.wait import wait_until

pytestmark = pytest.mark.slow


def new_member_config(group: Group, name: str, address: str) -> Member:
    """lb3's config, rewritten for a new host `name` that knows every member."""
    template = group.members["lb3"]
    text = template.config.read_text()
    health = group.root / f"{name}.healthy"
    health.touch()
    text = text.replace('member = "lb3"', f'member = "{name}"')
    text = text.replace(str(template.health_file), str(health))
    text = text.replace("/state/lb3", f"/state/{name}").replace("lb3.sock", f"{name}.sock")
    text = text.replace(
        f'lb3 = "{template.address}"', f'lb3 = "{template.address}"\n{name} = "{address}"'
    )
    config = group.root / f"{name}.toml"
    config.write_text(text)
    member = Member(name, address, config, health, group.root / f"{name}.stderr")
    group.members[name] = member
    return member


def test_add_then_drain_and_remove_a_member_and_survive_a_full_restart(tmp_path: Path) -> None:
    group = Group(tmp_path, size=3)
    try:
        group.start_all()
        wait_until(lambda: settled(group), 20)
        port = group.members["lb1"].address.rsplit(":", 1)[1]
        address = f"127.0.0.14:{port}"
        new_member_config(group, "lb4", address)
        bad = cli(group, "lb1", "members", "add", "lb4", "127.0.0.14")
        assert bad.returncode == 1 and "member address" in bad.stderr
        added = cli(group, "lb1", "members", "add", "lb4", address)
        assert added.returncode == 0, added.stderr
        group.start("lb4")
        wait_until(lambda: group.status("lb2")["members"].get("lb4", {}).get("alive"), 20, 0.1)
        assert group.status("lb4")["has_quorum"]

        # The new member takes real work: drain lb3, its VIP goes to the least loaded (lb4).
        drained = cli(group, "lb1", "drain", "lb3")
        assert drained.returncode == 0, drained.stderr
        assert group.announcers("10.20.0.3") == {"lb4"}

        refused = cli(group, "lb1", "members", "remove", "lb3")
        assert refused.returncode == 1
        assert "still alive" in refused.stderr or "is the leader" in refused.stderr
        assert group.terminate("lb3") == 0
        removed = cli(group, "lb1", "members", "remove", "lb3", "--force")
        assert removed.returncode == 0, removed.stderr
        doc = group.status("lb2")
        assert set(doc["members"]) == {"lb1", "lb2", "lb4"}
        assert any(e["kind"] == "membership" for e in doc["events"])

        # Three voters again (lb1, lb2, lb4): losing one keeps a quorum and moves its VIP.
        group.kill("lb2")
        wait_until(lambda: len(group.announcers("10.20.0.2")) == 1, 10)
        assert group.status("lb1")["has_quorum"]

        # A full restart keeps the membership (journal + snapshot), although lb1's config
        # file still lists lb3 and not lb4.
        for name in ("lb1", "lb4"):
            group.kill(name)
        for name in ("lb1", "lb2", "lb4"):
            group.start(name)
        wait_until(lambda: all(len(group.announcers(v)) == 1 for v in group.vips), 30)
        wait_until(lambda: group.status("lb1")["has_quorum"], 10, 0.1)
        assert set(group.status("lb1")["members"]) == {"lb1", "lb2", "lb4"}
    finally:
        group.close()
