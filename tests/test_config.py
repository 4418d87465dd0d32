"""Tests for the TOML config loader: the documented example, every validation rule, secrets."""

from __future__ import annotations

import copy
import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    load_config,
    load_secret,
)
from raftvip.core.values import evolve
from raftvip.errors import ConfigError, SecretError

SECRET = "s3cr3t-Raft-password-9f2c"

# The example from the design brief, verbatim except for the three local paths.
EXAMPLE = """\
[cluster]
name = "apex"
member = "lb1"                      # this host
secret_file = "@SECRET_FILE@" # or env RAFTVIP_SECRET
state_dir = "@STATE_DIR@"
control_socket = "@CONTROL_SOCKET@"
lease = 1.5
on_quorum_loss = "hold"             # or "withdraw"
# optional: report_interval (default lease/3), shutdown_timeout (default 5.0)

[members]
lb1 = "127.0.0.11:7801"
lb2 = "127.0.0.12:7801"
lb3 = "127.0.0.13:7801"

[[service]]
name = "apex"
vips = ["10.20.255.1", "10.20.255.2", "10.20.255.3", "2001:db8::1"]
preferred = { "10.20.255.1" = "lb1", "10.20.255.2" = "lb2", "10.20.255.3" = "lb3" }
preempt = true
preempt_delay = 5
# optional: rebalance = true

[service.check]                     # exactly one of command / http / tcp; none of them = always healthy (kind "none")
command = "curl -sf http://127.0.0.1/healthcheck"
interval = 5
fast_interval = 1
rise = 3
fall = 3
timeout = 2
disable_file = "/etc/raftvip/apex.disabled"

[service.announce]
next_hop = "self"
med = 100
communities = ["65001:100"]
large_communities = []
extended_communities = []
as_path = []
backup_prepend = 0
# optional: local_as, graceful_shutdown_community (default true)

[exabgp]
neighbors = [{ address = "127.0.0.1", port = 1179, peer_as = 65000, local_address = "127.0.0.11", local_as = 65011 }]
# optional: process_name, run ; neighbor optional keys: router_id, hold_time

[raft]        # optional, keys = RaftTuning field names
[metrics]     # optional: listen = "127.0.0.1:9273"
"""  # noqa: E501

TOP_LEVEL_KEYS = ("cluster", "members", "service", "exabgp", "raft", "metrics")
DELETE = object()


# ----------------------------------------------------------------------------- helpers


def write_secret(directory: Path, secret: str = SECRET, mode: int = 0o600) -> Path:
    path = directory / "secret"
    path.write_text(secret + "\n")
    path.chmod(mode)
    return path


def example_text(directory: Path) -> str:
    return (
        EXAMPLE.replace("@SECRET_FILE@", str(directory / "secret"))
        .replace("@STATE_DIR@", str(directory / "state"))
        .replace("@CONTROL_SOCKET@", str(directory / "apex.sock"))
    )


