"""Prometheus metrics (`[metrics] listen = "127.0.0.1:9273"`), served by prometheus-client.

An agent extension: gauges are refreshed from the loop's snapshots (at most every
`REFRESH` seconds unless the state or the announced set changed); health-check results
arrive from the check threads; ages and the ZooKeeper mirror's figures are computed at
scrape time. deploy/grafana/raftvip.json is the dashboard built on these names.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from raftvip import __version__
from raftvip.config import Config
from raftvip.core.status import config_drift
from raftvip.errors import RaftvipError
from raftvip.health import ProbeResult

if TYPE_CHECKING:
    from raftvip.agent import Agent, Snapshot

log = logging.getLogger(__name__)

REFRESH = 1.0
_REASON = re.compile(r"\((\w+)\)$")
# Placement's reasons (raftvip.core.placement.Assignment.reason) and "none" (no eligible
# member). They start at 0: increase() cannot see the first change of a series born at 1.
OWNERSHIP_REASONS = (
    "initial",
    "preferred",
    "preempt",
    "sticky",
    "rebalance",
    "failover",
    "pinned",
    "none",
)


class Metrics:
    name = "metrics"

    def __init__(self, cfg: Config) -> None:
        if cfg.metrics is None:
            raise RaftvipError("metrics: no [metrics] section in the configuration")
        self._cfg = cfg
        self._listen = cfg.metrics.listen
        self.registry = CollectorRegistry()
        r = self.registry
        self._info = Gauge(
            "raftvip_info", "This member (value 1).", ["cluster", "member", "version"], registry=r
        )
        self._leader = Gauge("raftvip_is_leader", "1 if this member leads the group.", registry=r)
        self._term = Gauge("raftvip_raft_term", "Current Raft term.", registry=r)
        self._drift = Gauge(
            "raftvip_config_drift",
            "1 while the members' own service layouts differ (a roll-out half done), or this"
            " member's config is not yet the one the group holds for it.",
            registry=r,
        )
        self._commit = Gauge("raftvip_raft_commit_index", "Raft commit index.", registry=r)
        self._quorum = Gauge(
            "raftvip_has_quorum", "1 if this member reaches a majority.", registry=r
        )
        self._no_quorum = Gauge(
            "raftvip_no_quorum_seconds",
            "Seconds since quorum was lost (0 with quorum).",
            registry=r,
        )
        self._alive = Gauge(
            "raftvip_member_alive", "1 if the member's lease is valid.", ["member"], registry=r
        )
        self._healthy = Gauge(
            "raftvip_member_healthy",
            "1 if the member reported the service healthy.",
            ["member", "service"],
            registry=r,
        )
        self._drained = Gauge(
            "raftvip_member_drained", "1 if the member is drained.", ["member"], registry=r
        )
        self._maintenance = Gauge(
            "raftvip_service_maintenance",
            "1 if the service is in maintenance.",
            ["service"],
            registry=r,
        )
        self._owned = Gauge(
            "raftvip_vip_owned",
            "1 if the group assigned the VIP to this member.",
            ["vip", "service"],
            registry=r,
        )
        self._announced = Gauge(
            "raftvip_vip_announced",
            "1 if this member announces the VIP.",
            ["vip", "service"],
            registry=r,
        )
        self._changes = Counter(
            "raftvip_ownership_changes",
            "VIP owner changes seen by this member, by reason.",
            ["reason"],
            registry=r,
        )
        self._check_duration = Histogram(
            "raftvip_health_check_duration_seconds",
            "Duration of local health-check probes.",
            ["service"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self._check_results = Counter(
            "raftvip_health_check_results",
            "Local health-check probe results.",
            ["service", "result"],
            registry=r,
        )
        self._announced_changes = Counter(
            "raftvip_announced_changes",
            "VIPs this member started (announce) or stopped (withdraw) announcing to ExaBGP.",
            ["action"],
            registry=r,
        )
        self._apply_age = Gauge(
            "raftvip_last_apply_age_seconds",
            "Seconds since this member last applied a change from the Raft log.",
            registry=r,
        )
        self._info.labels(cfg.cluster.name, cfg.me, __version__).set(1)
        # Known label values start at 0, so rate() has a series before the first event.
        for reason in OWNERSHIP_REASONS:
            self._changes.labels(reason)
        for action in ("announce", "withdraw"):
            self._announced_changes.labels(action)
        for service in cfg.services:
            if service.check.kind != "none":
                for result in ("success", "failure"):
                    self._check_results.labels(service.name, result)
        self._announced_before: frozenset[str] = frozenset()
        self._service_of = {vip: s.name for s in cfg.services for vip in s.vips}
        self._last_refresh = 0.0
        self._last_key: tuple[int, int, frozenset[str]] | None = None
        self._last_event = 0
        self._server: Any = None

    def start(self, agent: Agent) -> None:
        host, _, port = self._listen.rpartition(":")
        host = host.strip("[]")
        try:
            self._server, _thread = start_http_server(int(port), addr=host, registry=self.registry)
        except OSError as exc:
            raise RaftvipError(
                f"metrics.listen: cannot listen on {self._listen}: {exc.strerror}"
            ) from None
        self._apply_age.set_function(lambda: time.monotonic() - agent.cluster.last_change)
        zk = next((e for e in agent.extensions if e.name == "zookeeper"), None)
        if zk is not None:  # only with a [zookeeper] section
            Gauge(
                "raftvip_zookeeper_connected",
                "1 if the ZooKeeper mirror is connected.",
                registry=self.registry,
            ).set_function(lambda: float(bool(getattr(zk, "connected", False))))
            self.registry.register(ZookeeperCollector(zk.status))
        agent.add_probe_listener(self.on_probe)
        log.info("metrics listen=%s", self._listen)

    def reload(self, cfg: Config) -> None:
        """Follow a reload (agent.Reloadable): the series of removed VIPs and services go,
        those of added ones appear at the next observation."""
        vips = {vip: s.name for s in cfg.services for vip in s.vips}
        for vip, service in self._service_of.items():
            if vips.get(vip) != service:
                for gauge in (self._owned, self._announced):
                    with contextlib.suppress(KeyError):
                        gauge.remove(vip, service)
        names = {s.name for s in cfg.services}
        for gone in {s.name for s in self._cfg.services} - names:
            with contextlib.suppress(KeyError):
                self._maintenance.remove(gone)
            for member in self._cfg.members:
                with contextlib.suppress(KeyError):
                    self._healthy.remove(member, gone)
        for spec in cfg.services:
            if spec.check.kind != "none":
                for result in ("success", "failure"):
                    self._check_results.labels(spec.name, result)
        self._cfg = cfg
        self._service_of = vips
        self._last_key = None  # refresh at the next observation

    def on_probe(self, service: str, result: ProbeResult) -> None:
        self._check_duration.labels(service).observe(result.duration)
        self._check_results.labels(service, "success" if result.ok else "failure").inc()

    def observe(self, snapshot: Snapshot) -> None:
        state, info = snapshot.state, snapshot.info
        self._leader.set(1 if info.is_leader else 0)
        self._term.set(info.term)
        self._commit.set(info.commit_index)
        self._quorum.set(1 if snapshot.reachable else 0)
        self._no_quorum.set(snapshot.quorum_lost_for)
        if snapshot.announced != self._announced_before:
            started = len(snapshot.announced - self._announced_before)
            stopped = len(self._announced_before - snapshot.announced)
            if started:
                self._announced_changes.labels("announce").inc(started)
            if stopped:
                self._announced_changes.labels("withdraw").inc(stopped)
            self._announced_before = snapshot.announced
        for event in state.events:
            if event.version > self._last_event and event.kind == "owner":
                match = _REASON.search(event.detail)
                self._changes.labels(match.group(1) if match else "none").inc()
        if state.events:
            self._last_event = max(self._last_event, state.events[-1].version)
        key = (state.version, id(state.owners), snapshot.announced)
        now = time.monotonic()
        if key == self._last_key and now - self._last_refresh < REFRESH:
            return
        self._last_key, self._last_refresh = key, now
        self._drift.set(1 if config_drift(self._cfg, state).drifting else 0)
        for name in dict(state.addresses) or self._cfg.members:
            m = state.members.get(name)
            self._alive.labels(name).set(1 if m and m.alive else 0)
            self._drained.labels(name).set(1 if m and m.drained else 0)
            for service in self._cfg.services:
                healthy = bool(m and m.is_healthy(service.name))
                self._healthy.labels(name, service.name).set(1 if healthy else 0)
        for service in self._cfg.services:
            self._maintenance.labels(service.name).set(
                1 if service.name in state.maintenance else 0
            )
        for vip, service_name in self._service_of.items():
            self._owned.labels(vip, service_name).set(
                1 if state.owner_of(vip) == self._cfg.me else 0
            )
            self._announced.labels(vip, service_name).set(1 if vip in snapshot.announced else 0)

    def status(self) -> dict[str, Any] | None:
        return {"listen": self._listen}

    def maintenance_veto(self, service: str, on: bool) -> str | None:
        return None

    def drain_veto(self, member: str, on: bool) -> str | None:
        return None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class ZookeeperCollector(Collector):
    """The ZooKeeper mirror's own figures, read from its status section at scrape time."""

    def __init__(self, status: Callable[[], dict[str, Any] | None]) -> None:
        self._status = status  # the mirror's `raftvip status --json` section

    def describe(self) -> Iterator[Metric]:
        """The families without their values: registering must not call the mirror."""
        return self._families({})

    def collect(self) -> Iterator[Metric]:
        return self._families(self._status() or {})

    def _families(self, doc: dict[str, Any]) -> Iterator[Metric]:
        held = GaugeMetricFamily(
            "raftvip_zookeeper_ephemeral_nodes",
            "Ephemeral VIP znodes this member holds in ZooKeeper.",
        )
        held.add_metric([], len(doc.get("ephemeral_nodes", ())))
        yield held
        seen = GaugeMetricFamily(
            "raftvip_zookeeper_maintenance_nodes",
            "Maintenance znodes present, as this member last saw them.",
        )
        seen.add_metric([], len(doc.get("maintenance_nodes", ())))
        yield seen
        for key, name, text in (
            ("connects", "raftvip_zookeeper_connects", "ZooKeeper sessions (re)established."),
            (
                "expirations",
                "raftvip_zookeeper_session_expirations",
                "ZooKeeper sessions that expired (ephemeral znodes were lost).",
            ),
            (
                "commits",
                "raftvip_zookeeper_commits",
                "Maintenance changes seen in ZooKeeper and committed through Raft.",
            ),
        ):
            counter = CounterMetricFamily(name, text)
            counter.add_metric([], float(doc.get(key, 0)))
            yield counter
