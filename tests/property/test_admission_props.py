"""Properties of the admission decision: no limit is ever exceeded, priority holds within a pool,
the result does not depend on input order, and a cluster that admits and finishes tasks forever
stays within every limit."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tradewind.scheduling.admission import (
    Admission,
    Candidate,
    Capacity,
    PoolCapacity,
    StarvationReason,
    admission_order,
    admit,
)

R = StarvationReason
T0 = datetime(2024, 1, 1, tzinfo=UTC)
POOLS = ("p0", "p1", "p2")
DAGS = ("d0", "d1", "d2")
TASKS = ("t0", "t1", "t2")
QUEUES = ("q0", "q1")
PROPS = settings(max_examples=150, deadline=None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Per-DAG and per-task limits, drawn once so every candidate of a DAG agrees."""

    dag_max: Mapping[str, int]
    task_max: Mapping[tuple[str, str], int | None]


limits_st = st.builds(
    Limits,
    dag_max=st.fixed_dictionaries({d: st.integers(0, 5) for d in DAGS}),
    task_max=st.fixed_dictionaries(
        {(d, t): st.none() | st.integers(0, 3) for d in DAGS for t in TASKS}
    ),
)


@st.composite
def candidates_st(draw: st.DrawFn, limits: Limits) -> list[Candidate]:
    count = draw(st.integers(0, 14))
    out = []
    for ti_id in range(count):
        dag_id, task_id = draw(st.sampled_from(DAGS)), draw(st.sampled_from(TASKS))
        out.append(
            Candidate(
                ti_id=ti_id,
                dag_id=dag_id,
                run_id=f"r{draw(st.integers(0, 2))}",
                task_id=task_id,
                logical_date=T0 + timedelta(days=draw(st.integers(0, 2))),
                pool=draw(st.sampled_from((*POOLS, "ghost"))),
                pool_slots=draw(st.integers(1, 4)),
                priority_weight=draw(st.integers(-2, 3)),
                queue=draw(st.sampled_from((*QUEUES, "nobody"))),
                max_active_tis_per_dag=limits.task_max[(dag_id, task_id)],
                dag_max_active_tasks=limits.dag_max[dag_id],
            )
        )
    return out


capacity_st = st.builds(
    Capacity,
    pools=st.dictionaries(
        st.sampled_from(POOLS),
        st.builds(PoolCapacity, total=st.none() | st.integers(0, 6), occupied=st.integers(0, 8)),
    ),
    dag_active=st.dictionaries(st.sampled_from(DAGS), st.integers(0, 5)),
    task_active=st.dictionaries(
        st.tuples(st.sampled_from(DAGS), st.sampled_from(TASKS)), st.integers(0, 3)
    ),
    parallelism_open=st.none() | st.integers(-1, 8),
    queue_open=st.none() | st.dictionaries(st.sampled_from(QUEUES), st.integers(-1, 5)),
)


@st.composite
def problem_st(draw: st.DrawFn) -> tuple[list[Candidate], Capacity]:
    limits = draw(limits_st)
    return draw(candidates_st(limits)), draw(capacity_st)


def assert_within_limits(admitted: Iterable[Candidate], capacity: Capacity) -> None:
    """What `admitted` adds to `capacity` fits in every limit it had room for."""
    admitted = list(admitted)
    for name, pool in capacity.pools.items():
        if pool.open is not None:
            assert sum(c.pool_slots for c in admitted if c.pool == name) <= pool.open
    assert all(c.pool in capacity.pools for c in admitted)
    per_dag = Counter(c.dag_id for c in admitted)
    for c in admitted:
        room = c.dag_max_active_tasks - capacity.dag_active.get(c.dag_id, 0)
        assert per_dag[c.dag_id] <= max(0, room)
    per_task = Counter((c.dag_id, c.task_id) for c in admitted)
    for c in admitted:
        if c.max_active_tis_per_dag is not None:
            room = c.max_active_tis_per_dag - capacity.task_active.get((c.dag_id, c.task_id), 0)
            assert per_task[(c.dag_id, c.task_id)] <= max(0, room)
    if capacity.parallelism_open is not None:
        assert len(admitted) <= max(0, capacity.parallelism_open)
    if capacity.queue_open is not None:
        for queue, n in Counter(c.queue for c in admitted).items():
            assert n <= max(0, capacity.queue_open.get(queue, 0))