def toml_string(text: str) -> str:
    escaped = []
    for char in text:
        if char in '"\\':
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{ord(char):04X}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def toml_value(value: object) -> str:
    """A tiny TOML emitter for str/int/float/bool/list/dict (dicts become inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        pairs = (f"{toml_string(key)} = {toml_value(item)}" for key, item in value.items())
        return "{ " + ", ".join(pairs) + " }"
    raise TypeError(f"cannot emit {value!r}")


def to_toml(document: dict[str, Any]) -> str:
    """Root keys first, then [tables], then [[arrays of tables]], as a person would write."""
    lines: list[str] = []
    tables: list[str] = []
    for key, value in document.items():
        if isinstance(value, dict):
            tables.append(f"[{toml_string(key)}]")
            tables.extend(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items())
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                tables.append(f"[[{toml_string(key)}]]")
                tables.extend(f"{toml_string(k)} = {toml_value(v)}" for k, v in item.items())
        else:
            lines.append(f"{toml_string(key)} = {toml_value(value)}")
    return "\n".join([*lines, *tables]) + "\n"


def change(document: dict[str, Any], path: str | tuple[str, ...], value: object) -> None:
    """Set (or with DELETE remove) the value at "a/b/0/c"; index == len appends."""
    parts: list[str] = path.split("/") if isinstance(path, str) else list(path)
    node: Any = document
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if isinstance(node, list):
        index = int(last)
        if value is DELETE:
            del node[index]
        elif index == len(node):
            node.append(value)
        else:
            node[index] = value
    elif value is DELETE:
        del node[last]
    else:
        node[last] = value


@pytest.fixture
def base(tmp_path: Path) -> dict[str, Any]:
    """The example as a document to mutate, with its secret file in place."""
    write_secret(tmp_path)
    return tomllib.loads(example_text(tmp_path))


def write_config(directory: Path, document: dict[str, Any]) -> str:
    path = directory / "raftvip.toml"
    path.write_text(to_toml(document))
    return str(path)


def problems_of(path: str, **kwargs: Any) -> list[str]:
    kwargs.setdefault("environ", {})
    with pytest.raises(ConfigError) as caught:
        load_config(path, **kwargs)
    return caught.value.problems


# --------------------------------------------------------------------------- valid files


def test_the_documented_example_loads(tmp_path: Path) -> None:
    write_secret(tmp_path)
    path = tmp_path / "apex.toml"
    path.write_text(example_text(tmp_path))

    config = load_config(str(path), environ={})

    assert config == Config(
        path=str(path),
        cluster=ClusterConfig(
            name="apex",
            member="lb1",
            secret_file=str(tmp_path / "secret"),
            state_dir=str(tmp_path / "state"),
            control_socket=str(tmp_path / "apex.sock"),
            lease=1.5,
            on_quorum_loss="hold",
            report_interval=0.5,
            shutdown_timeout=5.0,
        ),
        members={"lb1": "127.0.0.11:7801", "lb2": "127.0.0.12:7801", "lb3": "127.0.0.13:7801"},
        services=(
            ServiceConfig(
                name="apex",
                vips=("10.20.255.1", "10.20.255.2", "10.20.255.3", "2001:db8::1"),
                preferred={"10.20.255.1": "lb1", "10.20.255.2": "lb2", "10.20.255.3": "lb3"},
                preempt=True,
                preempt_delay=5.0,
                rebalance=True,
                check=CheckConfig(
                    kind="command",
                    target="curl -sf http://127.0.0.1/healthcheck",
                    interval=5.0,
                    fast_interval=1.0,
                    rise=3,
                    fall=3,
                    timeout=2.0,
                    disable_file="/etc/raftvip/apex.disabled",
                ),
                announce=AnnounceConfig(
                    next_hop="self",
                    med=100,
                    communities=("65001:100",),
                    backup_prepend=0,
                    # from [exabgp]: the steady path prepends it once (takeover_margin)
                    local_as=65011,
                    takeover_margin=1,
                    takeover_hold_time=180.0,  # ExaBGP's hold time when a neighbor sets none
                ),
            ),
        ),
        exabgp=ExabgpConfig(
            neighbors=(
                NeighborConfig(
                    address="127.0.0.1",
                    port=1179,
                    peer_as=65000,
                    local_address="127.0.0.11",
                    local_as=65011,
                    router_id="127.0.0.11",  # defaults to the IPv4 local_address
                ),
            ),
        ),
        raft=RaftTuning(),
        metrics=None,  # an empty [metrics] table serves nothing
    )
    assert config.me == "lb1"
    assert config.self_address == "127.0.0.11:7801"
    assert config.service_of("2001:db8::1") is config.services[0]
    assert isinstance(config.services[0].preempt_delay, float)
    # The vip -> service index follows the services of a copy (evolve copies the instance
    # dictionary, where the index is kept).
    first = config.services[0]
    moved = evolve(config, services=(evolve(first, name="other", vips=("10.9.9.9",)),))
    assert moved.service_of("2001:db8::1") is None
    assert moved.service_of("10.9.9.9") is moved.services[0]
    assert config.service_of("2001:db8::1") is first


def test_member_flag_overrides_cluster_member(tmp_path: Path, base: dict[str, Any]) -> None:
    config = load_config(write_config(tmp_path, base), member="lb2", environ={})
    assert config.me == "lb2"
    assert config.self_address == "127.0.0.12:7801"


def test_member_flag_replaces_a_missing_cluster_member(
    tmp_path: Path, base: dict[str, Any]
) -> None:
    del base["cluster"]["member"]
    assert load_config(write_config(tmp_path, base), member="lb3", environ={}).me == "lb3"


def test_member_flag_naming_an_unknown_member(tmp_path: Path, base: dict[str, Any]) -> None:
    assert problems_of(write_config(tmp_path, base), member="lb9") == [
        "cluster.member: 'lb9' (from --member) is not in [members] (known: lb1, lb2, lb3)"
    ]


def test_minimal_file_gets_the_documented_defaults(tmp_path: Path) -> None:
    write_secret(tmp_path)
    document = {
        "cluster": {
            "name": "c",
            "member": "a",
            "secret_file": str(tmp_path / "secret"),
            "state_dir": "state",
            "control_socket": "c.sock",
            "lease": 3,
        },
        "members": {"a": "10.0.0.1:7801"},
        "service": [{"name": "s", "vips": ["192.0.2.1"]}],
    }
    config = load_config(write_config(tmp_path, document), environ={})
    assert config.cluster.lease == 3.0 and isinstance(config.cluster.lease, float)
    assert config.cluster.report_interval == 1.0  # lease / 3
    assert config.cluster.on_quorum_loss == "hold"
    assert config.cluster.shutdown_timeout == 5.0
    assert config.services == (ServiceConfig(name="s", vips=("192.0.2.1",)),)
    assert config.services[0].check.kind == "none"
    assert config.exabgp == ExabgpConfig()
    assert config.raft == RaftTuning()
    assert config.metrics is None


def test_addresses_are_normalised(tmp_path: Path, base: dict[str, Any]) -> None:
    base["members"] = {"lb1": "[2001:DB8:0::11]:7801", "lb2": "127.0.0.12:7801"}
    base["service"][0]["vips"] = ["10.20.255.1/32", "2001:DB8:0:0::1/128"]
    base["service"][0]["preferred"] = {"10.20.255.1/32": "lb1", "2001:db8::1": "lb2"}
    base["service"][0]["announce"]["next_hop"] = "2001:DB8::FE"
    base["service"][0]["announce"]["communities"] = ["NO-EXPORT", "65001:0100"]
    base["service"][0]["announce"]["large_communities"] = ["65000:01:4294967295"]
    base["service"][0]["announce"]["extended_communities"] = ["target:65000:1"]

    config = load_config(write_config(tmp_path, base), environ={})

    # pysyncobj splits "host:port" on the last colon, so IPv6 loses its brackets.
    assert config.members == {"lb1": "2001:db8::11:7801", "lb2": "127.0.0.12:7801"}
    service = config.services[0]
    assert service.vips == ("10.20.255.1", "2001:db8::1")
    assert service.preferred == {"10.20.255.1": "lb1", "2001:db8::1": "lb2"}
    assert service.announce.next_hop == "2001:db8::fe"
    assert service.announce.communities == ("no-export", "65001:100")
    assert service.announce.large_communities == ("65000:1:4294967295",)
    assert service.announce.extended_communities == ("target:65000:1",)


@pytest.mark.parametrize(
    ("check", "expected"),
    [
        ({}, CheckConfig()),
        ({"http": "https://127.0.0.1:8443/health"}, ("http", "https://127.0.0.1:8443/health")),
        ({"tcp": "127.0.0.1:80"}, ("tcp", "127.0.0.1:80")),
        ({"tcp": "[::1]:80"}, ("tcp", "[::1]:80")),
        ({"tcp": "backend.example:5432"}, ("tcp", "backend.example:5432")),
        ({"command": "true"}, ("command", "true")),
    ],
)
def test_check_kind_and_target(
    tmp_path: Path, base: dict[str, Any], check: dict[str, Any], expected: object
) -> None:
    base["service"][0]["check"] = check
    loaded = load_config(write_config(tmp_path, base), environ={}).services[0].check
    if isinstance(expected, CheckConfig):
        assert loaded == expected
    else:
        assert (loaded.kind, loaded.target) == expected


def test_timing_boundaries_are_accepted(tmp_path: Path, base: dict[str, Any]) -> None:
    base["cluster"].update(lease=0.56, report_interval=0.28)  # lease/2; > 0.5 + 0.05
    base["service"][0]["check"].update(interval=2, fast_interval=2, timeout=2, rise=1, fall=1)
    base["service"][0]["preempt_delay"] = 0
    base["raft"] = {
        "heartbeat": 0.1,
        "min_timeout": 0.31,
        "max_timeout": 0.32,
        "connection_timeout": 0.32,
        "leader_fallback": 0.11,
    }
    base["cluster"]["lease"] = 0.43
    base["cluster"]["report_interval"] = 0.215
    config = load_config(write_config(tmp_path, base), environ={})
    assert config.raft.connection_timeout == config.raft.max_timeout == 0.32
    assert config.services[0].check.timeout == config.services[0].check.interval


def test_graceful_shutdown_community_is_on_unless_turned_off(
    tmp_path: Path, base: dict[str, Any]
) -> None:
    assert load_config(write_config(tmp_path, base), environ={}).services[0].announce == (
        AnnounceConfig(
            next_hop="self",
            med=100,
            communities=("65001:100",),
            local_as=65011,
            takeover_margin=1,
        )
    )
    base["service"][0]["announce"]["graceful_shutdown_community"] = False
    announce = load_config(write_config(tmp_path, base), environ={}).services[0].announce
    assert announce.graceful_shutdown_community is False


def test_backup_prepend_takes_local_as_from_the_first_neighbor(
    tmp_path: Path, base: dict[str, Any]
) -> None:
    base["service"][0]["announce"]["backup_prepend"] = 2
    base["service"].append(
        {"name": "web", "vips": ["10.20.254.1"], "announce": {"backup_prepend": 1, "local_as": 7}}
    )
    config = load_config(write_config(tmp_path, base), environ={})
    assert config.services[0].announce.local_as == 65011
    assert config.services[1].announce.local_as == 7


def test_neighbor_and_metrics_options(tmp_path: Path, base: dict[str, Any]) -> None:
    base["exabgp"] = {
        "process_name": "raftvip-apex",
        "run": "/usr/bin/raftvip run -c /etc/raftvip/apex.toml",
        "neighbors": [
            {
                "address": "2001:db8::a",
                "peer_as": 65000,
                "local_address": "2001:db8::b",
                "local_as": 4200000000,
                "router_id": "10.0.0.1",
                "hold_time": 0,
            }
        ],
    }
    base["metrics"] = {"listen": "127.0.0.11:9273"}
    config = load_config(write_config(tmp_path, base), environ={})
    assert config.exabgp == ExabgpConfig(
        neighbors=(
            NeighborConfig(
                address="2001:db8::a",
                peer_as=65000,
                local_address="2001:db8::b",
                local_as=4200000000,
                port=179,
                router_id="10.0.0.1",
                hold_time=0,
            ),
        ),
        process_name="raftvip-apex",
        run="/usr/bin/raftvip run -c /etc/raftvip/apex.toml",
    )
    assert config.metrics == MetricsConfig(listen="127.0.0.11:9273")


# ------------------------------------------------------------------------- broken files

Changes = dict[str | tuple[str, ...], object]
NAME_RULE = "letters, digits, '_', '.', '-', starting with a letter or digit, at most 63 characters"
COMMUNITY_RULE = (
    "ASN:VALUE, each 0..65535, or one of no-export, no-advertise, no-export-subconfed, nopeer"
)

BROKEN: list[tuple[str, Changes, str | list[str]]] = [
    (
        "next-hop6-v4",
        {"service/0/announce/next_hop6": "10.0.0.1"},
        "service[0].announce.next_hop6: '10.0.0.1' is not an IPv6 address",
    ),
    # unknown keys, with and without a hint
    ("unknown-key", {"cluster/leese": 1.5}, "cluster.leese: unknown key (did you mean 'lease'?)"),
    ("unknown-top", {"services": {}}, "services: unknown key (did you mean 'service'?)"),
    (
        "unknown-check",
        {"service/0/check/intervall": 5},
        "service[0].check.intervall: unknown key (did you mean 'interval'?)",
    ),
    (
        "unknown-neighbor",
        {"exabgp/neighbors/0/peer-as": 1},
        "exabgp.neighbors[0].peer-as: unknown key (did you mean 'peer_as'?)",
    ),
    (
        "unknown-raft",
        {"raft/heartbeet": 0.1},
        "raft.heartbeet: unknown key (did you mean 'heartbeat'?)",
    ),
    ("unknown-no-hint", {"exabgp/zzz": 1}, "exabgp.zzz: unknown key"),
    (
        "unknown-quoted",
        {"cluster/le ase": 1},
        "cluster.\"le ase\": unknown key (did you mean 'lease'?)",
    ),
    # wrong types
    ("str-for-number", {"cluster/lease": "fast"}, "cluster.lease: expected a number, got 'fast'"),
    ("bool-for-number", {"cluster/lease": True}, "cluster.lease: expected a number, got true"),
    ("inf", {"cluster/lease": math.inf}, "cluster.lease: expected a finite number, got inf"),
    (
        "nan",
        {"service/0/check/interval": math.nan},
        "service[0].check.interval: expected a finite number, got nan",
    ),
    (
        "bool-for-int",
        {"service/0/check/rise": True},
        "service[0].check.rise: expected an integer, got true",
    ),
    (
        "float-for-int",
        {"service/0/check/rise": 3.0},
        "service[0].check.rise: expected an integer, got 3.0",
    ),
    ("int-for-str", {"cluster/name": 5}, "cluster.name: expected a string, got 5"),
    ("empty-str", {"cluster/name": ""}, "cluster.name: must not be empty"),
    (
        "str-for-bool",
        {"service/0/preempt": "yes"},
        "service[0].preempt: expected a boolean (true or false), got 'yes'",
    ),
    ("int-for-table", {"raft": 5}, "raft: expected a table, got 5"),
    (
        "str-for-array",
        {"service/0/vips": "10.20.255.1"},
        "service[0].vips: expected an array, got '10.20.255.1'",
    ),
    (
        "table-for-tables",
        {"service": {"name": "apex"}},
        "service: expected an array of tables, got a table",
    ),
    ("int-in-tables", {"exabgp/neighbors/0": 5}, "exabgp.neighbors[0]: expected a table, got 5"),
    (
        "service-not-table",
        {"service/0": 5, "service/1": {"name": "web", "vips": ["10.9.9.9"], "med": -1}},
        ["service[0]: expected a table, got 5", "service[1].med: unknown key"],
    ),
    (
        "array-for-str",
        {"cluster/state_dir": ["a"]},
        "cluster.state_dir: expected a string, got an array",
    ),
    # required keys and sections
    ("no-name", {"cluster/name": DELETE}, "cluster.name: required"),
    ("no-state-dir", {"cluster/state_dir": DELETE}, "cluster.state_dir: required"),
    ("no-socket", {"cluster/control_socket": DELETE}, "cluster.control_socket: required"),
    ("no-member", {"cluster/member": DELETE}, "cluster.member: required (or pass --member)"),
    ("no-cluster", {"cluster": DELETE}, "cluster: required"),
    ("no-members", {"members": DELETE}, 'members: required (a table of member name = "host:port")'),
    ("empty-members", {"members": {}}, "members: at least one member is required"),
    ("no-service", {"service": DELETE}, "service: at least one [[service]] is required"),
    ("zero-services", {"service": []}, "service: at least one [[service]] is required"),
    ("no-service-name", {"service/0/name": DELETE}, "service[0].name: required"),
    ("no-vips", {"service/0/vips": DELETE}, "service[0].vips: required"),
    ("empty-vips", {"service/0/vips": []}, "service[0].vips: must not be empty"),
    ("no-peer-as", {"exabgp/neighbors/0/peer_as": DELETE}, "exabgp.neighbors[0].peer_as: required"),
    ("no-address", {"exabgp/neighbors/0/address": DELETE}, "exabgp.neighbors[0].address: required"),
    # names
    (
        "bad-cluster-name",
        {"cluster/name": "apex cluster"},
        f"cluster.name: 'apex cluster' is not a valid name ({NAME_RULE})",
    ),
    (
        "bad-service-name",
        {"service/0/name": "-apex"},
        f"service[0].name: '-apex' is not a valid name ({NAME_RULE})",
    ),
    (
        "long-name",
        {"service/0/name": "a" * 64},
        f"service[0].name: '{'a' * 64}' is not a valid name ({NAME_RULE})",
    ),
    (
        "bad-member-name",
        {"members/-lb4": "127.0.0.14:7801"},
        f"members.-lb4: '-lb4' is not a valid name ({NAME_RULE})",
    ),
    (
        "unknown-member",
        {"cluster/member": "lb9"},
        "cluster.member: 'lb9' is not in [members] (known: lb1, lb2, lb3)",
    ),
    (
        "duplicate-service",
        {"service/1": {"name": "apex", "vips": ["10.9.9.9"]}},
        "service[1].name: 'apex' is already used by service[0]",
    ),
    # member addresses
    (
        "member-no-port",
        {"members/lb1": "127.0.0.11"},
        "members.lb1: '127.0.0.11' is not host:port (IPv6 as [addr]:port)",
    ),
    (
        "member-port-0",
        {"members/lb1": "127.0.0.11:0"},
        "members.lb1: port '0' in '127.0.0.11:0' is not between 1 and 65535",
    ),
    (
        "member-port-big",
        {"members/lb1": "127.0.0.11:65536"},
        "members.lb1: port '65536' in '127.0.0.11:65536' is not between 1 and 65535",
    ),
    (
        "member-hostname",
        {"members/lb1": "lb1.example:7801"},
        "members.lb1: host 'lb1.example' in 'lb1.example:7801' is not an IP address",
    ),
    (
        "member-bare-ipv6",
        {"members/lb1": "::1:7801"},
        "members.lb1: '::1:7801': write an IPv6 address in brackets, e.g. '[::1]:7801'",
    ),
    (
        "member-bracketed-v4",
        {"members/lb1": "[127.0.0.11]:7801"},
        "members.lb1: '[127.0.0.11]:7801': only IPv6 addresses go in brackets",
    ),
    (
        "member-duplicate",
        {"members/lb2": "127.0.0.11:7801"},
        "members.lb2: address 127.0.0.11:7801 is already used by members.lb1",
    ),
    (
        "member-duplicate-v6",
        {"members/lb1": "[::1]:7801", "members/lb2": "[0::1]:7801"},
        "members.lb2: address ::1:7801 is already used by members.lb1",
    ),
    ("member-not-str", {"members/lb1": 7801}, "members.lb1: expected a string, got 7801"),
    # VIPs
    (
        "vip-bad",
        {"service/0/vips/2": "10.0.0.300"},
        "service[0].vips[2]: '10.0.0.300' is not an IP address",
    ),
    (
        "vip-prefix",
        {"service/0/vips/0": "10.20.255.1/24"},
        "service[0].vips[0]: '10.20.255.1/24' must be a host address (/32 or /128)",
    ),
    (
        "vip-v6-prefix",
        {"service/0/vips/3": "2001:db8::1/64"},
        "service[0].vips[3]: '2001:db8::1/64' must be a host address (/32 or /128)",
    ),
    (
        "vip-v4-128",
        {"service/0/vips/0": "10.20.255.1/128"},
        "service[0].vips[0]: '10.20.255.1/128' must be a host address (/32 or /128)",
    ),
    (
        "vip-multicast",
        {"service/0/vips/0": "224.0.0.1"},
        "service[0].vips[0]: '224.0.0.1' is not a unicast host address",
    ),
    (
        "vip-int",
        {"service/0/vips/0": 167837441},
        "service[0].vips[0]: expected a string, got 167837441",
    ),
    (
        "vip-dup",
        {"service/0/vips/3": "10.20.255.1"},
        "service[0].vips[3]: '10.20.255.1' is already listed at service[0].vips[0]",
    ),
    (
        "vip-dup-prefix",
        {"service/0/vips/3": "10.20.255.1/32"},
        "service[0].vips[3]: '10.20.255.1/32' is already listed at service[0].vips[0]",
    ),
    (
        "vip-dup-services",
        {"service/1": {"name": "web", "vips": ["10.20.255.2"]}},
        "service[1].vips[0]: '10.20.255.2' is already listed at service[0].vips[1]",
    ),
    # preferred owners
    (
        "preferred-not-vip",
        {"service/0/preferred/10.20.255.9": "lb1"},
        "service[0].preferred: '10.20.255.9' is not a VIP of service 'apex'",
    ),
    (
        "preferred-garbage",
        {"service/0/preferred/www": "lb1"},
        "service[0].preferred: 'www' is not a VIP of service 'apex'",
    ),
    (
        "preferred-unknown",
        {"service/0/preferred/10.20.255.1": "lb7"},
        "service[0].preferred.10.20.255.1: unknown member 'lb7'",
    ),
    (
        "preferred-twice",
        {("service", "0", "preferred", "10.20.255.1/32"): "lb2"},
        "service[0].preferred.10.20.255.1/32: 10.20.255.1 already has a preferred owner",
    ),
    (
        "preferred-not-str",
        {"service/0/preferred/10.20.255.1": 1},
        "service[0].preferred.10.20.255.1: expected a string, got 1",
    ),
    # cluster timings
    ("lease-0", {"cluster/lease": 0}, "cluster.lease: must be > 0, got 0"),
    (
        "lease-short",
        {"cluster/lease": 0.5},
        "cluster.lease: must be > raft.max_timeout + raft.heartbeat (0.6), got 0.5: a new leader"
        " must be elected within one lease",
    ),
    (
        "report-slow",
        {"cluster/report_interval": 1.0},
        "cluster.report_interval: must be <= lease / 2 (0.75), got 1: impossible timings, a"
        " member must renew its lease at least twice per lease",
    ),
    ("report-0", {"cluster/report_interval": 0}, "cluster.report_interval: must be > 0, got 0"),
    (
        "report-vs-fence",
        {"cluster/on_quorum_loss": "withdraw", "raft/connection_timeout": 0.6},
        "cluster.report_interval: must be < min(lease, raft.connection_timeout) - 0.15 (0.45)"
        ' with on_quorum_loss = "withdraw", got 0.5: the member would withdraw between two'
        " reports",
    ),
    (
        "policy",
        {"cluster/on_quorum_loss": "drop"},
        "cluster.on_quorum_loss: must be 'hold' or 'withdraw', got 'drop'",
    ),
    ("shutdown-0", {"cluster/shutdown_timeout": 0}, "cluster.shutdown_timeout: must be > 0, got 0"),
    (
        "shutdown-neg",
        {"cluster/shutdown_timeout": -1.5},
        "cluster.shutdown_timeout: must be > 0, got -1.5",
    ),
    (
        "socket-long",
        {"cluster/control_socket": "/" + "x" * 120},
        "cluster.control_socket: is 121 bytes long; a Unix socket path must be at most 107 bytes",
    ),
    # check timings
    (
        "interval-0",
        {"service/0/check/interval": 0},
        "service[0].check.interval: must be > 0, got 0",
    ),
    (
        "fast-0",
        {"service/0/check/fast_interval": 0},
        "service[0].check.fast_interval: must be > 0, got 0",
    ),
    (
        "fast-slow",
        {"service/0/check/fast_interval": 10},
        "service[0].check.fast_interval: must be <= interval (5), got 10",
    ),
    ("timeout-0", {"service/0/check/timeout": 0}, "service[0].check.timeout: must be > 0, got 0"),
    (
        "timeout-long",
        {"service/0/check/timeout": 6},
        "service[0].check.timeout: must be <= interval (5), got 6: a check must end before the"
        " next one starts",
    ),
    ("rise-0", {"service/0/check/rise": 0}, "service[0].check.rise: must be >= 1, got 0"),
    ("fall-0", {"service/0/check/fall": 0}, "service[0].check.fall: must be >= 1, got 0"),
    (
        "preempt-delay",
        {"service/0/preempt_delay": -1},
        "service[0].preempt_delay: must be >= 0, got -1",
    ),
    # checks
    (
        "two-kinds",
        {"service/0/check/http": "http://127.0.0.1/"},
        "service[0].check: set only one of command, http, tcp (found command and http)",
    ),
    (
        "http-scheme",
        {"service/0/check/command": DELETE, "service/0/check/http": "ftp://x"},
        "service[0].check.http: 'ftp://x' must start with http:// or https://",
    ),
    (
        "http-no-host",
        {"service/0/check/command": DELETE, "service/0/check/http": "http://"},
        "service[0].check.http: 'http://' is not a valid URL with a host",
    ),
    (
        "tcp-port",
        {"service/0/check/command": DELETE, "service/0/check/tcp": "127.0.0.1:0"},
        "service[0].check.tcp: port '0' in '127.0.0.1:0' is not between 1 and 65535",
    ),
    (
        "tcp-host",
        {"service/0/check/command": DELETE, "service/0/check/tcp": "bad_host:80"},
        "service[0].check.tcp: host 'bad_host' in 'bad_host:80' is not an IP address or host name",
    ),
    (
        "tcp-bad-ip",
        {"service/0/check/command": DELETE, "service/0/check/tcp": "10.0.0.300:80"},
        "service[0].check.tcp: host '10.0.0.300' in '10.0.0.300:80' is not an IP address or host"
        " name",
    ),
    (
        "command-empty",
        {"service/0/check/command": ""},
        "service[0].check.command: must not be empty",
    ),
    # raft (pysyncobj's validate() asserts)
    ("heartbeat-0", {"raft/heartbeat": 0}, "raft.heartbeat: must be > 0, got 0"),
    ("wire", {"raft/wire": "tls"}, "raft.wire: must be 'aead' or 'fernet', got 'tls'"),
    ("retry-neg", {"raft/connection_retry": -1}, "raft.connection_retry: must be > 0, got -1"),
    (
        "min-timeout",
        {"raft/min_timeout": 0.1},
        "raft.min_timeout: must be > 3 * raft.heartbeat (0.3), got 0.1",
    ),
    (
        "max-timeout",
        {"raft/max_timeout": 0.2},
        "raft.max_timeout: must be > raft.min_timeout (0.31), got 0.2",
    ),
    (
        "connection-timeout",
        {"raft/connection_timeout": 0.4},
        "raft.connection_timeout: must be >= raft.max_timeout (0.5), got 0.4",
    ),
    (
        "leader-fallback",
        {"raft/leader_fallback": 0.1},
        "raft.leader_fallback: must be > raft.heartbeat (0.1), got 0.1",
    ),
    # announce
    (
        "med-neg",
        {"service/0/announce/med": -1},
        "service[0].announce.med: must be between 0 and 4294967295, got -1",
    ),
    (
        "med-big",
        {"service/0/announce/med": 4294967296},
        "service[0].announce.med: must be between 0 and 4294967295, got 4294967296",
    ),
    (
        "community",
        {"service/0/announce/communities": ["65536:1"]},
        f"service[0].announce.communities[0]: '65536:1' is not a community ({COMMUNITY_RULE})",
    ),
    (
        "community-2",
        {"service/0/announce/communities": ["no-export", "65001:x"]},
        f"service[0].announce.communities[1]: '65001:x' is not a community ({COMMUNITY_RULE})",
    ),
    (
        "large",
        {"service/0/announce/large_communities": ["1:2"]},
        "service[0].announce.large_communities[0]: '1:2' is not a large community"
        " (GLOBAL:LOCAL1:LOCAL2, each 0..4294967295)",
    ),
    (
        "large-big",
        {"service/0/announce/large_communities": ["1:2:4294967296"]},
        "service[0].announce.large_communities[0]: '1:2:4294967296' is not a large community"
        " (GLOBAL:LOCAL1:LOCAL2, each 0..4294967295)",
    ),
    (
        "extended",
        {"service/0/announce/extended_communities": ["foo:1"]},
        "service[0].announce.extended_communities[0]: 'foo:1' is not an extended community (e.g."
        " 'target:65000:1' or 'origin:65000:1')",
    ),
    (
        "as-path-0",
        {"service/0/announce/as_path": [65000, 0]},
        "service[0].announce.as_path[1]: must be between 1 and 4294967295, got 0",
    ),
    (
        "as-path-str",
        {"service/0/announce/as_path": ["65000"]},
        "service[0].announce.as_path[0]: expected an integer, got '65000'",
    ),
    (
        "graceful-shutdown-str",
        {"service/0/announce/graceful_shutdown_community": "no"},
        "service[0].announce.graceful_shutdown_community: expected a boolean (true or false),"
        " got 'no'",
    ),
    (
        "prepend-big",
        {"service/0/announce/backup_prepend": 17},
        "service[0].announce.backup_prepend: must be between 0 and 16, got 17",
    ),
    (
        "next-hop",
        {"service/0/announce/next_hop": "router"},
        "service[0].announce.next_hop: 'router' must be 'self' or an IP address",
    ),
    (
        "local-as-0",
        {"service/0/announce/local_as": 0},
        "service[0].announce.local_as: must be between 1 and 4294967295, got 0",
    ),
    (
        "prepend-no-as",
        {"service/0/announce/backup_prepend": 2, "exabgp": DELETE},
        "service[0].announce.local_as: required when backup_prepend > 0 (or set"
        " exabgp.neighbors[0].local_as)",
    ),
    # control characters never reach ExaBGP
    (
        "ctl-name",
        {"service/0/name": "apex\nannounce route 0.0.0.0/0"},
        "service[0].name: contains a control character (U+000A)",
    ),
    (
        "ctl-community",
        {"service/0/announce/communities": ["65001:100\r"]},
        "service[0].announce.communities[0]: contains a control character (U+000D)",
    ),
    (
        "ctl-command",
        {"service/0/check/command": "curl\x00"},
        "service[0].check.command: contains a control character (U+0000)",
    ),
    (
        "ctl-next-hop",
        {"service/0/announce/next_hop": "self\x7f"},
        "service[0].announce.next_hop: contains a control character (U+007F)",
    ),
    (
        "ctl-line-sep",
        {"cluster/name": "apex\u2028"},
        "cluster.name: contains a control character (U+2028)",
    ),
    (
        "ctl-run",
        {"exabgp/run": "raftvip\trun"},
        "exabgp.run: contains a control character (U+0009)",
    ),
    # exabgp neighbors
    (
        "nb-address",
        {"exabgp/neighbors/0/address": "router"},
        "exabgp.neighbors[0].address: 'router' is not an IP address",
    ),
    (
        "nb-port",
        {"exabgp/neighbors/0/port": 70000},
        "exabgp.neighbors[0].port: must be between 1 and 65535, got 70000",
    ),
    (
        "nb-port-0",
        {"exabgp/neighbors/0/port": 0},
        "exabgp.neighbors[0].port: must be between 1 and 65535, got 0",
    ),
    (
        "nb-peer-as",
        {"exabgp/neighbors/0/peer_as": 0},
        "exabgp.neighbors[0].peer_as: must be between 1 and 4294967295, got 0",
    ),
    (
        "nb-local-as",
        {"exabgp/neighbors/0/local_as": 4294967296},
        "exabgp.neighbors[0].local_as: must be between 1 and 4294967295, got 4294967296",
    ),
    (
        "nb-router-id",
        {"exabgp/neighbors/0/router_id": "2001:db8::1"},
        "exabgp.neighbors[0].router_id: '2001:db8::1' is not an IPv4 address",
    ),
    (
        "nb-hold",
        {"exabgp/neighbors/0/hold_time": 2},
        "exabgp.neighbors[0].hold_time: must be 0 or between 3 and 65535, got 2",
    ),
    (
        "nb-family",
        {"exabgp/neighbors/0/local_address": "::1"},
        [
            "exabgp.neighbors[0].local_address: ::1 is not of the same IP version as 127.0.0.1",
            "exabgp.neighbors[0].router_id: required when local_address is IPv6 (an IPv4 address)",
        ],
    ),
    (
        "process-name",
        {"exabgp/process_name": "raftvip apex"},
        f"exabgp.process_name: 'raftvip apex' is not a valid name ({NAME_RULE})",
    ),
    # metrics
    (
        "metrics-port-only",
        {"metrics/listen": "9273"},
        "metrics.listen: '9273' is not host:port (IPv6 as [addr]:port)",
    ),
    (
        "metrics-port",
        {"metrics/listen": "127.0.0.1:99999"},
        "metrics.listen: port '99999' in '127.0.0.1:99999' is not between 1 and 65535",
    ),
    ("metrics-unknown", {"metrics/port": 9273}, "metrics.port: unknown key"),
]


@pytest.mark.parametrize(
    ("changes", "expected"), [case[1:] for case in BROKEN], ids=[case[0] for case in BROKEN]
)
def test_broken_config_is_reported_with_its_key_path(
    tmp_path: Path, base: dict[str, Any], changes: Changes, expected: str | list[str]
) -> None:
    for path, value in changes.items():
        change(base, path, value)
    problems = problems_of(write_config(tmp_path, base))
    assert problems == ([expected] if isinstance(expected, str) else expected)


def test_every_problem_is_collected(tmp_path: Path, base: dict[str, Any]) -> None:
    base["cluster"]["leese"] = 1
    base["service"][0]["check"]["rise"] = 0
    base["members"]["lb2"] = "nowhere"
    base["exabgp"]["neighbors"][0]["port"] = "179"
    assert problems_of(write_config(tmp_path, base)) == [
        "cluster.leese: unknown key (did you mean 'lease'?)",
        "members.lb2: 'nowhere' is not host:port (IPv6 as [addr]:port)",
        "exabgp.neighbors[0].port: expected an integer, got '179'",
        "service[0].check.rise: must be >= 1, got 0",
    ]


def test_invalid_toml_is_one_problem_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[cluster]\nname = "apex\n')
    problems = problems_of(str(path))
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: invalid TOML: ")


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[cluster]\nname = "caf\xe9"\n')
    assert problems_of(str(path))[0].startswith(f"{path}: invalid TOML: not UTF-8")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    assert problems_of(str(path)) == [f"{path}: cannot read: No such file or directory"]


# ------------------------------------------------------------------------------- secret


def cluster_with(secret_file: Path | None) -> ClusterConfig:
    return ClusterConfig(
        name="apex",
        member="lb1",
        secret_file=None if secret_file is None else str(secret_file),
        state_dir="state",
        control_socket="apex.sock",
    )


def test_secret_comes_from_the_file_without_its_newline(tmp_path: Path) -> None:
    assert load_secret(cluster_with(write_secret(tmp_path)), environ={}) == SECRET


def test_secret_from_the_environment_wins(tmp_path: Path, base: dict[str, Any]) -> None:
    other = "another-secret-from-the-env"
    assert load_secret(cluster_with(write_secret(tmp_path)), {"RAFTVIP_SECRET": other}) == other
    assert load_secret(cluster_with(None), {"RAFTVIP_SECRET": other}) == other
    # The file does not even have to exist then.
    base["cluster"]["secret_file"] = str(tmp_path / "absent")
    load_config(write_config(tmp_path, base), environ={"RAFTVIP_SECRET": other})


def test_an_empty_environment_variable_falls_back_to_the_file(tmp_path: Path) -> None:
    secret_file = write_secret(tmp_path)
    assert load_secret(cluster_with(secret_file), {"RAFTVIP_SECRET": ""}) == SECRET


def test_secret_defaults_to_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAFTVIP_SECRET", "from-os-environ-0123456789")
    assert load_secret(cluster_with(None)) == "from-os-environ-0123456789"


def secret_problem(directory: Path, secret_file: Path | None, environ: dict[str, str]) -> str:
    """The problem load_config reports for this secret source (and load_secret agrees)."""
    document = tomllib.loads(example_text(directory))
    if secret_file is None:
        del document["cluster"]["secret_file"]
    else:
        document["cluster"]["secret_file"] = str(secret_file)
    problems = problems_of(write_config(directory, document), environ=environ)
    with pytest.raises(SecretError) as caught:
        load_secret(cluster_with(secret_file), environ)
    assert problems == [str(caught.value)]
    return problems[0]


def test_secret_required(tmp_path: Path) -> None:
    assert secret_problem(tmp_path, None, {}) == (
        "cluster.secret_file: required (or set RAFTVIP_SECRET): the Raft port is encrypted"
    )


def test_secret_file_missing(tmp_path: Path) -> None:
    absent = tmp_path / "absent"
    assert secret_problem(tmp_path, absent, {}) == (
        f"cluster.secret_file: {absent}: cannot read: No such file or directory"
    )


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o660])
def test_secret_file_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    secret_file = write_secret(tmp_path, mode=mode)
    assert secret_problem(tmp_path, secret_file, {}) == (
        f"cluster.secret_file: {secret_file}: accessible by group or others"
        f" (mode {mode:04o}); run `chmod 600 {secret_file}`"
    )


def test_secret_file_that_is_a_directory(tmp_path: Path) -> None:
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    assert secret_problem(tmp_path, directory, {}) == (
        f"cluster.secret_file: {directory}: not a regular file"
    )


def test_empty_secret_file(tmp_path: Path) -> None:
    secret_file = write_secret(tmp_path, secret="  ")
    assert secret_problem(tmp_path, secret_file, {}) == (
        f"cluster.secret_file: {secret_file}: the secret is empty"
    )


SHORT = "short-secret-15"


def test_short_secret_file(tmp_path: Path) -> None:
    secret_file = write_secret(tmp_path, secret=SHORT)
    assert secret_problem(tmp_path, secret_file, {}) == (
        f"cluster.secret_file: {secret_file}: the secret is shorter than 16 characters;"
        " use a long random string (e.g. `openssl rand -base64 32`)"
    )


def test_short_secret_in_the_environment(tmp_path: Path) -> None:
    assert secret_problem(tmp_path, write_secret(tmp_path), {"RAFTVIP_SECRET": SHORT}) == (
        "RAFTVIP_SECRET: the secret is shorter than 16 characters;"
        " use a long random string (e.g. `openssl rand -base64 32`)"
    )


def test_the_secret_never_appears_in_a_problem(tmp_path: Path) -> None:
    texts = []
    for mode in (0o600, 0o644):
        for secret in (SECRET, SHORT, "\xff" * 20):
            secret_file = tmp_path / "secret"
            secret_file.write_bytes(secret.encode("latin-1") + b"\n")
            secret_file.chmod(mode)
            for environ in ({}, {"RAFTVIP_SECRET": SHORT}):
                try:
                    load_secret(cluster_with(secret_file), environ)
                except SecretError as exc:
                    texts.append(str(exc))
    # A secret pasted into the config by mistake is reported by its key, not its value.
    document = tomllib.loads(example_text(tmp_path))
    document["cluster"]["secret"] = SECRET
    texts.extend(problems_of(write_config(tmp_path, document)))

    assert len(texts) >= 8
    assert "cluster.secret: unknown key (did you mean 'secret_file'?)" in texts
    for text in texts:
        assert SECRET not in text
        assert SHORT not in text
        assert "\\xff" not in text and "0xff" not in text


# --------------------------------------------------------------------- property testing

JUNK_STRINGS = [
    "",
    "lb1",
    "lb9",
    "self",
    "hold",
    "10.0.0.1",
    "10.0.0.300",
    "10.0.0.1/24",
    "2001:db8::1/128",
    "::1:7801",
    "[::1]:7801",
    "127.0.0.1:0",
    "65001:100",
    "1:2:3",
    "target:1:1",
    "http://",
    "http://[::1",
    "ftp://x",
    "a\nb",
    "\x00",
    "-",
    "x" * 300,
]
SCALARS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(JUNK_STRINGS),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-2, max_value=70000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
JUNK = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=3),
    st.dictionaries(st.text(max_size=6), SCALARS, max_size=3),
    st.lists(
        st.dictionaries(st.sampled_from(["name", "vips", "x"]), SCALARS, max_size=2), max_size=2
    ),
)


def paths_in(node: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of the document, tables and arrays included."""
    found = []
    items: list[tuple[str, object]] = []
    if isinstance(node, dict):
        items = list(node.items())
    elif isinstance(node, list):
        items = [(str(i), item) for i, item in enumerate(node)]
    for key, child in items:
        found.append((*prefix, key))
        found.extend(paths_in(child, (*prefix, key)))
    return found


