"""BaseOperator: the task arguments every operator shares (validated as Airflow 2 does),
how default_args fill them, and the upstream edges implied by XComArgs in template fields."""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any, ClassVar, cast

from tradewind.dag import DAG, get_current_dag
from tradewind.errors import DagDefinitionError
from tradewind.identifiers import validate_task_id
from tradewind.priority import db_safe_priority
from tradewind.relations import RelationsMixin
from tradewind.spec import BranchKind, TaskKind
from tradewind.timezones import coerce_datetime
from tradewind.trigger_rule import TriggerRule, parse_trigger_rule
from tradewind.weight_rule import WeightRule, parse_weight_rule
from tradewind.xcomarg import XComArg, XComPull, iter_xcomargs, resolve_xcomargs

__all__ = ["BaseOperator"]

_DEPRECATED_TRIGGER_RULES = {"none_failed_or_skipped": TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS}


@functools.cache
def _init_parameters(cls: type) -> frozenset[str]:
    """Keyword names accepted by any __init__ in the class hierarchy (default_args targets)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for param in inspect.signature(init).parameters.values():
            if param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD) and param.name != "self":
                names.add(param.name)
    return frozenset(names)


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise DagDefinitionError(f"{what} must be a mapping, got {type(value).__name__}")
    return value


def _apply_defaults(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Fill arguments the author left out from the DAG's and the task's default_args."""
    given = kwargs.get("dag")
    dag = given if isinstance(given, DAG) else get_current_dag() if given is None else None
    args: dict[str, Any] = dict(dag.default_args) if dag is not None else {}
    params: dict[str, Any] = copy.deepcopy(dag.params) if dag is not None else {}
    task_params = kwargs.pop("params", None)
    if task_params is not None:
        params.update(_mapping(task_params, "params"))
    task_default_args = kwargs.pop("default_args", None)
    if task_default_args is not None:
        args.update(_mapping(task_default_args, "default_args"))
        params.update(_mapping(task_default_args.get("params") or {}, "default_args['params']"))
    for name in _init_parameters(cls):
        if name not in kwargs and name in args:
            kwargs[name] = args[name]
    kwargs["params"] = params
    return kwargs


