"""Rendering template fields with Jinja2 as Airflow 2 does: a sandboxed environment with
StrictUndefined, the DAG's folder and template_searchpath as the loader path, `ds`/`ts` filters,
user macros and filters, files for values ending in template_ext, and XComArgs swapped for their
pulled values (which are not rendered again)."""

from __future__ import annotations

import datetime as _datetime
import functools
import json
import keyword
import logging
import random
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import jinja2
import jinja2.nativetypes
import jinja2.sandbox
from jinja2.utils import Namespace

from tradewind.errors import BadInputError
from tradewind.xcomarg import XCOMARG_MARKER, XComArg, XComPull, resolve_xcomargs

__all__ = [
    "FILTERS",
    "RenderError",
    "Renderer",
    "TemplateOptions",
    "build_environment",
    "ds_add",
    "ds_format",
    "macros_namespace",
    "shared_environment",
]

log = logging.getLogger(__name__)


class RenderError(BadInputError):
    """A template field could not be rendered; the message names the task, field and template."""


def ds_add(ds: str, days: int) -> str:
    """`ds` (YYYY-MM-DD) moved by `days` days: ds_add('2015-01-01', 5) == '2015-01-06'."""
    if not days:
        return str(ds)
    moved = _datetime.datetime.strptime(str(ds), "%Y-%m-%d") + _datetime.timedelta(days=days)
    return moved.strftime("%Y-%m-%d")


def ds_format(ds: str, input_format: str, output_format: str) -> str:
    """`ds` parsed with input_format and written with output_format."""
    return _datetime.datetime.strptime(str(ds), input_format).strftime(output_format)


def macros_namespace() -> SimpleNamespace:
    """`macros` in the template context, with Airflow's names."""
    names: dict[str, Any] = {
        "ds_add": ds_add,
        "ds_format": ds_format,
        "datetime": _datetime.datetime,
        "timedelta": _datetime.timedelta,
        "json": json,
        "time": time,
        "uuid": uuid,
        "random": random,
    }
    try:
        import dateutil  # type: ignore[import-untyped]

        names["dateutil"] = dateutil
    except ImportError:  # only an extra convenience
        pass
    return SimpleNamespace(**names)


def _strftime(fmt: str) -> Callable[[Any], Any]:
    def apply(value: Any) -> Any:
        return None if value is None else value.strftime(fmt)

    return apply


def _iso(value: Any) -> Any:
    return None if value is None else value.isoformat()


def _iso_nodash(value: Any) -> Any:
    return None if value is None else value.isoformat().replace("-", "").replace(":", "")


FILTERS: Mapping[str, Callable[[Any], Any]] = {
    "ds": _strftime("%Y-%m-%d"),
    "ds_nodash": _strftime("%Y%m%d"),
    "ts": _iso,
    "ts_nodash": _strftime("%Y%m%dT%H%M%S"),
    "ts_nodash_with_tz": _iso_nodash,
}
"""Airflow's datetime filters: `{{ logical_date | ds }}`."""


class _SandboxedEnvironment(jinja2.sandbox.SandboxedEnvironment):
    """Airflow's sandbox: `_private` attributes are readable, dunders are not."""

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        """Block dunders and Jinja's internal attributes only."""
        if attr.startswith("__"):
            return False
        return not jinja2.sandbox.is_internal_attribute(obj, attr)


@dataclass(frozen=True, slots=True, kw_only=True)
class TemplateOptions:
    """The DAG's templating settings (DAG(...) arguments of the same names)."""

    searchpath: tuple[str, ...] = ()
    user_defined_macros: Mapping[str, Any] = field(default_factory=dict)
    user_defined_filters: Mapping[str, Any] = field(default_factory=dict)
    render_template_as_native_obj: bool = False
    template_undefined: type[jinja2.Undefined] | None = None
    jinja_environment_kwargs: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dag(cls, dag: Any, folder: str) -> TemplateOptions:
        """Read them from an authored DAG whose file lives in `folder`."""
        extra = getattr(dag, "template_searchpath", None) or ()
        paths = (folder, *([extra] if isinstance(extra, str) else list(extra)))
        return cls(
            searchpath=tuple(str(p) for p in paths),
            user_defined_macros=dict(getattr(dag, "user_defined_macros", None) or {}),
            user_defined_filters=dict(getattr(dag, "user_defined_filters", None) or {}),
            render_template_as_native_obj=bool(getattr(dag, "render_template_as_native_obj", 0)),
            template_undefined=getattr(dag, "template_undefined", None),
            jinja_environment_kwargs=dict(getattr(dag, "jinja_environment_kwargs", None) or {}),
        )


