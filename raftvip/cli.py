"""`raftvip` command line (click, thin): domain errors become `Error: ...` and exit 1."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import time
import tomllib
from collections.abc import Callable
from functools import wraps
from importlib import resources
from typing import Any, TypeVar

import click

from raftvip import __version__
from raftvip.config import Config, load_config, load_secret
from raftvip.control import request
from raftvip.errors import ConfigError, ControlError, RaftvipError

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_CONFIG = "/etc/raftvip/raftvip.toml"
RELOAD_TIMEOUT = 20.0  # the member answers once the loop has applied the reload

config_option = click.option(
    "-c",
    "--config",
    "config_path",
    envvar="RAFTVIP_CONFIG",
    default=DEFAULT_CONFIG,
    show_default=True,
    type=click.Path(dir_okay=False),
    help="raftvip TOML file (env RAFTVIP_CONFIG).",
)
member_option = click.option(
    "--member", default=None, help="This host's member name (overrides cluster.member)."
)


def domain_errors(func: F) -> F:
    """Turn RaftvipError into ClickException at the edge."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            raise click.ClickException(
                "invalid configuration:\n  " + "\n  ".join(exc.problems)
            ) from None
        except RaftvipError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)  # stdout belongs to ExaBGP
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("pysyncobj").setLevel(logging.WARNING)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="raftvip")
def main() -> None:
    """Spread service VIPs across load balancers: a Raft group decides, ExaBGP announces."""


@main.command()
@config_option
@member_option
@click.option(
    "--log-level",
    default="info",
    type=click.Choice(["debug", "info", "warning", "error"]),
    show_default=True,
)
@domain_errors
def run(config_path: str, member: str | None, log_level: str) -> None:
    """Run this member (declare it as the ExaBGP `process`). stdout carries ExaBGP commands."""
    setup_logging(log_level)
    cfg = load_config(config_path, member=member)
    secret = load_secret(cfg.cluster)
    from raftvip.agent import Agent  # heavy imports only for `run`
    from raftvip.exabgp_config import next_hop_problems

    for warning in next_hop_problems(cfg):
        logging.getLogger("raftvip").warning("config %s", warning)

    agent = Agent(cfg, secret, out=sys.stdout, inp=sys.stdin.buffer, member=member)
    if cfg.zookeeper is not None:
        from raftvip.zkmirror import ZkMirror  # kazoo only with a [zookeeper] section

        agent.add_extension(ZkMirror(cfg))
    if cfg.metrics is not None:
        from raftvip.metrics import Metrics

        agent.add_extension(Metrics(cfg))
    code = agent.run()
    # The stdin reader is a daemon thread blocked in read(): interpreter finalisation would
    # abort on its buffer lock, so flush what matters and leave without finalising.
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    logging.shutdown()
    os._exit(code)


@main.command("check-config")
@config_option
@member_option
def check_config(config_path: str, member: str | None) -> None:
    """Validate a config file: prints OK, or every problem with its key path (exit 1)."""
    from raftvip.exabgp_config import next_hop_problems

    try:
        cfg = load_config(config_path, member=member)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        sys.exit(1)
    for warning in next_hop_problems(cfg):
        click.echo(f"warning: {warning}", err=True)
    for note in cfg.notes:
        click.echo(f"note: {note}", err=True)
    click.echo("OK")


@main.command("exabgp-config")
@config_option
@member_option
@click.option("--run", "run_command", default=None, help="Command ExaBGP should run.")
@click.option(
    "--exabgp-version",
    type=click.Choice(["4", "5"]),
    default=None,
    help="ExaBGP 4 (4.2, Debian's) or 5 (5.0, pip's); default: the `exabgp` on PATH, else 5.",
)
@domain_errors
def exabgp_config(
    config_path: str, member: str | None, run_command: str | None, exabgp_version: str | None
) -> None:
    """Print an ExaBGP config (process + neighbors with api) for this member."""
    from raftvip.exabgp_config import default_run_command, render_exabgp_config

    cfg = load_config(config_path, member=member)
    command = run_command or cfg.exabgp.run or default_run_command(os.path.abspath(config_path))
    if member and "--member" not in command:
        command += f" --member {member}"
    version = int(exabgp_version) if exabgp_version else _installed_exabgp_major()
    click.echo(render_exabgp_config(cfg, command, version), nl=False)


