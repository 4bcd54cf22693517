"""Alembic environment: runs migrations on the connection handed over by migrate.py, under an
advisory lock so concurrent upgrades apply each revision once."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from tradewind_cluster.store.schema import metadata

config = context.config


def run_migrations() -> None:
    """Online migrations only: Tradewind always migrates a live database."""
    connection = config.attributes.get("connection")
    if connection is None:
        engine = sa.create_engine(config.get_main_option("sqlalchemy.url") or "")
        with engine.begin() as conn:
            _migrate(conn)
        engine.dispose()
    else:
        _migrate(connection)


def _migrate(connection: sa.Connection) -> None:
    # Serialise concurrent upgrades: the lock is held until this transaction ends, and alembic
    # reads the current revision only after it is granted.
    connection.execute(
        sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": config.attributes.get("lock_key", 0)}
    )
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
