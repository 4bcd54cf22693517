"""The state machines: the transition table allows what Airflow allows and rejects the rest."""

from __future__ import annotations

import pytest

from tradewind.errors import InvalidTransitionError
from tradewind.states import (
    FINISHED_TI_STATES,
    TASK_INSTANCE_TRANSITIONS,
    DagRunState,
    TaskInstanceState,
    can_transition,
    transition,
)

TI = TaskInstanceState


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (TI.NONE, TI.SCHEDULED),
        (TI.SCHEDULED, TI.QUEUED),
        (TI.QUEUED, TI.RUNNING),
        (TI.RUNNING, TI.SUCCESS),
        (TI.RUNNING, TI.UP_FOR_RETRY),
        (TI.UP_FOR_RETRY, TI.SCHEDULED),
        (TI.QUEUED, TI.SCHEDULED),
        (TI.FAILED, TI.NONE),
    ],
)
def test_allowed_moves(current: TaskInstanceState, target: TaskInstanceState) -> None:
    assert transition(current, target) is target


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (TI.NONE, TI.RUNNING),
        (TI.SCHEDULED, TI.RUNNING),
        (TI.SUCCESS, TI.RUNNING),
        (TI.UP_FOR_RETRY, TI.QUEUED),
        (TI.REMOVED, TI.SUCCESS),
    ],
)
def test_forbidden_moves_raise(current: TaskInstanceState, target: TaskInstanceState) -> None:
    with pytest.raises(InvalidTransitionError, match=f"{current.value!r} -> {target.value!r}"):
        transition(current, target)


def test_every_state_has_a_row_and_finished_states_only_leave_by_clear_or_mark() -> None:
    assert set(TASK_INSTANCE_TRANSITIONS) == set(TI)
    for state in FINISHED_TI_STATES:
        assert TASK_INSTANCE_TRANSITIONS[state] <= {TI.NONE, TI.SUCCESS, TI.FAILED}


def test_run_states_and_mixed_kinds() -> None:
    assert transition(DagRunState.QUEUED, DagRunState.RUNNING) is DagRunState.RUNNING
    assert not can_transition(DagRunState.SUCCESS, DagRunState.SUCCESS)
    assert not can_transition(TI.NONE, DagRunState.RUNNING)  # type: ignore[misc]
