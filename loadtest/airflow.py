"""The same load on Apache Airflow 2, side by side (DESIGN.md §8): the scenario's DAG files with
Airflow's imports, one `airflow scheduler` with the LocalExecutor and default settings on its own
database of the same embedded PostgreSQL, every run triggered at once, and task latency read from
the same ledger the tasks write. Airflow runs from its own environment (`--airflow-python`): it
pins SQLAlchemy 1.4, which Tradewind cannot share."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console

from loadtest.cluster import HarnessError, Store, close_store, open_store
from loadtest.dagfiles import AIRFLOW, task_graph, upstream_map, write_dag_files
from loadtest.ledger import read_ledger
from loadtest.measure import TERMINAL, percentiles, task_latency_ledger, throughput
from loadtest.results import machine_info, plan_params
from loadtest.sampler import children_map, descendants, start_ticks, tree_ticks
from loadtest.scenarios import Plan, Scenario
from tradewind.errors import BadInputError

__all__ = [
    "AIRFLOW_SCENARIOS",
    "AirflowOptions",
    "AirflowOutcome",
    "airflow_env",
    "default_timeout_s",
    "run_airflow",
    "summary_lines",
]

AIRFLOW_SCENARIOS = (Scenario.CHAIN, Scenario.TREE, Scenario.FANOUT)
"""The triggered scenarios without a fault: the load is the same DAG runs on both systems."""

_TICK_S = os.sysconf("SC_CLK_TCK")
_POLL_S = 0.5

# Run in Airflow's interpreter: one manual run per DAG, all within a moment, as the harness
# triggers Tradewind's (a CLI call per DAG would spread them over a minute of imports).
_TRIGGER = """
import sys
from airflow.api.common.trigger_dag import trigger_dag
from airflow.utils import timezone
at = timezone.utcnow()
for dag_id in sys.argv[1:]:
    trigger_dag(dag_id, run_id=f"loadtest__{dag_id}", execution_date=at,
                replace_microseconds=False)
print(at.timestamp())
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class AirflowOptions:
    """How to run a plan on Airflow."""

    plan: Plan
    airflow_python: Path  # the interpreter of an environment with apache-airflow[postgres]
    out_dir: Path
    database_url: str | None = None  # a server to create the run's database on
    show_progress: bool = True
    timeout_s: float | None = None  # for the load to finish; default: from the load's size


def default_timeout_s(plan: Plan) -> float:
    """Airflow runs 3-4 task instances a second here: a second each, 10 minutes at least."""
    return max(600.0, float(plan.total_tis or 0))


@dataclass(frozen=True, slots=True, kw_only=True)
class AirflowOutcome:
    """Where the report went and what it says."""

    run_dir: Path
    results: dict[str, Any]
    exit_code: int


@dataclass(frozen=True, slots=True, kw_only=True)
class _AirflowTi:
    dag_id: str
    run_id: str
    task_id: str
    state: str
    start_date: float | None
    end_date: float | None
    queued_at: float | None


def airflow_env(home: Path, db_url: str, dags: Path) -> dict[str, str]:
    """Airflow's environment: LocalExecutor on PostgreSQL, no examples, new DAGs unpaused;
    every other setting Airflow's default. Tradewind's own variables are left out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRADEWIND", "AIRFLOW"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=db_url,
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
        PYTHONUNBUFFERED="1",
    )
    return env


def _check(plan: Plan) -> None:
    if plan.scenario not in AIRFLOW_SCENARIOS:
        names = ", ".join(s.value for s in AIRFLOW_SCENARIOS)
        raise BadInputError(f"{plan.scenario}: only {names} run on Airflow")


def _airflow(python: Path, env: Mapping[str, str], log: Path, *args: str, timeout: float) -> str:
    with log.open("ab") as out:
        done = subprocess.run(
            [str(python), "-m", "airflow", *args],
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=out,
            timeout=timeout,
            check=False,
        )
    if done.returncode != 0:
        raise HarnessError(f"airflow {' '.join(args)} exited {done.returncode} (see {log})")
    return done.stdout.decode(errors="replace")


def _tree_cpu_s(pid: int | None) -> float:
    """CPU seconds of a process and its live descendants (reaped ones are in cutime)."""
    ticks = None if pid is None else tree_ticks(pid, children_map())
    return (ticks or 0) / _TICK_S


def _wait_for(what: str, check: Any, timeout_s: float, alive: Any) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if not alive():
            raise HarnessError(f"the Airflow scheduler exited while waiting for {what}")
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(_POLL_S)


def _count(engine: sa.Engine, sql: str, ids: Sequence[str]) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql), {"ids": list(ids)}).scalar_one())


def _read_tis(engine: sa.Engine, ids: Sequence[str]) -> list[_AirflowTi]:
    def ts(v: datetime | None) -> float | None:
        return None if v is None else v.timestamp()

    sql = sa.text(
        "SELECT dag_id, run_id, task_id, state, start_date, end_date, queued_dttm "
        "FROM task_instance WHERE dag_id = ANY(:ids)"
    )
    with engine.connect() as conn:
        return [
            _AirflowTi(
                dag_id=r.dag_id,
                run_id=r.run_id,
                task_id=r.task_id,
                state=r.state or "none",
                start_date=ts(r.start_date),
                end_date=ts(r.end_date),
                queued_at=ts(r.queued_dttm),
            )
            for r in conn.execute(sql, {"ids": list(ids)})
        ]


def _tree(pid: int) -> dict[int, int]:
    """A process and its descendants, each with its start time (to tell a reused pid)."""
    started = {p: start_ticks(p) for p in descendants(pid, children_map())}
    return {p: t for p, t in started.items() if t is not None}


def _kill(tree: Mapping[int, int], sig: signal.Signals) -> None:
    for pid, started in tree.items():
        if start_ticks(pid) == started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


class _Scheduler:
    """The `airflow scheduler` process, and every process of its tree seen while it ran (its
    DAG processor and task runners leave its process group, and outlive it if it dies)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.seen: dict[int, int] = {}  # pid -> start time, to tell a reused pid

    def alive(self) -> bool:
        """Whether the scheduler runs; notes its tree while it does."""
        if self.proc.poll() is not None:
            return False
        self.seen.update(_tree(self.proc.pid))
        return True


