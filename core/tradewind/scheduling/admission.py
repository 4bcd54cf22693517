"""The admission decision of the critical section: which scheduled task instances may be queued
now, under pools, DAG and task concurrency, cluster parallelism and worker capacity per queue,
and why each of the others has to wait."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from tradewind.errors import BadInputError

__all__ = [
    "PERMANENT_REASONS",
    "POOL_STARVATION_REASONS",
    "Admission",
    "Candidate",
    "Capacity",
    "PoolCapacity",
    "PoolUsage",
    "StarvationReason",
    "Starved",
    "admission_order",
    "admit",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """One scheduled task instance from the locked snapshot, with the limits that apply to it."""

    ti_id: int
    dag_id: str
    run_id: str
    task_id: str
    logical_date: datetime  # aware UTC; older runs go first among equal priorities
    pool: str
    pool_slots: int
    priority_weight: int  # the effective (weight-rule total) weight
    queue: str
    max_active_tis_per_dag: int | None  # None: the task has no limit of its own
    dag_max_active_tasks: int  # counted over every run of the DAG, as Airflow 2 does

    def __post_init__(self) -> None:
        if self.pool_slots < 1:
            raise BadInputError(
                f"task instance {self.label} asks for pool_slots={self.pool_slots}; it must be >= 1"
            )

    @property
    def label(self) -> str:
        """dag_id.task_id@run_id, for reasons and logs."""
        return f"{self.dag_id}.{self.task_id}@{self.run_id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolCapacity:
    """A pool's size and the slots its queued and running task instances hold."""

    total: int | None  # None: unlimited (Airflow's slots=-1)
    occupied: int = 0  # sum of pool_slots of its queued + running task instances

    @property
    def open(self) -> int | None:
        """Free slots, never negative (an over-full pool has none); None when unlimited."""
        return None if self.total is None else max(0, self.total - self.occupied)


@dataclass(frozen=True, slots=True, kw_only=True)
class Capacity:
    """Current usage read in the same locked snapshot as the candidates."""

    pools: Mapping[str, PoolCapacity]  # a pool missing here does not exist
    dag_active: Mapping[str, int] = field(default_factory=dict)  # queued+running TIs per DAG
    task_active: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (dag_id, task_id)
    parallelism_open: int | None = None  # cluster-wide free slots; None: unlimited
    queue_open: Mapping[str, int] | None = None  # free worker slots per queue; None: unlimited


class StarvationReason(StrEnum):
    """Why a candidate was not admitted, in the order the checks run."""

    POOL_MISSING = "pool_missing"  # its pool does not exist; waits until someone creates it
    POOL_TOO_SMALL = "pool_too_small"  # pool_slots > the pool's total: can never run as is
    PARALLELISM = "parallelism"  # the cluster-wide parallelism is used up
    POOL_FULL = "pool_full"  # fewer open slots than it needs; closes the pool (see admit)
    POOL_HELD = "pool_held"  # a higher-priority candidate of the pool is waiting for slots
    DAG_MAX_ACTIVE_TASKS = "dag_max_active_tasks"
    MAX_ACTIVE_TIS_PER_DAG = "max_active_tis_per_dag"
    QUEUE_FULL = "queue_full"  # no free worker slot serves its queue


POOL_STARVATION_REASONS: frozenset[StarvationReason] = frozenset(
    {StarvationReason.POOL_TOO_SMALL, StarvationReason.POOL_FULL, StarvationReason.POOL_HELD}
)
"""Reasons counted in a pool's starving_tasks figure, as Airflow's pool.starving_tasks does."""

PERMANENT_REASONS: frozenset[StarvationReason] = frozenset(
    {StarvationReason.POOL_MISSING, StarvationReason.POOL_TOO_SMALL}
)
"""Reasons no amount of waiting cures: the scheduler should flag or fail these."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Starved:
    """A candidate left scheduled, with the limit that stopped it."""

    candidate: Candidate
    reason: StarvationReason
    message: str

    @property
    def permanent(self) -> bool:
        """True when only a change of configuration lets it run."""
        return self.reason in PERMANENT_REASONS


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolUsage:
    """One pool's figures for the metrics: slots after this decision and who starves."""

    total: int | None
    open_slots: int | None  # after the admitted ones took theirs; None: unlimited
    admitted_slots: int  # pool_slots taken by this decision
    starving_tasks: int  # candidates of the pool starved for a pool reason


