"""Opening the metadata database from settings: the configured URL, or the embedded server."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from tradewind_cluster.config import Settings, pgdata_dir
from tradewind_cluster.embedded import EmbeddedPostgres
from tradewind_cluster.store.database import Database, DatabaseOptions

__all__ = ["database_options", "open_database"]

log = logging.getLogger(__name__)


def database_options(settings: Settings, application_name: str = "tradewind") -> DatabaseOptions:
    """Engine options from the `database` section."""
    d = settings.database
    return DatabaseOptions(
        pool_size=d.pool_size,
        max_overflow=d.max_overflow,
        pool_recycle_s=d.pool_recycle_s,
        pool_timeout_s=d.pool_timeout_s,
        connect_timeout_s=d.connect_timeout_s,
        statement_timeout_ms=d.statement_timeout_ms,
        retry_max_attempts=d.retry_max_attempts,
        retry_max_wait_s=d.retry_max_wait_s,
        application_name=application_name,
        pool_pre_ping=d.pool_pre_ping,
        prepared_statements=d.prepared_statements,
    )


@contextmanager
def open_database(settings: Settings, application_name: str = "tradewind") -> Iterator[Database]:
    """Yield a Database on the configured URL, starting (or joining) the embedded server when
    none is configured; the embedded server is left when the block exits."""
    embedded: EmbeddedPostgres | None = None
    if settings.database.url is None:
        embedded = EmbeddedPostgres(pgdata_dir(settings))
        url = embedded.start()
    else:
        url = settings.database.url.get_secret_value()
    db = Database(url, database_options(settings, application_name))
    try:
        yield db
    finally:
        db.dispose()
        if embedded is not None:
            embedded.stop()