@contextlib.contextmanager
def _scheduler(python: Path, env: Mapping[str, str], log: Path) -> Iterator[_Scheduler]:
    """`airflow scheduler` for the block; then SIGTERM to it (it stops its executor and DAG
    processor itself), and SIGKILL to whatever of its tree is left."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(python), "-m", "airflow", "scheduler"],
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    sched = _Scheduler(proc)
    sched.alive()
    try:
        yield sched
    finally:
        if sched.alive():
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(60)
        _kill(sched.seen, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


def run_airflow(options: AirflowOptions) -> AirflowOutcome:
    """Run the plan's load on Airflow and write results.json and summary.md."""
    plan = options.plan
    _check(plan)
    console = Console(stderr=True, quiet=not options.show_progress)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    name = f"airflow-{plan.scenario.value}-{plan.profile.value}-{stamp}-{os.getpid()}"
    run_dir = options.out_dir.resolve() / name
    run_dir.mkdir(parents=True, exist_ok=False)
    (run_dir / "logs").mkdir()
    dags_dir, ledger_path = run_dir / "dags", run_dir / "ledger.log"
    ids = write_dag_files(plan, dags_dir, ledger_path, now=datetime.now(UTC), flavour=AIRFLOW)
    store, handle = open_store(run_dir, options.database_url, migrate=False)
    try:
        results = _measure(options, run_dir, store, ids, console)
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"{exc} (logs in {run_dir / 'logs'})") from exc
    finally:
        close_store(store, handle, keep=False)
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (run_dir / "summary.md").write_text("\n".join(summary_lines(results)) + "\n")
    return AirflowOutcome(run_dir=run_dir, results=results, exit_code=0 if results["ok"] else 1)


def _measure(
    options: AirflowOptions, run_dir: Path, store: Store, ids: list[str], console: Console
) -> dict[str, Any]:
    plan, python = options.plan, options.airflow_python
    timeout_s = options.timeout_s or default_timeout_s(plan)
    env = airflow_env(run_dir / "airflow_home", store.url, run_dir / "dags")
    log = run_dir / "logs" / "airflow.log"
    console.print("airflow: migrating its database")
    version = _airflow(python, env, log, "version", timeout=300).strip()
    _airflow(python, env, log, "db", "migrate", timeout=900)
    if plan.pool_name != "default_pool":
        slots = str(plan.pool_slots)
        _airflow(python, env, log, "pools", "set", plan.pool_name, slots, "loadtest", timeout=300)
    engine = sa.create_engine(store.url, pool_size=1)  # the polls reuse one connection
    try:
        with _scheduler(python, env, run_dir / "logs" / "scheduler.log") as sched:
            console.print(f"airflow {version}: waiting for {len(ids)} DAGs to be parsed")
            ready = "SELECT count(*) FROM dag WHERE dag_id = ANY(:ids) AND NOT is_paused"
            ser = "SELECT count(*) FROM serialized_dag WHERE dag_id = ANY(:ids)"
            _wait_for(
                "the DAGs",
                lambda: _count(engine, ready, ids) == len(ids) == _count(engine, ser, ids),
                600,
                sched.alive,
            )
            pg_pid = store.postgres_pid()  # None on a server not ours: its CPU is unknown
            cpu0 = (_tree_cpu_s(sched.proc.pid), _tree_cpu_s(pg_pid))
            out = subprocess.run(
                [str(python), "-c", _TRIGGER, *ids],
                env=env,
                capture_output=True,
                timeout=300,
                check=False,
            )
            if out.returncode != 0:
                raise HarnessError(f"triggering on Airflow failed: {out.stderr.decode()[-2000:]}")
            triggered_at = float(out.stdout.split()[-1])
            console.print(f"airflow: {len(ids)} runs triggered; waiting for {plan.total_tis} TIs")
            done = "SELECT count(*) FROM task_instance WHERE dag_id = ANY(:ids) AND state IN "
            done += "('" + "','".join(sorted(TERMINAL)) + "')"
            _wait_for(
                "every task instance to finish",
                lambda: _count(engine, done, ids) >= (plan.total_tis or 0),
                timeout_s,
                sched.alive,
            )
            cpu1 = (_tree_cpu_s(sched.proc.pid), _tree_cpu_s(pg_pid))
        tis = _read_tis(engine, ids)
    finally:
        engine.dispose()
    pg_cpu = None if pg_pid is None else cpu1[1] - cpu0[1]
    return _results(plan, version, run_dir, tis, triggered_at, cpu1[0] - cpu0[0], pg_cpu, timeout_s)


