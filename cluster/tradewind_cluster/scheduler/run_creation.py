"""Step 3 of the loop: create due DAG runs and start queued ones, for the DAGs this replica
locks (`FOR UPDATE SKIP LOCKED`), all in one transaction per batch. Each run gets a trace: the
root "dagrun" span is opened here and its traceparent stored with the run."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from opentelemetry.trace import Span

from tradewind.schedules import DataInterval, RunType, run_id_for
from tradewind.scheduling.runs import due_runs
from tradewind.spec import DagSpec
from tradewind_cluster.observability.tracing import start_root_span, traceparent
from tradewind_cluster.scheduler.context import SchedulerContext
from tradewind_cluster.store import dags, runs
from tradewind_cluster.store.database import Connection
from tradewind_cluster.store.snapshots import DagRow, RunRow

__all__ = ["RunCreationReport", "RunCreator"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunCreationReport:
    """What one pass created and started."""

    created: int = 0
    started: tuple[RunRow, ...] = ()
    dags_examined: int = 0
    tis_created: Counter[str] = field(default_factory=Counter)  # by operator
    spans: tuple[Span, ...] = ()  # root spans of the runs traced, ended once committed


def _root_span(dag_id: str, run_id: str, run_type: str, logical_date: datetime) -> Span:
    return start_root_span(
        "dagrun",
        {
            "tradewind.dag_id": dag_id,
            "tradewind.run_id": run_id,
            "tradewind.run_type": run_type,
            "tradewind.logical_date": logical_date.isoformat(),
        },
    )


class RunCreator:
    """Creates scheduled runs from each DAG's schedule and starts queued runs (scheduled,
    manual or backfill) within max_active_runs."""

    def __init__(self, ctx: SchedulerContext) -> None:
        self.ctx = ctx
        # The last claim found DAGs: more are likely due (a busy schedule), so the next pass
        # claims at once instead of probing first.
        self._claimed_last = False

    def run_once(self, now: datetime | None = None) -> RunCreationReport:
        """One pass over the DAGs due now (bounded by max_runs_per_loop)."""
        now = now or self.ctx.clock()
        if not self._claimed_last and not self.ctx.db.read(lambda c: dags.any_due_dags(c, now=now)):
            return RunCreationReport()
        report = self.ctx.db.transaction(lambda c: self._create(c, now))
        self._claimed_last = report.dags_examined > 0
        # Ended only now: a run whose transaction rolled back never shows up as a trace.
        for span in report.spans:
            span.end()
        for operator, n in report.tis_created.items():
            self.ctx.metrics.incr("task_instance_created", n, operator=operator)
        for run in report.started:
            if run.run_after is not None and run.run_type == RunType.SCHEDULED:
                delay = (run.start_date or now) - run.run_after
                self.ctx.metrics.timing(
                    "dagrun.schedule_delay", delay.total_seconds(), dag_id=run.dag_id
                )
        return report

    def _create(self, conn: Connection, now: datetime) -> RunCreationReport:
        claimed = dags.claim_due_dags(conn, now=now, limit=self.ctx.options.max_runs_per_loop)
        if not claimed:
            return RunCreationReport()
        specs = self.ctx.specs.get_many(conn, [d.dag_id for d in claimed])
        counts = runs.active_run_counts(conn, [d.dag_id for d in claimed])
        created: list[Span] = []
        started: list[RunRow] = []
        tis: Counter[str] = Counter()
        for row in claimed:
            spec = specs.get(row.dag_id)
            if spec is None:  # registered but never serialized: nothing to decide with yet
                continue
            queued, running = counts[row.dag_id]
            created += self._create_scheduled(conn, row, spec, now, queued + running)
            new = self._start_queued(conn, row, spec, now, running)
            started += new
            for t in spec.tasks.values():
                tis[t.operator] += len(new)
        spans = created + self._trace_untraced(conn, started)
        return RunCreationReport(
            created=len(created),
            started=tuple(started),
            dags_examined=len(claimed),
            tis_created=+tis,
            spans=tuple(spans),
        )

    def _trace_untraced(self, conn: Connection, started: Sequence[RunRow]) -> list[Span]:
        """Open the trace of runs started without one (triggered by a process not tracing)."""
        if not started:
            return []
        spans: dict[int, Span] = {  # the rows were read as they were started, in this transaction
            r.id: _root_span(r.dag_id, r.run_id, r.run_type, r.logical_date)
            for r in started
            if r.trace_context is None
        }
        values = {pk: tp for pk, span in spans.items() if (tp := traceparent(span)) is not None}
        runs.set_missing_trace_contexts(conn, values)
        return list(spans.values())

    def _create_scheduled(
        self, conn: Connection, row: DagRow, spec: DagSpec, now: datetime, active: int
    ) -> list[Span]:
        """Create the runs due; returns the root spans of those created."""
        if row.is_paused:
            dags.clear_check_runs(conn, row.dag_id)
            return []
        last = None
        if row.last_automated_interval_start and row.last_automated_interval_end:
            last = DataInterval(
                start=row.last_automated_interval_start, end=row.last_automated_interval_end
            )
        due = due_runs(spec, last, now, active, self.ctx.options.max_runs_per_loop)
        kind = RunType.SCHEDULED.value
        new = [
            runs.NewRun(
                run_id=run_id_for(RunType.SCHEDULED, r.logical_date),
                logical_date=r.logical_date,
                data_interval_start=r.data_interval.start,
                data_interval_end=r.data_interval.end,
                run_type=kind,
                run_after=r.run_after,
            )
            for r in due.runs
        ]
        opened = {n.run_id: _root_span(row.dag_id, n.run_id, kind, n.logical_date) for n in new}
        new = [replace(n, trace_context=traceparent(opened[n.run_id])) for n in new]
        ids = runs.create_runs(conn, row.dag_id, new, created_by=self.ctx.member_id)
        if ids:
            self.ctx.metrics.incr("scheduler.dagruns.created", len(ids), dag_id=row.dag_id)
        nxt = due.next_run
        # Held back by max_active_runs: look again when a run finishes (check_runs), not every loop.
        blocked = nxt is not None and nxt.run_after <= now
        last_created = due.last_automated
        runs.record_schedule(
            conn,
            row.dag_id,
            last_interval=(last_created.start, last_created.end) if last_created else None,
            next_logical=nxt.logical_date if nxt else None,
            next_interval=(nxt.data_interval.start, nxt.data_interval.end) if nxt else None,
            next_create_after=None if nxt is None or blocked else nxt.run_after,
            check_runs=False,
        )
        if blocked:
            log.debug(
                "dag %s: %s",
                row.dag_id,
                due.reason,
                extra={"event": "runs_held", "dag_id": row.dag_id},
            )
        return [opened[run_id] for run_id in ids]

    def _start_queued(
        self, conn: Connection, row: DagRow, spec: DagSpec, now: datetime, running: int
    ) -> list[RunRow]:
        if row.is_paused:
            return []
        return runs.start_queued_runs(conn, spec, slots=spec.max_active_runs - running, now=now)
