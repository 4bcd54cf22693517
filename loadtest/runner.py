"""One run of a scenario from start to finish: generate DAG files, start the cluster, wait for
the DAGs, drive the load, strike the fault, collect, check, report; always clean up."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as Bar

from loadtest.chaos import Chaos
from loadtest.cluster import Cluster, ClusterConfig, HarnessError, Role, close_store, open_store
from loadtest.collect import clock_offset_s, read_pg_counters, read_store
from loadtest.dagfiles import task_graph, upstream_map, write_dag_files
from loadtest.ledger import read_ledger
from loadtest.netpart import PartitionMethod, open_partition
from loadtest.profiling import Profiler, targets
from loadtest.report import write_report
from loadtest.results import RunData, build_results, skipped_results
from loadtest.sampler import Progress, Sampler
from loadtest.scenarios import Fault, Load, Plan

__all__ = ["EXIT_OK", "EXIT_VIOLATION", "RunOptions", "RunOutcome", "run_scenario"]

EXIT_OK = 0
EXIT_VIOLATION = 1
_POLL_S = 0.1


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """How to run a plan."""

    plan: Plan
    out_dir: Path
    database_url: str | None = None  # a server to create the run's database on
    keep_database: bool = False
    show_progress: bool = True
    kill_tree: bool = False
    partition_method: PartitionMethod | None = None
    plots: bool = True
    py_spy: str | None = None  # py-spy's path: sample the cluster's Python processes


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOutcome:
    """Where the report went, what it says, and the exit status it asks for."""

    run_dir: Path
    results: dict[str, Any]
    exit_code: int


def _run_dir(out: Path, plan: Plan) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    # absolute: the cluster's processes run in it, so a relative --out would not resolve there
    path = out.resolve() / f"{plan.scenario.value}-{plan.profile.value}-{stamp}-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def _skip_reason(plan: Plan) -> str | None:
    if plan.workers < plan.min_workers:
        return (
            f"scenario {plan.scenario} needs at least {plan.min_workers} workers (one to lose, "
            f"one to retry on); got --workers {plan.workers}"
        )
    return None


def run_scenario(options: RunOptions) -> RunOutcome:
    """Run one scenario and write its report; exit status 1 when an invariant failed."""
    plan = options.plan
    run_dir = _run_dir(options.out_dir, plan)
    console = Console(stderr=True, quiet=not options.show_progress)
    reason = _skip_reason(plan)
    if reason is not None:
        console.print(f"[yellow]skipped:[/] {reason}")
        results = skipped_results(plan, reason)
        write_report(run_dir, results)
        return RunOutcome(run_dir=run_dir, results=results, exit_code=EXIT_OK)
    try:
        data = _execute(options, run_dir, console)
    except HarnessError as exc:
        raise HarnessError(f"{exc}\n(process logs in {run_dir / 'logs'})") from exc
    results = build_results(data)
    write_report(run_dir, results, load_start=data.load_start, plots=options.plots)
    return RunOutcome(
        run_dir=run_dir, results=results, exit_code=EXIT_OK if results["ok"] else EXIT_VIOLATION
    )


def _create_pool(engine: sa.Engine, plan: Plan) -> None:
    if plan.pool_slots is None:
        return
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO pool (name, slots, description) VALUES (:n, :s, 'loadtest') "
                "ON CONFLICT (name) DO UPDATE SET slots = excluded.slots"
            ),
            {"n": plan.pool_name, "s": plan.pool_slots},
        )


def _wait_for_count(
    engine: sa.Engine,
    sql: sa.TextClause,
    params: dict[str, object],
    want: int,
    timeout_s: float,
    what: str,
) -> None:
    """Poll `sql` (one count) until it reaches `want`; HarnessError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        with engine.connect() as conn:
            got = conn.execute(sql, params).scalar() or 0
        if got >= want:
            return
        if time.monotonic() > deadline:
            raise HarnessError(f"only {got} of {want} {what} in {timeout_s:.0f}s")
        time.sleep(_POLL_S)


