"""Writing a run's report into its directory: results.json (stable shape), summary.md for
people, and the PNG plots when matplotlib is there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loadtest.hops import PHASES
from loadtest.plots import PLOTS_UNAVAILABLE, write_plots

__all__ = ["render_summary", "write_report"]

_LATENCIES = (
    ("task_latency_ms", "task latency (upstream end → start)"),
    ("task_latency_store_ms", "task latency, store times"),
    ("queued_to_start_ms", "queued → started"),
    ("run_creation_delay_ms", "run creation delay (due → run start)"),
    ("trigger_to_start_ms", "trigger → run start"),
)


def write_report(
    run_dir: Path, results: dict[str, Any], *, load_start: float = 0.0, plots: bool = True
) -> None:
    """results.json, summary.md and the plots (the private `_latency_series` is dropped)."""
    series = results.pop("_latency_series", [])
    if plots and results.get("skipped") is None and "throughput_tis_per_s" in results:
        try:
            results["plots"] = write_plots(run_dir, results, series, load_start)
        except ImportError:
            results["plots"] = PLOTS_UNAVAILABLE
    (run_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    (run_dir / "summary.md").write_text(render_summary(results))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return str(value)


def _header(r: dict[str, Any]) -> list[str]:
    p, c = r["params"], r.get("cluster", {})
    verdict = "SKIPPED" if r.get("skipped") else ("PASS" if r["ok"] else "FAIL")
    shape = p["shape"]
    lines = [f"# Load test `{r['scenario']}` ({p['profile']}): {verdict}", ""]
    if r.get("skipped"):
        return [*lines, f"Skipped: {r['skipped']}", ""]
    ti = r["task_instances"]
    m = r["machine"]
    lines += [
        f"- cluster: {c['schedulers']} schedulers, {c['workers']} workers, {c['slots']} slots "
        f"each; attempts ran **{c['execution']}**; {c['database']} PostgreSQL",
        f"- load: {shape['dags']} DAGs x {shape['kind']} of size {shape['size']} "
        f"({p['task_kind']} tasks, {p['task_seconds']} s each), {p['load']}; "
        f"{ti['finished']}/{ti['total']} task instances finished in {r['load_s']:.1f} s"
        + (f" - **{r['stalled']}**" if r.get("stalled") else ""),
        f"- machine: {m['cores']} cores, {m['memory_mb']} MB, Python {m['python']}",
        f"- started {r['started_at']}",
        "",
    ]
    if r.get("fault_skipped"):
        lines += [f"**Fault skipped:** {r['fault_skipped']}", ""]
    return lines


def _latency_table(r: dict[str, Any]) -> list[str]:
    lines = [
        "## Latency (ms)",
        "",
        "| measure | p50 | p90 | p99 | max | n |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in _LATENCIES:
        s = r[key]
        if s["n"]:
            cells = " | ".join(_fmt(s[k]) for k in ("p50", "p90", "p99", "max", "n"))
            lines.append(f"| {label} | {cells} |")
    t = r["throughput_tis_per_s"]
    lines += [
        "",
        f"Throughput: **{_fmt(t['overall'])} task instances/s** "
        f"({t['finished']} in {_fmt(t['window_s'])} s).",
        "",
    ]
    return lines + _hops(r.get("hop_phases_ms"))


def _hops(phases: dict[str, Any] | None) -> list[str]:
    """Where a hop's time goes, phase by phase (the means add up to the mean hop)."""
    if not phases:
        return []
    lines = [
        "Where a hop's time goes (ms; the means add up to the mean task latency of these hops):",
        "",
        "| phase | mean | p50 | p90 | p99 | n |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in PHASES.items():
        s = phases[name]
        cells = " | ".join(_fmt(s[k]) for k in ("mean", "p50", "p90", "p99", "n"))
        lines.append(f"| {name}: {label} | {cells} |")
    return [*lines, ""]


def _fault(r: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for key, title in (
        ("failover", "Failover"),
        ("worker_loss", "Worker loss"),
        ("partition", "Partition"),
    ):
        detail = r.get(key)
        if not detail:
            continue
        lines += [f"## {title}", ""]
        lines += [f"- {k}: {_fmt(v)}" for k, v in detail.items() if k != "definition"]
        lines += ["", f"_{detail['definition']}_", ""]
    if r["events"]:
        lines += [
            "Events: " + "; ".join(f"{e['t_s']}s {e['kind']} {e['target']}" for e in r["events"]),
            "",
        ]
    return lines


def _resources(r: dict[str, Any]) -> list[str]:
    cpu, waits = r["cpu_s_per_1000_tis"], r.get("cpu_wait") or {}
    lines = [
        "## Resources",
        "",
        "| role | CPU s / 1000 TIs | waited for a CPU, s per s run |",
        "|---|---|---|",
    ]
    for role, v in cpu.items():
        wait = waits.get(role)
        per_run = wait["wait_per_run_s"] if isinstance(wait, dict) else wait
        lines.append(f"| {role} | {_fmt(v)} | {_fmt(per_run)} |")
    lines += [
        "",
        "Waiting for a CPU: the time the role's threads were runnable but not running "
        "(`/proc/PID/task/TID/schedstat`, threads alive at the end of the load); much above "
        "0, the machine's cores are what the load waits for.",
        "",
        f"Statements per task instance: {_fmt(r['statements_per_ti'])}; "
        f"transactions per task instance: {_fmt(r['transactions_per_ti'])}.",
        "",
        "Peak RSS (MB): " + ", ".join(f"{k} {_fmt(v)}" for k, v in r["peak_rss_mb"].items()),
        "",
    ]
    return lines


def _limits(r: dict[str, Any]) -> list[str]:
    lines = ["## Limits (the closest to its limit of each kind)", ""]
    lines += ["| kind | name | peak | limit | limits seen |", "|---|---|---|---|---|"]
    lines += [
        f"| {x['kind']} | {x['name']} | {x['peak']} | {x['limit']} | {x['count']} |"
        for x in r["limits"]
    ]
    return [*lines, ""]


def _invariants(r: dict[str, Any]) -> list[str]:
    lines = [
        "## Invariants",
        "",
        "| invariant | ok | violations | first example |",
        "|---|---|---|---|",
    ]
    for name, c in r["invariants"].items():
        example = c["examples"][0] if c["examples"] else (c.get("note") or "")
        lines.append(
            f"| {name} | {'yes' if c['ok'] else '**NO**'} | {c['violations']} | {example} |"
        )
    return [*lines, ""]


def _verdict(row: dict[str, Any], target: str) -> str:
    met, times = row[f"{target}_met"], row[f"times_the_{target}"]
    if met is None:
        return "-"
    if met:
        return "met"
    return f"**missed** ({times}x)" if times is not None else "**missed**"


def _aims(r: dict[str, Any]) -> list[str]:
    aims = r.get("aims")
    if not aims:
        return []
    lines = ["## Against the aims", "", f"Aims and floors from {aims['source']}."]
    if not aims["comparable"]:
        lines += ["", "**This run's set-up differs:** " + "; ".join(aims["differences"]) + "."]
    lines += [
        "",
        "| measure | value | aim | floor | aim | floor |",
        "|---|---|---|---|---|---|",
    ]
    for row in aims["measures"]:
        unit = f" {row['unit']}" if row["unit"] else ""
        sign = "≤" if row["lower_is_better"] else "≥"
        value = "never" if row["never"] else f"{_fmt(row['value'])}{unit}"
        lines.append(
            f"| {row['name']} | {value} | {sign} {row['aim']:g}{unit} | "
            f"{sign} {row['floor']:g}{unit} | {_verdict(row, 'aim')} | {_verdict(row, 'floor')} |"
        )
    if aims["aims_met"] is False and not r.get("profile"):
        lines += ["", "Run again with `--py-spy` to see where the hottest process spends its time."]
    return [*lines, ""]


def _profile(r: dict[str, Any]) -> list[str]:
    prof = r.get("profile")
    if not prof:
        return []
    lines = [
        "## Where the time goes (py-spy)",
        "",
        f"{prof['rate_hz']} samples/s of each Python process, {prof['samples_are']}; "
        f"py-spy itself used {_fmt(prof['profiler_cpu_s'])} CPU s on the same machine.",
        "",
        "| process | CPU s in the load | samples | unreadable samples | raw |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {p['name']} ({p['role']}) | {_fmt(p['cpu_s'])} | {p['samples']} | "
        f"{_fmt(p['errors'])} | " + (f"**{p['problem']}** |" if p["problem"] else f"{p['raw']} |")
        for p in prof["processes"]
    ]
    hot = prof["hottest"]
    if hot is None:
        failed = any(p["problem"] for p in prof["processes"])
        why = "py-spy could not sample (see above)" if failed else "no process held the GIL"
        return [*lines, "", f"_No samples: {why}._", ""]
    lines += [
        "",
        f"Hottest: **{hot['name']}** ({_fmt(hot['cpu_s'])} CPU s, {hot['samples']} samples).",
        "",
        "| share of samples (anywhere on the stack) | function | | share (leaf) | function |",
        "|---|---|---|---|---|",
    ]
    for i in range(max(len(hot["inclusive"]), len(hot["self"]))):
        inc = hot["inclusive"][i] if i < len(hot["inclusive"]) else None
        own = hot["self"][i] if i < len(hot["self"]) else None
        left = f"{inc['share']:.1%} | `{inc['function']}`" if inc else " | "
        right = f"{own['share']:.1%} | `{own['function']}`" if own else " | "
        lines.append(f"| {left} | | {right} |")
    return [*lines, ""]


def render_summary(r: dict[str, Any]) -> str:
    """summary.md."""
    lines = _header(r)
    if r.get("skipped"):
        return "\n".join(lines)
    lines += _latency_table(r) + _aims(r) + _fault(r) + _resources(r) + _profile(r)
    lines += _limits(r) + _invariants(r)
    plots = r.get("plots")
    if isinstance(plots, list):
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in plots] + [""]
    elif plots:
        lines += [f"_{plots}_", ""]
    return "\n".join(lines)
