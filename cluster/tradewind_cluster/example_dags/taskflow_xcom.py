"""XComs through TaskFlow: each task's return value feeds the next, across workers."""

from datetime import datetime

from tradewind import DAG, task

with DAG(
    "example_taskflow",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    tags=["example"],
) as dag:

    @task
    def extract() -> dict[str, int]:
        return {"a": 1, "b": 2, "c": 3}

    @task
    def transform(values: dict[str, int]) -> int:
        return sum(values.values())

    @task
    def load(total: int) -> None:
        print(f"total is {total}")
        if total != 6:
            raise ValueError(f"expected 6, got {total}")

    load(transform(extract()))