@st.composite
def mutated_documents(draw: st.DrawFn, valid: dict[str, Any]) -> dict[str, Any]:
    document = copy.deepcopy(valid)
    targets = draw(st.lists(st.sampled_from(paths_in(valid)), min_size=1, max_size=4))
    for target in targets:
        action = draw(st.sampled_from(["replace", "replace", "delete", "add-junk-key"]))
        try:
            if action == "replace":
                change(document, target, draw(JUNK))
            elif action == "delete":
                change(document, target, DELETE)
            else:
                change(document, (*target, draw(st.text(min_size=1, max_size=8))), draw(JUNK))
        except (KeyError, IndexError, TypeError, ValueError):
            pass  # an earlier mutation removed or replaced this part of the document
    return document


@pytest.fixture(scope="module")
def property_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("property")
    write_secret(directory)
    return directory


@pytest.fixture(scope="module")
def valid_document(property_dir: Path) -> dict[str, Any]:
    document = tomllib.loads(example_text(property_dir))
    document["metrics"] = {"listen": "127.0.0.1:9273"}
    document["service"][0]["announce"].update(backup_prepend=1, local_as=65011)
    return document


def root_key(problem: str) -> str:
    """The first key of the path a problem starts with (possibly a quoted key)."""
    if problem.startswith('"'):
        key: str = json.JSONDecoder().raw_decode(problem)[0]
        return key
    match = re.match(r"[^.\[:]*", problem)
    assert match is not None
    return match.group()


