"""The container image: every COPY source is in the repository and in the build context, the
image runs as a non-root user, its entrypoint is the project's script, and it exposes and probes
exactly the ports it configures."""

from __future__ import annotations

import re
import shlex
import tomllib
from typing import Any

from tests.unit.test_ops import (
    DOCKERIGNORE,
    ROOT,
    cli_error,
    dockerfile,
    exec_form,
    final_stage,
    image_cmd,
    image_env,
)
from tradewind_cluster.config.settings import ENV_PREFIX


def _ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.removeprefix("!").rstrip("/")
        if any(re.fullmatch(_glob_regex(glob), c) for c in candidates):
            ignored = not negate
    return ignored


def _glob_regex(glob: str) -> str:
    out = ""
    for token in re.split(r"(\*\*|\*|\?)", glob):
        out += {"**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return out


def test_every_copy_source_exists_and_is_in_the_build_context() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = [i for i in dockerfile() if i.keyword in ("COPY", "ADD") and "--from" not in i.args]
    assert copies
    for step in copies:
        words = [w for w in shlex.split(step.args) if not w.startswith("--")]
        for source in words[:-1]:
            rel = source.removeprefix("./").rstrip("/")
            assert (ROOT / rel).exists(), f"COPY {source}: no such file in the repository"
            assert not _ignored(rel, patterns), f"COPY {source}: excluded by {DOCKERIGNORE.name}"
    assert _ignored("tests/unit/test_ops.py", patterns), "tests must stay out of the context"


def test_image_runs_as_a_non_root_user_it_creates() -> None:
    users = [i.args for i in final_stage() if i.keyword == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    uid = users[-1].partition(":")[0]
    assert uid.isdigit(), f"USER {users[-1]}: use a numeric uid (runAsNonRoot checks it)"
    assert int(uid) > 0, f"USER {users[-1]} is root"
    runs = " ".join(i.args for i in final_stage() if i.keyword == "RUN")
    assert f"--uid {uid}" in runs, f"no useradd creates uid {uid}"


def test_image_is_python_3_11_slim_in_every_stage() -> None:
    args = {
        i.args.partition("=")[0]: i.args.partition("=")[2]
        for i in dockerfile()
        if i.keyword == "ARG"
    }
    assert args.get("PYTHON_VERSION") == "3.11"
    froms = [i.args.split()[0] for i in dockerfile() if i.keyword == "FROM"]
    assert froms
    assert set(froms) == {"python:${PYTHON_VERSION}-slim"}


def test_entrypoint_is_the_project_script_and_cmd_a_real_command() -> None:
    [entry] = [i.args for i in final_stage() if i.keyword == "ENTRYPOINT"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert exec_form(entry) == ["tradewind"]
    assert "tradewind" in scripts
    assert cli_error(image_cmd()) is None


def test_exposed_ports_are_exactly_the_configured_ones() -> None:
    env = image_env()
    exposed = {int(p) for i in final_stage() if i.keyword == "EXPOSE" for p in i.args.split()}
    configured = {
        int(env[ENV_PREFIX + key])
        for key in (
            "RPC__SCHEDULER_PORT",
            "RPC__WORKER_PORT",
            "HEALTH__HEALTH_PORT",
            "METRICS__METRICS_PORT",
        )
    }
    assert exposed == configured
    assert 0 not in configured, "port 0 is a random port: probes and peers could not find it"
    for key in ("RPC__BIND_HOST", "HEALTH__BIND_HOST", "METRICS__BIND_HOST"):
        assert env[ENV_PREFIX + key] == "0.0.0.0", f"{key}: reachable only inside the container"


def test_healthcheck_probes_health_on_the_configured_port() -> None:
    [check] = [i.args for i in final_stage() if i.keyword == "HEALTHCHECK"]
    argv = exec_form(check.partition("CMD")[2].strip())
    assert argv[0] == "python"
    script = argv[1]
    copied = [i.args.split() for i in final_stage() if i.keyword == "COPY"]
    [(source, _)] = [(words[-2], words[-1]) for words in copied if words[-1] == script]
    namespace: dict[str, Any] = {"__name__": "healthcheck"}
    exec(compile((ROOT / source).read_text(), source, "exec"), namespace)
    assert namespace["health_url"](image_env()) == "http://127.0.0.1:8080/health"
    assert namespace["health_url"]({namespace["PORT_ENV"]: "9999"}).endswith(":9999/health")
    assert image_env()[namespace["PORT_ENV"]] == "8080"
