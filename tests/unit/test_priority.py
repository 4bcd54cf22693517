"""Priority weights: downstream / upstream / absolute totals as Airflow 2 computes them."""

from __future__ import annotations

import pytest

from tradewind.dag import DAG
from tradewind.errors import CycleError
from tradewind.operators import EmptyOperator
from tradewind.priority import (
    DB_SAFE_MAXIMUM,
    DB_SAFE_MINIMUM,
    db_safe_priority,
    priority_weight_totals,
)
from tradewind.serialization import dag_to_spec
from tradewind.weight_rule import WeightRule

DOWN, UP, ABS = WeightRule.DOWNSTREAM, WeightRule.UPSTREAM, WeightRule.ABSOLUTE


def _diamond(rule: WeightRule, weights: dict[str, int] | None = None) -> DAG:
    weights = weights or {}
    with DAG("d", schedule=None) as dag:
        a, b, c, d = (
            EmptyOperator(task_id=x, weight_rule=rule, priority_weight=weights.get(x, 1))
            for x in "abcd"
        )
        a >> [b, c] >> d
    return dag


def _totals(dag: DAG) -> dict[str, int]:
    return {t.task_id: t.priority_weight_total for t in dag.tasks}


def test_downstream_counts_each_descendant_once() -> None:
    # a reaches d through b and through c; Airflow counts d once (a set of relatives).
    assert _totals(_diamond(DOWN)) == {"a": 4, "b": 2, "c": 2, "d": 1}


def test_upstream_counts_each_ancestor_once() -> None:
    assert _totals(_diamond(UP)) == {"a": 1, "b": 2, "c": 2, "d": 4}


def test_absolute_is_the_own_weight() -> None:
    assert _totals(_diamond(ABS, {"a": 7})) == {"a": 7, "b": 1, "c": 1, "d": 1}


def test_weights_of_relatives_are_their_own_weights_whatever_their_rule() -> None:
    with DAG("d", schedule=None) as dag:
        a = EmptyOperator(task_id="a", priority_weight=1)
        b = EmptyOperator(task_id="b", priority_weight=10, weight_rule=ABS)
        c = EmptyOperator(task_id="c", priority_weight=100, weight_rule=UP)
        a >> b >> c
    assert _totals(dag) == {"a": 111, "b": 10, "c": 111}


def test_negative_weights_add_up() -> None:
    assert _totals(_diamond(DOWN, {"b": -5, "d": -1}))["a"] == 1 - 5 + 1 - 1


def test_task_without_dag_has_its_own_weight() -> None:
    assert EmptyOperator(task_id="t", priority_weight=3).priority_weight_total == 3


def test_totals_are_clamped_to_the_database_range_as_airflow_2_10() -> None:
    assert db_safe_priority(2**40) == DB_SAFE_MAXIMUM == 2**31 - 1
    assert db_safe_priority(-(2**40)) == DB_SAFE_MINIMUM == -(2**31)
    big = {"a": 2**31 - 1, "b": 2**31 - 1, "c": 1, "d": 1}
    assert _totals(_diamond(DOWN, big))["a"] == DB_SAFE_MAXIMUM
    assert _totals(_diamond(ABS, {"a": -(2**35)}))["a"] == DB_SAFE_MINIMUM


def test_bulk_computation_matches_the_per_task_property() -> None:
    for rule in (DOWN, UP, ABS):
        dag = _diamond(rule, {"a": 3, "b": 5, "c": 7, "d": 11})
        spec = dag_to_spec(dag)
        assert {tid: t.priority_weight_total for tid, t in spec.tasks.items()} == _totals(dag)


def test_many_distinct_weights_use_the_table_path() -> None:
    # More distinct weights than the mask path handles: a long chain with weights 1..40.
    nodes = [f"t{i}" for i in range(40)]
    downstream = {nodes[i]: [nodes[i + 1]] for i in range(39)}
    weights = {node: i + 1 for i, node in enumerate(nodes)}
    totals = priority_weight_totals(nodes, downstream, weights, dict.fromkeys(nodes, DOWN))
    assert totals["t0"] == sum(range(1, 41))
    assert totals["t39"] == 40
    ups = priority_weight_totals(nodes, downstream, weights, dict.fromkeys(nodes, UP))
    assert ups["t39"] == sum(range(1, 41))
    assert ups["t0"] == 1


def test_large_layered_graph_is_fast_enough_to_compute() -> None:
    # 30 layers of 30 tasks, each fully wired to the next: exponential paths, 900 nodes.
    layers = [[f"l{i}_{j}" for j in range(30)] for i in range(30)]
    nodes = [n for layer in layers for n in layer]
    downstream = {
        n: (layers[i + 1] if i + 1 < 30 else []) for i, layer in enumerate(layers) for n in layer
    }
    totals = priority_weight_totals(
        nodes, downstream, dict.fromkeys(nodes, 1), dict.fromkeys(nodes, DOWN)
    )
    assert totals["l0_0"] == 1 + 29 * 30
    assert totals["l29_5"] == 1


def test_cycle_is_refused() -> None:
    with pytest.raises(CycleError, match="'g': a >> b >> a"):
        priority_weight_totals(
            ["a", "b"],
            {"a": ["b"], "b": ["a"]},
            {"a": 1, "b": 1},
            {"a": DOWN, "b": DOWN},
            dag_id="g",
        )
