"""Entry point of the `tradewind` command: parses arguments, configures logging once, runs the
command, and turns errors into one clear line on stderr and a non-zero exit status."""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from tradewind import __version__
from tradewind.errors import BadInputError, TradewindError
from tradewind_cluster.cli.context import CliContext
from tradewind_cluster.observability import configure_logging

__all__ = ["build_parser", "main"]

EXIT_ERROR = 1
EXIT_USAGE = 2


# Command → (module under tradewind_cluster.cli, one-line help). A run imports only the module of
# the command it runs, so `tradewind jobs check` does not load gRPC, the worker or Alembic.
COMMANDS: dict[str, tuple[str, str]] = {
    "config": ("config_cmd", "show the effective configuration"),
    "db": ("db", "manage the metadata database schema"),
    "scheduler": ("scheduler_cmd", "run a scheduler replica (any number may run at once)"),
    "worker": ("worker_cmd", "run a worker agent that executes task attempts"),
    "jobs": ("jobs_cmd", "check scheduler liveness"),
    "standalone": ("standalone_cmd", "run PostgreSQL, schedulers, workers and examples here"),
    "dags": ("dags_cmd", "list, trigger, pause and inspect DAGs"),
    "tasks": ("tasks_cmd", "inspect, clear, mark and test task instances"),
    "pools": ("pools_cmd", "manage pools"),
    "variables": ("variables_cmd", "manage Variables"),
    "cluster": ("cluster_cmd", "show the state of the cluster"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command tree (docs/cli.md is generated from the full one). With `only`, every other
    command gets a placeholder parser, so its module is not imported."""
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
    for name, (module, help_text) in COMMANDS.items():
        if only is None or only == name:
            importlib.import_module(f"tradewind_cluster.cli.{module}").register(sub)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    """The command word of argv (skipping global options), if it names a known command."""
    it = iter(argv)
    for word in it:
        if word == "--config":
            next(it, None)
        elif not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into SystemExit so atexit handlers run (the embedded server is released).
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit status."""
    words = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(only=_command_in(words)).parse_args(words)
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