@dataclass(frozen=True, slots=True, kw_only=True)
class Admission:
    """The decision: who is queued, who waits and why, and what capacity is left."""

    admitted: tuple[Candidate, ...]  # in admission order
    starved: tuple[Starved, ...]  # in admission order
    pools: Mapping[str, PoolUsage]  # every pool of the capacity snapshot
    remaining: Capacity  # the snapshot with the admitted candidates counted in

    @property
    def starving_total(self) -> int:
        """Candidates starved for a pool reason (Airflow's scheduler.tasks.starving)."""
        return sum(p.starving_tasks for p in self.pools.values())

    @property
    def permanent(self) -> tuple[Starved, ...]:
        """Starved candidates that can never run without a configuration change."""
        return tuple(s for s in self.starved if s.permanent)


def admission_order(candidates: Iterable[Candidate]) -> tuple[Candidate, ...]:
    """Highest priority weight first, then older logical date; ids make ties total."""
    return tuple(
        sorted(
            candidates,
            key=lambda c: (
                -c.priority_weight,
                c.logical_date,
                c.dag_id,
                c.run_id,
                c.task_id,
                c.ti_id,
            ),
        )
    )


@dataclass(slots=True)
class _Ledger:
    """The capacity being spent while one decision walks the ordered candidates."""

    pool_open: dict[str, int | None]
    dag_active: Counter[str]
    task_active: Counter[tuple[str, str]]
    parallelism_open: int | None
    queue_open: dict[str, int] | None
    held_by: dict[str, Candidate] = field(default_factory=dict)  # pool -> first pool-starved

    @classmethod
    def from_capacity(cls, capacity: Capacity) -> _Ledger:
        return cls(
            pool_open={name: pool.open for name, pool in capacity.pools.items()},
            dag_active=Counter(capacity.dag_active),
            task_active=Counter(capacity.task_active),
            parallelism_open=capacity.parallelism_open,
            queue_open=None if capacity.queue_open is None else dict(capacity.queue_open),
        )

    def take(self, c: Candidate) -> None:
        open_slots = self.pool_open[c.pool]
        if open_slots is not None:
            self.pool_open[c.pool] = open_slots - c.pool_slots
        self.dag_active[c.dag_id] += 1
        self.task_active[(c.dag_id, c.task_id)] += 1
        if self.parallelism_open is not None:
            self.parallelism_open -= 1
        if self.queue_open is not None:
            self.queue_open[c.queue] = self.queue_open.get(c.queue, 0) - 1


_R = StarvationReason


def _check_pool_fits(c: Candidate, capacity: Capacity) -> Starved | None:
    pool = capacity.pools.get(c.pool)
    if pool is None:
        return Starved(
            candidate=c, reason=_R.POOL_MISSING, message=f"pool {c.pool!r} does not exist"
        )
    if pool.total is not None and c.pool_slots > pool.total:
        return Starved(
            candidate=c,
            reason=_R.POOL_TOO_SMALL,
            message=f"task {c.label} needs {c.pool_slots} slots but pool {c.pool!r} "
            f"has only {pool.total} in total",
        )
    return None


def _check_parallelism(c: Candidate, ledger: _Ledger) -> Starved | None:
    if ledger.parallelism_open is not None and ledger.parallelism_open <= 0:
        return Starved(candidate=c, reason=_R.PARALLELISM, message="cluster parallelism reached")
    return None


def _check_pool_slots(c: Candidate, ledger: _Ledger) -> Starved | None:
    holder = ledger.held_by.get(c.pool)
    if holder is not None:
        return Starved(
            candidate=c,
            reason=_R.POOL_HELD,
            message=f"pool {c.pool!r} is held for higher-priority task {holder.label} "
            f"(needs {holder.pool_slots} slots)",
        )
    open_slots = ledger.pool_open[c.pool]
    if open_slots is not None and c.pool_slots > open_slots:
        # Closing the pool stops lower-priority work from taking slots this one is waiting for.
        ledger.held_by[c.pool] = c
        needs = "" if c.pool_slots == 1 else f", task {c.label} needs {c.pool_slots}"
        return Starved(
            candidate=c,
            reason=_R.POOL_FULL,
            message=f"pool {c.pool!r} has {open_slots} open slots{needs}",
        )
    return None