def test_property_documents_load_or_fail_with_key_paths(
    property_dir: Path, valid_document: dict[str, Any]
) -> None:
    path = property_dir / "raftvip.toml"
    path.write_text(to_toml(valid_document))
    assert isinstance(load_config(str(path), environ={}), Config)

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(mutated_documents(valid_document))
    def check(document: dict[str, Any]) -> None:
        path.write_text(to_toml(document))
        try:
            config = load_config(str(path), environ={})
        except ConfigError as exc:
            assert exc.problems
            for problem in exc.problems:
                assert "\n" not in problem and SECRET not in problem
                if problem.startswith(f"{path}: "):
                    continue
                assert root_key(problem) in TOP_LEVEL_KEYS, problem
                assert ": " in problem, problem
        else:
            assert isinstance(config, Config)

    check()


def test_load_config_reads_the_process_environment_by_default(
    tmp_path: Path, base: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    base["cluster"]["secret_file"] = str(tmp_path / "absent")
    path = write_config(tmp_path, base)
    monkeypatch.delenv("RAFTVIP_SECRET", raising=False)
    with pytest.raises(ConfigError):
        load_config(path)
    monkeypatch.setenv("RAFTVIP_SECRET", "from-os-environ-0123456789")
    assert load_config(path).me == "lb1"


# ------------------------------------------------------------------------- [zookeeper]


def test_zookeeper_section_is_optional_and_has_documented_defaults(
    tmp_path: Path, base: dict[str, Any]
) -> None:
    from raftvip.config import ZookeeperConfig

    assert load_config(write_config(tmp_path, base), environ={}).zookeeper is None
    base["zookeeper"] = {"hosts": ["127.0.0.1:2181", "zk2.example.net:2181"]}
    zk = load_config(write_config(tmp_path, base), environ={}).zookeeper
    assert zk == ZookeeperConfig(hosts=("127.0.0.1:2181", "zk2.example.net:2181"))
    assert zk.service_path == "/exabgp/service/{service}"
    assert zk.maintenance_path == "/exabgp/maintenance/{service}"
    assert zk.state_path == "/raftvip/{cluster}"
    assert zk.session_timeout == 10 and zk.auth_file is None
    assert not zk.per_member_maintenance


def test_zookeeper_per_member_maintenance_and_auth_file(
    tmp_path: Path, base: dict[str, Any]
) -> None:
    from raftvip.config import load_zookeeper_auth

    auth = tmp_path / "zk-auth"
    auth.write_text("raftvip:pa:ss\n")
    auth.chmod(0o600)
    base["zookeeper"] = {
        "hosts": ["127.0.0.1:2181"],
        "maintenance_path": "/exabgp/maintenance/{service}/{member}",
        "session_timeout": 4,
        "auth_file": str(auth),
    }
    zk = load_config(write_config(tmp_path, base), environ={}).zookeeper
    assert zk is not None and zk.per_member_maintenance
    assert load_zookeeper_auth(zk) == ("raftvip", "pa:ss")


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({}, 'zookeeper.hosts: required (e.g. ["127.0.0.1:2181"])'),
        ({"hosts": []}, "zookeeper.hosts: must not be empty"),
        ({"hosts": ["zk:99999"]}, "zookeeper.hosts[0]: port '99999' in 'zk:99999' is not"),
        ({"hosts": ["zk:2181"], "host": 1}, "zookeeper.host: unknown key (did you mean 'hosts'?)"),
        ({"hosts": ["zk:2181"], "service_path": "exabgp"}, "zookeeper.service_path: 'exabgp' is"),
        ({"hosts": ["zk:2181"], "state_path": "/a/"}, "zookeeper.state_path: '/a/' is not"),
        (
            {"hosts": ["zk:2181"], "state_path": "/raftvip/{service}"},
            "zookeeper.state_path: '/raftvip/{service}': unknown placeholder {service}",
        ),
        (
            {"hosts": ["zk:2181"], "maintenance_path": "/m/{member}/{service}"},
            "zookeeper.maintenance_path: '/m/{member}/{service}': {member} may only be the last",
        ),
        ({"hosts": ["zk:2181"], "service_path": "/zookeeper/x"}, "zookeeper.service_path: '/zoo"),
        ({"hosts": ["zk:2181"], "session_timeout": 0}, "zookeeper.session_timeout: must be > 0"),
        ({"hosts": ["zk:2181"], "auth_file": "/nonexistent/zk"}, "zookeeper.auth_file: /nonex"),
    ],
)
def test_zookeeper_problems_name_their_key_path(
    tmp_path: Path, base: dict[str, Any], section: dict[str, Any], expected: str
) -> None:
    base["zookeeper"] = section
    problems = problems_of(write_config(tmp_path, base))
    assert len(problems) == 1 and problems[0].startswith(expected), problems


