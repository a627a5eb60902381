"""The observability path of the deployment, run natively.

The real service (`app-rank-monitor run`, polling a local fake Apple) is scraped by promtool
and by the real `prometheus` binary started with deploy/prometheus's scrape config and rules.
Every PromQL expression of the Grafana dashboards and the rules must name only metrics and
labels of that live scrape, and must run on that Prometheus.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support import promql
from tests.support.fake_apple import DEEPSEEK_US_TOP_FREE_RANKS
from tests.support.processes import environment, free_port, running, wait_for
from tests.support.tools import require
from tests.test_cli import deployment

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SCRAPE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DEFAULT_CHARTS = 33  # seeds/charts.toml
FAILING_CHART = "kr/top_paid"  # its feeds answer 500: failure series have samples too
POLLED_CHARTS = DEFAULT_CHARTS - 1
DEFAULT_WATCHLIST = 9  # seeds/watchlist.toml
DEEPSEEK_US_TOP_FREE = 'apprank_rank{app="DeepSeek",country="us",collection="top_free"}'
# Families the service declares before anything fills them (the alerting does): the scrape
# shows their names but not their labels yet.
DECLARED_EMPTY = {"apprank_alerts_total", "apprank_notifications_total"}
# Labels Prometheus itself attaches, or that histogram and grouping functions make.
PROMETHEUS_LABELS = {"job", "instance", "le", "alertname", "alertstate"}
PROMETHEUS_METRICS = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds"}


def scrape(port: int) -> str:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    response.raise_for_status()
    return response.text


def first_round_done(port: int) -> bool:
    try:
        text = scrape(port)
    except httpx.HTTPError:
        return False
    families = {family.name: family for family in text_string_to_metric_families(text)}
    if "apprank_chart_depth" not in families:  # still starting: /metrics answers without state
        return False
    failing = [
        sample
        for sample in families["apprank_chart_consecutive_failures"].samples
        if sample.value > 0
    ]
    return len(families["apprank_chart_depth"].samples) == POLLED_CHARTS and bool(failing)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The service on SQLite after its first poll round, in which one chart failed; yields
    its HTTP port."""
    directory = tmp_path_factory.mktemp("service")
    port = free_port()
    url = f"sqlite:///{directory / 'monitor.sqlite3'}"
    with deployment(directory, url, extra=f"[http]\nport = {port}\n") as deployed:
        deployed.apple.fail(FAILING_CHART)
        command = [sys.executable, "-m", "monitor", "--config", str(deployed.config), "run"]
        with running(command, env=environment()) as service:
            process = service.process
            wait_for(
                lambda: process.poll() is None and first_round_done(port),
                "the service's first poll round",
                60,
            )
            yield port


@pytest.fixture(scope="module")
def families(service: int) -> dict[str, Any]:
    """Every metric family of one live scrape, by name (counters without `_total`)."""
    return {family.name: family for family in text_string_to_metric_families(scrape(service))}


def test_promtool_accepts_the_live_scrape(service: int) -> None:
    promtool = require("promtool")

    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=scrape(service),
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == ""


def test_the_scrape_has_rank_and_listed_series_for_every_tracked_app_and_chart(
    families: dict[str, Any],
) -> None:
    listed = families["apprank_listed"].samples
    ranks = {
        (s.labels["app"], s.labels["country"], s.labels["collection"]): s.value
        for s in families["apprank_rank"].samples
    }

    assert len(listed) == DEFAULT_WATCHLIST * POLLED_CHARTS
    assert ranks["DeepSeek", "us", "top_free"] == DEEPSEEK_US_TOP_FREE_RANKS[0]
    assert len(families["apprank_app_info"].samples) == DEFAULT_WATCHLIST
    assert len(families["apprank_chart_depth"].samples) == POLLED_CHARTS
    failures = {
        s.labels["country"] + "/" + s.labels["collection"]: s.value
        for s in families["apprank_chart_consecutive_failures"].samples
    }
    assert len(failures) == DEFAULT_CHARTS
    assert {chart for chart, count in failures.items() if count} == {FAILING_CHART}
    assert {s.value for s in families["apprank_database_up"].samples} == {1}
    changed = sum(
        s.value
        for s in families["apprank_fetches"].samples
        if s.name == "apprank_fetches_total" and s.labels["outcome"] == "changed"
    )
    assert changed >= POLLED_CHARTS
    errors = {
        (s.labels["source"], s.labels["error"])
        for s in families["apprank_fetch_errors"].samples
        if s.name == "apprank_fetch_errors_total"
    }
    assert ("apple_v2", "HttpStatusError") in errors


