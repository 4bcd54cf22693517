"""The dispatcher's board: this replica's view of the live workers (each with the attempts the
store has assigned to it), the attempts it sent that the store does not show yet (in flight),
workers it skips for a while after failures, and the free slots per queue the critical section
may fill. Read from the store in one statement (store.workers.read_board); safe to share
between threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from tradewind_cluster.observability.metrics import Metrics
from tradewind_cluster.store import workers as store_workers
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.workers import WorkerRow

if TYPE_CHECKING:
    from tradewind_cluster.scheduler.grpc_dispatch import GrpcDispatchOptions

__all__ = ["Ref", "WorkerBoard"]

Ref = tuple[int, int]


class WorkerBoard:
    """Live workers, in-flight attempts and cooling workers of one replica's dispatcher."""

    def __init__(
        self,
        db: Database,
        options: GrpcDispatchOptions,
        metrics: Metrics,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.options = options
        self.metrics = metrics
        self._now = monotonic
        self._lock = threading.Lock()  # guards everything below
        self._workers: dict[str, WorkerRow] = {}
        self._inflight: dict[Ref, tuple[str, float]] = {}  # sent, not yet seen in the store
        self._by_worker: dict[str, set[Ref]] = {}  # the same entries, per worker
        self._cooling: dict[str, float] = {}  # worker id -> monotonic time it may be tried again
        self._queue_cache: tuple[float, dict[str, int]] | None = None
        self._board_at = float("-inf")  # monotonic time the board's last read began

    def refresh_if_old(self) -> None:
        """Read the board again unless a read began less than board_reuse_s ago (the same
        pass's queue step): slots taken since are held by in-flight entries."""
        if self._now() - self._board_at > self.options.board_reuse_s:
            self._refresh()

    def cool(self, worker_id: str) -> None:
        """Skip this worker here for suspect_cooldown_s."""
        with self._lock:
            self._cooling[worker_id] = self._now() + self.options.suspect_cooldown_s

    def queue_open(self) -> Mapping[str, int] | None:
        """Free slots per queue over live workers, less attempts queued but not yet accepted by
        any worker; cached for queue_open_ttl_s."""
        now = self._now()
        with self._lock:
            cached = self._queue_cache
            if cached is not None and now - cached[0] < self.options.queue_open_ttl_s:
                return dict(cached[1])
        pending = self._refresh(with_pending=True)
        with self._lock:
            open_: dict[str, int] = {}
            total = 0
            for w in self._workers.values():
                if self._is_cooling(w.id, now):
                    continue
                free = self._free(w)
                total += free
                for q in w.queues:
                    open_[q] = open_.get(q, 0) + free
            for q in open_:
                open_[q] = max(0, open_[q] - pending.get(q, 0))
            self._queue_cache = (now, open_)
            assigned = sum(len(w.assigned) for w in self._workers.values())
            running = sum(w.running for w in self._workers.values())
        self._emit_board(total, open_, pending, assigned, running)
        return dict(open_)

    def capacity_changed(self) -> None:
        """Slots were taken (a dispatch) or freed (a report): drop the cached free-slot view,
        so the next queue_open reads the store again."""
        with self._lock:
            self._queue_cache = None

    def _emit_board(
        self,
        total: int,
        open_: Mapping[str, int],
        pending: Mapping[str, int],
        assigned: int,
        running: int,
    ) -> None:
        """Executor and queue gauges: queued counts attempts not yet accepted by a worker plus
        those accepted but not started; running is what the workers last said they run."""
        self.metrics.gauge("executor.open_slots", total)
        self.metrics.gauge("executor.running_tasks", running)
        self.metrics.gauge(
            "executor.queued_tasks", sum(pending.values()) + max(0, assigned - running)
        )
        for q, n in open_.items():
            self.metrics.gauge("queue.open_slots", n, queue=q)
        for q in sorted({*open_, *pending}):
            self.metrics.gauge("queue.queued_tasks", pending.get(q, 0), queue=q)

    def _refresh(self, *, with_pending: bool = False) -> dict[str, int]:
        """Read live workers (and what is still undispatched) and drop in-flight entries the
        store now accounts for (assigned to a worker, finished or requeued)."""
        with self._lock:
            refs = list(self._inflight)
        started = self._now()

        board = self.db.read(
            lambda conn: store_workers.read_board(
                conn,
                refs,
                max_age_s=self.options.worker_max_age_s,
                limit=self.options.max_workers,
                with_pending=with_pending,
            )
        )
        rows, still, pending = board.workers, board.undispatched, board.pending
        now = self._now()
        with self._lock:
            self._board_at = started
            self._workers = {w.id: w for w in rows}
            for ref in refs:
                entry = self._inflight.get(ref)
                if entry is None:
                    continue
                # Entries added after the read began are kept: the store could not see them.
                if ref not in still or now - entry[1] > self.options.inflight_ttl_s:
                    self._forget(ref)
        return pending

    def _remember(self, ref: Ref, worker_id: str, now: float) -> None:
        self._forget(ref)
        self._inflight[ref] = (worker_id, now)
        self._by_worker.setdefault(worker_id, set()).add(ref)

    def _forget(self, ref: Ref) -> None:
        entry = self._inflight.pop(ref, None)
        if entry is not None:
            self._by_worker.get(entry[0], set()).discard(ref)

    def _used(self, w: WorkerRow) -> int:
        mine = self._by_worker.get(w.id, ())
        return len(w.assigned) + sum(1 for ref in mine if ref not in w.assigned)

    def _free(self, w: WorkerRow) -> int:
        return max(0, w.slots - self._used(w))

    def _is_cooling(self, worker_id: str, now: float) -> bool:
        until = self._cooling.get(worker_id)
        return until is not None and now < until

    def _holder(self, ref: Ref) -> str | None:
        """The worker this attempt was already sent to, if any (a resend goes there again)."""
        entry = self._inflight.get(ref)
        if entry is not None:
            return entry[0]
        return next((w.id for w in self._workers.values() if ref in w.assigned), None)

    def pick(self, queue: str, ref: Ref, tried: set[str]) -> WorkerRow | None:
        """Reserve a slot for ref on the least loaded live worker serving queue."""
        now = self._now()
        with self._lock:
            holder = self._holder(ref)
            if (
                holder is not None
                and holder not in tried
                and holder in self._workers
                and not self._is_cooling(holder, now)
            ):
                return self._workers[holder]
            candidates = [
                w
                for w in self._workers.values()
                if queue in w.queues
                and w.id not in tried
                and not self._is_cooling(w.id, now)
                and self._free(w) > 0
            ]
            if not candidates:
                return None
            best = min(candidates, key=lambda w: (self._used(w) / w.slots, -self._free(w), w.id))
            self._remember(ref, best.id, now)
            return best

    def release(self, ref: Ref, worker_id: str) -> None:
        with self._lock:
            entry = self._inflight.get(ref)
            if entry is not None and entry[0] == worker_id:
                self._forget(ref)
