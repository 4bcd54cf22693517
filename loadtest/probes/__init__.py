"""Quick measurement scripts, each run from the repo root as `python -m loadtest.probes.NAME`."""
