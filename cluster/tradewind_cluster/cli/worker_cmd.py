"""`tradewind worker`: run one worker agent until SIGTERM / Ctrl-C, then drain and exit 0.
Workers hold no database credentials: nothing here opens the metadata database."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from pydantic import ValidationError

from tradewind.errors import BadInputError, ConfigError, TradewindError
from tradewind_cluster.cli.ports import add_port_arguments, with_ports
from tradewind_cluster.config import Settings, WorkerSettings, load_settings
from tradewind_cluster.observability import (
    configure_logging,
    configure_tracing,
    settings_secrets,
    shutdown_tracing,
)
from tradewind_cluster.observability.logs import SecretMasker
from tradewind_cluster.worker.agent import WorkerAgent
from tradewind_cluster.worker.options import WorkerOptions, parse_addresses

if TYPE_CHECKING:
    from tradewind_cluster.cli.context import CliContext

__all__ = ["add_arguments", "main", "register", "run_worker", "worker_settings"]

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The worker's own flags."""
    p.add_argument(
        "--schedulers",
        help="scheduler gRPC addresses, host:port[,host:port...]; any reachable one is used "
        "(default: worker.schedulers)",
    )
    p.add_argument("--queues", help="queues to take work from, a,b (default: worker.queues)")
    p.add_argument("--slots", type=int, help="attempts run at once (default: worker.slots)")
    p.add_argument("--name", help="worker name (default: the hostname)")
    add_port_arguments(p, "gRPC port for schedulers (0: any free)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `worker` command."""
    p = sub.add_parser("worker", help="run a worker agent that executes task attempts")
    add_arguments(p)
    p.set_defaults(handler=_run)


def worker_settings(settings: Settings, args: argparse.Namespace) -> Settings:
    """A copy of the settings with the command line's ports, queues and slots, validated."""
    settings = with_ports(settings, grpc_field="worker_port", args=args)
    worker = settings.worker.model_dump()
    if args.queues is not None:
        worker["queues"] = args.queues
    if args.slots is not None:
        worker["slots"] = args.slots
    try:
        checked = WorkerSettings.model_validate(worker)
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"worker options: {problems}") from None
    return settings.model_copy(update={"worker": checked})


def run_worker(settings: Settings, args: argparse.Namespace) -> int:
    """Run the agent until a signal asks it to stop; returns the exit status."""
    settings = worker_settings(settings, args)
    schedulers = parse_addresses(args.schedulers or ",".join(settings.worker.schedulers))
    configure_logging(
        "DEBUG" if getattr(args, "verbose", False) else settings.logging.level,
        settings.logging.format,
        masker=SecretMasker(settings_secrets(settings)),
    )
    configure_tracing(settings.tracing, attributes={"process.kind": "worker"}, set_global=True)
    options = WorkerOptions.from_settings(settings, schedulers=schedulers, name=args.name)
    agent = WorkerAgent(settings, options)
    ports = agent.start()
    print(
        f"worker {agent.worker_id} running: grpc={ports.grpc} health={ports.health} "
        f"metrics={ports.metrics}",
        flush=True,
    )

    def _stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: draining", signum, extra={"event": "worker_stopping"})
        agent.request_stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not agent.wait(1.0):
            pass
    finally:
        shutdown_tracing()
    return 0


def _run(args: argparse.Namespace, ctx: CliContext) -> int:
    return run_worker(ctx.settings, args)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tradewind_cluster.cli.worker_cmd ...`: the worker alone, without the rest of
    the CLI (whose other commands import the store)."""
    parser = argparse.ArgumentParser(prog="tradewind worker", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML config file")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logs")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_worker(load_settings(args.config), args)
    except KeyboardInterrupt:
        return 130
    except BadInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TradewindError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
