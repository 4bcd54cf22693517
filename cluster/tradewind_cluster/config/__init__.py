"""The one typed configuration tree: its models, how it is loaded (file, env, _CMD) and listed."""

from __future__ import annotations

from tradewind_cluster.config.render import get_value, mask_url, settings_rows
from tradewind_cluster.config.settings import (
    SECTIONS,
    CoreSettings,
    DatabaseSettings,
    HealthSettings,
    LogFormat,
    LoggingSettings,
    LogLevel,
    MetricsSettings,
    RpcSettings,
    SchedulerSettings,
    Settings,
    TracingExporter,
    TracingSettings,
    WorkerSettings,
    advertise_host,
    normalize_database_url,
    pgdata_dir,
)
from tradewind_cluster.config.sources import (
    CONFIG_FILE_NAME,
    config_file_path,
    load_settings,
    resolve_home,
)

__all__ = [
    "CONFIG_FILE_NAME",
    "SECTIONS",
    "CoreSettings",
    "DatabaseSettings",
    "HealthSettings",
    "LogFormat",
    "LogLevel",
    "LoggingSettings",
    "MetricsSettings",
    "RpcSettings",
    "SchedulerSettings",
    "Settings",
    "TracingExporter",
    "TracingSettings",
    "WorkerSettings",
    "advertise_host",
    "config_file_path",
    "get_value",
    "load_settings",
    "mask_url",
    "normalize_database_url",
    "pgdata_dir",
    "resolve_home",
    "settings_rows",
]