def build_environment(options: TemplateOptions) -> jinja2.Environment:
    """The Jinja environment a DAG's templates render in (StrictUndefined unless the DAG says)."""
    settings: dict[str, Any] = {
        "loader": jinja2.FileSystemLoader(list(options.searchpath)),
        "undefined": options.template_undefined or jinja2.StrictUndefined,
        "extensions": ["jinja2.ext.do"],
        "cache_size": 0,
        **options.jinja_environment_kwargs,
    }
    env: jinja2.Environment
    if options.render_template_as_native_obj:
        env = jinja2.nativetypes.NativeEnvironment(**settings)
    else:
        env = _SandboxedEnvironment(**settings)
    env.filters.update(FILTERS)
    env.globals.update(options.user_defined_macros)
    env.filters.update(options.user_defined_filters)
    return env


_COMPILED_MAX = 512


def _compiled(env: jinja2.Environment, text: str) -> jinja2.Template:
    """env.from_string(text), kept on the environment: a long-lived environment (the fork
    server's, for bash tasks) compiles each distinct template once, not once per task."""
    cache: dict[str, jinja2.Template] = env.__dict__.setdefault("_tradewind_compiled", {})
    template = cache.get(text)
    if template is None:
        if len(cache) >= _COMPILED_MAX:
            cache.clear()
        template = cache[text] = env.from_string(text)
    return template


@functools.lru_cache(maxsize=64)
def shared_environment(searchpath: tuple[str, ...]) -> jinja2.Environment:
    """One default environment per search path, for a process that renders many tasks'
    templates (the fork server rendering bash tasks, which take no DAG-defined macros)."""
    return build_environment(TemplateOptions(searchpath=searchpath))


def _is_reference(value: Mapping[Any, Any]) -> bool:
    return len(value) == 1 and XCOMARG_MARKER in value


