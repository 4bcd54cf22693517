"""Priority weights on random DAGs agree with a plain depth-first search from every task."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tradewind.priority import db_safe_priority, priority_weight_totals
from tradewind.weight_rule import WeightRule

Graph = tuple[list[str], dict[str, list[str]], dict[str, int], dict[str, WeightRule]]


@st.composite
def random_dags(
    draw: st.DrawFn, weights: st.SearchStrategy[int], sizes: tuple[int, int], distinct: bool
) -> Graph:
    count = draw(st.integers(min_value=sizes[0], max_value=sizes[1]))
    # Shuffle the node names so the listed order is not the topological one.
    nodes = draw(st.permutations([f"t{i}" for i in range(count)]))
    rank = {f"t{i}": i for i in range(count)}  # edges only go from lower to higher rank
    pairs = [(a, b) for a in nodes for b in nodes if rank[a] < rank[b]]
    edges = draw(st.sets(st.sampled_from(pairs), max_size=3 * count)) if pairs else set()
    downstream: dict[str, list[str]] = {node: [] for node in nodes}
    for a, b in sorted(edges):
        downstream[a].append(b)
    values = draw(st.lists(weights, min_size=count, max_size=count, unique=distinct))
    own = dict(zip(nodes, values, strict=True))
    rules = {node: draw(st.sampled_from(list(WeightRule))) for node in nodes}
    return list(nodes), downstream, own, rules


def _reachable(start: str, edges: dict[str, list[str]]) -> set[str]:
    # The obvious way: a fresh depth-first search from every task.
    found: set[str] = set()
    stack = [start]
    while stack:
        for nxt in edges[stack.pop()]:
            if nxt not in found:
                found.add(nxt)
                stack.append(nxt)
    return found


def _reference(
    nodes: list[str],
    downstream: dict[str, list[str]],
    own: dict[str, int],
    rules: dict[str, WeightRule],
) -> dict[str, int]:
    upstream: dict[str, list[str]] = {node: [] for node in nodes}
    for a, children in downstream.items():
        for b in children:
            upstream[b].append(a)
    totals = {}
    for node in nodes:
        if rules[node] is WeightRule.ABSOLUTE:
            relatives: set[str] = set()
        elif rules[node] is WeightRule.UPSTREAM:
            relatives = _reachable(node, upstream)
        else:
            relatives = _reachable(node, downstream)
        totals[node] = db_safe_priority(own[node] + sum(own[r] for r in relatives))
    return totals


@settings(max_examples=200, deadline=None)
@given(random_dags(st.integers(min_value=-5, max_value=5), (1, 12), distinct=False))
def test_few_distinct_weights_match_brute_force(graph: Graph) -> None:
    assert priority_weight_totals(*graph) == _reference(*graph)


@settings(max_examples=150, deadline=None)
@given(random_dags(st.integers(min_value=-(2**33), max_value=2**33), (18, 40), distinct=True))
def test_many_distinct_and_huge_weights_match_brute_force(graph: Graph) -> None:
    # More than 16 distinct weights: the per-byte table path, and totals that need clamping.
    assert priority_weight_totals(*graph) == _reference(*graph)