def _installed_exabgp_major() -> int:
    """The major version of the `exabgp` on PATH, for `exabgp-config`; 5 with a note on stderr
    when there is none (or it is one raftvip has no config for)."""
    from raftvip.exabgp_config import installed_exabgp_version

    found = installed_exabgp_version("exabgp")
    if found is None:
        click.echo(
            "note: no `exabgp` on PATH answered `exabgp --version` / `exabgp version`: "
            "writing the config for ExaBGP 5 (--exabgp-version 4 for Debian's ExaBGP 4.2)",
            err=True,
        )
        return 5
    major, full = found
    if major < 4:
        raise click.ClickException(
            f"ExaBGP {full} (the `exabgp` on PATH) is too old: raftvip needs ExaBGP 4.2 or 5.x"
        )
    if major > 5:
        click.echo(
            f"note: ExaBGP {full} (the `exabgp` on PATH) is newer than raftvip knows: writing "
            "the config for ExaBGP 5; run it with exabgp_api_version=4 in its environment "
            "(ExaBGP 6 refuses the classic API otherwise)",
            err=True,
        )
        return 5
    return major


def example_config_text() -> str:
    """The example configuration shipped in the package (raftvip/examples/raftvip.toml)."""
    return (resources.files("raftvip") / "examples" / "raftvip.toml").read_text(encoding="utf-8")


@main.command("example-config")
def example_config() -> None:
    """Print the example configuration (lb1 of three racks) to start a config file from.

    `raftvip example-config > /etc/raftvip/raftvip.toml`, then edit it.
    """
    click.echo(example_config_text(), nl=False)


def _client(config_path: str, member: str | None) -> Config:
    return load_config(config_path, member=member)


@main.command()
@config_option
@member_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--events", is_flag=True, help="Also show recent events.")
@click.option(
    "--watch",
    is_flag=True,
    help="Redraw in place every --interval seconds, changes since the last frame in reverse "
    "video; Ctrl-C stops.",
)
@click.option(
    "--interval",
    default=None,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds between --watch frames (default 1).",
)
@domain_errors
def status(
    config_path: str,
    member: str | None,
    as_json: bool,
    events: bool,
    watch: bool,
    interval: float | None,
) -> None:
    """Show the whole group as this member sees it."""
    from raftvip.core.status import render_status

    if watch and as_json:
        raise click.UsageError("--watch redraws the table: it cannot be combined with --json")
    if interval is not None and not watch:
        raise click.UsageError("--interval applies to --watch only")
    cfg = _client(config_path, member)
    if watch:
        _watch(cfg, config_path, 1.0 if interval is None else interval, events)
        return
    doc = request(cfg.cluster.control_socket, {"op": "status"})
    if as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=False))
    else:
        click.echo(render_status(doc, events=events))


HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"
HIDE_CURSOR, SHOW_CURSOR, BOLD, NOT_BOLD = "\x1b[?25l", "\x1b[?25h", "\x1b[1m", "\x1b[22m"


