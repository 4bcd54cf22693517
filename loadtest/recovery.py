"""How fast the cluster recovered from the fault, from the strike record, the store snapshot and
the ledger: scheduler failover, worker-loss recovery and what a partition's lease did. Each
result carries the definition it measures, so results.json reads on its own."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from loadtest.chaos import Strike
from loadtest.collect import AttemptRecord, StoreSnapshot, TiRecord
from loadtest.dagfiles import TICK_S
from loadtest.ledger import Execution, IdentitySource, Ledger, ti_key
from loadtest.measure import TERMINAL
from loadtest.scenarios import Fault

__all__ = ["FAILOVER_DEFINITION", "failover", "partition", "recover", "worker_loss"]

FAILOVER_DEFINITION = (
    "seconds from the SIGKILL of the busiest replica to the first change a survivor made in the "
    "store to a task instance the victim had queued or running at the kill (a new attempt "
    "queued, or the victim's attempt requeued, reaped, started or finished); all_moved_s: the "
    "same for the last of them; declared_dead_s: to the victim's member row turning dead; "
    "finished_by_victim: those the victim's last commit finished (not counted in in_flight)"
)
WORKER_LOSS_DEFINITION = (
    "seconds from the SIGKILL of the busiest worker to the first retry of one of its running "
    "task instances starting on another worker (store start time); all_s: the last of them"
)
PARTITION_DEFINITION = (
    "from the cut: stopped_s = last sign of life (ledger) of the cut-off worker's attempts; "
    "retry_s = first retry of one of them starting elsewhere; margin_s = the smallest gap "
    "between an attempt's last sign of life and its retry's start (must be > 0)"
)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _alive(e: Execution) -> float:
    return e.end if e.end is not None else e.last_seen


def _first_change(attempts: list[AttemptRecord], after: float) -> float | None:
    times = [
        t
        for a in attempts
        for t in (a.queued_at, a.start_date, a.end_date)
        if t is not None and t > after
    ]
    return min(times) if times else None


def _finished_by(ti: TiRecord | None, attempts: list[AttemptRecord], at: float) -> bool:
    """The task instance is finished for good, its latest attempt (highest token) ended no later
    than `at`, and nothing changed since: the victim finished it before it died. Work left
    queued, running or waiting for a retry is not finished, whatever earlier attempts did."""
    if ti is None or ti.state not in TERMINAL or not attempts:
        return False
    latest = max(attempts, key=lambda a: a.token)
    return (
        latest.end_date is not None
        and latest.end_date <= at
        and _first_change(attempts, at) is None
    )


def failover(strike: Strike, snap: StoreSnapshot, offset_s: float) -> dict[str, Any]:
    """Failover after a scheduler was killed (times from the store, moved to the local clock)."""
    assert strike.at is not None
    kill_db = strike.at + offset_s
    by_ti: dict[int, list[AttemptRecord]] = defaultdict(list)
    for a in snap.attempts:
        by_ti[a.ti_id].append(a)
    # A report the victim sent its COMMIT for just before the SIGKILL is committed by
    # PostgreSQL after it (the message was already in the socket), so the task instance can be
    # read as held at the kill and yet be finished by the victim itself: no survivor ever has to
    # move it. Such work is counted apart, not as work that never moved.
    tis = {t.id: t for t in snap.tis}
    finished = {
        ti for ti in strike.in_flight if _finished_by(tis.get(ti), by_ti.get(ti, []), kill_db)
    }
    held = [ti for ti in strike.in_flight if ti not in finished]
    moved = [_first_change(by_ti.get(ti, []), kill_db) for ti in held]
    seen = [m - kill_db for m in moved if m is not None]
    member = next((m for m in snap.members if m.id == strike.victim_id), None)
    dead = None
    if member is not None and member.state == "dead" and member.ended_at is not None:
        dead = member.ended_at - kill_db
    return {
        "victim": strike.victim,
        "in_flight": len(held),
        "finished_by_victim": len(finished),
        "moved": len(seen),
        "work_moved_s": _round(min(seen) if seen else None),
        "all_moved_s": _round(max(seen) if len(seen) == len(moved) and seen else None),
        "declared_dead_s": _round(dead),
        "definition": FAILOVER_DEFINITION,
    }


def worker_loss(strike: Strike, snap: StoreSnapshot, offset_s: float) -> dict[str, Any]:
    """Recovery after a worker was killed: retries starting on other workers."""
    assert strike.at is not None
    kill_db = strike.at + offset_s
    held = set(strike.in_flight)
    firsts: dict[int, float] = {}
    for a in snap.attempts:
        if a.ti_id not in held or a.worker == strike.victim_id or a.start_date is None:
            continue
        if a.start_date > kill_db and a.start_date < firsts.get(a.ti_id, float("inf")):
            firsts[a.ti_id] = a.start_date
    seen = [t - kill_db for t in firsts.values()]
    return {
        "victim": strike.victim,
        "in_flight": len(held),
        "retried": len(seen),
        "recovery_s": _round(min(seen) if seen else None),
        "all_s": _round(max(seen) if seen and len(seen) == len(held) else None),
        "kill": strike.method,
        "definition": WORKER_LOSS_DEFINITION,
    }


def partition(strike: Strike, snap: StoreSnapshot, ledger: Ledger) -> dict[str, Any]:
    """What the lease did: when the cut-off attempts stopped and their retries started."""
    assert strike.at is not None
    with_run = ledger.identity is not IdentitySource.STATIC
    tis = {t.id: t for t in snap.tis}
    keys = {
        ti_key(t.dag_id, t.task_id, t.run_id if with_run else None)
        for ti in strike.in_flight
        if (t := tis.get(ti)) is not None
    }
    by_key: dict[str, list[Execution]] = defaultdict(list)
    for e in ledger.executions:
        if e.key in keys:
            by_key[e.key].append(e)
    stopped: list[float] = []
    retries: list[float] = []
    margins: list[float] = []
    for group in by_key.values():
        # alive at the cut (a tick at most TICK_S old), not an earlier try that had ended
        cut_off = [e for e in group if e.start <= strike.at <= _alive(e) + 2 * TICK_S]
        later = [e for e in group if e.start > strike.at]
        if not cut_off:
            continue
        last = max(_alive(e) for e in cut_off)
        stopped.append(last - strike.at)
        if later:
            first = min(e.start for e in later)
            retries.append(first - strike.at)
            margins.append(first - last)
    heal = next((e.at for e in strike.events if e.kind == "heal"), None)
    return {
        "victim": strike.victim,
        "method": strike.method,
        "in_flight": len(strike.in_flight),
        "cut_s": _round(heal - strike.at if heal is not None else None),
        "stopped_s": _round(max(stopped) if stopped else None),
        "retry_s": _round(min(retries) if retries else None),
        "margin_s": _round(min(margins) if margins else None),
        "definition": PARTITION_DEFINITION,
    }


def recover(
    strike: Strike | None, snap: StoreSnapshot, ledger: Ledger, offset_s: float
) -> dict[str, Any]:
    """The results.json fields of the fault: failover_s / worker_loss_recovery_s and details."""
    out: dict[str, Any] = {
        "failover_s": None,
        "failover": None,
        "worker_loss_recovery_s": None,
        "worker_loss": None,
        "partition": None,
    }
    if strike is None or strike.at is None:
        return out
    if strike.fault is Fault.KILL_SCHEDULER:
        out["failover"] = failover(strike, snap, offset_s)
        out["failover_s"] = out["failover"]["work_moved_s"]
    elif strike.fault is Fault.KILL_WORKER:
        out["worker_loss"] = worker_loss(strike, snap, offset_s)
        out["worker_loss_recovery_s"] = out["worker_loss"]["recovery_s"]
    elif strike.fault is Fault.PARTITION_WORKER:
        out["partition"] = partition(strike, snap, ledger)
    return out
