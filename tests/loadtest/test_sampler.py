"""The sampler's CPU accounting: a measured process counts with its live descendants, found
from one pass over /proc per sample; the time threads wait for a CPU is read from schedstat."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from loadtest.sampler import children_map, cpu_ticks, sched_times, tree_ticks

_TICK = os.sysconf("SC_CLK_TCK")
_BURN = (
    "import time\nend = time.process_time() + 0.4\n"
    "while time.process_time() < end: pass\ntime.sleep(30)\n"
)


def _spawn(code: str) -> str:
    return f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {code!r}])\n"


def test_a_process_counts_with_its_live_descendants() -> None:
    # parent -> child -> grandchild; only the grandchild burns CPU, and it is still alive
    child = _spawn(_BURN) + "time.sleep(30)\n"
    parent = subprocess.Popen(
        [sys.executable, "-c", _spawn(child) + "time.sleep(30)\n"], start_new_session=True
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            kids = children_map()
            grandchildren = [g for c in kids.get(parent.pid, ()) for g in kids.get(c, ())]
            burned = (cpu_ticks(grandchildren[0]) or 0) if grandchildren else 0
            if burned >= 0.3 * _TICK:
                break
            assert time.monotonic() < deadline, "the grandchild never burned its CPU"
            time.sleep(0.05)
        own = cpu_ticks(parent.pid) or 0
        total = tree_ticks(parent.pid, kids)
        assert total is not None
        assert total - own >= burned
        assert tree_ticks(parent.pid, {}) == cpu_ticks(parent.pid)  # no children known
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()


def test_a_gone_process_has_no_ticks() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert tree_ticks(proc.pid, children_map()) is None


_SPIN = "import time\nend = time.monotonic() + 0.6\nwhile time.monotonic() < end: pass\n"


@pytest.mark.skipif(
    not os.path.exists("/proc/self/schedstat"),
    reason="the kernel keeps no schedstat",
)
def test_threads_that_share_one_cpu_are_seen_waiting_for_it() -> None:
    """Three processes spinning on one CPU for 0.6 s of wall time: each runs about a third of
    it and waits runnable the rest, and that wait is what schedstat gives."""
    cpu = min(os.sched_getaffinity(0))
    spinners = [
        subprocess.Popen(
            [sys.executable, "-c", f"import os\nos.sched_setaffinity(0, {{{cpu}}})\n" + _SPIN]
        )
        for _ in range(3)
    ]
    try:
        time.sleep(0.45)  # all spinning, none finished
        times = sched_times([p.pid for p in spinners])
        assert times is not None
        assert len(times) == 3  # one thread each
        run = sum(r for r, _ in times.values()) / 1e9
        wait = sum(w for _, w in times.values()) / 1e9
        assert run > 0.1
        assert wait > run  # two of the three wait while one runs: about twice as long
    finally:
        for p in spinners:
            p.kill()
            p.wait(10)
    assert sched_times([spinners[0].pid]) == {}  # a process that is gone has no threads
