"""A DAG for the compose cluster: tasks on both worker queues (default and spark), so each
group of workers in compose.yaml gets work. Mounted read-only into schedulers and workers."""

from __future__ import annotations

from datetime import datetime, timedelta

from tradewind import DAG, BashOperator, task

__all__ = ["dag"]

with DAG(
    "compose_queues",
    schedule=timedelta(minutes=5),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
    tags=["compose"],
) as dag:
    extract = BashOperator(task_id="extract", bash_command="echo extracting {{ ds }}")
    crunch = BashOperator(
        task_id="crunch",
        bash_command="echo crunching on $(hostname)",
        queue="spark",
    )

    @task(queue="default")
    def publish() -> str:
        return "published"

    extract >> crunch >> publish()
