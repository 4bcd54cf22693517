"""Task logs on a real PostgreSQL: chunks append idempotently per (ti, try, seq), only under an
attempt token that exists and belongs to that try, and read back in order per try."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from tests.support.factories import insert_dag, insert_run, insert_ti
from tradewind.scheduling.admission import admit
from tradewind_cluster.store import task_logs
from tradewind_cluster.store.attempts import requeue_attempt
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.queueing import QueuedAttempt, queue_pool
from tradewind_cluster.store.task_logs import LogChunkIn

pytestmark = pytest.mark.store
NOW = datetime(2026, 3, 1, tzinfo=UTC)


def queued(db: Database) -> QueuedAttempt:
    def setup(conn: sa.Connection) -> None:
        insert_dag(conn, "d")
        insert_ti(conn, insert_run(conn, "d"), "t", state="scheduled")

    db.transaction(setup)
    outcome = db.transaction(
        lambda c: queue_pool(c, "default_pool", member_id="m", decide=admit, now=NOW)
    )
    assert outcome is not None
    return outcome.queued[0]


def chunk(
    q: QueuedAttempt, seq: int, data: str, *, try_number: int = 1, token: int | None = None
) -> LogChunkIn:
    return LogChunkIn(
        ti_id=q.ti_id,
        token=q.token if token is None else token,
        try_number=try_number,
        seq=seq,
        data=data,
    )


def test_chunks_append_once_and_read_back_in_order(database: Database) -> None:
    q = queued(database)
    first = database.transaction(
        lambda c: task_logs.append_chunks(c, [chunk(q, 1, "b\n"), chunk(q, 0, "a\n")])
    )
    assert first.stored == 2
    # The worker resends a batch it is unsure of, plus one new chunk.
    again = database.transaction(
        lambda c: task_logs.append_chunks(c, [chunk(q, 1, "b\n"), chunk(q, 2, "c\n")])
    )
    assert (again.stored, again.dropped) == (2, ())
    assert database.read(lambda c: task_logs.read_log_text(c, q.ti_id, 1)) == "a\nb\nc\n"
    tail = database.read(lambda c: task_logs.read_log(c, q.ti_id, 1, after_seq=0))
    assert [(r.seq, r.data) for r in tail] == [(1, "b\n"), (2, "c\n")]
    with database.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM task_log")).scalar_one() == 3


def test_chunks_of_unknown_attempts_or_the_wrong_try_are_dropped(database: Database) -> None:
    q = queued(database)
    result = database.transaction(
        lambda c: task_logs.append_chunks(
            c,
            [
                chunk(q, 0, "kept"),
                chunk(q, 1, "wrong try", try_number=2),
                chunk(q, 2, "wrong token", token=q.token + 5),
                chunk(q, -1, "negative"),
            ],
        )
    )
    assert result.stored == 1
    assert result.dropped == (
        f"attempt {q.ti_id}/{q.token} is try 1, not try 2",
        f"unknown attempt {q.ti_id}/{q.token + 5}",
        f"attempt {q.ti_id}/{q.token}: negative sequence number -1",
    )
    assert database.read(lambda c: task_logs.read_log_text(c, q.ti_id, 1)) == "kept"


def test_a_superseded_attempt_still_ships_the_log_of_its_own_try(database: Database) -> None:
    q = queued(database)
    database.transaction(lambda c: requeue_attempt(c, q.ti_id, q.token, reason="t", now=NOW))
    again = database.transaction(
        lambda c: queue_pool(c, "default_pool", member_id="m", decide=admit, now=NOW)
    )
    assert again is not None
    new = again.queued[0]
    old_chunk = chunk(q, 0, "old attempt")
    new_chunk = chunk(new, 1, "new attempt")
    stored = database.transaction(lambda c: task_logs.append_chunks(c, [old_chunk, new_chunk]))
    assert stored.stored == 2
    assert (
        database.read(lambda c: task_logs.read_log_text(c, q.ti_id, 1)) == "old attemptnew attempt"
    )


def test_tries_are_listed_and_nul_characters_do_not_lose_a_log(database: Database) -> None:
    q = queued(database)
    with database.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO task_attempt (ti_id, dag_id, run_id, task_id, try_number, token, "
                "state) VALUES (:ti, 'd', 'r', 't', 2, :tok, 'running')"
            ),
            {"ti": q.ti_id, "tok": q.token + 1},
        )
    database.transaction(
        lambda c: task_logs.append_chunks(
            c, [chunk(q, 0, "one\x00"), chunk(q, 0, "two", try_number=2, token=q.token + 1)]
        )
    )
    assert database.read(lambda c: task_logs.list_tries(c, q.ti_id)) == [1, 2]
    assert database.read(lambda c: task_logs.read_log_text(c, q.ti_id, 1)) == "one\ufffd"
    assert database.read(lambda c: task_logs.read_log_text(c, q.ti_id, 2)) == "two"
    assert database.read(lambda c: task_logs.list_tries(c, 999_999)) == []
