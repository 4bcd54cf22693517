"""Random DAGs survive serialization: dag_to_spec output round-trips through dict and JSON,
hashes stably, and keeps tasks in topological order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from tradewind.baseoperator import BaseOperator
from tradewind.dag import DAG
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
from tradewind.spec import DagSpec
from tradewind.trigger_rule import TriggerRule
from tradewind.weight_rule import WeightRule

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
durations = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3000))
ids = st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True)


def _callable() -> None:
    return None


@st.composite
def task_arguments(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "retries": draw(st.integers(min_value=0, max_value=10)),
        "retry_delay": draw(durations),
        "retry_exponential_backoff": draw(st.booleans()),
        "max_retry_delay": draw(st.none() | durations),
        "execution_timeout": draw(st.none() | durations),
        "depends_on_past": draw(st.booleans()),
        "pool": draw(st.sampled_from(["default_pool", "io", "gpu"])),
        "pool_slots": draw(st.integers(min_value=1, max_value=4)),
        "priority_weight": draw(st.integers(min_value=-100, max_value=100)),
        "weight_rule": draw(st.sampled_from(list(WeightRule))),
        "trigger_rule": draw(st.sampled_from(list(TriggerRule))),
        "queue": draw(st.sampled_from(["default", "spark"])),
        "max_active_tis_per_dag": draw(st.none() | st.integers(min_value=1, max_value=5)),
        "do_xcom_push": draw(st.booleans()),
        "owner": draw(st.text(max_size=6)),
        "doc_md": draw(st.none() | st.text(max_size=10)),
    }


def _make_task(draw: st.DrawFn, task_id: str, earlier: list[BaseOperator]) -> BaseOperator:
    kind = draw(st.sampled_from(["empty", "bash", "python", "branch", "short"]))
    args = draw(task_arguments())
    if kind == "empty":
        return EmptyOperator(task_id=task_id, **args)
    if kind == "bash":
        env = draw(st.none() | st.dictionaries(st.text(max_size=4), json_values, max_size=3))
        return BashOperator(
            task_id=task_id, bash_command=draw(st.text(max_size=20)), env=env, **args
        )
    # Arguments may reference earlier tasks' XComs, which also wires them upstream.
    refs = [op.output for op in earlier] + [op.output["k"] for op in earlier]
    value = json_values | st.sampled_from(refs) if refs else json_values
    op_args = draw(st.lists(value, max_size=3))
    op_kwargs = draw(st.dictionaries(st.text(max_size=5), value, max_size=3))
    cls = {"python": PythonOperator, "branch": BranchPythonOperator, "short": ShortCircuitOperator}
    return cls[kind](
        task_id=task_id, python_callable=_callable, op_args=op_args, op_kwargs=op_kwargs, **args
    )


@st.composite
def random_dags(draw: st.DrawFn) -> DAG:
    zone = draw(st.sampled_from(["UTC", "Europe/Paris", "America/Chicago"]))
    start = draw(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 1, 1)))
    dag = DAG(
        draw(ids),
        schedule=draw(
            st.sampled_from([None, "@daily", "*/5 * * * *", "@once"])
            | st.timedeltas(min_value=timedelta(minutes=1), max_value=timedelta(days=30))
        ),
        start_date=start.replace(tzinfo=ZoneInfo(zone)),
        end_date=draw(st.none() | st.just(datetime(2031, 1, 1, tzinfo=UTC))),
        catchup=draw(st.booleans()),
        max_active_runs=draw(st.integers(min_value=1, max_value=32)),
        dagrun_timeout=draw(st.none() | durations),
        description=draw(st.none() | st.text(max_size=10)),
        tags=draw(st.lists(st.text(max_size=5), max_size=3)),
        params=draw(st.dictionaries(st.text(max_size=5), json_values, max_size=3)),
        is_paused_upon_creation=draw(st.none() | st.booleans()),
    )
    names = draw(st.lists(ids, min_size=1, max_size=10, unique=True))
    tasks: list[BaseOperator] = []
    with dag:
        for name in names:
            tasks.append(_make_task(draw, name, tasks))
    # Edges only from earlier to later tasks keep the graph acyclic.
    for i, later in enumerate(tasks):
        for earlier in draw(st.lists(st.sampled_from(tasks[:i]), max_size=3)) if i else []:
            earlier >> later
    return dag


def _assert_topological(spec: DagSpec) -> None:
    position = {tid: i for i, tid in enumerate(spec.tasks)}
    for tid, task in spec.tasks.items():
        for up in task.upstream_task_ids:
            assert position[up] < position[tid]
            assert tid in spec.tasks[up].downstream_task_ids


@settings(max_examples=150, deadline=None)
@given(random_dags())
def test_random_dags_round_trip(dag: DAG) -> None:
    spec = dag_to_spec(dag)
    assert spec_from_dict(spec_to_dict(spec)) == spec
    text = spec_to_json(spec)
    again = spec_from_json(text)
    assert again == spec
    assert spec_to_json(again) == text
    assert spec_hash(again) == spec_hash(spec)
    assert set(spec.tasks) == set(dag.task_ids)
    _assert_topological(spec)
