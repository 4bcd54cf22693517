"""Branching with a join: only the chosen branch runs, the join still runs after it."""

from datetime import datetime

from tradewind import DAG, BranchPythonOperator, EmptyOperator


def choose(logical_date: datetime, **_: object) -> str:
    """Follow one branch or the other; the context passes logical_date by name."""
    return "even_day" if logical_date.day % 2 == 0 else "odd_day"


with DAG(
    "example_branching",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    tags=["example"],
) as dag:
    branch = BranchPythonOperator(task_id="branch", python_callable=choose)
    even = EmptyOperator(task_id="even_day")
    odd = EmptyOperator(task_id="odd_day")
    join = EmptyOperator(task_id="join", trigger_rule="none_failed_min_one_success")
    branch >> [even, odd] >> join
