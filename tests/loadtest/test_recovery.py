"""The failover measure from a strike record and a store snapshot (no cluster needed)."""

from __future__ import annotations

from loadtest.chaos import Strike
from loadtest.collect import AttemptRecord, StoreSnapshot, TiRecord
from loadtest.recovery import failover
from loadtest.scenarios import Fault

KILL = 1000.0


def attempt(
    ti_id: int, *, token: int = 1, queued: float, start: float | None, end: float | None
) -> AttemptRecord:
    return AttemptRecord(
        id=ti_id * 10 + token, ti_id=ti_id, token=token, try_number=token,
        state="success" if end else "running", queued_at=queued, start_date=start, end_date=end,
        worker="w0", queued_by="s0",
    )  # fmt: skip


def ti(ti_id: int, state: str) -> TiRecord:
    return TiRecord(
        id=ti_id, dag_id="d", run_id="r", task_id=f"t{ti_id}", state=state, try_number=1,
        max_tries=1, token=1, pool="default_pool", start_date=None, end_date=None, worker="w0",
        queued_by="s0",
    )  # fmt: skip


def snapshot(states: dict[int, str], *attempts: AttemptRecord) -> StoreSnapshot:
    tis = tuple(ti(i, state) for i, state in states.items())
    return StoreSnapshot(runs=(), tis=tis, attempts=attempts, members=(), workers=())


def strike(*in_flight: int) -> Strike:
    return Strike(fault=Fault.KILL_SCHEDULER, victim="s0", victim_id="m0", at=KILL,
                  in_flight=in_flight)  # fmt: skip


def test_failover_is_the_first_change_a_survivor_made_to_the_victim_s_work() -> None:
    snap = snapshot(
        {1: "success", 2: "success"},
        attempt(1, queued=KILL - 1, start=KILL - 0.5, end=KILL + 0.02),  # reported elsewhere
        attempt(2, queued=KILL - 1, start=None, end=None),
        attempt(2, token=2, queued=KILL + 1.5, start=KILL + 1.6, end=KILL + 1.7),  # requeued
    )
    out = failover(strike(1, 2), snap, offset_s=0.0)
    assert (out["in_flight"], out["moved"], out["finished_by_victim"]) == (2, 2, 0)
    assert out["work_moved_s"] == 0.02
    assert out["all_moved_s"] == 1.5


def test_work_the_victim_finished_in_its_last_commit_is_not_work_that_never_moved() -> None:
    """The victim's COMMIT was in the socket at the SIGKILL: PostgreSQL committed it after, so
    the task instance read as held, yet it ended before the kill and nobody had to move it."""
    dying = attempt(1, queued=KILL - 1, start=KILL - 0.5, end=KILL - 0.003)
    other = attempt(2, queued=KILL - 1, start=KILL - 0.4, end=KILL + 0.03)
    out = failover(strike(1, 2), snapshot({1: "success", 2: "success"}, dying, other), 0.0)
    assert (out["in_flight"], out["moved"], out["finished_by_victim"]) == (1, 1, 1)
    assert out["work_moved_s"] == 0.03
    alone = failover(strike(1), snapshot({1: "success"}, dying), offset_s=0.0)
    assert (alone["in_flight"], alone["finished_by_victim"], alone["work_moved_s"]) == (0, 1, None)


def test_stranded_work_still_counts_as_never_moved() -> None:
    # nothing at all changed after the kill
    stuck = failover(
        strike(3), snapshot({3: "queued"}, attempt(3, queued=KILL - 1, start=None, end=None)), 0.0
    )
    assert (stuck["in_flight"], stuck["moved"], stuck["work_moved_s"]) == (1, 0, None)
    # an earlier try ended before the kill, the latest one was left queued by the victim
    retried = snapshot(
        {4: "queued"},
        attempt(4, queued=KILL - 9, start=KILL - 8, end=KILL - 5),
        attempt(4, token=2, queued=KILL - 1, start=None, end=None),
    )
    out = failover(strike(4), retried, offset_s=0.0)
    assert (out["in_flight"], out["finished_by_victim"], out["work_moved_s"]) == (1, 0, None)
    # the victim's last commit ended the try with a retry left, and nobody ever retried it
    waiting = snapshot(
        {5: "up_for_retry"}, attempt(5, queued=KILL - 1, start=KILL - 0.5, end=KILL - 0.002)
    )
    out = failover(strike(5), waiting, offset_s=0.0)
    assert (out["in_flight"], out["finished_by_victim"], out["work_moved_s"]) == (1, 0, None)
