"""The error tree every Tradewind package raises from, split by what the caller can do.

TradewindError
├── DagDefinitionError        bad DAG file content: recorded as an import error for that file
│   ├── CycleError            the task graph has a cycle
│   ├── DuplicateTaskIdError  two tasks share an id in one DAG
│   ├── InvalidIdentifierError  a dag_id / task_id with bad characters or length
│   ├── InvalidScheduleError  a schedule that is not a preset, cron string or timedelta
│   └── InvalidTriggerRuleError
├── InvalidTransitionError    a state change the state machine forbids: a bug or a race, drop it
├── StaleError                a compare-and-set matched no row (token or state moved on): drop it
├── RetryableError            a transient failure (store or network): retry with backoff
├── BadInputError             user / RPC input rejected with a clear message: report, never retry
│   └── ConfigError           configuration that fails validation at start-up
└── SerializationError        a serialized DAG that cannot be read (unknown version, bad shape)
"""

from __future__ import annotations

__all__ = [
    "BadInputError",
    "ConfigError",
    "CycleError",
    "DagDefinitionError",
    "DuplicateTaskIdError",
    "InvalidIdentifierError",
    "InvalidScheduleError",
    "InvalidTransitionError",
    "InvalidTriggerRuleError",
    "RetryableError",
    "SchemaError",
    "SerializationError",
    "StaleError",
    "StoreUnavailableError",
    "TradewindError",
]


class TradewindError(Exception):
    """Root of every error Tradewind raises on purpose."""


class DagDefinitionError(TradewindError):
    """A DAG file defines something invalid; it becomes an import error for that file only."""


class CycleError(DagDefinitionError):
    """The task graph of a DAG has a cycle."""


class DuplicateTaskIdError(DagDefinitionError):
    """Two tasks in one DAG have the same task_id."""


class InvalidIdentifierError(DagDefinitionError):
    """A dag_id or task_id has characters or a length that is not allowed."""


class InvalidScheduleError(DagDefinitionError):
    """A schedule is not None, a preset, a 5-field cron expression or a timedelta."""


class InvalidTriggerRuleError(DagDefinitionError):
    """A trigger rule name that Tradewind does not know."""


class InvalidTransitionError(TradewindError):
    """A state change that the entity's transition table does not allow."""


class StaleError(TradewindError):
    """A compare-and-set found the row moved on (state or fencing token); the change is dropped."""


class RetryableError(TradewindError):
    """A transient failure of the store or the network; the caller retries with backoff."""


class StoreUnavailableError(RetryableError):
    """The metadata database could not be reached, even after retries."""


class SchemaError(TradewindError):
    """The metadata database has no Tradewind schema, or an older one: run `db upgrade`."""


class BadInputError(TradewindError):
    """Input from a user or an RPC peer that is rejected with a clear message."""


class ConfigError(BadInputError):
    """Configuration that fails validation at start-up."""


class SerializationError(TradewindError):
    """A serialized DAG of an unknown version or shape."""
