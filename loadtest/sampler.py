"""Sampling while the load runs: CPU time and peak RSS of every process from /proc, the pool and
concurrency limits as the store sees them in one consistent snapshot, and the run's progress."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

__all__ = [
    "LimitPeak",
    "LimitSample",
    "ProcessUsage",
    "Progress",
    "Sampler",
    "SamplerResult",
    "children_map",
    "cpu_ticks",
    "descendants",
    "own_cpu_ticks",
    "peak_rss_kb",
    "sched_times",
    "start_ticks",
    "tree_ticks",
]

log = logging.getLogger(__name__)
_TICK = os.sysconf("SC_CLK_TCK")

# One statement, so every row comes from one snapshot: a limit exceeded here was exceeded in
# the store, not an artefact of reading two tables at different moments.
_LIMITS_SQL = sa.text(
    """
    SELECT 'pool' AS kind, p.name AS name, p.slots AS lim, coalesce(u.used, 0) AS used
      FROM pool p LEFT JOIN (
        SELECT pool, sum(pool_slots) AS used FROM task_instance
         WHERE state IN ('queued', 'running') GROUP BY pool) u ON u.pool = p.name
    UNION ALL
    SELECT 'max_active_tasks', t.dag_id, max(d.max_active_tasks), count(*)
      FROM task_instance t JOIN dag d ON d.dag_id = t.dag_id
     WHERE t.state IN ('queued', 'running') GROUP BY t.dag_id
    UNION ALL
    SELECT 'max_active_tis_per_dag', t.dag_id || '.' || t.task_id,
           max(t.max_active_tis_per_dag), count(*)
      FROM task_instance t
     WHERE t.state IN ('queued', 'running') AND t.max_active_tis_per_dag IS NOT NULL
     GROUP BY t.dag_id, t.task_id
    UNION ALL
    SELECT 'max_active_runs', r.dag_id, max(d.max_active_runs), count(*)
      FROM dag_run r JOIN dag d ON d.dag_id = r.dag_id
     WHERE r.state = 'running' GROUP BY r.dag_id
    UNION ALL
    SELECT 'parallelism', 'cluster', :parallelism, count(*)
      FROM task_instance WHERE state IN ('queued', 'running')
    UNION ALL
    SELECT 'worker_slots', w.name, w.slots, w.running FROM worker w WHERE w.state = 'alive'
    """
)
_PROGRESS_SQL = sa.text(
    "SELECT count(*) FILTER (WHERE state IN "
    "('success', 'failed', 'skipped', 'upstream_failed', 'removed')), count(*), "
    "(SELECT count(*) FROM dag_run WHERE state IN ('queued', 'running')), "
    "(SELECT count(*) FROM dag_run WHERE state = 'running') FROM task_instance"
)


def _stat_fields(pid: int | str) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces and
    parentheses: they start after the last ')'), or None for a process that is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    cut = text.rfind(b")")
    return text[cut + 2 :].split() if cut >= 0 else None


def cpu_ticks(pid: int) -> int | None:
    """utime + stime + cutime + cstime of one process from /proc/<pid>/stat (clock ticks)."""
    fields = _stat_fields(pid)
    return None if fields is None else sum(int(v) for v in fields[11:15])


def start_ticks(pid: int) -> int | None:
    """When a process started (clock ticks after boot): with its pid, it names one process
    even after the pid is reused."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])  # field 22 of /proc/<pid>/stat


