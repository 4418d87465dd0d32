"""`raftvip status --watch`: the pure frame (raftvip.core.status.render_changes) and the live
view in a real terminal (tmux: send-keys, capture-pane) on a running 3-member group."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raftvip.core.status import NORMAL, REVERSE, render_changes, render_status
from raftvip.testing.group import Group, settled
from raftvip.testing.wait import wait_until

_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
MEMBERS = ("lb1", "lb2", "lb3")
VIPS = ("10.20.0.1", "10.20.0.2", "10.20.0.3")


def visible(line: str) -> str:
    return _ESCAPE.sub("", line)


def doc(
    owners: dict[str, str | None] | None = None,
    leader: str | None = "lb1",
    commit_index: int = 100,
    has_quorum: bool = True,
    no_quorum_for: float = 0.0,
    members: tuple[str, ...] = MEMBERS,
    healthy: dict[str, bool] | None = None,
) -> dict[str, Any]:
    """A status document as `raftvip status --json` gives it, seen from lb1."""
    owners = owners if owners is not None else dict(zip(VIPS, MEMBERS, strict=True))
    healthy = healthy or {}
    return {
        "cluster": "test",
        "member": "lb1",
        "leader": leader,
        "term": 3,
        "commit_index": commit_index,
        "has_quorum": has_quorum,
        "no_quorum_for": no_quorum_for,
        "members": {
            name: {
                "address": f"127.0.0.{11 + i}:7801",
                "alive": True,
                "drained": False,
                "vips": sum(1 for owner in owners.values() if owner == name),
                "healthy": {"apex": healthy.get(name, True)},
            }
            for i, name in enumerate(members)
        },
        "vips": {
            vip: {
                "service": "apex",
                "owner": owner,
                "preferred": MEMBERS[i],
                "pinned": None,
                "announced": owner == "lb1",
                "reason": "owner" if owner == "lb1" else "not_owner",
            }
            for i, (vip, owner) in enumerate(owners.items())
        },
        "services": {"apex": {"maintenance": False}},
        "events": [],
    }


def line_of(frame: list[str], first_word: str) -> str:
    [line] = [line for line in frame if visible(line).split()[:1] == [first_word]]
    return line


def test_a_first_frame_is_the_plain_table() -> None:
    current = doc()
    assert render_changes(None, current) == render_status(current).split("\n")


def test_a_moved_vip_highlights_its_new_owner_and_nothing_else_on_its_line() -> None:
    before = doc()
    after = doc(owners={"10.20.0.1": "lb1", "10.20.0.2": "lb1", "10.20.0.3": "lb3"})
    after["vips"]["10.20.0.2"]["reason"] = "owner"
    frame = render_changes(before, after)
    moved = line_of(frame, "10.20.0.2")
    assert f"{REVERSE}lb1{NORMAL}" in moved
    assert f"{REVERSE}yes (owner){NORMAL}" in moved  # adjacent changed words: one span
    assert moved.startswith("10.20.0.2 ") and "lb2" in moved  # the VIP and preferred: plain
    assert REVERSE not in line_of(frame, "10.20.0.1") + line_of(frame, "10.20.0.3")
    assert f"{REVERSE}2{NORMAL}" in line_of(frame, "lb1*")  # its VIP count
    assert f"{REVERSE}0{NORMAL}" in line_of(frame, "lb2")
    assert REVERSE not in line_of(frame, "lb3")


def test_the_commit_index_and_the_no_quorum_clock_do_not_count_as_changes() -> None:
    frame = render_changes(doc(commit_index=100), doc(commit_index=107))
    assert not any(REVERSE in line for line in frame)
    assert "commit 107" in frame[0]
    lost = render_changes(doc(), doc(has_quorum=False, no_quorum_for=0.4, leader=None))
    assert f"{REVERSE}NO QUORUM for 0.4s{NORMAL}" in lost[0]
    assert f"{REVERSE}-{NORMAL}" in lost[0]  # no leader
    still = render_changes(
        doc(has_quorum=False, no_quorum_for=0.4, leader=None),
        doc(has_quorum=False, no_quorum_for=2.6, leader=None),
    )
    assert "NO QUORUM for 2.6s" in still[0] and REVERSE not in still[0]


def test_a_new_leader_and_a_new_member_are_highlighted() -> None:
    frame = render_changes(doc(members=("lb1", "lb2")), doc(leader="lb2"))
    assert f"{REVERSE}lb1{NORMAL}" in line_of(frame, "lb1")  # lost its `*`
    assert f"{REVERSE}lb2*{NORMAL}" in line_of(frame, "lb2*")
    new = line_of(frame, "lb3")
    assert new.startswith(REVERSE) and new.endswith(NORMAL)
    assert visible(new) == visible(line_of(render_status(doc()).split("\n"), "lb3"))


def test_lines_are_cut_to_the_width() -> None:
    before, after = doc(), doc(healthy={"lb3": False})
    frame = render_changes(before, after, width=40)
    assert all(len(visible(line)) <= 40 for line in frame)
    assert [visible(line) for line in frame] == [
        line[:40] for line in render_status(after).split("\n")
    ]
    assert REVERSE not in line_of(frame, "lb3")  # the change is beyond column 40


owner_maps = st.fixed_dictionaries({vip: st.sampled_from((*MEMBERS, None)) for vip in VIPS})
status_docs = st.builds(
    doc,
    owners=owner_maps,
    leader=st.sampled_from((*MEMBERS, None)),
    commit_index=st.integers(0, 10**6),
    has_quorum=st.booleans(),
    no_quorum_for=st.floats(0, 1000),
    members=st.sampled_from((MEMBERS, MEMBERS[:2], ("lb1", "lb3"))),
    healthy=st.dictionaries(st.sampled_from(MEMBERS), st.booleans()),
)


@given(status_docs, status_docs, st.none() | st.integers(1, 200))
def test_a_frame_shows_the_current_table_with_balanced_highlights(
    previous: dict[str, Any], current: dict[str, Any], width: int | None
) -> None:
    frame = render_changes(previous, current, width=width)
    plain = render_status(current).split("\n")
    assert [visible(line) for line in frame] == [line[:width] for line in plain]
    for line in frame:
        assert line.count(REVERSE) == line.count(NORMAL)
    assert not any(REVERSE in line for line in render_changes(current, current, width=width))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--watch", "--interval", "0"), "0.0 is not in the range x>0"),
        (("--watch", "--interval", "-1"), "is not in the range x>0"),
        (("--watch", "--json"), "--watch redraws the table: it cannot be combined with --json"),
        (("--interval", "2"), "--interval applies to --watch only"),
    ],
)
def test_watch_usage_errors_exit_2(args: tuple[str, ...], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "raftvip", "status", *args, "-c", "/nonexistent.toml"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and message in result.stderr, result.stderr


# --- live, in tmux ----------------------------------------------------------------------------

requires_tmux = pytest.mark.skipif(
    not os.access("/usr/bin/tmux", os.X_OK) and not os.environ.get("CI"),
    reason="tmux (Debian package `tmux`) is not installed",
)


class Tmux:
    """A private tmux server (its own socket, no user config) with one fixed-size session."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.env = dict(os.environ, TERM="xterm-256color")

    def __call__(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-S", str(self.socket), "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=10,
        )
        assert result.returncode == 0, f"tmux {' '.join(args)}: {result.stderr}"
        return result.stdout

    def screen(self, escapes: bool = False) -> list[str]:
        return self("capture-pane", "-p", *(["-e"] if escapes else []), "-t", "watch").split("\n")

    def history(self) -> int:
        return int(self("display-message", "-p", "-t", "watch", "#{history_size}"))


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    server = Tmux(tmp_path / "tmux.sock")
    try:
        yield server
    finally:
        subprocess.run(
            ["tmux", "-S", str(server.socket), "kill-server"], capture_output=True, timeout=10
        )