class _OperatorMeta(type):
    """Applies default_args before __init__ and wires XComArg dependencies after it."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if args:
            raise DagDefinitionError(
                f"Use keyword arguments when initializing operators ({cls.__name__})"
            )
        operator = super().__call__(**_apply_defaults(cls, kwargs))
        operator._finish_init()
        return operator


def _coerce_timedelta(task_id: str, name: str, value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)  # Airflow reads bare numbers as seconds
    raise DagDefinitionError(
        f"task {task_id!r}: {name} must be a timedelta or a number of seconds, "
        f"got {type(value).__name__}: {value!r}"
    )


def _parse_retries(task_id: str, value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return int(value)
    try:
        return int(cast(Any, value))  # Airflow converts "3" (and 3.0) implicitly
    except (TypeError, ValueError):
        raise DagDefinitionError(
            f"task {task_id!r}: 'retries' type must be int, not {type(value).__name__}"
        ) from None


def _require_str(task_id: str, name: str, value: object) -> str:
    if not isinstance(value, str):
        raise DagDefinitionError(
            f"task {task_id!r}: {name} must be a string, got {type(value).__name__}: {value!r}"
        )
    return value


def _optional_date(value: datetime | date | str | None) -> datetime | None:
    return None if value is None else coerce_datetime(value)


class BaseOperator(RelationsMixin, metaclass=_OperatorMeta):
    """A task declaration. Subclasses add arguments and implement `execute(context)`, which
    the worker calls; nothing here runs anything."""

    template_fields: ClassVar[Sequence[str]] = ()
    template_ext: ClassVar[Sequence[str]] = ()
    custom_operator_name: ClassVar[str | None] = None  # shown instead of the class name
    branching: ClassVar[BranchKind | None] = None
    ui_color: ClassVar[str] = "#fff"

    _initialized = False
    _dag: DAG | None = None

    def __init__(
        self,
        *,
        task_id: str,
        owner: str = "tradewind",
        retries: int | None = 0,
        retry_delay: timedelta | float = timedelta(seconds=300),
        retry_exponential_backoff: bool = False,
        max_retry_delay: timedelta | float | None = None,
        execution_timeout: timedelta | None = None,
        start_date: datetime | date | str | None = None,
        end_date: datetime | date | str | None = None,
        depends_on_past: bool = False,
        ignore_first_depends_on_past: bool = True,
        wait_for_downstream: bool = False,
        dag: DAG | None = None,
        params: Mapping[str, Any] | None = None,
        default_args: Mapping[str, Any] | None = None,
        priority_weight: int = 1,
        weight_rule: str | WeightRule = WeightRule.DOWNSTREAM,
        queue: str = "default",
        pool: str | None = None,
        pool_slots: int = 1,
        trigger_rule: str | TriggerRule = TriggerRule.ALL_SUCCESS,
        max_active_tis_per_dag: int | None = None,
        task_concurrency: int | None = None,
        do_xcom_push: bool = True,
        multiple_outputs: bool = False,
        doc: str | None = None,
        doc_md: str | None = None,
        doc_rst: str | None = None,
        doc_json: str | None = None,
        doc_yaml: str | None = None,
        task_group: object = None,
        **accepted: Any,
    ) -> None:
        self.task_id: str = validate_task_id(task_id)
        self.upstream_task_ids: set[str] = set()
        self.downstream_task_ids: set[str] = set()
        self._accept_airflow_only(task_group, accepted)
        self.owner = _require_str(self.task_id, "owner", owner)
        self.params: dict[str, Any] = dict(params or {})
        self.start_date = _optional_date(start_date)
        self.end_date = _optional_date(end_date)
        self._init_retries(retries, retry_delay, retry_exponential_backoff, max_retry_delay)
        self._init_timeout(execution_timeout)
        self._init_scheduling(pool, pool_slots, priority_weight, weight_rule, trigger_rule)
        self.queue = _require_str(self.task_id, "queue", queue)
        self.depends_on_past = bool(depends_on_past or wait_for_downstream)
        self.ignore_first_depends_on_past = ignore_first_depends_on_past
        self.wait_for_downstream = wait_for_downstream
        self.max_active_tis_per_dag = self._check_limit(max_active_tis_per_dag or task_concurrency)
        self.do_xcom_push = do_xcom_push
        self.multiple_outputs = multiple_outputs
        self.doc, self.doc_md, self.doc_rst = doc, doc_md, doc_rst
        self.doc_json, self.doc_yaml = doc_json, doc_yaml
        if isinstance(self.template_fields, str):
            self.template_fields = (self.template_fields,)  # type: ignore[misc]
        target = dag if dag is not None else get_current_dag()
        if target is not None:
            self.dag = target

    # Arguments Airflow operators take that Tradewind stores but does not act on.
    _AIRFLOW_ONLY: ClassVar[frozenset[str]] = frozenset(
        {
            "email", "email_on_retry", "email_on_failure", "sla", "resources", "run_as_user",
            "executor_config", "inlets", "outlets", "on_execute_callback",
            "on_failure_callback", "on_success_callback", "on_retry_callback",
            "pre_execute", "post_execute", "max_active_tis_per_dagrun",
            "wait_for_past_depends_before_skipping", "on_skipped_callback",
        }
    )  # fmt: skip

    def _accept_airflow_only(self, task_group: object, accepted: dict[str, Any]) -> None:
        if task_group is not None:
            raise DagDefinitionError(f"task {self.task_id!r}: TaskGroup is not supported")
        unknown = sorted(set(accepted) - self._AIRFLOW_ONLY)
        if unknown:
            raise DagDefinitionError(
                f"Invalid arguments were passed to {type(self).__name__} "
                f"(task_id: {self.task_id}). Invalid arguments were: {', '.join(unknown)}"
            )
        for name in self._AIRFLOW_ONLY:
            setattr(self, name, accepted.get(name))

    def _init_retries(
        self,
        retries: object,
        retry_delay: object,
        exponential: bool,
        max_retry_delay: object,
    ) -> None:
        self.retries = _parse_retries(self.task_id, retries)
        self.retry_delay = _coerce_timedelta(self.task_id, "retry_delay", retry_delay)
        self.retry_exponential_backoff = bool(exponential)
        self.max_retry_delay = (
            None
            if max_retry_delay is None
            else _coerce_timedelta(self.task_id, "max_retry_delay", max_retry_delay)
        )

    def _init_timeout(self, execution_timeout: object) -> None:
        if execution_timeout is not None and not isinstance(execution_timeout, timedelta):
            raise DagDefinitionError(
                f"task {self.task_id!r}: execution_timeout must be timedelta object but "
                f"passed as type: {type(execution_timeout).__name__}"
            )
        self.execution_timeout = execution_timeout

    def _init_scheduling(
        self,
        pool: str | None,
        pool_slots: object,
        priority_weight: object,
        weight_rule: str | WeightRule,
        trigger_rule: str | TriggerRule,
    ) -> None:
        self.pool = "default_pool" if pool is None else _require_str(self.task_id, "pool", pool)
        if not isinstance(pool_slots, int) or isinstance(pool_slots, bool) or pool_slots < 1:
            raise DagDefinitionError(
                f"pool slots for {self.task_id} cannot be less than 1 (got {pool_slots!r})"
            )
        self.pool_slots = pool_slots
        if not isinstance(priority_weight, int) or isinstance(priority_weight, bool):
            raise DagDefinitionError(
                f"`priority_weight` for task {self.task_id!r} only accepts integers, "
                f"received {type(priority_weight).__name__!r}."
            )
        self.priority_weight = priority_weight
        self.weight_rule: WeightRule = parse_weight_rule(weight_rule)
        if isinstance(trigger_rule, str) and trigger_rule in _DEPRECATED_TRIGGER_RULES:
            trigger_rule = _DEPRECATED_TRIGGER_RULES[trigger_rule]
        self.trigger_rule: TriggerRule = parse_trigger_rule(trigger_rule)

    def _check_limit(self, value: object) -> int | None:
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise DagDefinitionError(
            f"task {self.task_id!r}: max_active_tis_per_dag must be an int, got {value!r}"
        )

    def _finish_init(self) -> None:
        self._initialized = True
        for name in self.template_fields:
            self._wire_xcomargs(getattr(self, name, None))

    def _wire_xcomargs(self, value: object) -> None:
        for ref in iter_xcomargs(value):
            self.set_upstream(ref.operator)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        # Assigning an XComArg to a template field after construction still wires it.
        if self._initialized and name in self.template_fields:
            self._wire_xcomargs(value)

    def __repr__(self) -> str:
        return f"<Task({self.task_type}): {self.task_id}>"

    # -- identity and DAG -------------------------------------------------------------
    @property
    def task_type(self) -> str:
        """The operator's class name."""
        return type(self).__name__

    @property
    def operator_name(self) -> str:
        """The name shown for this operator: custom_operator_name or the class name."""
        return self.custom_operator_name or self.task_type

    def get_dag(self) -> DAG | None:
        """The task's DAG, or None."""
        return self._dag

    def has_dag(self) -> bool:
        """Whether the task has been assigned to a DAG."""
        return self._dag is not None

    @property
    def dag(self) -> DAG:
        """The task's DAG; DagDefinitionError if it has none yet."""
        if self._dag is None:
            raise DagDefinitionError(f"Operator {self!r} has not been assigned to a DAG yet")
        return self._dag

    @dag.setter
    def dag(self, dag: DAG) -> None:
        self._attach(dag)

    def _attach(self, dag: DAG) -> None:
        if not isinstance(dag, DAG):
            raise DagDefinitionError(f"Expected DAG; received {type(dag).__name__}")
        if self._dag is not None and self._dag is not dag:
            raise DagDefinitionError(
                f"The DAG assigned to {self!r} can not be changed: it belongs to DAG "
                f"{self._dag.dag_id!r}, not {dag.dag_id!r}"
            )
        dag.add_task(self)

    @property
    def dag_id(self) -> str:
        """The DAG's id, or `adhoc_<owner>` for a task without one (as Airflow)."""
        return self._dag.dag_id if self._dag is not None else f"adhoc_{self.owner}"

    @property
    def task_kind(self) -> TaskKind:
        """How a worker runs it: CALLABLE (import the DAG file and call execute()) here."""
        return TaskKind.CALLABLE

    @property
    def output(self) -> XComArg:
        """A reference to this task's return value, to pass to another task."""
        return XComArg(self)

    @property
    def priority_weight_total(self) -> int:
        """own weight, plus all descendants' (downstream) or ancestors' (upstream)."""
        dag = self._dag
        if self.weight_rule == WeightRule.ABSOLUTE or dag is None:
            return db_safe_priority(self.priority_weight)
        relatives = self.get_flat_relative_ids(upstream=self.weight_rule == WeightRule.UPSTREAM)
        extra = sum(dag.task_dict[tid].priority_weight for tid in relatives)
        return db_safe_priority(self.priority_weight + extra)

    def execute(self, context: Mapping[str, Any]) -> Any:
        """Run the task on a worker; subclasses implement it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement execute()")

    def resolve_xcomargs(self, pull: XComPull) -> None:
        """Replace XComArgs (and their JSON references) in template fields by pulled values.

        The worker calls this on its own copy of the task before rendering and execute()."""
        for name in self.template_fields:
            if hasattr(self, name):
                setattr(self, name, resolve_xcomargs(getattr(self, name), pull))

    def serialize_fields(self) -> dict[str, Any]:
        """Operator-specific arguments to store in TaskSpec.fields (JSON-able, XComArgs allowed)."""
        return {}
