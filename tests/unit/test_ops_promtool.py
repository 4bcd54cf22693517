"""promtool checks the alert rules, runs their unit tests, checks the compose scrape config and
the syntax of every dashboard query. Without promtool on PATH these fail when CI=true (CI installs
Debian's prometheus package) and are skipped otherwise."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.unit.test_ops import OPS, ROOT
from tests.unit.test_ops_metrics import RULE_TESTS, RULES, dashboard_queries

PROMETHEUS = OPS / "prometheus"
TIMEOUT_S = 60


def promtool() -> str:
    """promtool's path; fails under CI=true when it is missing, skips otherwise."""
    found = shutil.which("promtool")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail(
            "promtool is not on PATH but CI=true: install it "
            "(apt-get install -y prometheus) so the alert rules are checked"
        )
    pytest.skip("promtool is not on PATH (apt-get install -y prometheus); CI=true fails instead")


def run_promtool(*args: str) -> str:
    """Run promtool from the repository root; its output on success, a failure otherwise."""
    done = subprocess.run(
        [promtool(), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_alert_rules_pass_promtool_check() -> None:
    output = run_promtool("check", "rules", _relative(RULES))
    [doc] = yaml.safe_load_all(RULES.read_text())
    count = sum(len(group["rules"]) for group in doc["groups"])
    assert f"SUCCESS: {count} rules found" in output


def test_alert_rule_unit_tests_pass() -> None:
    assert RULE_TESTS
    output = run_promtool("test", "rules", *map(_relative, RULE_TESTS))
    assert output.count("SUCCESS") == len(RULE_TESTS)


def test_compose_scrape_config_passes_promtool_check() -> None:
    # prometheus-kubernetes.yml is left out: Debian builds Prometheus without Kubernetes
    # discovery, so its promtool rejects kubernetes_sd_configs; test_ops_topology checks it.
    run_promtool("check", "config", _relative(PROMETHEUS / "prometheus.yml"))


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    def concrete(expr: str) -> str:
        expr = re.sub(r"\$\{?__\w+\}?", "5m", expr)  # $__rate_interval
        return re.sub(r"\$\{?(\w+)\}?", r".*", expr)  # template variables, only in regexes

    records = [
        {"record": f"tradewind:dashboard_query_{i}", "expr": concrete(expr)}
        for i, (_, expr, _) in enumerate(dashboard_queries())
    ]
    rules = tmp_path / "dashboard.rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    output = run_promtool("check", "rules", str(rules))
    assert f"SUCCESS: {len(records)} rules found" in output


def test_promtool_reports_a_broken_rule(tmp_path: Path) -> None:
    broken = tmp_path / "broken.rules.yml"
    broken.write_text(
        "groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: rate(up[\n"
    )
    with pytest.raises(AssertionError, match="promtool check rules"):
        run_promtool("check", "rules", str(broken))
