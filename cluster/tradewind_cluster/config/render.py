"""The flat listing behind `tradewind config list` and `config get`: one row per section.key,
every secret masked unless the caller asks to reveal it."""

from __future__ import annotations

import re
from enum import Enum
from typing import Any

from pydantic import BaseModel, SecretStr

from tradewind.errors import ConfigError
from tradewind_cluster.config.settings import (
    SECTIONS,
    Settings,
    unknown_key_message,
    unknown_section_message,
)

__all__ = ["MASK", "format_value", "get_value", "mask_url", "settings_rows"]

MASK = "***"
# The password runs to the last "@": a raw "@" in it must not leak what follows (over-masking
# the host of a malformed URL is the lesser harm).
_URL_PASSWORD = re.compile(r"^(?P<head>[^:/?#]+://[^:/@?#]*):(?P<password>.*)@(?P<tail>[^@]*)$")
_QUERY_PASSWORD = re.compile(r"(?P<key>[?&]password=)[^&#]*", re.IGNORECASE)


def mask_url(url: str) -> str:
    """The URL with its password (in the user info or a ?password= parameter) replaced by ***."""
    masked = _URL_PASSWORD.sub(rf"\g<head>:{MASK}@\g<tail>", url)
    return _QUERY_PASSWORD.sub(rf"\g<key>{MASK}", masked)


def format_value(value: Any, *, key: str = "", reveal: bool = False) -> str:
    """One setting as text: secrets masked, None empty, booleans lower-case, queues comma-joined."""
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        if reveal:
            return secret
        return mask_url(secret) if key == "url" else MASK
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, tuple | list):
        return ",".join(format_value(item) for item in value)
    return str(value)


def _section(settings: Settings, section: str) -> BaseModel:
    model = getattr(settings, section)
    assert isinstance(model, BaseModel)
    return model


def settings_rows(settings: Settings, reveal: bool = False) -> list[tuple[str, str, str]]:
    """Every (section, key, value) in declaration order; secrets masked unless reveal."""
    rows: list[tuple[str, str, str]] = []
    for section in SECTIONS:
        model = _section(settings, section)
        for key in type(model).model_fields:
            rows.append((section, key, format_value(getattr(model, key), key=key, reveal=reveal)))
    return rows


def get_value(settings: Settings, section: str, key: str, *, reveal: bool = False) -> str:
    """One setting as text (masked unless reveal); an unknown section or key is a ConfigError."""
    section, key = section.strip().lower(), key.strip().lower()
    if section not in SECTIONS:
        raise ConfigError(unknown_section_message(section))
    model = _section(settings, section)
    if key not in type(model).model_fields:
        raise ConfigError(unknown_key_message(section, key))
    return format_value(getattr(model, key), key=key, reveal=reveal)
