"""The metadata database's tables (SQLAlchemy Core) and the indexes behind every hot query.

Times are `timestamptz` and, for leases and heartbeats, taken from the database clock so that
replicas on hosts with skewed clocks agree. Alembic migrations must match this file
(a test checks)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

__all__ = [
    "dag",
    "dag_file",
    "dag_run",
    "import_error",
    "lease",
    "metadata",
    "pool",
    "scheduler_member",
    "serialized_dag",
    "task_attempt",
    "task_instance",
    "task_log",
    "variable",
    "worker",
    "xcom",
]

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)


def _ts(name: str, *, nullable: bool = True, now: bool = False) -> Column[object]:
    default = text("clock_timestamp()") if now else None
    return Column(name, DateTime(timezone=True), nullable=nullable, server_default=default)


dag_file = Table(
    "dag_file",
    metadata,
    Column("path", Text, primary_key=True),
    Column("content_hash", Text),
    Column("is_present", Boolean, nullable=False, server_default=text("true")),
    Column("lease_owner", Text),
    _ts("lease_expires_at"),
    _ts("next_parse_at", nullable=False, now=True),
    _ts("last_parsed_at"),
    Column("last_parse_ms", Float),
    Column("parsed_by", Text),
)
# Claim predicate of the parse step: files due, present, lease free or expired.
Index("ix_dag_file_due", dag_file.c.next_parse_at, postgresql_where=dag_file.c.is_present)

dag = Table(
    "dag",
    metadata,
    Column("dag_id", Text, primary_key=True),
    Column("fileloc", Text, nullable=False),
    Column("is_active", Boolean, nullable=False, server_default=text("true")),
    Column("is_paused", Boolean, nullable=False, server_default=text("false")),
    Column("description", Text),
    Column("tags", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("schedule_label", Text, nullable=False, server_default=text("'None'")),
    Column("max_active_runs", Integer, nullable=False, server_default=text("16")),
    Column("max_active_tasks", Integer, nullable=False, server_default=text("16")),
    _ts("last_automated_interval_start"),
    _ts("last_automated_interval_end"),
    _ts("next_dagrun"),
    _ts("next_dagrun_interval_start"),
    _ts("next_dagrun_interval_end"),
    _ts("next_dagrun_create_after"),
    # Set when the DAG may have runs to create or start outside its schedule: a manual trigger,
    # or a run finishing while max_active_runs held others back.
    Column("check_runs", Boolean, nullable=False, server_default=text("false")),
    _ts("updated_at", nullable=False, now=True),
)
# Claim predicate of run creation: active, unpaused DAGs whose next run is due, or with queued runs.
Index(
    "ix_dag_due",
    dag.c.next_dagrun_create_after,
    postgresql_where=dag.c.is_active & ~dag.c.is_paused,
)
Index("ix_dag_check_runs", dag.c.dag_id, postgresql_where=dag.c.check_runs & dag.c.is_active)

# Deactivating the DAGs of a file that disappeared or stopped defining them.
Index("ix_dag_fileloc", dag.c.fileloc)

serialized_dag = Table(
    "serialized_dag",
    metadata,
    Column("dag_id", Text, ForeignKey("dag.dag_id", ondelete="CASCADE"), primary_key=True),
    Column("fileloc", Text, nullable=False),
    Column("data", JSONB, nullable=False),
    Column("spec_hash", Text, nullable=False),
    Column("file_hash", Text, nullable=False),
    _ts("updated_at", nullable=False, now=True),
)

import_error = Table(
    "import_error",
    metadata,
    Column("path", Text, primary_key=True),
    Column("error", Text, nullable=False),
    _ts("created_at", nullable=False, now=True),
)

dag_run = Table(
    "dag_run",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("dag_id", Text, ForeignKey("dag.dag_id", ondelete="CASCADE"), nullable=False),
    Column("run_id", Text, nullable=False),
    _ts("logical_date", nullable=False),
    _ts("data_interval_start"),
    _ts("data_interval_end"),
    Column("run_type", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("conf", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    _ts("run_after"),
    _ts("queued_at", nullable=False, now=True),
    _ts("start_date"),
    _ts("end_date"),
    _ts("examine_after"),
    _ts("last_examined_at"),
    Column("created_by", Text),
    Column("trace_context", Text),
    UniqueConstraint("dag_id", "run_id"),
    UniqueConstraint("dag_id", "logical_date"),
    CheckConstraint("state IN ('queued','running','success','failed')", name="state"),
)
# Examine step: running runs whose state may have changed (a task finished, a retry is due).
Index(
    "ix_dag_run_examine",
    dag_run.c.examine_after,
    postgresql_where=dag_run.c.state == "running",
)
Index(
    "ix_dag_run_queued",
    dag_run.c.dag_id,
    dag_run.c.logical_date,
    postgresql_where=dag_run.c.state == "queued",
)
Index("ix_dag_run_dag_logical", dag_run.c.dag_id, dag_run.c.logical_date)

task_instance = Table(
    "task_instance",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("run_pk", BigInteger, ForeignKey("dag_run.id", ondelete="CASCADE"), nullable=False),
    Column("dag_id", Text, nullable=False),
    Column("run_id", Text, nullable=False),
    Column("task_id", Text, nullable=False),
    _ts("logical_date", nullable=False),
    Column("state", Text, nullable=False, server_default=text("'none'")),
    Column("try_number", Integer, nullable=False, server_default=text("0")),
    Column("max_tries", Integer, nullable=False, server_default=text("0")),
    Column("token", BigInteger, nullable=False, server_default=text("0")),
    Column("pool", Text, nullable=False, server_default=text("'default_pool'")),
    Column("pool_slots", Integer, nullable=False, server_default=text("1")),
    Column("queue", Text, nullable=False, server_default=text("'default'")),
    Column("priority_weight", Integer, nullable=False, server_default=text("1")),
    Column("max_active_tis_per_dag", Integer),
    Column("operator", Text),
    Column("queued_by", Text),
    Column("worker", Text),
    Column("requeue_count", Integer, nullable=False, server_default=text("0")),
    Column("followed", JSONB),
    Column("reason", Text),
    _ts("scheduled_at"),
    _ts("queued_at"),
    _ts("start_date"),
    _ts("end_date"),
    _ts("heartbeat_at"),
    _ts("next_retry_at"),
    _ts("updated_at", nullable=False, now=True),
    UniqueConstraint("run_pk", "task_id"),
    CheckConstraint(
        "state IN ('none','scheduled','queued','running','success','failed','skipped',"
        "'upstream_failed','up_for_retry','removed')",
        name="state",
    ),
)
# Critical section: scheduled TIs of one pool, highest priority first.
Index(
    "ix_ti_scheduled",
    task_instance.c.pool,
    task_instance.c.priority_weight.desc(),
    task_instance.c.logical_date,
    postgresql_where=task_instance.c.state == "scheduled",
)
# Slot accounting and dispatch: active TIs by pool, dag and task.
Index(
    "ix_ti_active",
    task_instance.c.pool,
    task_instance.c.dag_id,
    task_instance.c.task_id,
    postgresql_where=task_instance.c.state.in_(["queued", "running"]),
)
# Zombie and queued-timeout sweeps.
Index(
    "ix_ti_running_heartbeat",
    task_instance.c.heartbeat_at,
    postgresql_where=task_instance.c.state == "running",
)
Index(
    "ix_ti_queued_at",
    task_instance.c.queued_at,
    postgresql_where=task_instance.c.state == "queued",
)
Index("ix_ti_dag_task_logical", task_instance.c.dag_id, task_instance.c.task_id)

task_attempt = Table(
    "task_attempt",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("ti_id", BigInteger, ForeignKey("task_instance.id", ondelete="CASCADE"), nullable=False),
    Column("dag_id", Text, nullable=False),
    Column("run_id", Text, nullable=False),
    Column("task_id", Text, nullable=False),
    Column("try_number", Integer, nullable=False),
    Column("token", BigInteger, nullable=False),
    Column("state", Text, nullable=False),
    Column("queued_by", Text),
    Column("worker", Text),
    _ts("queued_at", nullable=False, now=True),
    _ts("dispatched_at"),
    _ts("start_date"),
    _ts("end_date"),
    Column("exit_code", Integer),
    Column("error", Text),
    Column("trace_context", Text),
    UniqueConstraint("ti_id", "token"),
)
Index("ix_task_attempt_ti", task_attempt.c.ti_id, task_attempt.c.try_number)

pool = Table(
    "pool",
    metadata,
    Column("name", Text, primary_key=True),
    Column("slots", Integer, nullable=False),
    Column("description", Text),
    CheckConstraint("slots >= 0", name="slots_nonneg"),
)

xcom = Table(
    "xcom",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("dag_id", Text, nullable=False),
    Column("run_id", Text, nullable=False),
    Column("task_id", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("value", Text, nullable=False),
    _ts("created_at", nullable=False, now=True),
    UniqueConstraint("dag_id", "run_id", "task_id", "key"),
)

variable = Table(
    "variable",
    metadata,
    Column("key", Text, primary_key=True),
    Column("val", Text, nullable=False),
    Column("description", Text),
)

scheduler_member = Table(
    "scheduler_member",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("hostname", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("grpc_address", Text),
    Column("health_address", Text),
    Column("metrics_address", Text),
    Column("version", Text, nullable=False),
    Column("state", Text, nullable=False, server_default=text("'alive'")),
    Column("heartbeat_seq", BigInteger, nullable=False, server_default=text("0")),
    _ts("started_at", nullable=False, now=True),
    _ts("heartbeat_at", nullable=False, now=True),
    _ts("loop_progress_at"),
    Column("declared_dead_by", Text),
    Column("dead_reason", Text),
    _ts("ended_at"),
    CheckConstraint("state IN ('alive','dead','stopped')", name="state"),
)
Index(
    "ix_scheduler_member_alive",
    scheduler_member.c.heartbeat_at,
    postgresql_where=scheduler_member.c.state == "alive",
)

worker = Table(
    "worker",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("hostname", Text, nullable=False),
    Column("grpc_address", Text, nullable=False),
    Column("queues", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("slots", Integer, nullable=False),
    Column("running", Integer, nullable=False, server_default=text("0")),
    Column("state", Text, nullable=False, server_default=text("'alive'")),
    Column("version", Text),
    Column("registered_via", Text),
    _ts("registered_at", nullable=False, now=True),
    _ts("heartbeat_at", nullable=False, now=True),
    CheckConstraint("state IN ('alive','suspect','lost','draining','stopped')", name="state"),
)
Index("ix_worker_alive", worker.c.heartbeat_at, postgresql_where=worker.c.state == "alive")

task_log = Table(
    "task_log",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("ti_id", BigInteger, ForeignKey("task_instance.id", ondelete="CASCADE"), nullable=False),
    Column("try_number", Integer, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("data", Text, nullable=False),
    _ts("created_at", nullable=False, now=True),
    UniqueConstraint("ti_id", "try_number", "seq"),
)

lease = Table(
    "lease",
    metadata,
    Column("name", Text, primary_key=True),
    Column("owner", Text),
    _ts("expires_at"),
)