class Renderer:
    """Renders values against one task's context; `pull(task_id, key)` resolves XComArgs."""

    def __init__(
        self,
        env: jinja2.Environment,
        context: Mapping[str, Any],
        pull: XComPull,
        *,
        task_id: str,
        template_ext: Sequence[str] = (),
    ) -> None:
        self.env = env
        self.context = context
        self.pull = pull
        self.task_id = task_id
        self.template_ext = tuple(template_ext)
        self._plain = _plain_text_renders_as_is(env)
        self._names = self._plain and _names_render_as_str(env)

    def render_fields(self, target: object, fields: Sequence[str]) -> None:
        """Render each named attribute of `target` in place, in order (Airflow skips falsy
        values). RenderError names the field and template that failed."""
        seen: set[int] = set()
        for name in fields:
            if not hasattr(target, name):
                raise RenderError(
                    f"{name!r} is configured as a template field but "
                    f"{type(target).__name__} does not have this attribute."
                )
            value = getattr(target, name)
            if _falsy(value):
                continue
            setattr(target, name, self._field(name, value, seen))

    def render_mapping(self, values: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
        """A copy of `values` with the named keys rendered (serialized operator arguments)."""
        out = dict(values)
        seen: set[int] = set()
        for name in fields:
            value = out.get(name)
            if not _falsy(value):
                out[name] = self._field(name, value, seen)
        return out

    def render(self, value: Any, seen: set[int] | None = None) -> Any:
        """One value rendered: strings as templates, containers item by item."""
        seen = set() if seen is None else seen
        if id(value) in seen:
            return value
        if isinstance(value, str):
            return self._render_string(value)
        if isinstance(value, XComArg):
            return resolve_xcomargs(value, self.pull)
        if isinstance(value, Mapping) and _is_reference(value):
            return resolve_xcomargs(value, self.pull)
        if isinstance(value, tuple):
            items = [self.render(item, seen) for item in value]
            return tuple(items) if type(value) is tuple else type(value)(*items)
        if isinstance(value, list):
            return [self.render(item, seen) for item in value]
        if isinstance(value, dict):
            return {key: self.render(item, seen) for key, item in value.items()}
        if isinstance(value, set):
            return {self.render(item, seen) for item in value}
        self._render_nested(value, seen)
        return value

    def _field(self, name: str, value: Any, seen: set[int]) -> Any:
        try:
            return self.render(value, seen)
        except Exception as exc:
            message = (
                f"Exception rendering Jinja template for task {self.task_id!r}, field {name!r}. "
                f"Template: {value!r}: {type(exc).__name__}: {exc}"
            )
            log.error("%s", message)
            raise RenderError(message) from exc

    def _render_string(self, text: str) -> Any:
        if self.template_ext and text.endswith(self.template_ext):
            return self.env.get_template(text).render(self.context)
        if self._plain and "{" not in text and "\r" not in text:
            # No delimiter, so Jinja would only drop one trailing newline: skip compiling
            # (a millisecond per string on the path to user code).
            return self._trailing(text)
        if self._names and "\r" not in text:
            # Only {{ name }} of names in the context: what Jinja would output, without
            # compiling (each distinct template costs milliseconds to compile, once per process).
            # Jinja drops the source's trailing newline, never one a value ends with
            substituted = _substitute_names(self._trailing(text), self.context)
            if substituted is not None:
                return substituted
        return _compiled(self.env, text).render(self.context)

    def _trailing(self, text: str) -> str:
        """Jinja drops one trailing newline of a template unless keep_trailing_newline."""
        return text[:-1] if text.endswith("\n") and not self.env.keep_trailing_newline else text

    def _render_nested(self, value: Any, seen: set[int]) -> None:
        # An object with its own template_fields (e.g. a helper class) is rendered in place.
        fields = getattr(value, "template_fields", None)
        if not fields or isinstance(value, type | Namespace):
            return
        seen.add(id(value))
        for name in fields:
            current = getattr(value, name, None)
            if not _falsy(current):
                setattr(value, name, self.render(current, seen))


def _plain_text_renders_as_is(env: jinja2.Environment) -> bool:
    """True when text without "{" renders unchanged but for one trailing newline: the default
    delimiters, no line statements, "\\n" newlines, and not native (which would parse "1")."""
    return (
        not isinstance(env, jinja2.nativetypes.NativeEnvironment)
        and env.block_start_string == "{%"
        and env.variable_start_string == "{{"
        and env.comment_start_string == "{#"
        and env.line_statement_prefix is None
        and env.line_comment_prefix is None
        and env.newline_sequence == "\n"
    )


def _names_render_as_str(env: jinja2.Environment) -> bool:
    """True when `{{ name }}` outputs str(value): default output delimiters, no finalize, no
    autoescape (on top of _plain_text_renders_as_is)."""
    return env.variable_end_string == "}}" and env.finalize is None and env.autoescape is False


_EXPRESSION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*")
# names Jinja reads as literals or operators, not as variables
_LITERALS = frozenset({"true", "false", "none", *keyword.kwlist})


def _substitute_names(text: str, context: Mapping[str, Any]) -> str | None:
    """`text` with each `{{ name }}` replaced by str(context[name]), or None when the text holds
    anything else Jinja would interpret (a block, a comment, an expression that is not a bare
    name, a name not in the context): Jinja renders those."""
    if "{%" in text or "{#" in text:
        return None
    out: list[str] = []
    at = 0
    for match in _EXPRESSION.finditer(text):
        name = _NAME.fullmatch(match.group(1))
        if name is None or name.group(1) not in context or name.group(1) in _LITERALS:
            return None
        out.append(text[at : match.start()])
        out.append(str(context[name.group(1)]))
        at = match.end()
    rest = text[at:]
    if "{{" in rest:  # an expression never closed: Jinja's error to give
        return None
    out.append(rest)
    return "".join(out)


def _falsy(value: Any) -> bool:
    try:
        return not value
    except Exception:  # noqa: BLE001 - e.g. a DataFrame refuses bool(); render it anyway
        return False
