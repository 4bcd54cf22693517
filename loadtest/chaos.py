"""Injecting a scenario's fault while the load runs: SIGKILL the busiest scheduler (optionally
restarting it once declared dead), SIGKILL the busiest worker, or cut a worker off and heal it
later. Every action is recorded as an event, with the work the victim held at that moment."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa

from loadtest.cluster import Cluster, Proc, Role
from loadtest.netpart import Partition
from loadtest.sampler import Progress
from loadtest.scenarios import Fault, Plan

__all__ = ["Chaos", "Event", "Strike"]

log = logging.getLogger(__name__)

# Give up waiting for the victim to hold work once this much more of the load has finished.
_PATIENCE = 0.4
_NO_WORKER_WORK = (
    "no attempt ran on a worker: the schedulers still execute attempts in-process, so there is "
    "no worker to {what}"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Something the harness did to the cluster, at a local time."""

    at: float
    kind: str  # kill, restart, cut, heal
    target: str
    detail: str = ""


@dataclass(kw_only=True)
class Strike:
    """The fault as it happened: its victim, when, and what the victim held."""

    fault: Fault
    victim: str = ""
    victim_id: str = ""  # scheduler member id or worker id in the store
    at: float | None = None
    in_flight: tuple[int, ...] = ()  # task instance ids the victim had queued or running
    skipped: str | None = None
    method: str | None = None  # partition: netns or proxy; kill: process or tree
    events: list[Event] = field(default_factory=list)


_BUSIEST_SCHEDULER = sa.text(
    "SELECT m.id, m.pid, count(*) AS n FROM task_instance t "
    "JOIN scheduler_member m ON m.id = t.queued_by "
    "WHERE t.state IN ('queued', 'running') AND m.state = 'alive' "
    "GROUP BY m.id, m.pid ORDER BY n DESC LIMIT 1"
)
_BUSY_WORKERS = sa.text(
    "SELECT w.id, w.name, count(*) AS n FROM task_instance t JOIN worker w ON w.id = t.worker "
    "WHERE t.state = 'running' GROUP BY w.id, w.name ORDER BY n DESC"
)
_HELD_BY_MEMBER = sa.text(
    "SELECT id FROM task_instance WHERE queued_by = :who AND state IN ('queued', 'running')"
)
_HELD_BY_WORKER = sa.text(
    "SELECT id FROM task_instance WHERE worker = :who AND state IN ('queued', 'running')"
)
_MEMBER_STATE = sa.text("SELECT state FROM scheduler_member WHERE id = :who")


