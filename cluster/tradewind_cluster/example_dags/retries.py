"""A task that fails twice and succeeds on its third try (retries with a short delay)."""

from datetime import datetime, timedelta

from tradewind import DAG, BashOperator

with DAG(
    "example_retries",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    tags=["example"],
) as dag:
    BashOperator(
        task_id="flaky",
        # Fails on tries 1 and 2, succeeds on try 3: the try number is in the context.
        bash_command="echo 'try {{ ti.try_number }}'; [ {{ ti.try_number }} -ge 3 ]",
        retries=3,
        retry_delay=timedelta(seconds=1),
    )
