"""DAG arguments, identifiers, time zones, default_args and introspection."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from tradewind.baseoperator import BaseOperator
from tradewind.dag import DAG, capture_dags, get_current_dag
from tradewind.errors import (
    ConfigError,
    DagDefinitionError,
    DuplicateTaskIdError,
    InvalidIdentifierError,
    InvalidScheduleError,
)
from tradewind.identifiers import validate_dag_id, validate_task_id
from tradewind.operators import BashOperator, EmptyOperator
from tradewind.spec import ScheduleKind
from tradewind.timezones import (
    coerce_datetime,
    get_default_timezone,
    set_default_timezone,
    timezone_name,
)

START = datetime(2024, 1, 1)


@pytest.fixture
def paris_default() -> Iterator[None]:
    set_default_timezone("Europe/Paris")
    try:
        yield
    finally:
        set_default_timezone("UTC")


# -- identifiers ------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["a", "my_dag", "etl.daily-v2", "A1", "x" * 250, "données"])
def test_valid_identifiers_pass(value: str) -> None:
    assert validate_dag_id(value) == value
    assert validate_task_id(value) == value


@pytest.mark.parametrize("value", ["", "has space", "semi;colon", "slash/x", "star*", "tail\n"])
def test_invalid_identifier_names_id_and_rule(value: str) -> None:
    with pytest.raises(InvalidIdentifierError) as info:
        validate_task_id(value)
    assert repr(value) in str(info.value)
    assert "letters, digits, underscores, dots and dashes only" in str(info.value)


def test_identifier_longer_than_250_is_rejected_with_its_length() -> None:
    with pytest.raises(InvalidIdentifierError, match="251 characters long; the maximum is 250"):
        DAG("x" * 251, schedule=None)


def test_non_string_identifier_is_rejected() -> None:
    with pytest.raises(InvalidIdentifierError, match="task_id must be a string, got int: 123"):
        BaseOperator(task_id=123)  # type: ignore[arg-type]


def test_dag_id_is_validated() -> None:
    with pytest.raises(InvalidIdentifierError, match="dag_id 'bad id' is invalid"):
        DAG("bad id", schedule=None)


# -- schedules ----------------------------------------------------------------------------
def test_default_schedule_is_one_day_as_in_airflow_2() -> None:
    dag = DAG("d", start_date=START)
    assert dag.schedule.kind is ScheduleKind.DELTA
    assert dag.schedule.delta == timedelta(days=1)


def test_schedule_is_parsed_into_a_schedule_spec() -> None:
    dag = DAG("d", schedule="@hourly", start_date=START)
    assert dag.schedule.kind is ScheduleKind.CRON
    assert dag.schedule.expression == "0 * * * *"
    assert dag.schedule_interval == "@hourly"


def test_schedule_interval_is_an_alias_of_schedule() -> None:
    dag = DAG("d", schedule_interval=timedelta(hours=2), start_date=START)
    assert dag.schedule.kind is ScheduleKind.DELTA
    assert dag.schedule.delta == timedelta(hours=2)


def test_schedule_and_schedule_interval_together_are_rejected() -> None:
    with pytest.raises(DagDefinitionError, match="either schedule or schedule_interval"):
        DAG("d", schedule="@daily", schedule_interval="@daily", start_date=START)


def test_bad_schedule_names_the_dag() -> None:
    with pytest.raises(InvalidScheduleError, match=r"DAG 'd': .*'@fortnightly'"):
        DAG("d", schedule="@fortnightly", start_date=START)


def test_explicit_schedule_without_start_date_is_rejected() -> None:
    with pytest.raises(DagDefinitionError, match="DAG 'd' is missing the start_date parameter"):
        DAG("d", schedule="@daily")


def test_start_date_may_come_from_default_args_or_be_absent_without_schedule() -> None:
    DAG("a", schedule="@daily", default_args={"start_date": START})
    assert DAG("b", schedule=None).start_date is None
    assert DAG("c").start_date is None  # implicit default schedule: Airflow does not complain


def test_custom_timetable_is_rejected() -> None:
    with pytest.raises(DagDefinitionError, match="custom timetables are not supported"):
        DAG("d", timetable=object(), start_date=START)


# -- dates and time zones -------------------------------------------------------------
def test_naive_start_date_is_utc_by_default() -> None:
    dag = DAG("d", schedule=None, start_date=START)
    assert dag.start_date == datetime(2024, 1, 1, tzinfo=UTC)
    assert dag.timezone == "UTC"


def test_naive_start_date_uses_the_process_default_zone(paris_default: None) -> None:
    assert get_default_timezone() == "Europe/Paris"
    dag = DAG("d", schedule=None, start_date=START, end_date=datetime(2024, 7, 1))
    assert dag.timezone == "Europe/Paris"
    assert dag.start_date == datetime(2023, 12, 31, 23, tzinfo=UTC)
    assert dag.end_date == datetime(2024, 6, 30, 22, tzinfo=UTC)  # summer time


def test_aware_start_date_gives_the_dag_its_zone_and_is_stored_in_utc() -> None:
    start = datetime(2024, 1, 1, 6, tzinfo=ZoneInfo("America/New_York"))
    dag = DAG("d", schedule="@daily", start_date=start)
    assert dag.timezone == "America/New_York"
    assert dag.start_date == datetime(2024, 1, 1, 11, tzinfo=UTC)
    assert dag.start_date is not None
    assert dag.start_date.utcoffset() == timedelta(0)


def test_naive_end_date_is_read_in_the_default_zone_not_the_dags_as_airflow() -> None:
    start = datetime(2024, 1, 1, tzinfo=ZoneInfo("Asia/Tokyo"))
    dag = DAG("d", schedule=None, start_date=start, end_date=datetime(2024, 2, 1))
    assert dag.end_date == datetime(2024, 2, 1, tzinfo=UTC)


def test_zone_of_a_default_args_start_date() -> None:
    start = datetime(2024, 1, 1, tzinfo=ZoneInfo("Europe/Berlin"))
    dag = DAG("d", schedule="@daily", default_args={"start_date": start})
    assert dag.timezone == "Europe/Berlin"
    assert dag.start_date is None  # as Airflow: the tasks carry it


def test_iso_strings_and_dates_are_accepted() -> None:
    assert DAG("a", schedule=None, start_date="2024-03-01").start_date == datetime(
        2024, 3, 1, tzinfo=UTC
    )
    assert DAG("b", schedule=None, start_date=date(2024, 3, 1)).start_date == datetime(
        2024, 3, 1, tzinfo=UTC
    )
    dag = DAG("c", schedule=None, start_date="2024-03-01T06:00:00+02:00")
    assert dag.start_date == datetime(2024, 3, 1, 4, tzinfo=UTC)
    assert dag.timezone == "Etc/GMT-2"  # POSIX sign: two hours east of UTC


def test_bad_date_string_is_a_definition_error() -> None:
    with pytest.raises(DagDefinitionError, match="cannot read 'yesterday' as a date"):
        DAG("d", schedule=None, start_date="yesterday")


def test_coerce_datetime_reads_naive_values_in_the_given_zone() -> None:
    value = coerce_datetime(datetime(2024, 6, 1, 12), "Europe/London")
    assert value == datetime(2024, 6, 1, 11, tzinfo=UTC)
    assert value.tzinfo is UTC


def test_coerce_datetime_resolves_an_ambiguous_wall_time_to_the_first_instant() -> None:
    # 01:30 happens twice in New York on 2024-11-03; fold=0 is the EDT one.
    value = coerce_datetime(datetime(2024, 11, 3, 1, 30), "America/New_York")
    assert value == datetime(2024, 11, 3, 5, 30, tzinfo=UTC)


def test_unknown_default_zone_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown time zone 'Mars/Olympus'"):
        set_default_timezone("Mars/Olympus")
    assert get_default_timezone() == "UTC"


def test_timezone_name_of_fixed_offsets() -> None:
    assert timezone_name(datetime(2024, 1, 1, tzinfo=UTC)) == "UTC"
    assert timezone_name(datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=-5)))) == "Etc/GMT+5"
    odd = datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    with pytest.raises(DagDefinitionError, match="no IANA equivalent"):
        timezone_name(odd)


# -- other arguments ------------------------------------------------------------------
def test_defaults_match_airflow() -> None:
    dag = DAG("d", schedule=None)
    assert (dag.max_active_runs, dag.max_active_tasks, dag.catchup) == (16, 16, True)
    assert (dag.tags, dag.params, dag.dagrun_timeout) == ((), {}, None)


def test_concurrency_is_the_old_name_of_max_active_tasks() -> None:
    assert DAG("d", schedule=None, concurrency=3).max_active_tasks == 3


def test_tags_longer_than_100_characters_are_rejected() -> None:
    with pytest.raises(DagDefinitionError, match="longer than 100 characters"):
        DAG("d", schedule=None, tags=["x" * 101])
    with pytest.raises(DagDefinitionError, match="not a string"):
        DAG("d", schedule=None, tags="etl")


def test_dagrun_timeout_must_be_a_timedelta() -> None:
    with pytest.raises(DagDefinitionError, match=r"dagrun_timeout must be a datetime\.timedelta"):
        DAG("d", schedule=None, dagrun_timeout=60)  # type: ignore[arg-type]


def test_max_active_runs_must_be_an_int() -> None:
    with pytest.raises(DagDefinitionError, match="max_active_runs must be an int, got str"):
        DAG("d", schedule=None, max_active_runs="2")  # type: ignore[arg-type]


def test_default_args_params_override_dag_params_as_airflow() -> None:
    dag = DAG("d", schedule=None, params={"a": 1, "b": 1}, default_args={"params": {"b": 2}})
    assert dag.params == {"a": 1, "b": 2}
    assert "params" not in dag.default_args


def test_fileloc_is_the_defining_file() -> None:
    assert DAG("d", schedule=None).fileloc == __file__


# -- default_args reach tasks -----------------------------------------------------------
def test_default_args_apply_to_every_task_and_explicit_arguments_win() -> None:
    args = {"retries": 3, "owner": "data", "bash_command": "echo hi", "pool": "p"}
    with DAG("d", schedule=None, default_args=args):
        a = BashOperator(task_id="a")
        b = BashOperator(task_id="b", retries=0, bash_command="echo b")
    assert (a.retries, a.owner, a.bash_command, a.pool) == (3, "data", "echo hi", "p")
    assert (b.retries, b.bash_command) == (0, "echo b")


def test_default_args_the_operator_does_not_take_are_ignored() -> None:
    with DAG("d", schedule=None, default_args={"bash_command": "x", "email": ["a@b"]}):
        task = EmptyOperator(task_id="a")
    assert not hasattr(task, "bash_command")


def test_task_level_default_args_and_params_merge_over_the_dags() -> None:
    with DAG("d", schedule=None, params={"a": 1, "b": 1}, default_args={"retries": 1}):
        task = EmptyOperator(
            task_id="t", params={"b": 2, "c": 3}, default_args={"retries": 5, "params": {"c": 4}}
        )
    assert task.retries == 5
    assert task.params == {"a": 1, "b": 2, "c": 4}


def test_default_args_are_copied_not_shared() -> None:
    args = {"retries": 1}
    dag = DAG("d", schedule=None, default_args=args)
    args["retries"] = 9
    assert dag.default_args == {"retries": 1}


# -- context manager and membership -----------------------------------------------------
def test_with_block_attaches_tasks_and_nests() -> None:
    assert get_current_dag() is None
    with DAG("outer", schedule=None) as outer:
        a = EmptyOperator(task_id="a")
        with DAG("inner", schedule=None) as inner:
            b = EmptyOperator(task_id="b")
            assert get_current_dag() is inner
        c = EmptyOperator(task_id="c")
    assert get_current_dag() is None
    assert (outer.task_ids, inner.task_ids) == (["a", "c"], ["b"])
    assert (a.dag, b.dag, c.dag) == (outer, inner, outer)


def test_dag_argument_attaches_without_a_with_block() -> None:
    dag = DAG("d", schedule=None)
    task = EmptyOperator(task_id="a", dag=dag)
    assert dag.get_task("a") is task
    assert task.dag_id == "d"


def test_stack_is_popped_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError), DAG("d", schedule=None):
        raise RuntimeError("boom")
    assert get_current_dag() is None


def test_duplicate_task_id_is_rejected() -> None:
    with DAG("d", schedule=None):
        EmptyOperator(task_id="a")
        with pytest.raises(DuplicateTaskIdError) as info:
            EmptyOperator(task_id="a")
    assert str(info.value) == "Task id 'a' has already been added to the DAG 'd'"


def test_adding_the_same_task_twice_is_harmless() -> None:
    dag = DAG("d", schedule=None)
    task = EmptyOperator(task_id="a", dag=dag)
    dag.add_task(task)
    dag.add_tasks([task])
    assert dag.task_count == 1


def test_a_task_cannot_move_to_another_dag() -> None:
    first, second = DAG("first", schedule=None), DAG("second", schedule=None)
    task = EmptyOperator(task_id="a", dag=first)
    with pytest.raises(DagDefinitionError, match="belongs to DAG 'first', not 'second'"):
        task.dag = second
    with pytest.raises(DagDefinitionError, match="belongs to DAG 'first'"):
        second.add_task(task)
    assert second.task_count == 0


def test_task_without_dag_reports_it() -> None:
    task = EmptyOperator(task_id="a")
    assert task.get_dag() is None
    assert not task.has_dag()
    assert task.dag_id == "adhoc_tradewind"
    with pytest.raises(DagDefinitionError, match="has not been assigned to a DAG yet"):
        _ = task.dag


# -- introspection ----------------------------------------------------------------------
def test_introspection() -> None:
    with DAG("d", schedule=None) as dag:
        a, b, c, d = (EmptyOperator(task_id=x) for x in "abcd")
        a >> [b, c]
        d << c
    assert dag.task_ids == ["a", "b", "c", "d"]
    assert [t.task_id for t in dag.tasks] == ["a", "b", "c", "d"]
    assert [t.task_id for t in dag.roots] == ["a"]
    assert [t.task_id for t in dag.leaves] == ["b", "d"]
    assert a.downstream_task_ids == {"b", "c"}
    assert d.upstream_task_ids == {"c"}
    assert [t.task_id for t in a.downstream_list] == ["b", "c"]
    assert [t.task_id for t in d.upstream_list] == ["c"]
    assert a.get_flat_relative_ids() == {"b", "c", "d"}
    assert [t.task_id for t in d.get_flat_relatives(upstream=True)] == ["a", "c"]
    assert dag.has_task("a")
    assert not dag.has_task("z")
    with pytest.raises(KeyError, match="Task 'z' not found in DAG 'd'"):
        dag.get_task("z")


def test_topological_sort_is_stable_and_follows_definition_order() -> None:
    with DAG("d", schedule=None) as dag:
        late = EmptyOperator(task_id="late")
        early = EmptyOperator(task_id="early")
        mid = EmptyOperator(task_id="mid")
        early >> late
        mid >> late
    order = [t.task_id for t in dag.topological_sort()]
    assert order == ["early", "mid", "late"]
    assert [t.task_id for t in dag.topological_sort()] == order


def test_readme_example() -> None:
    with DAG("etl", schedule="@daily", start_date=datetime(2024, 1, 1)) as dag:
        extract = BashOperator(task_id="extract", bash_command="echo extract")
        transform = BashOperator(task_id="transform", bash_command="echo transform")
        load = BashOperator(task_id="load", bash_command="echo load")
        extract >> transform >> load
    assert [t.task_id for t in dag.topological_sort()] == ["extract", "transform", "load"]
    assert repr(dag) == "<DAG: etl>"
    assert repr(load) == "<Task(BashOperator): load>"


def test_capture_dags_collects_dags_entered_as_context_managers() -> None:
    with capture_dags() as found:
        with DAG("a", schedule=None) as a:
            pass
        with a:
            pass
        with DAG("hidden", schedule=None, auto_register=False):
            pass
        DAG("never_entered", schedule=None)
    assert found == [a]
    with DAG("after", schedule=None):
        pass
    assert found == [a]
