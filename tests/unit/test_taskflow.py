"""TaskFlow: @task, XComArg wiring, unique task ids, multiple_outputs, @task.branch,
@task.short_circuit, override() and @dag."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypedDict

import pytest

from tradewind.dag import DAG
from tradewind.errors import BadInputError, DagDefinitionError
from tradewind.operators import EmptyOperator, PythonOperator
from tradewind.serialization import dag_to_spec
from tradewind.spec import BranchKind
from tradewind.taskflow import dag, get_unique_task_id, split_multiple_outputs, task
from tradewind.xcomarg import XComArg


@task
def extract() -> dict[str, int]:
    return {"a": 1, "b": 2}


@task
def add(x: int, y: int = 0) -> int:
    return x + y


class Row(TypedDict):
    n: int


@task
def typed_row() -> Row:
    return {"n": 1}


@task
def untyped():  # type: ignore[no-untyped-def]
    return 1


def test_calling_a_task_inside_a_dag_creates_a_python_task_and_returns_an_xcomarg() -> None:
    with DAG("d", schedule=None) as d:
        out = add(1, y=2)
    assert isinstance(out, XComArg)
    op = d.get_task("add")
    assert out.operator is op
    assert isinstance(op, PythonOperator)
    assert (list(op.op_args), dict(op.op_kwargs)) == ([1], {"y": 2})
    assert op.operator_name == "@task"
    assert op.execute({}) == 3


def test_passing_an_xcomarg_wires_the_dependency() -> None:
    with DAG("d", schedule=None) as d:
        data = extract()
        total = add(data["a"], y=data["b"])
    assert d.get_task("add").upstream_task_ids == {"extract"}
    assert total.operator.op_args[0] == XComArg(data.operator, "a")


def test_calling_the_same_function_again_suffixes_the_task_id() -> None:
    with DAG("d", schedule=None) as d:
        add(1)
        add(2)
        add(3)
    assert d.task_ids == ["add", "add__1", "add__2"]


def test_unique_task_id_rules() -> None:
    d = DAG("d", schedule=None)
    assert get_unique_task_id("x", None) == "x"
    assert get_unique_task_id("x", d) == "x"
    for tid in ("x", "x__1", "x__4", "x.y__9"):
        EmptyOperator(task_id=tid, dag=d)
    assert get_unique_task_id("x", d) == "x__5"
    assert get_unique_task_id("x__1", d) == "x__5"
    assert get_unique_task_id("x.y", d) == "x.y"


def test_explicit_task_id_and_arguments() -> None:
    with DAG("d", schedule=None, default_args={"retries": 4}) as d:

        @task(task_id="custom", retries=2, queue="gpu")
        def work() -> None:
            return None

        work()
        work()
        add(1)
    custom = d.get_task("custom")
    assert (custom.retries, custom.queue) == (2, "gpu")
    assert d.task_ids == ["custom", "custom__1", "add"]
    assert d.get_task("add").retries == 4


def test_override_replaces_task_arguments() -> None:
    with DAG("d", schedule=None) as d:
        add.override(task_id="first", pool="small")(1)
    assert d.get_task("first").pool == "small"
    assert add.task_kwargs == {}


def test_xcomarg_supports_shift_operators() -> None:
    with DAG("d", schedule=None) as d:
        start = EmptyOperator(task_id="start")
        end = EmptyOperator(task_id="end")
        result = start >> add(1) >> end
        other = extract()
        [other] >> end
    assert result is end
    assert d.get_task("add").upstream_task_ids == {"start"}
    assert d.get_task("end").upstream_task_ids == {"add", "extract"}


def test_xcomarg_on_the_right_of_a_list() -> None:
    with DAG("d", schedule=None) as d:
        a, b = EmptyOperator(task_id="a"), EmptyOperator(task_id="b")
        out = [a, b] >> add(1)
        add(2) << a
    assert isinstance(out, XComArg)
    assert d.get_task("add").upstream_task_ids == {"a", "b"}
    assert d.get_task("add__1").upstream_task_ids == {"a"}


def test_multiple_outputs_is_inferred_from_a_mapping_return_annotation() -> None:
    with DAG("d", schedule=None) as d:
        extract()
        typed_row()
        add(1)
        untyped()
    flags = {t.task_id: t.multiple_outputs for t in d.tasks}
    assert flags == {"extract": True, "typed_row": True, "add": False, "untyped": False}


def test_multiple_outputs_can_be_set_explicitly() -> None:
    @task(multiple_outputs=False)
    def no_split() -> dict[str, int]:
        return {}

    assert no_split.multiple_outputs is False
    assert extract.override(multiple_outputs=False).multiple_outputs is False


def test_split_multiple_outputs() -> None:
    assert split_multiple_outputs({"a": 1}) == {"a": 1}
    assert split_multiple_outputs(None) == {}
    with pytest.raises(BadInputError, match="expected dictionary for multiple_outputs"):
        split_multiple_outputs([1])
    with pytest.raises(BadInputError, match="keys must be strings"):
        split_multiple_outputs({1: "a"})


def test_arguments_that_do_not_fit_the_function_fail_at_parse_time() -> None:
    with (
        DAG("d", schedule=None),
        pytest.raises(DagDefinitionError, match="cannot call task function add"),
    ):
        add(1, 2, 3)


def test_context_parameters_may_be_left_out_but_need_a_none_default() -> None:
    @task
    def uses_context(x: int, ti: Any, ds: str | None = None) -> int:
        return x

    with DAG("d", schedule=None) as d:
        uses_context(1)
    assert d.get_task("uses_context").execute({"ti": "TI", "ds": "D"}) == 1

    @task
    def bad_default(ds: str = "2024-01-01") -> None:
        return None

    with DAG("e", schedule=None), pytest.raises(DagDefinitionError) as info:
        bad_default()
    assert "context key parameter ds can't have a default other than None" in str(info.value)


def test_branch_and_short_circuit_decorators() -> None:
    @task.branch
    def choose() -> str:
        return "left"

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def gate() -> bool:
        return False

    with DAG("d", schedule=None) as d:
        choose() >> [EmptyOperator(task_id="left"), EmptyOperator(task_id="right")]
        gate()
    branch, short = d.get_task("choose"), d.get_task("gate")
    assert (branch.branching, branch.operator_name) == (BranchKind.BRANCH, "@task.branch")
    assert (short.branching, short.operator_name) == (
        BranchKind.SHORT_CIRCUIT,
        "@task.short_circuit",
    )
    assert getattr(short, "ignore_downstream_trigger_rules") is False  # noqa: B009
    assert branch.execute({}) == "left"


def test_task_python_is_task() -> None:
    @task.python(task_id="p")
    def f() -> int:
        return 1

    with DAG("d", schedule=None) as d:
        f()
    assert d.task_ids == ["p"]


def test_decorated_function_keeps_its_name_and_function() -> None:
    assert add.__name__ == "add"
    assert add.function(1, 2) == 3


def test_decorating_a_non_callable_is_refused() -> None:
    with pytest.raises(DagDefinitionError, match="@task needs a callable"):
        task.python(python_callable=None, task_id="x")(5)


def test_task_called_outside_a_dag_has_no_dag() -> None:
    out = add(1)
    assert out.operator.get_dag() is None


def test_serialized_taskflow_arguments_hold_xcom_references() -> None:
    with DAG("d", schedule=None) as d:
        data = extract()
        add(data["a"], y=data)
    fields = dag_to_spec(d).task("add").fields
    assert fields["op_args"] == [{"__xcomarg__": {"task_id": "extract", "key": "a"}}]
    assert fields["op_kwargs"] == {
        "y": {"__xcomarg__": {"task_id": "extract", "key": "return_value"}}
    }
    assert fields["multiple_outputs"] is False
    assert fields["python_callable"].endswith("add")


# -- @dag ----------------------------------------------------------------------------
def test_dag_decorator_builds_the_dag_from_the_function() -> None:
    @dag(schedule="@daily", start_date=datetime(2024, 1, 1), tags=["tf"])
    def pipeline(greeting: str = "hi") -> None:
        """Docs of the pipeline."""
        add(extract()["a"])

    built = pipeline()
    assert isinstance(built, DAG)
    assert built.dag_id == "pipeline"
    assert built.task_ids == ["extract", "add"]
    assert built.params == {"greeting": "hi"}
    assert built.doc_md == "Docs of the pipeline."
    assert built.fileloc == __file__
    assert built.tags == ("tf",)


def test_bare_dag_decorator_and_explicit_dag_id() -> None:
    @dag
    def bare() -> None:
        add(1)

    @dag("named", schedule=None)
    def other() -> None:
        add(1)

    assert bare().dag_id == "bare"
    assert other().dag_id == "named"


def test_decorators_module_offers_airflows_import_path() -> None:
    from tradewind import decorators

    assert decorators.task is task
    assert decorators.dag is dag
