"""The deployment files in ops/ agree with the code: every file parses, every `tradewind` command
line exists in the real CLI parser and every TRADEWIND_* variable names a real setting with a
valid value. Also the loaders the other test_ops_* modules share (image, topology, metrics)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from tradewind_cluster.cli.main import build_parser
from tradewind_cluster.config import SECTIONS, Settings
from tradewind_cluster.config.settings import ENV_PREFIX
from tradewind_cluster.config.sources import CONFIG_ENV, HOME_ENV

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
DOCKERFILE = OPS / "image" / "Dockerfile"
DOCKERIGNORE = OPS / "image" / "Dockerfile.dockerignore"
COMPOSE = OPS / "compose" / "compose.yaml"
K8S = OPS / "k8s"
IMAGE = "tradewind"
WORKER_PENDING = "`tradewind worker` is not registered in the CLI yet"

_ENV_NAME = re.compile(r"\bTRADEWIND_\w+")
_INLINE_COMMAND = re.compile(r"`tradewind ([^`]+)`")


# ---------------------------------------------------------------- loaders shared by test_ops_*
@cache
def yaml_docs(path: Path) -> list[Any]:
    """Every document of a YAML file (empty documents dropped)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def ops_files(*suffixes: str) -> list[Path]:
    """Files under ops/ with one of the suffixes, sorted."""
    return sorted(p for p in OPS.rglob("*") if p.is_file() and p.suffix in suffixes)


def project_version() -> str:
    """The version in pyproject.toml."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return str(data["project"]["version"])


@dataclass(frozen=True, slots=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    args: str
    stage: int


@cache
def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions; `stage` counts FROM lines from 0."""
    out: list[Instruction] = []
    pending = ""
    stage = -1
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        stage += keyword.upper() == "FROM"
        out.append(Instruction(keyword.upper(), args.strip(), stage))
    return out


def final_stage() -> list[Instruction]:
    """The instructions of the last build stage (the image that ships)."""
    steps = dockerfile()
    return [i for i in steps if i.stage == steps[-1].stage]


def exec_form(args: str) -> list[str]:
    """A JSON-array (exec form) argument list."""
    value = json.loads(args)
    assert isinstance(value, list), f"not an exec-form array: {args}"
    return [str(v) for v in value]


