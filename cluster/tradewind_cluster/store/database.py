"""Connections to the metadata database: the engine, and transactions retried as a whole.

A transient failure (server gone, failover, serialization failure, deadlock) rolls the whole
transaction back and runs the function again with jittered, capped backoff; nothing is ever
half-applied, so the function must do all its writes through the connection it is given."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
)

from tradewind.errors import RetryableError, SchemaError, StoreUnavailableError
from tradewind_cluster.store.prepared import PREPARE_OPTION

__all__ = ["Connection", "Database", "DatabaseOptions", "is_transient", "unavailable_as_error"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# SQLSTATEs worth retrying: serialization failure, deadlock, lock timeout, admin shutdown,
# crash shutdown, cannot connect now, connection exceptions (class 08).
# Undefined table / column: the schema is missing or older than this code.
_SCHEMA_SQLSTATES = {"42P01", "42703"}
_TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03", "57P01", "57P02", "57P03"}


@dataclass(frozen=True, slots=True, kw_only=True)
class DatabaseOptions:
    """Engine and retry settings (filled from the `database` config section)."""

    pool_size: int = 5
    max_overflow: int = 10
    pool_recycle_s: int = 1800
    pool_timeout_s: float = 30.0
    connect_timeout_s: int = 5
    statement_timeout_ms: int = 30_000
    retry_max_attempts: int = 10
    retry_max_wait_s: float = 5.0
    application_name: str = "tradewind"
    pool_pre_ping: bool = False
    prepared_statements: bool = True  # see store/prepared.py


def is_transient(exc: BaseException) -> bool:
    """True for failures that a retry of the whole transaction may cure."""
    if isinstance(exc, RetryableError):
        return True
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        code = getattr(exc.orig, "pgcode", None)
        if code in _TRANSIENT_SQLSTATES or (code or "").startswith("08"):
            return True
        return isinstance(exc, sa.exc.OperationalError) and code is None
    return False


def _log_failure(attempt: int, exc: BaseException | None) -> None:
    log.warning(
        "database call failed (attempt %d), retrying: %s",
        attempt,
        type(exc).__name__ if exc else "?",
        extra={"event": "db_retry", "attempt": attempt},
    )


def _backoff_s(attempt: int, max_wait_s: float) -> float:
    """The wait after failed attempt number `attempt`: random, exponential from 50 ms, capped
    (tenacity's wait_random_exponential(multiplier=0.05, max=max_wait_s))."""
    return random.uniform(0, min(max_wait_s, 0.05 * 2 ** (attempt - 1)))


def _describe(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text_ = str(orig or exc).strip().splitlines()
    return text_[0] if text_ else type(exc).__name__


@contextmanager
def unavailable_as_error() -> Iterator[None]:
    """Turn a connection failure that survived the retries into StoreUnavailableError, and a
    missing table into SchemaError."""
    try:
        yield
    except sa.exc.TimeoutError as exc:
        # Every pooled connection of this process is busy: the store may be fine, but this
        # process cannot reach it now. Not retried here: each try would wait the whole
        # pool_timeout again; the caller's next pass (or the worker's resend) tries again.
        raise StoreUnavailableError(
            f"no free metadata database connection in this process's pool ({exc}); raise "
            "database.pool_size or database.max_overflow, or lower the load on this process"
        ) from exc
    except sa.exc.DBAPIError as exc:
        if is_transient(exc):
            raise StoreUnavailableError(f"metadata database unreachable: {_describe(exc)}") from exc
        if getattr(exc.orig, "pgcode", None) in _SCHEMA_SQLSTATES:
            raise SchemaError(
                f"the metadata database schema is missing or out of date ({_describe(exc)}): "
                "run `tradewind db upgrade`"
            ) from exc
        raise


def _overflow_share(opts: DatabaseOptions) -> tuple[int, int]:
    """max_overflow split between the transactional and the autocommit pool (-1: no limit)."""
    overflow = opts.max_overflow
    return (overflow, overflow) if overflow < 0 else (overflow - overflow // 2, overflow // 2)


def _autocommit_pool(opts: DatabaseOptions) -> dict[str, int]:
    """The autocommit pool keeps pool_size plus its overflow share: no overflow to close."""
    share = _overflow_share(opts)[1]
    if opts.pool_size == 0 or share < 0:  # no limit either way: as configured
        return {"pool_size": opts.pool_size, "max_overflow": share}
    return {"pool_size": opts.pool_size + share, "max_overflow": 0}


class Database:
    """One engine per process; `transaction(fn)` and `read(fn)` run fn(connection) with retries."""

    def __init__(self, url: str, options: DatabaseOptions | None = None) -> None:
        self.options = options or DatabaseOptions()
        self.url = url
        opts = self.options
        common = {
            "execution_options": {PREPARE_OPTION: opts.prepared_statements},
            "pool_pre_ping": opts.pool_pre_ping,
            "pool_recycle": opts.pool_recycle_s,
            "pool_timeout": opts.pool_timeout_s,
            "connect_args": {
                "connect_timeout": opts.connect_timeout_s,
                "application_name": opts.application_name,
                "options": f"-c statement_timeout={opts.statement_timeout_ms} -c timezone=UTC",
            },
        }
        # Reads and single statements get connections of their own that stay in autocommit:
        # switching a pooled connection in and out of autocommit costs a SET and a BEGIN
        # ISOLATION LEVEL each time. The two share max_overflow, so a process holds at most
        # 2 * pool_size + max_overflow. The autocommit pool keeps its share of the overflow open
        # once opened: concurrent reports (up to 4 per worker) go past pool_size in every burst,
        # and an overflow connection is closed when it is returned, so each burst opened and
        # closed PostgreSQL sessions (a fork and a catalog warm-up on the server each time).
        self.engine: Engine = sa.create_engine(
            url, pool_size=opts.pool_size, max_overflow=_overflow_share(opts)[0], **common
        )
        self.autocommit_engine: Engine = sa.create_engine(
            url, isolation_level="AUTOCOMMIT", **_autocommit_pool(opts), **common
        )

    def _retrying(self, attempts: int | None = None, *, already: int = 0) -> Retrying:
        """The retry loop for what is left of `attempts` after `already` failed ones: its
        waits and log lines go on counting from there."""
        max_wait = self.options.retry_max_wait_s

        def wait(state: RetryCallState) -> float:
            return _backoff_s(state.attempt_number + already, max_wait)

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            _log_failure(state.attempt_number + already, exc)

        return Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt((attempts or self.options.retry_max_attempts) - already),
            wait=wait,
            before_sleep=before_sleep,
            reraise=True,
        )

    def transaction(self, fn: Callable[[Connection], T], *, attempts: int | None = None) -> T:
        """Run fn in one read-write transaction, retrying the whole of it on transient errors
        (up to `attempts` times; the configured retry_max_attempts by default)."""
        return self._run(fn, attempts=attempts, autocommit=False)

    def read(self, fn: Callable[[Connection], T]) -> T:
        """Run fn's reads with the same retries, each statement on its own (autocommit): under
        READ COMMITTED a transaction gives several statements no common snapshot anyway, and
        this saves the BEGIN and COMMIT round trips. fn must not write (nothing would roll it
        back): reads that must see one snapshot, or that lock, belong in transaction()."""
        return self._run(fn, attempts=None, autocommit=True)

    def statement(self, fn: Callable[[Connection], T]) -> T:
        """Run fn, which issues exactly one statement, with the same retries and no BEGIN or
        COMMIT: PostgreSQL applies a single statement (CTEs and all) atomically on its own.
        One round trip instead of three for the hot path's writes."""
        return self._run(fn, attempts=None, autocommit=True)

    def _run(self, fn: Callable[[Connection], T], *, attempts: int | None, autocommit: bool) -> T:
        engine = self.autocommit_engine if autocommit else self.engine
        with unavailable_as_error():
            # The first try runs without tenacity's bookkeeping (every store call of the hot
            # path goes through here); a transient failure hands over to the retry loop.
            try:
                return self._once(engine, fn, autocommit)
            except Exception as exc:
                if not is_transient(exc) or (attempts or self.options.retry_max_attempts) < 2:
                    raise
                _log_failure(1, exc)
                time.sleep(_backoff_s(1, self.options.retry_max_wait_s))
            for attempt in self._retrying(attempts, already=1):
                with attempt:
                    return self._once(engine, fn, autocommit)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _once(engine: Engine, fn: Callable[[Connection], T], autocommit: bool) -> T:
        with engine.connect() as conn:
            if autocommit:
                return fn(conn)
            with conn.begin():
                return fn(conn)

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A raw connection with no retry, for tests and for LISTEN."""
        with self.engine.connect() as conn:
            yield conn

    def dispose(self) -> None:
        """Close every pooled connection (at shutdown, or in a child after fork)."""
        self.engine.dispose()
        self.autocommit_engine.dispose()
