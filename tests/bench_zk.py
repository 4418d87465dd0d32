"""Benchmark: ExaZK maintenance znode created -> every VIP of the service withdrawn.

    python -m tests.bench_zk --trials 10

Real ZooKeeper 3.8 (raftvip/testing/zk.py), three member processes; the time of the last
withdraw comes from the SpeakerStub timelines (the moment each member's `withdraw` line was read).
ExaZK, for comparison, polls the maintenance path every 10 s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from kazoo.client import KazooClient

from raftvip.testing.group import Group, settled
from raftvip.testing.wait import wait_until
from raftvip.testing.zk import running_zookeeper
from tests.test_zkmirror import zk_section


def last_withdraw(group: Group, since: float) -> float:
    times = [
        change.time
        for member in group.members.values()
        for stub in member.history
        for change in list(stub.changes)
        if change.action == "withdraw" and change.time >= since
    ]
    return max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-zk-"))
    samples: list[float] = []
    with running_zookeeper(root / "zk") as zk:
        group = Group(root, size=3, vips_per_member=2, zookeeper=zk_section(zk, "bench"))
        client = KazooClient(hosts=zk.hosts, timeout=5)
        client.start(timeout=10)
        node = "/bench/exabgp/maintenance/apex"
        try:
            group.start_all()
            wait_until(lambda: settled(group), 30)
            for _ in range(args.trials):
                time.sleep(0.3)
                start = time.monotonic()
                client.create(node, makepath=True)
                wait_until(lambda: not any(group.announcers(v) for v in group.vips), 10)
                samples.append(last_withdraw(group, start) - start)
                client.delete(node)
                wait_until(lambda: settled(group), 10)
        finally:
            client.stop()
            client.close()
            group.close()
    ms = [s * 1000 for s in samples]
    print(f"maintenance znode created -> all {len(group.vips)} VIPs withdrawn ({len(ms)} trials)")
    print(f"{'':<28} {'median':>10} {'max':>10}")
    print(f"{'raftvip (watch + Raft)':<28} {statistics.median(ms):>8.1f}ms {max(ms):>8.1f}ms")
    print(f"{'ExaZK (polls every 10 s)':<28} {'~5000ms':>10} {'10000ms':>10}")


if __name__ == "__main__":
    main()
