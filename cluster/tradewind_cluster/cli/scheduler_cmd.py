"""`tradewind scheduler`: run one scheduler replica until SIGTERM / Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import signal
from types import FrameType

from tradewind.errors import ConfigError
from tradewind_cluster.cli.context import CliContext
from tradewind_cluster.cli.ports import add_port_arguments, with_ports
from tradewind_cluster.config import Settings
from tradewind_cluster.observability import (
    configure_logging,
    configure_tracing,
    settings_secrets,
    shutdown_tracing,
)
from tradewind_cluster.observability.logs import SecretMasker
from tradewind_cluster.scheduler.replica import SchedulerReplica
from tradewind_cluster.store import migrate

__all__ = ["register"]

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `scheduler` command."""
    p = sub.add_parser("scheduler", help="run a scheduler replica (any number may run at once)")
    p.add_argument("--name", help="replica name (default: the hostname)")
    add_port_arguments(p, "gRPC port for peers and workers (0: any free)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace, ctx: CliContext) -> int:
    settings = with_ports(ctx.settings, grpc_field="scheduler_port", args=args)
    configure_logging(
        "DEBUG" if args.verbose else settings.logging.level,
        settings.logging.format,
        masker=SecretMasker(settings_secrets(settings)),
    )
    # Before the replica exists: every span it opens uses the configured exporter.
    configure_tracing(settings.tracing, attributes={"process.kind": "scheduler"}, set_global=True)
    try:
        return _serve(args, ctx, settings)
    finally:
        shutdown_tracing()


def _serve(args: argparse.Namespace, ctx: CliContext, settings: Settings) -> int:
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
