"""The package as a user gets it: sdist + wheel built by `python -m build`, checked by twine,
the wheel installed into a fresh venv outside the checkout and run from elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest

import raftvip

REPO = Path(__file__).resolve().parent.parent
SECRET = "example-secret-0123456789"


def packaged_example() -> str:
    return (resources.files("raftvip") / "examples" / "raftvip.toml").read_text(encoding="utf-8")


def test_deploy_example_is_the_packaged_example() -> None:
    assert (REPO / "deploy" / "raftvip.toml.example").read_text() == packaged_example()


def test_example_config_prints_the_packaged_example() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "raftvip", "example-config"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == packaged_example()


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`python -m build` of the checkout: the sdist, then the wheel built from that sdist."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    yield out


@pytest.mark.slow
def test_build_gives_an_sdist_and_a_wheel_that_twine_accepts(dist: Path) -> None:
    version = raftvip.__version__
    names = sorted(p.name for p in dist.iterdir())
    assert names == [f"raftvip-{version}-py3-none-any.whl", f"raftvip-{version}.tar.gz"]
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, sorted(dist.iterdir()))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2, result.stdout


def outside_env(venv: Path) -> dict[str, str]:
    """The environment of a shell on a host where only the venv's raftvip is installed."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "RAFTVIP_CONFIG", "PYTHONHOME")
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env["RAFTVIP_SECRET"] = SECRET  # the example's secret_file is /etc/raftvip/secret
    return env


@pytest.mark.slow
def test_the_installed_wheel_works_outside_the_checkout(dist: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    wheel = next(dist.glob("*.whl"))
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = outside_env(venv)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), capture_output=True, text=True, cwd=elsewhere, env=env, timeout=60
        )

    # The venv's own copy is imported, not the checkout's.
    where = run(str(venv / "bin" / "python"), "-c", "import raftvip; print(raftvip.__file__)")
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout

    version = run("raftvip", "--version")
    assert (version.returncode, version.stdout) == (0, f"raftvip, version {raftvip.__version__}\n")

    example = run("raftvip", "example-config")
    assert example.returncode == 0, example.stderr
    assert example.stdout == packaged_example()
    config = elsewhere / "raftvip.toml"
    config.write_text(example.stdout)

    checked = run("raftvip", "check-config", "-c", str(config))
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "OK\n", "")

    exabgp = run("raftvip", "exabgp-config", "--exabgp-version", "5", "-c", str(config))
    assert exabgp.returncode == 0, exabgp.stderr
    assert exabgp.stdout == (REPO / "deploy" / "exabgp.conf.example").read_text()

    # The completion lines of the README, in a real bash.
    completion = run(
        "bash",
        "-c",
        'eval "$(_RAFTVIP_COMPLETE=bash_source raftvip)"; '
        "COMP_WORDS=(raftvip ex); COMP_CWORD=1; _raftvip_completion raftvip; "
        'echo "${COMPREPLY[*]}"',
    )
    assert completion.returncode == 0, completion.stderr
    assert completion.stdout.split() == ["exabgp-config", "example-config"]
