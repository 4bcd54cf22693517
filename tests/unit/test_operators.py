"""Operators: BaseOperator argument validation, Bash/Python/Branch/ShortCircuit/Empty, the
pure helpers the worker uses (determine_kwargs, branch results, XComArg resolution)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest

from tradewind.baseoperator import BaseOperator
from tradewind.dag import DAG
from tradewind.errors import BadInputError, DagDefinitionError, InvalidTriggerRuleError
from tradewind.operators import (
    BashOperator,
    BranchPythonOperator,
    DummyOperator,
    EmptyOperator,
    PythonOperator,
    ShortCircuitOperator,
    determine_kwargs,
)
from tradewind.operators.bash import exit_codes_to_skip
from tradewind.operators.python import KNOWN_CONTEXT_KEYS, callable_name, parse_branch_result
from tradewind.spec import BranchKind, TaskKind
from tradewind.trigger_rule import TriggerRule
from tradewind.weight_rule import WeightRule
from tradewind.xcomarg import XCOMARG_MARKER, XComArg, resolve_xcomargs


def _noop() -> None:
    return None


# -- BaseOperator arguments ---------------------------------------------------------------
def test_base_operator_defaults_match_airflow() -> None:
    op = BaseOperator(task_id="t")
    assert (op.retries, op.retry_delay, op.retry_exponential_backoff) == (
        0,
        timedelta(seconds=300),
        False,
    )
    assert (op.pool, op.pool_slots, op.queue, op.priority_weight) == (
        "default_pool",
        1,
        "default",
        1,
    )
    assert (op.trigger_rule, op.weight_rule) == (TriggerRule.ALL_SUCCESS, WeightRule.DOWNSTREAM)
    assert (op.execution_timeout, op.max_retry_delay, op.max_active_tis_per_dag) == (None,) * 3
    assert (op.depends_on_past, op.do_xcom_push, op.owner) == (False, True, "tradewind")
    assert op.task_kind is TaskKind.CALLABLE


def test_positional_arguments_are_refused() -> None:
    with pytest.raises(DagDefinitionError, match="Use keyword arguments when initializing"):
        BashOperator("t", "echo")  # type: ignore[misc]


def test_unknown_arguments_are_refused_naming_the_task() -> None:
    with pytest.raises(DagDefinitionError) as info:
        BashOperator(task_id="t", bash_command="x", colour="red")
    assert str(info.value) == (
        "Invalid arguments were passed to BashOperator (task_id: t). Invalid arguments were: colour"
    )


def test_airflow_arguments_without_effect_are_accepted_and_kept() -> None:
    def callback(context: Mapping[str, Any]) -> None:
        return None

    op = EmptyOperator(task_id="t", email=["a@b.c"], on_failure_callback=callback, sla=None)
    assert getattr(op, "email") == ["a@b.c"]  # noqa: B009 - not a declared attribute
    assert getattr(op, "on_failure_callback") is callback  # noqa: B009


def test_task_groups_are_not_supported() -> None:
    with pytest.raises(DagDefinitionError, match="TaskGroup is not supported"):
        EmptyOperator(task_id="t", task_group=object())


@pytest.mark.parametrize(("given", "expected"), [(3, 3), ("4", 4), (None, 0), (2.0, 2)])
def test_retries_are_converted_like_airflow(given: Any, expected: int) -> None:
    assert BaseOperator(task_id="t", retries=given).retries == expected


def test_retries_that_are_not_numbers_are_refused() -> None:
    with pytest.raises(DagDefinitionError, match="'retries' type must be int, not str"):
        BaseOperator(task_id="t", retries="many")


def test_retry_delays_accept_seconds() -> None:
    op = BaseOperator(task_id="t", retry_delay=30, max_retry_delay=600.5)
    assert (op.retry_delay, op.max_retry_delay) == (
        timedelta(seconds=30),
        timedelta(seconds=600.5),
    )
    with pytest.raises(DagDefinitionError, match="retry_delay must be a timedelta or a number"):
        BaseOperator(task_id="t", retry_delay="5m")  # type: ignore[arg-type]


def test_execution_timeout_must_be_a_timedelta() -> None:
    with pytest.raises(DagDefinitionError, match="execution_timeout must be timedelta object"):
        BaseOperator(task_id="t", execution_timeout=60)  # type: ignore[arg-type]


@pytest.mark.parametrize("slots", [0, -1, 1.5, True])
def test_pool_slots_must_be_a_positive_int(slots: Any) -> None:
    with pytest.raises(DagDefinitionError, match="pool slots for t cannot be less than 1"):
        BaseOperator(task_id="t", pool_slots=slots)


def test_priority_weight_must_be_an_int() -> None:
    with pytest.raises(DagDefinitionError) as info:
        BaseOperator(task_id="t", priority_weight=1.5)  # type: ignore[arg-type]
    assert "`priority_weight` for task 't' only accepts integers" in str(info.value)


def test_weight_rule_is_validated() -> None:
    assert BaseOperator(task_id="t", weight_rule="upstream").weight_rule is WeightRule.UPSTREAM
    with pytest.raises(DagDefinitionError, match="unknown weight_rule 'sideways'"):
        BaseOperator(task_id="t", weight_rule="sideways")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("all_done", TriggerRule.ALL_DONE),
        (TriggerRule.ONE_FAILED, TriggerRule.ONE_FAILED),
        ("dummy", TriggerRule.ALWAYS),
        ("none_failed_or_skipped", TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS),
    ],
)
def test_trigger_rules_and_their_old_names(given: Any, expected: TriggerRule) -> None:
    assert BaseOperator(task_id="t", trigger_rule=given).trigger_rule is expected


def test_unknown_trigger_rule_is_refused() -> None:
    with pytest.raises(InvalidTriggerRuleError, match="unknown trigger rule 'sometimes'"):
        BaseOperator(task_id="t", trigger_rule="sometimes")


def test_wait_for_downstream_forces_depends_on_past() -> None:
    assert BaseOperator(task_id="t", wait_for_downstream=True).depends_on_past is True


def test_task_concurrency_is_the_old_name_of_max_active_tis_per_dag() -> None:
    assert BaseOperator(task_id="t", task_concurrency=2).max_active_tis_per_dag == 2
    with pytest.raises(DagDefinitionError, match="max_active_tis_per_dag must be an int"):
        BaseOperator(task_id="t", max_active_tis_per_dag="2")  # type: ignore[arg-type]


def test_task_dates_are_coerced_to_utc() -> None:
    op = BaseOperator(task_id="t", start_date="2024-01-02", end_date=datetime(2024, 2, 1))
    assert (op.start_date, op.end_date) == (
        datetime(2024, 1, 2, tzinfo=UTC),
        datetime(2024, 2, 1, tzinfo=UTC),
    )


def test_execute_of_the_base_class_is_not_implemented() -> None:
    with pytest.raises(NotImplementedError, match="BaseOperator does not implement execute"):
        BaseOperator(task_id="t").execute({})


def test_a_string_template_fields_is_wrapped() -> None:
    class Custom(BaseOperator):
        template_fields: ClassVar[Any] = "query"

        def __init__(self, *, query: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.query = query

    assert Custom(task_id="t", query="q").template_fields == ("query",)


def test_custom_operator_gets_default_args_for_its_own_arguments() -> None:
    class Custom(BaseOperator):
        def __init__(self, *, query: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.query = query

    with DAG("d", schedule=None, default_args={"query": "select 1", "retries": 2}):
        op = Custom(task_id="t")
    assert (op.query, op.retries) == ("select 1", 2)


# -- BashOperator ------------------------------------------------------------------------
def test_bash_operator_arguments_and_template_fields() -> None:
    op = BashOperator(task_id="t", bash_command="echo $X", env={"X": "1"}, cwd="/tmp")
    assert op.template_fields == ("bash_command", "env", "cwd")
    assert op.template_ext == (".sh", ".bash")
    assert (op.append_env, op.skip_on_exit_code, op.output_encoding) == (False, 99, "utf-8")
    assert op.task_kind is TaskKind.BASH


def test_bash_skip_exit_codes() -> None:
    assert exit_codes_to_skip(99) == [99]
    assert exit_codes_to_skip([100, 99, 100]) == [99, 100]
    assert exit_codes_to_skip(None) == []
    assert BashOperator(task_id="t", bash_command="x", skip_exit_code=7).skip_on_exit_code == 7
    with pytest.raises(DagDefinitionError, match="skip_on_exit_code must hold ints"):
        BashOperator(task_id="t", bash_command="x", skip_on_exit_code=["1"])  # type: ignore[list-item]


def test_bash_execute_explains_it_runs_on_the_worker() -> None:
    with pytest.raises(NotImplementedError, match="runs on the worker agent"):
        BashOperator(task_id="t", bash_command="true").execute({})


def test_bash_subclass_with_its_own_execute_is_a_callable_task() -> None:
    class Custom(BashOperator):
        def execute(self, context: Mapping[str, Any]) -> Any:
            return "done"

    assert Custom(task_id="t", bash_command="x").task_kind is TaskKind.CALLABLE


def test_bash_command_is_required() -> None:
    with pytest.raises(TypeError, match="bash_command"):
        BashOperator(task_id="t")


# -- EmptyOperator -----------------------------------------------------------------------
def test_empty_operator_needs_no_worker() -> None:
    assert EmptyOperator(task_id="t").task_kind is TaskKind.EMPTY
    assert EmptyOperator(task_id="t").execute({}) is None
    assert DummyOperator(task_id="t").task_kind is TaskKind.EMPTY


def test_empty_subclass_with_its_own_execute_is_a_callable_task() -> None:
    class Custom(EmptyOperator):
        def execute(self, context: Mapping[str, Any]) -> None:
            return None

    assert Custom(task_id="t").task_kind is TaskKind.CALLABLE


# -- PythonOperator and friends --------------------------------------------------------
def test_python_operator_calls_the_callable_with_args_and_requested_context() -> None:
    def add(x: int, y: int, ds: str | None = None) -> tuple[int, str | None]:
        return x + y, ds

    op = PythonOperator(task_id="t", python_callable=add, op_args=[1], op_kwargs={"y": 2})
    assert op.template_fields == ("templates_dict", "op_args", "op_kwargs")
    assert op.execute({"ds": "2024-01-01", "run_id": "r"}) == (3, "2024-01-01")


def test_python_operator_passes_the_whole_context_to_kwargs() -> None:
    def grab(**kwargs: Any) -> dict[str, Any]:
        return kwargs

    op = PythonOperator(task_id="t", python_callable=grab, templates_dict={"q": "x"})
    result = op.execute({"ds": "d"})
    assert result == {"ds": "d", "templates_dict": {"q": "x"}}


def test_python_callable_must_be_callable() -> None:
    with pytest.raises(DagDefinitionError, match="`python_callable` param must be callable"):
        PythonOperator(task_id="t", python_callable="print")  # type: ignore[arg-type]


def test_provide_context_from_airflow_1_is_ignored() -> None:
    assert PythonOperator(task_id="t", python_callable=_noop, provide_context=True).op_args == ()


def test_determine_kwargs_only_gives_declared_names() -> None:
    def f(a: int, ti: object = None) -> None:
        return None

    context = {"ti": "TI", "ds": "D"}
    assert determine_kwargs(f, [], {"a": 1}, context) == {"a": 1, "ti": "TI"}


def test_op_kwargs_win_over_context_keys() -> None:
    def f(ds: str) -> None:
        return None

    assert determine_kwargs(f, [], {"ds": "mine"}, {"ds": "ctx"}) == {"ds": "mine"}


def test_positional_arg_shadowing_a_context_key_is_refused_as_airflow() -> None:
    def f(ds: str) -> None:
        return None

    with pytest.raises(DagDefinitionError) as info:
        determine_kwargs(f, ["x"], {}, {"ds": "ctx"})
    assert str(info.value) == "The key 'ds' in args is a part of kwargs and therefore reserved."


def test_known_context_keys_cover_the_common_ones() -> None:
    assert {"ds", "ti", "params", "logical_date", "dag_run"} <= KNOWN_CONTEXT_KEYS


def test_callable_name_is_the_qualified_name() -> None:
    assert callable_name(_noop) == f"{__name__}._noop"


def test_branch_and_short_circuit_operators_declare_their_branching() -> None:
    branch = BranchPythonOperator(task_id="b", python_callable=lambda: "x")
    short = ShortCircuitOperator(task_id="s", python_callable=lambda: False)
    assert (branch.branching, short.branching) == (BranchKind.BRANCH, BranchKind.SHORT_CIRCUIT)
    assert short.ignore_downstream_trigger_rules is True
    assert branch.execute({}) == "x"
    assert short.execute({}) is False
    assert PythonOperator(task_id="p", python_callable=_noop).branching is None


def test_short_circuit_can_respect_downstream_trigger_rules() -> None:
    short = ShortCircuitOperator(
        task_id="s", python_callable=_noop, ignore_downstream_trigger_rules=False
    )
    assert short.ignore_downstream_trigger_rules is False


def test_parse_branch_result() -> None:
    assert parse_branch_result("a") == frozenset({"a"})
    assert parse_branch_result(["a", "b"], {"a", "b", "c"}) == frozenset({"a", "b"})
    assert parse_branch_result(None) == frozenset()
    with pytest.raises(BadInputError, match="Invalid tasks found: \\['z'\\]"):
        parse_branch_result(["a", "z"], {"a"})
    with pytest.raises(BadInputError, match="expected all task IDs are strings"):
        parse_branch_result(["a", 1])
    with pytest.raises(BadInputError, match="must be either None, a task ID, or an Iterable"):
        parse_branch_result(3)


# -- XComArgs in operator arguments -----------------------------------------------------
def test_xcomarg_in_a_template_field_wires_the_dependency() -> None:
    with DAG("d", schedule=None):
        producer = BashOperator(task_id="p", bash_command="echo 1")
        consumer = PythonOperator(
            task_id="c", python_callable=_noop, op_kwargs={"x": [producer.output]}
        )
    assert consumer.upstream_task_ids == {"p"}


def test_assigning_an_xcomarg_after_construction_wires_it_too() -> None:
    with DAG("d", schedule=None):
        producer = EmptyOperator(task_id="p")
        consumer = BashOperator(task_id="c", bash_command="true")
    consumer.env = {"X": producer.output}
    assert consumer.upstream_task_ids == {"p"}


def test_xcomarg_outside_template_fields_does_not_wire() -> None:
    with DAG("d", schedule=None):
        producer = EmptyOperator(task_id="p")
        consumer = EmptyOperator(task_id="c", doc=str(producer.output))
    assert consumer.upstream_task_ids == set()


def test_resolve_xcomargs_replaces_objects_and_json_references() -> None:
    with DAG("d", schedule=None):
        producer = EmptyOperator(task_id="p")
    store = {("p", "return_value"): 1, ("p", "k"): 2}

    def pull(task_id: str, key: str) -> Any:
        return store[(task_id, key)]

    value = {
        "direct": XComArg(producer),
        "keyed": (producer.output["k"],),
        "json": [{XCOMARG_MARKER: {"task_id": "p", "key": "k"}}],
        "plain": {"__xcomarg__": "not a reference", "other": 1},
    }
    assert resolve_xcomargs(value, pull) == {
        "direct": 1,
        "keyed": (2,),
        "json": [2],
        "plain": {"__xcomarg__": "not a reference", "other": 1},
    }


def test_operator_resolves_its_template_fields_before_execute() -> None:
    def add(x: int, y: int) -> int:
        return x + y

    with DAG("d", schedule=None):
        producer = EmptyOperator(task_id="p")
        consumer = PythonOperator(
            task_id="c", python_callable=add, op_args=[producer.output], op_kwargs={"y": 5}
        )
    consumer.resolve_xcomargs(lambda task_id, key: 10)
    assert consumer.execute({}) == 15


def test_xcomarg_behaves_like_a_reference() -> None:
    op = EmptyOperator(task_id="p")
    assert op.output == XComArg(op)
    assert op.output["k"] != op.output
    assert op.output["k"].key == "k"
    assert op.output.task_id == "p"
    assert op.output.to_reference() == {XCOMARG_MARKER: {"task_id": "p", "key": "return_value"}}
    with pytest.raises(DagDefinitionError, match="only supports str lookup"):
        op.output[0]  # type: ignore[index]
    with pytest.raises(TypeError, match="cannot be iterated"):
        list(op.output)


@pytest.mark.parametrize("name", ["owner", "queue", "pool"])
def test_names_must_be_strings(name: str) -> None:
    with pytest.raises(DagDefinitionError, match=f"task 't': {name} must be a string, got int"):
        BaseOperator(task_id="t", **{name: 1})


def test_dag_argument_must_be_a_dag() -> None:
    with pytest.raises(DagDefinitionError, match="Expected DAG; received str"):
        BaseOperator(task_id="t", dag="d")  # type: ignore[arg-type]
