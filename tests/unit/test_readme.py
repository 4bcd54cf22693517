"""The README's first DAG runs exactly as written and prints what the README says."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_dag_example_runs_and_orders_as_documented(tmp_path: Path) -> None:
    text = README.read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S)
    assert code is not None
    path = tmp_path / "hello.py"
    path.write_text(code.group(1))
    dag = runpy.run_path(str(path))["dag"]
    shown = re.search(r"# (\['extract'.*\])", text)
    assert shown is not None
    assert str([t.task_id for t in dag.topological_sort()]) == shown.group(1)
