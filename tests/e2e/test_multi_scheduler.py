"""Three scheduler replicas as real processes against one PostgreSQL: work is split with no
duplicates, a replica killed with SIGKILL loses nothing, a paused replica declared dead exits
when resumed, and a database outage turns them unhealthy and then healthy again."""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support.processes import Proc, env_for, http_json, start_scheduler, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DAG_FILE = """
from datetime import datetime, timedelta
from tradewind import DAG, BashOperator

with DAG("{dag_id}", schedule=timedelta(hours=1), start_date=datetime.fromisoformat("{start}"),
         catchup=True, max_active_runs=4,
         default_args={{"retries": {retries}, "retry_delay": timedelta(seconds=0)}}) as dag:
    a = BashOperator(task_id="a", bash_command="{cmd}")
    b = BashOperator(task_id="b", bash_command="true")
    c = BashOperator(task_id="c", bash_command="true")
    a >> [b, c]
"""


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tradewind-e2e-"))
    (path / "dags").mkdir()
    (path / "home").mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write_dags(
    dags: Path, n: int, *, cmd: str = "true", runs: int = 2, retries: int = 0
) -> datetime:
    start = (datetime.now(UTC) - timedelta(hours=runs, minutes=30)).replace(microsecond=0)
    for i in range(n):
        dag_id = f"dag_{i:03d}"
        (dags / f"{dag_id}.py").write_text(
            DAG_FILE.format(dag_id=dag_id, start=start.isoformat(), cmd=cmd, retries=retries)
        )
    return start


def scalar(db_url: str, sql: str) -> object:
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql)).scalar()
    finally:
        engine.dispose()


def rows(db_url: str, sql: str) -> list[tuple[object, ...]]:
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql)).all()]
    finally:
        engine.dispose()


def health_of(p: Proc) -> int:
    """HTTP status of a replica's /health; a replica that exited fails the test with its log."""
    if p.popen.poll() is not None:
        raise AssertionError(f"{p.log_path.stem} exited {p.popen.returncode}:\n{p.log()[-4000:]}")
    return http_json(p.ports["health"])[0]


def start_replicas(db_url: str, workdir: Path, n: int, **extra: str) -> list[Proc]:
    env = env_for(db_url, workdir / "home", workdir / "dags", **extra)
    return [start_scheduler(env, workdir, f"r{i}") for i in range(n)]


def stop_all(procs: list[Proc]) -> None:
    for p in procs:
        p.stop()


def test_three_replicas_split_fifty_dags_with_no_duplicates(db_url: str, workdir: Path) -> None:
    write_dags(workdir / "dags", 50, runs=2)
    procs = start_replicas(db_url, workdir, 3)
    try:
        wait_until(
            lambda: scalar(db_url, "SELECT count(*) FROM dag_run WHERE state = 'success'") == 100,
            120,
            "100 runs to succeed",
            interval=0.5,
        )
        loop_p50 = [http_json(p.ports["health"])[0] for p in procs]
    finally:
        stop_all(procs)
    assert loop_p50 == [200, 200, 200]
    assert scalar(db_url, "SELECT count(*) FROM dag_run") == 100
    per_dag = rows(
        db_url, "SELECT dag_id, count(*) FROM dag_run GROUP BY dag_id HAVING count(*) <> 2"
    )
    assert per_dag == []
    assert scalar(db_url, "SELECT count(*) FROM task_instance WHERE state <> 'success'") == 0
    # Every task instance ran exactly once: one attempt each, no duplicate queueing.
    assert rows(db_url, "SELECT ti_id FROM task_attempt GROUP BY ti_id HAVING count(*) > 1") == []
    # Parsing split: each file parsed by exactly one replica, and by more than one replica overall.
    parsers = rows(db_url, "SELECT parsed_by, count(*) FROM dag_file GROUP BY parsed_by")
    assert sum(n for _, n in parsers) == 50
    assert len(parsers) >= 2, parsers
    creators = rows(db_url, "SELECT count(DISTINCT created_by) FROM dag_run")
    assert creators[0][0] >= 2


