"""DAG-file parsing: listing the dags folder, the parse subprocess (runner), and the sharded
parse step of the scheduler loop (processor)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tradewind_cluster.parsing.discovery import (
        IGNORE_FILE_NAME,
        list_dag_files,
        might_contain_dag,
    )
    from tradewind_cluster.parsing.processor import (
        DagFileProcessor,
        DiscoveryReport,
        FileOutcome,
        FileReport,
        ParseReport,
        ProcessorOptions,
        decode_runner_output,
    )
    from tradewind_cluster.parsing.runner import (
        FileParse,
        load_dag_file,
        module_name_for,
        parse_file,
    )

__all__ = [
    "IGNORE_FILE_NAME",
    "DagFileProcessor",
    "DiscoveryReport",
    "FileOutcome",
    "FileParse",
    "FileReport",
    "ParseReport",
    "ProcessorOptions",
    "decode_runner_output",
    "list_dag_files",
    "load_dag_file",
    "might_contain_dag",
    "module_name_for",
    "parse_file",
]

# Loaded on first use: the parse subprocess imports this package on its way to the runner
# and must not pay for sqlalchemy (the processor's store) once per DAG file.
_HOME = {
    "IGNORE_FILE_NAME": "discovery",
    "list_dag_files": "discovery",
    "might_contain_dag": "discovery",
    "DagFileProcessor": "processor",
    "DiscoveryReport": "processor",
    "FileOutcome": "processor",
    "FileReport": "processor",
    "ParseReport": "processor",
    "ProcessorOptions": "processor",
    "decode_runner_output": "processor",
    "FileParse": "runner",
    "load_dag_file": "runner",
    "module_name_for": "runner",
    "parse_file": "runner",
}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
