"""What a reload changes (raftvip/core/reload.py): the diff, its refusals, its lines, the
layout digest and the health the loop keeps across a reload. Plain values, no I/O."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import pytest

from raftvip.config import (
    AnnounceConfig,
    CheckConfig,
    ClusterConfig,
    Config,
    ExabgpConfig,
    MetricsConfig,
    NeighborConfig,
    RaftTuning,
    ServiceConfig,
    ZookeeperConfig,
)
from raftvip.core.leader import service_specs
from raftvip.core.reload import (
    ConfigDiff,
    config_digest,
    diff_configs,
    health_after_reload,
    initial_health,
    with_restart_needed,
)
from raftvip.testing.config import make_config, service


def base(**changes: Any) -> Config:
    """lb1 with two services: apex (checked, 3 VIPs) and web (checked, 1 VIP)."""
    cfg = make_config(
        services=[
            service("apex", preferred={"10.0.0.1": "lb1", "10.0.0.2": "lb2"}),
            service("web", ("10.0.1.1",)),
        ]
    )
    return dataclasses.replace(cfg, **changes)


def cluster_with(**changes: Any) -> Config:
    return base(cluster=dataclasses.replace(base().cluster, **changes))


def with_service(cfg: Config, target: str, /, **changes: Any) -> Config:
    services = tuple(
        dataclasses.replace(s, **changes) if s.name == target else s for s in cfg.services
    )
    return dataclasses.replace(cfg, services=services)


def announce_of(cfg: Config, name: str, **changes: Any) -> Config:
    (svc,) = [s for s in cfg.services if s.name == name]
    return with_service(cfg, name, announce=dataclasses.replace(svc.announce, **changes))


def check_of(cfg: Config, name: str, **changes: Any) -> Config:
    (svc,) = [s for s in cfg.services if s.name == name]
    return with_service(cfg, name, check=dataclasses.replace(svc.check, **changes))


# --- nothing, services, VIPs ----------------------------------------------------------------


def test_the_same_config_is_an_empty_diff() -> None:
    diff = diff_configs(base(), base())
    assert diff == ConfigDiff()
    assert diff.empty and diff.lines() == [] and diff.summary() == "no change"
    assert diff.checks_replaced == ()


def test_services_added_and_removed() -> None:
    old = base()
    new = dataclasses.replace(
        old, services=(old.services[0], service("dns", ("10.0.2.1", "10.0.2.2"), checked=False))
    )
    diff = diff_configs(old, new)
    assert diff.added_services == ("dns",) and diff.removed_services == ("web",)
    assert diff.added_vips == {} and diff.removed_vips == {}
    assert diff.checks_replaced == ("dns", "web")
    assert diff.lines() == [
        "service dns: added (2 VIPs: 10.0.2.1, 10.0.2.2; check: none)",
        "service web: removed (1 VIP: 10.0.1.1; withdrawn if this member announced them)",
    ]
    assert diff.summary() == "2 changes: +service dns; -service web"
    assert not diff.empty and diff.restart_needed == ()


def test_vips_added_removed_and_moved_between_services() -> None:
    old = base()
    new = with_service(old, "apex", vips=("10.0.0.1", "10.0.0.3", "10.0.0.9"))
    new = with_service(new, "web", vips=("10.0.1.1", "10.0.0.2"))
    diff = diff_configs(old, new)
    assert diff.added_vips == {"apex": ("10.0.0.9",), "web": ("10.0.0.2",)}
    assert diff.removed_vips == {"apex": ("10.0.0.2",)}
    assert diff.lines() == [
        "service apex: VIP 10.0.0.9 added",
        "service web: VIP 10.0.0.2 added",
        "service apex: VIP 10.0.0.2 removed (withdrawn if this member announced it)",
    ]
    assert diff.summary() == "3 changes: +2 VIPs; -1 VIP"
    assert diff.checks_replaced == ()  # no checker changes for VIPs


# --- what changes live ----------------------------------------------------------------------

ANNOUNCE_VALUES: dict[str, object] = {
    "next_hop": "10.9.9.9",
    "next_hop6": "2001:db8::9",
    "med": 200,
    "communities": ("65001:200",),
    "large_communities": ("65001:1:2",),
    "extended_communities": ("target:65001:1",),
    "as_path": (65001, 65002),
    "backup_prepend": 2,
    "local_as": 65099,
    "graceful_shutdown_community": False,
    "takeover_margin": 2,
    "takeover_hold_time": 9.0,
}


def test_every_announce_attribute_is_covered() -> None:
    assert set(ANNOUNCE_VALUES) == {f.name for f in dataclasses.fields(AnnounceConfig)}


@pytest.mark.parametrize(("key", "value"), ANNOUNCE_VALUES.items())
def test_an_announce_attribute_changes_live(key: str, value: object) -> None:
    diff = diff_configs(base(), announce_of(base(), "web", **{key: value}))
    assert diff.restart_needed == ()
    assert list(diff.announce_changed) == ["web"]
    (change,) = diff.announce_changed["web"]
    assert change.key == f"announce.{key}"
    (line,) = diff.lines()
    assert line.startswith(f"service web: announce.{key} ")
    assert line.endswith("(announced VIPs re-announced in place)")
    assert diff.checks_replaced == ()
    assert config_digest(announce_of(base(), "web", **{key: value})) == config_digest(base())


def test_announce_lines_show_old_and_new_values_as_in_toml() -> None:
    new = announce_of(base(), "web", med=200, communities=(), next_hop6="2001:db8::9")
    assert diff_configs(base(), new).lines() == [
        'service web: announce.next_hop6 unset -> "2001:db8::9" (announced VIPs re-announced'
        " in place)",
        "service web: announce.med 100 -> 200 (announced VIPs re-announced in place)",
        'service web: announce.communities ["65001:100"] -> [] (announced VIPs re-announced in'
        " place)",
    ]


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        ({"target": "test -f /ok"}, 'check command "true" -> command "test -f /ok"'),
        ({"kind": "none", "target": ""}, 'check command "true" -> none'),
        ({"kind": "http", "target": "http://127.0.0.1/"}, 'check command "true" -> http'),
        ({"interval": 2.0}, "check.interval 5 -> 2"),
        ({"fast_interval": 0.5}, "check.fast_interval 1 -> 0.5"),
        ({"rise": 1}, "check.rise 3 -> 1"),
        ({"fall": 5}, "check.fall 3 -> 5"),
        ({"timeout": 1.0}, "check.timeout 2 -> 1"),
        ({"disable_file": "/etc/off"}, 'check.disable_file unset -> "/etc/off"'),
    ],
)
def test_a_check_change_replaces_only_that_service_s_checker(
    changes: dict[str, object], line: str
) -> None:
    new = check_of(base(), "apex", **changes)
    diff = diff_configs(base(), new)
    assert diff.restart_needed == () and list(diff.check_changed) == ["apex"]
    assert diff.checks_replaced == ("apex",)
    (shown,) = diff.lines()
    assert shown.startswith(f"service apex: {line}")
    assert shown.endswith("(new checker; the current health holds until it decides)")
    assert config_digest(new) == config_digest(base())


def test_every_check_key_is_compared() -> None:
    for f in dataclasses.fields(CheckConfig):
        old = check_of(base(), "apex", kind="command", target="true")
        value: object = {"kind": "tcp", "target": "x", "disable_file": "/x"}.get(f.name)
        if value is None:
            value = getattr(old.services[0].check, f.name) + 1
        assert diff_configs(old, check_of(old, "apex", **{f.name: value})).check_changed, f.name


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        ({"preempt": False}, "preempt true -> false"),
        ({"preempt_delay": 30.0}, "preempt_delay 5 -> 30"),
        ({"rebalance": False}, "rebalance true -> false"),
        (
            {"preferred": {"10.0.0.1": "lb3", "10.0.0.2": "lb2"}},
            'preferred."10.0.0.1" "lb1" -> "lb3"',
        ),
        ({"preferred": {"10.0.0.1": "lb1"}}, 'preferred."10.0.0.2" "lb2" -> unset'),
        (
            {"vips": ("10.0.0.3", "10.0.0.1", "10.0.0.2")},
            'vips (order) ["10.0.0.1", "10.0.0.2", "10.0.0.3"] -> ["10.0.0.3", "10.0.0.1",'
            ' "10.0.0.2"]',
        ),
    ],
)
def test_placement_settings_change_live_and_change_the_digest(
    changes: dict[str, object], line: str
) -> None:
    new = with_service(base(), "apex", **changes)
    diff = diff_configs(base(), new)
    assert diff.restart_needed == () and list(diff.placement_changed) == ["apex"]
    assert diff.lines() == [f"service apex: {line}"]
    assert diff.summary() == "1 change: placement apex"
    assert config_digest(new) != config_digest(base())


def test_service_order_is_a_change_as_placement_visits_services_in_order() -> None:
    old = base()
    new = dataclasses.replace(old, services=old.services[::-1])
    (line,) = diff_configs(old, new).lines()
    assert (
        line == "services: order apex, web -> web, apex (placement visits services in this order)"
    )
    assert config_digest(new) != config_digest(old)


@pytest.mark.parametrize("key", ["shutdown_timeout", "handover_timeout"])
def test_stop_and_handover_bounds_change_live(key: str) -> None:
    new = cluster_with(**{key: 9.0})
    diff = diff_configs(base(), new)
    assert diff.restart_needed == ()
    assert diff.lines() == [f"cluster.{key} 5 -> 9"]
    assert diff.summary() == f"1 change: cluster.{key}"


def test_exabgp_section_changes_live_with_a_note_that_exabgp_reads_its_own_file() -> None:
    neighbor = NeighborConfig("10.1.1.1", 65100, "10.1.1.2", 65001)
    new = base(exabgp=ExabgpConfig(neighbors=(neighbor,), run="/usr/bin/raftvip run"))
    diff = diff_configs(base(), new)
    assert diff.restart_needed == ()
    assert [line.split(" (")[0] for line in diff.lines()] == [
        "exabgp.neighbors changed",
        "exabgp.run changed",
    ]
    assert "regenerate ExaBGP's configuration" in diff.lines()[0]


# --- what needs a restart -------------------------------------------------------------------

RESTART_CLUSTER: dict[str, object] = {
    "name": "beta",
    "member": "lb2",
    "secret_file": "/etc/other-secret",
    "state_dir": "/var/lib/other",
    "control_socket": "/run/other.sock",
    "lease": 3.0,
    "report_interval": 0.4,
    "on_quorum_loss": "withdraw",
}


def test_every_cluster_key_is_either_live_or_restart_only() -> None:
    live = {"shutdown_timeout", "handover_timeout"}
    assert set(RESTART_CLUSTER) | live == {f.name for f in dataclasses.fields(ClusterConfig)}


@pytest.mark.parametrize(("key", "value"), RESTART_CLUSTER.items())
def test_cluster_keys_that_need_a_restart(key: str, value: object) -> None:
    new = cluster_with(**{key: value})
    new = announce_of(new, "web", med=300)  # a live change in the same file: refused too
    diff = diff_configs(base(), new)
    (item,) = diff.restart_needed
    assert item.startswith(f"cluster.{key}: ") and ": needs a restart (" in item
    assert diff.summary() == f"refused: needs a restart (cluster.{key})"
    assert not diff.empty


@pytest.mark.parametrize("key", [f.name for f in dataclasses.fields(RaftTuning)])
def test_every_raft_key_needs_a_restart(key: str) -> None:
    value: Any = "fernet" if key == "wire" else getattr(RaftTuning(), key) * 2
    diff = diff_configs(base(), base(raft=dataclasses.replace(RaftTuning(), **{key: value})))
    (item,) = diff.restart_needed
    assert re.match(rf"raft\.{key}: .* -> .*: needs a restart \(pysyncobj reads", item), item


def test_metrics_and_zookeeper_need_a_restart() -> None:
    zk = ZookeeperConfig(hosts=("127.0.0.1:2181",))
    diff = diff_configs(base(), base(metrics=MetricsConfig("127.0.0.1:9273"), zookeeper=zk))
    assert [item.split(":", 1)[0] for item in diff.restart_needed] == [
        "metrics.listen",
        "zookeeper",
    ]
    other = dataclasses.replace(zk, session_timeout=3.0, state_path="/x/{cluster}")
    diff = diff_configs(base(zookeeper=zk), base(zookeeper=other))
    assert [item.split(":", 1)[0] for item in diff.restart_needed] == [
        "zookeeper.state_path",
        "zookeeper.session_timeout",
    ]
    assert all("needs a restart" in item for item in diff.restart_needed)


def test_this_member_s_raft_address_needs_a_restart() -> None:
    members = {**base().members, "lb1": "127.0.0.99:7801"}
    (item,) = diff_configs(base(), base(members=members)).restart_needed
    assert item == (
        'members.lb1: this member\'s Raft address "127.0.0.11:7801" -> "127.0.0.99:7801": '
        "needs a restart (pysyncobj binds this member's Raft address at start)"
    )


def test_members_change_through_the_members_command_not_a_reload() -> None:
    members = {"lb1": "127.0.0.11:7801", "lb2": "127.0.0.22:7801", "lb4": "127.0.0.14:7801"}
    diff = diff_configs(base(), base(members=members))
    assert diff.restart_needed == (
        "members.lb2: address 127.0.0.12:7801 -> 127.0.0.22:7801: membership changes through"
        " the group, not a reload: run `raftvip members remove lb2`, then `raftvip members add"
        " lb2 127.0.0.22:7801`",
        "members.lb4: added: membership changes through the group, not a reload: run `raftvip"
        " members add lb4 127.0.0.14:7801`, then list it in every file",
        "members.lb3: removed: membership changes through the group, not a reload: run `raftvip"
        " members remove lb3`, then remove it from every file",
    )


def test_a_members_list_that_catches_up_with_the_group_is_accepted() -> None:
    grown = {**base().members, "lb4": "127.0.0.14:7801"}
    diff = diff_configs(base(), base(members=grown), members_now=grown)
    assert diff.restart_needed == ()
    assert diff.lines() == [
        "members: the file now lists the group's membership (lb1, lb2, lb3, lb4; changed with"
        " `raftvip members`)"
    ]
    # The file still differs from the group: refused.
    other = {**grown, "lb5": "127.0.0.15:7801"}
    assert diff_configs(base(), base(members=other), members_now=grown).restart_needed


def test_with_restart_needed_adds_what_the_shell_found() -> None:
    diff = with_restart_needed(diff_configs(base(), base()), "cluster.secret_file: changed")
    assert diff.restart_needed == ("cluster.secret_file: changed",)
    assert not diff.empty


# --- nothing is ever missed -----------------------------------------------------------------


def _changed(value: object) -> object:
    """A different value of the same kind (the diff does not validate, only compares)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "x" if value else "x"
    if isinstance(value, tuple):
        return (*value, value[0] if value else "x")
    if isinstance(value, dict):
        return {**value, "extra": "x"}
    return "x"  # None