@PROPS
@given(problem_st())
def test_no_limit_is_ever_exceeded(problem: tuple[list[Candidate], Capacity]) -> None:
    candidates, capacity = problem
    assert_within_limits(admit(candidates, capacity).admitted, capacity)


@PROPS
@given(problem_st())
def test_every_candidate_is_admitted_or_starved_once(
    problem: tuple[list[Candidate], Capacity],
) -> None:
    candidates, capacity = problem
    result = admit(candidates, capacity)
    decided = [c.ti_id for c in result.admitted] + [s.candidate.ti_id for s in result.starved]
    assert sorted(decided) == sorted(c.ti_id for c in candidates)


@PROPS
@given(problem_st())
def test_priority_holds_within_a_pool(problem: tuple[list[Candidate], Capacity]) -> None:
    candidates, capacity = problem
    result = admit(candidates, capacity)
    rank = {c.ti_id: i for i, c in enumerate(admission_order(candidates))}
    pool_starved = [s.candidate for s in result.starved if s.reason in (R.POOL_FULL, R.POOL_HELD)]
    for waiting in pool_starved:
        for a in result.admitted:
            if a.pool == waiting.pool:
                assert a.priority_weight >= waiting.priority_weight
                assert rank[a.ti_id] < rank[waiting.ti_id]


@PROPS
@given(problem_st(), st.data())
def test_result_does_not_depend_on_input_order(
    problem: tuple[list[Candidate], Capacity], data: st.DataObject
) -> None:
    candidates, capacity = problem
    shuffled = data.draw(st.permutations(candidates))
    assert admit(shuffled, capacity) == admit(candidates, capacity)


@PROPS
@given(problem_st())
def test_reasons_are_true_when_the_decision_ends(problem: tuple[list[Candidate], Capacity]) -> None:
    candidates, capacity = problem
    result = admit(candidates, capacity)
    left = result.remaining
    for s in result.starved:
        c = s.candidate
        pool = left.pools.get(c.pool)
        match s.reason:
            case R.POOL_MISSING:
                assert pool is None
            case R.POOL_TOO_SMALL:
                assert pool is not None
                assert pool.total is not None
                assert c.pool_slots > pool.total
            case R.PARALLELISM:
                assert left.parallelism_open is not None
                assert left.parallelism_open <= 0
            case R.POOL_FULL | R.POOL_HELD:
                assert pool is not None
                assert pool.open is not None
                assert any(
                    h.reason is R.POOL_FULL and h.candidate.pool == c.pool for h in result.starved
                )
            case R.DAG_MAX_ACTIVE_TASKS:
                assert left.dag_active.get(c.dag_id, 0) >= c.dag_max_active_tasks
            case R.MAX_ACTIVE_TIS_PER_DAG:
                assert c.max_active_tis_per_dag is not None
                assert left.task_active.get((c.dag_id, c.task_id), 0) >= c.max_active_tis_per_dag
            case R.QUEUE_FULL:
                assert left.queue_open is not None
                assert left.queue_open.get(c.queue, 0) <= 0


@PROPS
@given(problem_st())
def test_starved_stay_starved_on_the_remaining_capacity(
    problem: tuple[list[Candidate], Capacity],
) -> None:
    candidates, capacity = problem
    result = admit(candidates, capacity)
    again = admit([s.candidate for s in result.starved], result.remaining)
    assert again.admitted == ()


@PROPS
@given(problem_st())
def test_pool_figures_match_the_decision(problem: tuple[list[Candidate], Capacity]) -> None:
    candidates, capacity = problem
    result = admit(candidates, capacity)
    assert set(result.pools) == set(capacity.pools)
    for name, usage in result.pools.items():
        taken = sum(c.pool_slots for c in result.admitted if c.pool == name)
        assert usage.admitted_slots == taken
        assert usage.open_slots == result.remaining.pools[name].open
        starving = [s for s in result.starved if s.candidate.pool == name]
        assert usage.starving_tasks == sum(
            s.reason in (R.POOL_FULL, R.POOL_HELD, R.POOL_TOO_SMALL) for s in starving
        )


