"""Entry point of the `tradewind` command: parses arguments, configures logging once, runs the
command, and turns errors into one clear line on stderr and a non-zero exit status."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from tradewind import __version__
from tradewind.errors import BadInputError, TradewindError
from tradewind_cluster.cli import (
    cluster_cmd,
    config_cmd,
    dags_cmd,
    db,
    jobs_cmd,
    pools_cmd,
    scheduler_cmd,
    standalone_cmd,
    tasks_cmd,
    variables_cmd,
    worker_cmd,
)
from tradewind_cluster.cli.context import CliContext
from tradewind_cluster.observability import configure_logging

__all__ = ["build_parser", "main"]

EXIT_ERROR = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree (docs/cli.md is generated from it)."""
    parser = argparse.ArgumentParser(
        prog="tradewind", description="Tradewind: an all-active, multi-scheduler workflow service."
    )
    parser.add_argument(
        "--config", type=Path, help="TOML config file (default: $TRADEWIND_HOME/tradewind.toml)"
    )
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="show tracebacks and debug logs"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    version = sub.add_parser("version", help="print the version")
    version.set_defaults(handler=lambda args, ctx: print(__version__) or 0)
    config_cmd.register(sub)
    db.register(sub)
    scheduler_cmd.register(sub)
    jobs_cmd.register(sub)
    standalone_cmd.register(sub)
    worker_cmd.register(sub)
    dags_cmd.register(sub)
    tasks_cmd.register(sub)
    pools_cmd.register(sub)
    variables_cmd.register(sub)
    cluster_cmd.register(sub)
    return parser


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into SystemExit so atexit handlers run (the embedded server is released).
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit status."""
    args = build_parser().parse_args(argv)
    configure_logging("DEBUG" if args.verbose else "WARNING")
    for noisy in ("pgserver", "alembic"):  # their INFO lines are start-up chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _on_sigterm)
    ctx = CliContext(config_file=args.config, verbose=args.verbose)
    try:
        return int(args.handler(args, ctx) or 0)
    except KeyboardInterrupt:
        return 130
    except BadInputError as exc:
        return _fail(args, f"error: {exc}", EXIT_USAGE)
    except TradewindError as exc:
        return _fail(args, f"error: {exc}", EXIT_ERROR)


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    if args.verbose:
        logging.getLogger("tradewind").exception(message)
    print(message, file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
