"""An ExaZK-like ExaBGP process: the ZooKeeper-coordinated baseline of tests/bench.py.

    exazk_baseline.py --hosts 127.0.0.1:2181 --session-timeout 10 --service apex \
        --vip 10.20.0.1 --vips 10.20.0.1,10.20.0.2,10.20.0.3 --check-file /run/lb1.healthy

What BlaBlaCar's ExaZK does (FIELD-NOTES.md), reduced to what a failover benchmark needs:

* while the local check passes, the instance holds the ephemeral znode
  `/exabgp/service/<service>/<its authoritative VIP>` in its own kazoo session;
* it announces its own VIP (MED 100) while that znode exists, and every other VIP whose znode
  is absent (MED 200), so the survivors take a dead or unhealthy instance's VIP;
* on SUSPENDED (connection lost) or LOST (session expired) it withdraws everything, and on
  CONNECTED it re-creates its znode and re-reads the others.

A crashed or hung instance's znode disappears only when ZooKeeper expires its session
(`--session-timeout`, clamped by the server to [2, 20] x tickTime), so that bounds failover.
Standalone on purpose (stdlib + kazoo): ExaBGP runs it with its own working directory.
stdout carries ExaBGP commands only; logs go to stderr; stdin is drained (acks, events).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import queue
import signal
import sys
import threading
import time
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry

log = logging.getLogger("exazk-baseline")

OWN_MED = 100
OTHER_MED = 200


class Instance:
    """One ExaZK-like instance; a single loop thread owns stdout and the znode."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.own = args.vip
        self.vips = [v for v in args.vips.split(",") if v]
        self.path = f"/exabgp/service/{args.service}"
        self.node = f"{self.path}/{self.own}"
        self.check_file = args.check_file
        self.interval = args.interval
        self.fast_interval = args.fast_interval
        self.rise = args.rise
        self.fall = args.fall
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.client = KazooClient(
            hosts=args.hosts,
            timeout=args.session_timeout,
            connection_retry=KazooRetry(max_tries=-1, delay=0.05, backoff=1.5, max_delay=0.5),
        )
        self.client.add_listener(lambda state: self.events.put(("zk", state)))
        self.connected = False
        self.children: set[str] = set()
        self.healthy = False
        self.streak = 0  # consecutive results pointing away from the current health
        self.next_check = 0.0
        self.announced: dict[str, int] = {}

    # --- ExaBGP side ---

    def write(self, lines: list[str]) -> None:
        for line in lines:
            sys.stdout.write(line + "\n")
            log.info("exabgp %s", line)
        sys.stdout.flush()

    def drain_stdin(self) -> None:
        for _line in sys.stdin:  # acks and neighbor events: read, never block ExaBGP
            pass
        self.events.put(("eof", None))

    def reconcile(self) -> None:
        desired: dict[str, int] = {}
        if self.connected and self.healthy:
            for vip in self.vips:
                if vip == self.own:
                    if vip in self.children:
                        desired[vip] = OWN_MED
                elif vip not in self.children:
                    desired[vip] = OTHER_MED
        lines = [
            f"withdraw route {vip}/32 next-hop self" for vip in self.announced if vip not in desired
        ]
        lines += [
            f"announce route {vip}/32 next-hop self med {med}"
            for vip, med in desired.items()
            if self.announced.get(vip) != med
        ]
        self.announced = desired
        self.write(lines)

    # --- ZooKeeper side ---

    def on_children(self, children: list[str]) -> None:
        self.events.put(("children", set(children)))

    def sync_node(self) -> None:
        """Hold the ephemeral znode while healthy, delete it otherwise."""
        if not self.connected:
            return
        try:
            if self.healthy:
                with contextlib.suppress(NodeExistsError):
                    self.client.create(self.node, ephemeral=True, makepath=True)
            else:
                with contextlib.suppress(NoNodeError):
                    self.client.delete(self.node)
            self.children = set(self.client.get_children(self.path))
        except (KazooException, KazooTimeoutError) as exc:
            log.warning("zookeeper call failed: %r", exc)

    # --- health (ExaBGP healthcheck's rise/fall, on a file's existence) ---

    def check(self, now: float) -> bool:
        """Run the check when due; True when the announced health changed."""
        if now < self.next_check:
            return False
        ok = os.path.exists(self.check_file)
        changed = False
        if ok == self.healthy:
            self.streak = 0
        else:
            self.streak += 1
            if self.streak >= (self.rise if ok else self.fall):
                self.healthy, self.streak, changed = ok, 0, True
        self.next_check = now + (self.fast_interval if self.streak else self.interval)
        return changed

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda _signum, _frame: self.events.put(("eof", None)))
        self.write([f"withdraw route {vip}/32 next-hop self" for vip in self.vips])
        threading.Thread(target=self.drain_stdin, daemon=True, name="stdin").start()
        self.client.start(timeout=30)
        self.client.ensure_path(self.path)
        self.client.ChildrenWatch(self.path, self.on_children)
        self.connected = True
        while True:
            now = time.monotonic()
            try:
                kind, payload = self.events.get(timeout=max(0.0, self.next_check - now))
            except queue.Empty:
                kind, payload = "tick", None
            if kind == "eof":  # ExaBGP stopped (or SIGTERM): close the session, nodes go now
                self.client.stop()
                self.client.close()
                return 0
            if kind == "zk":
                if payload in (KazooState.SUSPENDED, KazooState.LOST):
                    log.warning("zookeeper %s: withdrawing everything (ExaZK)", payload)
                    self.connected = False
                else:
                    self.connected = True
                    self.sync_node()
            elif kind == "children":
                self.children = payload
                if self.connected and self.healthy and self.own not in self.children:
                    self.sync_node()  # ours vanished (an old session's node expired): re-create
            if self.check(time.monotonic()):
                log.info("local health %s", "up" if self.healthy else "down")
                self.sync_node()
            self.reconcile()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", required=True)
    parser.add_argument("--session-timeout", type=float, default=10.0)
    parser.add_argument("--service", default="apex")
    parser.add_argument("--vip", required=True, help="this instance's authoritative VIP")
    parser.add_argument("--vips", required=True, help="every VIP of the service, comma-separated")
    parser.add_argument("--check-file", required=True, help="healthy while this file exists")
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--fast-interval", type=float, default=0.1)
    parser.add_argument("--rise", type=int, default=2)
    parser.add_argument("--fall", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s exazk %(levelname)s %(message)s"
    )
    logging.getLogger("kazoo").setLevel(logging.WARNING)
    return Instance(args).run()


if __name__ == "__main__":
    sys.exit(main())
