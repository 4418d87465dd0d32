"""Render the ExaBGP configuration that runs raftvip as a `process` for every neighbor.

The output is a complete file for `exabgp FILE`, for ExaBGP 4.2 and 5.0 alike: the blocks raftvip
uses (`process` with `run` and `encoder`; `neighbor` with `router-id`, `local-address`,
`local-as`, `peer-as`, `connect`, `hold-time`, `family`, `api { processes; neighbor-changes; }`)
have the same syntax in both (checked with 4.2's `exabgp --validate` and 5.0's `exabgp validate`,
and by real ExaBGPs of both versions peering with BIRD in tests/test_bgplab.py). Only the header
differs: how that version is run and checked.

ExaBGP passes the `run` words as argv, without a shell; its tokenizer knows single and double
quotes but treats a backslash as an escape and `;`, `{`, `}`, `[`, `]`, `,` and `#` as syntax
outside quotes, so each word is re-quoted for it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import subprocess
import sys

from raftvip.config import Config, NeighborConfig

DEFAULT_BGP_PORT = 179
VERSION_TIMEOUT = 10.0  # `exabgp --version` imports all of ExaBGP: ~0.3 s, more on a busy host

_VERSION_LINE = re.compile(r"^ExaBGP\s*:\s*(\d+)\.(\S+)", re.MULTILINE)

_PROCESS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_BARE_WORD = re.compile(r"[A-Za-z0-9_./:=@%+-]+")


def installed_exabgp_version(
    binary: str = "exabgp", timeout: float = VERSION_TIMEOUT
) -> tuple[int, str] | None:
    """(major, full version) of the ExaBGP at `binary` (a path or a name on PATH), None when
    there is none or it does not say.

    4.2 answers `exabgp --version` (`ExaBGP : 4.2.21`); 5.0 answers `exabgp version` and
    rejects `--version` with a usage error, so `--version` is asked first (4.2 would read
    `version` as the name of a configuration file).
    """
    for argv in ([binary, "--version"], [binary, "version"]):
        try:
            result = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "exabgp_api_cli": "false"},
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        match = _VERSION_LINE.search(result.stdout)
        if result.returncode == 0 and match is not None:
            return int(match[1]), f"{match[1]}.{match[2]}"
    return None


def process_name(cfg: Config) -> str:
    """The name of the ExaBGP process block: `[exabgp] process_name` or "raftvip-<cluster>"."""
    return cfg.exabgp.process_name or f"raftvip-{cfg.cluster.name}"


def default_run_command(config_path: str) -> str:
    """How ExaBGP starts this raftvip: the `raftvip` script beside this interpreter if there is
    one (a virtualenv), else `<python> -m raftvip`; always with an absolute config path."""
    path = os.path.abspath(config_path)
    script = os.path.join(os.path.dirname(sys.executable), "raftvip")
    if os.path.isfile(script) and os.access(script, os.X_OK):
        argv = [script, "run", "-c", path]
    else:
        argv = [sys.executable, "-m", "raftvip", "run", "-c", path]
    return shlex.join(argv)


def _exabgp_word(word: str) -> str:
    """Quote one argv word the way ExaBGP's configuration tokenizer reads it back."""
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in word):
        raise ValueError(f"run: {word!r} contains a control character")
    if "\\" in word:
        raise ValueError(f"run: {word!r} contains a backslash, which ExaBGP reads as an escape")
    if _BARE_WORD.fullmatch(word):
        return word
    if '"' not in word:
        return f'"{word}"'
    if "'" not in word:
        return f"'{word}'"
    raise ValueError(f"run: {word!r} contains both quote characters; ExaBGP cannot read it")


def exabgp_run_words(run_command: str) -> str:
    """`run_command` (shell syntax) as the words of an ExaBGP `run` statement."""
    try:
        argv = shlex.split(run_command)
    except ValueError as exc:
        raise ValueError(f"run: {run_command!r} is not a valid command line: {exc}") from None
    if not argv:
        raise ValueError("run: the command is empty")
    if not os.path.isabs(argv[0]):
        raise ValueError(f"run: {argv[0]!r} must be an absolute path (ExaBGP searches elsewhere)")
    return " ".join(_exabgp_word(word) for word in argv)


def _router_id(index: int, neighbor: NeighborConfig) -> str:
    if neighbor.router_id is not None:
        return neighbor.router_id
    if ipaddress.ip_address(neighbor.local_address).version == 4:
        return neighbor.local_address
    raise ValueError(
        f"exabgp.neighbors[{index}]: router_id is required when local_address "
        f"({neighbor.local_address}) is IPv6"
    )


