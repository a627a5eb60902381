"""The stored state as Prometheus series, written straight in the text format.

Thousands of rank series share a handful of label values: each app's and each chart's label
text is escaped once per scrape here, where prometheus_client's families escape and validate
every label of every sample again (four fifths of a 2,000-target scrape, bench/metrics_scrape).
promtool and prometheus_client's parser check this output in the tests.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping

from monitor.model import ChartKey, Store
from monitor.store.results import ServiceState, TrackedAppStatus

PREFIX = "apprank"


class _Family:
    """One gauge family: its HELP and TYPE lines, then its samples."""

    def __init__(self, suffix: str, documentation: str) -> None:
        self.name = f"{PREFIX}_{suffix}"
        help_text = documentation.replace("\\", "\\\\").replace("\n", "\\n")
        self.lines = [f"# HELP {self.name} {help_text}\n# TYPE {self.name} gauge\n"]

    def add(self, labels: str, value: float) -> None:
        """`labels`: already rendered `name="value",...` pairs (or empty)."""
        selector = f"{{{labels}}}" if labels else ""
        self.lines.append(f"{self.name}{selector} {_number(value)}\n")


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def label_pairs(**labels: str) -> str:
    return ",".join(f'{name}="{_escape(value)}"' for name, value in labels.items())


def chart_labels(chart: ChartKey) -> str:
    return label_pairs(
        store=chart.store.value,
        country=chart.country,
        collection=chart.collection.value,
        device=chart.device.value,
        genre=chart.genre,
    )


def database_down() -> str:
    return _database_up(0)


def _database_up(value: int) -> str:
    family = _Family("database_up", "1 when this scrape could read the stored state.")
    family.add("", value)
    return "".join(family.lines)


def state_text(
    state: ServiceState, now: dt.datetime, app_names: Mapping[tuple[Store, str], str]
) -> str:
    """Every state series of `state`, read at `now`; `app_names` as in unique_app_labels."""
    families = [
        *_schedule_families(state, now),
        *_rank_families(state.tracked, unique_app_labels(state.tracked, app_names)),
    ]
    return _database_up(1) + "".join(line for family in families for line in family.lines)


def _schedule_families(state: ServiceState, now: dt.datetime) -> list[_Family]:
    schedule = state.schedule
    lag = _Family(
        "poll_lag_seconds",
        "How far behind schedule the oldest due chart not yet being polled is (0: none due).",
    )
    oldest = schedule.oldest_due_at
    lag.add("", max((now - oldest).total_seconds(), 0.0) if oldest else 0)
    charts = _Family("charts", "Charts in the poll schedule, by state.")
    for name, count in (
        ("enabled", schedule.enabled),
        ("due", schedule.due_now),
        ("leased", schedule.leased),
        ("failing", schedule.failing),
    ):
        charts.add(label_pairs(state=name), count)
    last_success = _Family(
        "last_success_timestamp_seconds", "Unix time of the chart's last successful poll."
    )
    failures = _Family(
        "chart_consecutive_failures", "Failed polls of the chart since its last successful one."
    )
    for health in state.charts:
        labels = chart_labels(health.chart)
        if health.last_success_at is not None:
            last_success.add(labels, health.last_success_at.timestamp())
        failures.add(labels, health.consecutive_failures)
    pending = _Family("outbox_pending", "Notifications waiting in the outbox.")
    pending.add("", state.outbox.pending)
    oldest_age = _Family(
        "outbox_oldest_pending_age_seconds", "Age of the oldest notification waiting to be sent."
    )
    oldest = state.outbox.oldest_pending_at
    oldest_age.add("", max((now - oldest).total_seconds(), 0.0) if oldest else 0)
    return [lag, charts, last_success, failures, pending, oldest_age]


def _rank_families(
    tracked: Iterable[TrackedAppStatus], app_labels: Mapping[int, str]
) -> list[_Family]:
    info = _Family(
        "app_info",
        "A tracked app (value 1): `app` is its label on rank series, `name` its store name.",
    )
    rank = _Family("rank", "Rank of a tracked app in the chart's latest snapshot (1: top).")
    listed = _Family(
        "listed",
        "1 when the tracked app is in the chart's latest snapshot, 0 when below its depth.",
    )
    depth = _Family("chart_depth", "Entries in the chart's latest snapshot.")
    depths: dict[ChartKey, int] = {}
    rendered_charts: dict[ChartKey, str] = {}
    for status in tracked:
        app = status.app
        app_pair = label_pairs(app=app_labels[app.id])
        identity = label_pairs(store=app.store.value, store_id=app.store_id, name=app.name)
        info.add(f"{app_pair},{identity}", 1)
        for current in status.ranks:
            chart = rendered_charts.get(current.chart)
            if chart is None:
                chart = rendered_charts[current.chart] = chart_labels(current.chart)
            labels = f"{app_pair},{chart}"
            listed.add(labels, 0 if current.rank is None else 1)
            if current.rank is not None:
                rank.add(labels, current.rank)
            depths[current.chart] = current.depth
    for key, visible in sorted(depths.items()):
        depth.add(rendered_charts[key], visible)
    return [info, rank, listed, depth]


def unique_app_labels(
    tracked: Iterable[TrackedAppStatus], names: Mapping[tuple[Store, str], str]
) -> dict[int, str]:
    """The `app` label of each tracked app: its watchlist name (else its store name), with the
    store id appended where two apps of one store would share a label."""
    chosen = {
        status.app.id: (
            status.app.store,
            status.app.store_id,
            names.get((status.app.store, status.app.store_id), status.app.name),
        )
        for status in tracked
    }
    taken: dict[tuple[Store, str], int] = {}
    for store, _, label in chosen.values():
        taken[store, label] = taken.get((store, label), 0) + 1
    return {
        app_id: label if taken[store, label] == 1 else f"{label} ({store_id})"
        for app_id, (store, store_id, label) in chosen.items()
    }