@pytest.mark.parametrize(
    ("mode", "text"), [(0o644, "u:pw-Secret1"), (0o600, "pw-Secret1"), (0o600, ":pw-Secret1")]
)
def test_zookeeper_auth_file_rules(
    tmp_path: Path, base: dict[str, Any], mode: int, text: str
) -> None:
    auth = tmp_path / "zk-auth"
    auth.write_text(text)
    auth.chmod(mode)
    base["zookeeper"] = {"hosts": ["zk:2181"], "auth_file": str(auth)}
    (problem,) = problems_of(write_config(tmp_path, base))
    assert problem.startswith(f"zookeeper.auth_file: {auth}: ")
    assert "group or others" in problem if mode & 0o077 else "user:password" in problem
    assert "pw-Secret1" not in problem


# ------------------------------------------------------------------- takeover_margin


def test_takeover_margin_defaults_to_one_where_the_local_as_is_known(
    tmp_path: Path, base: dict[str, Any]
) -> None:
    announce = load_config(write_config(tmp_path, base), environ={}).services[0].announce
    assert (announce.takeover_margin, announce.local_as) == (1, 65011)
    assert announce.takeover_hold_time == 180.0  # ExaBGP's hold time: no neighbor sets one
    # An explicit local_as without [exabgp] is known too.
    del base["exabgp"]
    base["service"][0]["announce"]["local_as"] = 7
    config = load_config(write_config(tmp_path, base), environ={})
    assert config.services[0].announce.takeover_margin == 1
    assert config.notes == ()