# ---------------------------------------------------------------- a cluster over time


class AdmissionCluster(RuleBasedStateMachine):
    """Scheduled task instances arrive, admit() queues some, queued ones finish and free slots."""

    def __init__(self) -> None:
        super().__init__()
        self.scheduled: dict[int, Candidate] = {}
        self.active: dict[int, Candidate] = {}
        self.next_id = 0

    @initialize(
        limits=limits_st,
        pool_totals=st.fixed_dictionaries({p: st.none() | st.integers(0, 5) for p in POOLS}),
        parallelism=st.none() | st.integers(0, 8),
        queue_slots=st.none() | st.fixed_dictionaries({q: st.integers(0, 4) for q in QUEUES}),
    )
    def configure(
        self,
        limits: Limits,
        pool_totals: dict[str, int | None],
        parallelism: int | None,
        queue_slots: dict[str, int] | None,
    ) -> None:
        self.limits, self.pool_totals = limits, pool_totals
        self.parallelism, self.queue_slots = parallelism, queue_slots

    def capacity(self) -> Capacity:
        active = list(self.active.values())
        occupied = Counter[str]()
        for c in active:
            occupied[c.pool] += c.pool_slots
        return Capacity(
            pools={
                p: PoolCapacity(total=t, occupied=occupied[p]) for p, t in self.pool_totals.items()
            },
            dag_active=dict(Counter(c.dag_id for c in active)),
            task_active=dict(Counter((c.dag_id, c.task_id) for c in active)),
            parallelism_open=None if self.parallelism is None else self.parallelism - len(active),
            queue_open=None
            if self.queue_slots is None
            else {q: n - sum(c.queue == q for c in active) for q, n in self.queue_slots.items()},
        )

    @rule(
        dag_id=st.sampled_from(DAGS),
        task_id=st.sampled_from(TASKS),
        pool=st.sampled_from((*POOLS, "ghost")),
        pool_slots=st.integers(1, 3),
        priority=st.integers(0, 3),
        queue=st.sampled_from(QUEUES),
    )
    def task_becomes_scheduled(
        self, dag_id: str, task_id: str, pool: str, pool_slots: int, priority: int, queue: str
    ) -> None:
        ti_id, self.next_id = self.next_id, self.next_id + 1
        self.scheduled[ti_id] = Candidate(
            ti_id=ti_id,
            dag_id=dag_id,
            run_id=f"r{ti_id}",
            task_id=task_id,
            logical_date=T0 + timedelta(minutes=ti_id),
            pool=pool,
            pool_slots=pool_slots,
            priority_weight=priority,
            queue=queue,
            max_active_tis_per_dag=self.limits.task_max[(dag_id, task_id)],
            dag_max_active_tasks=self.limits.dag_max[dag_id],
        )

    @rule()
    def scheduler_admits(self) -> None:
        before = self.capacity()
        result: Admission = admit(self.scheduled.values(), before)
        for c in result.admitted:
            self.active[c.ti_id] = self.scheduled.pop(c.ti_id)
        assert result.remaining == self.capacity()
        # A second replica re-reading the same rows right after admits nothing more.
        assert admit(self.scheduled.values(), result.remaining).admitted == ()

    @precondition(lambda self: bool(self.active))
    @rule(data=st.data())
    def task_finishes(self, data: st.DataObject) -> None:
        ti_id = data.draw(st.sampled_from(sorted(self.active)))
        del self.active[ti_id]

    @invariant()
    def every_limit_holds(self) -> None:
        if not hasattr(self, "limits"):
            return
        capacity = self.capacity()
        for name, pool in capacity.pools.items():
            assert pool.total is None or pool.occupied <= pool.total, name
        for dag_id, n in capacity.dag_active.items():
            assert n <= self.limits.dag_max[dag_id]
        for key, n in capacity.task_active.items():
            limit = self.limits.task_max[key]
            assert limit is None or n <= limit
        assert capacity.parallelism_open is None or capacity.parallelism_open >= 0
        assert capacity.queue_open is None or min(capacity.queue_open.values()) >= 0
        assert all(c.pool in self.pool_totals for c in self.active.values())


AdmissionCluster.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None
)
test_admission_cluster = AdmissionCluster.TestCase
