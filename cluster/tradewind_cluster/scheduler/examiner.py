"""Step 4 of the loop: examine the running runs whose state may have moved (a task finished,
a retry or a timeout is due), as the core decides, and apply the result. Once the pass has
committed, it records a "task.schedule" span per task instance it scheduled and the run metrics."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from tradewind.scheduling.examine import RunExamination, RunView, examine_run
from tradewind.spec import DagSpec
from tradewind.states import DagRunState, TaskInstanceState
from tradewind_cluster.observability.tracing import context_from, record_span
from tradewind_cluster.scheduler.context import SchedulerContext
from tradewind_cluster.store import examine as store_examine
from tradewind_cluster.store import runs as store_runs
from tradewind_cluster.store.database import Connection
from tradewind_cluster.store.snapshots import RunRow

__all__ = ["ExaminationReport", "RunExaminer", "schedule_span_key"]

log = logging.getLogger(__name__)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def schedule_span_key(ti_id: int, scheduled_at: datetime) -> tuple[str, int, int]:
    """The key of the task.schedule span of a task instance scheduled at `scheduled_at`: the
    critical section derives the span's id from it (tracing.keyed_context) to be its child."""
    return ("task.schedule", ti_id, (scheduled_at - _EPOCH) // timedelta(microseconds=1))


@dataclass(frozen=True, slots=True, kw_only=True)
class ExaminationReport:
    """What one pass examined and changed."""

    runs: int = 0
    scheduled_pools: frozenset[str] = frozenset()
    finished: tuple[tuple[str, str, DagRunState], ...] = ()  # (dag_id, run_id, state)
    moved: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class _Emissions:
    """What a pass records once its transaction committed (a retried one starts afresh)."""

    scheduled: list[tuple[RunRow, store_examine.ExamineRow]] = field(default_factory=list)
    checks: list[tuple[str, float]] = field(default_factory=list)  # (dag_id, seconds)
    finished: list[tuple[RunRow, DagRunState, datetime | None]] = field(default_factory=list)
    removed: Counter[str] = field(default_factory=Counter)
    restored: Counter[str] = field(default_factory=Counter)


class RunExaminer:
    """Locks due runs with SKIP LOCKED, so each run is examined by one replica at a time."""

    def __init__(self, ctx: SchedulerContext) -> None:
        self.ctx = ctx

    def run_once(self, now: datetime | None = None) -> ExaminationReport:
        """Examine up to max_dagruns_to_examine runs in one transaction."""
        now = now or self.ctx.clock()
        started_ns = time.time_ns()
        report, emissions = self.ctx.db.transaction(lambda c: self._examine(c, now))
        if report.finished:
            dag_ids = [d for d, _, _ in report.finished]
            # In its own transaction after the runs': never take a dag lock holding a dag_run lock.
            self.ctx.db.transaction(lambda c: store_examine.flag_dags_for_run_check(c, dag_ids))
        self._emit(emissions, now)
        self._trace(emissions, now, started_ns)
        return report

    def _examine(self, conn: Connection, now: datetime) -> tuple[ExaminationReport, _Emissions]:
        emissions = _Emissions()
        found = store_examine.claim_runs_with_tis(
            conn, now=now, limit=self.ctx.options.max_dagruns_to_examine
        )
        claimed, tis = found.runs, found.tis
        if not claimed:
            return ExaminationReport(), emissions
        specs = {d: e.spec for d, e in self.ctx.specs.for_hashes(conn, found.spec_hashes).items()}
        done: list[tuple[store_examine.Examined, store_examine.AppliedExamination]] = []
        batch: list[store_examine.Examined] = []
        for run in claimed:
            spec = specs.get(run.dag_id)
            if spec is None:
                continue
            run_tis = tis.get(run.id, {})
            past = [t.task_id for t in spec.tasks.values() if t.depends_on_past]
            exam = self._decide(conn, run, spec, run_tis, past, now, emissions)
            item = store_examine.Examined(run=run, spec=spec, exam=exam, tis=run_tis)
            if past:
                # the next run of this DAG in the pass must see what this one just moved
                done.append((item, store_examine.apply_examinations(conn, [item], now)[0]))
            else:
                batch.append(item)
        done += zip(batch, store_examine.apply_examinations(conn, batch, now), strict=True)
        pools: set[str] = set()
        finished: list[tuple[str, str, DagRunState]] = []
        moved: Counter[str] = Counter()
        for item, applied in done:
            run = item.run
            pools |= applied.scheduled_pools
            for (src, dst), n in applied.moved.items():
                moved[f"{src}->{dst}"] += n
                if dst is TaskInstanceState.REMOVED:
                    emissions.removed[run.dag_id] += n
            if applied.run_state is not None:
                finished.append((run.dag_id, run.run_id, applied.run_state))
                first = (
                    store_runs.first_task_start(conn, run.id)
                    if run.run_type == "scheduled"
                    else None
                )
                emissions.finished.append((run, applied.run_state, first))
        report = ExaminationReport(
            runs=len(claimed),
            scheduled_pools=frozenset(pools),
            finished=tuple(finished),
            moved=moved,
        )
        return report, emissions

    def _decide(
        self,
        conn: Connection,
        run: RunRow,
        spec: DagSpec,
        tis: dict[str, store_examine.ExamineRow],
        past: list[str],
        now: datetime,
        emissions: _Emissions,
    ) -> RunExamination:
        previous = store_examine.previous_states(conn, run, past) if past else {}
        view = RunView(
            run_id=run.run_id,
            state=run.state,
            start_date=run.start_date,
            logical_date=run.logical_date,
        )
        started = time.perf_counter()
        exam = examine_run(
            spec,
            view,
            tis,  # ExamineRow is a TaskInstanceLike as it is
            previous,
            now,
            allow_future_logical_date=run.run_type != "scheduled",
        )
        emissions.checks.append((run.dag_id, time.perf_counter() - started))
        if exam.run_decision is not None:
            log.info(
                "run %s of %s %s: %s",
                run.run_id,
                run.dag_id,
                exam.run_decision.to_state,
                exam.run_decision.reason,
                extra={"event": "run_finished", "dag_id": run.dag_id, "run_id": run.run_id},
            )
        self._note_scheduled(run, exam, tis, emissions)
        return exam

    def _note_scheduled(
        self,
        run: RunRow,
        exam: RunExamination,
        tis: dict[str, store_examine.ExamineRow],
        emissions: _Emissions,
    ) -> None:
        for d in exam.task_decisions:
            row = tis.get(d.task_id)
            if row is not None and d.to_state is TaskInstanceState.SCHEDULED:
                emissions.scheduled.append((run, row))
        emissions.restored[run.dag_id] += len(exam.to_restore)

    def _emit(self, emissions: _Emissions, now: datetime) -> None:
        m = self.ctx.metrics
        for dag_id, seconds in emissions.checks:
            m.timing("dagrun.dependency-check", seconds, dag_id=dag_id)
        for dag_id, n in (+emissions.removed).items():
            m.incr("task_removed_from_dag", n, dag_id=dag_id)
        for dag_id, n in (+emissions.restored).items():
            m.incr("task_restored_to_dag", n, dag_id=dag_id)
        for run, state, first_start in emissions.finished:
            if run.start_date is not None:
                duration = (now - run.start_date).total_seconds()
                m.timing("dagrun.duration", duration, dag_id=run.dag_id, state=state.value)
            # Airflow: scheduled runs only, from the end of the data interval to the first
            # task's start, and only when positive.
            expected = run.data_interval_end or run.run_after
            if first_start is not None and expected is not None and first_start > expected:
                delay = (first_start - expected).total_seconds()
                m.timing("dagrun.first_task_scheduling_delay", delay, dag_id=run.dag_id)

    def _trace(self, emissions: _Emissions, now: datetime, started_ns: int) -> None:
        """One task.schedule span per task instance scheduled, a child of its run's span."""
        for run, ti in emissions.scheduled:
            parent = run.trace_context
            if parent is None:
                continue
            record_span(
                "task.schedule",
                context_from(parent),
                key=schedule_span_key(ti.id, now),
                attributes={
                    "tradewind.dag_id": run.dag_id,
                    "tradewind.run_id": run.run_id,
                    "tradewind.task_id": ti.task_id,
                    "tradewind.ti_id": ti.id,
                    "tradewind.try_number": ti.try_number + 1,
                },
                start_time=started_ns,
            )
