"""Catchup on a short schedule: a run for every five-minute interval of the last hour."""

from datetime import UTC, datetime, timedelta

from tradewind import DAG, BashOperator

_START = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)

with DAG(
    "example_catchup",
    schedule="*/5 * * * *",
    start_date=_START.replace(minute=_START.minute - _START.minute % 5),
    catchup=True,
    max_active_runs=3,
    tags=["example"],
) as dag:
    BashOperator(
        task_id="interval", bash_command="echo {{ data_interval_start }} - {{ data_interval_end }}"
    )
