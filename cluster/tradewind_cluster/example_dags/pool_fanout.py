"""A fan-out limited by a pool: eight tasks share `example_pool` (2 slots), then a join."""

from datetime import datetime

from tradewind import DAG, BashOperator

with DAG(
    "example_pool_fanout",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    tags=["example"],
) as dag:
    start = BashOperator(task_id="start", bash_command="echo start")
    parts = [
        BashOperator(
            task_id=f"part_{i}",
            bash_command="sleep 0.5",
            pool="example_pool",
            priority_weight=8 - i,
        )
        for i in range(8)
    ]
    join = BashOperator(task_id="join", bash_command="echo joined")
    start >> parts >> join
