"""A real PostgreSQL for tests: the embedded pgserver for the session (or
TRADEWIND_TEST_DATABASE_URL), a migrated template database, and one clone per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tradewind_cluster.embedded import EmbeddedPostgres
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.migrate import upgrade

__all__ = ["clone_database", "drop_database", "migrated_template", "server_url"]


def _normalise(url: str) -> str:
    if url.startswith("postgresql://"):
        return url.replace("postgresql://", "postgresql+psycopg2://", 1)
    return url


def server_url(tmp_dir: Path) -> Iterator[str]:
    """Yield an admin URL to a PostgreSQL server for the whole session."""
    external = os.environ.get("TRADEWIND_TEST_DATABASE_URL")
    if external:
        yield _normalise(external)
        return
    handle = EmbeddedPostgres(tmp_dir / "pgdata")
    url = handle.start()
    try:
        yield url
    finally:
        handle.stop()


def _admin(url: str) -> sa.Engine:
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def _with_db(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def migrated_template(admin_url: str) -> Iterator[str]:
    """Create a database migrated to head to clone tests from; yield its name."""
    name = f"tw_template_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    engine = _admin(admin_url)
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    db = Database(_with_db(admin_url, name))
    upgrade(db)
    db.dispose()
    try:
        yield name
    finally:
        drop_database(admin_url, name)
        engine.dispose()


def clone_database(admin_url: str, template: str) -> str:
    """A fresh database copied from the template; returns its URL."""
    name = f"tw_test_{uuid.uuid4().hex[:12]}"
    engine = _admin(admin_url)
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    engine.dispose()
    return _with_db(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    """Drop a test database, disconnecting whoever is still on it."""
    engine = _admin(admin_url)
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()
