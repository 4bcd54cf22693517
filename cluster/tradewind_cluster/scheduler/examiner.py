"""Step 4 of the loop: examine the running runs whose state may have moved (a task finished,
a retry or a timeout is due), as the core decides, and apply the result."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from tradewind.scheduling.examine import RunView, TaskInstanceView, examine_run
from tradewind.states import DagRunState
from tradewind_cluster.scheduler.context import SchedulerContext
from tradewind_cluster.store import examine as store_examine
from tradewind_cluster.store.database import Connection
from tradewind_cluster.store.snapshots import RunRow, TaskInstanceRow

__all__ = ["ExaminationReport", "RunExaminer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExaminationReport:
    """What one pass examined and changed."""

    runs: int = 0
    scheduled_pools: frozenset[str] = frozenset()
    finished: tuple[tuple[str, str, DagRunState], ...] = ()  # (dag_id, run_id, state)
    moved: Counter[str] = field(default_factory=Counter)


def _views(tis: list[TaskInstanceRow]) -> dict[str, TaskInstanceView]:
    return {
        t.task_id: TaskInstanceView(
            task_id=t.task_id,
            state=t.state,
            try_number=t.try_number,
            max_tries=t.max_tries,
            next_retry_at=t.next_retry_at,
            followed=t.followed,
        )
        for t in tis
    }


class RunExaminer:
    """Locks due runs with SKIP LOCKED, so each run is examined by one replica at a time."""

    def __init__(self, ctx: SchedulerContext) -> None:
        self.ctx = ctx

    def run_once(self, now: datetime | None = None) -> ExaminationReport:
        """Examine up to max_dagruns_to_examine runs in one transaction."""
        now = now or self.ctx.clock()
        report = self.ctx.db.transaction(lambda c: self._examine(c, now))
        if report.finished:
            dag_ids = [d for d, _, _ in report.finished]
            # In its own transaction after the runs': never take a dag lock holding a dag_run lock.
            self.ctx.db.transaction(lambda c: store_examine.flag_dags_for_run_check(c, dag_ids))
        return report

    def _examine(self, conn: Connection, now: datetime) -> ExaminationReport:
        claimed = store_examine.claim_runs_to_examine(
            conn, now=now, limit=self.ctx.options.max_dagruns_to_examine
        )
        if not claimed:
            return ExaminationReport()
        specs = self.ctx.specs.get_many(conn, [r.dag_id for r in claimed])
        tis = store_examine.tis_by_run(conn, [r.id for r in claimed])
        pools: set[str] = set()
        finished: list[tuple[str, str, DagRunState]] = []
        moved: Counter[str] = Counter()
        for run in claimed:
            spec = specs.get(run.dag_id)
            if spec is None:
                continue
            applied = self._apply_one(conn, run, spec, tis.get(run.id, []), now)
            pools |= applied.scheduled_pools
            for (src, dst), n in applied.moved.items():
                moved[f"{src}->{dst}"] += n
            if applied.run_state is not None:
                finished.append((run.dag_id, run.run_id, applied.run_state))
                self._emit_finished(run, applied.run_state, now)
        return ExaminationReport(
            runs=len(claimed),
            scheduled_pools=frozenset(pools),
            finished=tuple(finished),
            moved=moved,
        )

    def _apply_one(
        self, conn: Connection, run: RunRow, spec: object, tis: list[TaskInstanceRow], now: datetime
    ) -> store_examine.AppliedExamination:
        from tradewind.spec import DagSpec

        assert isinstance(spec, DagSpec)
        past = [t.task_id for t in spec.tasks.values() if t.depends_on_past]
        previous = store_examine.previous_states(conn, run, past) if past else {}
        view = RunView(
            run_id=run.run_id,
            state=run.state,
            start_date=run.start_date,
            logical_date=run.logical_date,
        )
        exam = examine_run(
            spec,
            view,
            _views(tis),
            previous,
            now,
            allow_future_logical_date=run.run_type != "scheduled",
        )
        if exam.run_decision is not None:
            log.info(
                "run %s of %s %s: %s",
                run.run_id,
                run.dag_id,
                exam.run_decision.to_state,
                exam.run_decision.reason,
                extra={"event": "run_finished", "dag_id": run.dag_id, "run_id": run.run_id},
            )
        return store_examine.apply_examination(conn, run, spec, exam, tis, now)

    def _emit_finished(self, run: RunRow, state: DagRunState, now: datetime) -> None:
        if run.start_date is not None:
            self.ctx.metrics.timing(
                "dagrun.duration",
                (now - run.start_date).total_seconds(),
                dag_id=run.dag_id,
                state=state.value,
            )
