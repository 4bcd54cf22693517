"""The worker agent: registers with schedulers, holds a lease, runs task attempts in processes
forked from a warm fork server, reports them, ships their logs and serves the Worker gRPC API.

Names load on first use: the fork server and the task processes import this package on their way
to their own modules and must not pay for the agent's gRPC server."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tradewind_cluster.worker.agent import WorkerAgent, WorkerPorts
    from tradewind_cluster.worker.options import WorkerOptions

__all__ = ["WorkerAgent", "WorkerOptions", "WorkerPorts"]

_HOME = {"WorkerAgent": "agent", "WorkerPorts": "agent", "WorkerOptions": "options"}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
