"""Every scenario end to end at the tiny profile: a real cluster of `tradewind` processes on a
fresh database, its load, its fault, and a report whose invariants all hold."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from loadtest.runner import EXIT_OK, EXIT_VIOLATION, RunOptions, run_scenario
from loadtest.scenarios import Profile, Scenario, plan_for
from tests.loadtest.test_profiling import py_spy_can_attach

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MEASURES = ("task_latency_ms", "queued_to_start_ms", "run_creation_delay_ms")
INVARIANTS = {
    "all_tis_succeeded",
    "one_run_per_logical_date",
    "no_overlapping_attempts",
    "tries_within_limit",
    "pool_limits_respected",
    "concurrency_limits_respected",
    "no_stale_report_applied",
    "every_success_in_ledger",
    "processes_exited_cleanly",
}


def run(scenario: Scenario, url: str, out: Path, **kw: Any) -> tuple[int, dict[str, Any]]:
    """Run a tiny scenario in this process (no plots); returns the exit status and results."""
    plan = plan_for(scenario, Profile.TINY, **kw)
    outcome = run_scenario(
        RunOptions(plan=plan, out_dir=out, database_url=url, show_progress=False, plots=False)
    )
    on_disk = json.loads((outcome.run_dir / "results.json").read_text())
    assert on_disk["ok"] == outcome.results["ok"]
    return outcome.exit_code, on_disk


def assert_passed(results: dict[str, Any]) -> None:
    failed = {n: c for n, c in results["invariants"].items() if not c["ok"]}
    assert failed == {}, json.dumps(failed, indent=1)
    assert set(results["invariants"]) == INVARIANTS
    assert results["ok"] is True


def test_chain_through_the_command_line(pg_admin_url: str, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "loadtest", "run", "chain", "--profile", "tiny"]
    # a relative --out, as `make bench` gives: the cluster's processes run inside the run's
    # folder, so every path handed to them must be absolute
    cmd += ["--database-url", pg_admin_url, "--out", "results", "--quiet"]
    profiled = py_spy_can_attach()  # else tests/loadtest/test_profiling.py says it skipped
    cmd += ["--py-spy"] if profiled else []
    root = Path(__file__).resolve().parents[2]  # loadtest/ is not installed: run from here
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("PASS chain: task latency p50")
    (run_dir,) = (tmp_path / "results").iterdir()
    r = json.loads((run_dir / "results.json").read_text())
    assert_passed(r)
    for key in MEASURES:
        assert set(r[key]) >= {"p50", "p90", "p99", "max", "n"}
    assert r["task_latency_ms"]["n"] == 3 * 3  # every task but the first of each chain
    assert r["task_latency_ms"]["source"] == "ledger"
    assert r["task_instances"] == {"total": 12, "finished": 12}
    assert r["throughput_tis_per_s"]["overall"] > 0
    assert r["cluster"]["execution"] == "in-process"
    assert r["cpu_s_per_1000_tis"]["schedulers"] > 0
    assert r["cpu_s_per_1000_tis"]["postgres"] == "unavailable"  # an external server
    assert r["statements_per_ti"] == "unavailable" or r["statements_per_ti"] > 0
    assert r["ledger"]["executions"] == 12
    assert r["ledger"]["identity"] == "static"  # the in-process executor renders nothing
    # every hop cut into its phases, which add up to it (the means, to rounding)
    phases = r["hop_phases_ms"]
    assert list(phases) == ["report", "examine", "queue", "dispatch", "start"]
    assert all(p["n"] == 3 * 3 for p in phases.values())
    assert all(p["p50"] >= 0 for name, p in phases.items() if name != "report")
    assert "Where a hop's time goes" in (run_dir / "summary.md").read_text()
    if os.path.exists("/proc/self/schedstat"):  # the schedulers' threads ran and were timed
        assert r["cpu_wait"]["schedulers"]["run_s"] > 0
        assert r["cpu_wait"]["schedulers"]["wait_s"] >= 0
        assert r["cpu_wait"]["workers"] == "unavailable"  # none: attempts ran in-process
    assert any(name.startswith("s0#") for name in r["peak_rss_mb"])
    summary = (run_dir / "summary.md").read_text()
    assert "# Load test `chain` (tiny): PASS" in summary
    # the aims are issue 8's, for the quick profile: a tiny run says it is not comparable
    assert r["aims"]["comparable"] is False
    assert [m["name"] for m in r["aims"]["measures"]] == [
        "task latency p50",
        "task latency p99",
        "invariant violations",
    ]
    assert "## Against the aims" in summary
    if profiled:  # every scheduler sampled while the load ran, its raw samples kept
        prof = r["profile"]
        assert sorted(p["name"] for p in prof["processes"]) == ["s0", "s1"]
        assert all(p["problem"] is None for p in prof["processes"])
        assert all((run_dir / p["raw"]).exists() for p in prof["processes"])
        assert "## Where the time goes (py-spy)" in summary
    if importlib.util.find_spec("matplotlib") is not None:
        assert r["plots"] == ["latency_hist.png", "latency_over_time.png", "throughput.png"]
        assert all((run_dir / name).stat().st_size > 0 for name in r["plots"])


def test_tree(pg_admin_url: str, tmp_path: Path) -> None:
    code, r = run(Scenario.TREE, pg_admin_url, tmp_path, schedulers=1)
    assert code == EXIT_OK
    assert_passed(r)
    assert r["task_instances"]["finished"] == 7  # a binary tree of depth 3
    assert r["task_latency_ms"]["n"] == 6


def test_fanout_keeps_its_pool_under_the_limit(pg_admin_url: str, tmp_path: Path) -> None:
    code, r = run(Scenario.FANOUT, pg_admin_url, tmp_path, schedulers=1, slots=4)
    assert code == EXIT_OK
    assert_passed(r)
    (pool,) = [x for x in r["limits"] if x["kind"] == "pool" and x["name"] == "loadtest"]
    assert pool["limit"] == 4
    assert 1 <= pool["peak"] <= 4


def test_cron_measures_run_creation_delay(pg_admin_url: str, tmp_path: Path) -> None:
    code, r = run(Scenario.CRON, pg_admin_url, tmp_path)
    assert code == EXIT_OK
    assert_passed(r)
    assert r["run_creation_delay_ms"]["n"] >= 3
    assert 0 <= r["run_creation_delay_ms"]["p50"] < 5000


def test_failover_after_sigkill_of_a_replica(pg_admin_url: str, tmp_path: Path) -> None:
    code, r = run(Scenario.FAILOVER, pg_admin_url, tmp_path)
    assert code == EXIT_OK
    assert_passed(r)
    assert r["fault_skipped"] is None
    assert [e["kind"] for e in r["events"]] == ["kill"]
    f = r["failover"]
    assert f["victim"] in ("s0", "s1", "s2")
    assert f["declared_dead_s"] is not None
    assert 0 < f["declared_dead_s"] < 10
    if f["in_flight"]:
        assert r["failover_s"] == f["work_moved_s"]
        assert 0 < r["failover_s"] < 15
    assert r["cluster"]["exit_codes"]  # the survivors stopped cleanly
    assert all(code == 0 for code in r["cluster"]["exit_codes"].values())


needs_workers = pytest.mark.skipif(
    importlib.util.find_spec("tradewind_cluster.worker.agent") is None,
    reason="the worker agent is not in this tree",
)


@needs_workers
def test_worker_loss_retries_elsewhere(pg_admin_url: str, tmp_path: Path) -> None:
    code, r = run(Scenario.WORKER_LOSS, pg_admin_url, tmp_path, schedulers=1, workers=2, slots=4)
    assert code == EXIT_OK
    assert_passed(r)
    assert r["cluster"]["execution"] == "workers"
    assert r["fault_skipped"] is None
    loss = r["worker_loss"]
    assert loss["victim"] in ("w0", "w1")
    if loss["in_flight"]:
        assert r["worker_loss_recovery_s"] is not None
        assert 0 < r["worker_loss_recovery_s"] < 15


@needs_workers
def test_partition_stops_attempts_before_their_retries(pg_admin_url: str, tmp_path: Path) -> None:
    code, r = run(Scenario.PARTITION, pg_admin_url, tmp_path, schedulers=1, workers=2, slots=4)
    assert code == EXIT_OK
    assert_passed(r)
    assert [e["kind"] for e in r["events"]] == ["cut", "heal"]
    p = r["partition"]
    assert p["method"] in ("netns", "proxy")
    if p["retry_s"] is not None:
        assert p["margin_s"] > 0  # the cut-off attempt was gone before its retry started


@pytest.mark.parametrize("scenario", [Scenario.WORKER_LOSS, Scenario.PARTITION])
def test_worker_faults_are_skipped_without_workers(
    scenario: Scenario, pg_admin_url: str, tmp_path: Path
) -> None:
    code, r = run(scenario, pg_admin_url, tmp_path, workers=0)
    assert code == EXIT_OK
    assert r["skipped"].startswith(f"scenario {scenario} needs at least 2 workers")


def test_a_run_that_does_not_finish_fails(pg_admin_url: str, tmp_path: Path) -> None:
    plan = replace(plan_for(Scenario.CHAIN, Profile.TINY, schedulers=1), timeout_s=0.05)
    outcome = run_scenario(
        RunOptions(
            plan=plan, out_dir=tmp_path, database_url=pg_admin_url, show_progress=False, plots=False
        )
    )
    assert outcome.exit_code == EXIT_VIOLATION
    check = outcome.results["invariants"]["all_tis_succeeded"]
    assert not check["ok"]
    assert check["examples"][0] == "timed out after 0s"