def _results(
    plan: Plan,
    version: str,
    run_dir: Path,
    tis: Sequence[_AirflowTi],
    triggered_at: float,
    airflow_cpu_s: float,
    postgres_cpu_s: float | None,
    timeout_s: float,
) -> dict[str, Any]:
    ups = upstream_map(task_graph(plan.shape.kind, plan.shape.size))
    ledger = read_ledger(run_dir / "ledger.log")
    latency = [ms for _, ms in task_latency_ledger(ledger, ups)]
    by_key = {(t.dag_id, t.run_id, t.task_id): t for t in tis}
    store_latency = []
    for t in tis:
        up = [by_key.get((t.dag_id, t.run_id, u)) for u in ups.get(t.task_id, ())]
        if up and t.start_date is not None and all(u and u.end_date for u in up):
            last = max(u.end_date for u in up if u is not None and u.end_date is not None)
            store_latency.append((t.start_date - last) * 1000)
    queued = [
        (t.start_date - t.queued_at) * 1000
        for t in tis
        if t.start_date is not None and t.queued_at is not None
    ]
    finished = throughput(tis, triggered_at, 0.0)  # one machine: one clock
    n = finished["finished"]
    succeeded = sum(t.state == "success" for t in tis)
    return {
        "system": "airflow",
        "airflow_version": version,
        "scenario": plan.scenario.value,
        "params": {
            **plan_params(plan),
            # What ran: one scheduler, Airflow's own executor and pool (parallelism 32 and a
            # default_pool of 128 by default), none of Tradewind's settings.
            "schedulers": 1,
            "workers": None,
            "slots": None,
            "executor": "LocalExecutor",
            "settings": "defaults",
            "timeout_s": timeout_s,
        },
        "machine": machine_info(),
        "task_latency_ms": percentiles(latency),
        "task_latency_store_ms": percentiles(store_latency),
        "queued_to_start_ms": percentiles(queued),
        "throughput_tis_per_s": finished,
        "cpu_s_per_1000_tis": {
            "airflow": round(airflow_cpu_s * 1000 / n, 3) if n else "unavailable",
            "postgres": (
                round(postgres_cpu_s * 1000 / n, 3)
                if n and postgres_cpu_s is not None
                else "unavailable"
            ),
        },
        "tis": {"total": len(tis), "success": succeeded},
        "ok": len(tis) == plan.total_tis and succeeded == len(tis),
    }


def summary_lines(results: Mapping[str, Any]) -> list[str]:
    """results.json as a short markdown summary."""
    lat, q = results["task_latency_ms"], results["queued_to_start_ms"]
    cpu = results["cpu_s_per_1000_tis"]
    return [
        f"# Airflow {results['airflow_version']}: {results['scenario']}",
        "",
        f"- task instances: {results['tis']['success']} of {results['tis']['total']} succeeded",
        f"- task latency (ledger): p50 {lat['p50']} ms, p90 {lat['p90']} ms, "
        f"p99 {lat['p99']} ms, max {lat['max']} ms (n = {lat['n']})",
        f"- queued to start: p50 {q['p50']} ms, p99 {q['p99']} ms",
        f"- throughput: {results['throughput_tis_per_s']['overall']} task instances/s",
        f"- CPU s per 1000 task instances: Airflow (scheduler, executor, tasks) {cpu['airflow']}, "
        f"PostgreSQL {cpu['postgres']}",
    ]
