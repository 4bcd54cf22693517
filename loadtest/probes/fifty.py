"""Probe for issue 4: 3 replicas, 50 DAGs x 2 runs x 3 tasks (local executor): wall time, loop
duration from each replica's /metrics, then SIGKILL one replica: time until declared dead.
Run from the repository root: `.venv/bin/python -m loadtest.probes.fifty` (about 30 s)."""

from __future__ import annotations

import importlib
import re
import shutil
import signal
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from tests.support.processes import Proc, env_for, start_scheduler, wait_until
from tradewind_cluster.embedded import EmbeddedPostgres
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.migrate import upgrade

__all__ = ["main"]

_LOOP = "tradewind_scheduler_scheduler_loop_duration"
_STEP = "tradewind_scheduler_step_duration"


def _write_dags(dags: Path, n: int, runs: int) -> None:
    """The e2e suite's DAGs (tests/e2e/test_multi_scheduler.py): a >> [b, c], hourly, catchup."""
    # imported at run time: a static import would make mypy check that test module too
    module = importlib.import_module("tests.e2e.test_multi_scheduler")
    module.write_dags(dags, n, runs=runs)


@contextmanager
def _database(work: Path) -> Iterator[Database]:
    """A migrated embedded PostgreSQL, stopped on exit."""
    pg = EmbeddedPostgres(work / "pgdata")
    db = Database(pg.start())
    try:
        upgrade(db)
        yield db
    finally:
        db.dispose()
        pg.stop()


def _scalar(db: Database, sql: str, **params: object) -> object:
    """The first column of the first row of one query."""
    return db.read(lambda c: c.execute(sa.text(sql), params).scalar())


def _sample(text: str, name: str) -> float:
    """One unlabelled sample of the exposition text."""
    found = re.search(rf"^{name} (\S+)", text, re.M)
    if found is None:
        raise RuntimeError(f"/metrics has no sample {name}")
    return float(found.group(1))


def _bucket_quantile(buckets: list[tuple[float, float]], count: float, p: float) -> float:
    """The upper bound of the first histogram bucket holding rank p."""
    for le, cumulative in buckets:
        if cumulative >= p * count:
            return le
    return float("inf")


def _print_steps(text: str) -> None:
    steps = re.findall(rf'^{_STEP}_sum\{{step="([^"]+)"\}} (\S+)', text, re.M)
    counts = dict(re.findall(rf'^{_STEP}_count\{{step="([^"]+)"\}} (\S+)', text, re.M))
    parts = [
        f"{k}={float(v) / max(1, float(counts[k])) * 1000:.1f}ms x{float(counts[k]):.0f}"
        for k, v in steps
    ]
    print("   steps:", ", ".join(parts))


def _print_replica(proc: Proc) -> None:
    """Mean step durations and the loop-duration summary of one replica, from its /metrics."""
    url = f"http://127.0.0.1:{proc.ports['health']}/metrics"
    with urllib.request.urlopen(url) as response:
        text = response.read().decode()
    total = _sample(text, f"{_LOOP}_sum")
    n = _sample(text, f"{_LOOP}_count")
    pattern = rf'^{_LOOP}_bucket\{{le="([^"]+)"\}} (\S+)'
    buckets = [(float(le), float(v)) for le, v in re.findall(pattern, text, re.M) if le != "+Inf"]
    _print_steps(text)
    print(
        f"{proc.log_path.stem}: loops={n:.0f} mean={total / n * 1000:.2f} ms "
        f"p50<={_bucket_quantile(buckets, n, 0.5) * 1000:.1f} ms "
        f"p99<={_bucket_quantile(buckets, n, 0.99) * 1000:.1f} ms"
    )


def _failover(db: Database, victim: Proc) -> None:
    """SIGKILL the replica r0 and print how long until a peer declared it dead, and why."""
    member = _scalar(db, "select id from scheduler_member where name='r0'")
    state_sql = "select state from scheduler_member where id = :m"
    victim.signal(signal.SIGKILL)
    t = time.monotonic()
    wait_until(lambda: _scalar(db, state_sql, m=member) == "dead", 30, "dead", 0.02)
    elapsed = time.monotonic() - t
    by = _scalar(db, "select declared_dead_by from scheduler_member where id = :m", m=member)
    reason = _scalar(db, "select dead_reason from scheduler_member where id = :m", m=member)
    print(f"failover: SIGKILL -> declared dead by a peer in {elapsed:.2f}s; by {by}: {reason}")


def _measure(db: Database, work: Path, procs: list[Proc]) -> None:
    env = env_for(db.url, work, work / "dags", TRADEWIND__LOGGING__LEVEL="WARNING")
    t0 = time.monotonic()
    procs.extend(start_scheduler(env, work, f"r{i}") for i in range(3))
    done_sql = "select count(*) from dag_run where state='success'"
    wait_until(lambda: _scalar(db, done_sql) == 100, 300, "runs", 0.2)
    print(f"100 runs x 3 tasks done {time.monotonic() - t0:.1f}s after starting the first replica")
    for proc in procs:
        _print_replica(proc)
    _failover(db, procs[0])


def main() -> int:
    """Run the 50-DAG load on 3 replicas, print the figures, then measure one failover."""
    work = Path(tempfile.mkdtemp(prefix="tw-fifty-"))
    procs: list[Proc] = []
    try:
        (work / "dags").mkdir()
        _write_dags(work / "dags", 50, runs=2)
        with _database(work) as db:
            try:
                _measure(db, work, procs)
            finally:
                for proc in procs:
                    proc.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
