"""Applying what workers report (start, finish, heartbeats) through the fenced store calls,
whichever scheduler replica the worker happens to be talking to, and the task metrics Airflow
sends when a try starts and ends (the worker holds no store, so the scheduler sends them)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from tradewind.scheduling.retries import AttemptOutcome, OutcomeDecision, decide_outcome
from tradewind.spec import TaskKind, TaskSpec
from tradewind.states import TaskInstanceState
from tradewind_cluster.scheduler.context import SchedulerContext
from tradewind_cluster.store import attempts as store_attempts
from tradewind_cluster.store import eager as store_eager
from tradewind_cluster.store import xcom as store_xcom
from tradewind_cluster.store.attempts import AttemptStart, ReportResult
from tradewind_cluster.store.database import Connection

__all__ = ["ReportHandler"]

# success and skipped outcomes do not depend on the task's definition
_PLACEHOLDER = TaskSpec(task_id="-", operator="-", kind=TaskKind.CALLABLE)

log = logging.getLogger(__name__)
_FAILED = frozenset({TaskInstanceState.FAILED, TaskInstanceState.UP_FOR_RETRY})


class ReportHandler:
    """Turns worker reports into compare-and-set updates; stale ones are refused and counted."""

    def __init__(self, ctx: SchedulerContext, on_change: Callable[[], None] = lambda: None) -> None:
        self.ctx = ctx
        self.on_change = on_change  # wakes this replica's own loop at once
        # eager plans by (spec hash, task id): computed once per DAG version and task
        self._plans: dict[tuple[str, str], store_eager.EagerPlan | None] = {}

    def started(
        self, ti_id: int, token: int, *, worker_id: str, at: datetime | None = None
    ) -> ReportResult:
        """The worker started the attempt's user code."""
        now = at or self.ctx.clock()
        result, start = self.ctx.db.transaction(
            lambda c: store_attempts.record_start(c, ti_id, token, worker_id=worker_id, now=now)
        )
        self._count(result)
        if start is not None:
            self._emit_start(start, now)
        return result

    def finished(
        self,
        ti_id: int,
        token: int,
        *,
        outcome: AttemptOutcome,
        exit_code: int | None = None,
        error: str | None = None,
        followed: Sequence[str] | None = None,
        at: datetime | None = None,
        started_ago_s: float | None = None,
        worker_id: str | None = None,
        on_applied: Callable[[Connection, ReportResult], object] | None = None,
        returned: Sequence[tuple[str, str]] | None = None,
        offer: tuple[str, str] | None = None,
    ) -> ReportResult:
        """The attempt ended; the core decides success / skipped / retry / failed.
        `started_ago_s`: the try's STARTED was never sent (a short try) and its user code
        started that long before this report, which then starts it too. `on_applied` runs in
        the transaction once the report was accepted (the caller stores the values the try
        returned there, and clears the older ones of a try this report started). `returned`
        instead: the stored form of those values, kept by the store itself (database backend).
        A success or skip without `on_applied` is one statement (store_attempts.record_ended).
        `offer`: (dag_id, task_id) of the try, from a worker that keeps its slot for the next
        attempt: a success may hand it one (store/eager.py; `handed` in the result)."""
        now = at or self.ctx.clock()
        started_at = (
            None if started_ago_s is None else now - timedelta(seconds=max(0.0, started_ago_s))
        )

        if on_applied is not None and returned is not None:
            raise ValueError("pass the returned values or on_applied, not both")
        if on_applied is None and outcome is not AttemptOutcome.FAILED:
            decision = decide_outcome(_PLACEHOLDER, outcome, 0, 0, now, self.ctx.rng.random)
            plan = (
                self._plan(*offer)
                if offer is not None
                and worker_id is not None
                and outcome is AttemptOutcome.SUCCESS
                and followed is None
                and self.ctx.options.eager_dispatch
                else None
            )
            record: Callable[..., ReportResult] = (
                functools.partial(store_attempts.record_ended, followed=followed)
                if plan is None
                else functools.partial(
                    store_eager.record_ended_eager,
                    plan=plan,
                    member_id=self.ctx.member_id,
                    parallelism=self.ctx.options.parallelism,
                )
            )
            result = self.ctx.db.statement(
                lambda c: record(
                    c,
                    ti_id,
                    token,
                    outcome=outcome,
                    decision=decision,
                    now=now,
                    exit_code=exit_code,
                    error=error,
                    started_at=started_at,
                    worker_id=worker_id,
                    returned=returned,
                )
            )
            return self._after_finish(result, started_at, now)

        def apply(conn: Connection) -> ReportResult:
            decide = self._decider(conn, outcome, now)
            result = store_attempts.record_finish(
                conn,
                ti_id,
                token,
                outcome=outcome,
                decide=decide,
                now=now,
                exit_code=exit_code,
                error=error,
                followed=followed,
                started_at=started_at,
                worker_id=worker_id,
            )
            if result.accepted and on_applied is not None:
                on_applied(conn, result)
            elif result.accepted and returned is not None and result.started:
                # a failed try keeps nothing; one this report starts loses the older values
                _clear_xcoms(conn, result)
            # No NOTIFY: waking every replica for each finished task makes all of them run an
            # iteration for work one will do. This replica wakes its own loop (on_change);
            # should it die first, examine_after=now is due and any replica's idle wait ends.
            return result

        return self._after_finish(self.ctx.db.transaction(apply), started_at, now)

    def _after_finish(
        self, result: ReportResult, started_at: datetime | None, now: datetime
    ) -> ReportResult:
        """Count, wake the loop and emit the task metrics of an applied finish report."""
        self._count(result)
        if result.accepted:
            if result.rearmed:  # else its worker's slot went to the run's next task
                self.on_change()
            if result.handed is not None:
                self.ctx.metrics.incr("scheduler.tasks.dispatched", queue=result.handed.queue)
                self.ctx.metrics.incr("scheduler.tasks.eager", queue=result.handed.queue)
            if result.started and result.attempt is not None and started_at is not None:
                self._emit_start(result.attempt, started_at)
            if result.attempt is not None and result.state is not None:
                self._emit_finish(result.attempt, result.state, now)
        return result

    def _plan(self, dag_id: str, task_id: str) -> store_eager.EagerPlan | None:
        """The eager plan for a success of this task, from the cached version of its DAG (the
        statement hands nothing over unless that version is still the stored one)."""
        cached = self.ctx.specs.latest(dag_id)
        if cached is None:
            return None
        key = (cached.spec_hash, task_id)
        if key not in self._plans:
            if len(self._plans) > 4096:
                self._plans.clear()
            self._plans[key] = store_eager.eager_plan(cached.spec, cached.spec_hash, task_id)
        return self._plans[key]

    def heartbeat(
        self, refs: Sequence[tuple[int, int]], at: datetime | None = None
    ) -> list[tuple[int, int]]:
        """Refresh running attempts; returns those the worker must kill (undead)."""
        now = at or self.ctx.clock()
        return self.ctx.db.transaction(
            lambda c: store_attempts.heartbeat_attempts(c, refs, now=now)
        )

    def _decider(
        self, conn: Connection, outcome: AttemptOutcome, now: datetime
    ) -> Callable[[AttemptStart], OutcomeDecision]:
        def decide(start: AttemptStart) -> OutcomeDecision:
            task = _PLACEHOLDER
            if outcome is AttemptOutcome.FAILED:  # only a failure needs the task's retry policy
                spec = self.ctx.specs.get_many(conn, [start.dag_id]).get(start.dag_id)
                found = spec.tasks.get(start.task_id) if spec else None
                # a task that left the DAG while running has no retry policy to honour
                task = found or TaskSpec(
                    task_id=start.task_id, operator="?", kind=TaskKind.CALLABLE
                )
            return decide_outcome(
                task, outcome, start.try_number, start.max_tries, now, self.ctx.rng.random
            )

        return decide

    def _emit_start(self, start: AttemptStart, now: datetime) -> None:
        m, dag_id, task_id = self.ctx.metrics, start.dag_id, start.task_id
        m.incr("ti.start", dag_id=dag_id, task_id=task_id)
        # Airflow sends queued_duration for a task instance's first round only.
        if start.try_number == 1 and start.queued_at is not None:
            waited = max(0.0, (now - start.queued_at).total_seconds())
            m.timing("task.queued_duration", waited, dag_id=dag_id, task_id=task_id)

    def _emit_finish(self, start: AttemptStart, state: TaskInstanceState, now: datetime) -> None:
        m, dag_id, task_id = self.ctx.metrics, start.dag_id, start.task_id
        operator = start.operator or "unknown"
        m.incr("ti.finish", dag_id=dag_id, task_id=task_id, state=state.value)
        if start.start_date is not None:
            ran = max(0.0, (now - start.start_date).total_seconds())
            m.timing("task.duration", ran, dag_id=dag_id, task_id=task_id)
        if state is TaskInstanceState.SUCCESS:
            m.incr("operator_successes", dag_id=dag_id, task_id=task_id, operator=operator)
            m.incr("ti_successes", dag_id=dag_id, task_id=task_id)
        elif state in _FAILED:  # Airflow's handle_failure counts a try that will be retried too
            m.incr("operator_failures", dag_id=dag_id, task_id=task_id, operator=operator)
            m.incr("ti_failures", dag_id=dag_id, task_id=task_id)

    def _count(self, result: ReportResult) -> None:
        if not result.accepted and result.reason.startswith("stale token"):
            self.ctx.metrics.incr("scheduler.reports.stale")
            log.warning("refused report: %s", result.reason, extra={"event": "stale_report"})


def _clear_xcoms(conn: Connection, result: ReportResult) -> None:
    if result.attempt is not None and result.run_id is not None:
        store_xcom.replace_task_xcoms(
            conn,
            dag_id=result.attempt.dag_id,
            run_id=result.run_id,
            task_id=result.attempt.task_id,
            values=(),
        )
