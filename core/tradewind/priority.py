"""Effective priority weights (Airflow 2's `priority_weight_total`) of every task of a graph:
own weight plus every descendant's (downstream), every ancestor's (upstream), or own (absolute)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from tradewind.graph import topological_order
from tradewind.weight_rule import WeightRule

__all__ = ["DB_SAFE_MAXIMUM", "DB_SAFE_MINIMUM", "db_safe_priority", "priority_weight_totals"]

# The priority column is a 32-bit integer; Airflow 2.10 clamps totals into its range.
DB_SAFE_MINIMUM = -(2**31)
DB_SAFE_MAXIMUM = 2**31 - 1
# Above this many distinct weights, summing by per-byte lookup tables beats one mask per weight.
_MAX_WEIGHT_MASKS = 16


def db_safe_priority(weight: int) -> int:
    """Clamp a weight into the 32-bit range the database stores."""
    return max(DB_SAFE_MINIMUM, min(DB_SAFE_MAXIMUM, weight))


def _closures(
    ordered: Sequence[str], edges: Mapping[str, Collection[str]], index: Mapping[str, int]
) -> dict[str, int]:
    """For each node, a bitset (bit i = ordered[i]) of everything reachable through `edges`.

    `ordered` must list every node after all the nodes its edges point to."""
    reach: dict[str, int] = {}
    for node in ordered:
        bits = 0
        for other in edges.get(node, ()):
            bits |= reach[other] | (1 << index[other])
        reach[node] = bits
    return reach


class _WeightSummer:
    """Sums the weights of the nodes in a bitset without visiting its bits one by one."""

    def __init__(self, weights: Sequence[int]) -> None:
        distinct = {w for w in weights if w}
        self._masks: list[tuple[int, int]] | None = None
        self._tables: list[list[int]] = []
        if len(distinct) <= _MAX_WEIGHT_MASKS:
            masks = dict.fromkeys(distinct, 0)
            for i, w in enumerate(weights):
                if w:
                    masks[w] |= 1 << i
            self._masks = list(masks.items())
        else:
            self._tables = [self._byte_table(weights[k : k + 8]) for k in range(0, len(weights), 8)]
        self._nbytes = (len(weights) + 7) // 8

    @staticmethod
    def _byte_table(chunk: Sequence[int]) -> list[int]:
        table = [0] * 256
        for b in range(1, 256):
            low = (b & -b).bit_length() - 1
            table[b] = table[b & (b - 1)] + (chunk[low] if low < len(chunk) else 0)
        return table

    def total(self, bits: int) -> int:
        """The sum of the weights of the nodes whose bit is set."""
        if self._masks is not None:
            return sum(w * (bits & mask).bit_count() for w, mask in self._masks)
        raw = bits.to_bytes(self._nbytes, "little")
        return sum(table[b] for table, b in zip(self._tables, raw, strict=True) if b)


def _relatives_sums(
    ordered: Sequence[str],
    edges: Mapping[str, Collection[str]],
    weights: Mapping[str, int],
) -> dict[str, int]:
    index = {node: i for i, node in enumerate(ordered)}
    reach = _closures(ordered, edges, index)
    summer = _WeightSummer([weights[node] for node in ordered])
    return {node: summer.total(bits) for node, bits in reach.items()}


def _invert(
    nodes: Sequence[str], downstream: Mapping[str, Collection[str]]
) -> dict[str, list[str]]:
    upstream: dict[str, list[str]] = {node: [] for node in nodes}
    for node in nodes:
        for child in downstream.get(node, ()):
            upstream[child].append(node)
    return upstream


def priority_weight_totals(
    nodes: Sequence[str],
    downstream: Mapping[str, Collection[str]],
    weights: Mapping[str, int],
    rules: Mapping[str, WeightRule],
    *,
    dag_id: str = "?",
) -> dict[str, int]:
    """Every node's effective weight, clamped to the database range; CycleError on a cycle.

    Each relative counts once however many paths lead to it; the cost is O(V * E / 64)
    bit operations plus one weighted popcount per node, never a walk over paths."""
    order = topological_order(nodes, downstream, dag_id=dag_id)
    wanted = set(rules.values())
    below: dict[str, int] = {}
    above: dict[str, int] = {}
    if WeightRule.DOWNSTREAM in wanted:
        # Descendants are known once every child is: walk from the leaves up.
        below = _relatives_sums(order[::-1], downstream, weights)
    if WeightRule.UPSTREAM in wanted:
        above = _relatives_sums(order, _invert(nodes, downstream), weights)
    totals: dict[str, int] = {}
    for node in nodes:
        rule = rules[node]
        extra = below[node] if rule == WeightRule.DOWNSTREAM else 0
        extra += above[node] if rule == WeightRule.UPSTREAM else 0
        totals[node] = db_safe_priority(weights[node] + extra)
    return totals
