"""What every command gets: the loaded settings and a way to open the metadata database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from tradewind_cluster.config import Settings, load_settings
from tradewind_cluster.metadb import open_database
from tradewind_cluster.store.database import Database

__all__ = ["CliContext"]


@dataclass
class CliContext:
    """Loaded lazily, so `tradewind version` works with a broken config."""

    config_file: Path | None = None
    verbose: bool = False

    @cached_property
    def settings(self) -> Settings:
        """The validated settings tree (raises ConfigError with a clear message)."""
        return load_settings(self.config_file)

    @contextmanager
    def database(self) -> Iterator[Database]:
        """The metadata database (embedded when no URL is configured)."""
        with open_database(self.settings, application_name="tradewind-cli") as db:
            yield db
