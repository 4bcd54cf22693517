"""The results of one run as one JSON-ready dict with a stable shape: parameters, machine,
measures, fault recovery, resource use and invariants, built from what the runner collected."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

import psutil

from loadtest.aims import judge
from loadtest.chaos import Strike
from loadtest.collect import PgCounters, StoreSnapshot
from loadtest.hops import hop_phases_ms
from loadtest.invariants import Check, check_all
from loadtest.ledger import Ledger
from loadtest.measure import (
    ROLE_KEYS,
    TERMINAL,
    cpu_per_1000,
    cpu_wait,
    percentiles,
    queued_to_start_ms,
    run_creation_delay_ms,
    task_latency_ledger,
    task_latency_store,
    throughput,
    trigger_to_start_ms,
)
from loadtest.recovery import recover
from loadtest.sampler import LimitPeak, SamplerResult
from loadtest.scenarios import Plan, TaskKind

__all__ = [
    "RESULTS_VERSION",
    "RunData",
    "build_results",
    "machine_info",
    "plan_params",
    "skipped_results",
]

RESULTS_VERSION = 1
_SECRET_WORDS = ("TOKEN", "PASSWORD", "SECRET", "URL", "KEY")


@dataclass(frozen=True, slots=True, kw_only=True)
class RunData:
    """Everything the runner collected about one run (times on the local clock)."""

    plan: Plan
    run_dir: Path
    started_at: float
    load_start: float
    load_end: float
    offset_s: float  # database clock minus local clock
    stalled: str | None  # why the load did not finish (timed out, no scheduler left)
    snapshot: StoreSnapshot
    ledger: Ledger
    sampler: SamplerResult
    harness_cpu_s: float
    pg_before: PgCounters
    pg_after: PgCounters
    strike: Strike | None
    exit_codes: dict[str, int]
    unexpected_exits: tuple[str, ...]
    embedded_store: bool
    schedulers_started: int
    workers_started: int
    upstreams: dict[str, tuple[str, ...]]
    profile: dict[str, Any] | None = None  # --py-spy: the profiler's summary


def machine_info() -> dict[str, Any]:
    """Where the numbers were measured."""
    return {
        "cores": os.cpu_count(),
        "memory_mb": round(psutil.virtual_memory().total / 2**20),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def plan_params(plan: Plan) -> dict[str, Any]:
    """The plan as results.json's `params` (secret-looking settings masked)."""
    params: dict[str, Any] = _jsonable(plan)
    params["settings"] = {
        k: "***" if any(word in k for word in _SECRET_WORDS) else v
        for k, v in plan.settings.items()
    }
    params["total_tis"] = plan.total_tis
    params["tasks_per_dag"] = plan.shape.tasks_per_dag()
    return params


def _execution(data: RunData) -> str:
    worker_ids = {w.id for w in data.snapshot.workers}
    if any(a.worker in worker_ids for a in data.snapshot.attempts):
        return "workers"
    return "in-process"


def _per_ti(before: int | None, after: int | None, own: int, finished: int) -> float | str:
    if before is None or after is None or not finished:
        return "unavailable"
    return round(max(0, after - before - own) / finished, 2)


def _resources(data: RunData, finished: int) -> dict[str, Any]:
    usage = data.sampler.usage
    return {
        "cpu_s_per_1000_tis": cpu_per_1000(usage, finished, {"harness": data.harness_cpu_s}),
        "cpu_s": {
            ROLE_KEYS[role]: round(sum(u.cpu_s for u in usage if u.role == role), 3)
            for role in sorted({u.role for u in usage})
        }
        | {"harness": round(data.harness_cpu_s, 3)},
        "cpu_wait": cpu_wait(usage),
        "statements_per_ti": _per_ti(
            data.pg_before.statements, data.pg_after.statements, data.sampler.statements, finished
        ),
        "transactions_per_ti": _per_ti(
            data.pg_before.transactions,
            data.pg_after.transactions,
            data.sampler.statements,
            finished,
        ),
        "peak_rss_mb": {
            f"{u.name}#{u.pid}": round(u.peak_rss_mb, 1) for u in usage if u.peak_rss_mb is not None
        },
    }


