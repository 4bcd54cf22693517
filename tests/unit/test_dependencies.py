"""Dependencies: >>, <<, lists, set_upstream/set_downstream, chain, cross_downstream, cycles,
and tasks of different DAGs."""

from __future__ import annotations

import pytest

from tradewind.dag import DAG
from tradewind.errors import CycleError, DagDefinitionError, DuplicateTaskIdError
from tradewind.graph import find_cycle, topological_order
from tradewind.operators import EmptyOperator
from tradewind.relations import chain, cross_downstream


def _tasks(dag: DAG, names: str) -> list[EmptyOperator]:
    return [EmptyOperator(task_id=name, dag=dag) for name in names]


def _edges(dag: DAG) -> set[tuple[str, str]]:
    return {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids}


def test_shift_operators_return_their_right_operand() -> None:
    dag = DAG("d", schedule=None)
    a, b, c = _tasks(dag, "abc")
    assert (a >> b) is b
    assert (c << b) is b
    assert _edges(dag) == {("a", "b"), ("b", "c")}


def test_edges_are_recorded_on_both_ends() -> None:
    dag = DAG("d", schedule=None)
    a, b = _tasks(dag, "ab")
    a.set_downstream(b)
    assert (a.downstream_task_ids, b.upstream_task_ids) == ({"b"}, {"a"})
    assert (a.upstream_task_ids, b.downstream_task_ids) == (set(), set())


