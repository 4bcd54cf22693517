"""`tradewind scheduler`: run one scheduler replica until SIGTERM / Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import signal
from types import FrameType

from tradewind.errors import ConfigError
from tradewind_cluster.cli.context import CliContext
from tradewind_cluster.config import Settings
from tradewind_cluster.observability import configure_logging, settings_secrets
from tradewind_cluster.observability.logs import SecretMasker
from tradewind_cluster.scheduler.replica import SchedulerReplica
from tradewind_cluster.store import migrate

__all__ = ["apply_port_flags", "register"]

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `scheduler` command."""
    p = sub.add_parser("scheduler", help="run a scheduler replica (any number may run at once)")
    p.add_argument("--name", help="replica name (default: the hostname)")
    p.add_argument("--grpc-port", type=int, help="gRPC port for peers and workers (0: any free)")
    p.add_argument("--health-port", type=int, help="HTTP port of /health (0: any free)")
    p.add_argument("--metrics-port", type=int, help="HTTP port of /metrics (0: with /health)")
    p.set_defaults(handler=_run)


def apply_port_flags(settings: Settings, *, grpc_field: str, args: argparse.Namespace) -> Settings:
    """A copy of the settings with the port flags given on the command line."""
    for value in (args.grpc_port, args.health_port, args.metrics_port):
        if value is not None and not 0 <= value <= 65535:
            raise ConfigError(f"port {value} is out of range 0..65535")
    rpc, health, metrics = settings.rpc, settings.health, settings.metrics
    if args.grpc_port is not None:
        rpc = rpc.model_copy(update={grpc_field: args.grpc_port})
    if args.health_port is not None:
        health = health.model_copy(update={"health_port": args.health_port})
    if args.metrics_port is not None:
        metrics = metrics.model_copy(update={"metrics_port": args.metrics_port})
    return settings.model_copy(update={"rpc": rpc, "health": health, "metrics": metrics})


def _run(args: argparse.Namespace, ctx: CliContext) -> int:
    settings = apply_port_flags(ctx.settings, grpc_field="scheduler_port", args=args)
    configure_logging(
        "DEBUG" if args.verbose else settings.logging.level,
        settings.logging.format,
        masker=SecretMasker(settings_secrets(settings)),
    )
    with ctx.database() as db:
        status = migrate.check(db)
        if not status.up_to_date:
            current = status.current or "empty"
            raise ConfigError(
                f"the metadata database schema is at {current}, not {status.head}: "
                "run `tradewind db upgrade` first"
            )
        replica = SchedulerReplica(settings, db, name=args.name)
        ports = replica.start()
        print(
            f"scheduler {replica.member_id} running: grpc={ports.grpc} health={ports.health} "
            f"metrics={ports.metrics}",
            flush=True,
        )

        def _stop(signum: int, frame: FrameType | None) -> None:
            log.info("signal %s: stopping", signum, extra={"event": "scheduler_stopping"})
            replica.stop()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        while not replica.wait(1.0):
            pass
    return 0
