"""Eager dispatch: a success report that also hands the reporting worker its next attempt.

When a try succeeds, the worker offers its slot in the report. The report's statement then also
takes care of the task's downstream tasks in the same run, as Airflow's "mini scheduler" does
after a task: each one this success made ready (trigger rule all_success, every upstream
succeeded) is scheduled, as the examiner would, and the best of them (by priority weight) is
instead queued under a new fencing token, assigned to that worker and returned, when nobody
else is waiting for a slot. The reply carries the attempt (as Temporal's eager activity
dispatch does in a completion's reply): one hop of a chain is one report and one statement, with
no loop pass and no dispatch call.

The handover never raises any usage the critical section counts, so it needs none of its locks:
the finished task instance leaves queued/running and its successor enters it in the same commit,
in the same pool with no more pool slots, the same DAG (max_active_tasks) and the same worker
slot. It takes only a slot nobody waits for, so it never overtakes the critical section's order:
- the scheduled task instances of the pool (in pool slots) and of the queue (whatever their
  pool; whatever their priority) still fit in what the pool and the queue's live workers have
  free once the handover is done, queued attempts waiting for a worker counting as using a
  slot, and fewer than 256 wait; otherwise the successor is only scheduled, and the critical
  section gives the freed slot by priority (under contention, eager dispatch steps aside);
- the pool's, the DAG's and the cluster's (core.parallelism) current usage fit their limits
  (one may have been lowered);
- a task instance with max_active_tis_per_dag (its row's, as the critical section reads it),
  a task with depends_on_past, another trigger rule, no worker code (EmptyOperator) or a
  branching upstream task takes the usual path, as does anything while a run timeout is set;
- the DAG's stored spec is the version the caller planned with, the run is running, the worker
  is alive and serves the task's queue.
The run is not re-armed for examination when every downstream task was taken care of (handed
over or scheduled); otherwise it is examined as after any report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tradewind.scheduling.retries import AttemptOutcome, OutcomeDecision
from tradewind.spec import DagSpec, TaskKind
from tradewind.trigger_rule import TriggerRule
from tradewind_cluster.store.attempts import (
    ENDED_CTES,
    ENDED_TYPES,
    ReportResult,
    ended_params,
    ended_result,
)
from tradewind_cluster.store.prepared import PreparedStatement
from tradewind_cluster.store.queueing import QueuedAttempt, queued_from_row

__all__ = ["EagerPlan", "eager_plan", "handed_again", "record_ended_eager"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EagerPlan:
    """What the statement may hand over after `task_id` of `dag_id` succeeded: its direct
    downstream tasks that may go eagerly, with their upstream tasks, from spec `spec_hash`."""

    dag_id: str
    task_id: str
    spec_hash: str
    edges: tuple[tuple[str, str], ...]  # (candidate, one of its upstream tasks)
    covers: bool  # every downstream task is a candidate (and there is one at least)


def eager_plan(spec: DagSpec, spec_hash: str, task_id: str) -> EagerPlan | None:
    """The plan for a success of `task_id` (None for a task this version has not got): its
    downstream tasks that may go eagerly, possibly none (then the report's statement hands
    nothing over and re-arms the run, as the plain one does)."""
    task = spec.tasks.get(task_id)
    if task is None:
        return None
    edges: list[tuple[str, str]] = []
    eligible = 0
    for down_id in task.downstream_task_ids:
        down = spec.tasks.get(down_id)
        if (
            down is None
            or task.branching is not None
            or spec.dagrun_timeout is not None
            or down.trigger_rule is not TriggerRule.ALL_SUCCESS
            or down.depends_on_past
            or down.max_active_tis_per_dag is not None
            or down.kind is TaskKind.EMPTY
            or any(  # a branch that did not follow it makes it skipped: the examiner decides
                (up := spec.tasks.get(u)) is None or up.branching is not None
                for u in down.upstream_task_ids
            )
        ):
            continue
        eligible += 1
        edges.extend((down_id, up) for up in down.upstream_task_ids)
    covers = 0 < eligible == len(task.downstream_task_ids)
    return EagerPlan(
        dag_id=spec.dag_id, task_id=task_id, spec_hash=spec_hash, edges=tuple(edges), covers=covers
    )


# ENDED_CTES (the report, applied as record_ended applies it), then the handover. A statement's
# parts all read the snapshot taken when it started, before the run lock in `cur` was granted; so
# what a decision must see at its newest is read by a locking clause, which returns the latest
# version of each row: the worker (FOR SHARE: a concurrent "lost" wins, or waits for this
# commit) and the upstream task instances (FOR SHARE: a mark committed while this statement
# waited for the run lock is seen). The finished one counts as succeeded (it is not locked again:
# this statement changes it). `cand`: the best ready
# downstream task instance, checked as the module docstring lists.
# The reason a handed task instance carries (SQL, naming the finished task): a report sent again
# finds what it handed by it (handed_again).
_HANDED_REASON = "'eager dispatch: ' || {task} || ' succeeded on this worker'"
_HANDOVER = (
    """, w AS (
        SELECT queues FROM worker WHERE id = :worker AND state = 'alive' AND :state = 'success'
        FOR SHARE
    ), ups AS (
        SELECT u.id, u.task_id, u.state FROM go
        JOIN task_instance u ON u.run_pk = go.run_pk
        WHERE :state = 'success' AND u.task_id = ANY(CAST(:ups AS text[])) AND u.id <> go.id
        FOR SHARE OF u
    ), ready AS (
        SELECT s.id, s.task_id, s.priority_weight, s.queue, s.pool, s.pool_slots,
               s.max_active_tis_per_dag
        FROM go JOIN task_instance s ON s.run_pk = go.run_pk
        WHERE :state = 'success' AND go.run_state = 'running'
          AND go.dag_id = :dag_id AND go.task_id = :task_id
          AND s.task_id = ANY(CAST(:cands AS text[])) AND s.state = 'none'
          AND EXISTS (SELECT 1 FROM serialized_dag sd
                      WHERE sd.dag_id = go.dag_id AND sd.spec_hash = :spec_hash)
          AND NOT EXISTS (
              SELECT 1 FROM unnest(CAST(:cands AS text[]), CAST(:ups AS text[])) AS e(c, up)
              WHERE e.c = s.task_id AND e.up <> go.task_id AND NOT EXISTS (
                  SELECT 1 FROM ups u WHERE u.task_id = e.up AND u.state = 'success'))
    ), cand AS (
        SELECT s.id FROM go, ready s,
        LATERAL (
            SELECT count(*) AS n, coalesce(sum(x.pool_slots), 0) AS slots FROM (
                SELECT x.pool_slots FROM task_instance x
                WHERE x.state = 'scheduled' AND x.pool = s.pool LIMIT 256) AS x
        ) AS pool_waits,
        LATERAL (
            SELECT count(*) AS n FROM (
                SELECT 1 FROM task_instance x
                WHERE x.state = 'scheduled' AND x.queue = s.queue LIMIT 256) AS x
        ) AS queue_waits,
        LATERAL (
            SELECT coalesce((SELECT CASE WHEN p.slots < 0 THEN 2147483647 ELSE p.slots END
                             FROM pool p WHERE p.name = s.pool), -1)
                   - (SELECT coalesce(sum(a.pool_slots), 0) - go.pool_slots + s.pool_slots
                      FROM task_instance a
                      WHERE a.pool = s.pool AND a.state IN ('queued', 'running')) AS pool_free,
                   (SELECT coalesce(sum(ws.slots), 0) FROM worker ws
                    WHERE ws.state = 'alive' AND ws.queues ? s.queue)
                   - (SELECT count(*) FROM task_instance a
                      WHERE a.state IN ('queued', 'running') AND (
                          (a.worker IS NULL AND a.queue = s.queue)
                          OR a.worker IN (SELECT ws.id FROM worker ws
                                          WHERE ws.state = 'alive' AND ws.queues ? s.queue)))
                   AS worker_free
        ) AS free
        WHERE s.pool = go.pool AND s.pool_slots <= go.pool_slots
          AND s.max_active_tis_per_dag IS NULL
          AND EXISTS (SELECT 1 FROM w WHERE w.queues ? s.queue)
          AND pool_waits.n < 256 AND queue_waits.n < 256
          AND pool_waits.slots <= free.pool_free
          AND queue_waits.n <= free.worker_free
          AND EXISTS (
              SELECT 1 FROM dag d WHERE d.dag_id = go.dag_id AND d.max_active_tasks >= (
                  SELECT count(*) FROM task_instance a
                  WHERE a.dag_id = go.dag_id AND a.state IN ('queued', 'running')))
          AND (CAST(:parallelism AS integer) IS NULL OR :parallelism >= (
                  SELECT count(*) FROM task_instance a WHERE a.state IN ('queued', 'running')))
        ORDER BY s.priority_weight DESC, s.task_id
        LIMIT 1
    ), handed AS (
        UPDATE task_instance t SET
            state = 'queued', token = t.token + 1, queued_by = :member, queued_at = :now,
            scheduled_at = :now,
            worker = :worker, heartbeat_at = NULL, next_retry_at = NULL,
            reason = """
    + _HANDED_REASON.format(task=":task_id")
    + """,
            updated_at = :now
        FROM cand
        WHERE t.id = cand.id AND t.state = 'none'
          AND EXISTS (SELECT 1 FROM changed)
        RETURNING t.id, t.token, t.try_number, t.dag_id, t.run_id, t.run_pk, t.task_id, t.queue,
                  t.pool, t.logical_date, t.scheduled_at
    ), handed_attempt AS (
        INSERT INTO task_attempt
            (ti_id, dag_id, run_id, task_id, try_number, token, state, queued_by, queued_at,
             worker, dispatched_at)
        SELECT handed.id, handed.dag_id, handed.run_id, handed.task_id, handed.try_number + 1,
               handed.token, 'queued', :member, :now, :worker, :now
        FROM handed
        RETURNING id, ti_id
    ), scheduled AS (
        UPDATE task_instance t SET
            state = 'scheduled', scheduled_at = :now, next_retry_at = NULL,
            reason = 'scheduled: ' || :task_id || ' succeeded', updated_at = :now
        FROM ready
        WHERE t.id = ready.id AND t.state = 'none' AND EXISTS (SELECT 1 FROM changed)
          AND NOT EXISTS (SELECT 1 FROM cand WHERE cand.id = ready.id)
        RETURNING t.id
    ), rearmed AS (
        UPDATE dag_run SET examine_after = :now
        FROM go WHERE dag_run.id = go.run_pk AND dag_run.state = 'running'
          AND NOT (:covers AND (SELECT count(*) FROM ready) = :n_cands)
    )
    SELECT cur.*, go.starts, (SELECT count(*) FROM changed) AS changed,
           handed.id AS h_id, handed.token AS h_token, handed.try_number AS h_try_number,
           handed.dag_id AS h_dag_id, handed.run_id AS h_run_id, handed.task_id AS h_task_id,
           handed.queue AS h_queue, handed.pool AS h_pool, handed.logical_date AS h_logical_date,
           handed.scheduled_at AS h_scheduled_at, handed_attempt.id AS h_attempt_id,
           r.run_type AS h_run_type, r.data_interval_start AS h_data_interval_start,
           r.data_interval_end AS h_data_interval_end, r.conf AS h_conf,
           r.trace_context AS h_trace_context, sd.spec_hash AS h_spec_hash,
           (SELECT count(*) FROM ready) AS n_ready,
           (SELECT count(*) FROM scheduled) AS n_scheduled
    FROM cur LEFT JOIN go ON true
    LEFT JOIN handed ON true
    LEFT JOIN handed_attempt ON handed_attempt.ti_id = handed.id
    LEFT JOIN dag_run r ON r.id = handed.run_pk
    LEFT JOIN serialized_dag sd ON sd.dag_id = handed.dag_id
    """
)

_ENDED_EAGER = PreparedStatement(
    "tw_report_ended_eager",
    sa.text(ENDED_CTES + _HANDOVER).columns(
        h_logical_date=sa.DateTime(timezone=True),
        h_scheduled_at=sa.DateTime(timezone=True),
        h_data_interval_start=sa.DateTime(timezone=True),
        h_data_interval_end=sa.DateTime(timezone=True),
    ),
    {
        **ENDED_TYPES,
        "member": "text",
        "dag_id": "text",
        "task_id": "text",
        "spec_hash": "text",
        "cands": "text[]",
        "ups": "text[]",
        "covers": "boolean",
        "parallelism": "integer",
        "n_cands": "integer",
    },
)


def record_ended_eager(
    conn: Connection,
    ti_id: int,
    token: int,
    *,
    plan: EagerPlan,
    member_id: str,
    parallelism: int | None = None,
    outcome: AttemptOutcome,
    decision: OutcomeDecision,
    now: datetime,
    worker_id: str,
    exit_code: int | None = None,
    error: str | None = None,
    started_at: datetime | None = None,
    returned: Sequence[tuple[str, str]] | None = None,
) -> ReportResult:
    """record_ended, and in the same statement the handover the plan allows (see the module
    docstring): `handed` is the attempt queued for `worker_id`, already marked dispatched to
    it, and `rearmed` says whether the run is due for examination."""
    params = ended_params(
        ti_id, token, outcome=outcome, decision=decision, now=now, exit_code=exit_code,
        error=error, followed=None, started_at=started_at, worker_id=worker_id,
        returned=returned,
    )  # fmt: skip
    params.update(
        member=member_id,
        dag_id=plan.dag_id,
        task_id=plan.task_id,
        spec_hash=plan.spec_hash,
        cands=[c for c, _ in plan.edges],
        ups=[u for _, u in plan.edges],
        covers=plan.covers,
        parallelism=parallelism,
        n_cands=len({c for c, _ in plan.edges}),
    )
    row = _ENDED_EAGER.execute(conn, params).first()
    result = ended_result(row, ti_id, token, decision.to_state, started_at)
    if row is None or not result.accepted:
        return result
    covered = plan.covers and row.n_ready == len({c for c, _ in plan.edges})
    handed = None if row.h_id is None else queued_from_row(row._asdict(), now, prefix="h_")
    return replace(result, handed=handed, rearmed=not covered or row.n_scheduled > 0)


_HANDED_AGAIN = sa.text(
    """
    SELECT h.id, h.token, h.try_number, h.dag_id, h.run_id, h.task_id, h.queue, h.pool,
           h.logical_date, h.scheduled_at, h.queued_at, a.id AS attempt_id,
           r.run_type, r.data_interval_start, r.data_interval_end, r.conf, r.trace_context,
           sd.spec_hash, a.trace_context AS dispatched_trace_context
    FROM task_instance f
    JOIN task_instance h ON h.run_pk = f.run_pk AND h.queued_at = f.end_date
    JOIN task_attempt a ON a.ti_id = h.id AND a.token = h.token
    JOIN dag_run r ON r.id = h.run_pk
    LEFT JOIN serialized_dag sd ON sd.dag_id = h.dag_id
    WHERE f.id = :ti_id AND f.token = :token AND f.state = 'success'
      AND h.state = 'queued' AND h.worker = :worker
      AND h.reason = """
    + _HANDED_REASON.format(task="f.task_id")
    + """
    """
).columns(
    logical_date=sa.DateTime(timezone=True),
    scheduled_at=sa.DateTime(timezone=True),
    queued_at=sa.DateTime(timezone=True),
    data_interval_start=sa.DateTime(timezone=True),
    data_interval_end=sa.DateTime(timezone=True),
)


def handed_again(
    conn: Connection, ti_id: int, token: int, worker_id: str
) -> list[tuple[QueuedAttempt, str | None]]:
    """The attempts a success report of (ti_id, token) handed to this worker that are still
    queued for it, as they were handed, each with the traceparent of its task.dispatch span
    when one was stored: what the reply to the same report sent again carries once more (see
    AttemptReports)."""
    rows = conn.execute(_HANDED_AGAIN, {"ti_id": ti_id, "token": token, "worker": worker_id})
    return [(queued_from_row(r._mapping, r.queued_at), r.dispatched_trace_context) for r in rows]