def own_cpu_ticks(pid: int) -> int | None:
    """utime + stime of one process alone, its children left out (clock ticks)."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[11]) + int(fields[12])


def peak_rss_kb(pid: int) -> int | None:
    """VmHWM (peak resident set) of one process, in kB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def children_map() -> dict[int, list[int]]:
    """Every live process's children, from one pass over /proc. A sample reads it once for
    all the processes it measures: psutil's children() scans the whole of /proc on every call,
    and per measured process that was most of the harness's own CPU during a run."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        fields = _stat_fields(entry) if entry.isdigit() else None
        if fields is not None and len(fields) > 1 and int(fields[1]):  # ppid, 0 for none
            kids.setdefault(int(fields[1]), []).append(int(entry))
    return kids


def descendants(pid: int, kids: dict[int, list[int]]) -> list[int]:
    """A process and its live descendants, the process first."""
    out, todo, seen = [], [pid], set()
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            out.append(p)
            todo.extend(kids.get(p, ()))
    return out


def tree_ticks(pid: int, kids: dict[int, list[int]]) -> int | None:
    """A process and its live descendants; reaped ones are in their parents' cutime/cstime.
    None when the process itself is gone."""
    tree = descendants(pid, kids)
    own = cpu_ticks(tree[0])
    return None if own is None else own + sum(cpu_ticks(p) or 0 for p in tree[1:])


def sched_times(pids: list[int]) -> dict[tuple[int, int], tuple[int, int]] | None:
    """Per thread of these processes: nanoseconds run on a CPU, and waited runnable for one
    (/proc/<pid>/task/<tid>/schedstat); None when the kernel does not keep them."""
    out: dict[tuple[int, int], tuple[int, int]] = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                    run_ns, wait_ns, *_ = f.read().split()
            except FileNotFoundError:
                if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                    continue  # the thread ended meanwhile
                return None
            except OSError:
                continue
            out[(pid, int(tid))] = (int(run_ns), int(wait_ns))
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessUsage:
    """CPU seconds (with children) and peak RSS of one measured process; run_s and wait_s:
    its threads' time on a CPU and runnable waiting for one over the load (threads alive at its
    end; None when the kernel keeps no schedstat)."""

    role: str
    name: str
    pid: int
    cpu_s: float
    peak_rss_mb: float | None
    run_s: float | None = None
    wait_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitSample:
    """One limit as one sample saw it."""

    at: float
    kind: str
    name: str
    limit: int
    used: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitPeak:
    """The highest usage seen of one limit."""

    kind: str
    name: str
    limit: int
    peak: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """Task instances finished and created, and runs not finished, as of `at`."""

    at: float
    finished: int
    total: int
    runs_open: int = 0  # queued or running
    runs_running: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplerResult:
    """What the sampler saw over the whole run."""

    usage: tuple[ProcessUsage, ...]
    peaks: tuple[LimitPeak, ...]
    violations: tuple[LimitSample, ...]
    samples: int
    statements: int  # the sampler's own statements since the baseline, left out of per-TI counts


class Sampler:
    """A background thread sampling every `interval_s` until `stop()`."""

    def __init__(
        self,
        engine: sa.Engine,
        processes: Callable[[], list[tuple[str, str, int]]],
        *,
        parallelism: int,
        interval_s: float = 0.2,
    ) -> None:
        self._engine = engine
        self._processes = processes
        self._parallelism = parallelism
        self._interval = interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()  # process samples come from the thread and from stop()
        self._ticks: dict[tuple[str, str, int], int] = {}
        self._rss: dict[tuple[str, str, int], int] = {}
        self._peaks: dict[tuple[str, str], LimitPeak] = {}
        self._violations: list[LimitSample] = []
        self._samples = 0
        self._statements = 0
        self._base_ticks: dict[tuple[str, str, int], int] = {}
        self._base_statements = 0
        self._base_sched: dict[tuple[int, int], tuple[int, int]] | None = None
        self.progress = Progress(at=time.time(), finished=0, total=0)
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="loadtest-sampler", daemon=True)

    def start(self) -> Sampler:
        """Start sampling."""
        self._thread.start()
        return self

    def _run(self) -> None:
        with self._engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            while not self._stop.is_set():
                self.sample_processes()
                try:
                    self._sample_store(conn)
                except Exception as exc:  # noqa: BLE001 - a lost sample must not end sampling
                    self.errors += 1
                    log.debug("sample failed: %s", exc)
                    with contextlib.suppress(sa.exc.DBAPIError):
                        conn.rollback()
                self._stop.wait(self._interval)

    def sample_processes(self) -> None:
        """Read CPU and peak RSS of every measured process (also called once at the end)."""
        kids = children_map()
        for key in self._processes():
            _role, _name, pid = key
            ticks = tree_ticks(pid, kids)
            if ticks is not None:
                self._ticks[key] = max(ticks, self._ticks.get(key, 0))
            rss = peak_rss_kb(pid)
            if rss is not None:
                self._rss[key] = max(rss, self._rss.get(key, 0))

    def _sample_store(self, conn: sa.Connection) -> None:
        at = time.time()
        rows = conn.execute(_LIMITS_SQL, {"parallelism": self._parallelism}).all()
        finished, total, runs_open, running = conn.execute(_PROGRESS_SQL).one()
        self._statements += 2
        self._samples += 1
        self.progress = Progress(
            at=at,
            finished=int(finished),
            total=int(total),
            runs_open=int(runs_open),
            runs_running=int(running),
        )
        for kind, name, limit, used in rows:
            if limit is None:
                continue
            key = (str(kind), str(name))
            peak = self._peaks.get(key)
            if peak is None or int(used) > peak.peak:
                self._peaks[key] = LimitPeak(
                    kind=key[0], name=key[1], limit=int(limit), peak=int(used)
                )
            if int(used) > int(limit):
                self._violations.append(
                    LimitSample(at=at, kind=key[0], name=key[1], limit=int(limit), used=int(used))
                )

    def _trees(self) -> dict[tuple[str, str, int], list[int]]:
        kids = children_map()
        return {key: descendants(key[2], kids) for key in self._processes()}

    def mark_baseline(self) -> None:
        """Count CPU and statements from now on (start-up and parsing are left out)."""
        self.sample_processes()
        base = sched_times([p for tree in self._trees().values() for p in tree])
        with self._lock:
            self._base_ticks = dict(self._ticks)
            self._base_statements = self._statements
            self._base_sched = base

    def _waits(self) -> dict[tuple[str, str, int], tuple[float, float]]:
        """Per measured process, its threads' (run, wait) seconds since the baseline: a thread
        started since counts whole; one that ended is missing (its times went with it)."""
        if self._base_sched is None:
            return {}
        out: dict[tuple[str, str, int], tuple[float, float]] = {}
        for key, tree in self._trees().items():
            now = sched_times(tree)
            if now is None:
                return {}
            run = wait = 0
            for tid, (r, w) in now.items():
                r0, w0 = self._base_sched.get(tid, (0, 0))
                run, wait = run + r - r0, wait + w - w0
            out[key] = (run / 1e9, wait / 1e9)
        return out

    def stop(self) -> SamplerResult:
        """Stop the thread, take a last process sample, and return everything seen."""
        self._stop.set()
        self._thread.join(10)
        self.sample_processes()
        waits = self._waits()
        usage = tuple(
            ProcessUsage(
                role=role,
                name=name,
                pid=pid,
                cpu_s=(ticks - self._base_ticks.get((role, name, pid), 0)) / _TICK,
                peak_rss_mb=(self._rss[(role, name, pid)] / 1024)
                if (role, name, pid) in self._rss
                else None,
                run_s=waits[(role, name, pid)][0] if (role, name, pid) in waits else None,
                wait_s=waits[(role, name, pid)][1] if (role, name, pid) in waits else None,
            )
            for (role, name, pid), ticks in sorted(self._ticks.items())
        )
        return SamplerResult(
            usage=usage,
            peaks=tuple(sorted(self._peaks.values(), key=lambda p: (p.kind, p.name))),
            violations=tuple(self._violations),
            samples=self._samples,
            statements=self._statements - self._base_statements,
        )
