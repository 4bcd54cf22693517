"""BashOperator: a bash command the worker runs in a subprocess (declared here, run there)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, ClassVar

from tradewind.baseoperator import BaseOperator
from tradewind.errors import DagDefinitionError
from tradewind.spec import TaskKind

__all__ = ["BashOperator", "exit_codes_to_skip"]


def exit_codes_to_skip(value: int | Collection[int] | None) -> list[int]:
    """skip_on_exit_code as a sorted list: one code, several, or none (as Airflow reads it)."""
    if value is None:
        return []
    codes = [value] if isinstance(value, int) else list(value)
    for code in codes:
        if not isinstance(code, int) or isinstance(code, bool):
            raise DagDefinitionError(f"skip_on_exit_code must hold ints, got {code!r}")
    return sorted(set(codes))


class BashOperator(BaseOperator):
    """Run `bash_command` with bash. Exit code 0 succeeds; a code in skip_on_exit_code
    (default 99) marks the task skipped; anything else fails it."""

    template_fields: ClassVar[tuple[str, ...]] = ("bash_command", "env", "cwd")
    template_ext: ClassVar[tuple[str, ...]] = (".sh", ".bash")
    ui_color: ClassVar[str] = "#f0ede4"

    def __init__(
        self,
        *,
        bash_command: Any,
        env: Mapping[str, Any] | None = None,
        append_env: bool = False,
        output_encoding: str = "utf-8",
        skip_on_exit_code: int | Collection[int] | None = 99,
        skip_exit_code: int | None = None,
        cwd: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.bash_command = bash_command
        self.env = env
        self.append_env = append_env
        self.output_encoding = output_encoding
        # skip_exit_code is the pre-2.6 name of skip_on_exit_code.
        chosen = skip_exit_code if skip_exit_code is not None else skip_on_exit_code
        exit_codes_to_skip(chosen)  # validate now: a bad value is a DAG definition error
        self.skip_on_exit_code = chosen
        self.cwd = cwd

    @property
    def task_kind(self) -> TaskKind:
        """BASH (the worker runs bash_command) unless a subclass overrides execute()."""
        return TaskKind.BASH if type(self).execute is BashOperator.execute else TaskKind.CALLABLE

    def execute(self, context: Mapping[str, Any]) -> Any:
        """Not here: the worker agent runs bash_command in a subprocess."""
        raise NotImplementedError(
            "BashOperator runs on the worker agent, which executes bash_command in a "
            "subprocess; tradewind core only declares it"
        )

    def serialize_fields(self) -> dict[str, Any]:
        """bash_command, env, append_env, cwd, output_encoding and skip_on_exit_code (a list)."""
        return {
            "bash_command": self.bash_command,
            "env": self.env,
            "append_env": self.append_env,
            "cwd": self.cwd,
            "output_encoding": self.output_encoding,
            "skip_on_exit_code": exit_codes_to_skip(self.skip_on_exit_code),
        }
