"""Migrations: fresh, repeated, concurrent (4 processes); the migrated schema equals the models."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import sqlalchemy as sa

from tradewind_cluster.store.database import Database
from tradewind_cluster.store.migrate import check, reset, schema_diff, upgrade

pytestmark = pytest.mark.store


def test_fresh_upgrade_reaches_head_and_seeds_default_pool(empty_db_url: str) -> None:
    db = Database(empty_db_url)
    assert check(db).current is None
    status = upgrade(db)
    assert status.up_to_date
    with db.engine.connect() as conn:
        slots = conn.execute(sa.text("SELECT slots FROM pool WHERE name='default_pool'")).scalar()
    assert slots == 128
    db.dispose()


def test_default_pool_slots_apply_to_a_fresh_database_only(empty_db_url: str) -> None:
    db = Database(empty_db_url)
    read = "SELECT slots FROM pool WHERE name='default_pool'"
    try:
        assert upgrade(db, default_pool_slots=7).up_to_date
        with db.engine.connect() as conn:
            assert conn.execute(sa.text(read)).scalar() == 7
        with db.engine.begin() as conn:  # an operator resizes it: later upgrades keep that
            conn.execute(sa.text("UPDATE pool SET slots = 40 WHERE name = 'default_pool'"))
        upgrade(db, default_pool_slots=9)
        with db.engine.connect() as conn:
            assert conn.execute(sa.text(read)).scalar() == 40
        reset(db, default_pool_slots=3)  # reset starts from nothing again
        with db.engine.connect() as conn:
            assert conn.execute(sa.text(read)).scalar() == 3
    finally:
        db.dispose()


def test_upgrade_twice_is_a_no_op(database: Database) -> None:
    before = check(database)
    assert before.up_to_date
    assert upgrade(database) == before


def test_migrated_schema_equals_the_models(database: Database) -> None:
    assert schema_diff(database) == []


def test_reset_drops_data_and_migrates_again(database: Database) -> None:
    with database.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO variable (key, val) VALUES ('k', 'v')"))
    assert reset(database).up_to_date
    with database.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM variable")).scalar() == 0


def test_four_processes_upgrading_at_once_apply_each_revision_once(empty_db_url: str) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from tradewind_cluster.store.database import Database
        from tradewind_cluster.store.migrate import upgrade
        db = Database({empty_db_url!r})
        status = upgrade(db)
        sys.exit(0 if status.up_to_date else 3)
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(4)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    db = Database(empty_db_url)
    assert check(db).up_to_date
    assert schema_diff(db) == []
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 1
        assert conn.execute(sa.text("SELECT count(*) FROM pool")).scalar() == 1
    db.dispose()