def image_env() -> dict[str, str]:
    """ENV of the shipped image (KEY=VALUE pairs)."""
    env: dict[str, str] = {}
    for step in final_stage():
        if step.keyword == "ENV":
            for pair in shlex.split(step.args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def image_cmd() -> list[str]:
    """The image's default arguments to the entrypoint."""
    return exec_form(next(i.args for i in final_stage() if i.keyword == "CMD"))


@dataclass(frozen=True, slots=True)
class Process:
    """One Tradewind container as a deployment file declares it."""

    where: str
    argv: tuple[str, ...]
    env: dict[str, str]
    """Literal values, the image's ENV included."""
    env_names: frozenset[str]
    """Every variable set, also those from secrets or the downward API."""
    ports: dict[str, int] = field(default_factory=dict)
    """Named container ports (Kubernetes only)."""
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def role(self) -> str:
        """scheduler, worker, db, ..."""
        return self.argv[0]

    def flag(self, name: str) -> str | None:
        """The value of --name VALUE or --name=VALUE, if given."""
        for i, arg in enumerate(self.argv):
            if arg == name and i + 1 < len(self.argv):
                return self.argv[i + 1]
            if arg.startswith(name + "="):
                return arg.partition("=")[2]
        return None

    def port(self, kind: str) -> int:
        """The port this process listens on for grpc, health or metrics (flags win over env)."""
        setting = {
            "grpc": "RPC__WORKER_PORT" if self.role == "worker" else "RPC__SCHEDULER_PORT",
            "health": "HEALTH__HEALTH_PORT",
            "metrics": "METRICS__METRICS_PORT",
        }[kind]
        value = self.flag(f"--{kind}-port") or self.env.get(ENV_PREFIX + setting)
        assert value is not None, f"{self.where}: no {kind} port configured"
        return int(value)


@cache
def compose() -> dict[str, Any]:
    """The compose file (YAML merge keys resolved); cached, so never modify it."""
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@cache
def compose_processes() -> list[Process]:
    """Every compose service that runs the Tradewind image."""
    out = []
    for name, svc in compose()["services"].items():
        if not str(svc.get("image", "")).startswith(IMAGE + ":"):
            continue
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        argv = tuple(svc.get("command") or image_cmd())
        out.append(
            Process(f"compose service {name}", argv, image_env() | env, frozenset(env), raw=svc)
        )
    return out


@cache
def k8s_objects() -> list[dict[str, Any]]:
    """Every object in ops/k8s except the kustomization."""
    return [
        doc
        for path in sorted(K8S.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in yaml_docs(path)
    ]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    """The object of that kind and name."""
    found = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name} in ops/k8s, found {len(found)}"
    return found[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod template spec of a Deployment or Job, else None."""
    if obj["kind"] not in ("Deployment", "Job"):
        return None
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def _k8s_env(container: dict[str, Any]) -> tuple[dict[str, str], set[str]]:
    literal: dict[str, str] = {}
    for source in container.get("envFrom", []):
        literal |= k8s_object("ConfigMap", source["configMapRef"]["name"])["data"]
    names = set(literal)
    for var in container.get("env", []):
        names.add(var["name"])
        if "value" in var:
            literal[var["name"]] = str(var["value"])
    return literal, names


@cache
def k8s_processes() -> list[Process]:
    """Every Tradewind container (init containers too) of the Deployments and Jobs."""
    out = []
    for obj in k8s_objects():
        spec = pod_spec(obj)
        for c in [] if spec is None else spec.get("initContainers", []) + spec["containers"]:
            if c["image"].partition(":")[0] != IMAGE:
                continue
            literal, names = _k8s_env(c)
            ports = {p["name"]: int(p["containerPort"]) for p in c.get("ports", [])}
            where = f"k8s {obj['kind']}/{obj['metadata']['name']} container {c['name']}"
            argv = tuple(c.get("args") or image_cmd())
            out.append(Process(where, argv, image_env() | literal, frozenset(names), ports, c))
    return out


def all_processes() -> list[Process]:
    """Compose and Kubernetes containers running Tradewind."""
    return compose_processes() + k8s_processes()


# ---------------------------------------------------------------- the CLI
@cache
def _parser() -> argparse.ArgumentParser:
    return build_parser()


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_error(argv: list[str]) -> str | None:
    """Why the real `tradewind` parser rejects argv, or None when it accepts it."""
    if argv and argv[0] not in _subcommands(_parser()):
        if argv[0] == "worker":
            return WORKER_PENDING
        return f"unknown command {argv[0]!r}"
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            _parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code:
            return stderr.getvalue().strip().splitlines()[-1]
    return None


def command_lines() -> Iterator[tuple[str, list[str]]]:
    """(where, argv) of every `tradewind` command in ops/: the image CMD, each container's
    arguments, and commands quoted in `backticks` in docs and alert annotations."""
    yield "Dockerfile CMD", image_cmd()
    for proc in all_processes():
        yield proc.where, list(proc.argv)
    for path in ops_files(".md", ".yml", ".yaml"):
        for command in dict.fromkeys(_INLINE_COMMAND.findall(path.read_text())):
            yield f"{path.relative_to(ROOT)}: `tradewind {command}`", shlex.split(command)


# ---------------------------------------------------------------- every file parses
@pytest.mark.parametrize("path", ops_files(".yml", ".yaml"), ids=lambda p: str(p.relative_to(OPS)))
def test_yaml_file_parses_into_mappings(path: Path) -> None:
    docs = yaml_docs(path)
    assert docs, f"{path} is empty"
    assert all(isinstance(doc, dict) for doc in docs), f"{path}: a document is not a mapping"


@pytest.mark.parametrize("path", ops_files(".json"), ids=lambda p: str(p.relative_to(OPS)))
def test_json_file_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text()), dict)


def test_the_ops_tree_holds_every_part() -> None:
    for part in (
        DOCKERFILE,
        COMPOSE,
        K8S / "kustomization.yaml",
        OPS / "prometheus" / "prometheus.yml",
        OPS / "prometheus" / "tradewind.rules.yml",
        OPS / "grafana" / "dashboard.json",
    ):
        assert part.is_file(), f"missing {part.relative_to(ROOT)}"
    assert list((OPS / "prometheus" / "tests").glob("*.yml")), "no promtool rule tests"


# ---------------------------------------------------------------- commands
def test_command_lines_are_found() -> None:
    roles = {argv[0] for _, argv in command_lines() if argv}
    assert {"scheduler", "worker", "db", "jobs"} <= roles


@pytest.mark.parametrize(
    ("where", "argv"), [pytest.param(where, argv, id=where) for where, argv in command_lines()]
)
def test_command_exists_in_the_cli_parser(where: str, argv: list[str]) -> None:
    problem = cli_error(argv)
    assert problem is None, f"{where}: `tradewind {' '.join(argv)}`: {problem}"


def test_cli_error_rejects_what_the_parser_rejects() -> None:
    assert cli_error(["scheduler", "--name", "a", "--grpc-port", "7400"]) is None
    assert "unrecognized arguments" in str(cli_error(["scheduler", "--nmae", "a"]))
    assert "invalid int value" in str(cli_error(["scheduler", "--grpc-port", "x"]))
    assert cli_error(["schedule"]) == "unknown command 'schedule'"


# ---------------------------------------------------------------- environment variables
def _setting_problem(name: str) -> str | None:
    if not name.startswith(ENV_PREFIX):
        return None if name in (HOME_ENV, CONFIG_ENV) else "not a Tradewind variable"
    section, sep, key = name.removeprefix(ENV_PREFIX).lower().partition("__")
    key = key.removesuffix("_cmd")
    if not sep or section not in SECTIONS:
        return f"no section [{section}] (sections: {', '.join(SECTIONS)})"
    if key not in SECTIONS[section].model_fields:
        return f"no key {section}.{key}"
    return None


def test_every_tradewind_variable_named_in_ops_is_a_setting() -> None:
    seen: dict[str, str] = {}
    for path in ops_files(".yml", ".yaml", ".md", ".py", ".json", ""):
        for name in _ENV_NAME.findall(path.read_text()):
            if not name.endswith("_"):  # TRADEWIND__<SECTION>__<KEY> in prose
                seen.setdefault(name, str(path.relative_to(ROOT)))
    assert len(seen) > 10
    problems = [f"{n} ({where}): {p}" for n, where in seen.items() if (p := _setting_problem(n))]
    assert not problems, "\n".join(problems)


def test_setting_check_catches_typos() -> None:
    assert _setting_problem("TRADEWIND__RPC__TOKEN_CMD") is None
    assert _setting_problem("TRADEWIND_HOME") is None
    assert _setting_problem("TRADEWIND__RPC__TOKENS") == "no key rpc.tokens"
    assert _setting_problem("TRADEWIND__METRIC__STATSD_ON") is not None
    assert _setting_problem("TRADEWIND_HOMEDIR") is not None


def _settings_tree(env: dict[str, str]) -> dict[str, dict[str, str]]:
    tree: dict[str, dict[str, str]] = {}
    for name, value in env.items():
        if name.startswith(ENV_PREFIX) and not name.endswith("_CMD"):
            section, _, key = name.removeprefix(ENV_PREFIX).lower().partition("__")
            tree.setdefault(section, {})[key] = value
    return tree


@pytest.mark.parametrize("proc", all_processes(), ids=lambda p: p.where)
def test_each_containers_settings_validate(proc: Process) -> None:
    Settings(**_settings_tree(proc.env))  # raises on a bad value or a broken cross-field rule


def test_settings_check_rejects_bad_values_and_broken_rules() -> None:
    with pytest.raises(ValidationError, match="scheduler_port"):
        Settings(**_settings_tree({ENV_PREFIX + "RPC__SCHEDULER_PORT": "70000"}))
    with pytest.raises(ValidationError, match="zombie_threshold_s"):
        Settings(**_settings_tree({ENV_PREFIX + "SCHEDULER__ZOMBIE_THRESHOLD_S": "5"}))
