"""One trace per DAG run, end to end in process: a real SchedulerReplica (executor "workers") and
a real WorkerAgent whose task processes are real forks. Every span about a run descends from its
"dagrun" root: run → task.schedule → task.queue → task.dispatch → task.execute, the scheduler's
report spans continue the worker's span, and each task process's TRACEPARENT names its
task.execute span, so the context crossed the store, gRPC metadata and the process boundary.
Tracing that fails (a broken tracer, an exporter that raises, a garbled stored context) never
fails a scheduler step."""

from __future__ import annotations

import itertools
import shutil
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support.dags import register
from tests.support.processes import wait_until
from tradewind.dag import DAG
from tradewind.operators.bash import BashOperator
from tradewind.schedules import RunType, run_id_for
from tradewind_cluster.config import Settings, TracingSettings
from tradewind_cluster.observability import configure_tracing, shutdown_tracing, tracing
from tradewind_cluster.scheduler.context import SchedulerContext, SchedulerOptions
from tradewind_cluster.scheduler.local_dispatch import LocalDispatcher
from tradewind_cluster.scheduler.loop import SchedulerLoop
from tradewind_cluster.scheduler.replica import SchedulerReplica
from tradewind_cluster.scheduler.reports import ReportHandler
from tradewind_cluster.store import members
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.runs import NewRun, trigger_run
from tradewind_cluster.worker.agent import WorkerAgent
from tradewind_cluster.worker.options import WorkerOptions

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

TASKS = ("first", "second")
CHAIN = ("task.schedule", "task.queue", "task.dispatch", "task.execute")

DAG_FILE = """
import os
from datetime import datetime
from tradewind import DAG, BashOperator, task

OUT = {out!r}

with DAG("{dag_id}", schedule={schedule}, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    @task
    def first():
        # the task process's own environment, as a library reading TRACEPARENT would see it
        with open(os.path.join(OUT, "{dag_id}.first"), "w") as f:
            f.write(os.environ.get("TRACEPARENT", "missing"))

    second = BashOperator(
        task_id="second", bash_command='printf %s "$TRACEPARENT" > ' + OUT + "/{dag_id}.second"
    )
    first() >> second
"""


@dataclass
class Cluster:
    db: Database
    dir: Path
    spans: InMemorySpanExporter
    replica: SchedulerReplica
    agent: WorkerAgent

    def sql(self, query: str, **params: object) -> list[tuple[object, ...]]:
        with self.db.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(query), params).all()]

    def add_dag(self, dag_id: str, schedule: str) -> None:
        source = DAG_FILE.format(out=str(self.dir / "out"), dag_id=dag_id, schedule=schedule)
        (self.dir / "dags" / f"{dag_id}.py").write_text(textwrap.dedent(source))

    def wait_success(self, dag_id: str) -> str:
        def done() -> tuple[object, ...] | None:
            rows = self.sql("SELECT state, run_id FROM dag_run WHERE dag_id = :d", d=dag_id)
            return rows[0] if rows and rows[0][0] in ("success", "failed") else None

        state, run_id = wait_until(done, 60, f"a run of {dag_id} to finish")
        assert state == "success", self.sql("SELECT task_id, state, reason FROM task_instance")
        return str(run_id)


@pytest.fixture
def cluster(database: Database) -> Iterator[Cluster]:
    path = Path(tempfile.mkdtemp(prefix="tradewind-trace-"))
    for sub in ("dags", "out"):
        (path / sub).mkdir()
    settings = Settings(
        core={"home": path, "dags_folder": path / "dags", "dags_are_paused_at_creation": False},
        scheduler={
            "executor": "workers",
            "heartbeat_interval_s": 0.2,
            "idle_sleep_s": 0.1,
            "parse_interval_s": 0.5,
        },
        health={"bind_host": "127.0.0.1"},
        metrics={"bind_host": "127.0.0.1"},
    )
    spans = InMemorySpanExporter()
    # Both processes' halves share this provider: one exporter sees the whole trace.
    configure_tracing(TracingSettings(), exporter=spans)
    replica = SchedulerReplica(settings, database, name="tracer", on_declared_dead=print)
    agent: WorkerAgent | None = None
    try:
        ports = replica.start()
        options = WorkerOptions(
            name="w1",
            schedulers=(f"127.0.0.1:{ports.grpc}",),
            home=path,
            dags_folder=path / "dags",
            heartbeat_interval_s=0.2,
            slots=2,
        )
        agent = WorkerAgent(settings, options)
        agent.start()
        c = Cluster(db=database, dir=path, spans=spans, replica=replica, agent=agent)
        # DAGs are added only now, so no attempt is ever dispatched before a worker is there.
        wait_until(lambda: c.sql("SELECT id FROM worker WHERE state = 'alive'"), 20, "the worker")
        yield c
    finally:
        if agent is not None:
            agent.stop()
        replica.stop()
        shutdown_tracing()
        shutil.rmtree(path, ignore_errors=True)


