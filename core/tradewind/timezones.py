"""Time zones of authored DAGs: the process default zone for naive datetimes, coercion of
start/end dates to aware UTC, and the IANA name a DAG's cron schedule is evaluated in."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tradewind.errors import ConfigError, DagDefinitionError

__all__ = [
    "coerce_datetime",
    "get_default_timezone",
    "parse_datetime",
    "set_default_timezone",
    "timezone_name",
    "validate_timezone_name",
]

# The zone naive datetimes are read in. Set once at start-up from configuration
# (Airflow's [core] default_timezone); DAG files only read it.
_default_timezone = "UTC"


def validate_timezone_name(name: str) -> str:
    """Return `name` if it is an IANA time zone known to zoneinfo; else ConfigError."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"time zone must be a non-empty IANA name, got {name!r}")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"unknown time zone {name!r}: use an IANA name such as 'UTC' or 'Europe/Paris'"
        ) from None
    return name


def set_default_timezone(name: str) -> None:
    """Set the zone naive start/end dates are interpreted in (default UTC)."""
    global _default_timezone
    _default_timezone = validate_timezone_name(name)


def get_default_timezone() -> str:
    """The IANA name of the zone naive datetimes are interpreted in."""
    return _default_timezone


def _parse_text(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise DagDefinitionError(
            f"cannot read {value!r} as a date: use ISO 8601, e.g. '2024-01-31' "
            "or '2024-01-31T06:00:00+01:00'"
        ) from None
    return parsed


def parse_datetime(value: datetime | date | str) -> datetime:
    """A datetime as written: ISO strings parsed, dates at midnight, zone (or none) kept."""
    if isinstance(value, str):
        value = _parse_text(value)
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    raise DagDefinitionError(
        f"expected a datetime, a date or an ISO 8601 string, got {type(value).__name__}: {value!r}"
    )


def coerce_datetime(value: datetime | date | str, tz_name: str | None = None) -> datetime:
    """An aware UTC datetime from a datetime, date or ISO string; naive values are read in
    `tz_name` (default: the process default zone)."""
    value = parse_datetime(value)
    if value.tzinfo is None or value.utcoffset() is None:
        zone = ZoneInfo(validate_timezone_name(tz_name or _default_timezone))
        # replace() keeps `fold`, so an ambiguous wall time resolves as Python (and
        # pendulum's default rule) does: fold=0 is the earlier instant.
        value = value.replace(tzinfo=zone)
    return value.astimezone(UTC)


def _fixed_offset_name(offset: timedelta) -> str | None:
    if offset == timedelta(0):
        return "UTC"
    hours, rest = divmod(offset, timedelta(hours=1))
    if rest or not -14 <= hours <= 12:
        return None
    # The Etc zones have POSIX-inverted signs: Etc/GMT-2 is UTC+02:00.
    return f"Etc/GMT{-hours:+d}"


def timezone_name(value: datetime | None, default: str | None = None) -> str:
    """The IANA name of `value`'s zone, or the default zone when `value` is naive or None."""
    if value is None or value.tzinfo is None:
        return default or _default_timezone
    tz: tzinfo = value.tzinfo
    key = getattr(tz, "key", None) or getattr(tz, "name", None) or getattr(tz, "zone", None)
    if isinstance(key, str):
        try:
            return validate_timezone_name(key)
        except ConfigError:
            pass
    offset = value.utcoffset()
    name = _fixed_offset_name(offset) if offset is not None else None
    if name is None:
        raise DagDefinitionError(
            f"start_date {value.isoformat()} has a fixed UTC offset with no IANA equivalent; "
            "give it a zoneinfo.ZoneInfo time zone instead"
        )
    return name
