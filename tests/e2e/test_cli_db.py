"""`tradewind db upgrade|check|reset` as a user runs them: against an external URL and against the
embedded server with no configuration at all."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

TRADEWIND = [sys.executable, "-m", "tradewind_cluster.cli.main"]


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TRADEWIND, *args], env=env, capture_output=True, text=True, timeout=120)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEWIND")}
    env.update(extra)
    return env


@pytest.fixture
def home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tradewind-home-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_external_url_upgrade_then_check(empty_db_url: str, home: Path) -> None:
    env = clean_env(TRADEWIND_HOME=str(home), TRADEWIND__DATABASE__URL=empty_db_url)
    first = run(["db", "check"], env)
    assert first.returncode == 1
    assert "run `tradewind db upgrade`" in first.stdout
    up = run(["db", "upgrade"], env)
    assert up.returncode == 0, up.stderr
    assert "upgraded from empty to" in up.stdout
    again = run(["db", "upgrade"], env)
    assert "already at" in again.stdout
    assert run(["db", "check"], env).returncode == 0
    assert not (home / "pgdata").exists()  # an external URL never starts the embedded server


def test_embedded_server_with_no_configuration(home: Path) -> None:
    env = clean_env(TRADEWIND_HOME=str(home))
    up = run(["db", "upgrade"], env)
    assert up.returncode == 0, up.stderr
    assert up.stderr == ""
    check = run(["db", "check"], env)
    assert check.returncode == 0
    assert "schema is current" in check.stdout
    assert (home / "pgdata" / "PG_VERSION").exists()


def test_reset_needs_yes_and_unreachable_database_is_one_clear_line(home: Path) -> None:
    env = clean_env(
        TRADEWIND_HOME=str(home), TRADEWIND__DATABASE__URL="postgresql://u:s3cret@127.0.0.1:1/x"
    )
    reset = run(["db", "reset"], env)
    assert reset.returncode == 2
    assert reset.stderr.strip() == "error: db reset deletes every row; pass --yes to confirm"
    down = run(["db", "check"], env)
    assert down.returncode == 1
    assert down.stderr.startswith("error: metadata database unreachable:")
    assert len(down.stderr.strip().splitlines()) == 1
    assert "Traceback" not in down.stderr
    assert "s3cret" not in down.stderr
