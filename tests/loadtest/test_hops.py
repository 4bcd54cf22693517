"""A hop's latency cut into phases by the store's timestamps: the phases add up to the hop, the
last upstream to end is the one a hop is measured from, and hops that cannot be cut are left
out rather than guessed."""

from __future__ import annotations

import pytest

from loadtest.collect import AttemptRecord, StoreSnapshot, TiRecord
from loadtest.hops import PHASES, hop_phases, hop_phases_ms
from loadtest.ledger import build_ledger

RUN = "manual__2026-01-01T00:00:00+00:00"


def line(event: str, at: float, task: str, ti_id: int, *, token: int = 1) -> str:
    """A ledger line with the executor's identity (TRADEWIND_TI_ID and _ATTEMPT_TOKEN set)."""
    return f"{event} {at:.6f} d {task} {RUN} {ti_id} {token} 1 1 {100 + ti_id}"


def ti(task: str, id: int, *, end: float, scheduled: float | None) -> TiRecord:
    return TiRecord(
        id=id,
        dag_id="d",
        run_id=RUN,
        task_id=task,
        state="success",
        try_number=1,
        max_tries=0,
        token=1,
        pool="default_pool",
        start_date=end - 0.001,
        end_date=end,
        worker="w0",
        queued_by="s0",
        scheduled_at=scheduled,
    )


def attempt(ti_id: int, *, queued: float, dispatched: float | None) -> AttemptRecord:
    return AttemptRecord(
        id=ti_id,
        ti_id=ti_id,
        token=1,
        try_number=1,
        state="success",
        queued_at=queued,
        start_date=None,
        end_date=None,
        worker="w0",
        queued_by="s0",
        dispatched_at=dispatched,
    )


def snapshot(tis: list[TiRecord], attempts: list[AttemptRecord]) -> StoreSnapshot:
    return StoreSnapshot(runs=(), tis=tuple(tis), attempts=tuple(attempts), members=(), workers=())


# a >> b: a's code ends at 100.000; its report is applied at .010; b is scheduled at .030,
# queued at .035, dispatched at .041 and its code starts at .050
LEDGER = [
    line("start", 99.990, "a", 1),
    line("end", 100.000, "a", 1),
    line("start", 100.050, "b", 2),
    line("end", 100.051, "b", 2),
]
TIS = [ti("a", 1, end=100.010, scheduled=99.0), ti("b", 2, end=100.060, scheduled=100.030)]
ATTEMPTS = [
    attempt(1, queued=99.1, dispatched=99.2),
    attempt(2, queued=100.035, dispatched=100.041),
]


def test_a_hop_is_cut_into_phases_that_add_up_to_its_latency() -> None:
    (hop,) = hop_phases(snapshot(TIS, ATTEMPTS), build_ledger(LEDGER), {"b": ("a",)}, 0.0)
    assert list(hop) == list(PHASES)
    expected = {"report": 10.0, "examine": 20.0, "queue": 5.0, "dispatch": 6.0, "start": 9.0}
    assert hop == pytest.approx(expected, abs=1e-6)
    assert sum(hop.values()) == pytest.approx(50.0, abs=1e-6)  # 100.050 - 100.000


def test_store_times_are_moved_to_the_local_clock() -> None:
    """Store times are on the database's clock, `offset_s` ahead of the local one."""
    shifted = snapshot(
        [ti("a", 1, end=105.010, scheduled=104.0), ti("b", 2, end=105.060, scheduled=105.030)],
        [
            attempt(1, queued=104.1, dispatched=104.2),
            attempt(2, queued=105.035, dispatched=105.041),
        ],
    )
    (hop,) = hop_phases(shifted, build_ledger(LEDGER), {"b": ("a",)}, 5.0)
    assert hop["report"] == pytest.approx(10.0, abs=1e-6)
    assert hop["start"] == pytest.approx(9.0, abs=1e-6)


def test_a_join_is_measured_from_the_upstream_that_ended_last() -> None:
    ledger = [
        line("start", 99.0, "a", 1),
        line("end", 99.5, "a", 1),
        line("start", 99.9, "c", 3),
        line("end", 100.0, "c", 3),
        line("start", 100.050, "b", 2),
        line("end", 100.051, "b", 2),
    ]
    tis = [*TIS, ti("c", 3, end=100.010, scheduled=99.8)]
    attempts = [*ATTEMPTS, attempt(3, queued=99.85, dispatched=99.86)]
    (hop,) = hop_phases(snapshot(tis, attempts), build_ledger(ledger), {"b": ("a", "c")}, 0.0)
    assert hop["report"] == pytest.approx(10.0, abs=1e-6)  # c's end to c's report
    assert sum(hop.values()) == pytest.approx(50.0, abs=1e-6)


def test_hops_missing_a_mark_or_an_identity_are_left_out() -> None:
    ledger = build_ledger(LEDGER)
    undispatched = [ATTEMPTS[0], attempt(2, queued=100.035, dispatched=None)]
    assert hop_phases(snapshot(TIS, undispatched), ledger, {"b": ("a",)}, 0.0) == []
    unscheduled = [TIS[0], ti("b", 2, end=100.060, scheduled=None)]
    assert hop_phases(snapshot(unscheduled, ATTEMPTS), ledger, {"b": ("a",)}, 0.0) == []
    # rendered templates only: the ledger does not name the attempt
    templated = build_ledger(
        x.replace(" 1 1 1 1", " - - - 1").replace(" 2 1 1 1", " - - - 1") for x in LEDGER
    )
    assert templated.executions[0].ti_id is None
    assert hop_phases_ms(snapshot(TIS, ATTEMPTS), templated, {"b": ("a",)}, 0.0) is None
    # an upstream that never ended
    unfinished = build_ledger(LEDGER[:1] + LEDGER[2:])
    assert hop_phases(snapshot(TIS, ATTEMPTS), unfinished, {"b": ("a",)}, 0.0) == []


def test_the_summary_has_percentiles_and_a_mean_per_phase() -> None:
    out = hop_phases_ms(snapshot(TIS, ATTEMPTS), build_ledger(LEDGER), {"b": ("a",)}, 0.0)
    assert out is not None
    assert list(out) == list(PHASES)
    assert out["examine"] == {
        "p50": 20.0,
        "p90": 20.0,
        "p99": 20.0,
        "max": 20.0,
        "n": 1,
        "mean": 20.0,
    }