def test_sigkill_of_a_replica_mid_run_loses_nothing(db_url: str, workdir: Path) -> None:
    """The in-process dispatcher runs attempts inside the scheduler, so the victim's running
    attempts die with it: they become zombies and are retried (retries=1). Its queued attempts
    are requeued by a survivor; its DAG files are parsed by the others."""
    write_dags(workdir / "dags", 12, cmd="sleep 2", runs=2, retries=1)
    procs = start_replicas(db_url, workdir, 3, TRADEWIND__SCHEDULER__PARSE_INTERVAL_S="3")
    busy = "SELECT m.name FROM task_instance t JOIN scheduler_member m ON m.id = t.queued_by "
    busy += "WHERE t.state IN ('queued','running') GROUP BY m.name ORDER BY count(*) DESC LIMIT 1"
    victim_name = wait_until(lambda: scalar(db_url, busy), 60, "tasks in flight")
    victim = next(p for p in procs if p.log_path.stem == victim_name)
    survivors = [p for p in procs if p is not victim]
    try:
        victim.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        victim.popen.wait(10)
        member = scalar(db_url, f"SELECT id FROM scheduler_member WHERE name = '{victim_name}'")
        dead = f"SELECT state FROM scheduler_member WHERE id = '{member}'"
        wait_until(lambda: scalar(db_url, dead) == "dead", 15, "the killed replica declared dead")
        failover_s = time.monotonic() - killed_at
        done = "SELECT count(*) FROM dag_run WHERE state = 'success'"
        wait_until(lambda: scalar(db_url, done) == 24, 120, "every run to succeed", interval=0.5)
        # Its DAG files are parsed by the survivors from now on.
        theirs = f"SELECT count(*) FROM dag_file WHERE parsed_by = '{member}'"
        wait_until(lambda: scalar(db_url, theirs) == 0, 20, "the survivors to take over its files")
        # ... and share them: both wake when files fall due (3 s apart here).
        sharing = "SELECT count(DISTINCT parsed_by) FROM dag_file WHERE last_parsed_at IS NOT NULL"
        wait_until(lambda: scalar(db_url, sharing) == 2, 15, "both survivors to parse files")
    finally:
        stop_all(survivors)
    assert failover_s < 5 + 2, f"declared dead after {failover_s:.1f}s"
    assert scalar(db_url, "SELECT count(*) FROM task_instance WHERE state <> 'success'") == 0
    twice = (
        "SELECT ti_id FROM task_attempt WHERE state = 'success' GROUP BY ti_id HAVING count(*) > 1"
    )
    assert rows(db_url, twice) == []
    overlaps = rows(
        db_url,
        "SELECT a.ti_id FROM task_attempt a JOIN task_attempt b ON a.ti_id = b.ti_id "
        "AND a.id < b.id WHERE a.start_date IS NOT NULL AND b.start_date IS NOT NULL "
        "AND a.end_date IS NOT NULL AND b.start_date < a.end_date",
    )
    assert overlaps == []


def test_paused_replica_declared_dead_exits_when_resumed(db_url: str, workdir: Path) -> None:
    procs = start_replicas(db_url, workdir, 2)
    paused, other = procs
    try:
        paused.signal(signal.SIGSTOP)
        member = rows(db_url, "SELECT id FROM scheduler_member WHERE name = 'r0'")[0][0]
        wait_until(
            lambda: (
                scalar(db_url, f"SELECT state FROM scheduler_member WHERE id = '{member}'")
                == "dead"
            ),
            15,
            "the paused replica to be declared dead",
        )
        paused.signal(signal.SIGCONT)
        code = paused.popen.wait(15)
    finally:
        stop_all([other])
        if paused.popen.poll() is None:
            paused.popen.kill()
    assert code == 3, paused.log()
    assert "declared" in paused.log()


def test_database_outage_turns_replicas_unhealthy_then_healthy(
    db_url: str, workdir: Path, pg_admin_url: str
) -> None:
    write_dags(workdir / "dags", 3, runs=1)
    procs = start_replicas(db_url, workdir, 2)
    name = sa.engine.make_url(db_url).database
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        wait_until(lambda: all(health_of(p) == 200 for p in procs), 20, "healthy")
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{name}'"
                )
            )
        down = wait_until(
            lambda: (
                all(health_of(p) == 503 for p in procs)
                and [http_json(p.ports["health"])[1] for p in procs]
            ),
            20,
            "both replicas to report unhealthy",
        )
        assert all(any("store" in r or "heartbeat" in r for r in body["reasons"]) for body in down)
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        wait_until(lambda: all(health_of(p) == 200 for p in procs), 30, "healthy again")
        try:
            wait_until(
                lambda: scalar(db_url, "SELECT count(*) FROM dag_run WHERE state = 'success'") == 3,
                60,
                "runs to finish after the outage",
                interval=0.5,
            )
        except AssertionError as exc:  # say where the work stands, for a failure seen in CI
            tis = rows(db_url, "SELECT dag_id, task_id, state, token, reason FROM task_instance")
            logs = "\n".join(p.log()[-3000:] for p in procs)
            raise AssertionError(f"{exc}\ntask instances: {tis}\nreplica logs:\n{logs}") from None
        assert all(p.popen.poll() is None for p in procs)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()
        stop_all(procs)
    assert scalar(db_url, "SELECT count(*) FROM dag_run") == 3
