"""Pure algorithms on a task graph given as task ids and downstream edges: a stable
topological order and the cycle that prevents one."""

from __future__ import annotations

import heapq
from collections.abc import Collection, Mapping, Sequence

from tradewind.errors import CycleError

__all__ = ["find_cycle", "topological_order"]


def _indegrees(nodes: Sequence[str], downstream: Mapping[str, Collection[str]]) -> dict[str, int]:
    indegree = dict.fromkeys(nodes, 0)
    for node in nodes:
        for child in downstream.get(node, ()):
            indegree[child] += 1
    return indegree


def topological_order(
    nodes: Sequence[str], downstream: Mapping[str, Collection[str]], *, dag_id: str = "?"
) -> list[str]:
    """Every node after its upstreams; among ready nodes the earliest in `nodes` goes first,
    so the order is deterministic. A cycle raises CycleError naming the tasks on it."""
    position = {node: index for index, node in enumerate(nodes)}
    indegree = _indegrees(nodes, downstream)
    ready = [position[node] for node in nodes if indegree[node] == 0]
    heapq.heapify(ready)
    ordered: list[str] = []
    while ready:
        node = nodes[heapq.heappop(ready)]
        ordered.append(node)
        for child in downstream.get(node, ()):
            indegree[child] -= 1
            if indegree[child] == 0:
                heapq.heappush(ready, position[child])
    if len(ordered) < len(nodes):
        cycle = find_cycle(nodes, downstream) or [n for n in nodes if indegree[n] > 0]
        raise CycleError(f"Cycle detected in DAG {dag_id!r}: {' >> '.join(cycle)}")
    return ordered


def _upstream_within(
    nodes: Sequence[str], downstream: Mapping[str, Collection[str]], keep: set[str]
) -> dict[str, list[str]]:
    upstream: dict[str, list[str]] = {node: [] for node in nodes if node in keep}
    for node in nodes:
        if node in keep:
            for child in downstream.get(node, ()):
                if child in keep:
                    upstream[child].append(node)
    return upstream


def _blocked(nodes: Sequence[str], downstream: Mapping[str, Collection[str]]) -> set[str]:
    """Nodes that Kahn's algorithm cannot release: on a cycle or downstream of one."""
    indegree = _indegrees(nodes, downstream)
    stack = [node for node in nodes if indegree[node] == 0]
    while stack:
        node = stack.pop()
        for child in downstream.get(node, ()):
            indegree[child] -= 1
            if indegree[child] == 0:
                stack.append(child)
    return {node for node in nodes if indegree[node] > 0}


def find_cycle(nodes: Sequence[str], downstream: Mapping[str, Collection[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a] in downstream direction, or None when the graph is acyclic."""
    blocked = _blocked(nodes, downstream)
    if not blocked:
        return None
    position = {node: index for index, node in enumerate(nodes)}
    upstream = _upstream_within(nodes, downstream, blocked)
    # Every blocked node has a blocked upstream, so walking upstream must revisit a node.
    node = min(blocked, key=position.__getitem__)
    seen: dict[str, int] = {}
    path: list[str] = []
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = min(upstream[node], key=position.__getitem__)
    loop = path[seen[node] :]
    loop.reverse()
    # Start at the earliest-defined task so the message is the same on every run.
    first = loop.index(min(loop, key=position.__getitem__))
    loop = loop[first:] + loop[:first]
    return [*loop, loop[0]]
