"""The DAG object a DAG file builds: its arguments (validated as Airflow 2 does), its tasks,
the stack of DAGs open in `with` blocks, and graph introspection."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from tradewind.errors import DagDefinitionError, DuplicateTaskIdError, InvalidScheduleError
from tradewind.graph import topological_order
from tradewind.identifiers import validate_dag_id
from tradewind.schedules import parse_schedule
from tradewind.spec import ScheduleSpec
from tradewind.timezones import coerce_datetime, parse_datetime, timezone_name

if TYPE_CHECKING:
    from tradewind.baseoperator import BaseOperator

__all__ = ["DAG", "NOTSET", "capture_dags", "get_current_dag", "set_catchup_by_default"]


class _NotSet:
    """The type of NOTSET: an argument the author did not pass."""

    def __repr__(self) -> str:
        return "NOTSET"


NOTSET: Final = _NotSet()
# Airflow 2's schedule when none is given (Airflow 3 changed it to None).
_DEFAULT_SCHEDULE = timedelta(days=1)
_TAG_MAX_LEN = 100

# catchup of a DAG that does not say (Airflow's [scheduler] catchup_by_default). Set once at
# start-up from configuration by whatever process loads DAG files; DAG files only read it.
_catchup_by_default = True


def set_catchup_by_default(value: bool) -> None:
    """Set the catchup of DAGs created without one (scheduler.catchup_by_default)."""
    global _catchup_by_default
    _catchup_by_default = bool(value)


# DAGs opened by `with DAG(...)`, innermost last; operators created inside attach to it.
_dag_stack: list[DAG] = []
# Open capture_dags() blocks, each collecting the DAGs entered while it is open.
_captures: list[list[DAG]] = []


@contextmanager
def capture_dags() -> Iterator[list[DAG]]:
    """Collect every DAG entered with `with` while the block runs (Airflow's auto_register:
    a DAG file need not keep its DAGs in module globals). The parse process uses it."""
    found: list[DAG] = []
    _captures.append(found)
    try:
        yield found
    finally:
        _captures.remove(found)


def get_current_dag() -> DAG | None:
    """The DAG of the innermost open `with DAG(...)` block, if any."""
    return _dag_stack[-1] if _dag_stack else None


def _resolve_schedule(dag_id: str, schedule: object, schedule_interval: object) -> object:
    if not isinstance(schedule, _NotSet) and not isinstance(schedule_interval, _NotSet):
        raise DagDefinitionError(
            f"DAG {dag_id!r}: pass either schedule or schedule_interval (deprecated), not both"
        )
    return schedule if not isinstance(schedule, _NotSet) else schedule_interval


def _parse_dag_schedule(dag_id: str, raw: object) -> ScheduleSpec:
    value = _DEFAULT_SCHEDULE if isinstance(raw, _NotSet) else raw
    try:
        return parse_schedule(value)  # type: ignore[arg-type]  # parse_schedule rejects bad types
    except InvalidScheduleError as exc:
        raise InvalidScheduleError(f"DAG {dag_id!r}: {exc}") from exc


def _check_int(dag_id: str, name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise DagDefinitionError(
            f"DAG {dag_id!r}: {name} must be an int, got {type(value).__name__}: {value!r}"
        )
    return value


def _check_tags(dag_id: str, tags: Iterable[str] | None) -> tuple[str, ...]:
    if tags is None:
        return ()
    if isinstance(tags, str):
        raise DagDefinitionError(f"DAG {dag_id!r}: tags must be a list of strings, not a string")
    checked = tuple(tags)
    for tag in checked:
        if not isinstance(tag, str):
            raise DagDefinitionError(f"DAG {dag_id!r}: tag {tag!r} is not a string")
        if len(tag) > _TAG_MAX_LEN:
            raise DagDefinitionError(
                f"DAG {dag_id!r}: tag {tag[:20]!r}... is longer than {_TAG_MAX_LEN} characters"
            )
    return checked


def _check_timeout(dag_id: str, value: object) -> timedelta | None:
    if value is None or isinstance(value, timedelta):
        return value
    raise DagDefinitionError(
        f"DAG {dag_id!r}: dagrun_timeout must be a datetime.timedelta, got {type(value).__name__}"
    )


def _merge_params(dag_id: str, params: object, default_args: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for source, name in (
        (params, "params"),
        (default_args.pop("params", None), "default_args['params']"),
    ):
        if source is None:
            continue
        if not isinstance(source, Mapping):
            raise DagDefinitionError(f"DAG {dag_id!r}: {name} must be a mapping")
        # As in Airflow, default_args["params"] override the DAG's own params.
        merged.update(copy.deepcopy(dict(source)))
    return merged


class DAG:
    """A workflow: tasks and their dependencies, plus when and how often it runs."""

    def __init__(
        self,
        dag_id: str,
        description: str | None = None,
        *,
        schedule: object = NOTSET,
        schedule_interval: object = NOTSET,
        start_date: datetime | date | str | None = None,
        end_date: datetime | date | str | None = None,
        default_args: Mapping[str, Any] | None = None,
        max_active_tasks: int = 16,
        concurrency: int | None = None,
        max_active_runs: int = 16,
        dagrun_timeout: timedelta | None = None,
        catchup: bool | None = None,
        tags: Iterable[str] | None = None,
        params: Mapping[str, Any] | None = None,
        is_paused_upon_creation: bool | None = None,
        doc_md: str | None = None,
        on_success_callback: Callable[..., Any] | None = None,
        on_failure_callback: Callable[..., Any] | None = None,
        sla_miss_callback: Callable[..., Any] | None = None,
        template_searchpath: str | Iterable[str] | None = None,
        user_defined_macros: Mapping[str, Any] | None = None,
        user_defined_filters: Mapping[str, Any] | None = None,
        render_template_as_native_obj: bool = False,
        owner_links: Mapping[str, str] | None = None,
        access_control: Mapping[str, Any] | None = None,
        default_view: str | None = None,
        orientation: str | None = None,
        jinja_environment_kwargs: Mapping[str, Any] | None = None,
        template_undefined: object = None,
        fail_stop: bool = False,
        auto_register: bool = True,
        timetable: object = None,
    ) -> None:
        self.dag_id = validate_dag_id(dag_id)
        if timetable is not None:
            raise DagDefinitionError(
                f"DAG {dag_id!r}: custom timetables are not supported; "
                "use schedule= with a preset, a cron expression or a timedelta"
            )
        if default_args is not None and not isinstance(default_args, Mapping):
            raise DagDefinitionError(f"DAG {dag_id!r}: default_args must be a mapping")
        self.default_args: dict[str, Any] = copy.deepcopy(dict(default_args or {}))
        self.params = _merge_params(dag_id, params, self.default_args)
        raw_schedule = _resolve_schedule(dag_id, schedule, schedule_interval)
        self.schedule_interval: object = (
            _DEFAULT_SCHEDULE if isinstance(raw_schedule, _NotSet) else raw_schedule
        )
        self.schedule: ScheduleSpec = _parse_dag_schedule(dag_id, raw_schedule)
        self._init_dates(start_date, end_date, explicit_schedule=raw_schedule)
        self.description = description
        self.max_active_tasks = _check_int(
            dag_id, "max_active_tasks", concurrency or max_active_tasks
        )
        self.max_active_runs = _check_int(dag_id, "max_active_runs", max_active_runs)
        self.dagrun_timeout = _check_timeout(dag_id, dagrun_timeout)
        self.catchup = _catchup_by_default if catchup is None else bool(catchup)
        self.tags = _check_tags(dag_id, tags)
        self.is_paused_upon_creation = is_paused_upon_creation
        self.doc_md = doc_md
        # Accepted so Airflow DAG files load; Tradewind does not act on them (yet).
        self.on_success_callback = on_success_callback
        self.on_failure_callback = on_failure_callback
        self.sla_miss_callback = sla_miss_callback
        self.template_searchpath = template_searchpath
        self.user_defined_macros = user_defined_macros
        self.user_defined_filters = user_defined_filters
        self.render_template_as_native_obj = render_template_as_native_obj
        self.owner_links = dict(owner_links or {})
        self.access_control = access_control
        self.default_view = default_view
        self.orientation = orientation
        self.jinja_environment_kwargs = jinja_environment_kwargs
        self.template_undefined = template_undefined
        self.fail_stop = fail_stop
        self.auto_register = auto_register
        self.task_dict: dict[str, BaseOperator] = {}
        # Where the DAG was defined, as Airflow records it: the file of the calling frame.
        caller = sys._getframe(1)
        self.fileloc: str = caller.f_code.co_filename

    def _init_dates(
        self,
        start_date: datetime | date | str | None,
        end_date: datetime | date | str | None,
        *,
        explicit_schedule: object,
    ) -> None:
        default_start = self.default_args.get("start_date")
        zone_source = start_date if start_date is not None else default_start
        self.timezone: str = timezone_name(
            None if zone_source is None else parse_datetime(zone_source)
        )
        self.start_date = None if start_date is None else coerce_datetime(start_date)
        self.end_date = None if end_date is None else coerce_datetime(end_date)
        # Airflow 2.8+: an explicit, non-empty schedule needs a start date somewhere.
        if (
            not isinstance(explicit_schedule, _NotSet)
            and explicit_schedule
            and start_date is None
            and "start_date" not in self.default_args
        ):
            raise DagDefinitionError(f"DAG {self.dag_id!r} is missing the start_date parameter")

    # -- context manager ----------------------------------------------------------------
    def __enter__(self) -> DAG:
        _dag_stack.append(self)
        if self.auto_register:
            for found in _captures:
                if not any(dag is self for dag in found):
                    found.append(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _dag_stack.pop()

    def __repr__(self) -> str:
        return f"<DAG: {self.dag_id}>"

    # -- tasks ----------------------------------------------------------------------------
    def add_task(self, task: BaseOperator) -> None:
        """Attach `task`; DuplicateTaskIdError if another task already has its id."""
        existing = self.task_dict.get(task.task_id)
        if existing is task:
            return
        if existing is not None:
            raise DuplicateTaskIdError(
                f"Task id {task.task_id!r} has already been added to the DAG {self.dag_id!r}"
            )
        other = task.get_dag()
        if other is not None and other is not self:
            raise DagDefinitionError(
                f"task {task.task_id!r} belongs to DAG {other.dag_id!r} and cannot be "
                f"added to DAG {self.dag_id!r}"
            )
        self.task_dict[task.task_id] = task
        task._dag = self

    def add_tasks(self, tasks: Iterable[BaseOperator]) -> None:
        """Attach several tasks."""
        for task in tasks:
            self.add_task(task)

    @property
    def tasks(self) -> list[BaseOperator]:
        """The tasks in the order they were added."""
        return list(self.task_dict.values())

    @property
    def task_ids(self) -> list[str]:
        """The task ids in the order the tasks were added."""
        return list(self.task_dict)

    @property
    def task_count(self) -> int:
        """How many tasks the DAG has."""
        return len(self.task_dict)

    def has_task(self, task_id: str) -> bool:
        """Whether a task with this id is in the DAG."""
        return task_id in self.task_dict

    def get_task(self, task_id: str) -> BaseOperator:
        """The task with this id; KeyError naming it and the DAG when absent."""
        try:
            return self.task_dict[task_id]
        except KeyError:
            raise KeyError(f"Task {task_id!r} not found in DAG {self.dag_id!r}") from None

    @property
    def roots(self) -> list[BaseOperator]:
        """Tasks with no upstream task."""
        return [t for t in self.task_dict.values() if not t.upstream_task_ids]

    @property
    def leaves(self) -> list[BaseOperator]:
        """Tasks with no downstream task."""
        return [t for t in self.task_dict.values() if not t.downstream_task_ids]

    # -- graph ----------------------------------------------------------------------------
    def downstream_map(self) -> dict[str, list[str]]:
        """task_id -> sorted downstream task ids, for every task."""
        return {tid: sorted(t.downstream_task_ids) for tid, t in self.task_dict.items()}

    def topological_sort(self) -> list[BaseOperator]:
        """Tasks with every task after its upstreams; ties keep insertion order. CycleError."""
        order = topological_order(self.task_ids, self.downstream_map(), dag_id=self.dag_id)
        return [self.task_dict[tid] for tid in order]

    def check_cycle(self) -> None:
        """Raise CycleError naming the tasks on a cycle, if there is one."""
        topological_order(self.task_ids, self.downstream_map(), dag_id=self.dag_id)

    def validate(self) -> None:
        """Check what cannot be checked while the DAG is being built: cycles and dangling edges."""
        for task in self.task_dict.values():
            for other in task.upstream_task_ids | task.downstream_task_ids:
                if other not in self.task_dict:
                    raise DagDefinitionError(
                        f"task {task.task_id!r} of DAG {self.dag_id!r} is wired to "
                        f"{other!r}, which is not in the DAG"
                    )
        self.check_cycle()
