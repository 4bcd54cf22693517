"""The measures of one run, computed from the ledger and the store snapshot: task latency,
queued-to-start, run-creation delay (each as p50/p90/p99/max/n), throughput overall and over
time, and CPU seconds per 1000 task instances per role. Times are local-clock seconds."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from loadtest.collect import AttemptRecord, RunRecord, StoreSnapshot
from loadtest.ledger import Execution, IdentitySource, Ledger, ti_key
from loadtest.sampler import ProcessUsage

__all__ = [
    "ROLE_KEYS",
    "TERMINAL",
    "Finishing",
    "Timed",
    "cpu_per_1000",
    "cpu_wait",
    "final_executions",
    "percentiles",
    "queued_to_start_ms",
    "run_creation_delay_ms",
    "task_latency_ledger",
    "task_latency_store",
    "throughput",
    "trigger_to_start_ms",
]

TERMINAL = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})

ROLE_KEYS = {
    "scheduler": "schedulers",
    "worker": "workers",
    "postgres": "postgres",
    "harness": "harness",
}


class Finishing(Protocol):
    """A task instance as throughput reads it: Tradewind's TiRecord, or Airflow's."""

    @property
    def state(self) -> str: ...
    @property
    def end_date(self) -> float | None: ...


Timed = tuple[float, float]
"""(when, value): a value and the local time it belongs to, for plots over time."""


def percentiles(values: Iterable[float], *, digits: int = 1) -> dict[str, Any]:
    """p50/p90/p99/max/n by nearest rank; None for each when there is no value."""
    ordered = sorted(values)
    n = len(ordered)

    def rank(q: float) -> float | None:
        if not n:
            return None
        return round(ordered[max(0, math.ceil(q * n) - 1)], digits)

    return {
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "max": round(ordered[-1], digits) if n else None,
        "n": n,
    }


def final_executions(ledger: Ledger) -> dict[str, Execution]:
    """Per task-instance key, the execution that finished last (the one that counted)."""
    final: dict[str, Execution] = {}
    for e in ledger.executions:
        if e.end is None:
            continue
        cur = final.get(e.key)
        if cur is None or (cur.end or 0) < e.end:
            final[e.key] = e
    return final


def task_latency_ledger(ledger: Ledger, upstreams: Mapping[str, tuple[str, ...]]) -> list[Timed]:
    """Start of each task's user code minus the end of its last upstream, from the ledger."""
    final = final_executions(ledger)
    with_run = ledger.identity is not IdentitySource.STATIC
    out: list[Timed] = []
    for e in final.values():
        ups = upstreams.get(e.task_id, ())
        if not ups:
            continue
        ends = [final.get(ti_key(e.dag_id, u, e.run_id if with_run else None)) for u in ups]
        if any(u is None or u.end is None for u in ends):
            continue
        last = max(u.end for u in ends if u is not None and u.end is not None)
        out.append((e.start, (e.start - last) * 1000))
    return sorted(out)


def task_latency_store(
    snap: StoreSnapshot, upstreams: Mapping[str, tuple[str, ...]], offset_s: float
) -> list[Timed]:
    """The same from the store: a try's reported start minus the upstreams' reported ends."""
    by_key = {(t.dag_id, t.run_id, t.task_id): t for t in snap.tis}
    out: list[Timed] = []
    for t in snap.tis:
        ups = [by_key.get((t.dag_id, t.run_id, u)) for u in upstreams.get(t.task_id, ())]
        if not ups or t.start_date is None or any(u is None or u.end_date is None for u in ups):
            continue
        last = max(u.end_date for u in ups if u is not None and u.end_date is not None)
        out.append((t.start_date - offset_s, (t.start_date - last) * 1000))
    return sorted(out)


def queued_to_start_ms(attempts: Sequence[AttemptRecord]) -> list[float]:
    """For every attempt that started: its start minus when it was queued."""
    return [
        (a.start_date - a.queued_at) * 1000
        for a in attempts
        if a.start_date is not None and a.queued_at is not None
    ]


def run_creation_delay_ms(runs: Sequence[RunRecord], since: float) -> list[float]:
    """Scheduled runs due at or after `since` (database clock): run start minus due time."""
    return [
        (r.start_date - r.scheduled_at) * 1000
        for r in runs
        if r.run_type == "scheduled"
        and r.scheduled_at is not None
        and r.scheduled_at >= since
        and r.start_date is not None
    ]


def trigger_to_start_ms(runs: Sequence[RunRecord]) -> list[float]:
    """Manual runs: run start minus when the trigger inserted it."""
    return [
        (r.start_date - r.queued_at) * 1000
        for r in runs
        if r.run_type == "manual" and r.start_date is not None and r.queued_at is not None
    ]


def throughput(tis: Sequence[Finishing], start: float, offset_s: float) -> dict[str, Any]:
    """Task instances finished per second: overall since `start` (local clock) and per bucket."""
    ends = sorted(t.end_date - offset_s for t in tis if t.state in TERMINAL and t.end_date)
    ends = [e for e in ends if e >= start]
    if not ends:
        return {"overall": 0.0, "finished": 0, "window_s": 0.0, "bucket_s": 1.0, "over_time": []}
    window = max(ends[-1] - start, 1e-3)
    bucket = max(0.1, round(window / 60, 1))  # at most about 60 points
    counts: dict[int, int] = defaultdict(int)
    for e in ends:
        counts[int((e - start) // bucket)] += 1
    over_time = [
        {"t_s": round(i * bucket, 3), "tis_per_s": round(counts.get(i, 0) / bucket, 3)}
        for i in range(int(window // bucket) + 1)
    ]
    return {
        "overall": round(len(ends) / window, 3),
        "finished": len(ends),
        "window_s": round(window, 3),
        "bucket_s": bucket,
        "over_time": over_time,
    }


def cpu_per_1000(
    usage: Sequence[ProcessUsage], finished: int, extra: Mapping[str, float] | None = None
) -> dict[str, float | str]:
    """CPU seconds per 1000 finished task instances, per role ("unavailable" when unmeasured)."""
    totals: dict[str, float] = defaultdict(float)
    for u in usage:
        totals[u.role] += u.cpu_s
    for role, seconds in (extra or {}).items():
        totals[role] += seconds
    out: dict[str, float | str] = {}
    for role, key in ROLE_KEYS.items():
        out[key] = (
            round(totals[role] * 1000 / finished, 3)
            if role in totals and finished
            else ("unavailable")
        )
    return out


def cpu_wait(usage: Sequence[ProcessUsage]) -> dict[str, dict[str, float] | str]:
    """Per role: seconds its threads ran and waited runnable for a CPU over the load, and the
    wait per second run (above 1, the machine is the bottleneck); "unavailable" unmeasured."""
    out: dict[str, dict[str, float] | str] = {}
    for role, key in ROLE_KEYS.items():
        mine = [u for u in usage if u.role == role and u.run_s is not None]
        run = sum(u.run_s or 0.0 for u in mine)
        wait = sum(u.wait_s or 0.0 for u in mine)
        if not mine or run <= 0:
            out[key] = "unavailable"
            continue
        out[key] = {
            "run_s": round(run, 3),
            "wait_s": round(wait, 3),
            "wait_per_run_s": round(wait / run, 2),
        }
    return out
