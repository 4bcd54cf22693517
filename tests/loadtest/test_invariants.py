"""The harness's invariant checks catch planted violations (a task run twice, overlapping
attempts, a duplicate run row, a stale report applied, a limit exceeded) and pass clean data."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from loadtest.cli import parse_settings
from loadtest.collect import AttemptRecord, RunRecord, StoreSnapshot, TiRecord, read_store
from loadtest.invariants import (
    check_all,
    ledger_concurrency,
    ledger_covers_successes,
    limits_respected,
    no_overlapping_attempts,
    no_stale_report_applied,
    one_run_per_logical_date,
    tries_within_limit,
)
from loadtest.ledger import IdentitySource, build_ledger, parse_line
from loadtest.measure import percentiles
from loadtest.sampler import LimitSample
from tradewind.errors import BadInputError

pytestmark = pytest.mark.e2e

RUN = "manual__2026-01-01T00:00:00+00:00"


def line(event: str, at: float, task: str = "a", *, run: str = RUN, pid: int = 100) -> str:
    """A ledger line as the bash task writes it (template identity, no TRADEWIND_* vars)."""
    return f"{event} {at:.6f} d {task} {run} - - - 1 {pid}"


def ti(task: str = "a", *, id: int = 1, state: str = "success", max_tries: int = 0) -> TiRecord:
    return TiRecord(
        id=id,
        dag_id="d",
        run_id=RUN,
        task_id=task,
        state=state,
        try_number=1,
        max_tries=max_tries,
        token=1,
        pool="default_pool",
        start_date=10.0,
        end_date=11.0,
        worker="local",
        queued_by="s0",
    )


def attempt(
    ti_id: int = 1, token: int = 1, state: str = "success", **times: float
) -> AttemptRecord:
    return AttemptRecord(
        id=token,
        ti_id=ti_id,
        token=token,
        try_number=token,
        state=state,
        queued_at=times.get("queued_at", 9.0),
        start_date=times.get("start_date", 10.0),
        end_date=times.get("end_date", 11.0),
        worker="local",
        queued_by="s0",
    )


def run(logical: float = 0.0, id: int = 1) -> RunRecord:
    return RunRecord(
        id=id,
        dag_id="d",
        run_id=f"manual__{id}",
        logical_date=logical,
        run_type="manual",
        state="success",
        queued_at=1.0,
        start_date=2.0,
        end_date=3.0,
        scheduled_at=None,
    )


def snapshot(**kw: object) -> StoreSnapshot:
    base = StoreSnapshot(runs=(run(),), tis=(ti(),), attempts=(attempt(),), members=(), workers=())
    return replace(base, **kw)  # type: ignore[arg-type]


def test_a_clean_run_passes_every_check() -> None:
    ledger = build_ledger([line("start", 10.0), line("end", 10.5)])
    checks = check_all(snapshot(), ledger, [], expected_tis=1, slots=8, ledger_expected=True)
    assert {name: c.violations for name, c in checks.items()} == dict.fromkeys(checks, 0)


def test_a_task_run_twice_is_caught() -> None:
    ledger = build_ledger(
        [
            line("start", 10.0),
            line("end", 10.5),
            line("start", 11.0, pid=101),
            line("end", 11.2, pid=101),
        ]
    )
    check = tries_within_limit(ledger, [ti(max_tries=0)])
    assert check.violations == 1
    assert "executed 2 times, 1 allowed" in check.examples[0]
    assert no_overlapping_attempts(ledger).ok
    assert tries_within_limit(ledger, [ti(max_tries=1)]).ok  # a retry is allowed


def test_overlapping_attempts_are_caught() -> None:
    ledger = build_ledger(
        [
            line("start", 10.0),
            line("end", 12.0),
            line("start", 11.0, pid=101),
            line("end", 13.0, pid=101),
        ]
    )
    check = no_overlapping_attempts(ledger)
    assert check.violations == 1
    assert "started 1000 ms before pid 100 stopped" in check.examples[0]


def test_a_killed_attempt_counts_until_its_last_sign_of_life() -> None:
    killed = [line("start", 10.0), line("tick", 10.5), line("term", 10.6)]
    late_retry = build_ledger([*killed, line("start", 10.7, pid=101), line("end", 11.0, pid=101)])
    early_retry = build_ledger([*killed, line("start", 10.55, pid=101), line("end", 11.0, pid=101)])
    assert no_overlapping_attempts(late_retry).ok
    assert no_overlapping_attempts(early_retry).violations == 1


def test_a_duplicate_run_row_is_caught() -> None:
    check = one_run_per_logical_date([run(0.0, id=1), run(0.0, id=2), run(60.0, id=3)])
    assert check.violations == 1
    assert "d has 2 runs at logical date 1970-01-01T00:00:00+00:00" in check.examples


@pytest.mark.store
def test_a_duplicate_run_row_planted_in_the_store_is_caught(db_url: str) -> None:
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE dag_run DROP CONSTRAINT uq_dag_run_dag_id_logical_date"))
        conn.execute(sa.text("INSERT INTO dag (dag_id, fileloc) VALUES ('d', 'd.py')"))
        for run_id in ("manual__a", "manual__b"):
            conn.execute(
                sa.text(
                    "INSERT INTO dag_run (dag_id, run_id, logical_date, run_type, state) "
                    "VALUES ('d', :r, :at, 'manual', 'success')"
                ),
                {"r": run_id, "at": at},
            )
    snap = read_store(engine)
    engine.dispose()
    assert len(snap.runs) == 2
    assert one_run_per_logical_date(snap.runs).violations == 1


def test_a_stale_report_applied_is_caught() -> None:
    current_running = snapshot(
        tis=(replace(ti(), token=2),),
        attempts=(attempt(), attempt(token=2, state="running", queued_at=11.5)),
    )
    check = no_stale_report_applied(current_running)
    assert check.violations == 1
    assert "success but its current attempt 2 is running" in check.examples[0]
    late = snapshot(
        tis=(replace(ti(), token=2),),
        attempts=(
            attempt(end_date=12.0),
            attempt(token=2, queued_at=11.5, start_date=11.6, end_date=13.0),
        ),
    )
    late_check = no_stale_report_applied(late)
    assert late_check.violations == 1
    assert "attempt 1 recorded success after attempt 2 was queued" in late_check.examples[0]
    requeued = snapshot(
        tis=(replace(ti(), token=2),),
        attempts=(attempt(state="requeued", end_date=11.5), attempt(token=2, queued_at=11.5)),
    )
    assert no_stale_report_applied(requeued).ok


def test_limits_exceeded_in_a_sample_or_by_the_ledger_are_caught() -> None:
    over_pool = LimitSample(at=1.0, kind="pool", name="default_pool", limit=2, used=3)
    over_dag = LimitSample(at=1.0, kind="max_active_tasks", name="d", limit=16, used=17)
    assert limits_respected([over_pool, over_dag], pools=True).violations == 1
    assert limits_respected([over_pool, over_dag], pools=False).violations == 1
    three_at_once = build_ledger(
        [line("start", 10.0, task=t, pid=p) for t, p in (("a", 1), ("b", 2), ("c", 3))]
        + [line("end", 11.0, task=t, pid=p) for t, p in (("a", 1), ("b", 2), ("c", 3))]
    )
    assert ledger_concurrency(three_at_once) == 3
    assert limits_respected([], pools=False, ledger=three_at_once, slots=2).violations == 1
    assert limits_respected([], pools=False, ledger=three_at_once, slots=3).ok


def test_a_success_the_tasks_never_ran_is_caught() -> None:
    empty = build_ledger([])
    assert ledger_covers_successes(empty, [ti()]).violations == 1
    assert ledger_covers_successes(build_ledger([line("start", 1.0), line("end", 2.0)]), [ti()]).ok


def test_timed_out_or_failed_task_instances_fail_the_run() -> None:
    checks = check_all(
        snapshot(tis=(ti(state="failed"),), attempts=(attempt(state="failed"),)),
        build_ledger([line("start", 10.0), line("end", 10.5)]),
        [],
        expected_tis=2,
        slots=8,
        ledger_expected=True,
    )
    assert checks["all_tis_succeeded"].violations == 2  # one failed, one never created
    assert checks["no_stale_report_applied"].ok


def test_ledger_identity_and_malformed_lines() -> None:
    static = build_ledger(["start 1.0 d a {{run_id}} - - - {{try_number}} 7", "garbage", ""])
    assert (static.identity, static.malformed, static.lines) == (IdentitySource.STATIC, 1, 2)
    assert static.executions[0].key == "d/*/a"
    env = parse_line(f"end 2,5 d a {RUN} 42 3 2 1 9")  # a comma decimal point (locale)
    assert env is not None
    assert (env.at, env.ti_id, env.token, env.try_number) == (2.5, 42, 3, 2)
    assert build_ledger([f"start 1 d a {RUN} 42 3 2 1 9"]).identity is IdentitySource.ENV
    assert build_ledger([line("start", 1.0)]).identity is IdentitySource.TEMPLATE


def test_percentiles_by_nearest_rank() -> None:
    assert percentiles(range(1, 101)) == {"p50": 50, "p90": 90, "p99": 99, "max": 100, "n": 100}
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None, "max": None, "n": 0}


def test_settings_flags_become_environment_settings() -> None:
    assert parse_settings(["scheduler.zombie_threshold_s=5", "TRADEWIND__CORE__X=1"]) == {
        "TRADEWIND__SCHEDULER__ZOMBIE_THRESHOLD_S": "5",
        "TRADEWIND__CORE__X": "1",
    }
    with pytest.raises(BadInputError, match=r"section\.key"):
        parse_settings(["zombie=5"])