def _neighbor_block(index: int, neighbor: NeighborConfig, name: str, ipv6: bool) -> list[str]:
    lines = [
        f"neighbor {ipaddress.ip_address(neighbor.address).compressed} {{",
        f"    router-id {_router_id(index, neighbor)};",
        f"    local-address {ipaddress.ip_address(neighbor.local_address).compressed};",
        f"    local-as {neighbor.local_as};",
        f"    peer-as {neighbor.peer_as};",
    ]
    if neighbor.port != DEFAULT_BGP_PORT:
        lines.append(f"    connect {neighbor.port};")
    if neighbor.hold_time is not None:
        lines.append(f"    hold-time {neighbor.hold_time};")
    lines += ["    family {", "        ipv4 unicast;"]
    if ipv6:
        lines.append("        ipv6 unicast;")
    lines += [
        "    }",
        "    api {",
        f"        processes [ {name} ];",
        "        neighbor-changes;",
        "    }",
        "}",
    ]
    return lines


_HEADERS = {
    4: [
        "# For ExaBGP 4.2 (Debian's /usr/sbin/exabgp): run `exabgp FILE`, check it with",
        "# `exabgp --validate FILE`; it also reads /etc/exabgp/exabgp.env (the environment wins).",
    ],
    5: [
        "# For ExaBGP 5.0: run `exabgp FILE` (the same as `exabgp server FILE`), check it with",
        "# `exabgp validate FILE`.",
    ],
}


def render_exabgp_config(cfg: Config, run_command: str, exabgp_version: int = 5) -> str:
    """A complete ExaBGP configuration for `exabgp_version` (4: 4.2, 5: 5.0): one text-encoder
    process, one block per neighbor.

    `ipv6 unicast` is negotiated when any service has an IPv6 VIP. Acks stay on (ExaBGP's
    default): they are the only signal that a command failed.
    """
    if exabgp_version not in _HEADERS:
        raise ValueError(f"ExaBGP version: 4 (4.2) or 5 (5.0), got {exabgp_version!r}")
    name = process_name(cfg)
    if not _PROCESS_NAME.fullmatch(name):
        raise ValueError(
            f"exabgp.process_name: {name!r} must be letters, digits, '_', '.' or '-' "
            "and start with a letter or digit"
        )
    if not cfg.exabgp.neighbors:
        raise ValueError("exabgp.neighbors: at least one neighbor is needed to announce VIPs")
    ipv6 = any(":" in vip for service in cfg.services for vip in service.vips)
    lines = [
        f"# Generated by raftvip for cluster {cfg.cluster.name!r} member {cfg.me!r}.",
        *_HEADERS[exabgp_version],
        "# Environment: exabgp_api_cli=false, exabgp_daemon_user=<the user owning state_dir>;",
        "# keep acks on (exabgp_api_ack, the default): they are raftvip's only error signal.",
        f"process {name} {{",
        f"    run {exabgp_run_words(run_command)};",
        "    encoder text;",
        "}",
    ]
    for index, neighbor in enumerate(cfg.exabgp.neighbors):
        lines.append("")
        lines += _neighbor_block(index, neighbor, name, ipv6)
    return "\n".join(lines) + "\n"


def next_hop_problems(cfg: Config) -> list[str]:
    """Settings ExaBGP accepts in its config but answers `error` to on every announce.

    `next-hop self` resolves to the session's local address: an IPv6 VIP over an IPv4 session
    needs an explicit IPv6 next hop (BIRD also rejects an IPv4-mapped `::ffff:a.b.c.d`).
    Meant for `check-config`.
    """
    ipv4_sessions = [
        neighbor.address
        for neighbor in cfg.exabgp.neighbors
        if ipaddress.ip_address(neighbor.local_address).version == 4
    ]
    problems = []
    for index, service in enumerate(cfg.services):
        ipv6_vips = [vip for vip in service.vips if ":" in vip]
        announce = service.announce
        if (
            announce.next_hop == "self"
            and announce.next_hop6 is None
            and ipv4_sessions
            and ipv6_vips
        ):
            problems.append(
                f"service[{index}].announce.next_hop: 'self' cannot announce IPv6 VIP "
                f"{ipv6_vips[0]} over the IPv4 session to {ipv4_sessions[0]}; "
                "set service.announce.next_hop6 to this host's IPv6 address"
            )
    return problems
