"""The admission decision: every limit, the order, the reasons, and Airflow 2's semantics."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tradewind.errors import BadInputError
from tradewind.scheduling.admission import (
    Admission,
    Candidate,
    Capacity,
    PoolCapacity,
    PoolUsage,
    StarvationReason,
    admission_order,
    admit,
)

R = StarvationReason
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def cand(ti_id: int, **overrides: Any) -> Candidate:
    fields: dict[str, Any] = {
        "ti_id": ti_id,
        "dag_id": "d",
        "run_id": f"run{ti_id}",
        "task_id": f"t{ti_id}",
        "logical_date": T0,
        "pool": "default_pool",
        "pool_slots": 1,
        "priority_weight": 1,
        "queue": "default",
        "max_active_tis_per_dag": None,
        "dag_max_active_tasks": 16,
    }
    fields.update(overrides)
    return Candidate(**fields)


def cap(**overrides: Any) -> Capacity:
    fields: dict[str, Any] = {"pools": {"default_pool": PoolCapacity(total=128)}}
    fields.update(overrides)
    return Capacity(**fields)


def ids(result: Admission) -> list[int]:
    return [c.ti_id for c in result.admitted]


def reasons(result: Admission) -> dict[int, tuple[StarvationReason, str]]:
    return {s.candidate.ti_id: (s.reason, s.message) for s in result.starved}


# ---------------------------------------------------------------- order


def test_higher_priority_weight_goes_first() -> None:
    result = admit(
        [cand(1, priority_weight=1), cand(2, priority_weight=10), cand(3, priority_weight=5)],
        cap(pools={"default_pool": PoolCapacity(total=2)}),
    )
    assert ids(result) == [2, 3]
    assert reasons(result)[1][0] is R.POOL_FULL


def test_equal_priority_older_logical_date_first() -> None:
    newer = cand(1, logical_date=T0 + timedelta(days=1))
    older = cand(2, logical_date=T0)
    result = admit([newer, older], cap(pools={"default_pool": PoolCapacity(total=1)}))
    assert ids(result) == [2]


def test_order_is_total_and_independent_of_input_order() -> None:
    same = [cand(i, dag_id="d", run_id="r", task_id="t") for i in (3, 1, 2)]
    assert [c.ti_id for c in admission_order(same)] == [1, 2, 3]
    assert admit(same, cap()) == admit(list(reversed(same)), cap())


# ---------------------------------------------------------------- pools


def test_pool_slots_count_slots_not_tasks() -> None:
    result = admit(
        [cand(1, pool_slots=2, priority_weight=3), cand(2, pool_slots=2, priority_weight=2)],
        cap(pools={"default_pool": PoolCapacity(total=5, occupied=2)}),
    )
    assert ids(result) == [1]
    assert reasons(result)[2] == (
        R.POOL_FULL,
        "pool 'default_pool' has 1 open slots, task d.t2@run2 needs 2",
    )
    assert result.pools["default_pool"] == PoolUsage(
        total=5, open_slots=1, admitted_slots=2, starving_tasks=1
    )


def test_full_pool_reason_names_the_pool() -> None:
    result = admit([cand(1, pool="x")], cap(pools={"x": PoolCapacity(total=4, occupied=4)}))
    assert reasons(result) == {1: (R.POOL_FULL, "pool 'x' has 0 open slots")}


def test_overfull_pool_has_no_open_slots() -> None:
    result = admit([cand(1)], cap(pools={"default_pool": PoolCapacity(total=2, occupied=5)}))
    assert ids(result) == []
    assert result.pools["default_pool"].open_slots == 0


def test_missing_pool_starves_only_its_tasks() -> None:
    result = admit([cand(1, pool="nope", priority_weight=9), cand(2)], cap())
    assert ids(result) == [2]
    assert reasons(result) == {1: (R.POOL_MISSING, "pool 'nope' does not exist")}
    assert result.permanent == (result.starved[0],)
    # Airflow 2 emits no starving figure for a pool that does not exist.
    assert "nope" not in result.pools
    assert result.starving_total == 0


def test_task_bigger_than_its_pool_is_starved_forever_and_holds_nothing() -> None:
    big = cand(1, pool_slots=5, priority_weight=10)
    small = cand(2, priority_weight=1)
    result = admit([big, small], cap(pools={"default_pool": PoolCapacity(total=4)}))
    assert ids(result) == [2]
    assert reasons(result)[1] == (
        R.POOL_TOO_SMALL,
        "task d.t1@run1 needs 5 slots but pool 'default_pool' has only 4 in total",
    )
    assert result.starved[0].permanent
    assert result.pools["default_pool"].starving_tasks == 1


def test_too_small_is_reported_even_when_the_pool_is_full() -> None:
    result = admit(
        [cand(1, pool_slots=5)], cap(pools={"default_pool": PoolCapacity(total=4, occupied=4)})
    )
    assert reasons(result)[1][0] is R.POOL_TOO_SMALL


def test_lower_priority_never_takes_slots_a_higher_one_is_waiting_for() -> None:
    big = cand(1, pool_slots=3, priority_weight=10)
    small = cand(2, pool_slots=1, priority_weight=1)
    other_pool = cand(3, pool="other", priority_weight=1)
    result = admit(
        [small, big, other_pool],
        cap(
            pools={
                "default_pool": PoolCapacity(total=4, occupied=2),
                "other": PoolCapacity(total=1),
            }
        ),
    )
    assert ids(result) == [3]
    assert reasons(result)[1][0] is R.POOL_FULL
    assert reasons(result)[2] == (
        R.POOL_HELD,
        "pool 'default_pool' is held for higher-priority task d.t1@run1 (needs 3 slots)",
    )
    assert result.pools["default_pool"].starving_tasks == 2


def test_equal_priority_later_in_order_is_held_too() -> None:
    first = cand(1, pool_slots=2, logical_date=T0)
    later = cand(2, pool_slots=1, logical_date=T0 + timedelta(hours=1))
    result = admit([first, later], cap(pools={"default_pool": PoolCapacity(total=2, occupied=1)}))
    assert ids(result) == []
    assert reasons(result)[2][0] is R.POOL_HELD


def test_unlimited_pool_admits_everything() -> None:
    many = [cand(i, pool_slots=50) for i in range(10)]
    result = admit(many, cap(pools={"default_pool": PoolCapacity(total=None, occupied=999)}))
    assert len(result.admitted) == 10
    assert result.pools["default_pool"] == PoolUsage(
        total=None, open_slots=None, admitted_slots=500, starving_tasks=0
    )


def test_pools_without_candidates_still_report_figures() -> None:
    result = admit([], cap(pools={"idle": PoolCapacity(total=3, occupied=1)}))
    assert result.pools == {
        "idle": PoolUsage(total=3, open_slots=2, admitted_slots=0, starving_tasks=0)
    }
    assert result.admitted == ()
    assert result.starved == ()


# ---------------------------------------------------------------- DAG and task concurrency


def test_dag_max_active_tasks_counts_every_run_of_the_dag() -> None:
    # Airflow 2 sums queued+running TIs over all runs of the DAG (Airflow 3 counts per run).
    run_a = cand(1, run_id="a", dag_max_active_tasks=16, priority_weight=2)
    run_b = cand(2, run_id="b", dag_max_active_tasks=16, priority_weight=1)
    result = admit([run_a, run_b], cap(dag_active={"d": 15}))
    assert ids(result) == [1]
    assert reasons(result)[2] == (R.DAG_MAX_ACTIVE_TASKS, "dag 'd' max_active_tasks 16 reached")
    assert result.remaining.dag_active == {"d": 16}


def test_dag_limit_does_not_hold_the_pool_for_other_dags() -> None:
    blocked = cand(1, dag_id="busy", dag_max_active_tasks=1, priority_weight=9)
    other = cand(2, dag_id="calm", priority_weight=1)
    result = admit(
        [blocked, other],
        cap(pools={"default_pool": PoolCapacity(total=1)}, dag_active={"busy": 1}),
    )
    assert ids(result) == [2]
    assert result.pools["default_pool"].starving_tasks == 0


def test_max_active_tis_per_dag_counts_across_runs() -> None:
    first = cand(1, task_id="load", run_id="a", max_active_tis_per_dag=2, priority_weight=3)
    second = cand(2, task_id="load", run_id="b", max_active_tis_per_dag=2, priority_weight=2)
    sibling = cand(3, task_id="other", run_id="a", priority_weight=1)
    result = admit([first, second, sibling], cap(task_active={("d", "load"): 1}))
    assert ids(result) == [1, 3]
    assert reasons(result)[2] == (
        R.MAX_ACTIVE_TIS_PER_DAG,
        "task d.load max_active_tis_per_dag 2 reached",
    )


def test_max_active_tis_per_dag_is_per_dag() -> None:
    a = cand(1, dag_id="a", task_id="t", max_active_tis_per_dag=1)
    b = cand(2, dag_id="b", task_id="t", max_active_tis_per_dag=1)
    assert ids(admit([a, b], cap())) == [1, 2]


# ---------------------------------------------------------------- cluster and workers


def test_parallelism_counts_task_instances_not_slots() -> None:
    result = admit(
        [cand(i, pool_slots=3, priority_weight=10 - i) for i in range(3)],
        cap(parallelism_open=2),
    )
    assert ids(result) == [0, 1]
    assert reasons(result)[2] == (R.PARALLELISM, "cluster parallelism reached")
    assert result.remaining.parallelism_open == 0


def test_no_parallelism_left_admits_nothing_but_permanent_reasons_still_show() -> None:
    result = admit([cand(1), cand(2, pool="nope")], cap(parallelism_open=-3))
    assert ids(result) == []
    assert {k: r for k, (r, _) in reasons(result).items()} == {
        1: R.PARALLELISM,
        2: R.POOL_MISSING,
    }


def test_queue_capacity_is_per_queue_and_missing_queue_has_none() -> None:
    result = admit(
        [
            cand(1, priority_weight=3),
            cand(2, priority_weight=2),
            cand(3, queue="gpu", priority_weight=1),
            cand(4, queue="spark", pool_slots=4, priority_weight=1),
        ],
        cap(queue_open={"default": 1, "spark": 1}),
    )
    assert ids(result) == [1, 4]
    assert reasons(result) == {
        2: (R.QUEUE_FULL, "no free worker slot serves queue 'default'"),
        3: (R.QUEUE_FULL, "no free worker slot serves queue 'gpu'"),
    }
    assert result.remaining.queue_open == {"default": 0, "spark": 0}


def test_unknown_queue_capacity_means_unlimited() -> None:
    result = admit([cand(i, queue="anything") for i in range(5)], cap(queue_open=None))
    assert len(result.admitted) == 5


# ---------------------------------------------------------------- the decision as a whole


def test_remaining_capacity_admits_nothing_more() -> None:
    candidates = [
        cand(1, pool_slots=2, priority_weight=5),
        cand(2, pool_slots=2, priority_weight=4),
        cand(3, dag_id="e", pool="p", dag_max_active_tasks=1, priority_weight=3),
        cand(4, dag_id="e", pool="p", dag_max_active_tasks=1, priority_weight=2),
    ]
    pools = {"default_pool": PoolCapacity(total=3), "p": PoolCapacity(total=None)}
    first = admit(candidates, cap(pools=pools))
    assert ids(first) == [1, 3]
    assert [s.reason for s in first.starved] == [R.POOL_FULL, R.DAG_MAX_ACTIVE_TASKS]
    assert first.remaining.pools["default_pool"] == PoolCapacity(total=3, occupied=2)
    again = admit([s.candidate for s in first.starved], first.remaining)
    assert again.admitted == ()


def test_pool_slots_below_one_is_bad_input() -> None:
    with pytest.raises(BadInputError, match=r"d\.t1@run1 asks for pool_slots=0"):
        cand(1, pool_slots=0)


def test_duplicate_task_instance_is_bad_input() -> None:
    one = cand(7)
    with pytest.raises(BadInputError, match="task instance id 7"):
        admit([one, replace(one, priority_weight=3)], cap())