def _check_concurrency(c: Candidate, ledger: _Ledger) -> Starved | None:
    if ledger.dag_active[c.dag_id] >= c.dag_max_active_tasks:
        return Starved(
            candidate=c,
            reason=_R.DAG_MAX_ACTIVE_TASKS,
            message=f"dag {c.dag_id!r} max_active_tasks {c.dag_max_active_tasks} reached",
        )
    limit = c.max_active_tis_per_dag
    if limit is not None and ledger.task_active[(c.dag_id, c.task_id)] >= limit:
        return Starved(
            candidate=c,
            reason=_R.MAX_ACTIVE_TIS_PER_DAG,
            message=f"task {c.dag_id}.{c.task_id} max_active_tis_per_dag {limit} reached",
        )
    if ledger.queue_open is not None and ledger.queue_open.get(c.queue, 0) <= 0:
        return Starved(
            candidate=c,
            reason=_R.QUEUE_FULL,
            message=f"no free worker slot serves queue {c.queue!r}",
        )
    return None


def _check(c: Candidate, ledger: _Ledger, capacity: Capacity) -> Starved | None:
    # Permanent reasons first so they are reported whatever the current load.
    return (
        _check_pool_fits(c, capacity)
        or _check_parallelism(c, ledger)
        or _check_pool_slots(c, ledger)
        or _check_concurrency(c, ledger)
    )


def _slots_by_pool(admitted: tuple[Candidate, ...]) -> Counter[str]:
    slots: Counter[str] = Counter()
    for c in admitted:
        slots[c.pool] += c.pool_slots
    return slots


def _remaining(capacity: Capacity, admitted: tuple[Candidate, ...]) -> Capacity:
    slots = _slots_by_pool(admitted)
    queue_open = None
    if capacity.queue_open is not None:
        queue_open = dict(capacity.queue_open)
        for c in admitted:
            queue_open[c.queue] = queue_open.get(c.queue, 0) - 1
    parallelism = capacity.parallelism_open
    return Capacity(
        pools={
            name: PoolCapacity(total=pool.total, occupied=pool.occupied + slots[name])
            for name, pool in capacity.pools.items()
        },
        dag_active=dict(Counter(capacity.dag_active) + Counter(c.dag_id for c in admitted)),
        task_active=dict(
            Counter(capacity.task_active) + Counter((c.dag_id, c.task_id) for c in admitted)
        ),
        parallelism_open=None if parallelism is None else parallelism - len(admitted),
        queue_open=queue_open,
    )


def _pool_usage(
    capacity: Capacity, admitted: tuple[Candidate, ...], starved: tuple[Starved, ...]
) -> dict[str, PoolUsage]:
    slots = _slots_by_pool(admitted)
    starving = Counter(s.candidate.pool for s in starved if s.reason in POOL_STARVATION_REASONS)
    usage = {}
    for name, pool in capacity.pools.items():
        after = PoolCapacity(total=pool.total, occupied=pool.occupied + slots[name])
        usage[name] = PoolUsage(
            total=pool.total,
            open_slots=after.open,
            admitted_slots=slots[name],
            starving_tasks=starving[name],
        )
    return usage


def admit(candidates: Iterable[Candidate], capacity: Capacity) -> Admission:
    """Decide which candidates move to queued without exceeding any limit of `capacity`.

    Candidates are walked in `admission_order`; each is admitted when every limit still has
    room for it, else starved with the first limit that stopped it, and the walk goes on.
    Priority within a pool is strict: once a candidate lacks open slots in its pool
    (POOL_FULL), every later candidate of that pool is starved (POOL_HELD), so small
    low-priority tasks cannot keep a larger high-priority one waiting. Candidates that can
    never fit (POOL_TOO_SMALL, POOL_MISSING) hold nothing. Pure: the caller holds the locks
    that make the snapshot current, and applies the decision.
    """
    ordered = admission_order(candidates)
    seen: set[int] = set()
    for c in ordered:
        if c.ti_id in seen:
            raise BadInputError(f"task instance id {c.ti_id} ({c.label}) is a candidate twice")
        seen.add(c.ti_id)
    ledger = _Ledger.from_capacity(capacity)
    admitted: list[Candidate] = []
    starved: list[Starved] = []
    for c in ordered:
        verdict = _check(c, ledger, capacity)
        if verdict is None:
            ledger.take(c)
            admitted.append(c)
        else:
            starved.append(verdict)
    admitted_t, starved_t = tuple(admitted), tuple(starved)
    return Admission(
        admitted=admitted_t,
        starved=starved_t,
        pools=_pool_usage(capacity, admitted_t, starved_t),
        remaining=_remaining(capacity, admitted_t),
    )
