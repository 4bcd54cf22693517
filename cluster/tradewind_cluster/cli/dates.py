"""Dates on the command line, read as Airflow's CLI reads them: ISO 8601, a date alone meaning
its midnight, a time without an offset taken in core.default_timezone; always returned in UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from tradewind.errors import BadInputError

__all__ = ["parse_date", "parse_optional_date", "utcnow"]

_EXAMPLE = "2024-01-31, 2024-01-31T06:00:00 or 2024-01-31T06:00:00+00:00"


def utcnow() -> datetime:
    """The wall clock in UTC (the CLI is an edge: it may read the clock)."""
    return datetime.now(UTC)


def parse_date(text: str, *, timezone: str = "UTC", what: str = "date") -> datetime:
    """An aware UTC datetime from ISO 8601 text; a naive one is in `timezone`.
    BadInputError names the flag (`what`) and the text when it is not a date."""
    value = text.strip()
    if value.endswith(("z", "Z")):
        value = value[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadInputError(f"bad {what} {text!r}: expected ISO 8601 such as {_EXAMPLE}") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        parsed = parsed.replace(tzinfo=ZoneInfo(timezone))
    return parsed.astimezone(UTC)


def parse_optional_date(
    text: str | None, *, timezone: str = "UTC", what: str = "date"
) -> datetime | None:
    """parse_date, or None when the flag was not given."""
    return None if text is None else parse_date(text, timezone=timezone, what=what)
