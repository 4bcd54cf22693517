"""`tradewind standalone` as a newcomer runs it: a working cluster, a triggered DAG succeeds,
a second standalone on the same home refuses, and SIGTERM leaves no process behind."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.processes import http_json, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLI = [sys.executable, "-m", "tradewind_cluster.cli.main"]


@pytest.fixture
def home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tradewind-standalone-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def env_for(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEWIND")}
    env.update(TRADEWIND_HOME=str(home), PYTHONUNBUFFERED="1")
    return env


def test_standalone_runs_a_dag_and_stops_cleanly(home: Path) -> None:
    env = env_for(home)
    log = home / "standalone.out"
    with log.open("wb") as out:
        proc = subprocess.Popen([*CLI, "standalone"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "Tradewind standalone is running" in log.read_text(), 120, "the banner")
        banner = log.read_text()
        health_ports = [int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)/health", banner)]
        assert len(health_ports) == 4, banner  # 2 schedulers + 2 workers
        wait_until(
            lambda: all(http_json(p)[0] == 200 for p in health_ports), 60, "every process healthy"
        )
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        assert len(children) >= 4

        second = subprocess.run(
            [*CLI, "standalone"], env=env, capture_output=True, text=True, timeout=60
        )
        assert second.returncode != 0
        assert "already running" in second.stderr

        wait_until(
            lambda: (
                subprocess.run(
                    [*CLI, "dags", "list", "-o", "json"],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                ).stdout.count("tutorial")
                > 0
            ),
            90,
            "the tutorial DAG to be parsed",
            interval=1,
        )
        # A crashed child is reported and started again.
        worker = next(
            c for c in psutil.Process(proc.pid).children() if "worker-1" in " ".join(c.cmdline())
        )
        worker.kill()
        wait_until(lambda: "worker-1 restarted" in log.read_text(), 30, "worker-1 to be restarted")
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        trigger = subprocess.run(
            [*CLI, "dags", "trigger", "tutorial", "--wait"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert trigger.returncode == 0, trigger.stdout + trigger.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(90)
    assert code == 0, log.read_text()[-3000:]
    survivors = [
        pid
        for pid in children
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
    ]
    assert survivors == [], survivors
    assert not (home / "standalone.lock").exists()