def _wait_for_dags(engine: sa.Engine, dag_ids: list[str], timeout_s: float) -> None:
    sql = sa.text(
        "SELECT count(*) FROM dag d JOIN serialized_dag s ON s.dag_id = d.dag_id "
        "WHERE d.dag_id = ANY(:ids) AND d.is_active AND NOT d.is_paused"
    )
    _wait_for_count(engine, sql, {"ids": dag_ids}, len(dag_ids), timeout_s, "DAGs were parsed")


def _wait_for_workers(engine: sa.Engine, count: int, timeout_s: float) -> None:
    """Until `count` workers are registered and alive: the load starts on a ready cluster, so
    no task waits for a worker that is still starting (it would count against throughput)."""
    sql = sa.text("SELECT count(*) FROM worker WHERE state = 'alive'")
    _wait_for_count(engine, sql, {}, count, timeout_s, "workers registered")


def _trigger(engine: sa.Engine, dag_ids: list[str]) -> None:
    """One manual run per DAG in one transaction, as `tradewind dags trigger` would insert it."""
    from tradewind.schedules import RunType, run_id_for
    from tradewind_cluster.store.runs import NewRun, trigger_run

    at = datetime.now(UTC)
    run = NewRun(
        run_id=run_id_for(RunType.MANUAL, at),
        logical_date=at,
        data_interval_start=at,
        data_interval_end=at,
        run_type=RunType.MANUAL.value,
    )
    with engine.begin() as conn:
        for dag_id in dag_ids:
            trigger_run(conn, dag_id, run, created_by="loadtest")


def _pause(engine: sa.Engine, dag_ids: list[str]) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE dag SET is_paused = true WHERE dag_id = ANY(:ids)"), {"ids": dag_ids}
        )


@contextmanager
def _bar(console: Console, plan: Plan) -> Iterator[tuple[Bar, Any]]:
    bar = Bar(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=console.quiet,
    )
    with bar:
        yield bar, bar.add_task(f"{plan.scenario} task instances", total=plan.total_tis)


def _finished(plan: Plan, p: Progress, start: float, paused_at: float | None) -> bool:
    if plan.load is Load.SCHEDULE:
        return paused_at is not None and p.at > paused_at and p.runs_running == 0
    return p.at > start and p.finished >= (plan.total_tis or 0) and p.runs_open == 0


def _wait(
    plan: Plan, cluster: Cluster, sampler: Sampler, chaos: Chaos, console: Console, dags: list[str]
) -> str | None:
    """Wait until the load is done and the fault played out; returns why it stalled, if so."""
    start = time.time()
    paused_at: float | None = None
    with _bar(console, plan) as (bar, task):
        while True:
            p = sampler.progress
            chaos.tick(p)
            events = chaos.strike.events
            label = f"{plan.scenario}: {events[-1].kind}" if events else str(plan.scenario)
            bar.update(
                task, completed=p.finished, total=plan.total_tis or p.total, description=label
            )
            if (
                plan.load is Load.SCHEDULE
                and paused_at is None
                and time.time() - start >= plan.load_s
            ):
                _pause(chaos.engine, dags)  # no new runs; the ones created run to the end
                paused_at = time.time()
            finished = _finished(plan, p, start, paused_at)
            if finished and chaos.strike.at is None and not chaos.done:
                chaos.strike.skipped = "the load finished before the fault was due"
            if finished and chaos.done:
                return None
            if not cluster.live(Role.SCHEDULER):
                return "no scheduler left running"
            if time.time() - start > plan.timeout_s:
                return f"timed out after {plan.timeout_s:.0f}s"
            time.sleep(_POLL_S)


