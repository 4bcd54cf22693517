"""Tradewind's load and chaos harness: `python -m loadtest run SCENARIO` starts a real cluster as
separate processes, drives a scenario's load, injects its fault, and reports latency,
throughput, resource use and the invariants (see loadtest/README.md)."""

from __future__ import annotations

__all__: list[str] = []
