"""The status document (`raftvip status --json`) and its human rendering (pure)."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from raftvip.config import Config
from raftvip.core.decide import Decision, LocalHealth
from raftvip.core.group import RaftInfo
from raftvip.core.leader import own_layout
from raftvip.core.state import ClusterState, drift


@dataclass(frozen=True)
class ConfigDrift:
    drifting: bool
    digests: Mapping[str, str]  # member -> its layout digest, as the group holds it
    odd: frozenset[str]  # members whose digest is not the most common one
    partial: Mapping[str, tuple[str, ...]]  # vip -> the members that have it (not all)
    mine: str  # this member's running config's digest


def config_drift(cfg: Config, state: ClusterState) -> ConfigDrift:
    """Drift: the members' own service layouts differ (a roll-out half done, or forgotten),
    or this member's config is not yet the one the group holds for it (a reload in flight).
    Before the group speaks format 2 nothing is known of the others: only this member's
    digest, and no drift."""
    mine = own_layout(cfg)[0]
    digests, partial = drift(state)
    if not digests:
        return ConfigDrift(False, {cfg.me: mine}, frozenset(), partial, mine)
    counts: dict[str, int] = {}
    for digest in digests.values():
        counts[digest] = counts.get(digest, 0) + 1
    common = max(sorted(counts), key=lambda d: counts[d])
    odd = frozenset(name for name, digest in digests.items() if digest != common)
    pending = digests.get(cfg.me, mine) != mine
    return ConfigDrift(len(counts) > 1 or pending, digests, odd, partial, mine)


def build_status(
    cfg: Config,
    state: ClusterState,
    info: RaftInfo,
    decisions: Mapping[str, Decision],
    health: LocalHealth,
    quorum_lost_for: float,
    reachable: bool,
    now: float,
    events: int = 50,
) -> dict[str, Any]:
    """The whole group as this member sees it (`now`: the wall clock). Never contains
    secrets. `reachable`: the group hears this member (its reports commit)."""
    owned: dict[str, int] = {}
    for owner in state.owners.values():
        owned[owner.owner] = owned.get(owner.owner, 0) + 1
    members: dict[str, Any] = {}
    layouts = config_drift(cfg, state)
    digests, odd, partial = layouts.digests, layouts.odd, layouts.partial
    # The replicated member list (it changes at run time), else the config's.
    for name, address in (dict(state.addresses) or dict(cfg.members)).items():
        m = state.members.get(name)
        healthy = {s.name: bool(m and m.is_healthy(s.name)) for s in cfg.services}
        if name == cfg.me:
            # Local health is fresher than the last committed report.
            healthy = {s.name: health.get(s.name) == "up" for s in cfg.services}
        members[name] = {
            "address": address,
            "alive": bool(m and m.alive),
            "healthy": healthy,
            "drained": bool(m and m.drained),
            "leaving": bool(m and m.leaving),
            "vips": owned.get(name, 0),
            "handing_over": sum(1 for keeper in state.handovers.values() if keeper == name),
            "connected": name == cfg.me or name in info.connected,
            # its own service layout, as the group holds it ("" before format 2)
            "config_digest": digests.get(name, ""),
            "config_differs": name in odd,
        }
    vips: dict[str, Any] = {}
    for service in cfg.services:
        for vip in service.vips:
            decision = decisions.get(vip, Decision(False, "starting"))
            vips[vip] = _vip_entry(state, service.name, service.preferred, vip, decision)
            vips[vip]["known_to"] = list(partial[vip]) if vip in partial else None
    for group_service in state.services:
        for vip in group_service.vips:
            if vip not in vips:
                # A VIP of the group that this member's config does not have (a roll-out).
                not_here = Decision(False, "not_in_config")
                vips[vip] = _vip_entry(
                    state, group_service.name, group_service.preferred, vip, not_here
                )
                vips[vip]["known_to"] = list(partial.get(vip, ()))
    return {
        "cluster": cfg.cluster.name,
        "member": cfg.me,
        "leader": info.leader,
        "is_leader": info.is_leader,
        "term": info.term,
        "commit_index": info.commit_index,
        "last_applied": info.last_applied,
        "state_version": state.version,
        "has_quorum": reachable,
        "no_quorum_for": round(quorum_lost_for, 3),
        "ready": info.ready,
        "on_quorum_loss": cfg.cluster.on_quorum_loss,
        "format": state.wire,  # the command format the group speaks
        "config_digest": layouts.mine,  # this member's config, as it runs now
        "config_drift": layouts.drifting,
        # members whose own layout the group does not hold yet (format 2: seeded from the
        # group's, until each proposes its own: not started since, or a reload in flight)
        "layouts_pending": sorted(
            name
            for name in (state.addresses if state.wire >= 2 else ())
            if name not in state.layouts or state.layouts[name].timings is None
        ),
        "members": members,
        "vips": vips,
        "services": {
            s.name: {"maintenance": s.name in state.maintenance, "local_health": health.get(s.name)}
            for s in cfg.services
        },
        "events": [
            {
                "index": e.index,
                "version": e.version,
                "time": e.time,
                "kind": e.kind,
                "subject": e.subject,
                "detail": e.detail,
            }
            for e in state.events[-events:]
        ],
        "time": now,
    }


def _vip_entry(
    state: ClusterState,
    service: str,
    preferred: Mapping[str, str],
    vip: str,
    decision: Decision,
) -> dict[str, Any]:
    assignment = state.owners.get(vip)
    return {
        "service": service,
        "owner": assignment.owner if assignment else None,
        "assigned_because": assignment.reason if assignment else None,
        "preferred": preferred.get(vip),
        "pinned": state.pins.get(vip),
        "handover_from": state.handovers.get(vip),
        "announced": decision.announce,
        "reason": decision.reason,
        # an owner's path: "takeover form until T UTC: took over from lb1 after ..."
        "path": decision.form.describe() if decision.form is not None else None,
        "took_over_from": state.takeovers[vip].previous if vip in state.takeovers else None,
    }


def render_status(doc: Mapping[str, Any], events: bool = False) -> str:
    quorum = "yes" if doc["has_quorum"] else f"NO QUORUM for {doc['no_quorum_for']:.1f}s"
    lines = [
        f"cluster {doc['cluster']}  member {doc['member']}  leader {doc['leader'] or '-'}  "
        f"term {doc['term']}  commit {doc['commit_index']}  quorum {quorum}",
        "",
        f"{'MEMBER':<12} {'ADDRESS':<22} {'ALIVE':<6} {'DRAINED':<8} {'VIPS':>4}  HEALTH",
    ]
    for name, m in doc["members"].items():
        health = " ".join(f"{s}={'up' if ok else 'down'}" for s, ok in m["healthy"].items())
        lead = "*" if name == doc["leader"] else " "
        config = ""
        if doc.get("config_drift"):
            differs = " DIFFERS" if m.get("config_differs") else ""
            config = f"  config {m.get('config_digest') or '-'}{differs}"
        lines.append(
            f"{name + lead:<12} {m['address']:<22} {'yes' if m['alive'] else 'NO':<6} "
            f"{'yes' if m['drained'] else 'no':<8} {m['vips']:>4}  {health}{config}"
        )
    lines += ["", f"{'VIP':<26} {'SERVICE':<12} {'OWNER':<10} {'PREFERRED':<10} ANNOUNCED HERE"]
    for vip, v in doc["vips"].items():
        why = v["reason"]
        if v["announced"] and v.get("path") and v["path"].startswith("takeover"):
            why += f"; {v['path']}"
        here = f"yes ({why})" if v["announced"] else f"no ({why})"
        owner = v["owner"] or "-"
        if v.get("pinned"):
            owner += " (pin)"
        if v.get("known_to") is not None:
            here += f" [only in the config of {', '.join(v['known_to']) or 'no member'}]"
        lines.append(f"{vip:<26} {v['service']:<12} {owner:<10} {v['preferred'] or '-':<10} {here}")
    if doc.get("left"):
        lines += [
            "",
            f"{doc['member']} LEFT the group ({doc.get('leave_outcome')}): it announces "
            "nothing until its process restarts",
        ]
    if doc.get("config_drift"):
        odd = [name for name, m in doc["members"].items() if m.get("config_differs")]
        mine = doc["members"].get(doc["member"], {}).get("config_digest")
        pending = bool(mine) and mine != doc.get("config_digest")
        lines += [
            "",
            "CONFIG DRIFT: the members' service layouts differ"
            + (
                f" ({', '.join(odd)} {'differs' if len(odd) == 1 else 'differ'} from the others)"
                if odd
                else ""
            )
            + (f"; this member runs {doc['config_digest']}, not yet committed" if pending else ""),
        ]
    maint = [name for name, s in doc["services"].items() if s["maintenance"]]
    if maint:
        lines += ["", "maintenance: " + ", ".join(maint)]
    if events:
        lines += ["", "RECENT EVENTS"]
        for e in doc.get("events", []):
            stamp = time.strftime("%H:%M:%S", time.localtime(e["time"]))
            lines.append(
                f"  index {e['index']:<7} {stamp} {e['kind']:<11} {e['subject']}: {e['detail']}"
            )
    return "\n".join(lines)


# --- `raftvip status --watch`: a frame with what changed since the last one highlighted ---

REVERSE, NORMAL = "\x1b[7m", "\x1b[27m"  # ANSI reverse video on / off
_TOKEN = re.compile(r"\S+|\s+")


def render_changes(
    previous: Mapping[str, Any] | None,
    current: Mapping[str, Any],
    events: bool = False,
    width: int | None = None,
) -> list[str]:
    """The lines of `render_status(current)`, each cut to `width` columns, with the words
    that changed since `previous` in reverse video (a line that is new: all of it).

    Lines are matched by what they describe (the member, the VIP, the event), not by
    position. The commit index, which moves with every lease renewal, and the seconds
    without quorum, which move with the clock, count as changed only when quorum comes or goes.
    """
    shown = render_status(current, events).split("\n")
    if previous is None:
        return [_cut(_TOKEN.findall(line), set(), width) for line in shown]
    steady = render_status(_steady(current, previous), events).split("\n")
    before: dict[tuple[str, int], list[str]] = {}
    seen: dict[str, int] = {}
    for line in render_status(previous, events).split("\n"):
        before[_line_key(line, seen)] = line.split()
    frame: list[str] = []
    seen = {}
    for line, compared in zip(shown, steady, strict=True):
        old = before.get(_line_key(compared, seen))
        words = compared.split()
        if old is None:
            changed = set(range(len(words)))
        else:
            changed = {i for i, word in enumerate(words) if i >= len(old) or old[i] != word}
        frame.append(_cut(_TOKEN.findall(line), changed, width))
    return frame


def _steady(current: Mapping[str, Any], previous: Mapping[str, Any]) -> dict[str, Any]:
    """`current` with the figures that move on every frame taken from `previous`."""
    steady = dict(current)
    steady["commit_index"] = previous.get("commit_index", current["commit_index"])
    if not current["has_quorum"] and not previous.get("has_quorum", True):
        steady["no_quorum_for"] = previous.get("no_quorum_for", current["no_quorum_for"])
    return steady


def _line_key(line: str, seen: dict[str, int]) -> tuple[str, int]:
    """What a status line describes: its first word (a member without the leader's `*`, a
    VIP, a heading), an event line as a whole; numbered when the same key repeats."""
    words = line.split()
    if not words:
        base = ""
    elif words[0] == "index":
        base = line.strip()
    else:
        base = words[0].rstrip("*")
    count = seen.get(base, 0)
    seen[base] = count + 1
    return base, count


def _cut(tokens: list[str], changed: set[int], width: int | None) -> str:
    """Join words and spaces back into a line of at most `width` visible columns, with the
    words numbered in `changed` (and the spaces between two of them) in reverse video."""
    out: list[str] = []
    room = width if width is not None else sum(len(t) for t in tokens)
    word = -1
    lit = False
    for n, token in enumerate(tokens):
        if room <= 0:
            break
        if token.isspace():
            on = lit and word + 1 in changed and n + 1 < len(tokens)
        else:
            word += 1
            on = word in changed
        if on != lit:
            out.append(REVERSE if on else NORMAL)
            lit = on
        out.append(token[:room])
        room -= len(token)
    if lit:
        out.append(NORMAL)
    return "".join(out)