# -- a real Prometheus -----------------------------------------------------------------------


class Prometheus:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


@pytest.fixture(scope="module")
def prometheus(service: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """The real Prometheus with the deployment's scrape config and rules, aimed at the
    service, scraping and evaluating every second."""
    binary = require("prometheus")
    directory = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load(SCRAPE_CONFIG.read_text(encoding="utf-8"))
    config["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(path) for path in promql.rule_files(ROOT)]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{service}"]}]
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    command = [
        binary,
        f"--config.file={directory / 'prometheus.yml'}",
        f"--storage.tsdb.path={directory / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with running(command) as started:
        process = started.process
        server = Prometheus(port)
        wait_for(lambda: process.poll() is None and server.ready(), "Prometheus to start", 60)
        wait_for(lambda: bool(server.query(DEEPSEEK_US_TOP_FREE)), "a scrape of the service", 60)
        yield server


def test_a_real_prometheus_scrapes_the_service_and_returns_a_rank_series(
    prometheus: Prometheus, service: int
) -> None:
    (series,) = prometheus.query(DEEPSEEK_US_TOP_FREE)

    assert series["metric"] == {
        "__name__": "apprank_rank",
        "app": "DeepSeek",
        "store": "apple",
        "country": "us",
        "collection": "top_free",
        "device": "iphone",
        "genre": "all",
        "job": "app-rank-monitor",
        "instance": f"127.0.0.1:{service}",
    }
    assert float(series["value"][1]) == DEEPSEEK_US_TOP_FREE_RANKS[0]
    (up,) = prometheus.query('up{job="app-rank-monitor"}')
    assert up["value"][1] == "1"


def test_every_rule_loads_and_evaluates_without_error(prometheus: Prometheus) -> None:
    def rules() -> list[dict[str, Any]]:
        groups = prometheus.api("rules")["groups"]
        return [rule for group in groups for rule in group["rules"]]

    wait_for(lambda: all(r.get("lastEvaluation", "0001").startswith("2") for r in rules()),
             "every rule to be evaluated", 30)  # fmt: skip

    loaded = rules()
    assert loaded
    assert [r["name"] for r in loaded if r["health"] != "ok"] == []
    expected = {e.origin + e.expr for e in promql.collect_expressions(ROOT) if "rules" in e.origin}
    assert len(loaded) == len(expected)


def test_every_dashboard_and_rule_expression_runs_on_prometheus(prometheus: Prometheus) -> None:
    for expression in promql.collect_expressions(ROOT):
        if not expression.expr:
            continue
        # A variable's selector, or a panel's or rule's expression: both must run.
        prometheus.query(promql.executable(expression.expr))


def test_dashboards_and_rules_name_only_metrics_and_labels_the_service_exposes(
    families: dict[str, Any],
) -> None:
    exposed: dict[str, set[str]] = {}
    for family in families.values():
        for sample in family.samples:
            exposed.setdefault(sample.name, set()).update(sample.labels)
    declared = {
        name
        for family in families.values()
        for name in (family.name, f"{family.name}_total")
        if not family.samples
    }
    assert declared & {f"{name}" for name in DECLARED_EMPTY} == DECLARED_EMPTY, (
        "families without samples changed: update DECLARED_EMPTY"
    )
    recorded = promql.recorded_metric_names(ROOT)  # defined by the rules, never scraped
    problems = []
    for expression in promql.collect_expressions(ROOT):
        metrics = expression.metric_names() - PROMETHEUS_METRICS - recorded
        unknown = metrics - exposed.keys() - DECLARED_EMPTY
        if unknown:
            problems.append(f"{expression.origin}: unknown metrics {sorted(unknown)}")
        if metrics & DECLARED_EMPTY:
            continue  # their labels show once they have samples
        known_labels = set().union(*(exposed.get(m, set()) for m in metrics)) | PROMETHEUS_LABELS
        if unknown_labels := expression.label_names() - known_labels:
            problems.append(
                f"{expression.origin}: labels {sorted(unknown_labels)} not on {sorted(metrics)}"
            )
    assert problems == []
    assert len(promql.collect_expressions(ROOT)) > 20  # the dashboards and rules were read
