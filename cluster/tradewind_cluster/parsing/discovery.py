"""Listing the DAG files of the dags folder: `*.py` files found recursively, minus those that
`.tradewindignore` files (gitignore syntax, at any level) exclude, minus, in safe mode, files
that do not mention both "tradewind" and "dag" (Airflow's might_contain_dag heuristic)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pathspec

__all__ = ["IGNORE_FILE_NAME", "list_dag_files", "might_contain_dag"]

log = logging.getLogger(__name__)

IGNORE_FILE_NAME = ".tradewindignore"
_SAFE_MODE_WORDS = (b"tradewind", b"dag")
_COMMENT = re.compile(r"\s*#.*")


@dataclass(frozen=True, slots=True, kw_only=True)
class _IgnoreRules:
    """The patterns of one ignore file; they match paths relative to the file's folder."""

    base: Path
    spec: pathspec.GitIgnoreSpec


def might_contain_dag(path: Path, *, safe_mode: bool) -> bool:
    """In safe mode, whether the file's bytes mention both "tradewind" and "dag" (any case)."""
    if not safe_mode:
        return True
    try:
        content = path.read_bytes().lower()
    except OSError as exc:
        # A file deleted or unreadable between listing and reading is simply not a DAG file now.
        log.warning("cannot read %s: %s", path, exc, extra={"event": "dag_file_unreadable"})
        return False
    return all(word in content for word in _SAFE_MODE_WORDS)


def _read_rules(folder: Path) -> _IgnoreRules | None:
    ignore_file = folder / IGNORE_FILE_NAME
    try:
        lines = ignore_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read %s: %s", ignore_file, exc, extra={"event": "ignore_file_error"})
        return None
    # As Airflow reads .airflowignore: a "#" starts a comment anywhere on the line.
    patterns = [_COMMENT.sub("", line) for line in lines]
    return _IgnoreRules(base=folder, spec=pathspec.GitIgnoreSpec.from_lines(patterns))


def _is_ignored(path: Path, rules: Sequence[_IgnoreRules], *, is_dir: bool) -> bool:
    # Outer files first, so that a deeper file's pattern (or negation) has the last word.
    ignored = False
    for rule in rules:
        relative = path.relative_to(rule.base).as_posix() + ("/" if is_dir else "")
        verdict = rule.spec.check_file(relative).include
        if verdict is not None:
            ignored = verdict
    return ignored


def _walk(root: Path) -> Iterator[tuple[Path, list[str], list[str], tuple[_IgnoreRules, ...]]]:
    """os.walk (following symlinks, each real folder once) with the ignore rules in force."""
    rules_of: dict[Path, tuple[_IgnoreRules, ...]] = {}
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        folder = Path(dirpath)
        real = os.path.realpath(folder)
        if real in seen:
            log.warning("symlink loop at %s skipped", folder, extra={"event": "dag_folder_loop"})
            dirnames.clear()
            continue
        seen.add(real)
        inherited = rules_of.get(folder.parent, ()) if folder != root else ()
        own = _read_rules(folder)
        rules = (*inherited, own) if own is not None else inherited
        rules_of[folder] = rules
        # Pruning here means an ignored folder is never walked, as git and Airflow do.
        dirnames[:] = sorted(d for d in dirnames if not _is_ignored(folder / d, rules, is_dir=True))
        yield folder, dirnames, filenames, rules


def list_dag_files(dags_folder: Path, *, safe_mode: bool) -> list[str]:
    """Absolute paths of the DAG files under `dags_folder`, sorted; [] if it does not exist."""
    root = dags_folder.absolute()
    if not root.is_dir():
        log.warning("dags folder %s does not exist", root, extra={"event": "dags_folder_missing"})
        return []
    found: list[str] = []
    for folder, _dirs, filenames, rules in _walk(root):
        for name in sorted(filenames):
            path = folder / name
            if path.suffix != ".py" or not path.is_file():
                continue
            if _is_ignored(path, rules, is_dir=False):
                continue
            if might_contain_dag(path, safe_mode=safe_mode):
                found.append(str(path))
    found.sort()
    return found
