"""Fixtures shared by every test folder. Store fixtures start PostgreSQL only when requested."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.support import postgres
from tradewind_cluster.store.database import Database, DatabaseOptions


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """Admin URL of the session's PostgreSQL server."""
    # Not under pytest's basetemp: pytest prunes old basetemps, which would pull the data dir
    # out from under a server started by another concurrent test session.
    tmp = Path(tempfile.mkdtemp(prefix="tradewind-test-pg-"))
    try:
        yield from postgres.server_url(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_template(pg_admin_url: str) -> Iterator[str]:
    """Name of a database migrated to head, cloned for each test."""
    yield from postgres.migrated_template(pg_admin_url)


@pytest.fixture
def db_url(pg_admin_url: str, pg_template: str) -> Iterator[str]:
    """URL of a fresh migrated database for this test only."""
    url = postgres.clone_database(pg_admin_url, pg_template)
    yield url
    name = make_url(url).database
    assert name is not None
    postgres.drop_database(pg_admin_url, name)


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    """A Database on this test's own migrated database."""
    db = Database(db_url, DatabaseOptions(retry_max_attempts=5, retry_max_wait_s=0.5))
    yield db
    db.dispose()


@pytest.fixture
def empty_db_url(pg_admin_url: str) -> Iterator[str]:
    """URL of a fresh, empty (unmigrated) database."""
    import uuid

    import sqlalchemy as sa

    name = f"tw_empty_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    yield make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    postgres.drop_database(pg_admin_url, name)