def _watch(cfg: Config, config_path: str, interval: float, events: bool) -> None:
    """Redraw the status table in place until Ctrl-C (exit 0), like `watch`.

    Each frame goes over the previous one from the top-left corner and clears what is left
    of it, cut to the terminal's size so that nothing scrolls. While the member cannot be
    reached, a line says why above the last table seen, and the request is retried.
    """
    from raftvip.core.status import render_changes

    out = sys.stdout
    sock = cfg.cluster.control_socket
    previous: dict[str, Any] | None = None
    last_seen = ""
    out.write(HIDE_CURSOR)
    try:
        while True:
            started = time.monotonic()
            columns, rows = shutil.get_terminal_size((100, 50))
            now = time.strftime("%H:%M:%S")
            title = f"Every {interval:g}s: raftvip status -c {config_path}"
            lines = [f"{title}{now:>{max(1, columns - len(title))}}"[:columns], ""]
            try:
                # A hung member answers nothing: give up in time for the next frame or so.
                doc = request(sock, {"op": "status"}, timeout=max(1.0, interval))
            except RaftvipError as exc:
                seen = f"; last seen at {last_seen}" if last_seen else ""
                problem = f"{cfg.me} unreachable: {exc} (retrying every {interval:g}s{seen})"
                lines += [f"{BOLD}{problem[:columns]}{NOT_BOLD}", ""]
                if previous is not None:
                    lines += render_changes(None, previous, events, columns)
            else:
                lines += render_changes(previous, doc, events, columns)
                previous, last_seen = doc, now
            lines = lines[:rows]
            out.write(HOME + "".join(f"{line}{CLEAR_LINE}\n" for line in lines[:-1]))
            out.write(f"{lines[-1]}{CLEAR_LINE}{CLEAR_BELOW}")
            out.flush()
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        pass
    finally:
        out.write(SHOW_CURSOR + "\n")
        out.flush()


@main.command()
@config_option
@member_option
@click.argument("state", type=click.Choice(["on", "off"]))
@click.argument("service")
@domain_errors
def maintenance(config_path: str, member: str | None, state: str, service: str) -> None:
    """Withdraw (on) or restore (off) SERVICE's VIPs on every member."""
    cfg = _client(config_path, member)
    request(
        cfg.cluster.control_socket, {"op": "maintenance", "service": service, "on": state == "on"}
    )
    click.echo(f"maintenance {state} for {service}: committed")


def _on_member(doc: dict[str, Any], member: str) -> list[str]:
    """VIPs that `member` still owns or still announces while handing them over."""
    return [
        vip
        for vip, v in doc["vips"].items()
        if v["owner"] == member or v.get("handover_from") == member
    ]


@main.command()
@config_option
@member_option
@click.argument("target", required=False)
@click.option("--no-wait", is_flag=True, help="Return once the drain is committed.")
@click.option("--force", is_flag=True, help="Drain even the last eligible member of a service.")
@click.option(
    "--timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds to wait for the member to own nothing.",
)
@domain_errors
def drain(
    config_path: str,
    member: str | None,
    target: str | None,
    no_wait: bool,
    force: bool,
    timeout: float,
) -> None:
    """Move every VIP away from TARGET (default: this member), make before break.

    The new owners are committed and confirm through the group that they announce before
    TARGET withdraws. Waits and shows progress; exits 0 when TARGET owns nothing.
    """
    cfg = _client(config_path, member)
    name = target or cfg.me
    sock = cfg.cluster.control_socket
    total = len(_on_member(request(sock, {"op": "status"}), name))
    request(sock, {"op": "drain", "member": name, "on": True, "force": force})
    if no_wait:
        click.echo(f"{name} drain committed ({total} VIPs to move)")
        return
    start = time.monotonic()
    shown = -1
    while True:
        remaining = _on_member(request(sock, {"op": "status"}), name)
        moved = max(0, total - len(remaining))
        if moved != shown:
            click.echo(f"draining {name}: {moved}/{total} VIPs moved")
            shown = moved
        if not remaining:
            click.echo(f"{name} drained in {time.monotonic() - start:.2f}s: it owns nothing")
            return
        if time.monotonic() - start > timeout:
            raise click.ClickException(
                f"{name} still holds {len(remaining)} VIPs after {timeout:g}s "
                f"({', '.join(remaining[:5])}{'...' if len(remaining) > 5 else ''}): no other "
                "eligible member, or the new owners have not confirmed yet (see raftvip status)"
            )
        time.sleep(0.05)


