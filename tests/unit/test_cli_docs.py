"""docs/cli.md and docs/configuration.md are generated from the command tree and the settings
tree: this fails when either file is stale (a command, flag or setting changed without
running `python -m tradewind_cluster.cli.docs`), and checks what the generator covers."""

from __future__ import annotations

import pytest

from tradewind_cluster.cli.docs import (
    DOCS_DIR,
    cli_markdown,
    configuration_markdown,
    generated_docs,
)
from tradewind_cluster.cli.main import build_parser
from tradewind_cluster.config import SECTIONS


@pytest.mark.parametrize("name", ["cli.md", "configuration.md"])
def test_generated_docs_are_current(name: str) -> None:
    expected = generated_docs()[name]
    current = (DOCS_DIR / name).read_text(encoding="utf-8")
    assert current == expected, (
        f"docs/{name} is stale: run `python -m tradewind_cluster.cli.docs` and commit it"
    )


def test_every_command_and_flag_is_documented() -> None:
    text = cli_markdown(build_parser())
    for command in (
        "dags list",
        "dags list-import-errors",
        "dags show",
        "dags pause",
        "dags unpause",
        "dags trigger",
        "dags list-runs",
        "dags backfill",
        "dags test",
        "tasks list",
        "tasks states-for-dag-run",
        "tasks clear",
        "tasks mark",
        "tasks logs",
        "tasks test",
        "tasks render",
        "pools list",
        "pools set",
        "pools delete",
        "variables get",
        "variables import",
        "variables export",
        "cluster status",
    ):
        assert f"`tradewind {command}`" in text
    usage = "tradewind dags trigger DAG_ID [-r RUN_ID] [-c CONF] [-e LOGICAL_DATE]"
    assert usage in text
    assert "tradewind tasks mark DAG_ID TASK_ID RUN_ID --state {success,failed}" in text


def test_every_setting_is_documented_with_its_environment_variable() -> None:
    text = configuration_markdown()
    for section, model in SECTIONS.items():
        assert f"## `[{section}]`" in text
        for key in model.model_fields:
            assert f"`TRADEWIND__{section.upper()}__{key.upper()}`" in text
    assert "| `zombie_threshold_s` | number (> 0) | `8.0` |" in text
    assert "| `executor` | one of `workers`, `local` | `workers` |" in text
    assert "| `url` | secret text, optional | *(none)* |" in text
