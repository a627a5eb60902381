"""The Prometheus deployment files, checked with the tools that read them: `promtool check
config` on the scrape config (with its rule files where compose mounts them), `promtool check
rules`, `promtool test rules` on the rules' unit tests, and yamllint. Plus what promtool does
not check: every alert carries a severity, a summary and a description, and has unit tests that
see it fire and stay silent.

Without promtool (Debian package prometheus) or yamllint the tests skip with the reason, except
under CI=true where that fails.
"""

from __future__ import annotations

import glob
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.tools import assert_lints_clean, require

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES_DIR = PROMETHEUS_DIR / "rules"
RULES = RULES_DIR / "app-rank-monitor.yml"
RULE_TESTS = PROMETHEUS_DIR / "tests" / "app-rank-monitor.test.yml"
# Where docker compose mounts RULES_DIR in the Prometheus container.
CONTAINER_RULES_DIR = "/etc/prometheus/rules"
JOB = "app-rank-monitor"
SEVERITIES = {"critical", "warning", "info"}


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return document


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require("promtool", package="prometheus"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def alerting_rules() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"] if "alert" in rule]


def test_prometheus_scrapes_the_compose_monitor_service_as_the_job_the_rules_expect() -> None:
    config = load(CONFIG)
    (scrape,) = config["scrape_configs"]
    (static,) = scrape["static_configs"]
    monitor = load(COMPOSE_FILE)["services"]["monitor"]
    jobs_in_rules = set(re.findall(r'job="([^"]*)"', RULES.read_text(encoding="utf-8")))

    assert config["global"] == {"scrape_interval": "30s", "evaluation_interval": "30s"}
    assert scrape["job_name"] == JOB
    assert jobs_in_rules == {JOB}
    assert scrape["metrics_path"] == "/metrics"
    assert static["targets"] == ["monitor:10127"]
    assert any(str(port).endswith(":10127") for port in monitor["ports"])  # its container port


def test_the_scrape_config_is_valid_with_the_rule_files_it_loads(tmp_path: Path) -> None:
    """The config names the rules by their path in the container; the copy checked here names
    the same glob in the repository, so promtool loads every file Prometheus would."""
    config = load(CONFIG)
    patterns = config["rule_files"]
    assert patterns
    assert all(pattern.startswith(f"{CONTAINER_RULES_DIR}/") for pattern in patterns), patterns
    local = [f"{RULES_DIR}{pattern.removeprefix(CONTAINER_RULES_DIR)}" for pattern in patterns]
    # Without a match `check config` would pass without checking a single rule.
    assert RULES in {Path(match) for pattern in local for match in glob.glob(pattern)}
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump({**config, "rule_files": local}), encoding="utf-8")

    result = promtool("check", "config", "--lint-fatal", str(copy))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "rule files found" in result.stdout


def test_the_rules_pass_promtool_check_rules() -> None:
    result = promtool("check", "rules", "--lint-fatal", str(RULES))

    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_pass_their_unit_tests() -> None:
    tested_files = [RULE_TESTS.parent / name for name in load(RULE_TESTS)["rule_files"]]
    assert [path.resolve() for path in tested_files] == [RULES]

    result = promtool("test", "rules", str(RULE_TESTS))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_severity_a_summary_and_a_description() -> None:
    rules = alerting_rules()
    problems = []
    for rule in rules:
        if rule.get("labels", {}).get("severity") not in SEVERITIES:
            problems.append(f"{rule['alert']}: severity is not one of {sorted(SEVERITIES)}")
        for key in ("summary", "description"):
            if "{{" not in str(rule.get("annotations", {}).get(key, "")):
                problems.append(f"{rule['alert']}: no templated {key} annotation")

    assert rules
    assert problems == []


def test_every_alert_has_unit_tests_where_it_fires_and_where_it_does_not() -> None:
    alerts = {rule["alert"] for rule in alerting_rules()}
    cases = [case for test in load(RULE_TESTS)["tests"] for case in test.get("alert_rule_test", [])]
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    silent = {case["alertname"] for case in cases if not case.get("exp_alerts")}

    assert sorted(alerts - firing) == [], "no test sees these fire"
    assert sorted(alerts - silent) == [], "no test sees these stay silent"
    # A test of an alert that no longer exists expects nothing and passes whatever happens.
    assert sorted((firing | silent) - alerts) == [], "tests of alerts not in the rules"


@pytest.mark.parametrize("path", [CONFIG, RULES, RULE_TESTS], ids=lambda path: path.name)
def test_the_prometheus_yaml_lints_clean(path: Path) -> None:
    assert_lints_clean(ROOT, path)