def attrs(span: ReadableSpan) -> dict[str, object]:
    return dict(span.attributes or {})


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


def traceparent_of(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"00-{trace_id(span):032x}-{span_id(span):016x}-{int(span.context.trace_flags):02x}"


@dataclass(frozen=True)
class TaskTrace:
    chain: dict[str, ReadableSpan]  # CHAIN name -> span
    reports: list[ReadableSpan]  # the scheduler's spans for the worker's reports


def task_trace(c: Cluster, dag_id: str, task_id: str) -> TaskTrace:
    """The spans of the attempt that succeeded, found from what the store recorded for it."""
    [(ti_id, stored)] = c.sql(
        "SELECT ti_id, trace_context FROM task_attempt "
        "WHERE dag_id = :d AND task_id = :t AND state = 'success'",
        d=dag_id,
        t=task_id,
    )
    by_id = {span_id(s): s for s in c.spans.get_finished_spans()}
    [dispatch] = [s for s in by_id.values() if traceparent_of(s) == stored]
    queue = by_id[parent_id(dispatch)]  # type: ignore[index]
    schedule = by_id[parent_id(queue)]  # type: ignore[index]
    [execute] = [
        s for s in by_id.values() if s.name == "task.execute" and parent_id(s) == span_id(dispatch)
    ]
    reports = [s for s in by_id.values() if parent_id(s) == span_id(execute)]
    for span in (schedule, queue, dispatch):
        assert attrs(span)["tradewind.ti_id"] == ti_id
    assert (attrs(execute)["task_id"], attrs(execute)["ti_id"]) == (task_id, ti_id)
    chain = dict(zip(CHAIN, (schedule, queue, dispatch, execute), strict=True))
    return TaskTrace(chain=chain, reports=reports)


def assert_one_trace_per_run(c: Cluster, dag_id: str, run_id: str) -> None:
    [(stored,)] = c.sql(
        "SELECT trace_context FROM dag_run WHERE dag_id = :d AND run_id = :r", d=dag_id, r=run_id
    )
    roots = [s for s in c.spans.get_finished_spans() if s.name == "dagrun"]
    [root] = [s for s in roots if attrs(s)["tradewind.dag_id"] == dag_id]
    assert root.parent is None
    assert attrs(root)["tradewind.run_id"] == run_id
    assert stored == traceparent_of(root)  # the store keeps the root's context for every replica

    for task_id in TASKS:
        wait_until(
            lambda t=task_id: len(task_trace(c, dag_id, t).reports) == 2,  # type: ignore[misc]
            10,
            f"the report spans of {task_id}",
        )
        found = task_trace(c, dag_id, task_id)
        links = [root, *found.chain.values()]
        for parent, child in itertools.pairwise(links):
            assert parent_id(child) == span_id(parent), (
                f"{child.name} is not a child of {parent.name}"
            )
        assert {trace_id(s) for s in [*links, *found.reports]} == {trace_id(root)}
        assert sorted(s.name for s in found.reports) == ["attempt started", "attempt success"]

        # The task process's environment names its task.execute span: same trace, that parent.
        written = (c.dir / "out" / f"{dag_id}.{task_id}").read_text()
        assert written == traceparent_of(found.chain["task.execute"])

    in_trace = [s for s in c.spans.get_finished_spans() if trace_id(s) == trace_id(root)]
    per_task = {
        t: sum(
            1 for s in in_trace if t in (attrs(s).get("tradewind.task_id"), attrs(s).get("task_id"))
        )
        for t in TASKS
    }
    # schedule, queue, dispatch, execute (the report spans carry no task id)
    assert per_task == {"first": 4, "second": 4}, per_task
    assert len(in_trace) == 1 + 2 * (4 + 2), sorted(s.name for s in in_trace)


def test_a_scheduled_run_is_one_trace_across_scheduler_worker_and_task(cluster: Cluster) -> None:
    cluster.add_dag("traced", '"@daily"')
    run_id = cluster.wait_success("traced")
    assert run_id.startswith("scheduled__")
    assert_one_trace_per_run(cluster, "traced", run_id)


def test_a_run_triggered_untraced_gets_its_trace_when_it_starts(cluster: Cluster) -> None:
    cluster.add_dag("manual", "None")
    wait_until(
        lambda: cluster.sql("SELECT 1 FROM serialized_dag WHERE dag_id = 'manual'"), 30, "parsed"
    )
    now = datetime.now(UTC)
    run = NewRun(  # as `tradewind dags trigger` does from a process that does not trace
        run_id=run_id_for(RunType.MANUAL, now),
        logical_date=now,
        data_interval_start=now,
        data_interval_end=now,
        run_type=RunType.MANUAL.value,
    )
    cluster.db.transaction(lambda c: trigger_run(c, "manual", run, created_by="test"))
    assert cluster.wait_success("manual") == run.run_id
    assert_one_trace_per_run(cluster, "manual", run.run_id)


# -- tracing that fails ------------------------------------------------------------------------
class _RaisingExporter(SpanExporter):
    def export(self, spans: object) -> SpanExportResult:
        raise RuntimeError("collector down")

    def shutdown(self) -> None:
        pass


def _run_in_process(database: Database, trace_context: str | None) -> tuple[str, str | None]:
    """Trigger a one-task run with the given stored context, loop until it ends; its state and
    the trace context it ended with."""
    database.transaction(
        lambda c: members.register_member(
            c, member_id="r1", name="r1", hostname="h", pid=1, version="t"
        )
    )
    ctx = SchedulerContext(db=database, member_id="r1", options=SchedulerOptions(idle_sleep_s=0.05))
    reports = ReportHandler(ctx)
    dispatcher = LocalDispatcher(reports, slots=2)
    loop = SchedulerLoop(ctx, dispatcher)
    try:
        with DAG("fragile", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
            BashOperator(task_id="a", bash_command="true")
        now = datetime.now(UTC)
        register(database, dag, now=now)
        run = NewRun(
            run_id=run_id_for(RunType.MANUAL, now),
            logical_date=now,
            data_interval_start=now,
            data_interval_end=now,
            run_type=RunType.MANUAL.value,
            trace_context=trace_context,
        )
        database.transaction(lambda c: trigger_run(c, "fragile", run, created_by="test"))

        def finished() -> tuple[object, ...] | None:
            report = loop.run_once()
            assert report.errors == {}  # no step failed
            with database.engine.connect() as conn:
                row = conn.execute(
                    sa.text("SELECT state, trace_context FROM dag_run WHERE dag_id = 'fragile'")
                ).one()
            return tuple(row) if row[0] in ("success", "failed") else None

        state, stored = wait_until(finished, 30, "the run to finish", interval=0.01)
        return str(state), stored
    finally:
        dispatcher.close()
        loop.close()


def test_a_tracer_that_raises_leaves_every_step_working(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(name: str) -> object:
        raise RuntimeError("tracer gone")

    configure_tracing(TracingSettings(), exporter=InMemorySpanExporter())
    monkeypatch.setattr(tracing, "_current_tracer", broken)
    try:
        assert tracing.record_span("x", tracing.context_from(None)) is None
        assert tracing.traceparent(tracing.start_root_span("x")) is None
        assert _run_in_process(database, None) == ("success", None)  # untraced, not failed
    finally:
        shutdown_tracing()


def test_a_raising_exporter_and_a_garbled_stored_context_leave_every_step_working(
    database: Database,
) -> None:
    configure_tracing(TracingSettings(), exporter=_RaisingExporter())
    try:
        # A context that names no span is a new root for the run's spans, never an error.
        assert _run_in_process(database, "00-garbage") == ("success", "00-garbage")
    finally:
        shutdown_tracing()
