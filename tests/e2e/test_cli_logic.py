"""The CLI's pure pieces, without processes or a database (fast; they sit with the CLI's e2e
tests): backfill intervals as Airflow's iter_dagrun_infos_between, dates and conf as the
commands read them, task selection for clear, and `dags test`'s in-memory run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tradewind import DAG, BashOperator, BranchPythonOperator, EmptyOperator, TriggerRule
from tradewind.errors import BadInputError
from tradewind.scheduling.retries import AttemptOutcome
from tradewind.serialization import dag_to_spec
from tradewind.spec import DagSpec
from tradewind.states import DagRunState, TaskInstanceState
from tradewind_cluster.cli.dag_lookup import select_tasks
from tradewind_cluster.cli.dag_test import DagTest
from tradewind_cluster.cli.dates import parse_date
from tradewind_cluster.cli.local_dag import LocalDag
from tradewind_cluster.cli.local_run import TaskOutcome
from tradewind_cluster.cli.trigger import backfill_runs, parse_conf

START = datetime(2024, 1, 1, tzinfo=UTC)


def spec_of(schedule: str | timedelta | None) -> DagSpec:
    with DAG("d", schedule=schedule, start_date=datetime(2020, 1, 1), catchup=False) as dag:
        BashOperator(task_id="t", bash_command="true")
    return dag_to_spec(dag)


def test_backfill_intervals_are_aligned_and_inclusive() -> None:
    runs = backfill_runs(spec_of("@daily"), START + timedelta(hours=12), START + timedelta(days=3))
    assert [r.logical_date.day for r in runs] == [2, 3, 4]
    assert runs[0].run_id == "backfill__2024-01-02T00:00:00+00:00"
    assert (runs[0].data_interval_start, runs[0].data_interval_end) == (
        START + timedelta(days=1),
        START + timedelta(days=2),
    )
    assert {r.run_type for r in runs} == {"backfill"}
    hourly = backfill_runs(spec_of(timedelta(hours=6)), START, START + timedelta(hours=12))
    assert [r.logical_date.hour for r in hourly] == [0, 6, 12]
    once = backfill_runs(spec_of("@once"), START, START + timedelta(days=9))
    assert [r.logical_date for r in once] == [START]
    assert backfill_runs(spec_of(None), START, START + timedelta(days=9)) == []
    with pytest.raises(BadInputError, match="more than 2 intervals"):
        backfill_runs(spec_of("@daily"), START, START + timedelta(days=5), limit=2)
    with pytest.raises(BadInputError, match="is after --end-date"):
        backfill_runs(spec_of("@daily"), START, START - timedelta(days=1))


def test_dates_and_conf() -> None:
    assert parse_date("2024-01-31") == datetime(2024, 1, 31, tzinfo=UTC)
    assert parse_date("2024-01-31T06:00:00Z") == datetime(2024, 1, 31, 6, tzinfo=UTC)
    # A time without an offset is in core.default_timezone (UTC+1 in January).
    amsterdam = parse_date("2024-01-31T06:00", timezone="Europe/Amsterdam")
    assert amsterdam == datetime(2024, 1, 31, 5, tzinfo=UTC)
    with pytest.raises(BadInputError, match="bad --start-date 'monday'"):
        parse_date("monday", what="--start-date")
    assert parse_conf('{"a": [1]}') == {"a": [1]}
    assert parse_conf(None) == {}
    with pytest.raises(BadInputError, match="not valid JSON"):
        parse_conf("{oops")
    with pytest.raises(BadInputError, match="must be a JSON object, got list"):
        parse_conf("[1]")


def chain_spec() -> DagSpec:
    with DAG("c", schedule=None, start_date=datetime(2024, 1, 1)) as dag:
        a, b, c, d = (EmptyOperator(task_id=t) for t in ("a", "b", "c", "d"))
        a >> b >> c
        a >> d
    return dag_to_spec(dag)


def test_select_tasks_as_airflow_partial_subset() -> None:
    spec = chain_spec()
    assert select_tasks(spec, "b") == ["b"]  # re.search: anywhere in the id
    assert select_tasks(spec, "^b$", downstream=True) == ["b", "c"]
    assert select_tasks(spec, "c", upstream=True) == ["a", "b", "c"]
    assert select_tasks(spec, None) == ["a", "b", "c", "d"]  # topological order
    with pytest.raises(BadInputError, match="bad task regex"):
        select_tasks(spec, "(")


def branching() -> LocalDag:
    with DAG("b", schedule=None, start_date=datetime(2024, 1, 1)) as dag:
        pick = BranchPythonOperator(task_id="pick", python_callable=lambda: "left")
        left = BashOperator(task_id="left", bash_command="true", retries=1, retry_delay=0)
        right = BashOperator(task_id="right", bash_command="true")
        join = BashOperator(
            task_id="join", bash_command="true", trigger_rule=TriggerRule.NONE_FAILED
        )
        pick >> [left, right] >> join
    spec = dag_to_spec(dag)
    return LocalDag(dag=dag, spec=spec, fileloc="b.py", file_hash="", dags_folder="")


def run_to_end(local: LocalDag, outcomes: dict[str, list[TaskOutcome]]) -> tuple[str, list[str]]:
    ran: list[str] = []

    def run_task(task_id: str, try_number: int) -> TaskOutcome:
        ran.append(f"{task_id}#{try_number}")
        return outcomes[task_id].pop(0)

    test = DagTest(local=local, run_task=run_task, say=lambda line: None)
    for _ in range(10):
        state = test.step(datetime.now(UTC))
        if state is not None:
            return state.value, ran
    raise AssertionError(f"no end after {ran}")


def test_dag_test_follows_branches_and_retries_as_the_schedulers() -> None:
    ok = TaskOutcome(outcome=AttemptOutcome.SUCCESS)
    failed = TaskOutcome(outcome=AttemptOutcome.FAILED, error="boom")
    picked = TaskOutcome(outcome=AttemptOutcome.SUCCESS, followed=("left",))
    state, ran = run_to_end(branching(), {"pick": [picked], "left": [failed, ok], "join": [ok]})
    assert (state, ran) == ("success", ["pick#1", "left#1", "left#2", "join#1"])
    state, ran = run_to_end(branching(), {"pick": [picked], "left": [failed, failed]})
    assert (state, ran) == ("failed", ["pick#1", "left#1", "left#2"])


def test_dag_test_marks_upstream_failed_downstream() -> None:
    local = branching()
    test = DagTest(
        local=local,
        run_task=lambda t, n: TaskOutcome(outcome=AttemptOutcome.FAILED),
        say=lambda line: None,
    )
    assert test.step(datetime.now(UTC)) is None  # pick ran and failed
    assert test.step(datetime.now(UTC)) is DagRunState.FAILED
    assert {t: v.state for t, v in test.tis.items()} == {
        "pick": TaskInstanceState.FAILED,
        "left": TaskInstanceState.UPSTREAM_FAILED,
        "right": TaskInstanceState.UPSTREAM_FAILED,
        "join": TaskInstanceState.UPSTREAM_FAILED,
    }
