"""The PromQL of the deployment: every expression the Grafana dashboards and the Prometheus
rules run, and the metric and label names each references.

Not a parser: a regex tokenizer that knows PromQL's keywords, aggregation operators and
grouping clauses. String literals are blanked first (metric-like words in them are not
references), so are Grafana's template variables ($app, ${app}, [[app]], $__rate_interval).
`executable` substitutes those variables instead, so a real Prometheus can run the expression.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

DASHBOARDS_DIR = Path("deploy/grafana/dashboards")
RULES_DIR = Path("deploy/prometheus/rules")

AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)
# Clauses followed by a parenthesised list of label names.
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = GROUPING | frozenset({"and", "or", "unless", "offset", "bool", "atan2", "inf", "nan"})

# Grafana's built-in interval variables, as `executable` replaces them.
BUILTIN_VALUES = {
    "__rate_interval": "1m",
    "__rate_interval_ms": "60000",
    "__interval": "30s",
    "__interval_ms": "30000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
# What a template variable inside a string literal (a label matcher's value) becomes.
MATCH_ANY = ".+"

_STRING = re.compile(r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`""", re.DOTALL)
_COMMENT = re.compile(r"#[^\n]*")
# $name, ${name}, ${name:format}, [[name]], [[name:format]]; not $1 (a regex back-reference).
_VARIABLE = re.compile(
    r"\$\{(?P<braced>[A-Za-z_]\w*)(?::[^}]*)?\}"
    r"|\[\[(?P<bracketed>[A-Za-z_]\w*)(?::[^\]]*)?\]\]"
    r"|\$(?P<plain>[A-Za-z_]\w*)"
)
# Numbers and durations first, so "5m" or "1e3" never yields an identifier "m" or "e3".
_TOKEN = re.compile(
    r"(?P<number>\d[\w.]*|\.\d[\w.]*)"
    r"|(?P<ident>[A-Za-z_][\w:]*)"
    r"|(?P<punct>\S)"
)
_NAME_MATCHER = re.compile(r"""\b__name__\s*=\s*(?:"([^"\\]*)"|'([^'\\]*)')""")
_LABEL_VALUES = re.compile(
    r"^\s*label_values\s*\(\s*(?:(?P<selector>.+?)\s*,\s*)?(?P<label>[A-Za-z_]\w*)\s*\)\s*$",
    re.DOTALL,
)
_QUERY_RESULT = re.compile(r"^\s*query_result\s*\((?P<expr>.+)\)\s*$", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Expression:
    """One PromQL expression and where it comes from.

    For a `label_values(SELECTOR, LABEL)` variable, `expr` is the selector (empty when the
    query names no metric) and `extra_labels` holds LABEL.
    """

    origin: str
    expr: str
    extra_labels: frozenset[str] = frozenset()

    def metric_names(self) -> set[str]:
        return metric_names(self.expr)

    def label_names(self) -> set[str]:
        return label_names(self.expr) | set(self.extra_labels)


def collect_expressions(root: Path) -> list[Expression]:
    """Every expression of the dashboards under `root`, then of its Prometheus rule files
    (if any; `*.test.yml` unit-test files are not rule files)."""
    expressions: list[Expression] = []
    for path in sorted((root / DASHBOARDS_DIR).glob("*.json")):
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        expressions.extend(dashboard_expressions(dashboard, str(path.relative_to(root))))
    for path in rule_files(root):
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        expressions.extend(rule_expressions(document, str(path.relative_to(root))))
    return expressions


def rule_files(root: Path) -> list[Path]:
    directory = root / RULES_DIR
    return sorted(
        path
        for pattern in ("*.yml", "*.yaml")
        for path in directory.glob(pattern)
        if not path.name.endswith((".test.yml", ".test.yaml"))
    )


def dashboard_expressions(dashboard: Mapping[str, Any], origin: str) -> list[Expression]:
    """Every target's `expr` of every panel (rows' nested panels too), then every query
    variable's query."""
    expressions: list[Expression] = []
    for panel in iter_panels(dashboard):
        where = f"{origin}: panel {panel.get('title', '')!r} (id {panel.get('id')})"
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if isinstance(expr, str) and expr.strip():
                expressions.append(Expression(f"{where} target {target.get('refId')}", expr))
    for variable in (dashboard.get("templating") or {}).get("list") or []:
        if variable.get("type") == "query":
            query = variable.get("query")
            text = query.get("query", "") if isinstance(query, Mapping) else query
            where = f"{origin}: variable {variable.get('name')!r}"
            expressions.append(variable_expression(str(text or ""), where))
    return expressions


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """The dashboard's panels, depth first: a collapsed row keeps its panels in `panels`."""

    def walk(panels: Any) -> Iterator[Mapping[str, Any]]:
        for panel in panels or []:
            yield panel
            yield from walk(panel.get("panels"))

    yield from walk(dashboard.get("panels"))


def variable_expression(query: str, origin: str) -> Expression:
    """A Prometheus query variable as an expression: `label_values([SELECTOR, ]LABEL)` or
    `query_result(EXPR)`. Other forms (metrics(), label_names()) reference no label or metric
    this module could check, and are refused rather than silently skipped."""
    if match := _LABEL_VALUES.match(query):
        selector = (match["selector"] or "").strip()
        return Expression(origin, selector, frozenset({match["label"]}))
    if match := _QUERY_RESULT.match(query):
        return Expression(origin, match["expr"].strip())
    raise ValueError(f"{origin}: unsupported variable query {query!r}")


def rule_expressions(document: Any, origin: str) -> list[Expression]:
    """Every rule's `expr` in a Prometheus rule file (`groups: [{rules: [...]}]`)."""
    expressions: list[Expression] = []
    for group in (document or {}).get("groups") or []:
        for rule in group.get("rules") or []:
            name = rule.get("alert") or rule.get("record")
            where = f"{origin}: group {group.get('name')!r} rule {name!r}"
            expressions.append(Expression(where, str(rule["expr"])))
    return expressions


def recorded_metric_names(root: Path) -> set[str]:
    """Names the recording rules define: dashboards may reference them, a scrape never has
    them."""
    names: set[str] = set()
    for path in rule_files(root):
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for group in document.get("groups") or []:
            names.update(rule["record"] for rule in group.get("rules") or [] if "record" in rule)
    return names


def _blank(expr: str) -> tuple[str, set[str]]:
    """`expr` with string literals emptied, comments and template variables removed; and the
    metric names given as `__name__` matchers, which live in the strings."""
    named = {a or b for a, b in _NAME_MATCHER.findall(expr)}
    text = _STRING.sub('""', expr)
    text = _COMMENT.sub(" ", text)
    text = _VARIABLE.sub(" ", text)
    return text, named


def _scan(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) referenced by `expr`."""
    text, metrics = _blank(expr)
    tokens = [(m.lastgroup, m[0]) for m in _TOKEN.finditer(text)]
    labels: set[str] = set()
    braces = 0  # depth of {...} label matchers
    list_expected = False  # after by / without / on / ... : its "(" opens a label list
    in_list = False
    for i, (kind, value) in enumerate(tokens):
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        word = value.lower()
        if kind == "punct":
            if value == "{":
                braces += 1
            elif value == "}":
                braces -= 1
            elif value == "(" and list_expected:
                list_expected, in_list = False, True
            elif value == ")" and in_list:
                in_list = False
        elif kind != "ident":
            continue  # a number or a duration
        elif braces or in_list:
            labels.add(value)
        elif word in GROUPING and following == "(":
            list_expected = True
        elif following == "(" or word in AGGREGATIONS or word in KEYWORDS:
            continue  # a function call, an aggregation (`sum by (x) (...)`), a keyword
        else:
            metrics.add(value)
    labels.discard("__name__")
    return metrics, labels


def metric_names(expr: str) -> set[str]:
    """The metric names `expr` references: identifiers outside label matchers that are not
    functions, aggregation operators, keywords or durations, plus `{__name__="..."}`."""
    return _scan(expr)[0]


def label_names(expr: str) -> set[str]:
    """The label names `expr` references: in `{...}` matchers and in by / without / on /
    ignoring / group_left / group_right lists (`__name__` excluded)."""
    return _scan(expr)[1]


def executable(expr: str) -> str:
    """`expr` with Grafana's variables substituted, for a real Prometheus: inside a string
    literal a variable matches anything (`=~"$app"` -> `=~".+"`), outside one the interval
    variables become fixed durations ($__rate_interval -> 1m, $__interval -> 30s,
    $__range -> 1h). Any other variable outside a string cannot be guessed: ValueError."""

    def in_string(match: re.Match[str]) -> str:
        return _VARIABLE.sub(MATCH_ANY, match[0])

    def outside(match: re.Match[str]) -> str:
        name = match["braced"] or match["bracketed"] or match["plain"]
        if name not in BUILTIN_VALUES:
            raise ValueError(f"no substitute for ${name} outside a string in {expr!r}")
        return BUILTIN_VALUES[name]

    pieces: list[str] = []
    position = 0
    for string in _STRING.finditer(expr):
        pieces.append(_VARIABLE.sub(outside, expr[position : string.start()]))
        pieces.append(in_string(string))
        position = string.end()
    pieces.append(_VARIABLE.sub(outside, expr[position:]))
    return "".join(pieces)
