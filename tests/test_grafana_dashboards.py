"""The Grafana part of the docker compose deployment, checked statically (no Grafana runs
here): the provisioning YAML, the two dashboards' JSON, and the PromQL they run, extracted by
tests/support/promql.py (unit-tested here too) and parsed by promtool.

The dashboards are written for Grafana 11.6 (grafana/grafana-oss:11.6.5), whose dashboards
are at schema version 41. Without yamllint or promtool the tests needing them skip with the
reason, except under CI=true where that fails.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.compose import bind_mounts
from tests.support.promql import (
    Expression,
    collect_expressions,
    dashboard_expressions,
    executable,
    iter_panels,
    label_names,
    metric_names,
    recorded_metric_names,
    variable_expression,
)
from tests.support.tools import assert_lints_clean, require

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DATASOURCE_FILE = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDER_FILE = GRAFANA / "provisioning" / "dashboards" / "app-rank-monitor.yml"
DASHBOARDS_DIR = GRAFANA / "dashboards"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
COMPOSE_FILE = ROOT / "docker-compose.yml"

DATASOURCE_UID = "apprank-prometheus"
GRAFANA_IMAGE = re.compile(r"grafana/grafana(-oss)?:11\.6\.\d+")
SCHEMA_VERSION = 41  # what Grafana 11.6 saves
DASHBOARDS = {
    "rankings.json": ("apprank-rankings", "App rankings"),
    "service-health.json": ("apprank-service-health", "App rank monitor: service health"),
}
CHART_VARIABLES = ("app", "country", "collection", "device")


def load_yaml(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return document


def load_dashboard(name: str) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads((DASHBOARDS_DIR / name).read_text(encoding="utf-8"))
    return dashboard


def panel(dashboard: Mapping[str, Any], title: str) -> Mapping[str, Any]:
    (found,) = [p for p in iter_panels(dashboard) if p.get("title") == title]
    return found


def variables(dashboard: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def expressions_of(name: str) -> list[Expression]:
    return dashboard_expressions(load_dashboard(name), name)


def expression(name: str, *origin_parts: str) -> Expression:
    (found,) = [e for e in expressions_of(name) if all(p in e.origin for p in origin_parts)]
    return found


# --------------------------------------------------------------------- provisioning


def test_the_provisioning_yaml_lints_clean() -> None:
    assert_lints_clean(ROOT, DATASOURCE_FILE, PROVIDER_FILE)


def test_the_datasource_is_the_compose_prometheus_under_a_fixed_uid() -> None:
    document = load_yaml(DATASOURCE_FILE)

    assert document["apiVersion"] == 1
    (datasource,) = document["datasources"]
    assert datasource["uid"] == DATASOURCE_UID
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["access"] == "proxy"
    assert datasource["isDefault"] is True
    assert datasource["editable"] is False


def test_the_datasource_scrape_interval_is_prometheus_own() -> None:
    """$__rate_interval is derived from the data source's scrape interval (timeInterval): at
    less than Prometheus' real one, the dashboards' rate() windows hold one sample and show
    nothing."""
    prometheus = load_yaml(PROMETHEUS_CONFIG)
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "app-rank-monitor"]
    scrape_interval = job.get("scrape_interval", prometheus["global"]["scrape_interval"])

    (datasource,) = load_yaml(DATASOURCE_FILE)["datasources"]
    assert datasource["jsonData"]["timeInterval"] == scrape_interval


def test_the_provider_loads_the_dashboards_read_only_into_their_folder() -> None:
    document = load_yaml(PROVIDER_FILE)

    assert document["apiVersion"] == 1
    (provider,) = document["providers"]
    assert provider["type"] == "file"
    assert provider["folder"] == "App rank monitor"
    assert provider["allowUiUpdates"] is False
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_the_compose_grafana_runs_the_targeted_version_with_these_files() -> None:
    grafana = load_yaml(COMPOSE_FILE)["services"]["grafana"]

    assert GRAFANA_IMAGE.fullmatch(grafana["image"]), grafana["image"]
    mounts = bind_mounts(grafana, ROOT)
    provider = load_yaml(PROVIDER_FILE)["providers"][0]
    assert mounts.get(provider["options"]["path"]) == DASHBOARDS_DIR.resolve()
    provisioning = mounts.get("/etc/grafana/provisioning")
    datasources = mounts.get("/etc/grafana/provisioning/datasources")
    assert (
        provisioning == (GRAFANA / "provisioning").resolve()
        or datasources == DATASOURCE_FILE.parent.resolve()
    ), mounts


# --------------------------------------------------------------------- dashboards


@pytest.fixture(params=sorted(DASHBOARDS))
def dashboard_file(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def queries(dashboard: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(where, datasource reference) of every panel, target and variable that queries."""
    for p in iter_panels(dashboard):
        if p["type"] == "row":
            continue
        yield f"panel {p['title']!r}", p.get("datasource") or {}
        for target in p.get("targets") or []:
            yield f"panel {p['title']!r} target {target['refId']}", target.get("datasource") or {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield f"variable {variable['name']!r}", variable.get("datasource") or {}


def test_each_dashboard_has_its_fixed_uid_title_and_schema(dashboard_file: str) -> None:
    dashboard = load_dashboard(dashboard_file)

    assert (dashboard["uid"], dashboard["title"]) == DASHBOARDS[dashboard_file]
    assert dashboard["schemaVersion"] == SCHEMA_VERSION
    assert "id" not in dashboard or dashboard["id"] is None  # provisioning assigns it


def test_each_dashboard_has_unique_panel_ids(dashboard_file: str) -> None:
    ids = [p["id"] for p in iter_panels(load_dashboard(dashboard_file))]

    assert len(ids) == len(set(ids)), sorted(ids)
    assert all(isinstance(i, int) for i in ids)


def test_each_dashboard_lays_its_panels_out_without_overlap(dashboard_file: str) -> None:
    cells: dict[tuple[int, int], str] = {}
    for p in iter_panels(load_dashboard(dashboard_file)):
        pos = p["gridPos"]
        assert 0 <= pos["x"] < pos["x"] + pos["w"] <= 24, p["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, (p["title"], cells[x, y])
                cells[x, y] = p["title"]


def test_every_query_uses_the_datasource_by_its_uid(dashboard_file: str) -> None:
    found = list(queries(load_dashboard(dashboard_file)))

    assert found
    wrong = [(where, ref) for where, ref in found if ref.get("uid") != DATASOURCE_UID]
    assert not wrong
    assert {ref.get("type") for _, ref in found} == {"prometheus"}


def test_every_panel_is_titled_and_described(dashboard_file: str) -> None:
    for p in iter_panels(load_dashboard(dashboard_file)):
        assert p.get("title", "").strip(), p["id"]
        if p["type"] == "row":
            assert not p.get("targets"), p["title"]
        else:
            assert len(p.get("description", "")) >= 40, p["title"]
            assert p["targets"], p["title"]


def test_every_dashboard_expression_references_apprank_metrics(dashboard_file: str) -> None:
    """Whatever a panel or a variable queries, the extraction finds its metrics: an
    expression yielding none would mean the extraction (or the query) is broken."""
    found = expressions_of(dashboard_file)

    assert found
    for e in found:
        metrics = e.metric_names()
        assert metrics, e
        assert all(m.startswith("apprank_") for m in metrics), e


def test_every_expression_parses_with_promtool(tmp_path: Path) -> None:
    """All dashboard and rule expressions, their Grafana variables substituted, as recording
    rules: `promtool check rules` parses each."""
    rules = [
        {"record": f"dashboard:expression_{i}:check", "expr": executable(e.expr)}
        for i, e in enumerate(collect_expressions(ROOT))
        if e.expr
    ]
    rule_file = tmp_path / "expressions.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "all", "rules": rules}]}))

    result = subprocess.run(
        [require("promtool", package="prometheus"), "check", "rules", str(rule_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_the_rank_axis_is_inverted_with_the_negative_y_transform() -> None:
    """Grafana 11's time series panel cannot invert an axis; the documented "Negative Y"
    transform, an override on every numeric field, draws rank r at -r, so rank 1 is on top.
    The hard axis maximum -1 is rank 1, the best there is."""
    rank = panel(load_dashboard("rankings.json"), "Rank over time")
    defaults = rank["fieldConfig"]["defaults"]

    assert rank["type"] == "timeseries"
    transforms = [
        (override["matcher"], prop["value"])
        for override in rank["fieldConfig"]["overrides"]
        for prop in override["properties"]
        if prop["id"] == "custom.transform"
    ]
    assert transforms == [({"id": "byType", "options": "number"}, "negative-Y")]
    assert defaults["max"] == -1
    assert "min" not in defaults
    assert defaults["decimals"] == 0
    assert defaults["custom"]["lineInterpolation"] in {"stepAfter", "stepBefore"}
    assert defaults["custom"]["spanNulls"] is False
    # Null insertion at missing steps (the gaps while not listed) needs insertNulls unset:
    # `false` would disable it.
    assert "insertNulls" not in defaults["custom"]
    assert "Negative Y" in rank["description"]
    (target,) = rank["targets"]
    assert target["legendFormat"].startswith("{{app}} {{country}} {{collection}} {{device}}")


def test_the_chart_variables_are_chained_multi_value_label_values_queries() -> None:
    by_name = variables(load_dashboard("rankings.json"))

    for position, name in enumerate(CHART_VARIABLES):
        variable = by_name[name]
        assert variable["type"] == "query"
        assert variable["multi"] is True
        assert variable["includeAll"] is True
        assert variable["refresh"] == 2  # on time range change
        query = variable["query"]["query"]
        assert query.startswith("label_values(apprank_listed")
        e = variable_expression(query, name)
        assert e.extra_labels == {name}
        # Each narrows by the ones before it.
        for earlier in CHART_VARIABLES[:position]:
            assert f'{earlier}=~"${earlier}"' in e.expr, query


def test_the_rank_panels_filter_by_every_chart_variable() -> None:
    for e in expressions_of("rankings.json"):
        if "apprank_rank" in e.metric_names():
            for name in CHART_VARIABLES:
                assert f'{name}=~"${name}"' in e.expr, e


def test_the_instance_variable_filters_every_per_process_counter() -> None:
    """Counters and histograms are counted by each process: the service health dashboard
    narrows them to the selected instances."""
    instance = variables(load_dashboard("service-health.json"))["instance"]
    assert instance["query"]["query"] == "label_values(apprank_build_info, instance)"
    assert instance["multi"] is True
    assert instance["includeAll"] is True

    counters = [
        e
        for e in expressions_of("service-health.json")
        if any(m.endswith(("_total", "_bucket")) for m in e.metric_names())
    ]
    assert len(counters) >= 8
    for e in counters:
        assert e.expr.count('instance=~"$instance"') == e.expr.count("apprank_"), e


def test_the_extraction_finds_the_metrics_and_labels_of_known_panels() -> None:
    rank = expression("rankings.json", "'Rank over time'")
    assert rank.metric_names() == {"apprank_rank"}
    assert rank.label_names() == {*CHART_VARIABLES, "genre", "instance"}

    movers = expression("rankings.json", "'Biggest movers (24h)'")
    assert movers.metric_names() == {"apprank_rank"}
    assert "offset 24h" in movers.expr

    country = expression("rankings.json", "variable 'country'")
    assert country.metric_names() == {"apprank_listed"}
    assert country.label_names() == {"app", "country"}

    p50, p95 = (
        e for e in expressions_of("service-health.json") if "'Fetch duration p50 / p95'" in e.origin
    )
    for e in (p50, p95):
        assert e.metric_names() == {"apprank_fetch_duration_seconds_bucket"}
        assert e.label_names() == {"le", "source", "instance"}

    failing = expression("service-health.json", "'Charts with failed polls'", "target B")
    assert failing.metric_names() == {
        "apprank_last_success_timestamp_seconds",
        "apprank_chart_consecutive_failures",
    }
    assert {"store", "country", "collection", "device", "genre"} <= failing.label_names()


# --------------------------------------------------------------------- tests/support/promql.py


@pytest.mark.parametrize(
    ("expr", "metrics", "labels"),
    [
        pytest.param(
            "histogram_quantile(0.95, sum by (le, source) "
            '(rate(apprank_fetch_duration_seconds_bucket{instance=~"$instance"}'
            "[$__rate_interval])))",
            {"apprank_fetch_duration_seconds_bucket"},
            {"le", "source", "instance"},
            id="histogram_quantile-by-le",
        ),
        pytest.param(
            "sum without (instance) (rate(x_total[5m])) BY (le)",
            {"x_total"},
            {"instance", "le"},
            id="grouping-before-and-after",
        ),
        pytest.param(
            'apprank_rank{app=~"$app"} offset 24h - apprank_rank offset 1h30m',
            {"apprank_rank"},
            {"app"},
            id="offset",
        ),
        pytest.param(
            "apprank_rank * on (app, store) group_left () apprank_app_info",
            {"apprank_rank", "apprank_app_info"},
            {"app", "store"},
            id="group_left-empty",
        ),
        pytest.param(
            "a / ignoring(code) group_right(name, store_id) b * on() group_left c",
            {"a", "b", "c"},
            {"code", "name", "store_id"},
            id="ignoring-group_right-bare-group_left",
        ),
        pytest.param(
            'label_replace(up{job="apprank_fake_metric rate(x)"}, "dst", "$1", '
            "'src', `(apprank_other)`)",
            {"up"},
            {"job"},
            id="string-literals",
        ),
        pytest.param(
            'count by (app) (x{a="b\\"c {d=e}"} <= 10) or 0 * count by (app) (y)',
            {"x", "y"},
            {"a", "app"},
            id="escaped-quote-in-string",
        ),
        pytest.param(
            "rate(x[${__rate_interval}]) + rate(y[$__interval]) * [[factor]] + z[$__range]",
            {"x", "y", "z"},
            set(),
            id="grafana-interval-variables",
        ),
        pytest.param(
            "SUM BY (a) (x) AND ON (a) y UNLESS z > BOOL 1e3",
            {"x", "y", "z"},
            {"a"},
            id="uppercase-keywords",
        ),
        pytest.param(
            "max_over_time(job:apprank_rank:min5m[1h:5m]) @ start()",
            {"job:apprank_rank:min5m"},
            set(),
            id="subquery-at-recording-rule-name",
        ),
        pytest.param(
            '{__name__="apprank_listed", app="x"} # apprank_in_a_comment',
            {"apprank_listed"},
            {"app"},
            id="name-matcher-and-comment",
        ),
        pytest.param(
            "topk(10, (a offset 24h - a) > 0) or bottomk(10, quantile(0.5, b) < -Inf)",
            {"a", "b"},
            set(),
            id="topk-bottomk-quantile",
        ),
        pytest.param("time() - vector(1)", set(), set(), id="no-metric"),
    ],
)
def test_metric_and_label_names_are_extracted(
    expr: str, metrics: set[str], labels: set[str]
) -> None:
    assert metric_names(expr) == metrics
    assert label_names(expr) == labels


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        pytest.param(
            'x{app=~"$app",country=~"${country}",device=~"${device:regex}"}',
            'x{app=~".+",country=~".+",device=~".+"}',
            id="in-strings",
        ),
        pytest.param(
            "rate(x[$__rate_interval]) + rate(y[$__interval]) + increase(z[${__range}])",
            "rate(x[1m]) + rate(y[30s]) + increase(z[1h])",
            id="intervals",
        ),
        pytest.param(
            'label_replace(x, "dst", "$1", "src", "(.*)") / $__range_s',
            'label_replace(x, "dst", "$1", "src", "(.*)") / 3600',
            id="back-reference-kept",
        ),
    ],
)
def test_executable_substitutes_grafana_variables(expr: str, expected: str) -> None:
    assert executable(expr) == expected


def test_executable_refuses_a_variable_it_cannot_guess() -> None:
    with pytest.raises(ValueError, match=r"\$count"):
        executable("topk($count, x)")


def test_variable_queries_become_selector_and_label() -> None:
    e = variable_expression(
        'label_values(apprank_listed{app=~"$app",country=~"a,b"}, collection)', "v"
    )
    assert e.expr == 'apprank_listed{app=~"$app",country=~"a,b"}'
    assert e.label_names() == {"app", "country", "collection"}
    assert variable_expression("label_values(app)", "v") == Expression("v", "", frozenset({"app"}))
    assert variable_expression("query_result(topk(5, x))", "v").metric_names() == {"x"}
    with pytest.raises(ValueError, match="unsupported"):
        variable_expression("metrics(apprank_.*)", "v")


def test_expressions_are_collected_from_nested_rows_variables_and_rule_files(
    tmp_path: Path,
) -> None:
    dashboards = tmp_path / "deploy" / "grafana" / "dashboards"
    rules = tmp_path / "deploy" / "prometheus" / "rules"
    dashboards.mkdir(parents=True)
    rules.mkdir(parents=True)
    board = {
        "panels": [
            {
                "id": 1,
                "type": "timeseries",
                "title": "top",
                "targets": [{"refId": "A", "expr": "a"}],
            },
            {
                "id": 2,
                "type": "row",
                "title": "collapsed",
                "collapsed": True,
                "panels": [
                    {
                        "id": 3,
                        "type": "table",
                        "title": "nested",
                        "targets": [{"refId": "A", "expr": "b"}, {"refId": "B", "expr": " "}],
                    }
                ],
            },
        ],
        "templating": {
            "list": [
                {"name": "v1", "type": "query", "query": "label_values(c, l1)"},
                {"name": "v2", "type": "query", "query": {"query": "label_values(d{x='y'}, l2)"}},
                {"name": "v3", "type": "custom", "query": "a,b"},
            ]
        },
    }
    (dashboards / "board.json").write_text(json.dumps(board))
    rule_file = {
        "groups": [
            {
                "name": "g",
                "rules": [{"record": "r:e:sum", "expr": "sum(e)"}, {"alert": "F", "expr": 1}],
            }
        ]
    }
    (rules / "rules.yml").write_text(yaml.safe_dump(rule_file))
    (rules / "rules.test.yml").write_text("rule_files: [rules.yml]\ntests: []\n")

    found = collect_expressions(tmp_path)

    assert [(e.expr, set(e.extra_labels)) for e in found] == [
        ("a", set()),
        ("b", set()),
        ("c", {"l1"}),
        ("d{x='y'}", {"l2"}),
        ("sum(e)", set()),
        ("1", set()),
    ]
    assert "panel 'nested' (id 3) target A" in found[1].origin
    assert recorded_metric_names(tmp_path) == {"r:e:sum"}
