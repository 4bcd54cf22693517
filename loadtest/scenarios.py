"""The scenarios the harness runs and their sizes per profile: DAG shapes, how load is driven,
which fault strikes and when, and the cluster settings that make recovery measurable."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType

from tradewind.errors import BadInputError

__all__ = [
    "Fault",
    "Load",
    "Plan",
    "Profile",
    "Scenario",
    "Shape",
    "ShapeKind",
    "TaskKind",
    "plan_for",
]


class Scenario(StrEnum):
    """What `python -m loadtest run SCENARIO` accepts."""

    CHAIN = "chain"
    TREE = "tree"
    FANOUT = "fanout"
    CRON = "cron"
    FAILOVER = "failover"
    WORKER_LOSS = "worker-loss"
    PARTITION = "partition"


class Profile(StrEnum):
    """How big: tiny for tests (seconds), quick for `make bench` (< 5 min on 2 cores), full."""

    TINY = "tiny"
    QUICK = "quick"
    FULL = "full"


class TaskKind(StrEnum):
    """What each task runs: a bash command or a Python callable; both write the ledger."""

    BASH = "bash"
    PYTHON = "python"


class ShapeKind(StrEnum):
    """The graph of each generated DAG."""

    CHAIN = "chain"  # t0 >> t1 >> ... (size tasks)
    TREE = "tree"  # a binary out-tree of depth `size` (2**size - 1 tasks)
    FANOUT = "fanout"  # start >> [size parallel tasks] >> join


class Load(StrEnum):
    """How runs come into being."""

    TRIGGER = "trigger"  # one manual run per DAG, all inserted in one transaction
    SCHEDULE = "schedule"  # a short timedelta schedule, for load_s seconds


class Fault(StrEnum):
    """The fault a scenario injects once `strike_at` of its task instances have finished."""

    NONE = "none"
    KILL_SCHEDULER = "kill-scheduler"  # SIGKILL the busiest scheduler replica
    KILL_WORKER = "kill-worker"  # SIGKILL the busiest worker and its task processes
    PARTITION_WORKER = "partition-worker"  # cut the busiest worker off for fault_s seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class Shape:
    """How many DAGs and how big each one is."""

    kind: ShapeKind
    dags: int
    size: int

    def tasks_per_dag(self) -> int:
        """Task count of one DAG of this shape."""
        if self.kind is ShapeKind.TREE:
            return (1 << self.size) - 1
        if self.kind is ShapeKind.FANOUT:
            return self.size + 2
        return self.size


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """Everything one run of a scenario decides with, resolved from the profile and flags."""

    scenario: Scenario
    profile: Profile
    shape: Shape
    load: Load = Load.TRIGGER
    task_kind: TaskKind = TaskKind.BASH
    task_seconds: float = 0.0  # how long each task works (0: trivial)
    retries: int = 0
    schedule_s: float | None = None  # Load.SCHEDULE: the DAGs' timedelta schedule
    load_s: float = 0.0  # Load.SCHEDULE: how long runs are created before the DAGs are paused
    max_active_runs: int = 16
    fault: Fault = Fault.NONE
    strike_at: float = 0.3
    fault_s: float = 0.0  # PARTITION_WORKER: how long the worker stays cut off
    restart: bool = False  # KILL_SCHEDULER: start the victim again once it is declared dead
    schedulers: int = 2
    workers: int = 0
    slots: int = 8
    min_schedulers: int = 1
    min_workers: int = 0
    pool_slots: int | None = None  # a dedicated pool of this size (None: default_pool)
    settings: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    timeout_s: float = 240.0

    @property
    def total_tis(self) -> int | None:
        """Task instances the load creates, when known up front (not for schedules)."""
        if self.load is Load.SCHEDULE:
            return None
        return self.shape.dags * self.shape.tasks_per_dag()

    @property
    def execution_slots(self) -> int:
        """Attempts that can run at once: workers' slots, or the schedulers' own executors."""
        return (self.workers or self.schedulers) * self.slots

    @property
    def pool_name(self) -> str:
        """The pool every generated task uses."""
        return "loadtest" if self.pool_slots is not None else "default_pool"


_T, _Q, _F = Profile.TINY, Profile.QUICK, Profile.FULL

# (dags, size) per profile.
_SIZES: dict[Scenario, dict[Profile, tuple[int, int]]] = {
    Scenario.CHAIN: {_T: (3, 4), _Q: (20, 10), _F: (100, 10)},
    Scenario.TREE: {_T: (1, 3), _Q: (2, 7), _F: (10, 7)},
    Scenario.FANOUT: {_T: (2, 6), _Q: (10, 50), _F: (50, 100)},
    Scenario.CRON: {_T: (3, 1), _Q: (50, 1), _F: (200, 1)},
    Scenario.FAILOVER: {_T: (3, 4), _Q: (20, 10), _F: (50, 10)},
    Scenario.WORKER_LOSS: {_T: (2, 4), _Q: (10, 10), _F: (30, 10)},
    Scenario.PARTITION: {_T: (2, 3), _Q: (10, 8), _F: (30, 10)},
}
_SHAPES = {
    Scenario.TREE: ShapeKind.TREE,
    Scenario.FANOUT: ShapeKind.FANOUT,
}
_TIMEOUTS = {_T: 60.0, _Q: 270.0, _F: 1800.0}

# Recovery timings short enough for a tiny run to finish in seconds; validation still holds
# (zombie_threshold > worker lease + margin). Larger profiles measure the shipped defaults.
_FAST_RECOVERY = MappingProxyType(
    {
        "TRADEWIND__SCHEDULER__HEALTH_THRESHOLD_S": "2",
        "TRADEWIND__SCHEDULER__ZOMBIE_THRESHOLD_S": "2",
        "TRADEWIND__SCHEDULER__ZOMBIE_CHECK_INTERVAL_S": "0.25",
        "TRADEWIND__SCHEDULER__ORPHAN_CHECK_INTERVAL_S": "0.25",
        "TRADEWIND__WORKER__HEARTBEAT_INTERVAL_S": "0.25",
        "TRADEWIND__WORKER__LEASE_S": "0.75",
        "TRADEWIND__WORKER__LEASE_MARGIN_S": "0.75",
        "TRADEWIND__WORKER__KILL_GRACE_S": "0.25",
    }
)


def _base(scenario: Scenario, profile: Profile) -> Plan:
    dags, size = _SIZES[scenario][profile]
    shape = Shape(kind=_SHAPES.get(scenario, ShapeKind.CHAIN), dags=dags, size=size)
    fast = _FAST_RECOVERY if profile is Profile.TINY else MappingProxyType({})
    return Plan(
        scenario=scenario, profile=profile, shape=shape, timeout_s=_TIMEOUTS[profile], settings=fast
    )


def _specialise(plan: Plan) -> Plan:
    tiny = plan.profile is Profile.TINY
    match plan.scenario:
        case Scenario.FANOUT:
            # A dedicated pool as large as the executors: saturated, and its limit under load
            # (tiny tasks work a little, so that even a tiny run holds the pool full a while).
            return replace(plan, pool_slots=plan.execution_slots, task_seconds=0.3 if tiny else 0.0)
        case Scenario.CRON:
            return replace(
                plan,
                load=Load.SCHEDULE,
                schedule_s=1.5 if tiny else 5.0,
                load_s={_T: 4.0, _Q: 60.0, _F: 180.0}[plan.profile],
                # One active run per DAG keeps ledger identities unambiguous when the executor
                # cannot tell runs apart (see ledger.py); it also makes every run's delay honest.
                max_active_runs=1,
            )
        case Scenario.FAILOVER:
            return replace(
                plan,
                fault=Fault.KILL_SCHEDULER,
                task_seconds=0.2,
                retries=1,
                min_schedulers=2,
            )
        case Scenario.WORKER_LOSS:
            return replace(
                plan,
                fault=Fault.KILL_WORKER,
                task_seconds=0.5 if tiny else 1.0,
                retries=2,
                min_workers=2,
            )
        case Scenario.PARTITION:
            return replace(
                plan,
                fault=Fault.PARTITION_WORKER,
                # longer than the worker lease: the cut, not the task's end, must stop them
                task_seconds=1.5 if tiny else 6.0,
                retries=2,
                min_workers=2,
                fault_s=3.0 if tiny else 15.0,
            )
        case _:
            return plan


def plan_for(
    scenario: Scenario,
    profile: Profile,
    *,
    task_kind: TaskKind = TaskKind.BASH,
    schedulers: int | None = None,
    workers: int = 0,
    slots: int = 8,
    dags: int | None = None,
    size: int | None = None,
    restart: bool = False,
    settings: Mapping[str, str] | None = None,
) -> Plan:
    """The plan of one run: the profile's sizes, the scenario's fault, then the flags."""
    base = _base(scenario, profile)
    default_schedulers = 3 if scenario is Scenario.FAILOVER else 2
    plan = replace(
        base,
        task_kind=task_kind,
        schedulers=schedulers if schedulers is not None else default_schedulers,
        workers=workers,
        slots=slots,
        restart=restart,
        shape=replace(
            base.shape,
            dags=dags if dags is not None else base.shape.dags,
            size=size if size is not None else base.shape.size,
        ),
    )
    plan = _specialise(plan)
    merged = {**plan.settings, **(settings or {})}
    plan = replace(plan, settings=MappingProxyType(merged))
    _validate(plan)
    return plan


def _validate(plan: Plan) -> None:
    if plan.schedulers < plan.min_schedulers:
        raise BadInputError(
            f"scenario {plan.scenario} needs at least {plan.min_schedulers} schedulers "
            f"(got --schedulers {plan.schedulers})"
        )
    if plan.shape.dags < 1 or plan.shape.size < 1:
        raise BadInputError(
            f"--dags and --size must be at least 1 (got {plan.shape.dags}, {plan.shape.size})"
        )
    if plan.shape.kind is ShapeKind.TREE and plan.shape.size > 12:
        raise BadInputError(f"a tree of depth {plan.shape.size} is too big (at most 12)")
    if plan.slots < 1:
        raise BadInputError(f"--slots must be at least 1 (got {plan.slots})")