def _leaf_variants(value: object, path: str) -> Iterator[tuple[str, object]]:
    """(key path, a copy of `value` with that one leaf changed) for every leaf."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            inner = getattr(value, f.name)
            for sub, variant in _leaf_variants(inner, f"{path}.{f.name}"):
                yield sub, dataclasses.replace(value, **{f.name: variant})
    elif isinstance(value, tuple) and value and all(isinstance(v, ServiceConfig) for v in value):
        for i, item in enumerate(value):
            for sub, variant in _leaf_variants(item, f"{path}[{i}]"):
                yield sub, (*value[:i], variant, *value[i + 1 :])
    else:
        yield path, _changed(value)


def full_config() -> Config:
    """A config with every optional section present, so that every leaf exists."""
    cfg = base(
        exabgp=ExabgpConfig(
            neighbors=(NeighborConfig("10.1.1.1", 65100, "10.1.1.2", 65001),),
            process_name="p",
            run="r",
        ),
        metrics=MetricsConfig("127.0.0.1:9273"),
        zookeeper=ZookeeperConfig(hosts=("127.0.0.1:2181",), auth_file="/a"),
    )
    return check_of(cfg, "apex", disable_file="/off")


def test_no_key_of_the_config_is_ever_ignored() -> None:
    """Changing any one leaf of the config (but the file's own path and the notes) gives a
    diff that either applies something or refuses: a key added to Config later cannot be
    silently dropped by a reload."""
    old = full_config()
    seen = 0
    for path, new in _leaf_variants(old, "cfg"):
        if path in ("cfg.path", "cfg.notes"):
            continue
        assert isinstance(new, Config)
        diff = diff_configs(old, new)
        assert not diff.empty, path
        seen += 1
    assert seen > 60


# --- the layout digest ----------------------------------------------------------------------


def test_the_digest_is_short_hex_and_stable_across_versions() -> None:
    digest = config_digest(base())
    assert re.fullmatch(r"[0-9a-f]{16}", digest)
    # Pinned: members of different raftvip versions compare digests through the group, so
    # the canonical form must not change by accident.
    assert digest == "56963351bf15ea02"


def test_the_digest_follows_what_placement_reads() -> None:
    cfg = base()
    same_layout = announce_of(check_of(cfg, "apex", rise=1), "web", med=5)
    same_layout = dataclasses.replace(
        same_layout, cluster=dataclasses.replace(cfg.cluster, handover_timeout=1.0)
    )
    assert service_specs(same_layout) == service_specs(cfg)
    assert config_digest(same_layout) == config_digest(cfg)
    reordered = with_service(cfg, "apex", preferred={"10.0.0.2": "lb2", "10.0.0.1": "lb1"})
    assert config_digest(reordered) == config_digest(cfg)  # a mapping has no order
    assert config_digest(with_service(cfg, "web", name="www")) != config_digest(cfg)
    other_member = make_config(me="lb2", services=cfg.services)
    assert config_digest(other_member) == config_digest(cfg)


# --- health across a reload -----------------------------------------------------------------


def test_initial_health() -> None:
    assert initial_health(service(checked=True)) == "down"
    assert initial_health(service(checked=False)) == "up"


@pytest.mark.parametrize("kept", ["up", "down", "disabled"])
def test_health_after_reload(kept: str) -> None:
    old = base(services=(*base().services, service("gone", ("10.0.3.1",))))
    new = check_of(base(), "apex", target="test -f /new")  # apex: the check changed
    new = dataclasses.replace(
        new,
        services=(
            *new.services,
            service("dns", ("10.0.2.1",)),
            service("ntp", ("10.0.4.1",), checked=False),
        ),
    )
    health = {"apex": kept, "web": "down", "gone": "up"}
    assert health_after_reload(old, new, health) == {
        "apex": kept,  # its check changed: the last verdict holds until the new checker's
        "web": "down",  # untouched
        "dns": "down",  # added, checked: as at start, until its checker rises
        "ntp": "up",  # added, no check
    }
    no_check = check_of(new, "web", kind="none", target="")
    assert health_after_reload(old, no_check, health)["web"] == "up"


def test_checks_compare_as_values_not_identity() -> None:
    a = CheckConfig(kind="command", target="true")
    b = CheckConfig(kind="command", target="true")
    assert a is not b
    assert diff_configs(
        with_service(base(), "apex", check=a), with_service(base(), "apex", check=b)
    ).empty


def test_the_diff_is_a_value() -> None:
    diff = diff_configs(base(), announce_of(base(), "web", med=1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        diff.restart_needed = ("x",)  # type: ignore[misc]
    assert diff == diff_configs(base(), announce_of(base(), "web", med=1))
