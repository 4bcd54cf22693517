"""The rule every dag_id and task_id follows (Airflow's `validate_key`): word characters,
dots and dashes, at most 250 characters."""

from __future__ import annotations

import re

from tradewind.errors import InvalidIdentifierError

__all__ = ["MAX_ID_LENGTH", "validate_dag_id", "validate_identifier", "validate_task_id"]

MAX_ID_LENGTH = 250
# \w is Unicode-aware, as in Airflow: letters and digits of any script plus "_".
# fullmatch, not Airflow's match + "$", so a trailing newline is refused rather than kept.
_ID_PATTERN = re.compile(r"[\w.-]+")
_RULE = "letters, digits, underscores, dots and dashes only"


def validate_identifier(kind: str, value: object) -> str:
    """Return `value` if it is a valid `kind` ("dag_id", "task_id"); else InvalidIdentifierError."""
    if not isinstance(value, str):
        raise InvalidIdentifierError(
            f"{kind} must be a string, got {type(value).__name__}: {value!r}"
        )
    if len(value) > MAX_ID_LENGTH:
        raise InvalidIdentifierError(
            f"{kind} {value[:40]!r}... is {len(value)} characters long; "
            f"the maximum is {MAX_ID_LENGTH}"
        )
    if not _ID_PATTERN.fullmatch(value):
        raise InvalidIdentifierError(f"{kind} {value!r} is invalid: use {_RULE}")
    return value


def validate_dag_id(value: object) -> str:
    """Validate a dag_id."""
    return validate_identifier("dag_id", value)


def validate_task_id(value: object) -> str:
    """Validate a task_id."""
    return validate_identifier("task_id", value)
