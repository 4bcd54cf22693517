"""The harness's profiler: py-spy's raw output summarized, and a real py-spy on real processes
naming the busy one as the hottest with the function it spends its time in."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadtest.profiling import (
    FORKSERVER_MARK,
    Profiler,
    Target,
    find_py_spy,
    summarize_raw,
    targets,
)
from loadtest.report import render_summary
from tests.loadtest.test_aims import full_results


def py_spy_can_attach() -> bool:
    """py-spy reads other processes' memory: as root, or where Yama lets a process trace its
    siblings (ptrace_scope 0)."""
    if os.geteuid() == 0:
        return True
    try:
        return Path("/proc/sys/kernel/yama/ptrace_scope").read_text().strip() == "0"
    except OSError:
        return True  # no Yama: classic ptrace rules, same user may attach


needs_ptrace = pytest.mark.skipif(
    not py_spy_can_attach(), reason="py-spy cannot attach here (not root, ptrace_scope > 0)"
)

RAW = """\
_run_module_as_main (<frozen runpy>:198);main (tradewind_cluster/cli/main.py:10);\
loop (/srv/app/tradewind_cluster/scheduler/loop.py:120);query (sqlalchemy/engine/base.py:5) 6
_run_module_as_main (<frozen runpy>:198);main (tradewind_cluster/cli/main.py:10);\
loop (/srv/app/tradewind_cluster/scheduler/loop.py:131);emit (observability/metrics.py:77) 3
Thread._bootstrap (threading.py:995);Thread.run (threading.py:975);\
serve (/srv/app/grpc/_server.py:12) 1
not a sample line
"""


def test_raw_samples_become_inclusive_and_leaf_shares() -> None:
    s = summarize_raw(RAW, top=10)
    assert s["samples"] == 10
    inclusive = {e["function"]: e["share"] for e in s["inclusive"]}
    # line numbers merged (two lines of loop), paths cut to two parts, trampolines left out
    assert inclusive["loop (scheduler/loop.py)"] == 0.9
    assert inclusive["main (cli/main.py)"] == 0.9
    assert inclusive["serve (grpc/_server.py)"] == 0.1
    assert not any("runpy" in f or "threading" in f for f in inclusive)
    leaves = [(e["function"], e["share"]) for e in s["self"]]
    assert leaves[0] == ("query (engine/base.py)", 0.6)
    assert ("emit (observability/metrics.py)", 0.3) in leaves
    assert summarize_raw("") == {"samples": 0, "inclusive": [], "self": []}


BUSY = """
import time
print("ready", flush=True)
def spin_in_the_hot_function():
    deadline = time.time() + 30
    while time.time() < deadline:
        sum(i * i for i in range(2000))
spin_in_the_hot_function()
"""
IDLE = "import time; print('ready', flush=True); time.sleep(30)"


def python(code: str) -> subprocess.Popen[str]:
    """An interpreter running `code`, returned once it is up (it prints "ready" first): py-spy
    needs the interpreter's state in place to attach."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    with proc.stdout:  # it prints nothing more
        assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.slow
@needs_ptrace
def test_py_spy_names_the_busy_process_and_its_hot_function(tmp_path: Path) -> None:
    exe = find_py_spy()
    assert exe is not None, "py-spy is a dev dependency: `make venv` installs it"
    procs = {name: python(code) for name, code in (("busy", BUSY), ("idle", IDLE))}
    try:
        found = targets(
            [("scheduler", "busy", procs["busy"].pid), ("worker", "idle", procs["idle"].pid)]
        )
        assert [(t.role, t.name) for t in found] == [("scheduler", "busy"), ("worker", "idle")]
        profiler = Profiler(tmp_path / "profiles", exe, rate_hz=200)
        profiler.start(found)
        time.sleep(1.5)
        profiler.stop()
        summary = profiler.summary()
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
    hot = summary["hottest"]
    assert hot is not None
    assert hot["name"] == "busy"
    # it spun through the 1.5 s, as much as two busy cores let it
    assert hot["cpu_s"] > 0.3
    assert hot["samples"] > 30
    assert hot["problem"] is None
    # what py-spy could not read (a stack changing under it) is counted, not hidden
    assert isinstance(hot["errors"], int)
    assert hot["errors"] >= 0
    # without pausing the process a sample may catch a partial stack: most, not all
    assert any(
        e["function"] == "spin_in_the_hot_function (<string>)" and e["share"] > 0.6
        for e in hot["inclusive"]
    )
    assert [p["name"] for p in summary["processes"]] == ["busy", "idle"]
    idle = summary["processes"][1]
    assert idle["samples"] == 0  # a sleeping interpreter holds no GIL
    assert idle["cpu_s"] < hot["cpu_s"]
    assert (tmp_path / idle["raw"]).exists()
    assert summary["profiler_cpu_s"] >= 0
    text = render_summary_with(summary)
    assert "Hottest: **busy**" in text
    assert "`spin_in_the_hot_function (<string>)`" in text


def render_summary_with(profile: dict[str, object]) -> str:
    """The profile's section as the summary renders it (the rest of the document minimal)."""
    r = full_results()
    r["profile"] = profile
    text = render_summary(r)
    assert "Run again with `--py-spy`" not in text  # the profile is there
    return text


def test_a_worker_s_fork_server_is_a_target_of_its_own(tmp_path: Path) -> None:
    # a parent process with a child whose command line carries the fork server's module name
    child_code = f"import time  # {FORKSERVER_MARK}\ntime.sleep(30)"
    parent_code = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {child_code!r}])\n"
        "time.sleep(30)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code])
    try:
        deadline = time.time() + 10
        found = targets([("worker", "w0", parent.pid), ("postgres", "postgres", 1)])
        while len(found) < 2 and time.time() < deadline:
            time.sleep(0.05)
            found = targets([("worker", "w0", parent.pid), ("postgres", "postgres", 1)])
        assert [(t.role, t.name) for t in found] == [
            ("worker", "w0"),
            ("forkserver", "w0.forkserver"),
        ]
    finally:
        subprocess.run(["pkill", "-P", str(parent.pid)], check=False)
        parent.kill()
        parent.wait()


@pytest.mark.slow
@needs_ptrace
def test_a_target_killed_midway_and_one_py_spy_cannot_read(tmp_path: Path) -> None:
    """A target the fault kills keeps the CPU the sampler saw (it ranks by it), and a process
    py-spy cannot sample (not Python) is reported as such, not as one that held no GIL."""
    exe = find_py_spy()
    assert exe is not None
    busy = python(BUSY)
    shell = subprocess.Popen(["sleep", "30"])
    try:
        profiler = Profiler(tmp_path / "profiles", exe)
        profiler.start(
            [Target(role="scheduler", name="victim", pid=busy.pid),
             Target(role="worker", name="not-python", pid=shell.pid)]
        )  # fmt: skip
        time.sleep(0.5)  # half a second of samples before the kill
        busy.send_signal(signal.SIGKILL)
        busy.wait()
        profiler.stop()
        summary = profiler.summary({busy.pid: 9.5})
    finally:
        for p in (busy, shell):
            if p.poll() is None:
                p.kill()
                p.wait()
    victim, odd = summary["processes"]
    assert (victim["name"], victim["cpu_s"], victim["problem"]) == ("victim", 9.5, None)
    assert summary["hottest"]["name"] == "victim"
    assert odd["name"] == "not-python"
    assert odd["samples"] == 0
    assert odd["problem"].startswith("py-spy exited 1: ")
    text = render_summary_with({**summary, "hottest": None})
    assert "**py-spy exited 1: " in text
    assert "_No samples: py-spy could not sample (see above)._" in text
