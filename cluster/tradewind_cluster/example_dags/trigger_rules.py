"""Trigger rules: clean-up that always runs, an alert that runs only when something failed."""

from datetime import datetime

from tradewind import DAG, BashOperator

with DAG(
    "example_trigger_rules",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    tags=["example"],
) as dag:
    work = BashOperator(task_id="work", bash_command="echo working")
    flaky = BashOperator(task_id="maybe_fail", bash_command="exit 0")
    cleanup = BashOperator(task_id="cleanup", bash_command="echo cleanup", trigger_rule="all_done")
    alert = BashOperator(task_id="alert", bash_command="echo alert", trigger_rule="one_failed")
    report = BashOperator(task_id="report", bash_command="echo report", trigger_rule="none_failed")
    [work, flaky] >> cleanup
    [work, flaky] >> alert
    cleanup >> report
