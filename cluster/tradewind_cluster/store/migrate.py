"""Schema migrations: `db upgrade` (safe to run concurrently), `db check`, `db reset`.

Upgrades are serialised across processes and hosts with a PostgreSQL advisory lock taken in
the migration transaction (see migrations/env.py), so four replicas starting at the same
moment apply each revision exactly once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from tradewind_cluster.store.database import Database, unavailable_as_error
from tradewind_cluster.store.schema import metadata

__all__ = ["SchemaStatus", "alembic_config", "check", "reset", "schema_diff", "upgrade"]

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
MIGRATION_LOCK_KEY = 0x7472_6164  # "trad": the advisory lock that serialises upgrades


@dataclass(frozen=True, slots=True, kw_only=True)
class SchemaStatus:
    """Where the database's schema stands against the code's migrations."""

    current: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        """True when the database is at the newest revision."""
        return self.current == self.head


def alembic_config(url: str) -> Config:
    """An Alembic config for this URL with no alembic.ini on disk."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["lock_key"] = MIGRATION_LOCK_KEY
    return cfg


def upgrade(
    db: Database, revision: str = "head", *, default_pool_slots: int | None = None
) -> SchemaStatus:
    """Apply every pending migration; a no-op when the schema is current. On an empty
    database, default_pool gets `default_pool_slots` (core.default_pool_slots) slots; on one
    that had a schema already, the pool keeps what an operator set."""
    cfg = alembic_config(db.url)
    with unavailable_as_error(), db.engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        fresh = MigrationContext.configure(conn).get_current_revision() is None
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        if fresh and default_pool_slots is not None:
            conn.execute(
                sa.text("UPDATE pool SET slots = :n WHERE name = 'default_pool'"),
                {"n": default_pool_slots},
            )
    return check(db)


def check(db: Database) -> SchemaStatus:
    """Read the database's revision and compare it with the newest migration."""
    head = ScriptDirectory.from_config(alembic_config(db.url)).get_current_head()
    assert head is not None, "no migrations found"
    with unavailable_as_error(), db.engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return SchemaStatus(current=current, head=head)


def schema_diff(db: Database) -> list[object]:
    """Differences between the live schema and the models (empty when they agree)."""
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, metadata))


def reset(db: Database, *, default_pool_slots: int | None = None) -> SchemaStatus:
    """Drop every Tradewind table and migrate again. Development only: it loses all data."""
    with db.engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        metadata.drop_all(conn)
        conn.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))
    return upgrade(db, default_pool_slots=default_pool_slots)
