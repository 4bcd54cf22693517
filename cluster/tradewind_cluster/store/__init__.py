"""The metadata store: the only package that speaks SQL. It returns frozen snapshots and
applies decisions; lock order everywhere is dag → dag_run → task_instance → pool.

Modules are imported by name (`from tradewind_cluster.store import runs`); this package
imports nothing itself, so a command that needs one query does not load Alembic."""
