"""`Config` values for in-process tests and the simulator (no file, no secret)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from raftvip.config import (
    AnnounceConfig,
    CheckConfig,
    ClusterConfig,
    Config,
    QuorumLossPolicy,
    RaftTuning,
    ServiceConfig,
)

ANNOUNCE = AnnounceConfig(med=100, communities=("65001:100",))


def service(
    name: str = "apex",
    vips: Sequence[str] = ("10.0.0.1", "10.0.0.2", "10.0.0.3"),
    preferred: Mapping[str, str] | None = None,
    *,
    checked: bool = True,
    backup_prepend: int = 0,
    preempt_delay: float = 5.0,
    **kwargs: object,
) -> ServiceConfig:
    """A service; `checked`: it has a health check (else it is always healthy)."""
    announce = replace(ANNOUNCE, backup_prepend=backup_prepend, local_as=65001)
    check = CheckConfig(kind="command", target="true") if checked else CheckConfig()
    return ServiceConfig(
        name=name,
        vips=tuple(vips),
        preferred=dict(preferred or {}),
        preempt_delay=preempt_delay,
        check=check,
        announce=announce,
        **kwargs,  # type: ignore[arg-type]
    )


def make_config(
    me: str = "lb1",
    members: Sequence[str] = ("lb1", "lb2", "lb3"),
    services: Sequence[ServiceConfig] | None = None,
    *,
    policy: QuorumLossPolicy = "hold",
    lease: float = 1.5,
    report_interval: float = 0.5,
    raft: RaftTuning | None = None,
) -> Config:
    """A member's configuration: members lbN on 127.0.0.1N:7801, one service by default."""
    addresses = {name: f"127.0.0.{10 + i}:7801" for i, name in enumerate(members, start=1)}
    return Config(
        path=f"{me}.toml",
        cluster=ClusterConfig(
            name="apex",
            member=me,
            secret_file=None,
            state_dir=f"/nonexistent/{me}",
            control_socket=f"/nonexistent/{me}.sock",
            lease=lease,
            on_quorum_loss=policy,
            report_interval=report_interval,
        ),
        members=addresses,
        services=tuple(services) if services is not None else (service(),),
        raft=raft or RaftTuning(),
    )
