"""Probe: task latency on a 10-task bash chain (3 schedulers + 2 workers); each task logs its own
start and end to a ledger, latency = start(i+1) - end(i), plus the store's queued->started p50.
Run from the repository root: `RUNS=10 .venv/bin/python -m loadtest.probes.chain` (default 10)."""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from tests.support.processes import Proc, env_for, start_scheduler, start_worker, wait_until
from tradewind_cluster.embedded import EmbeddedPostgres
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.migrate import upgrade
from tradewind_cluster.store.runs import NewRun, trigger_run

__all__ = ["main"]

CHAIN_LENGTH = 10

# @LEDGER@ is replaced by the ledger's path; the Jinja braces are rendered by the task.
_DAG_FILE = """\
from datetime import datetime

from tradewind import DAG, BashOperator, chain

LEDGER = "@LEDGER@"
START = "echo {{ run_id }} {{ task.task_id }} start $(date +%s.%N) >> " + LEDGER
END = "echo {{ run_id }} {{ task.task_id }} end $(date +%s.%N) >> " + LEDGER

with DAG("chain10", schedule=None, start_date=datetime(2026, 1, 1), max_active_runs=1) as dag:
    chain(*[BashOperator(task_id=f"t{i}", bash_command=f"{START}; {END}") for i in range(10)])
"""

_QUEUED_TO_STARTED_P50 = """
select percentile_cont(0.5) within group
       (order by extract(epoch from (a.start_date - t.queued_at)) * 1000)
from task_attempt a join task_instance t on t.id = a.ti_id
"""


def _start_processes(url: str, work: Path, procs: list[Proc]) -> None:
    """3 schedulers and 2 workers (8 slots each) executing on the workers; appended as started."""
    env = env_for(
        url,
        work,
        work / "dags",
        TRADEWIND__SCHEDULER__EXECUTOR="workers",
        TRADEWIND__LOGGING__LEVEL="WARNING",
    )
    procs.extend(start_scheduler(env, work, f"s{i}") for i in range(3))
    addrs = ",".join(f"127.0.0.1:{p.ports['grpc']}" for p in procs)
    for i in range(2):
        procs.append(start_worker(env, work, f"w{i}", addrs, "--slots", "8"))


@contextmanager
def _cluster(work: Path) -> Iterator[Database]:
    """A migrated embedded PostgreSQL with the processes running; everything stopped on exit."""
    pg = EmbeddedPostgres(work / "pgdata")
    url = pg.start()
    db = Database(url)
    procs: list[Proc] = []
    try:
        upgrade(db)
        _start_processes(url, work, procs)
        yield db
    finally:
        for proc in reversed(procs):
            proc.stop()
        db.dispose()
        pg.stop()


def _scalar(db: Database, sql: str, **params: object) -> object:
    """The first column of the first row of one query."""
    return db.read(lambda c: c.execute(sa.text(sql), params).scalar())


def _run_once(db: Database, run_id: str) -> None:
    """Trigger one manual run of the chain and wait for it to finish."""
    now = datetime.now(UTC)
    run = NewRun(
        run_id=run_id,
        logical_date=now,
        data_interval_start=now,
        data_interval_end=now,
        run_type="manual",
    )
    db.transaction(lambda c: trigger_run(c, "chain10", run, created_by="measure"))
    wait_until(
        lambda: (
            _scalar(db, "select state from dag_run where run_id = :r", r=run_id)
            in ("success", "failed")
        ),
        120,
        "run",
    )


def _latencies_ms(ledger: Path, runs: int) -> list[float]:
    """Every hand-off's start(i+1) - end(i) in ms, sorted."""
    marks: dict[tuple[str, str, str], float] = {}
    for line in ledger.read_text().splitlines():
        run_id, task_id, what, at = line.split()
        marks[(run_id, task_id, what)] = float(at)
    latencies = [
        (marks[(f"m{r}", f"t{i + 1}", "start")] - marks[(f"m{r}", f"t{i}", "end")]) * 1000
        for r in range(runs)
        for i in range(CHAIN_LENGTH - 1)
    ]
    return sorted(latencies)


def _quantile(ordered: list[float], p: float) -> float:
    """The value at rank p of an ordered list (no interpolation)."""
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def _report(db: Database, lat: list[float]) -> None:
    print(
        f"task latency over {len(lat)} hand-offs: p50={statistics.median(lat):.1f} ms "
        f"p90={_quantile(lat, 0.9):.1f} p99={_quantile(lat, 0.99):.1f} max={lat[-1]:.1f}"
    )
    queued_to_started = _scalar(db, _QUEUED_TO_STARTED_P50)
    print(f"queued->started (scheduler clock) p50={queued_to_started:.1f} ms")


def main() -> int:
    """Run the chain RUNS times and print the hand-off latencies."""
    runs = int(os.environ.get("RUNS", "10"))
    work = Path(tempfile.mkdtemp(prefix="tw-measure-"))
    try:
        (work / "dags").mkdir()
        ledger = work / "ledger.txt"
        dag_source = _DAG_FILE.replace("@LEDGER@", str(ledger))
        (work / "dags" / "chain10.py").write_text(dag_source)
        with _cluster(work) as db:
            wait_until(lambda: _scalar(db, "select count(*) from serialized_dag"), 60, "parse")
            time.sleep(2)  # let every replica settle before the first run
            for r in range(runs):
                _run_once(db, f"m{r}")
            _report(db, _latencies_ms(ledger, runs))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