def test_takeover_margin_is_off_with_a_note_where_the_local_as_is_unknown(
    tmp_path: Path, base: dict[str, Any]
) -> None:
    del base["exabgp"]  # a valid config before takeover_margin existed stays valid
    config = load_config(write_config(tmp_path, base), environ={})
    assert config.services[0].announce.takeover_margin == 0
    (note,) = config.notes
    assert note.startswith("service[0].announce.takeover_margin: 0 (the local AS is unknown)")


def test_takeover_margin_is_off_with_a_note_on_ibgp(tmp_path: Path, base: dict[str, Any]) -> None:
    base["exabgp"]["neighbors"][0]["peer_as"] = 65011  # = local_as: iBGP
    config = load_config(write_config(tmp_path, base), environ={})
    assert config.services[0].announce.takeover_margin == 0
    (note,) = config.notes
    assert "iBGP session to 127.0.0.1" in note


@pytest.mark.parametrize(
    ("holds", "expected"),
    [([9], 9.0), ([9, 30], 30.0), ([9, None], 180.0), ([9, 0], math.inf)],
)
def test_takeover_hold_time_defaults_from_the_neighbors(
    tmp_path: Path, base: dict[str, Any], holds: list[int | None], expected: float
) -> None:
    first = base["exabgp"]["neighbors"][0]
    neighbors = []
    for index, hold in enumerate(holds):
        neighbor = {**first, "address": f"127.0.0.{index + 1}"}
        if hold is not None:
            neighbor["hold_time"] = hold
        neighbors.append(neighbor)
    base["exabgp"]["neighbors"] = neighbors
    announce = load_config(write_config(tmp_path, base), environ={}).services[0].announce
    assert announce.takeover_hold_time == expected
    base["service"][0]["announce"]["takeover_hold_time"] = 12.5
    announce = load_config(write_config(tmp_path, base), environ={}).services[0].announce
    assert announce.takeover_hold_time == 12.5


