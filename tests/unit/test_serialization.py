"""dag_to_spec and the versioned JSON form of a DagSpec."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tradewind.dag import DAG
from tradewind.errors import CycleError, SerializationError
from tradewind.operators import (
    BashOperator,
    BranchPythonOperator,
    EmptyOperator,
    PythonOperator,
    ShortCircuitOperator,
)
from tradewind.serialization import (
    dag_to_spec,
    spec_from_dict,
    spec_from_json,
    spec_hash,
    spec_to_dict,
    spec_to_json,
)
from tradewind.spec import BranchKind, DagSpec, ScheduleKind, TaskKind
from tradewind.trigger_rule import TriggerRule
from tradewind.weight_rule import WeightRule

START = datetime(2024, 1, 1, tzinfo=ZoneInfo("Europe/Paris"))


def _choose() -> str:
    return "load"


def _build() -> DAG:
    with DAG(
        "etl",
        schedule="*/5 * * * *",
        start_date=START,
        end_date=datetime(2025, 1, 1, tzinfo=UTC),
        catchup=False,
        max_active_runs=2,
        max_active_tasks=8,
        dagrun_timeout=timedelta(hours=1),
        description="an example",
        tags=["a", "b"],
        params={"n": 1},
        is_paused_upon_creation=True,
        default_args={"retries": 2, "owner": "data"},
    ) as dag:
        start = EmptyOperator(task_id="start")
        extract = BashOperator(
            task_id="extract",
            bash_command="echo {{ ds }}",
            env={"A": "1"},
            skip_on_exit_code=[3, 99],
            pool="io",
            pool_slots=2,
            queue="etl",
            retry_delay=timedelta(seconds=1.5),
            execution_timeout=timedelta(minutes=10),
            doc_md="Extracts.",
        )
        choose = BranchPythonOperator(task_id="choose", python_callable=_choose)
        load = PythonOperator(
            task_id="load",
            python_callable=_choose,
            op_args=[1, (2, 3)],
            op_kwargs={"x": extract.output, "y": None},
            params={"n": 2},
            trigger_rule="none_failed_min_one_success",
            weight_rule="upstream",
            priority_weight=5,
        )
        gate = ShortCircuitOperator(
            task_id="gate", python_callable=_choose, ignore_downstream_trigger_rules=False
        )
        start >> extract >> choose >> [load, gate]
    return dag


def test_dag_level_fields() -> None:
    spec = dag_to_spec(_build())
    assert (spec.dag_id, spec.fileloc) == ("etl", __file__)
    assert spec.schedule.kind is ScheduleKind.CRON
    assert spec.schedule.expression == "*/5 * * * *"
    assert spec.start_date == datetime(2023, 12, 31, 23, tzinfo=UTC)
    assert spec.end_date == datetime(2025, 1, 1, tzinfo=UTC)
    assert spec.timezone == "Europe/Paris"
    assert (spec.catchup, spec.max_active_runs, spec.max_active_tasks) == (False, 2, 8)
    assert spec.dagrun_timeout == timedelta(hours=1)
    assert (spec.description, spec.tags, spec.params) == ("an example", ("a", "b"), {"n": 1})
    assert spec.is_paused_upon_creation is True


def test_tasks_are_in_topological_order_with_sorted_edges() -> None:
    spec = dag_to_spec(_build())
    assert list(spec.tasks) == ["start", "extract", "choose", "load", "gate"]
    assert spec.task("choose").downstream_task_ids == ("gate", "load")
    assert spec.task("load").upstream_task_ids == ("choose", "extract")  # XComArg edge too
    assert spec.roots == ("start",)
    assert spec.leaves == ("load", "gate")


def test_task_kinds_operators_and_branching() -> None:
    spec = dag_to_spec(_build())
    kinds = {tid: (t.kind, t.operator, t.branching) for tid, t in spec.tasks.items()}
    assert kinds == {
        "start": (TaskKind.EMPTY, "EmptyOperator", None),
        "extract": (TaskKind.BASH, "BashOperator", None),
        "choose": (TaskKind.CALLABLE, "BranchPythonOperator", BranchKind.BRANCH),
        "load": (TaskKind.CALLABLE, "PythonOperator", None),
        "gate": (TaskKind.CALLABLE, "ShortCircuitOperator", BranchKind.SHORT_CIRCUIT),
    }
    assert spec.task("gate").ignore_downstream_trigger_rules is False
    assert spec.task("choose").ignore_downstream_trigger_rules is True


def test_task_arguments() -> None:
    extract = dag_to_spec(_build()).task("extract")
    assert (extract.retries, extract.owner, extract.pool, extract.pool_slots) == (
        2,
        "data",
        "io",
        2,
    )
    assert (extract.queue, extract.doc) == ("etl", "Extracts.")
    assert extract.retry_delay == timedelta(seconds=1.5)
    assert extract.execution_timeout == timedelta(minutes=10)
    assert extract.template_fields == ("bash_command", "env", "cwd")
    assert extract.fields == {
        "bash_command": "echo {{ ds }}",
        "env": {"A": "1"},
        "append_env": False,
        "cwd": None,
        "output_encoding": "utf-8",
        "skip_on_exit_code": [3, 99],
    }


def test_callable_fields_hold_names_and_xcom_references() -> None:
    load = dag_to_spec(_build()).task("load")
    assert load.fields == {
        "python_callable": f"{__name__}._choose",
        "op_args": [1, [2, 3]],
        "op_kwargs": {
            "x": {"__xcomarg__": {"task_id": "extract", "key": "return_value"}},
            "y": None,
        },
        "templates_dict": None,
        "show_return_value_in_logs": True,
        "params": {"n": 2},  # differs from the DAG's: the worker renders with these
    }
    assert (load.trigger_rule, load.weight_rule) == (
        TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
        WeightRule.UPSTREAM,
    )
    assert "params" not in dag_to_spec(_build()).task("choose").fields


def test_priority_weight_totals_are_computed() -> None:
    totals = {tid: t.priority_weight_total for tid, t in dag_to_spec(_build()).tasks.items()}
    # load is upstream-weighted: 5 + start + extract + choose.
    assert totals == {"start": 9, "extract": 8, "choose": 7, "load": 8, "gate": 1}


def test_cycle_is_found_when_serializing() -> None:
    with DAG("d", schedule=None) as dag:
        a, b = EmptyOperator(task_id="a"), EmptyOperator(task_id="b")
        a >> b >> a
    with pytest.raises(CycleError, match="a >> b >> a"):
        dag_to_spec(dag)


def test_argument_that_is_not_json_names_the_task_and_field() -> None:
    with DAG("d", schedule=None) as dag:
        PythonOperator(
            task_id="p", python_callable=_choose, op_kwargs={"when": datetime(2024, 1, 1)}
        )
    with pytest.raises(SerializationError) as info:
        dag_to_spec(dag)
    message = str(info.value)
    assert "task 'p' of DAG 'd'" in message
    assert "argument 'op_kwargs'" in message
    assert "datetime" in message


@pytest.mark.parametrize("bad", [{1: "int key"}, float("nan"), {1, 2}, object()])
def test_non_json_values_are_refused(bad: Any) -> None:
    with DAG("d", schedule=None) as dag:
        BashOperator(task_id="b", bash_command="x", env={"X": bad})
    with pytest.raises(SerializationError, match="task 'b' of DAG 'd': argument 'env'"):
        dag_to_spec(dag)


def test_dag_params_that_are_not_json_are_refused() -> None:
    dag = DAG("d", schedule=None, params={"when": datetime(2024, 1, 1)})
    with pytest.raises(SerializationError, match=r"DAG 'd'.*params"):
        dag_to_spec(dag)


def test_start_date_from_default_args_comes_through_the_tasks() -> None:
    with DAG("d", schedule="@daily", default_args={"start_date": datetime(2024, 5, 1)}) as dag:
        EmptyOperator(task_id="late", start_date=datetime(2024, 6, 1))
        EmptyOperator(task_id="early")
    spec = dag_to_spec(dag)
    assert spec.start_date == datetime(2024, 5, 1, tzinfo=UTC)
    assert spec.end_date is None


def test_end_date_from_tasks_only_when_every_task_has_one() -> None:
    with DAG("d", schedule=None) as dag:
        EmptyOperator(task_id="a", end_date=datetime(2024, 2, 1))
        EmptyOperator(task_id="b", end_date=datetime(2024, 3, 1))
    assert dag_to_spec(dag).end_date == datetime(2024, 3, 1, tzinfo=UTC)
    EmptyOperator(task_id="c", dag=dag)
    assert dag_to_spec(dag).end_date is None


def test_spec_does_not_share_params_with_the_dag() -> None:
    dag = DAG("d", schedule=None, params={"xs": [1]})
    spec = dag_to_spec(dag)
    dag.params["xs"].append(2)
    assert spec.params == {"xs": [1]}


# -- JSON -------------------------------------------------------------------------------
def test_round_trip_through_dict_and_json() -> None:
    spec = dag_to_spec(_build())
    assert spec_from_dict(spec_to_dict(spec)) == spec
    assert spec_from_json(spec_to_json(spec)) == spec
    assert list(spec_from_json(spec_to_json(spec)).tasks) == list(spec.tasks)


def test_dict_form_is_versioned_and_readable() -> None:
    data = spec_to_dict(dag_to_spec(_build()))
    assert data["__version"] == 1
    dag = data["dag"]
    assert dag["start_date"] == "2023-12-31T23:00:00+00:00"
    assert dag["dagrun_timeout"] == 3600
    assert dag["schedule"] == {
        "kind": "cron",
        "label": "*/5 * * * *",
        "expression": "*/5 * * * *",
        "delta": None,
    }
    assert [t["task_id"] for t in dag["tasks"]] == ["start", "extract", "choose", "load", "gate"]
    assert dag["tasks"][1]["retry_delay"] == 1.5
    assert dag["tasks"][0]["trigger_rule"] == "all_success"


def test_json_is_canonical_and_the_hash_is_stable() -> None:
    first, second = dag_to_spec(_build()), dag_to_spec(_build())
    text = spec_to_json(first)
    assert text == spec_to_json(second)
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    assert text.startswith('{"__version":1,"dag":{"catchup":false,')
    digest = spec_hash(first)
    assert digest == spec_hash(second)
    assert len(digest) == 64
    assert int(digest, 16) >= 0


def test_hash_changes_with_the_dag() -> None:
    base = spec_hash(dag_to_spec(_build()))
    other = _build()
    other.get_task("extract").retries = 7
    assert spec_hash(dag_to_spec(other)) != base


def _valid() -> dict[str, Any]:
    return spec_to_dict(dag_to_spec(_build()))


def _task(data: dict[str, Any], index: int = 0) -> dict[str, Any]:
    task: dict[str, Any] = data["dag"]["tasks"][index]
    return task


@pytest.mark.parametrize("version", [None, 0, 2, "1", True])
def test_unknown_version_is_refused(version: Any) -> None:
    data = _valid()
    if version is None:
        del data["__version"]
    else:
        data["__version"] = version
    with pytest.raises(SerializationError, match="unsupported serialized DAG version"):
        spec_from_dict(data)


def test_not_an_object_is_refused() -> None:
    with pytest.raises(SerializationError, match="must be a JSON object, got list"):
        spec_from_dict([])
    with pytest.raises(SerializationError, match="not valid JSON"):
        spec_from_json("{")


def test_top_level_keys_are_checked() -> None:
    data = _valid()
    data["extra"] = 1
    with pytest.raises(SerializationError, match="exactly the keys '__version' and 'dag'"):
        spec_from_dict(data)


def _shape_error(mutate: Any) -> str:
    data = _valid()
    mutate(data)
    with pytest.raises(SerializationError) as info:
        spec_from_dict(data)
    return str(info.value)


def test_shape_errors_say_where() -> None:
    assert _shape_error(lambda d: _task(d).update(retries="3")) == (
        "serialized DAG: 'etl'.tasks[0].retries: expected an integer, got str: '3'"
    )
    assert "expected an integer, got bool" in _shape_error(
        lambda d: _task(d).update(pool_slots=True)
    )
    assert "unknown keys ['colour'] for TaskSpec" in _shape_error(
        lambda d: _task(d).update(colour=1)
    )
    assert "missing required key 'task_id'" in _shape_error(lambda d: _task(d).pop("task_id"))
    assert "unknown TriggerRule 'sometimes'" in _shape_error(
        lambda d: _task(d).update(trigger_rule="sometimes")
    )
    assert "has no UTC offset" in _shape_error(
        lambda d: d["dag"].update(start_date="2024-01-01T00:00:00")
    )
    assert "not an ISO 8601 datetime" in _shape_error(lambda d: d["dag"].update(end_date="soon"))
    assert "expected a list of tasks" in _shape_error(lambda d: d["dag"].update(tasks={}))
    assert "task_id 'start' appears twice" in _shape_error(
        lambda d: d["dag"]["tasks"].append(dict(_task(d)))
    )
    assert "expected a list of strings" in _shape_error(lambda d: d["dag"].update(tags="a"))
    assert "expected a number of seconds" in _shape_error(
        lambda d: _task(d).update(retry_delay="300")
    )
    assert "expected an object" in _shape_error(lambda d: d["dag"].update(schedule="@daily"))
    assert "is not a finite number" in _shape_error(
        lambda d: _task(d).update(fields={"x": float("inf")})
    )


def test_optional_keys_may_be_missing_and_take_their_defaults() -> None:
    data = _valid()
    del _task(data)["max_active_tis_per_dag"]
    del data["dag"]["tags"]
    spec = spec_from_dict(data)
    assert spec.task("start").max_active_tis_per_dag is None
    assert spec.tags == ()


def test_sub_second_timedeltas_round_trip_exactly() -> None:
    spec = dag_to_spec(DAG("d", schedule=timedelta(seconds=1, microseconds=7), start_date=START))
    assert spec_from_json(spec_to_json(spec)) == spec
    assert spec_from_json(spec_to_json(spec)).schedule.delta == timedelta(seconds=1, microseconds=7)


def test_timedelta_that_seconds_cannot_hold_exactly_is_refused() -> None:
    spec = dag_to_spec(
        DAG("d", schedule=timedelta(days=900_000_000, microseconds=1), start_date=START)
    )
    with pytest.raises(SerializationError, match="cannot be stored exactly as seconds"):
        spec_to_json(spec)


def test_encoding_a_hand_built_spec_checks_it() -> None:
    spec = DagSpec(
        dag_id="d",
        fileloc="f.py",
        schedule=dag_to_spec(DAG("x", schedule=None)).schedule,
        params={"when": datetime(2024, 1, 1)},
    )
    with pytest.raises(SerializationError, match=r"'d'\.params"):
        spec_to_dict(spec)