def _latencies(data: RunData) -> dict[str, Any]:
    snap = data.snapshot
    from_ledger = task_latency_ledger(data.ledger, data.upstreams)
    from_store = task_latency_store(snap, data.upstreams, data.offset_s)
    chosen, source = (from_ledger, "ledger") if from_ledger else (from_store, "store")
    since = data.load_start + data.offset_s
    return {
        "task_latency_ms": percentiles(v for _, v in chosen) | {"source": source},
        "task_latency_store_ms": percentiles(v for _, v in from_store),
        "queued_to_start_ms": percentiles(queued_to_start_ms(snap.attempts)),
        "hop_phases_ms": hop_phases_ms(snap, data.ledger, data.upstreams, data.offset_s),
        "run_creation_delay_ms": percentiles(run_creation_delay_ms(snap.runs, since)),
        "trigger_to_start_ms": percentiles(trigger_to_start_ms(snap.runs)),
        "throughput_tis_per_s": throughput(snap.tis, data.load_start, data.offset_s),
        "_latency_series": chosen,
    }


def _invariants(data: RunData, execution: str) -> dict[str, Check]:
    plan = data.plan
    executors = data.workers_started if execution == "workers" else data.schedulers_started
    checks = check_all(
        data.snapshot,
        data.ledger,
        data.sampler.violations,
        expected_tis=plan.total_tis,
        slots=executors * plan.slots,
        ledger_expected=plan.task_kind is TaskKind.BASH or execution == "workers",
    )
    found = list(data.unexpected_exits)
    checks["processes_exited_cleanly"] = Check(violations=len(found), examples=tuple(found[:5]))
    if data.stalled:
        checks["all_tis_succeeded"] = Check(
            violations=max(1, checks["all_tis_succeeded"].violations),
            examples=(data.stalled, *checks["all_tis_succeeded"].examples),
        )
    return checks


def _limits(peaks: Sequence[LimitPeak]) -> list[dict[str, Any]]:
    """Per kind of limit: how many were seen, and the one that came closest to its limit."""
    by_kind: dict[str, list[LimitPeak]] = {}
    for p in peaks:
        by_kind.setdefault(p.kind, []).append(p)
    out = []
    for kind, group in sorted(by_kind.items()):
        top = max(group, key=lambda p: (p.peak / p.limit if p.limit else float(p.peak), p.peak))
        out.append(
            {
                "kind": kind,
                "name": top.name,
                "limit": top.limit,
                "peak": top.peak,
                "count": len(group),
            }
        )
    return out


def _events(data: RunData) -> list[dict[str, Any]]:
    events = data.strike.events if data.strike else []
    return [
        {
            "t_s": round(e.at - data.load_start, 3),
            "kind": e.kind,
            "target": e.target,
            "detail": e.detail,
        }
        for e in events
    ]


def build_results(data: RunData) -> dict[str, Any]:
    """The results.json document (plus `_latency_series` for the plots, dropped on writing)."""
    plan, snap = data.plan, data.snapshot
    finished = sum(1 for t in snap.tis if t.state in TERMINAL)
    execution = _execution(data)
    checks = _invariants(data, execution)
    strike = data.strike
    results = {
        "version": RESULTS_VERSION,
        "scenario": plan.scenario.value,
        "params": plan_params(plan),
        "machine": machine_info(),
        "cluster": {
            "schedulers": plan.schedulers,
            "workers": plan.workers,
            "slots": plan.slots,
            "execution": execution,
            "database": "embedded" if data.embedded_store else "external",
            "exit_codes": data.exit_codes,
        },
        "started_at": datetime.fromtimestamp(data.started_at, UTC).isoformat(),
        "duration_s": round(data.load_end - data.started_at, 3),
        "load_s": round(data.load_end - data.load_start, 3),
        "timed_out": data.stalled is not None,
        "stalled": data.stalled,
        "run_dir": str(data.run_dir),
        "skipped": None,
        "fault_skipped": strike.skipped if strike else None,
        "task_instances": {"total": len(snap.tis), "finished": finished},
        "runs": len(snap.runs),
        **_latencies(data),
        **recover(strike, snap, data.ledger, data.offset_s),
        **_resources(data, finished),
        "ledger": {
            "lines": data.ledger.lines,
            "malformed": data.ledger.malformed,
            "executions": len(data.ledger.executions),
            "identity": data.ledger.identity.value,
        },
        "limits": _limits(data.sampler.peaks),
        "events": _events(data),
        "invariants": {name: c.to_dict() for name, c in checks.items()},
        "ok": all(c.ok for c in checks.values()),
        "profile": data.profile,
    }
    results["aims"] = judge(results)
    return results


def skipped_results(plan: Plan, reason: str) -> dict[str, Any]:
    """The results of a run that could not happen, with the reason."""
    return {
        "version": RESULTS_VERSION,
        "scenario": plan.scenario.value,
        "params": plan_params(plan),
        "machine": machine_info(),
        "skipped": reason,
        "invariants": {},
        "ok": True,
        "profile": None,
        "aims": None,
    }