def test_takeover_margin_zero_turns_it_off_without_a_note(
    tmp_path: Path, base: dict[str, Any]
) -> None:
    del base["exabgp"]
    base["service"][0]["announce"]["takeover_margin"] = 0
    config = load_config(write_config(tmp_path, base), environ={})
    assert config.services[0].announce.takeover_margin == 0 and config.notes == ()


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        (
            {"service/0/announce/takeover_margin": -1},
            "service[0].announce.takeover_margin: must be between 0 and 16, got -1",
        ),
        (
            {"service/0/announce/takeover_margin": 17},
            "service[0].announce.takeover_margin: must be between 0 and 16, got 17",
        ),
        (
            {"service/0/announce/takeover_margin": "1"},
            "service[0].announce.takeover_margin: expected an integer, got '1'",
        ),
        (
            {"service/0/announce/takeover_margin": 2, "exabgp": DELETE},
            "service[0].announce.local_as: required when takeover_margin > 0",
        ),
        (
            {"service/0/announce/takeover_hold_time": 0},
            "service[0].announce.takeover_hold_time: must be > 0, got 0",
        ),
        (
            {"service/0/announce/takeover_hold_time": "9s"},
            "service[0].announce.takeover_hold_time: expected a number, got '9s'",
        ),
    ],
)
def test_takeover_settings_are_validated(
    tmp_path: Path, base: dict[str, Any], changes: dict[str, object], problem: str
) -> None:
    for path, value in changes.items():
        change(base, tuple(path.split("/")) if "/" in path else path, value)
    problems = problems_of(write_config(tmp_path, base))
    assert any(p.startswith(problem) for p in problems), problems


def test_raft_wire_defaults_to_aead_and_reads_fernet(tmp_path: Path, base: dict[str, Any]) -> None:
    assert load_config(write_config(tmp_path, base), environ={}).raft.wire == "aead"
    base["raft"] = {"wire": "fernet"}
    assert load_config(write_config(tmp_path, base), environ={}).raft.wire == "fernet"
