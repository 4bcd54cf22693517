"""Loading the settings tree once, in rising priority: built-in defaults, the TOML file,
TRADEWIND__SECTION__KEY variables and their ..._CMD forms. Every failure becomes one ConfigError
naming section.key and where the value came from, never the value itself."""

from __future__ import annotations

import os
import shlex
import subprocess
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsError,
    TomlConfigSettingsSource,
)
from pydantic_settings.sources import DefaultSettingsSource

from tradewind.errors import ConfigError
from tradewind_cluster.config.settings import (
    ENV_PREFIX,
    SECTIONS,
    Settings,
    unknown_key_message,
    unknown_section_message,
)

__all__ = [
    "COMMAND_TIMEOUT_S",
    "CONFIG_ENV",
    "CONFIG_FILE_NAME",
    "HOME_ENV",
    "config_file_path",
    "describe_validation_error",
    "load_settings",
    "resolve_home",
]

HOME_ENV = "TRADEWIND_HOME"
CONFIG_ENV = "TRADEWIND_CONFIG"
CONFIG_FILE_NAME = "tradewind.toml"
COMMAND_TIMEOUT_S = 60.0
_CMD_SUFFIX = "_cmd"
_PREFIX = ENV_PREFIX.lower()


def resolve_home(env: Mapping[str, str]) -> Path:
    """$TRADEWIND_HOME, else ~/.tradewind."""
    value = env.get(HOME_ENV)
    if value:
        return Path(value).expanduser()
    user_home = env.get("HOME")
    return (Path(user_home) if user_home else Path.home()) / ".tradewind"


def config_file_path(config_file: Path | None, env: Mapping[str, str]) -> Path | None:
    """The TOML file to read: --config, else $TRADEWIND_CONFIG, else <home>/tradewind.toml if any.

    A file named either way that is missing is a ConfigError; a missing default file is not.
    """
    if config_file is None and env.get(CONFIG_ENV):
        config_file = Path(env[CONFIG_ENV])
    if config_file is None:
        default = resolve_home(env) / CONFIG_FILE_NAME
        return default if default.is_file() else None
    path = config_file.expanduser()
    if not path.exists():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} is not a file")
    return path


@dataclass(frozen=True, slots=True, kw_only=True)
class _EnvView:
    """The environment split into plain variables and ..._CMD variables, keyed by (section, key)."""

    plain: dict[str, str] = field(default_factory=dict)
    names: dict[tuple[str, str], str] = field(default_factory=dict)
    commands: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)


def _split_env(environ: Mapping[str, str]) -> _EnvView:
    view = _EnvView()
    for name, value in environ.items():
        lower = name.lower()
        section, sep, key = lower.removeprefix(_PREFIX).partition("__")
        ours = lower.startswith(_PREFIX) and bool(sep and key) and "__" not in key
        if ours and key.endswith(_CMD_SUFFIX):
            view.commands[(section, key.removesuffix(_CMD_SUFFIX))] = (name, value)
            continue
        if ours:
            view.names[(section, key)] = name
        view.plain[name] = value
    return view


