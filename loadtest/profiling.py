"""Where the time goes (`--py-spy`): py-spy samples every Python process of the cluster while
the load runs, and the report names the hottest one (its own CPU over the window, from /proc)
with the functions its samples were in. The samples are the GIL-holding ones, taken without
pausing the processes: Python's own CPU time, at a small cost to the run it watches."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.sampler import children_map, own_cpu_ticks

__all__ = ["FORKSERVER_MARK", "Profiler", "Target", "find_py_spy", "summarize_raw", "targets"]

RATE_HZ = 100
TOP = 15
FORKSERVER_MARK = "tradewind_cluster.worker.forkserver"
_TICK = os.sysconf("SC_CLK_TCK")
_STOP_WAIT_S = 10.0
_ATTACH_WAIT_S = 5.0
_SAMPLING = "Sampling process"
# py-spy's last words: "Wrote raw flamegraph data to '...'. Samples: 244 Errors: 66". Errors are
# samples it could not read (with --nonblocking a stack may change while it is read).
_WROTE = re.compile(r"Samples: (\d+) Errors: (\d+)")
_LINE_NUMBER = re.compile(r":\d+\)$")
# Frames at the root of every thread's stack: listed, they would top every inclusive table.
_TRAMPOLINES = frozenset(
    {
        "Thread.run (threading.py)",
        "Thread._bootstrap (threading.py)",
        "Thread._bootstrap_inner (threading.py)",
        "_worker (futures/thread.py)",
        "_WorkItem.run (futures/thread.py)",
        "_run_module_as_main (<frozen runpy>)",
        "_run_code (<frozen runpy>)",
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """One Python process to sample."""

    role: str
    name: str
    pid: int


def find_py_spy() -> str | None:
    """py-spy next to this interpreter (a virtual environment's bin) or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("py-spy")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def targets(processes: Iterable[tuple[str, str, int]]) -> list[Target]:
    """The schedulers and workers among the measured processes, and each worker's fork server
    (a child of the worker agent)."""
    kids = children_map()
    found: list[Target] = []
    for role, name, pid in processes:
        if role not in ("scheduler", "worker"):
            continue
        found.append(Target(role=role, name=name, pid=pid))
        for child in kids.get(pid, ()):
            if FORKSERVER_MARK in _cmdline(child):
                found.append(Target(role="forkserver", name=f"{name}.forkserver", pid=child))
    return found


def _frame(frame: str) -> str:
    """`func (path/to/module.py:12)` -> `func (to/module.py)`: line numbers merged, the path cut
    to its last two parts."""
    frame = _LINE_NUMBER.sub(")", frame)
    head, sep, path = frame.rpartition(" (")
    if not sep:
        return frame
    return f"{head} ({'/'.join(path.rstrip(')').split('/')[-2:])})"


def summarize_raw(text: str, top: int = TOP) -> dict[str, Any]:
    """py-spy's raw output (`frame;frame;... count` per line) as the functions with the largest
    share of samples: inclusive (anywhere on the stack, once per stack; the frames every
    thread starts with left out) and self (the leaf)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        for frame in set(frames) - _TRAMPOLINES:
            inclusive[frame] += n

    def shares(counts: Counter[str]) -> list[dict[str, Any]]:
        return [{"function": f, "share": round(n / total, 3)} for f, n in counts.most_common(top)]

    return {"samples": total, "inclusive": shares(inclusive), "self": shares(own)}


@dataclass(slots=True, kw_only=True)
class _Recording:
    target: Target
    popen: subprocess.Popen[bytes]
    raw: Path
    log: Path
    cpu_before: int
    cpu_after: int | None = None
    spy_cpu: int = 0


class Profiler:
    """py-spy on each target from `start()` until `stop()`; raw samples under `out_dir`."""

    def __init__(self, out_dir: Path, executable: str, *, rate_hz: int = RATE_HZ) -> None:
        self.out_dir = out_dir
        self.executable = executable
        self.rate_hz = rate_hz
        self._recordings: list[_Recording] = []

    def start(self, found: Sequence[Target]) -> None:
        """Start sampling every target."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for target in found:
            raw = self.out_dir / f"{target.name}.txt"
            with raw.with_suffix(".log").open("wb") as log:
                popen = subprocess.Popen(
                    [
                        self.executable,
                        "record",
                        "--pid",
                        str(target.pid),
                        "--rate",
                        str(self.rate_hz),
                        "--format",
                        "raw",
                        "--output",
                        str(raw),
                        "--gil",
                        "--nonblocking",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self._recordings.append(
                _Recording(
                    target=target,
                    popen=popen,
                    raw=raw,
                    log=raw.with_suffix(".log"),
                    cpu_before=own_cpu_ticks(target.pid) or 0,
                )
            )
        self._wait_attached()

    def _wait_attached(self) -> None:
        """Until every py-spy says it samples (or gave up): attaching costs CPU, and it should
        not fall into the load's window."""
        deadline = time.monotonic() + _ATTACH_WAIT_S
        pending = list(self._recordings)
        while pending and time.monotonic() < deadline:
            pending = [
                r for r in pending if r.popen.poll() is None and _SAMPLING not in _read(r.log)
            ]
            if pending:
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop sampling: py-spy writes its file on SIGINT. A target's own CPU is read first."""
        for rec in self._recordings:
            rec.cpu_after = own_cpu_ticks(rec.target.pid)
            rec.spy_cpu = own_cpu_ticks(rec.popen.pid) or 0
            if rec.popen.poll() is None:
                rec.popen.send_signal(signal.SIGINT)
        for rec in self._recordings:
            try:
                rec.popen.wait(_STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                rec.popen.kill()
                rec.popen.wait()

    def abort(self) -> None:
        """Kill any py-spy still running (the run failed before `stop()`)."""
        for rec in self._recordings:
            if rec.popen.poll() is None:
                with contextlib.suppress(OSError):
                    rec.popen.kill()
                rec.popen.wait()

    def summary(self, fallback_cpu_s: Mapping[int, float] | None = None) -> dict[str, Any]:
        """Every process's CPU, samples and py-spy's own account of the sampling, and the
        hottest one's functions. A target gone before the end (killed by the fault) has no
        CPU reading of its own left: `fallback_cpu_s` (pid -> CPU s, the sampler's) stands in."""
        processes = [self._process(rec, fallback_cpu_s or {}) for rec in self._recordings]
        processes.sort(key=lambda p: -1.0 if p["cpu_s"] is None else p["cpu_s"], reverse=True)
        with_samples = [p for p in processes if p["samples"]]
        return {
            "tool": "py-spy",
            "rate_hz": self.rate_hz,
            "samples_are": "GIL-holding stacks (Python's own CPU time), processes not paused",
            "profiler_cpu_s": round(sum(r.spy_cpu for r in self._recordings) / _TICK, 3),
            "hottest": with_samples[0] if with_samples else None,
            "processes": [
                {
                    k: p[k]
                    for k in ("role", "name", "pid", "cpu_s", "samples", "errors", "raw", "problem")
                }
                for p in processes
            ],
        }

    def _process(self, rec: _Recording, fallback_cpu_s: Mapping[int, float]) -> dict[str, Any]:
        text = rec.raw.read_text(errors="replace") if rec.raw.exists() else ""
        if rec.cpu_after is not None:
            cpu: float | None = (rec.cpu_after - rec.cpu_before) / _TICK
        else:
            cpu = fallback_cpu_s.get(rec.target.pid)
        log = _read(rec.log)
        wrote = _WROTE.search(log)
        problem = None
        if rec.popen.returncode != 0 or not rec.raw.exists():
            lines = [line for line in log.splitlines() if line.strip()]
            problem = f"py-spy exited {rec.popen.returncode}: {lines[-1] if lines else 'no output'}"
        return {
            "role": rec.target.role,
            "name": rec.target.name,
            "pid": rec.target.pid,
            "cpu_s": None if cpu is None else round(cpu, 3),
            "raw": str(rec.raw.relative_to(self.out_dir.parent)),
            "problem": problem,
            "errors": int(wrote.group(2)) if wrote else None,
            **summarize_raw(text),
        }


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
