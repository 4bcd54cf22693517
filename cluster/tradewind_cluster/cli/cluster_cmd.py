"""`tradewind cluster status`: the cluster as the store sees it — scheduler replicas (live and
dead) with heartbeat ages, workers with their queues and slots in use, queue and pool depth,
the oldest queued attempt, and each replica's share of DAG-file parsing."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from tradewind_cluster.cli.context import CliContext
from tradewind_cluster.cli.output import FORMATS
from tradewind_cluster.store.listing import ClusterStatus, cluster_status

__all__ = ["register", "status_document"]

# Ended replicas are kept as history; the most recent ones are enough to see what happened.
_ENDED_SHOWN = 20


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `cluster` command group."""
    cluster = sub.add_parser("cluster", help="the state of the whole cluster")
    csub = cluster.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND")
    st = csub.add_parser("status", help="replicas, workers, queues, pools and parsing")
    st.add_argument("-o", "--output", choices=FORMATS, default="table", help="output format")
    st.set_defaults(handler=_status)


def _age(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


def _schedulers(status: ClusterStatus, threshold_s: float) -> list[dict[str, Any]]:
    names = {m.id: m.name for m in status.members}
    parsed = {p.member_id: p for p in status.parsing}
    rows: list[dict[str, Any]] = []
    ended = 0
    for m in status.members:
        if m.state != "alive":
            ended += 1
            if ended > _ENDED_SHOWN:
                continue
        live = m.state == "alive" and m.heartbeat_age_s <= threshold_s
        share = parsed.get(m.id)
        rows.append(
            {
                "name": m.name,
                "id": m.id,
                "hostname": m.hostname,
                "state": m.state,
                "live": live,
                "heartbeat_age_s": _age(m.heartbeat_age_s),
                "grpc_address": m.grpc_address,
                "version": m.version,
                "dead_reason": m.dead_reason,
                "declared_dead_by": names.get(m.declared_dead_by or "", m.declared_dead_by),
                "parse_leases": share.leased if share else 0,
                "files_parsed": share.parsed if share else 0,
            }
        )
    return rows


def _workers(status: ClusterStatus) -> list[dict[str, Any]]:
    return [
        {
            "name": w.name,
            "id": w.id,
            "hostname": w.hostname,
            "state": w.state.value,
            "heartbeat_age_s": _age(w.heartbeat_age_s),
            "queues": list(w.queues),
            "slots": w.slots,
            "slots_in_use": status.worker_slots_used.get(w.id, 0),
            "running_reported": w.running,
            "grpc_address": w.grpc_address,
        }
        for w in status.workers
    ]


def status_document(status: ClusterStatus, *, threshold_s: float) -> dict[str, Any]:
    """The whole status as one JSON-ready mapping (stable keys, for scripts)."""
    return {
        "schedulers": _schedulers(status, threshold_s),
        "workers": _workers(status),
        "queues": [
            {"queue": q.queue, "scheduled": q.scheduled, "queued": q.queued, "running": q.running}
            for q in status.queues
        ],
        "pools": [
            {
                "pool": p.pool,
                "slots": p.slots,
                "used_slots": p.used_slots,
                "scheduled": p.scheduled,
                "queued": p.queued,
                "running": p.running,
            }
            for p in status.pools
        ],
        "oldest_queued_age_s": _age(status.oldest_queued_age_s),
    }


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return value


def _table(title: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Table:
    table = Table(title=title, title_justify="left", show_header=True, header_style="bold")
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*("" if r.get(c) is None else str(_plain(r.get(c))) for c in columns))
    return table


def _print_tables(doc: Mapping[str, Any]) -> None:
    console = Console(soft_wrap=True)
    console.print(
        _table(
            "Schedulers",
            doc["schedulers"],
            [
                "name",
                "state",
                "live",
                "heartbeat_age_s",
                "hostname",
                "grpc_address",
                "parse_leases",
                "files_parsed",
                "dead_reason",
            ],
        )
    )
    console.print(
        _table(
            "Workers",
            doc["workers"],
            [
                "name",
                "state",
                "heartbeat_age_s",
                "queues",
                "slots",
                "slots_in_use",
                "hostname",
            ],
        )
    )
    console.print(_table("Queues", doc["queues"], ["queue", "scheduled", "queued", "running"]))
    console.print(
        _table(
            "Pools",
            doc["pools"],
            [
                "pool",
                "slots",
                "used_slots",
                "scheduled",
                "queued",
                "running",
            ],
        )
    )
    oldest = doc["oldest_queued_age_s"]
    console.print(f"Oldest queued attempt: {'none' if oldest is None else f'{oldest}s ago'}")


def _status(args: argparse.Namespace, ctx: CliContext) -> int:
    threshold = ctx.settings.scheduler.health_threshold_s
    with ctx.database() as db:
        status = db.read(lambda c: cluster_status(c))
    doc = status_document(status, threshold_s=threshold)
    if args.output == "json":
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    elif args.output == "yaml":
        sys.stdout.write(yaml.safe_dump(doc, sort_keys=False))
    else:
        _print_tables(doc)
    return 0
