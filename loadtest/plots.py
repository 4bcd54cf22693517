"""PNG plots of one run: the task-latency histogram, latency percentiles over time and
throughput over time, with the fault's events marked. Needs matplotlib (optional)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["PLOTS_UNAVAILABLE", "latency_over_time", "write_plots"]

PLOTS_UNAVAILABLE = "matplotlib is not installed (pip install matplotlib): no plots"


def latency_over_time(
    series: Sequence[tuple[float, float]], bucket_s: float
) -> list[tuple[float, float, float, float]]:
    """(t, p50, p90, p99) per time bucket of (t, latency) pairs, t relative to the load start."""
    buckets: dict[int, list[float]] = defaultdict(list)
    for t, v in series:
        buckets[int(t // bucket_s)].append(v)
    out = []
    for i in sorted(buckets):
        vals = sorted(buckets[i])

        def rank(q: float, vals: list[float] = vals) -> float:
            return vals[max(0, math.ceil(q * len(vals)) - 1)]

        out.append((i * bucket_s, rank(0.5), rank(0.9), rank(0.99)))
    return out


def _mark_events(ax: Any, events: Sequence[dict[str, Any]]) -> None:
    for e in events:
        ax.axvline(e["t_s"], color="red", linestyle="--", linewidth=1)
        ax.annotate(
            f"{e['kind']} {e['target']}",
            (e["t_s"], 1),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=7,
            color="red",
        )


def write_plots(
    run_dir: Path, results: dict[str, Any], series: Sequence[tuple[float, float]], start: float
) -> list[str]:
    """Write the PNGs; returns their file names (raises ImportError without matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = results.get("events", [])
    title = f"{results['scenario']} ({results['params']['profile']})"
    written: list[str] = []
    relative = [(t - start, v) for t, v in series]

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.hist([v for _, v in relative] or [0], bins=50, color="steelblue")
    ax.set(title=f"task latency, {title}", xlabel="ms", ylabel="task instances")
    fig.savefig(run_dir / "latency_hist.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    written.append("latency_hist.png")

    span = max((t for t, _ in relative), default=1.0)
    points = latency_over_time(relative, max(0.1, round(span / 40, 1)))
    fig, ax = plt.subplots(figsize=(8, 4))
    for idx, label in ((1, "p50"), (2, "p90"), (3, "p99")):
        ax.plot([p[0] for p in points], [p[idx] for p in points], label=label, marker=".")
    _mark_events(ax, events)
    ax.set(title=f"task latency over time, {title}", xlabel="s since load start", ylabel="ms")
    ax.legend()
    fig.savefig(run_dir / "latency_over_time.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    written.append("latency_over_time.png")

    over = results["throughput_tis_per_s"]["over_time"]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.step([p["t_s"] for p in over], [p["tis_per_s"] for p in over], where="post")
    _mark_events(ax, events)
    ax.set(title=f"throughput, {title}", xlabel="s since load start", ylabel="task instances / s")
    fig.savefig(run_dir / "throughput.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    written.append("throughput.png")
    return written