def owner_on_screen(screen: list[str], vip: str) -> str | None:
    for line in screen:
        words = visible(line).split()
        if words[:1] == [vip] and len(words) >= 3:
            return words[2]
    return None


@requires_tmux
@pytest.mark.slow
def test_watch_redraws_in_place_highlights_a_moved_vip_and_stops_on_ctrl_c(
    tmp_path: Path, tmux: Tmux
) -> None:
    group = Group(tmp_path, size=3)
    try:
        group.start_all()
        wait_until(lambda: settled(group), 30)
        config = str(group.members["lb1"].config)
        watch = [sys.executable, "-m", "raftvip", "status", "--watch", "--interval", "0.2"]
        command = shlex.join([*watch, "-c", config]) + '; echo "raftvip exited $?"; sleep 600'
        tmux("new-session", "-d", "-s", "watch", "-x", "150", "-y", "50", command)
        wait_until(lambda: owner_on_screen(tmux.screen(), "10.20.0.2") == "lb2", 20, 0.05)

        # lb2's check fails: its VIP moves; the frame that shows it highlights the new owner.
        group.members["lb2"].health_file.unlink()
        frames: list[list[str]] = []

        def highlighted_move() -> bool:
            screen = tmux.screen(escapes=True)
            owner = owner_on_screen(screen, "10.20.0.2")
            if owner in (None, "lb2"):
                return False
            frames.append(screen)
            return bool(re.search(rf"\x1b\[7m{owner}\b", line_of(screen, "10.20.0.2")))

        wait_until(highlighted_move, 15, 0.02)
        moved = frames[-1]
        assert "\x1b[7m" not in line_of(moved, "10.20.0.1") + line_of(moved, "10.20.0.3")
        new_owner = owner_on_screen(moved, "10.20.0.2")
        assert new_owner == group.status("lb1")["vips"]["10.20.0.2"]["owner"]
        # The highlight is for one frame: the next ones show the same owner, plain.
        wait_until(lambda: "\x1b[7m" not in line_of(tmux.screen(escapes=True), "10.20.0.2"), 10)
        assert owner_on_screen(tmux.screen(), "10.20.0.2") == new_owner
        assert tmux.history() == 0  # drawn in place: nothing scrolled off the top

        # The watched member goes away: a clear line, the last table, retries; then it is back.
        group.kill("lb1")
        wait_until(lambda: any("lb1 unreachable:" in line for line in tmux.screen()), 10, 0.05)
        screen = "\n".join(tmux.screen())
        assert "retrying every 0.2s" in screen and "Traceback" not in screen
        assert owner_on_screen(tmux.screen(), "10.20.0.2") == new_owner  # last seen
        group.start("lb1")
        wait_until(lambda: not any("unreachable" in line for line in tmux.screen()), 30, 0.1)
        assert tmux.history() == 0

        tmux("send-keys", "-t", "watch", "C-c")
        wait_until(lambda: any("raftvip exited 0" in line for line in tmux.screen()), 10, 0.05)
        assert "Traceback" not in "\n".join(tmux.screen())
    finally:
        group.close()
