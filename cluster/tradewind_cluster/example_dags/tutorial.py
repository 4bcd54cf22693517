"""The Airflow tutorial's shape: bash tasks, retries, a templated command."""

from datetime import datetime, timedelta

from tradewind import DAG, BashOperator

with DAG(
    "tutorial",
    description="A simple tutorial DAG",
    schedule=timedelta(days=1),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=5)},
) as dag:
    print_date = BashOperator(task_id="print_date", bash_command="date")
    sleep = BashOperator(task_id="sleep", bash_command="sleep 1", retries=3)
    templated = BashOperator(
        task_id="templated",
        bash_command=(
            "{% for i in range(3) %}"
            "echo 'ds={{ ds }} shifted={{ macros.ds_add(ds, 7) }}'; "
            "{% endfor %}"
        ),
    )
    print_date >> [sleep, templated]
