"""How a run's results stand against issue 8's aims and floors (pure: results documents made
here), and how the summary and the command's verdict line say it."""

from __future__ import annotations

from typing import Any

from loadtest.aims import judge, missed_floors
from loadtest.cli import verdict_line
from loadtest.report import render_summary
from loadtest.results import plan_params
from loadtest.scenarios import Profile, Scenario, plan_for


def results_of(scenario: Scenario, *, violations: int = 0, **measures: Any) -> dict[str, Any]:
    """A results document of a run with the aims' own set-up (quick, 2 workers)."""
    plan = plan_for(scenario, Profile.QUICK, workers=2)
    return {
        "scenario": scenario.value,
        "params": plan_params(plan),
        "machine": {"cores": 2},
        "invariants": {
            "all_tis_succeeded": {"ok": violations == 0, "violations": violations},
            "tries_within_limit": {"ok": True, "violations": 0},
        },
        **measures,
    }


def row(aims: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [r for r in aims["measures"] if r["name"] == name]
    return found


def test_a_chain_over_the_latency_floor_says_by_how_much() -> None:
    r = results_of(Scenario.CHAIN, task_latency_ms={"p50": 101.8, "p99": 191.5})
    aims = judge(r)
    assert aims["comparable"] is True
    assert aims["differences"] == []
    p50 = row(aims, "task latency p50")
    assert (p50["value"], p50["aim"], p50["floor"]) == (101.8, 10, 50)
    assert (p50["aim_met"], p50["floor_met"]) == (False, False)
    assert (p50["times_the_aim"], p50["times_the_floor"]) == (10.18, 2.04)
    p99 = row(aims, "task latency p99")
    assert (p99["aim_met"], p99["floor_met"], p99["times_the_floor"]) == (False, True, None)
    assert aims["floors_met"] is False
    assert aims["aims_met"] is False
    assert missed_floors(aims) == ["task latency p50 101.8 ms, 2.04x the 50 ms floor"]


def test_a_chain_within_the_aims_meets_them_all() -> None:
    aims = judge(results_of(Scenario.CHAIN, task_latency_ms={"p50": 8.0, "p99": 49.9}))
    assert aims["floors_met"] is True
    assert aims["aims_met"] is True
    assert missed_floors(aims) == []


def test_throughput_is_judged_the_other_way_round() -> None:
    short = judge(results_of(Scenario.FANOUT, throughput_tis_per_s={"overall": 80.0}))
    tp = row(short, "throughput")
    assert tp["lower_is_better"] is False
    assert (tp["floor_met"], tp["times_the_floor"], tp["times_the_aim"]) == (False, 1.25, 2.5)
    plenty = judge(results_of(Scenario.FANOUT, throughput_tis_per_s={"overall": 250.0}))
    assert row(plenty, "throughput")["aim_met"] is True


def test_recovery_times_and_a_fault_that_never_struck() -> None:
    slow = judge(results_of(Scenario.WORKER_LOSS, worker_loss_recovery_s=16.5))
    assert missed_floors(slow) == ["worker-loss recovery 16.5 s, 1.1x the 15 s floor"]
    fast = judge(results_of(Scenario.FAILOVER, failover_s=0.02))
    assert row(fast, "failover")["aim_met"] is True
    # the load finished before the kill: no failover time, neither met nor missed
    skipped = judge(results_of(Scenario.FAILOVER, failover_s=None, failover=None))
    assert row(skipped, "failover")["floor_met"] is None
    assert skipped["floors_met"] is True  # the invariants still count
    # the kill found nothing in flight: nothing could move, neither met nor missed either
    idle = judge(results_of(Scenario.FAILOVER, failover_s=None, failover={"in_flight": 0}))
    assert row(idle, "failover")["floor_met"] is None
    # the kill struck work that never moved: a miss, however long one waits
    stuck = judge(
        results_of(Scenario.WORKER_LOSS, worker_loss_recovery_s=None, worker_loss={"in_flight": 3})
    )
    lost = row(stuck, "worker-loss recovery")
    assert (lost["never"], lost["aim_met"], lost["floor_met"]) == (True, False, False)
    assert stuck["floors_met"] is False
    assert missed_floors(stuck) == ["worker-loss recovery never (the work in flight did not move)"]


def test_an_invariant_violation_misses_every_scenario_floor() -> None:
    aims = judge(results_of(Scenario.TREE, violations=2))
    assert [r["name"] for r in aims["measures"]] == ["invariant violations"]
    assert aims["floors_met"] is False
    assert missed_floors(aims) == ["invariant violations 2, the 0 floor"]


def test_a_run_set_up_otherwise_says_how() -> None:
    r = results_of(Scenario.CHAIN, task_latency_ms={"p50": 30.0, "p99": 90.0})
    r["params"] = plan_params(plan_for(Scenario.CHAIN, Profile.QUICK, workers=1, size=40))
    aims = judge(r)
    assert aims["comparable"] is False
    assert len(aims["differences"]) == 2
    assert any(d.startswith("workers 1 ") for d in aims["differences"])
    assert any(d.startswith("shape ") for d in aims["differences"])
    # the aims are set for 2 cores, and a profiled run shares them with py-spy
    r = results_of(Scenario.CHAIN, task_latency_ms={"p50": 30.0, "p99": 90.0})
    r["machine"] = {"cores": 8}
    r["profile"] = {"tool": "py-spy"}
    assert judge(r)["differences"] == [
        "8 cores (the aims are set for 2)",
        "profiled with py-spy, which shares the machine",
    ]


def full_results(**measures: Any) -> dict[str, Any]:
    """Enough of a real results document for the summary and the verdict line."""
    lat = {"p50": 101.8, "p90": 150.0, "p99": 191.5, "max": 200.0, "n": 180}
    none = {"p50": None, "p90": None, "p99": None, "max": None, "n": 0}
    r = results_of(Scenario.CHAIN, task_latency_ms=lat, **measures)
    r["params"]["shape"] = {"kind": "chain", "dags": 20, "size": 10}
    r.update(
        machine={"cores": 2, "memory_mb": 24000, "python": "3.11"},
        profile=None,
        cluster={
            "schedulers": 2,
            "workers": 2,
            "slots": 8,
            "execution": "workers",
            "database": "embedded",
        },
        started_at="2026-11-21T00:00:00+00:00",
        load_s=1.5,
        task_instances={"total": 200, "finished": 200},
        task_latency_store_ms=none,
        queued_to_start_ms=none,
        run_creation_delay_ms=none,
        trigger_to_start_ms=none,
        throughput_tis_per_s={"overall": 160.0, "finished": 200, "window_s": 1.25},
        events=[],
        cpu_s_per_1000_tis={"schedulers": 4.0},
        statements_per_ti="unavailable",
        transactions_per_ti=2.0,
        peak_rss_mb={},
        limits=[],
        ok=True,
    )
    for c in r["invariants"].values():
        c["examples"] = []
    r["aims"] = judge(r)
    return r


def test_the_summary_and_the_verdict_line_name_the_missed_floor() -> None:
    r = full_results()
    text = render_summary(r)
    assert "## Against the aims" in text
    assert "| task latency p50 | 101.8 ms | ≤ 10 ms | ≤ 50 ms |" in text
    assert "**missed** (2.04x)" in text
    assert "Run again with `--py-spy`" in text  # no profile in this run
    line = verdict_line(r)
    assert line.startswith("PASS chain: task latency p50 101.8 ms")
    assert line.endswith("; below the floor: task latency p50 101.8 ms, 2.04x the 50 ms floor")
    # a run set up otherwise names no floor on its verdict line (summary.md still judges it)
    r["params"]["workers"] = 1
    r["aims"] = judge(r)
    assert "below the floor" not in verdict_line(r)
    assert "**This run's set-up differs:** workers 1" in render_summary(r)
