"""The invariants a run must keep (DESIGN.md §5), checked from the store snapshot, the tasks'
own ledger and the limits sampled during the run. Pure functions: planted violations in tests
go through exactly the code a real run does."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from loadtest.collect import AttemptRecord, RunRecord, StoreSnapshot, TiRecord
from loadtest.ledger import Execution, IdentitySource, Ledger, ti_key
from loadtest.sampler import LimitSample

__all__ = [
    "Check",
    "all_tis_succeeded",
    "allowed_executions",
    "check_all",
    "ledger_concurrency",
    "ledger_covers_successes",
    "limits_respected",
    "no_overlapping_attempts",
    "no_stale_report_applied",
    "one_run_per_logical_date",
    "tries_within_limit",
]

_EXAMPLES = 5
_POOL_KINDS = frozenset({"pool"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    """The verdict of one invariant, with a few offending cases spelled out."""

    violations: int
    examples: tuple[str, ...] = ()
    note: str | None = None

    @property
    def ok(self) -> bool:
        """True when nothing was violated."""
        return self.violations == 0

    def to_dict(self) -> dict[str, Any]:
        """The results.json form: {"ok", "violations", "examples"[, "note"]}."""
        out: dict[str, Any] = {
            "ok": self.ok,
            "violations": self.violations,
            "examples": list(self.examples),
        }
        if self.note:
            out["note"] = self.note
        return out


def _check(found: Sequence[str], note: str | None = None) -> Check:
    return Check(violations=len(found), examples=tuple(found[:_EXAMPLES]), note=note)


def all_tis_succeeded(tis: Sequence[TiRecord], *, expected: int | None) -> Check:
    """Every task instance ended in success (and as many exist as the load created)."""
    found = [f"{t.dag_id}/{t.run_id}/{t.task_id} is {t.state}" for t in tis if t.state != "success"]
    if expected is not None and len(tis) < expected:
        found += [f"only {len(tis)} of {expected} task instances were created"] * (
            expected - len(tis)
        )
    return _check(found)


def one_run_per_logical_date(runs: Sequence[RunRecord]) -> Check:
    """No two runs of one DAG share a logical date (each extra run is one violation)."""
    counts = Counter((r.dag_id, r.logical_date) for r in runs)
    found: list[str] = []
    for (dag_id, at), n in sorted(counts.items()):
        if n > 1:
            when = datetime.fromtimestamp(at, UTC).isoformat()
            found += [f"{dag_id} has {n} runs at logical date {when}"] * (n - 1)
    return _check(found)


def _alive_until(e: Execution) -> float:
    return e.end if e.end is not None else e.last_seen


def no_overlapping_attempts(ledger: Ledger) -> Check:
    """No execution of a task instance starts while another one is still alive."""
    by_key: dict[str, list[Execution]] = defaultdict(list)
    for e in ledger.executions:
        by_key[e.key].append(e)
    found: list[str] = []
    for key, group in by_key.items():
        group.sort(key=lambda e: e.start)
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                if b.start < _alive_until(a):
                    overlap = (_alive_until(a) - b.start) * 1000
                    found.append(
                        f"{key}: pid {b.pid} started {overlap:.0f} ms before pid {a.pid} stopped"
                    )
    return _check(found)


def allowed_executions(tis: Sequence[TiRecord], identity: IdentitySource) -> dict[str, int]:
    """Executions each ledger key may have: retries + 1, summed over the task instances a key
    stands for (all runs of a task when the ledger cannot tell runs apart)."""
    allowed: dict[str, int] = defaultdict(int)
    with_run = identity is not IdentitySource.STATIC
    for t in tis:
        allowed[ti_key(t.dag_id, t.task_id, t.run_id if with_run else None)] += t.max_tries + 1
    return dict(allowed)


def tries_within_limit(ledger: Ledger, tis: Sequence[TiRecord]) -> Check:
    """No task ran more often than its tries allow: by the ledger, and by the store's count."""
    allowed = allowed_executions(tis, ledger.identity)
    counts = Counter(e.key for e in ledger.executions)
    found = [
        f"{key} executed {n} times, {allowed.get(key, 0)} allowed"
        for key, n in sorted(counts.items())
        if n > allowed.get(key, 0)
    ]
    found += [
        f"{t.dag_id}/{t.run_id}/{t.task_id} is at try {t.try_number} of {t.max_tries + 1}"
        for t in tis
        if t.try_number > t.max_tries + 1
    ]
    return _check(found)