@main.command()
@config_option
@member_option
@click.option(
    "--timeout",
    default=None,
    type=click.FloatRange(min=0.1),
    help="Seconds to wait (default: cluster.shutdown_timeout + 5).",
)
@domain_errors
def leave(config_path: str, member: str | None, timeout: float | None) -> None:
    """Planned stop: hand every VIP of this member over, make before break, and withdraw.

    The member then stays out of placement until its process restarts (nothing persists,
    unlike drain): run it before stopping ExaBGP (deploy/'s unit does, in ExecStop). Exits 0
    once handed over; non-zero with the reason otherwise.
    """
    cfg = _client(config_path, member)
    sock = cfg.cluster.control_socket
    limit = cfg.cluster.shutdown_timeout + 5.0 if timeout is None else timeout
    total = len(_on_member(request(sock, {"op": "status"}), cfg.me))
    request(sock, {"op": "leave"})
    start = time.monotonic()
    while True:
        doc = request(sock, {"op": "status"})
        if doc.get("left"):
            outcome = doc.get("leave_outcome") or "left"
            elapsed = time.monotonic() - start
            if outcome != "handed over":
                raise click.ClickException(f"{cfg.me} left after {elapsed:.2f}s: {outcome}")
            click.echo(
                f"{cfg.me} left the group in {elapsed:.2f}s: {total} VIPs handed over, "
                "nothing announced; it rejoins when its process restarts"
            )
            return
        if time.monotonic() - start > limit:
            raise click.ClickException(
                f"{cfg.me} has not left after {limit:g}s (still handing over: see raftvip status)"
            )
        time.sleep(0.05)


@main.command()
@config_option
@member_option
@click.option(
    "--timeout",
    default=20.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds to wait for the new process to answer.",
)
@domain_errors
def restart(config_path: str, member: str | None, timeout: float) -> None:
    """Restart this member's process in place (an upgrade), moving no VIP.

    The member tells the group it is restarting and exits without withdrawing: ExaBGP keeps
    its routes and starts the new process (possibly a new version), which takes over what
    the old one announced. The group keeps the member's VIPs for 10 s; past that, it fails
    over as for a crash. Not for a changed Raft address or a broken install (see README).
    """
    cfg = _client(config_path, member)
    sock = cfg.cluster.control_socket
    before = request(sock, {"op": "status"})
    answer = request(sock, {"op": "restart"})
    old_pid = answer.get("pid", before.get("pid"))
    start = time.monotonic()
    last_error = "no answer"
    while time.monotonic() - start < timeout:
        try:
            doc = request(sock, {"op": "status"}, timeout=1.0)
        except RaftvipError as exc:
            last_error = str(exc)
        else:
            me = doc["members"].get(cfg.me, {})
            if doc.get("pid") != old_pid and doc.get("ready") and me.get("alive"):
                click.echo(
                    f"{cfg.me} restarted in place in {time.monotonic() - start:.2f}s: "
                    f"pid {old_pid} -> {doc.get('pid')}, it owns {me.get('vips', 0)} VIPs"
                )
                return
            last_error = "the new process has not caught up with the group yet"
        time.sleep(0.1)
    raise click.ClickException(
        f"{cfg.me}: no new process answered within {timeout:g}s ({last_error}); "
        "the group fails over its VIPs 10 s after the restart began (see raftvip status)"
    )


def _control_socket_of(config_path: str, member: str | None) -> str:
    """The control socket named in a config file, even one with problems elsewhere (the
    running member then lists them); when the file does not even say where the socket is,
    its problems as `check-config` shows them (`ConfigError`)."""
    try:
        with open(config_path, "rb") as f:
            document = tomllib.load(f)
    except (OSError, ValueError):
        document = {}
    cluster = document.get("cluster")
    sock = cluster.get("control_socket") if isinstance(cluster, dict) else None
    if isinstance(sock, str) and sock:
        return sock
    return load_config(config_path, member=member).cluster.control_socket


