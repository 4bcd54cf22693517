"""The worker's settings in the units it uses: the worker section plus the scheduler addresses and
name from the command line, and the gRPC options every outgoing call and the server share."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from tradewind.errors import ConfigError
from tradewind_cluster.config import Settings
from tradewind_cluster.rpc.server import RpcOptions, rpc_options_from

__all__ = ["WorkerOptions", "parse_addresses", "worker_rpc_options"]


def parse_addresses(text: str) -> tuple[str, ...]:
    """`host:port[,host:port...]` as a tuple, each checked; ConfigError names a bad one."""
    found: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ConfigError(
                f"--schedulers: {part!r} is not host:port (e.g. sched-1:7400,sched-2:7400)"
            )
        if part not in found:
            found.append(part)
    if not found:
        raise ConfigError("--schedulers: give at least one scheduler as host:port")
    return tuple(found)


def worker_rpc_options(settings: Settings, port: int | None = None) -> RpcOptions:
    """gRPC options from the rpc section (port: the worker's own server port)."""
    return rpc_options_from(settings, settings.rpc.worker_port if port is None else port)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerOptions:
    """Everything the agent decides with; built once at start-up."""

    name: str
    schedulers: tuple[str, ...]
    queues: tuple[str, ...] = ("default",)
    slots: int = 8
    heartbeat_interval_s: float = 1.0
    lease_s: float = 4.0
    lease_margin_s: float = 2.0
    kill_grace_s: float = 5.0
    shutdown_grace_s: float = 30.0
    home: Path = Path("~/.tradewind")
    dags_folder: Path = Path("~/.tradewind/dags")
    default_timezone: str = "UTC"
    max_xcom_bytes: int = 1024 * 1024
    log_ship_interval_s: float = 1.0
    direct_bash: bool = True  # bash tasks without a Python task process where possible
    start_report_delay_s: float = 0.0  # hold STARTED this long: a shorter try sends one report
    tick_s: float = 0.05  # how often deadlines (timeouts, lease, kill grace) are checked

    @classmethod
    def from_settings(
        cls, settings: Settings, *, schedulers: tuple[str, ...], name: str | None = None
    ) -> WorkerOptions:
        """Take the worker and core sections of a validated settings tree."""
        w, core = settings.worker, settings.core
        return cls(
            name=name or socket.gethostname(),
            schedulers=schedulers,
            queues=tuple(w.queues),
            slots=w.slots,
            heartbeat_interval_s=w.heartbeat_interval_s,
            lease_s=w.lease_s,
            lease_margin_s=w.lease_margin_s,
            kill_grace_s=w.kill_grace_s,
            direct_bash=w.direct_bash,
            start_report_delay_s=w.start_report_delay_s,
            shutdown_grace_s=w.shutdown_grace_s,
            home=core.home,
            dags_folder=core.dags_folder,
            default_timezone=core.default_timezone,
            max_xcom_bytes=core.max_xcom_bytes,
        )

    @property
    def lease_kill_grace_s(self) -> float:
        """SIGTERM-to-SIGKILL grace when the lease ran out: the kill must finish within the
        lease margin, so it never waits longer than half of it."""
        return min(self.kill_grace_s, self.lease_margin_s / 2)

    @property
    def logs_dir(self) -> Path:
        """Where attempt logs are written: <home>/logs."""
        return self.home / "logs"