class Chaos:
    """Call `tick(progress)` from the wait loop; it strikes once, then follows up."""

    def __init__(
        self,
        plan: Plan,
        cluster: Cluster,
        engine: sa.Engine,
        *,
        partition: Partition | None = None,
        kill_tree: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.plan = plan
        self.cluster = cluster
        self.engine = engine
        self.partition = partition
        self.kill_tree = kill_tree
        self.clock = clock
        self.strike = Strike(fault=plan.fault)
        self._victim: Proc | None = None
        self._followed_up = False

    @property
    def done(self) -> bool:
        """True once nothing is left to do (struck and followed up, or skipped)."""
        if self.plan.fault is Fault.NONE or self.strike.skipped:
            return True
        return self.strike.at is not None and self._followed_up

    def _due(self, progress: Progress, *, late: bool = False) -> bool:
        total = self.plan.total_tis or progress.total
        if not total:
            return False
        share = self.plan.strike_at + (_PATIENCE if late else 0.0)
        return progress.finished >= share * total

    def tick(self, progress: Progress) -> None:
        """Strike when enough of the load has finished; then restart or heal when due."""
        if self.done:
            return
        if self.strike.at is None:
            if self._due(progress):
                self._try_strike(late=self._due(progress, late=True))
            return
        self._follow_up()

    def _record(self, kind: str, target: str, detail: str = "") -> float:
        at = self.clock()
        self.strike.events.append(Event(at=at, kind=kind, target=target, detail=detail))
        log.info("%s %s %s", kind, target, detail)
        return at

    def _held(self, sql: sa.TextClause, who: str) -> tuple[int, ...]:
        with self.engine.connect() as conn:
            return tuple(int(r[0]) for r in conn.execute(sql, {"who": who}))

    # -- strikes -------------------------------------------------------------------------
    def _try_strike(self, *, late: bool) -> None:
        match self.plan.fault:
            case Fault.KILL_SCHEDULER:
                self._kill_scheduler(late=late)
            case Fault.KILL_WORKER:
                self._kill_worker(late=late)
            case Fault.PARTITION_WORKER:
                self._cut_worker(late=late)
            case _:
                pass

    def _kill_scheduler(self, *, late: bool) -> None:
        with self.engine.connect() as conn:
            row = conn.execute(_BUSIEST_SCHEDULER).first()
        live = self.cluster.live(Role.SCHEDULER)
        victim = next((p for p in live if row is not None and p.pid == row.pid), None)
        if victim is None and not late:
            return  # wait for a replica that holds work
        victim = victim or live[0]
        matched = row is not None and victim.pid == row.pid
        self._kill(victim, member_id=str(row.id) if matched and row is not None else "")

    def _kill(self, victim: Proc, *, member_id: str) -> None:
        self._victim = victim
        self.strike.method = "tree" if self.kill_tree else "process"
        self.strike.at = victim.kill(tree=self.kill_tree)
        self.strike.events.append(
            Event(at=self.strike.at, kind="kill", target=victim.name, detail="SIGKILL")
        )
        self.strike.victim = victim.name
        self.strike.victim_id = member_id or self._member_of(victim)
        held = _HELD_BY_MEMBER if victim.role is Role.SCHEDULER else _HELD_BY_WORKER
        self.strike.in_flight = self._held(held, self.strike.victim_id)

    def _member_of(self, proc: Proc) -> str:
        sql = sa.text("SELECT id FROM scheduler_member WHERE pid = :pid ORDER BY started_at DESC")
        with self.engine.connect() as conn:
            return str(conn.execute(sql, {"pid": proc.pid}).scalar() or "")

    def _busy_worker(self, name: str | None = None) -> tuple[str, str] | None:
        with self.engine.connect() as conn:
            rows = conn.execute(_BUSY_WORKERS).all()
        for r in rows:
            if name is None or r.name == name:
                return str(r.id), str(r.name)
        return None

    def _no_worker_work(self, late: bool, what: str) -> bool:
        if not late:
            return False
        with self.engine.connect() as conn:
            worker_ids = {str(r[0]) for r in conn.execute(sa.text("SELECT id FROM worker"))}
            used = {
                str(r[0]) for r in conn.execute(sa.text("SELECT DISTINCT worker FROM task_attempt"))
            }
        if not worker_ids & used:
            self.strike.skipped = _NO_WORKER_WORK.format(what=what)
            return True
        return False

    def _kill_worker(self, *, late: bool) -> None:
        busy = self._busy_worker()
        if busy is None:
            self._no_worker_work(late, "kill")
            return
        worker_id, name = busy
        victim = next(p for p in self.cluster.live(Role.WORKER) if p.name == name)
        self._kill(victim, member_id=worker_id)

    def _cut_worker(self, *, late: bool) -> None:
        assert self.partition is not None
        busy = self._busy_worker("w0")
        if busy is None:
            self._no_worker_work(late, "cut off")
            return
        worker_id, name = busy
        self.strike.method = self.partition.method.value
        self.strike.victim, self.strike.victim_id = name, worker_id
        self.partition.cut()
        self.strike.at = self._record("cut", name, f"partition by {self.partition.method}")
        self.strike.in_flight = self._held(_HELD_BY_WORKER, worker_id)

    # -- follow-ups ----------------------------------------------------------------------
    def _follow_up(self) -> None:
        assert self.strike.at is not None
        if self.plan.fault is Fault.PARTITION_WORKER:
            if self.clock() - self.strike.at >= self.plan.fault_s:
                assert self.partition is not None
                self.partition.heal()
                self._record("heal", self.strike.victim)
                self._followed_up = True
            return
        if self.plan.fault is Fault.KILL_SCHEDULER:
            # Done once a peer declared the victim dead (restarting it then, if asked): a load
            # that finishes sooner still waits for it, so declared_dead_s is always measured.
            with self.engine.connect() as conn:
                state = conn.execute(_MEMBER_STATE, {"who": self.strike.victim_id}).scalar()
            if state == "dead":
                if self.plan.restart:
                    assert self._victim is not None
                    self._record("declared-dead", self._victim.name)
                    self.cluster.restart(self._victim)
                    self._record("restart", self._victim.name)
                self._followed_up = True
            return
        self._followed_up = True

    def heal_now(self) -> None:
        """Heal a partition still in force (the run is ending)."""
        if self.plan.fault is Fault.PARTITION_WORKER and self.strike.at and not self._followed_up:
            assert self.partition is not None
            self.partition.heal()
            self._record("heal", self.strike.victim, "at the end of the run")
            self._followed_up = True