@main.command()
@config_option
@member_option
@click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
@domain_errors
def reload(config_path: str, member: str | None, dry_run: bool) -> None:
    """Apply the changes of the config file to the running member, in place.

    The member re-reads the file it runs with, validates it as `check-config` does, and
    applies it without restarting Raft or ExaBGP: services, VIPs, announce attributes,
    checks and placement settings change live. Keys that need a restart (cluster name,
    member name, state_dir, [raft], ...) refuse the whole reload; [members] changes with
    `raftvip members add/remove`. Prints one line per change once applied. SIGHUP to
    `raftvip run` does the same.
    """
    sock = _control_socket_of(config_path, member)
    path = os.path.abspath(config_path)
    try:
        result = request(
            sock, {"op": "reload", "path": path, "dry_run": dry_run}, timeout=RELOAD_TIMEOUT
        )
    except ControlError as exc:
        if str(exc).startswith("no control socket"):
            raise click.ClickException(
                f"{exc} (a changed cluster.control_socket needs a restart: the member still "
                "listens on the old one)"
            ) from None
        raise
    changes = result.get("changes", [])
    for line in changes:
        click.echo(line)
    digest = result.get("digest")
    count = f"{len(changes)} change{'' if len(changes) == 1 else 's'}"
    if changes and dry_run:
        click.echo(f"dry run: {count} would apply; nothing changed (layout digest {digest})")
    elif changes:
        click.echo(
            f"reloaded {result.get('path')}: {result.get('summary')} (layout digest {digest})"
        )
    else:
        click.echo("no change: the running member already has this configuration")


@main.command()
@config_option
@member_option
@click.argument("target", required=False)
@domain_errors
def undrain(config_path: str, member: str | None, target: str | None) -> None:
    """Let TARGET (default: this member) own VIPs again."""
    cfg = _client(config_path, member)
    request(cfg.cluster.control_socket, {"op": "drain", "member": target or cfg.me, "on": False})
    click.echo(f"{target or cfg.me} undrained: committed")


@main.command()
@config_option
@member_option
@click.argument("vip")
@click.argument("target")
@domain_errors
def pin(config_path: str, member: str | None, vip: str, target: str) -> None:
    """Keep VIP on member TARGET while TARGET is eligible."""
    cfg = _client(config_path, member)
    request(cfg.cluster.control_socket, {"op": "pin", "vip": vip, "member": target})
    click.echo(f"{vip} pinned to {target}: committed")


@main.command()
@config_option
@member_option
@click.argument("vip")
@domain_errors
def unpin(config_path: str, member: str | None, vip: str) -> None:
    """Remove the pin of VIP."""
    cfg = _client(config_path, member)
    request(cfg.cluster.control_socket, {"op": "pin", "vip": vip, "member": None})
    click.echo(f"{vip} unpinned: committed")


@main.group()
def members() -> None:
    """Change the group's membership without restarting it (one change at a time)."""


@members.command("add")
@config_option
@member_option
@click.argument("name")
@click.argument("address")
@domain_errors
def members_add(config_path: str, member: str | None, name: str, address: str) -> None:
    """Add member NAME whose Raft address is ADDRESS (host:port), then start it there."""
    cfg = _client(config_path, member)
    request(cfg.cluster.control_socket, {"op": "members_add", "member": name, "address": address})
    click.echo(
        f"{name} ({address}) added: start raftvip on it with a [members] list that includes it"
    )


@members.command("remove")
@config_option
@member_option
@click.argument("name")
@click.option("--force", is_flag=True, help="Remove even a member that is still alive.")
@domain_errors
def members_remove(config_path: str, member: str | None, name: str, force: bool) -> None:
    """Remove member NAME (drain and stop it first); its VIPs move to the others."""
    cfg = _client(config_path, member)
    request(cfg.cluster.control_socket, {"op": "members_remove", "member": name, "force": force})
    click.echo(f"{name} removed")
