"""Where a hop's time goes: each measured task latency (a task's start minus its last upstream's
end, from the ledger) cut into the consecutive phases the store's timestamps mark:

- `report`: the upstream's user code ended → its report applied (the task instance's end_date);
- `examine`: → this task instance scheduled (scheduled_at);
- `queue`: → its attempt queued (the critical section, attempt queued_at);
- `dispatch`: → the dispatch step began for it (attempt dispatched_at);
- `start`: → its user code started (ledger): the call, the worker, the process.

The five add up to the hop's latency. A hop is cut only where the ledger names the attempt
(ti_id and token, from the executor's environment) and every timestamp is known; a ledger
without run ids (templates left unrendered) is read as one run per DAG, as the latency is.
Store times are on the database clock, turned to the local clock by `offset_s` (database minus
local)."""

from __future__ import annotations

from collections.abc import Mapping
from statistics import fmean
from typing import Any

from loadtest.collect import StoreSnapshot
from loadtest.ledger import Execution, IdentitySource, Ledger, ti_key
from loadtest.measure import final_executions, percentiles

__all__ = ["PHASES", "hop_phases", "hop_phases_ms"]

# Each phase and what ends it, in order.
PHASES = {
    "report": "upstream ended → its report applied",
    "examine": "→ scheduled",
    "queue": "→ queued",
    "dispatch": "→ dispatch began",
    "start": "→ user code started",
}


def hop_phases(
    snap: StoreSnapshot, ledger: Ledger, upstreams: Mapping[str, tuple[str, ...]], offset_s: float
) -> list[dict[str, float]]:
    """Per hop that can be cut: each phase in milliseconds (PHASES order, adding up to the hop's
    latency)."""
    final = final_executions(ledger)
    with_run = ledger.identity is not IdentitySource.STATIC  # else one run per DAG
    tis = {t.id: t for t in snap.tis}
    ti_by_key = {(t.dag_id, t.run_id, t.task_id): t for t in snap.tis}
    attempts = {(a.ti_id, a.token): a for a in snap.attempts}
    out: list[dict[str, float]] = []
    for e in final.values():
        ups = upstreams.get(e.task_id, ())
        if not ups or e.ti_id is None or e.token is None:
            continue
        ti, attempt = tis.get(e.ti_id), attempts.get((e.ti_id, e.token))
        if ti is None or attempt is None:
            continue
        last = _last_upstream(final, e, ups, e.run_id if with_run else None)
        up_ti = ti_by_key.get((ti.dag_id, ti.run_id, last.task_id)) if last else None
        if last is None or last.end is None or up_ti is None:
            continue
        marks = (
            last.end,
            _local(up_ti.end_date, offset_s),
            _local(ti.scheduled_at, offset_s),
            _local(attempt.queued_at, offset_s),
            _local(attempt.dispatched_at, offset_s),
            e.start,
        )
        if any(m is None for m in marks):
            continue
        times = [m for m in marks if m is not None]
        out.append({name: (times[i + 1] - times[i]) * 1000 for i, name in enumerate(PHASES)})
    return out


def hop_phases_ms(
    snap: StoreSnapshot, ledger: Ledger, upstreams: Mapping[str, tuple[str, ...]], offset_s: float
) -> dict[str, Any] | None:
    """results.json's `hop_phases_ms`: per phase p50/p90/p99/max/n and the mean (the means add
    up to the mean latency of the hops cut); None when no hop could be cut."""
    hops = hop_phases(snap, ledger, upstreams, offset_s)
    if not hops:
        return None
    return {
        name: percentiles(h[name] for h in hops) | {"mean": round(fmean(h[name] for h in hops), 1)}
        for name in PHASES
    }


def _last_upstream(
    final: Mapping[str, Execution], e: Execution, ups: tuple[str, ...], run_id: str | None
) -> Execution | None:
    """The upstream execution that ended last (None when one of them has not ended)."""
    found = [final.get(ti_key(e.dag_id, u, run_id)) for u in ups]
    if any(u is None or u.end is None for u in found):
        return None
    return max((u for u in found if u is not None), key=lambda u: u.end or 0.0)


def _local(db_time: float | None, offset_s: float) -> float | None:
    return None if db_time is None else db_time - offset_s