def _run_command(variable: str, target: str, command: str, environ: Mapping[str, str]) -> str:
    """Run a ..._CMD command (no shell, like Airflow) and return its stripped stdout."""
    where = f"{variable} ({target})"
    try:
        argv = shlex.split(command)
    except ValueError:
        raise ConfigError(f"{where}: cannot parse the command (unbalanced quotes?)") from None
    if not argv:
        raise ConfigError(f"{where}: the command is empty")
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            env=dict(environ),
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        raise ConfigError(f"{where}: command {argv[0]!r} not found") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(
            f"{where}: the command did not finish in {COMMAND_TIMEOUT_S:g}s"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot run the command: {exc.strerror}") from None
    if done.returncode != 0:
        # Output and stderr may hold the very secret being fetched: never echo them.
        raise ConfigError(
            f"{where}: the command exited with status {done.returncode} "
            "(its output is not shown as it may hold a secret)"
        )
    try:
        return done.stdout.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: the command's output is not UTF-8 text") from None


class _CommandSource(PydanticBaseSettingsSource):
    """Values of TRADEWIND__SECTION__KEY_CMD variables: each command's stdout, stripped."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        commands: Mapping[tuple[str, str], tuple[str, str]],
        environ: Mapping[str, str],
    ) -> None:
        super().__init__(settings_cls)
        self._commands = commands
        self._environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: __call__ builds the whole mapping at once."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, dict[str, str]] = {}
        for (section, key), (variable, command) in sorted(self._commands.items()):
            if section not in SECTIONS:
                continue  # like plain variables, unknown sections are someone else's business
            if key not in SECTIONS[section].model_fields:
                raise ConfigError(unknown_key_message(section, key, f" (from {variable})"))
            target = f"{section}.{key}"
            values.setdefault(section, {})[key] = _run_command(
                variable, target, command, self._environ
            )
        return values


class _EnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading an injected mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): value for name, value in self._environ.items()}


def _toml_source(path: Path | None) -> TomlConfigSettingsSource:
    try:
        return TomlConfigSettingsSource(Settings, toml_file=path)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Origins:
    """Where each (section, key) was set, to say so in error messages."""

    file: Path | None
    file_data: Mapping[str, Any]
    env: _EnvView

    def describe(self, loc: tuple[str, ...]) -> str:
        if len(loc) >= 2 and loc[:2] in self.env.commands:
            return f" (from {self.env.commands[(loc[0], loc[1])][0]})"
        if len(loc) >= 2 and loc[:2] in self.env.names:
            return f" (from {self.env.names[(loc[0], loc[1])]})"
        table = self.file_data.get(loc[0]) if loc else None
        in_file = len(loc) == 1 or (isinstance(table, dict) and loc[1] in table)
        if loc and loc[0] in self.file_data and in_file:
            return f" (in {self.file})"
        return ""


def _dotted(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _describe_one(error: ErrorDetails, origins: _Origins) -> str:
    loc = error["loc"]
    names = tuple(str(part) for part in loc if isinstance(part, str))
    where = origins.describe(names)
    if error["type"] == "extra_forbidden" and len(names) == 1:
        return unknown_section_message(names[0], where)
    if error["type"] == "extra_forbidden" and len(names) == 2 and names[0] in SECTIONS:
        return unknown_key_message(names[0], names[1], where)
    if error["type"] in {"model_type", "dict_type"} and len(names) == 1:
        return f"[{names[0]}]{where} must be a table of keys"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "value_error" and len(names) <= 1:
        return message + where  # model-level rules name their keys themselves
    return f"{_dotted(loc)}: {message}{where}"


def describe_validation_error(exc: ValidationError, origins: _Origins | None = None) -> str:
    """One readable line per problem, naming section.key; input values are never included."""
    origins = origins or _Origins(file=None, file_data={}, env=_EnvView())
    problems = [_describe_one(error, origins) for error in exc.errors(include_input=False)]
    return "invalid configuration: " + "; ".join(problems)


def load_settings(
    config_file: Path | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Load and validate the settings once: defaults < TOML file < env < env _CMD."""
    environ: Mapping[str, str] = os.environ if env is None else env
    path = config_file_path(config_file, environ)
    toml = _toml_source(path)
    view = _split_env(environ)
    origins = _Origins(file=path, file_data=toml.toml_data, env=view)
    computed = {"core": {"home": str(resolve_home(environ))}}
    sources = (
        _CommandSource(Settings, view.commands, environ),
        _EnvSource(Settings, view.plain),
        toml,
        InitSettingsSource(Settings, init_kwargs=computed),
        DefaultSettingsSource(Settings),
    )
    try:
        # _build_sources is BaseSettings' documented hook for pre-built sources; mypy sees only
        # the field-based __init__ that pydantic's dataclass_transform synthesises.
        return Settings(_build_sources=(sources, {}))  # type: ignore[call-arg]
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, origins)) from None
    except SettingsError as exc:
        raise ConfigError(
            f"invalid configuration in the environment: {exc} "
            f"(a {ENV_PREFIX}<SECTION> variable must hold a JSON object)"
        ) from None
