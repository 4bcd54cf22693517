"""Issue 8's performance aims and floors, and how a run's results stand against them: each
measure with its value, aim and floor, whether each is met and by what factor it is missed.
Pure functions over the results document, so a planted miss is tested without a cluster."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from loadtest.scenarios import Profile, Scenario, TaskKind, plan_for

__all__ = ["AIMS", "Aim", "judge", "missed_floors"]

_CORES = 2
SOURCE = (
    "issue 8, on 2 cores: quick profile at its default sizes, 2 schedulers (3 for failover), "
    "2 workers of 8 slots, bash tasks, default settings"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Aim:
    """One measure's aim (what we want) and floor (below which the issue is not done)."""

    name: str
    path: tuple[str, ...]  # where the value is in results.json
    unit: str
    aim: float
    floor: float
    lower_is_better: bool = True
    # the fault's details in results.json: struck with work in flight and no value means the
    # work never moved, a miss (no details, or nothing in flight: the fault never counted)
    detail: str | None = None

    def met(self, value: float, target: float) -> bool:
        """Whether `value` reaches `target` in this measure's direction."""
        return value <= target if self.lower_is_better else value >= target

    def factor(self, value: float, target: float) -> float | None:
        """How many times too slow (or too few) `value` is against `target`; None when met or
        when the factor means nothing (a zero on the wrong side)."""
        if self.met(value, target):
            return None
        if self.lower_is_better:
            return round(value / target, 2) if target > 0 else None
        return round(target / value, 2) if value > 0 else None


_LATENCY_P50 = Aim(
    name="task latency p50", path=("task_latency_ms", "p50"), unit="ms", aim=10, floor=50
)
_LATENCY_P99 = Aim(
    name="task latency p99", path=("task_latency_ms", "p99"), unit="ms", aim=50, floor=250
)
AIMS: Mapping[Scenario, tuple[Aim, ...]] = {
    Scenario.CHAIN: (_LATENCY_P50, _LATENCY_P99),
    # "hundreds of task instances per second": read as at least 200
    Scenario.FANOUT: (
        Aim(
            name="throughput",
            path=("throughput_tis_per_s", "overall"),
            unit="TIs/s",
            aim=200,
            floor=100,
            lower_is_better=False,
        ),
    ),
    Scenario.FAILOVER: (
        Aim(name="failover", path=("failover_s",), unit="s", aim=3, floor=5, detail="failover"),
    ),
    Scenario.WORKER_LOSS: (
        Aim(
            name="worker-loss recovery",
            path=("worker_loss_recovery_s",),
            unit="s",
            aim=10,
            floor=15,
            detail="worker_loss",
        ),
    ),
}
_VIOLATIONS = Aim(name="invariant violations", path=(), unit="", aim=0, floor=0)


def _value(results: Mapping[str, Any], path: tuple[str, ...]) -> float | None:
    node: Any = results
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


def _differences(scenario: Scenario, params: Mapping[str, Any]) -> list[str]:
    """How this run's set-up differs from the one the aims are defined for."""
    reference = plan_for(scenario, Profile.QUICK, workers=2)
    wanted = {
        "profile": Profile.QUICK.value,
        "shape": {
            "kind": reference.shape.kind.value,
            "dags": reference.shape.dags,
            "size": reference.shape.size,
        },
        "schedulers": reference.schedulers,
        "workers": reference.workers,
        "slots": reference.slots,
        "task_kind": TaskKind.BASH.value,
        "settings": dict(reference.settings),
    }
    return [
        f"{key} {params.get(key)!r} (the aims assume {want!r})"
        for key, want in wanted.items()
        if params.get(key) != want
    ]


def _never(aim: Aim, results: Mapping[str, Any]) -> bool:
    """The fault struck with work in flight, and that work never moved."""
    detail = results.get(aim.detail) if aim.detail else None
    return isinstance(detail, Mapping) and int(detail.get("in_flight") or 0) > 0


def _row(aim: Aim, value: float | None, *, never: bool = False) -> dict[str, Any]:
    missed = False if never else None
    return {
        "name": aim.name,
        "key": ".".join(aim.path) or "invariants",
        "unit": aim.unit,
        "value": value,
        "never": never,
        "aim": aim.aim,
        "floor": aim.floor,
        "lower_is_better": aim.lower_is_better,
        "aim_met": missed if value is None else aim.met(value, aim.aim),
        "floor_met": missed if value is None else aim.met(value, aim.floor),
        "times_the_aim": None if value is None else aim.factor(value, aim.aim),
        "times_the_floor": None if value is None else aim.factor(value, aim.floor),
    }


def judge(results: Mapping[str, Any]) -> dict[str, Any]:
    """The `aims` section of results.json: every measure the issue sets for this scenario, and
    zero invariant violations for all. `comparable` says whether the run had the set-up the
    aims are defined for (`differences` says how it did not). A value the run did not produce
    is None: a miss (`never`) when the fault struck work that never moved, else (the fault did
    not strike, or found nothing in flight) neither met nor missed."""
    scenario = Scenario(results["scenario"])
    violations = sum(int(c.get("violations", 0)) for c in results.get("invariants", {}).values())
    rows = []
    for aim in AIMS.get(scenario, ()):
        value = _value(results, aim.path)
        rows.append(_row(aim, value, never=value is None and _never(aim, results)))
    rows.append(_row(_VIOLATIONS, float(violations)))
    differences = _differences(scenario, results.get("params", {}))
    cores = results.get("machine", {}).get("cores")
    if cores is not None and cores != _CORES:
        differences.append(f"{cores} cores (the aims are set for {_CORES})")
    if results.get("profile"):
        differences.append("profiled with py-spy, which shares the machine")
    judged = [r for r in rows if r["floor_met"] is not None]
    return {
        "source": SOURCE,
        "comparable": not differences,
        "differences": differences,
        "measures": rows,
        "floors_met": all(r["floor_met"] for r in judged) if judged else None,
        "aims_met": all(r["aim_met"] for r in judged) if judged else None,
    }


def missed_floors(aims: Mapping[str, Any]) -> list[str]:
    """One phrase per floor missed, e.g. "task latency p50 101.8 ms, 2.04x the 50 ms floor"."""
    out = []
    for r in aims.get("measures", ()):
        if r["floor_met"] is not False:
            continue
        unit = f" {r['unit']}" if r["unit"] else ""
        if r["value"] is None:
            out.append(f"{r['name']} never (the work in flight did not move)")
            continue
        times = f"{r['times_the_floor']}x " if r["times_the_floor"] is not None else ""
        out.append(f"{r['name']} {r['value']:g}{unit}, {times}the {r['floor']:g}{unit} floor")
    return out