def _execute(options: RunOptions, run_dir: Path, console: Console) -> RunData:
    plan = options.plan
    ledger_path = run_dir / "ledger.log"
    started = time.time()
    dag_ids = write_dag_files(plan, run_dir / "dags", ledger_path, now=datetime.now(UTC))
    console.print(f"[bold]{plan.scenario}[/] ({plan.profile}): {len(dag_ids)} DAGs in {run_dir}")
    with ExitStack() as stack:
        store, handle = open_store(run_dir, options.database_url)
        stack.callback(close_store, store, handle, keep=options.keep_database)
        engine = sa.create_engine(store.url, pool_size=3, pool_pre_ping=True)
        stack.callback(engine.dispose)
        partition = None
        if plan.fault is Fault.PARTITION_WORKER:
            partition = open_partition(options.partition_method)
            stack.callback(partition.close)
        config = ClusterConfig(
            run_dir=run_dir,
            schedulers=plan.schedulers,
            workers=plan.workers,
            slots=plan.slots,
            parallelism=plan.execution_slots,
            settings=dict(plan.settings),
        )
        cluster = Cluster(config, store, partition)
        stack.callback(cluster.stop)
        _create_pool(engine, plan)
        sampler = Sampler(
            engine,
            lambda: [(r.value, n, pid) for r, n, pid in cluster.measured()],
            parallelism=plan.execution_slots,
        ).start()
        stack.callback(sampler.stop)
        console.print(f"starting {plan.schedulers} schedulers and {plan.workers} workers")
        cluster.start()
        _wait_for_dags(engine, dag_ids, 60 + 0.5 * len(dag_ids))
        _wait_for_workers(engine, plan.workers, 60)
        offset = clock_offset_s(engine)
        chaos = Chaos(plan, cluster, engine, partition=partition, kill_tree=options.kill_tree)
        sampler.mark_baseline()
        profiler = _start_profiler(options.py_spy, run_dir, cluster, stack)
        harness_before = os.times()
        pg_before = read_pg_counters(engine)
        load_start = time.time()
        if plan.load is Load.TRIGGER:
            _trigger(engine, dag_ids)
        stalled = _wait(plan, cluster, sampler, chaos, console, dag_ids)
        chaos.heal_now()
        load_end = time.time()
        if profiler is not None:
            profiler.stop()
        usage = sampler.stop()
        profile = profiler.summary({u.pid: u.cpu_s for u in usage.usage}) if profiler else None
        harness_after = os.times()
        pg_after = read_pg_counters(engine)
        died = _unexpected_exits(cluster)
        codes = cluster.stop()
        unexpected = tuple(died + _failed_stops(codes, died))
        snapshot = read_store(engine)
        schedulers_started = len(cluster.schedulers)
        workers_started = len(cluster.workers)
    return RunData(
        plan=plan,
        run_dir=run_dir,
        started_at=started,
        load_start=load_start,
        load_end=load_end,
        offset_s=offset,
        stalled=stalled,
        snapshot=snapshot,
        ledger=read_ledger(ledger_path),
        sampler=usage,
        harness_cpu_s=(harness_after.user + harness_after.system)
        - (harness_before.user + harness_before.system),
        pg_before=pg_before,
        pg_after=pg_after,
        strike=chaos.strike if plan.fault is not Fault.NONE else None,
        exit_codes=codes,
        unexpected_exits=unexpected,
        embedded_store=store.embedded,
        schedulers_started=schedulers_started,
        workers_started=workers_started,
        upstreams=upstream_map(task_graph(plan.shape.kind, plan.shape.size)),
        profile=profile,
    )


def _start_profiler(
    py_spy: str | None, run_dir: Path, cluster: Cluster, stack: ExitStack
) -> Profiler | None:
    """--py-spy: sample the cluster's Python processes from now until the load ends."""
    if py_spy is None:
        return None
    profiler = Profiler(run_dir / "profiles", py_spy)
    stack.callback(profiler.abort)
    profiler.start(targets((r.value, n, pid) for r, n, pid in cluster.measured()))
    return profiler


def _unexpected_exits(cluster: Cluster) -> list[str]:
    """Processes that died during the run without the harness killing them."""
    return [
        f"{p.role} {p.name} (pid {p.pid}) exited {p.popen.returncode} during the run"
        for p in [*cluster.schedulers, *cluster.workers]
        if p.killed_at is None and not p.alive()
    ]


def _failed_stops(codes: dict[str, int], died: list[str]) -> list[str]:
    """Processes that exited non-zero when asked to stop (those that died earlier aside)."""
    return [
        f"{name} exited {code} when stopped"
        for name, code in codes.items()
        if code != 0 and not any(f"pid {name.split('#')[-1]})" in d for d in died)
    ]
