"""`tradewind jobs check` as a liveness probe against a real scheduler process."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import env_for, start_scheduler

pytestmark = pytest.mark.e2e


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tradewind-jobs-"))
    (path / "dags").mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def check(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "tradewind_cluster.cli.main", "jobs", "check", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)


def test_jobs_check_follows_the_scheduler_life(db_url: str, workdir: Path) -> None:
    env = env_for(db_url, workdir, workdir / "dags")
    assert check(env).returncode == 1
    proc = start_scheduler(env, workdir, "probe")
    try:
        alive = check(env)
        assert (alive.returncode, alive.stdout.strip()) == (0, "Found 1 alive job."), alive.stderr
        elsewhere = check(env, "--hostname", "no-such-host")
        assert elsewhere.returncode == 1
        assert "No alive jobs found on host no-such-host." in elsewhere.stdout
        second = start_scheduler(env, workdir, "probe2")
        try:
            assert check(env, "--limit", "2").returncode == 1  # two alive, one expected
            assert check(env, "--limit", "2", "--allow-multiple").returncode == 0
        finally:
            second.stop()
    finally:
        assert proc.stop() == 0
    assert check(env).returncode == 1
