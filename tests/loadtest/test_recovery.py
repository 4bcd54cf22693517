"""The failover measure from a strike record and a store snapshot (no cluster needed)."""

from __future__ import annotations

from loadtest.chaos import Strike
from loadtest.collect import AttemptRecord, StoreSnapshot
from loadtest.recovery import failover
from loadtest.scenarios import Fault

KILL = 1000.0


def attempt(ti_id: int, *, queued: float, start: float | None, end: float | None) -> AttemptRecord:
    return AttemptRecord(
        id=ti_id * 10, ti_id=ti_id, token=1, try_number=1, state="success" if end else "running",
        queued_at=queued, start_date=start, end_date=end, worker="w0", queued_by="s0",
    )  # fmt: skip


def snapshot(*attempts: AttemptRecord) -> StoreSnapshot:
    return StoreSnapshot(runs=(), tis=(), attempts=attempts, members=(), workers=())


def strike(*in_flight: int) -> Strike:
    return Strike(fault=Fault.KILL_SCHEDULER, victim="s0", victim_id="m0", at=KILL,
                  in_flight=in_flight)  # fmt: skip


def test_failover_is_the_first_change_a_survivor_made_to_the_victim_s_work() -> None:
    snap = snapshot(
        attempt(1, queued=KILL - 1, start=KILL - 0.5, end=KILL + 0.02),  # reported elsewhere
        attempt(2, queued=KILL - 1, start=None, end=None),
        attempt(2, queued=KILL + 1.5, start=KILL + 1.6, end=KILL + 1.7),  # requeued when dead
    )
    out = failover(strike(1, 2), snap, offset_s=0.0)
    assert (out["in_flight"], out["moved"], out["finished_by_victim"]) == (2, 2, 0)
    assert out["work_moved_s"] == 0.02
    assert out["all_moved_s"] == 1.5


def test_work_the_victim_finished_in_its_last_commit_is_not_work_that_never_moved() -> None:
    """The victim's COMMIT was in the socket at the SIGKILL: PostgreSQL committed it after, so
    the task instance read as held, yet it ended before the kill and nobody had to move it."""
    dying = attempt(1, queued=KILL - 1, start=KILL - 0.5, end=KILL - 0.003)
    out = failover(strike(1, 2), snapshot(dying, attempt(2, queued=KILL - 1, start=KILL - 0.4,
                                                            end=KILL + 0.03)), offset_s=0.0)  # fmt: skip
    assert (out["in_flight"], out["moved"], out["finished_by_victim"]) == (1, 1, 1)
    assert out["work_moved_s"] == 0.03
    alone = failover(strike(1), snapshot(dying), offset_s=0.0)
    assert (alone["in_flight"], alone["finished_by_victim"], alone["work_moved_s"]) == (0, 1, None)
    # Held work with no change at all after the kill still counts as never moved.
    stuck = failover(strike(3), snapshot(attempt(3, queued=KILL - 1, start=None, end=None)), 0.0)
    assert (stuck["in_flight"], stuck["moved"], stuck["work_moved_s"]) == (1, 0, None)
