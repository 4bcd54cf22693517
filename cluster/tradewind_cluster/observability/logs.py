"""Process logging: text or JSON lines on one handler, configured once by the CLI, and the secret
masker that replaces every registered secret with *** in messages, extras and tracebacks."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import quote, unquote, urlsplit

from pydantic import BaseModel, SecretStr

from tradewind_cluster.config import LogFormat, LogLevel, Settings

__all__ = [
    "MASK",
    "JsonFormatter",
    "SecretMasker",
    "SecretMaskingFilter",
    "TextFormatter",
    "configure_logging",
    "record_extras",
    "settings_secrets",
]

MASK = "***"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", (), None)).keys()
    | {"message", "asctime", "taskName"}
)
_PLAIN = (bool, int, float, type(None))
_HANDLER_MARK = "_tradewind_handler"


class SecretMasker:
    """The set of secret strings to hide; thread-safe, shared by logs and metrics."""

    def __init__(self, secrets: Iterable[str | SecretStr | None] = ()) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()
        for secret in secrets:
            self.register(secret)

    def register(self, secret: str | SecretStr | None) -> None:
        """Hide this string (and its URL-encoded form) from now on; blank values are ignored."""
        if isinstance(secret, SecretStr):
            secret = secret.get_secret_value()
        if secret is None or not secret.strip():
            return
        forms = {secret, quote(secret, safe=""), unquote(secret)} - {""}
        with self._lock:
            if forms <= self._secrets:
                return
            self._secrets |= forms
            # Longest first, so a secret containing another is masked whole.
            alternatives = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in alternatives))

    def mask(self, text: str) -> str:
        """The text with every registered secret replaced by ***."""
        pattern = self._pattern
        return text if pattern is None else pattern.sub(MASK, text)

    def __len__(self) -> int:
        return len(self._secrets)


def settings_secrets(settings: Settings) -> list[str]:
    """Every secret value in the settings tree, plus the password inside a database URL."""
    found: list[str] = []
    for section_name in type(settings).model_fields:
        section = getattr(settings, section_name)
        if not isinstance(section, BaseModel):
            continue
        for key in type(section).model_fields:
            value = getattr(section, key)
            if isinstance(value, SecretStr):
                found.append(value.get_secret_value())
                found.extend(_url_password(value.get_secret_value()))
    return [secret for secret in found if secret]


def _url_password(url: str) -> list[str]:
    try:
        password = urlsplit(url).password
    except ValueError:
        return []
    return [password] if password else []


def record_extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a call passed in `extra=` (event, dag_id, task_id, attempt...)."""
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD_ATTRS and not key.startswith("_")
    }


class SecretMaskingFilter(logging.Filter):
    """Masks secrets in the message, its arguments, extras and traceback before formatting."""

    def __init__(self, masker: SecretMasker) -> None:
        super().__init__()
        self.masker = masker

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place; never drops one."""
        if not len(self.masker):
            return True
        mask = self.masker.mask
        # Bad %-arguments: leave the record for the handler, which reports them.
        with contextlib.suppress(TypeError, ValueError):
            record.msg, record.args = mask(record.getMessage()), None
        for key, value in record_extras(record).items():
            setattr(record, key, self._mask_value(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        return True

    def _mask_value(self, value: object) -> object:
        if isinstance(value, _PLAIN):
            return value
        if isinstance(value, str):
            return self.masker.mask(value)
        if isinstance(value, dict):
            return {self.masker.mask(str(k)): self._mask_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._mask_value(item) for item in value]
        return self.masker.mask(str(value))


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, every extra, then exc_info."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        line: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record_extras(record).items():
            line.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = record.stack_info
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`<ts> LEVEL logger: message key=value...`, extras appended so grep finds them."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        """The standard line plus the record's extras."""
        base = super().formatMessage(record)
        extras = record_extras(record)
        if not extras:
            return base
        return base + " " + " ".join(f"{key}={value}" for key, value in extras.items())


def configure_logging(
    level: LogLevel | str = LogLevel.INFO,
    fmt: LogFormat | str = LogFormat.TEXT,
    *,
    masker: SecretMasker | None = None,
    stream: TextIO | None = None,
) -> SecretMasker:
    """Install the one root handler (replacing a previous one of ours); returns its masker."""
    masker = masker if masker is not None else SecretMasker()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    formatter = (
        JsonFormatter() if LogFormat(str(fmt).lower()) is LogFormat.JSON else TextFormatter()
    )
    handler.setFormatter(formatter)
    handler.addFilter(SecretMaskingFilter(masker))
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(LogLevel(str(level).upper()).value)
    return masker