def test_lists_on_either_side() -> None:
    dag = DAG("d", schedule=None)
    a, b, c, d, e = _tasks(dag, "abcde")
    result = a >> [b, c]
    assert result == [b, c]
    assert ([b, c] >> d) is d  # list.__rshift__ does not exist: d.__rrshift__ runs
    assert ([d] << e) is e
    assert _edges(dag) == {("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("e", "d")}


def test_set_upstream_and_downstream_take_lists() -> None:
    dag = DAG("d", schedule=None)
    a, b, c = _tasks(dag, "abc")
    c.set_upstream([a, b])
    assert c.upstream_task_ids == {"a", "b"}
    a.set_downstream(b)
    assert a.downstream_task_ids == {"b", "c"}


def test_wiring_is_idempotent() -> None:
    dag = DAG("d", schedule=None)
    a, b = _tasks(dag, "ab")
    a >> b
    a >> b
    b << a
    assert _edges(dag) == {("a", "b")}


def test_wiring_to_a_non_task_is_rejected() -> None:
    dag = DAG("d", schedule=None)
    (a,) = _tasks(dag, "a")
    with pytest.raises(DagDefinitionError, match="only be set between operators; received int"):
        a >> 5
    with pytest.raises(DagDefinitionError, match="received str: 'b'"):
        a.set_downstream(["b"])


def test_task_without_dag_joins_the_dag_of_the_task_it_is_wired_to() -> None:
    dag = DAG("d", schedule=None)
    (a,) = _tasks(dag, "a")
    loose = EmptyOperator(task_id="loose")
    a >> loose
    assert loose.dag is dag
    other = EmptyOperator(task_id="other")
    other >> a
    assert dag.task_ids == ["a", "loose", "other"]


def test_adoption_still_rejects_a_duplicate_id() -> None:
    dag = DAG("d", schedule=None)
    (a,) = _tasks(dag, "a")
    with pytest.raises(DuplicateTaskIdError, match="Task id 'a' has already been added"):
        a >> EmptyOperator(task_id="a")


def test_two_tasks_without_dags_cannot_be_wired() -> None:
    a, b = EmptyOperator(task_id="a"), EmptyOperator(task_id="b")
    with pytest.raises(DagDefinitionError) as info:
        a >> b
    assert "don't have DAGs yet" in str(info.value)
    assert "'a', 'b'" in str(info.value)


def test_tasks_of_different_dags_cannot_be_wired_and_the_error_names_them() -> None:
    (a,) = _tasks(DAG("first", schedule=None), "a")
    (b,) = _tasks(DAG("second", schedule=None), "b")
    with pytest.raises(DagDefinitionError) as info:
        a >> b
    message = str(info.value)
    assert "more than one DAG" in message
    assert "'a' (DAG 'first')" in message
    assert "'b' (DAG 'second')" in message
    assert (a.downstream_task_ids, b.upstream_task_ids) == (set(), set())


# -- chain and cross_downstream ---------------------------------------------------------
def test_chain_links_tasks_in_sequence() -> None:
    dag = DAG("d", schedule=None)
    a, b, c = _tasks(dag, "abc")
    chain(a, b, c)
    assert _edges(dag) == {("a", "b"), ("b", "c")}


def test_chain_fans_a_task_out_to_a_list_and_pairs_equal_lists() -> None:
    dag = DAG("d", schedule=None)
    a, b1, b2, c1, c2, d = _tasks(dag, "abBcCd")
    chain(a, [b1, b2], [c1, c2], d)
    assert _edges(dag) == {
        ("a", "b"),
        ("a", "B"),
        ("b", "c"),  # pairwise, not all-to-all
        ("B", "C"),
        ("c", "d"),
        ("C", "d"),
    }


def test_chain_rejects_lists_of_different_length_as_airflow() -> None:
    dag = DAG("d", schedule=None)
    a, b, c, d, e = _tasks(dag, "abcde")
    with pytest.raises(DagDefinitionError) as info:
        chain([a, b], [c, d, e])
    assert str(info.value) == "Chain not supported for different length Iterable. Got 2 and 3."


def test_chain_rejects_what_is_neither_task_nor_sequence() -> None:
    dag = DAG("d", schedule=None)
    (a,) = _tasks(dag, "a")
    with pytest.raises(DagDefinitionError, match="Chain not supported between instances of"):
        chain({a}, {a})


def test_chain_with_fewer_than_two_arguments_does_nothing() -> None:
    dag = DAG("d", schedule=None)
    (a,) = _tasks(dag, "a")
    chain(a)
    chain()
    assert _edges(dag) == set()


def test_cross_downstream_links_every_pair() -> None:
    dag = DAG("d", schedule=None)
    a, b, c, d = _tasks(dag, "abcd")
    cross_downstream([a, b], [c, d])
    assert _edges(dag) == {("a", "c"), ("a", "d"), ("b", "c"), ("b", "d")}


# -- cycles ------------------------------------------------------------------------
def test_cycle_is_reported_with_the_tasks_on_it() -> None:
    with DAG("d", schedule=None) as dag:
        a, b, c, d = (EmptyOperator(task_id=x) for x in "abcd")
        a >> b >> c >> d >> b
    with pytest.raises(CycleError) as info:
        dag.check_cycle()
    assert str(info.value) == "Cycle detected in DAG 'd': b >> c >> d >> b"
    with pytest.raises(CycleError):
        dag.topological_sort()
    with pytest.raises(CycleError):
        dag.validate()


def test_self_loop_is_a_cycle() -> None:
    dag = DAG("d", schedule=None)
    (a,) = _tasks(dag, "a")
    a >> a
    with pytest.raises(CycleError, match="'d': a >> a"):
        dag.check_cycle()


def test_cycle_found_downstream_of_acyclic_tasks() -> None:
    nodes = ["x", "y", "p", "q"]
    downstream = {"x": ["y"], "y": ["p"], "p": ["q"], "q": ["p"]}
    assert find_cycle(nodes, downstream) == ["p", "q", "p"]
    assert find_cycle(nodes, {"x": ["y"]}) is None


def test_topological_order_prefers_earlier_nodes_among_ready_ones() -> None:
    nodes = ["c", "b", "a", "z"]
    downstream = {"a": ["z"], "b": ["z"], "c": []}
    assert topological_order(nodes, downstream) == ["c", "b", "a", "z"]
    assert topological_order(["z", "a"], {"a": ["z"]}) == ["a", "z"]


def test_validate_finds_an_edge_to_a_task_that_is_not_in_the_dag() -> None:
    dag = DAG("d", schedule=None)
    a, b = _tasks(dag, "ab")
    a >> b
    del dag.task_dict["b"]
    with pytest.raises(DagDefinitionError, match="wired to 'b', which is not in the DAG"):
        dag.validate()
