"""Tasks that no waiting will help (missing pool, queue no live worker serves) are explained in
the log, once per cause rather than once per loop."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from tests.support.dags import register, trigger
from tradewind.dag import DAG
from tradewind.operators.bash import BashOperator
from tradewind_cluster.scheduler.context import SchedulerContext, SchedulerOptions
from tradewind_cluster.scheduler.local_dispatch import LocalDispatcher
from tradewind_cluster.scheduler.loop import SchedulerLoop
from tradewind_cluster.scheduler.reports import ReportHandler
from tradewind_cluster.store import members
from tradewind_cluster.store.database import Database

pytestmark = pytest.mark.cluster


def test_missing_pool_and_unserved_queue_are_logged_once(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    database.transaction(
        lambda c: members.register_member(
            c, member_id="r1", name="r1", hostname="h", pid=1, version="t"
        )
    )
    ctx = SchedulerContext(db=database, member_id="r1", options=SchedulerOptions(idle_sleep_s=0.05))
    dispatcher = LocalDispatcher(ReportHandler(ctx), slots=2)
    loop = SchedulerLoop(ctx, dispatcher)
    loop.queuer._queue_open = lambda: {"default": 4}  # only the default queue has workers
    with DAG("starved", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        BashOperator(task_id="no_pool", bash_command="true", pool="nope")
        BashOperator(task_id="gpu_only", bash_command="true", queue="gpu")
    now = datetime.now(UTC)
    trigger(database, register(database, dag, now=now), now - timedelta(minutes=1))
    try:
        with caplog.at_level(logging.WARNING, logger="tradewind_cluster.scheduler.queuer"):
            for _ in range(5):
                loop.run_once()
    finally:
        dispatcher.close()
        loop.close()
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("starved.no_pool waits: pool 'nope' does not exist") == 1, messages
    assert messages.count("starved.gpu_only waits: no live worker serves queue 'gpu'") == 1, (
        messages
    )
