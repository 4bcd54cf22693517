"""A transaction whose connection is killed mid-way is retried as a whole and applied once."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from tradewind.errors import SchemaError, StoreUnavailableError
from tradewind_cluster.store.database import Database, DatabaseOptions, is_transient

pytestmark = pytest.mark.store


def test_terminated_backend_mid_transaction_completes_exactly_once(database: Database) -> None:
    calls: list[int] = []

    def work(conn: sa.Connection) -> int:
        calls.append(1)
        conn.execute(sa.text("INSERT INTO variable (key, val) VALUES ('once', 'x')"))
        if len(calls) == 1:
            pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
            with database.engine.connect() as killer:
                killer.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                killer.commit()
        conn.execute(sa.text("UPDATE variable SET val = 'y' WHERE key = 'once'"))
        return len(calls)

    assert database.transaction(work) == 2
    with database.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT val FROM variable WHERE key = 'once'")).all()
    assert rows == [("y",)]


def test_non_transient_errors_are_not_retried(database: Database) -> None:
    calls: list[int] = []

    def work(conn: sa.Connection) -> None:
        calls.append(1)
        conn.execute(sa.text("SELECT * FROM no_such_table"))

    with pytest.raises(SchemaError, match="run `tradewind db upgrade`") as info:
        database.transaction(work)
    assert isinstance(info.value.__cause__, sa.exc.ProgrammingError)
    assert not is_transient(info.value.__cause__)
    assert calls == [1]


def test_read_runs_without_a_transaction_and_leaves_the_connection_transactional(
    database: Database,
) -> None:
    def xids(conn: sa.Connection) -> tuple[object, object]:
        first = conn.execute(sa.text("SELECT txid_current()")).scalar()  # assigns an id
        return first, conn.execute(sa.text("SELECT pg_current_xact_id_if_assigned()")).scalar()

    # each statement of a read commits on its own: the second runs in a new transaction
    first, second = database.read(xids)
    assert first is not None
    assert second is None
    # in a transaction both statements share one
    first, second = database.transaction(xids)
    assert str(first) == str(second)

    def write(conn: sa.Connection) -> None:
        conn.execute(sa.text("INSERT INTO variable (key, val) VALUES ('tx', 'x')"))
        raise RuntimeError("roll back")

    # the pooled connection goes back to transactions: a failed write leaves nothing behind
    with pytest.raises(RuntimeError):
        database.transaction(write)
    assert (
        database.read(lambda c: c.execute(sa.text("SELECT count(*) FROM variable")).scalar()) == 0
    )


def test_a_backend_killed_while_pooled_is_replaced_without_pre_ping(database: Database) -> None:
    pid = database.read(lambda c: c.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())
    other = sa.create_engine(database.url, poolclass=sa.pool.NullPool)
    with other.connect() as killer:
        killer.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        killer.commit()
    other.dispose()
    backend = database.transaction(
        lambda c: c.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    )
    assert backend != pid


def test_transient_failures_are_retried_up_to_the_limit_with_growing_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first try runs outside the retry loop; the loop then goes on counting: the number of
    tries, the waits (exponential from 50 ms, capped) and the logged attempt numbers are those of
    one loop of retry_max_attempts."""
    from tradewind.errors import RetryableError, StoreUnavailableError
    from tradewind_cluster.store import database as module
    from tradewind_cluster.store.database import DatabaseOptions

    db = Database(  # never connects: the work fails before touching the connection
        "postgresql+psycopg2://nobody@/none?host=/nonexistent",
        DatabaseOptions(retry_max_attempts=6, retry_max_wait_s=0.3),
    )
    bounds: list[tuple[int, float]] = []
    logged: list[int] = []

    def backoff(attempt: int, max_wait_s: float) -> float:  # the bound, and no sleeping
        bounds.append((attempt, min(max_wait_s, 0.05 * 2 ** (attempt - 1))))
        return 0.0

    monkeypatch.setattr(module, "_backoff_s", backoff)
    monkeypatch.setattr(module, "_log_failure", lambda attempt, exc: logged.append(attempt))
    monkeypatch.setattr(type(db), "_once", staticmethod(lambda engine, fn, autocommit: fn(None)))
    tries: list[int] = []

    def work(conn: object) -> None:
        tries.append(1)
        raise RetryableError("the store went away")

    with pytest.raises((RetryableError, StoreUnavailableError)):
        db.read(work)
    assert len(tries) == 6
    assert logged == [1, 2, 3, 4, 5]
    # (tenacity also works out a wait after the last try, then stops without sleeping)
    assert bounds[:5] == [(1, 0.05), (2, 0.1), (3, 0.2), (4, 0.3), (5, 0.3)]
    db.dispose()


def test_an_exhausted_pool_is_store_unavailable_and_keeps_its_connections(db_url: str) -> None:
    """Every pooled connection busy: the call fails within pool_timeout_s as "store
    unavailable" (the caller's next pass tries again), not as an unexpected error. The
    autocommit pool keeps the connections it opened (no session opened and closed per burst)."""
    db = Database(db_url, DatabaseOptions(pool_size=1, max_overflow=2, pool_timeout_s=0.2))
    try:
        pid = lambda c: c.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()  # noqa: E731
        held, release = threading.Barrier(3), threading.Event()

        def hold(conn: sa.Connection) -> int:
            held.wait(5)
            release.wait(5)
            return pid(conn)

        holders = ThreadPoolExecutor(2)
        futures = [holders.submit(db.read, hold) for _ in range(2)]  # 1 + its overflow share 1
        held.wait(5)
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="pool"):
            db.read(pid)
        assert time.monotonic() - started < 5
        release.set()
        first = {f.result(5) for f in futures}
        holders.shutdown()
        assert len(first) == 2
        # both stay pooled (an overflow connection would have been closed on its return)
        assert db.autocommit_engine.pool.checkedin() == 2
        assert {db.read(pid) for _ in range(4)} <= first
    finally:
        db.dispose()
