"""What runs inside the parse subprocess: import one DAG file under a unique module name,
collect its DAGs, serialize them, and print one JSON document on stdout:
`{"dags": [spec dicts], "error": null | "traceback text", "file_hash": "<sha256 hex>"}`."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

from tradewind.dag import DAG, set_catchup_by_default
from tradewind.serialization import dag_to_spec, spec_to_dict
from tradewind.timezones import set_default_timezone

__all__ = ["FileParse", "load_dag_file", "main", "module_name_for", "parse_file"]

_MODULE_PREFIX = "tradewind_dagfile_"


@dataclass(frozen=True, slots=True, kw_only=True)
class FileParse:
    """What one DAG file yielded: serialized DAGs, and the errors of the file, if any."""

    file_hash: str
    dags: tuple[dict[str, Any], ...] = ()
    errors: tuple[str, ...] = ()

    def to_json(self) -> str:
        """The document the subprocess prints."""
        error = "\n".join(self.errors) if self.errors else None
        return json.dumps({"dags": list(self.dags), "error": error, "file_hash": self.file_hash})


@dataclass(slots=True)
class _Registry:
    """DAGs entered as context managers while the file ran (they need not be module globals)."""

    dags: list[DAG] = field(default_factory=list)


def module_name_for(path: str) -> str:
    """A module name unique to the file's path, so two `dag.py` files never collide."""
    digest = hashlib.sha1(path.encode("utf-8"), usedforsecurity=False).hexdigest()
    stem = "".join(c if c.isalnum() else "_" for c in Path(path).stem)
    return f"{_MODULE_PREFIX}{digest}_{stem}"


@contextmanager
def _registering(registry: _Registry) -> Iterator[None]:
    # Airflow 2 auto-registers DAGs used in `with` blocks; tradewind.dag keeps no registry, so
    # the parse process (which runs nothing else) wraps DAG.__enter__ while the file executes.
    original = DAG.__enter__

    def enter(self: DAG) -> DAG:
        registry.dags.append(self)
        return original(self)

    DAG.__enter__ = enter  # type: ignore[method-assign]
    try:
        yield
    finally:
        DAG.__enter__ = original  # type: ignore[method-assign]


def load_dag_file(path: str, source: bytes) -> tuple[ModuleType, list[DAG]]:
    """Execute `source` (the bytes of `path`) as a fresh module; return it and its DAGs, module
    globals first, then DAGs only seen in `with` blocks, each once. The file's errors propagate."""
    name = module_name_for(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None:
        raise ImportError(f"cannot build an import spec for {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    registry = _Registry()
    # Compiling the bytes that were hashed, not re-reading the file, makes the hash exact.
    code = compile(source, path, "exec", dont_inherit=True)
    with _registering(registry):
        exec(code, module.__dict__)
    found: list[DAG] = []
    for candidate in [*vars(module).values(), *registry.dags]:
        if isinstance(candidate, DAG) and not any(candidate is d for d in found):
            found.append(candidate)
    return module, found


def _user_traceback(exc: BaseException, path: str) -> str:
    """The traceback from the DAG file's first frame on (the runner's frames say nothing)."""
    tb: TracebackType | None = exc.__traceback__
    start = tb
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == path:
            start = tb
            break
        tb = tb.tb_next
    else:
        start = None  # e.g. a SyntaxError: the message carries the file and line
    return "".join(traceback.format_exception(type(exc), exc, start)).rstrip()


def _serialize(dags: Sequence[DAG], path: str) -> tuple[list[dict[str, Any]], list[str]]:
    serialized: list[dict[str, Any]] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    for dag in dags:
        seen[dag.dag_id] = seen.get(dag.dag_id, 0) + 1
    for dag_id, count in seen.items():
        if count > 1:
            errors.append(
                f"DagDefinitionError: DAG id {dag_id!r} is defined {count} times in {path}; "
                "each DAG of a file needs its own dag_id"
            )
    for dag in dags:
        if seen[dag.dag_id] > 1:
            continue
        # As Airflow does, a DAG belongs to the file it was found in, not where DAG() was called.
        dag.fileloc = path
        try:
            serialized.append(spec_to_dict(dag_to_spec(dag)))
        except Exception as exc:  # noqa: BLE001  # one bad DAG must not hide the file's others
            errors.append(_user_traceback(exc, path))
    return serialized, errors


def parse_file(path: str) -> FileParse:
    """Import and serialize one DAG file; any failure becomes an error of the file."""
    try:
        source = Path(path).read_bytes()
    except OSError as exc:
        return FileParse(file_hash="", errors=(f"{type(exc).__name__}: {exc}",))
    file_hash = hashlib.sha256(source).hexdigest()
    try:
        _module, dags = load_dag_file(path, source)
    except (Exception, SystemExit) as exc:  # noqa: BLE001  # the file's code is untrusted
        return FileParse(file_hash=file_hash, errors=(_user_traceback(exc, path),))
    serialized, errors = _serialize(dags, path)
    return FileParse(file_hash=file_hash, dags=tuple(serialized), errors=tuple(errors))


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Parse one Tradewind DAG file (internal).")
    parser.add_argument("path", help="absolute path of the DAG file")
    parser.add_argument("--dags-folder", default=None, help="put on sys.path, as Airflow does")
    parser.add_argument("--default-timezone", default="UTC", help="zone of naive dates")
    parser.add_argument(
        "--catchup-by-default",
        choices=("true", "false"),
        default="true",
        help="catchup of DAGs that do not set it",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m tradewind_cluster.parsing.runner PATH`."""
    args = _arguments(argv)
    set_default_timezone(args.default_timezone)
    set_catchup_by_default(args.catchup_by_default == "true")
    if args.dags_folder:
        sys.path.insert(0, args.dags_folder)
    # Whatever the DAG file prints (even through fd 1 directly) goes to stderr; stdout
    # carries only the result document.
    sys.stdout.flush()
    result_fd = os.dup(1)
    os.dup2(2, 1)
    result = parse_file(args.path)
    sys.stdout.flush()
    with os.fdopen(result_fd, "w", encoding="utf-8") as out:
        out.write(result.to_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
