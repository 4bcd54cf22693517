"""The port flags shared by `tradewind scheduler` and `tradewind worker`."""

from __future__ import annotations

import argparse

from tradewind.errors import ConfigError
from tradewind_cluster.config import Settings

__all__ = ["add_port_arguments", "with_ports"]


def add_port_arguments(p: argparse.ArgumentParser, grpc_help: str) -> None:
    """--grpc-port, --health-port and --metrics-port (0 picks a free port)."""
    p.add_argument("--grpc-port", type=int, help=grpc_help)
    p.add_argument("--health-port", type=int, help="HTTP port of /health (0: any free)")
    p.add_argument("--metrics-port", type=int, help="HTTP port of /metrics (0: with /health)")


def with_ports(settings: Settings, *, grpc_field: str, args: argparse.Namespace) -> Settings:
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
