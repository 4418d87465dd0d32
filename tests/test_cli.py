"""The `raftvip` command line as a user runs it: exit codes, messages, stdout vs stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from raftvip.testing.bgplab import EXABGP4_BINARY, exabgp_binary
from raftvip.testing.group import SECRET, Group
from tests.exabgp_versions import requires_exabgp4


def raftvip(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "raftvip", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def test_check_config_ok_and_warning_for_ipv6_over_ipv4(tmp_path: Path) -> None:
    group = Group(tmp_path, size=3, router=("127.0.0.1", 1179, 65000))
    config = group.members["lb1"].config
    ok = raftvip("check-config", "-c", str(config))
    assert ok.returncode == 0 and ok.stdout == "OK\n" and ok.stderr == ""
    text = config.read_text().replace('"10.30.0.1"', '"2001:db8::1"')
    text = text.replace("vips = [", 'vips = ["2001:db8::1", ', 1)
    config.write_text(text)
    warned = raftvip("check-config", "-c", str(config))
    assert warned.returncode == 0 and warned.stdout == "OK\n"
    assert "service[0].announce.next_hop: 'self' cannot announce IPv6 VIP 2001:db8::1" in (
        warned.stderr
    )
    config.write_text(text.replace('next_hop = "self"', 'next_hop = "self"\nnext_hop6 = "::1"'))
    assert raftvip("check-config", "-c", str(config)).stderr == ""


def test_check_config_lists_every_problem_and_exits_1(tmp_path: Path) -> None:
    group = Group(tmp_path, size=3)
    config = group.members["lb1"].config
    text = config.read_text().replace('member = "lb1"', 'member = "lb9"')
    text = text.replace("lease = 1.5", "lease = -1")
    config.write_text(text)
    result = raftvip("check-config", "-c", str(config))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "cluster.member: 'lb9' is not in [members] (known: lb1, lb2, lb3)" in result.stderr
    assert "cluster.lease:" in result.stderr
    assert SECRET not in result.stderr


def test_run_refuses_a_bad_config_before_printing_anything(tmp_path: Path) -> None:
    group = Group(tmp_path, size=3)
    config = group.members["lb2"].config
    (tmp_path / "secret").chmod(0o644)
    result = raftvip("run", "-c", str(config))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "chmod 600" in result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_status_without_a_running_member_is_a_clear_error(tmp_path: Path) -> None:
    group = Group(tmp_path, size=3)
    result = raftvip("status", "-c", str(group.members["lb1"].config))
    assert result.returncode == 1
    assert "no control socket" in result.stderr and "raftvip run" in result.stderr


def test_exabgp_config_prints_process_and_neighbor(tmp_path: Path) -> None:
    group = Group(tmp_path, size=3, router=("127.0.0.1", 1179, 65000))
    config = group.members["lb3"].config
    result = raftvip("exabgp-config", "-c", str(config))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "process raftvip-test {" in out
    assert f"run {sys.executable}" in out or "raftvip run -c" in out
    assert "neighbor 127.0.0.1 {" in out and "local-address 127.0.0.13;" in out
    assert "peer-as 65000;" in out and "local-as 65013;" in out and "connect 1179;" in out
    assert "processes [ raftvip-test ];" in out
    assert SECRET not in out


def _exabgp_config_with_path(
    config: Path, path: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """`raftvip exabgp-config` with PATH = `path`: what it finds there as `exabgp`."""
    return raftvip("exabgp-config", "-c", str(config), *args, env={**os.environ, "PATH": path})


@pytest.mark.parametrize(
    ("found", "version"),
    [
        pytest.param(EXABGP4_BINARY, "ExaBGP 4.2", marks=requires_exabgp4, id="debian-4.2"),
        pytest.param(None, "ExaBGP 5.0", id="pip-5.0"),
    ],
)
def test_exabgp_config_writes_for_the_exabgp_on_path(
    tmp_path: Path, found: str | None, version: str
) -> None:
    config = Group(tmp_path, size=3, router=("127.0.0.1", 1179, 65000)).members["lb1"].config
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "exabgp").symlink_to(found or exabgp_binary(5))
    result = _exabgp_config_with_path(config, str(bin_dir))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines()[1].startswith(f"# For {version}")
    # --exabgp-version wins over what is installed
    other = "5" if version == "ExaBGP 4.2" else "4"
    forced = _exabgp_config_with_path(config, str(bin_dir), "--exabgp-version", other)
    assert forced.stdout.splitlines()[1].startswith(
        "# For ExaBGP 5.0" if other == "5" else "# For ExaBGP 4.2"
    )


def test_exabgp_config_without_exabgp_writes_for_5_with_a_note(tmp_path: Path) -> None:
    config = Group(tmp_path, size=3, router=("127.0.0.1", 1179, 65000)).members["lb1"].config
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _exabgp_config_with_path(config, str(empty))
    assert result.returncode == 0
    assert result.stdout.splitlines()[1].startswith("# For ExaBGP 5.0")
    assert "note: no `exabgp` on PATH" in result.stderr and "--exabgp-version 4" in result.stderr
    bad = raftvip("exabgp-config", "-c", str(config), "--exabgp-version", "6")
    assert bad.returncode == 2 and "'6' is not one of '4', '5'" in bad.stderr


@pytest.mark.parametrize(
    ("says", "code", "message"),
    [
        # no ExaBGP 6 or 3 can run here: scripts that answer as they do
        ("ExaBGP : 6.0.0", 0, "run it with exabgp_api_version=4"),
        ("ExaBGP : 3.4.10", 1, "ExaBGP 3.4.10 (the `exabgp` on PATH) is too old"),
    ],
)
def test_exabgp_config_for_an_exabgp_it_does_not_know(
    tmp_path: Path, says: str, code: int, message: str
) -> None:
    config = Group(tmp_path, size=3, router=("127.0.0.1", 1179, 65000)).members["lb1"].config
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "exabgp"
    script.write_text(f"#!/bin/sh\necho '{says}'\n")
    script.chmod(0o755)
    result = _exabgp_config_with_path(config, f"{bin_dir}:/usr/bin:/bin")
    assert result.returncode == code
    assert message in result.stderr
    if code == 0:
        assert result.stdout.splitlines()[1].startswith("# For ExaBGP 5.0")


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    result = raftvip("maintenance", "sideways", "apex")
    assert result.returncode == 2
    assert "Invalid value" in result.stderr


def test_the_readme_example_config_passes_check_config(tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    config = tmp_path / "apex.toml"
    config.write_text(block)
    env = {**os.environ, "RAFTVIP_SECRET": SECRET}
    result = raftvip("check-config", "-c", str(config), env=env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "OK\n", "")
    snippet = raftvip("exabgp-config", "-c", str(config), env=env)
    assert snippet.returncode == 0
    assert "neighbor 10.20.151.129 {" in snippet.stdout
    assert "processes [ raftvip-apex ];" in snippet.stdout


def test_check_config_notes_a_takeover_margin_that_defaults_to_zero(tmp_path: Path) -> None:
    """Without a router ([exabgp]) nor local_as, the AS to prepend is unknown: the config is
    valid (as before takeover_margin existed) and check-config says what that means."""
    group = Group(tmp_path, size=3)
    result = raftvip("check-config", "-c", str(group.members["lb1"].config))
    assert result.returncode == 0 and result.stdout == "OK\n"
    assert result.stderr.startswith(
        "note: service[0].announce.takeover_margin: 0 (the local AS is unknown)"
    )


def test_reload_without_a_running_member_says_where_it_looked(tmp_path: Path) -> None:
    group = Group(tmp_path, size=3)
    config = group.members["lb1"].config
    result = raftvip("reload", "-c", str(config))
    assert result.returncode == 1 and result.stdout == ""
    assert f"no control socket at '{tmp_path / 'lb1.sock'}'" in result.stderr
    assert "a changed cluster.control_socket needs a restart" in result.stderr
    # A file that does not even say where the socket is: its problems, as check-config's.
    config.write_text(config.read_text().replace("[cluster]", "[cluster"))
    broken = raftvip("reload", "-c", str(config))
    assert broken.returncode == 1 and "invalid TOML" in broken.stderr
