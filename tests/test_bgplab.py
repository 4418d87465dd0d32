"""Real ExaBGP speakers (pip's 5.0 and Debian's 4.2), configured by `render_exabgp_config`,
announcing to real BIRD 2 routers.

Proves that the formatter's lines and the rendered ExaBGP config work against a real router, and
pins down the ExaBGP behaviour raftvip relies on (acks, neighbor events in both encoders,
shutdown, kill -9) under both versions. Timings are printed (`pytest -s`), never asserted.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from raftvip.config import (
    AnnounceConfig,
    ClusterConfig,
    Config,
    ExabgpConfig,
    NeighborConfig,
    ServiceConfig,
)
from raftvip.core.exabgp import Route, announce_line, parse_stdin_line, route_for, withdraw_line
from raftvip.exabgp_config import render_exabgp_config
from raftvip.testing.bgplab import (
    Bird,
    BirdPath,
    BirdPeer,
    ExaBGP,
    ScriptedHelper,
    lab_ipv6_next_hop,
    parse_protocols,
    parse_routes,
    read_reply,
)
from raftvip.testing.wait import free_port
from tests.exabgp_versions import EXABGP_VERSIONS

ROUTER = "127.0.0.1"
ROUTER_AS = 65000
VIP4 = "10.20.255.1"
VIP6 = "2001:db8::1"
WAIT = 10.0  # generous bound for any single wait; typical waits are milliseconds


@dataclass
class Speaker:
    """One LB: an ExaBGP running a scripted helper, peering with a router."""

    number: int  # 11 -> 127.0.0.11, AS 65011
    exabgp: ExaBGP
    helper: ScriptedHelper

    def acks(self) -> list[str]:
        return [line for line in self.helper.stdin_lines() if line in ("done", "error")]


def speaker_config(
    tmp_path: Path, number: int, router: str, router_as: int, router_port: int
) -> Config:
    """A raftvip Config for LB `number` with one neighbor: the router."""
    address = f"127.0.0.{number}"
    return Config(
        path=str(tmp_path / f"lb{number}.toml"),
        cluster=ClusterConfig(
            name="lab",
            member=f"lb{number}",
            secret_file=None,
            state_dir=str(tmp_path),
            control_socket=str(tmp_path / f"lb{number}.sock"),
        ),
        members={f"lb{number}": f"{address}:7000"},
        services=(ServiceConfig(name="apex", vips=(VIP4, VIP6)),),  # IPv6 VIP: ipv6 family
        exabgp=ExabgpConfig(
            neighbors=(
                NeighborConfig(
                    address=router,
                    peer_as=router_as,
                    local_address=address,
                    local_as=65000 + number,
                    port=router_port,
                    hold_time=9,
                ),
            )
        ),
    )


@pytest.fixture
def router_port() -> int:
    return free_port(ROUTER)


@pytest.fixture
def bird(tmp_path: Path, router_port: int) -> Iterator[Bird]:
    """BIRD on 127.0.0.1:<free port>, AS 65000, passive towards LBs 127.0.0.11 and .12."""
    peers = [
        BirdPeer(
            name=f"lb{n}",
            address=f"127.0.0.{n}",
            asn=65000 + n,
            local_address=ROUTER,
            local_as=ROUTER_AS,
            local_port=router_port,
            passive=True,
        )
        for n in (11, 12)
    ]
    router = Bird(tmp_path / "bird", ROUTER, peers)
    try:
        router.start()
        yield router
    finally:
        router.stop()


SpeakerFactory = Callable[..., Speaker]


@pytest.fixture(params=EXABGP_VERSIONS)
def exabgp_version(request: pytest.FixtureRequest) -> int:
    """Every test with a speaker runs under ExaBGP 4.2 and 5.0."""
    version: int = request.param
    return version


@pytest.fixture
def start_speaker(tmp_path: Path, exabgp_version: int) -> Iterator[SpeakerFactory]:
    """Start LB `number` with `initial` helper lines against a router; stopped at teardown."""
    started: list[Speaker] = []

    def start(
        number: int,
        initial: list[str],
        port: int,
        router: str = ROUTER,
        router_as: int = ROUTER_AS,
        encoder: str = "text",
    ) -> Speaker:
        # A space in the helper's path checks that the rendered `run` quoting reaches argv intact.
        helper = ScriptedHelper(tmp_path / f"helper {number}", initial)
        cfg = speaker_config(tmp_path, number, router, router_as, port)
        text = render_exabgp_config(cfg, helper.run_command)
        if encoder != "text":
            text = text.replace("encoder text;", f"encoder {encoder};")
        exabgp = ExaBGP(
            tmp_path / f"exabgp{number}", text, name=f"exabgp{number}", version=exabgp_version
        )
        speaker = Speaker(number, exabgp, helper)
        started.append(speaker)
        exabgp.start()
        exabgp.wait_configured()
        return speaker

    try:
        yield start
    finally:
        for speaker in started:
            speaker.exabgp.stop()


def paths_from(routes: dict[str, list[BirdPath]], prefix: str, peer: str) -> list[BirdPath]:
    return [path for path in routes.get(prefix, []) if path.from_peer == peer]


def bird_port(bird: Bird) -> int:
    return bird.peers[0].local_port


def has(prefix: str) -> Callable[[dict[str, list[BirdPath]]], bool]:
    return lambda routes: prefix in routes


def lacks(prefix: str) -> Callable[[dict[str, list[BirdPath]]], bool]:
    return lambda routes: prefix not in routes


def primary(number: int) -> AnnounceConfig:
    return AnnounceConfig(med=100, communities=("65001:100",), local_as=65000 + number)


# A control-socket transcript of BIRD 2.0.12 (two ExaBGP peers, `timeformat ... iso long`), plus
# an AS set, a link-local second next hop and an unreachable route with a gateway.
SHOW_ROUTE_ALL = (
    b"1007-Table master4:\n"
    b" 10.20.255.1/32       unicast [lb11 2026-11-25 22:17:02 from 127.0.0.11] * (100)"
    b" [AS65011i]\n"
    b" \tdev lo\n"
    b"1008-\tType: BGP univ\n"
    b"1012-\tBGP.origin: IGP\n"
    b" \tBGP.as_path: 65011\n"
    b" \tBGP.next_hop: 127.0.0.11\n"
    b" \tBGP.med: 11\n"
    b" \tBGP.local_pref: 100\n"
    b" \tBGP.community: (65001,11) (65535,65281)\n"
    b" \tBGP.ext_community: (rt, 65000, 11)\n"
    b" \tBGP.large_community: (65000, 1, 11)\n"
    b"1007-                     unicast [lb12 2026-11-25 22:17:02 from 127.0.0.12] (100)"
    b" [AS65012i]\n"
    b" \tdev lo\n"
    b"1008-\tType: BGP univ\n"
    b"1012-\tBGP.origin: IGP\n"
    b" \tBGP.as_path: 65012 65012\n"
    b" \tBGP.next_hop: 127.0.0.12\n"
    b" \tBGP.local_pref: 100\n"
    b"1007-\n"
    b" Table master6:\n"
    b" 2001:db8::1/128      unicast [lb11 2026-11-25 22:17:02 from 127.0.0.11] * (100)"
    b" [AS65100i]\n"
    b" \tdev lo\n"
    b"1008-\tType: BGP univ\n"
    b"1012-\tBGP.origin: IGP\n"
    b" \tBGP.as_path: 65011 {65100 65101}\n"
    b" \tBGP.next_hop: 2001:db8:ffff::7f00:b fe80::1\n"
    b" \tBGP.local_pref: 100\n"
    b"1007-10.9.9.9/32          unreachable [agg 2026-11-25 22:17:03] * (100) [AS65001i]\n"
    b" \tvia 127.0.1.1 on lo\n"
    b"1012-\tBGP.as_path: \n"
    b"+spontaneous log line, not part of the reply\n"
    b"0000 \n"
    b"1007-the next reply\n"
)

SHOW_PROTOCOLS = [
    ("2002", "Name       Proto      Table      State  Since         Info"),
    ("1002", "device1    Device     ---        up     2026-11-25 22:17:02  "),
    ("1002", "lb11       BGP        ---        up     2026-11-25 22:17:02  Established   "),
    (
        "1002",
        "lb12       BGP        ---        start  2026-11-25 22:17:02  Active        Socket: x",
    ),
    ("0000", ""),
]


def test_parse_bird_routes() -> None:
    reader = io.BytesIO(SHOW_ROUTE_ALL)
    reply = read_reply(reader)
    assert reply[0] == ("1007", "Table master4:") and reply[-1] == ("0000", "")
    assert ("1012", "\tBGP.med: 11") in reply
    assert reader.read() == b"1007-the next reply\n"  # stops at the last line
    routes = parse_routes(reply)
    assert list(routes) == ["10.20.255.1/32", "2001:db8::1/128", "10.9.9.9/32"]
    first, second = routes["10.20.255.1/32"]
    assert first == BirdPath(
        prefix="10.20.255.1/32",
        protocol="lb11",
        from_peer="127.0.0.11",
        as_path=(65011,),
        med=11,
        best=True,
        next_hop="127.0.0.11",
        reachable=True,
        local_pref=100,
        communities=("(65001,11)", "(65535,65281)"),
        large_communities=("(65000, 1, 11)",),
        ext_communities=("(rt, 65000, 11)",),
    )
    assert (second.protocol, second.from_peer, second.best) == ("lb12", "127.0.0.12", False)
    assert (second.as_path, second.med, second.communities) == ((65012, 65012), None, ())
    (v6,) = routes["2001:db8::1/128"]
    assert v6.as_path == (65011, 65100, 65101) and v6.next_hop == "2001:db8:ffff::7f00:b"
    (unreachable,) = routes["10.9.9.9/32"]
    assert not unreachable.reachable and unreachable.from_peer is None
    assert unreachable.next_hop == "127.0.1.1" and unreachable.as_path == ()


def test_parse_bird_protocols() -> None:
    assert parse_protocols(SHOW_PROTOCOLS) == {
        "device1": "up",
        "lb11": "Established",
        "lb12": "Active",
    }


@pytest.mark.slow
def test_two_speakers_announce_to_bird(bird: Bird, start_speaker: SpeakerFactory) -> None:
    # LB 11 owns the VIP; LB 12 announces a backup path (prepend 1, higher MED).
    owner = route_for(VIP4, primary(11))
    backup = route_for(VIP4, AnnounceConfig(med=200, local_as=65012), prepend=1)
    owner6 = Route(VIP6, next_hop=lab_ipv6_next_hop("127.0.0.11"), med=100)
    started = time.monotonic()
    lb11 = start_speaker(11, [announce_line(owner), announce_line(owner6)], bird_port(bird))
    lb12 = start_speaker(12, [announce_line(backup)], bird_port(bird))
    bird.wait_established(timeout=WAIT)
    established = time.monotonic() - started

    def complete(routes: dict[str, list[BirdPath]]) -> bool:
        return len(routes.get(f"{VIP4}/32", [])) == 2 and f"{VIP6}/128" in routes

    routes = bird.wait_routes(complete, timeout=WAIT, what="both paths and the IPv6 VIP")
    visible = time.monotonic() - started
    print(f"\nstart -> Established {established * 1000:.0f} ms, routes {visible * 1000:.0f} ms")

    (from11,) = paths_from(routes, f"{VIP4}/32", "127.0.0.11")
    assert from11.protocol == "lb11" and from11.reachable
    assert from11.as_path == (65011,) and from11.med == 100
    assert from11.communities == ("(65001,100)",)
    assert from11.best  # shorter AS path wins
    (from12,) = paths_from(routes, f"{VIP4}/32", "127.0.0.12")
    assert from12.as_path == (65012, 65012) and from12.med == 200 and not from12.best

    # An IPv6 VIP over the IPv4 session, with an explicit IPv6 next hop, is reachable.
    (v6,) = routes[f"{VIP6}/128"]
    assert v6.from_peer == "127.0.0.11" and v6.reachable and v6.best
    assert v6.next_hop == lab_ipv6_next_hop("127.0.0.11") and v6.med == 100

    # What ExaBGP wrote on the helper's stdin: events (each then a blank line) and acks; the
    # acks of commands sent before the session was up may come before the `up` event.
    lines = lb11.helper.wait_stdin(
        lambda lines: lines.count("done") == 2 and "neighbor 127.0.0.1 up" in lines,
        what="two acks and the up event",
    )
    events = [line for line in lines if line != "done"]
    assert events[:4] == ["neighbor 127.0.0.1 connected", "", "neighbor 127.0.0.1 up", ""]
    assert [parse_stdin_line(line).kind for line in events[:4]] == [
        "neighbor",
        "blank",
        "neighbor",
        "blank",
    ]
    assert lb11.acks() == ["done", "done"]
    assert lb12.helper.wait_stdin(lambda lines: "done" in lines)


@pytest.mark.slow
def test_announce_withdraw_latency(bird: Bird, start_speaker: SpeakerFactory) -> None:
    lb11 = start_speaker(11, [], bird_port(bird))
    bird.wait_established(["lb11"], timeout=WAIT)
    announce_ms, withdraw_ms = [], []
    for index in range(10):
        route = Route(f"10.20.254.{index}", med=100 + index)
        sent = time.monotonic()
        lb11.helper.send(announce_line(route))
        routes = bird.wait_routes(has(route.prefix), timeout=WAIT)
        announce_ms.append((time.monotonic() - sent) * 1000)
        assert routes[route.prefix][0].med == 100 + index
        sent = time.monotonic()
        lb11.helper.send(withdraw_line(route))
        bird.wait_routes(lacks(route.prefix), timeout=WAIT)
        withdraw_ms.append((time.monotonic() - sent) * 1000)
    # Re-announcing a prefix replaces its attributes (one path per session).
    lb11.helper.send(announce_line(Route(VIP4, med=100)), announce_line(Route(VIP4, med=50)))
    routes = bird.wait_routes(
        lambda r: any(p.med == 50 for p in r.get(f"{VIP4}/32", [])), timeout=WAIT
    )
    assert len(routes[f"{VIP4}/32"]) == 1
    assert lb11.helper.wait_stdin(lambda lines: lines.count("done") == 22)
    announce_ms.sort()
    withdraw_ms.sort()
    print(
        f"\nannounce -> visible median {announce_ms[5]:.1f} ms max {announce_ms[-1]:.1f} ms; "
        f"withdraw -> gone median {withdraw_ms[5]:.1f} ms max {withdraw_ms[-1]:.1f} ms"
    )


@pytest.mark.slow
def test_ipv6_next_hop_rules_over_ipv4_session(
    bird: Bird, start_speaker: SpeakerFactory, exabgp_version: int
) -> None:
    lb11 = start_speaker(11, [], bird_port(bird))
    bird.wait_established(["lb11"], timeout=WAIT)
    # `next-hop self` cannot resolve to an IPv6 address on an IPv4 session: ExaBGP 5 acks
    # `error`; 4.2 acks `done` and the route never reaches the router.
    lb11.helper.send(f"announce route {VIP6}/128 next-hop self")
    ack = "error" if exabgp_version == 5 else "done"
    assert lb11.helper.wait_stdin(lambda lines: ack in lines)
    # An IPv4-mapped next hop is accepted by ExaBGP but rejected by BIRD ("mismatched address
    # family"); the marker route sent after it on the same session shows it has been processed.
    lb11.helper.send(
        announce_line(Route("2001:db8::2", next_hop="::ffff:127.0.0.11")),
        announce_line(Route("2001:db8::3", next_hop=lab_ipv6_next_hop("127.0.0.11"))),
    )
    routes = bird.wait_routes(lambda r: "2001:db8::3/128" in r, timeout=WAIT)
    assert "2001:db8::2/128" not in routes
    assert f"{VIP6}/128" not in routes
    assert "mismatched address family" in bird.log_text()
    assert lb11.helper.wait_stdin(lambda lines: lines.count("done") == (2 if ack == "error" else 3))


@pytest.mark.slow
def test_kill_9_of_one_speaker_drops_its_routes(bird: Bird, start_speaker: SpeakerFactory) -> None:
    lb11 = start_speaker(11, [announce_line(route_for(VIP4, primary(11)))], bird_port(bird))
    backup = route_for(VIP4, AnnounceConfig(med=200, local_as=65012), prepend=1)
    lb12 = start_speaker(12, [announce_line(backup)], bird_port(bird))
    bird.wait_routes(lambda r: len(r.get(f"{VIP4}/32", [])) == 2, timeout=WAIT)

    killed = time.monotonic()
    lb11.exabgp.crash()
    routes = bird.wait_routes(
        lambda r: not paths_from(r, f"{VIP4}/32", "127.0.0.11"), timeout=WAIT, what="drop"
    )
    print(f"\nkill -9 -> BIRD dropped the routes in {(time.monotonic() - killed) * 1000:.1f} ms")
    (survivor,) = routes[f"{VIP4}/32"]
    assert survivor.from_peer == "127.0.0.12" and survivor.best
    assert bird.protocols()["lb11"] != "Established"
    # The orphaned helper sees EOF on stdin; the other speaker is untouched.
    lb11.helper.wait_stdin(lambda _: lb11.helper.records()[-1].dir == "eof", what="helper EOF")
    assert lb12.exabgp.running and bird.protocols()["lb12"] == "Established"


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["text", "json"])
def test_sigterm_tells_the_helper_down_then_shutdown(
    bird: Bird, start_speaker: SpeakerFactory, exabgp_version: int, encoder: str
) -> None:
    lb11 = start_speaker(11, [announce_line(Route(VIP4))], bird_port(bird), encoder=encoder)
    bird.wait_routes(lambda r: f"{VIP4}/32" in r, timeout=WAIT)
    pid = lb11.exabgp.pid
    stopped = time.monotonic()
    assert lb11.exabgp.stop() == 0
    print(f"\nSIGTERM -> ExaBGP exited in {(time.monotonic() - stopped) * 1000:.0f} ms")
    lines = lb11.helper.stdin_lines()
    events = [parse_stdin_line(line) for line in lines]
    # Every line is an ack, a blank (text only) or an event raftvip knows, in either encoder.
    assert {event.kind for event in events} <= {"ack_done", "blank", "neighbor", "shutdown"}
    assert ("blank" in {event.kind for event in events}) == (encoder == "text")
    meaningful = [event for event in events if event.kind not in ("blank", "ack_done")]
    connected, up, down, shutdown = meaningful
    assert [(e.kind, e.neighbor, e.state) for e in (connected, up, down)] == [
        ("neighbor", "127.0.0.1", "connected"),
        ("neighbor", "127.0.0.1", "up"),
        ("neighbor", "127.0.0.1", "down"),
    ]
    # ExaBGP 4.2 turns the brackets of a reason into parentheses in JSON.
    if (exabgp_version, encoder) == (4, "json"):
        assert down.reason == "stop, message (shutting down)"
    else:
        assert down.reason == "stop, message [shutting down]"
    assert shutdown.kind == "shutdown"
    if encoder == "text":
        assert shutdown.text.split()[1] == str(pid)
    else:
        assert json.loads(lines[events.index(shutdown)])["pid"] == pid
    bird.wait_routes(lambda r: f"{VIP4}/32" not in r, timeout=WAIT)


@pytest.mark.slow
def test_two_tier_lb_tor_aggregation(tmp_path: Path, start_speaker: SpeakerFactory) -> None:
    """LB -> ToR (AS 65001) -> aggregation (AS 65100): MED stops at the ToR, the AS path does not.

    This is the problem raftvip's backup paths address: only AS-path length survives upward.
    """
    tor_port, agg_port = free_port("127.0.1.1"), free_port("127.0.2.1")
    tor = Bird(
        tmp_path / "tor",
        "127.0.1.1",
        [
            BirdPeer("lb11", "127.0.0.11", 65011, "127.0.1.1", 65001, tor_port, passive=True),
            BirdPeer("lb12", "127.0.0.12", 65012, "127.0.1.1", 65001, tor_port, passive=True),
            BirdPeer("agg", "127.0.2.1", 65100, "127.0.1.1", 65001, tor_port, port=agg_port),
        ],
        name="tor",
    )
    agg = Bird(
        tmp_path / "agg",
        "127.0.2.1",
        [BirdPeer("tor1", "127.0.1.1", 65001, "127.0.2.1", 65100, agg_port, port=tor_port)],
        name="agg",
    )
    with tor, agg:
        lb11 = start_speaker(
            11, [announce_line(route_for(VIP4, primary(11)))], tor_port, "127.0.1.1", 65001
        )
        backup = route_for(VIP4, AnnounceConfig(med=50, local_as=65012), prepend=2)
        start_speaker(12, [announce_line(backup)], tor_port, "127.0.1.1", 65001)
        tor.wait_established(timeout=WAIT)
        agg.wait_established(timeout=WAIT)
        tor_routes = tor.wait_routes(lambda r: len(r.get(f"{VIP4}/32", [])) == 2, timeout=WAIT)
        assert {p.from_peer: p.med for p in tor_routes[f"{VIP4}/32"]} == {
            "127.0.0.11": 100,
            "127.0.0.12": 50,
        }
        routes = agg.wait_routes(
            lambda r: any(p.as_path == (65001, 65011) for p in r.get(f"{VIP4}/32", [])),
            timeout=WAIT,
        )
        # The ToR exports only its best path (shorter AS path beats the lower MED); the
        # aggregation layer sees the ToR's AS prepended, and no MED.
        (path,) = routes[f"{VIP4}/32"]
        assert path.from_peer == "127.0.1.1" and path.reachable
        assert path.med is None
        assert path.communities == ("(65001,100)",)
        # The owner dies: the aggregation layer moves to the backup, its prepends intact.
        lb11.exabgp.crash()
        routes = agg.wait_routes(
            lambda r: any(
                p.as_path == (65001, 65012, 65012, 65012) for p in r.get(f"{VIP4}/32", [])
            ),
            timeout=WAIT,
        )
        assert len(routes[f"{VIP4}/32"]) == 1
