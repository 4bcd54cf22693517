"""`tradewind standalone`: the whole cluster on this machine, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from rich.console import Console

from tradewind_cluster.cli.context import CliContext
from tradewind_cluster.standalone.cluster import StandaloneCluster, StandaloneOptions, wait_forever

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `standalone` command."""
    p = sub.add_parser(
        "standalone",
        help="run PostgreSQL, schedulers, workers and the example DAGs on this machine",
    )
    p.add_argument("--schedulers", type=int, default=2, help="scheduler replicas (default 2)")
    p.add_argument("--workers", type=int, default=2, help="worker agents (default 2)")
    p.add_argument("--slots", type=int, default=4, help="slots per worker (default 4)")
    p.add_argument("--dags-folder", type=Path, help="DAG files to load (default: the examples)")
    p.set_defaults(handler=_run)


def _cli_name() -> str:
    """`tradewind` when it is on PATH, else the path of this environment's script."""
    script = Path(sys.executable).parent / "tradewind"
    on_path = shutil.which("tradewind")
    if on_path and Path(on_path).resolve() == script.resolve():
        return "tradewind"
    return str(script) if script.exists() else "tradewind"


def _banner(cluster: StandaloneCluster) -> str:
    cli = _cli_name()
    lines = ["", "Tradewind standalone is running.", ""]
    for child in cluster.schedulers() + cluster.workers():
        metrics = child.metrics_port or child.health_port
        lines.append(
            f"  {child.spec.name:<12} grpc 127.0.0.1:{child.grpc_port:<6} "
            f"health http://127.0.0.1:{child.health_port}/health   "
            f"metrics http://127.0.0.1:{metrics}/metrics"
        )
    lines += [
        "",
        f"  DAGs folder  {cluster.dags_folder}",
        f"  logs         {cluster.log_dir}",
        "",
        "From another shell (same TRADEWIND_HOME):",
        f"  {cli} dags list",
        f"  {cli} dags trigger tutorial --wait",
        f"  {cli} cluster status",
        "",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def _run(args: argparse.Namespace, ctx: CliContext) -> int:
    console = Console(stderr=False)
    options = StandaloneOptions(
        schedulers=args.schedulers,
        workers=args.workers,
        slots=args.slots,
        dags_folder=args.dags_folder,
    )
    cluster = StandaloneCluster(ctx.settings, options)
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        cluster.start(on_progress=lambda what: console.print(f"[dim]{what}...[/dim]"))
        console.print(_banner(cluster), highlight=False)
        wait_forever(cluster, lambda event: console.print(f"[yellow]{event}[/yellow]"), stop.is_set)
        console.print("stopping...")
    finally:
        cluster.stop()
    console.print("stopped.")
    return 0