def ledger_concurrency(ledger: Ledger) -> int:
    """The most executions alive at once, by the ledger."""
    events = sorted(
        [(e.start, 1) for e in ledger.executions]
        + [(_alive_until(e), -1) for e in ledger.executions]
    )
    live = peak = 0
    for _, step in events:  # ends sort before starts at the same instant
        live += step
        peak = max(peak, live)
    return peak


def limits_respected(
    samples: Sequence[LimitSample], *, pools: bool, ledger: Ledger | None = None, slots: int = 0
) -> Check:
    """Pool slots (pools=True) or the concurrency limits (max_active_tasks, max_active_runs,
    max_active_tis_per_dag, parallelism, worker slots, and the executors' slots by the ledger)
    were never exceeded in any sample."""
    chosen = [s for s in samples if (s.kind in _POOL_KINDS) == pools]
    found = [f"{s.kind} {s.name}: {s.used} in use, limit {s.limit}" for s in chosen]
    if ledger is not None and slots:
        peak = ledger_concurrency(ledger)
        if peak > slots:
            found.append(f"{peak} tasks ran at once by the ledger, executors have {slots} slots")
    return _check(found)


_FINAL_ATTEMPT = {
    "success": {"success"},
    "skipped": {"skipped"},
    "failed": {"failed", "zombie", "queued_timeout"},
}


def _finished_after(old: AttemptRecord, new: AttemptRecord) -> bool:
    if old.state not in ("success", "failed", "skipped"):
        return False
    return old.end_date is not None and new.queued_at is not None and old.end_date > new.queued_at


def no_stale_report_applied(snap: StoreSnapshot) -> Check:
    """Reports were applied only under the current token: a finished task instance agrees with
    its current attempt, and no superseded attempt finished after a newer one was queued."""
    attempts: dict[int, list[AttemptRecord]] = defaultdict(list)
    for a in snap.attempts:
        attempts[a.ti_id].append(a)
    found: list[str] = []
    for t in snap.tis:
        mine = sorted(attempts.get(t.id, []), key=lambda a: a.token)
        name = f"{t.dag_id}/{t.run_id}/{t.task_id}"
        wanted = _FINAL_ATTEMPT.get(t.state)
        current = next((a for a in mine if a.token == t.token), None)
        if wanted is not None and t.token > 0 and (current is None or current.state not in wanted):
            seen = current.state if current else "missing"
            found.append(f"{name} is {t.state} but its current attempt {t.token} is {seen}")
        for old, new in itertools.pairwise(mine):
            if _finished_after(old, new):
                found.append(
                    f"{name}: attempt {old.token} recorded {old.state} after attempt "
                    f"{new.token} was queued"
                )
    return _check(found)


def ledger_covers_successes(ledger: Ledger, tis: Sequence[TiRecord]) -> Check:
    """Every successful task instance has a finished execution in the ledger (its code ran)."""
    with_run = ledger.identity is not IdentitySource.STATIC
    finished = Counter(e.key for e in ledger.executions if e.end is not None)
    needed = Counter(
        ti_key(t.dag_id, t.task_id, t.run_id if with_run else None)
        for t in tis
        if t.state == "success"
    )
    found = [
        f"{key}: {n} successful task instances, {finished.get(key, 0)} finished executions"
        for key, n in sorted(needed.items())
        if finished.get(key, 0) < n
    ]
    return _check(found)


def check_all(
    snap: StoreSnapshot,
    ledger: Ledger,
    limit_samples: Sequence[LimitSample],
    *,
    expected_tis: int | None,
    slots: int,
    ledger_expected: bool,
) -> dict[str, Check]:
    """Every invariant by name, in the order the report lists them."""
    coverage = ledger_covers_successes(ledger, snap.tis)
    if not ledger_expected:
        coverage = Check(
            violations=0, note="this executor does not run Python callables: no ledger expected"
        )
    checks: Mapping[str, Check] = {
        "all_tis_succeeded": all_tis_succeeded(snap.tis, expected=expected_tis),
        "one_run_per_logical_date": one_run_per_logical_date(snap.runs),
        "no_overlapping_attempts": no_overlapping_attempts(ledger),
        "tries_within_limit": tries_within_limit(ledger, snap.tis),
        "pool_limits_respected": limits_respected(limit_samples, pools=True),
        "concurrency_limits_respected": limits_respected(
            limit_samples, pools=False, ledger=ledger, slots=slots
        ),
        "no_stale_report_applied": no_stale_report_applied(snap),
        "every_success_in_ledger": coverage,
    }
    return dict(checks)
