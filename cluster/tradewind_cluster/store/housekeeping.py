"""Housekeeping sweeps, each sharded between replicas by row locks (SKIP LOCKED):
zombies (running attempts whose heartbeat stopped), orphans (attempts queued by a replica that
is no longer alive), and attempts queued too long without starting."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tradewind.scheduling.retries import FailureDecision
from tradewind.states import TaskInstanceState
from tradewind_cluster.store.attempts import update_attempt
from tradewind_cluster.store.schema import dag_run, scheduler_member, task_instance

__all__ = ["Reaped", "adopt_orphans", "reap_zombies", "requeue_stuck_queued", "touch_runs"]

ti = task_instance
m = scheduler_member


@dataclass(frozen=True, slots=True, kw_only=True)
class Reaped:
    """One task instance housekeeping moved, and why."""

    ti_id: int
    dag_id: str
    task_id: str
    run_id: str
    to_state: TaskInstanceState
    reason: str
    run_pk: int | None = None


def touch_runs(conn: Connection, run_pks: Iterable[int], now: datetime) -> None:
    """Ask for these runs to be examined now. Called in its own transaction after the sweep's:
    a sweep holds task-instance locks, and the lock order puts dag_run before task_instance."""
    pks = sorted(set(run_pks))
    if pks:
        conn.execute(
            sa.update(dag_run)
            .where(dag_run.c.id.in_(pks), dag_run.c.state == "running")
            .values(examine_after=now)
        )


def reap_zombies(
    conn: Connection,
    *,
    now: datetime,
    threshold: timedelta,
    decide: Callable[[str, str, int, int], FailureDecision],
    limit: int,
) -> list[Reaped]:
    """Fail (or retry) running attempts whose last heartbeat is older than the threshold.
    `decide(dag_id, task_id, try_number, max_tries)` is the core's failure decision.
    Lock: `FOR UPDATE OF task_instance SKIP LOCKED`."""
    rows = conn.execute(
        sa.select(
            ti.c.id,
            ti.c.token,
            ti.c.dag_id,
            ti.c.task_id,
            ti.c.run_id,
            ti.c.run_pk,
            ti.c.try_number,
            ti.c.max_tries,
            ti.c.heartbeat_at,
        )
        .where(
            ti.c.state == "running",
            sa.func.coalesce(ti.c.heartbeat_at, ti.c.start_date) < now - threshold,
        )
        .order_by(ti.c.heartbeat_at)
        .limit(limit)
        .with_for_update(of=ti, skip_locked=True)
    ).all()
    reaped: list[Reaped] = []
    for r in rows:
        age = (now - r.heartbeat_at).total_seconds() if r.heartbeat_at else float("nan")
        decision = decide(r.dag_id, r.task_id, r.try_number, r.max_tries)
        limit_s = threshold.total_seconds()
        reason = (
            f"zombie: no heartbeat for {age:.1f}s (threshold {limit_s:.0f}s); {decision.reason}"
        )
        conn.execute(
            sa.update(ti)
            .where(ti.c.id == r.id, ti.c.token == r.token, ti.c.state == "running")
            .values(
                state=decision.to_state.value,
                next_retry_at=decision.next_retry_at,
                end_date=now,
                reason=reason,
            )
        )
        update_attempt(conn, r.id, r.token, state="zombie", end_date=now, error=reason)
        reaped.append(
            Reaped(
                ti_id=r.id,
                dag_id=r.dag_id,
                task_id=r.task_id,
                run_id=r.run_id,
                to_state=decision.to_state,
                reason=reason,
                run_pk=r.run_pk,
            )
        )
    return reaped


def adopt_orphans(
    conn: Connection, *, member_id: str, now: datetime, limit: int
) -> tuple[list[Reaped], int]:
    """Attempts of replicas that are no longer alive: queued ones go back to scheduled (a new
    token is issued when they are queued again); running ones are adopted by this replica
    (their worker keeps reporting to any live scheduler). Returns (requeued, adopted count)."""
    not_alive = sa.or_(
        ti.c.queued_by.is_(None),
        ~sa.exists().where(m.c.id == ti.c.queued_by, m.c.state == "alive"),
    )
    rows = conn.execute(
        sa.select(
            ti.c.id, ti.c.token, ti.c.state, ti.c.dag_id, ti.c.task_id, ti.c.run_id, ti.c.queued_by
        )
        .where(ti.c.state.in_(["queued", "running"]), not_alive)
        .limit(limit)
        .with_for_update(of=ti, skip_locked=True)
    ).all()
    requeued: list[Reaped] = []
    adopted = [r.id for r in rows if r.state == "running"]
    if adopted:
        conn.execute(sa.update(ti).where(ti.c.id.in_(adopted)).values(queued_by=member_id))
    for r in rows:
        if r.state != "queued":
            continue
        reason = f"orphaned: queued by replica {r.queued_by} that is no longer alive"
        conn.execute(
            sa.update(ti)
            .where(ti.c.id == r.id, ti.c.token == r.token, ti.c.state == "queued")
            .values(state="scheduled", worker=None, queued_by=None, reason=reason, updated_at=now)
        )
        update_attempt(conn, r.id, r.token, state="requeued", end_date=now, error=reason)
        requeued.append(
            Reaped(
                ti_id=r.id,
                dag_id=r.dag_id,
                task_id=r.task_id,
                run_id=r.run_id,
                to_state=TaskInstanceState.SCHEDULED,
                reason=reason,
            )
        )
    return requeued, len(adopted)


def requeue_stuck_queued(
    conn: Connection, *, now: datetime, timeout: timedelta, max_requeues: int, limit: int
) -> list[Reaped]:
    """Attempts queued longer than `timeout` without starting: back to scheduled up to
    `max_requeues` times, then failed with the reason. Lock: SKIP LOCKED on task_instance."""
    rows = conn.execute(
        sa.select(
            ti.c.id,
            ti.c.token,
            ti.c.dag_id,
            ti.c.task_id,
            ti.c.run_id,
            ti.c.run_pk,
            ti.c.requeue_count,
        )
        .where(ti.c.state == "queued", ti.c.queued_at < now - timeout)
        .order_by(ti.c.queued_at)
        .limit(limit)
        .with_for_update(of=ti, skip_locked=True)
    ).all()
    out: list[Reaped] = []
    for r in rows:
        give_up = r.requeue_count >= max_requeues
        to = TaskInstanceState.FAILED if give_up else TaskInstanceState.SCHEDULED
        reason = f"queued for more than {timeout.total_seconds():.0f}s without starting, " + (
            f"{r.requeue_count} times: giving up"
            if give_up
            else f"requeue {r.requeue_count + 1}/{max_requeues}"
        )
        values: dict[str, object] = {
            "state": to.value,
            "worker": None,
            "reason": reason,
            "updated_at": now,
        }
        if give_up:
            values["end_date"] = now
        else:
            values.update(requeue_count=ti.c.requeue_count + 1, queued_by=None)
        conn.execute(
            sa.update(ti)
            .where(ti.c.id == r.id, ti.c.token == r.token, ti.c.state == "queued")
            .values(**values)
        )
        update_attempt(conn, r.id, r.token, state="queued_timeout", end_date=now, error=reason)
        out.append(
            Reaped(
                ti_id=r.id,
                dag_id=r.dag_id,
                task_id=r.task_id,
                run_id=r.run_id,
                to_state=to,
                reason=reason,
                run_pk=r.run_pk,
            )
        )
    return out
