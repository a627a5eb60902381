"""Benchmark: one app's rank history over a year of hourly data, through the read API.

The data: the default 33 charts (11 storefronts x top free/paid/grossing iPhone) polled
hourly for a year, 8,760 polls a chart (FAILED_SHARE of them failed: a gap in history), 100
entries each. Six watchlist apps walk up and down the ranks, in and out of the visible depth,
among about 3,000 other apps that reshuffle a little every hour. Every successful poll changes
its chart, so each is a snapshot and a history point: ChatGPT's history holds ~289,000 points.

How it is built: bulk inserts of exactly the rows the write path stores, not the write path
itself. `Repository.record_snapshot` (fence, apps, snapshot, derived ranks, fetch log, alert
rules) stores about 200 snapshots a second here (bench/full_cycle.py: ~5 s of a 1,050-chart
cycle), about 25 minutes for these 288,000; the bulk build takes 1.5 (SQLite) to 3 minutes. The
builder inserts the same snapshots (packed ranking, content hash), fetch log rows and apps in
the order the service writes them (hour by hour, chart by chart, so each chart's year is
spread over the table as in a real database) in batches, then derives `app_ranks` with the
watchlist backfill's own code (monitor.store.derived). tests/test_bench_api_history.py checks
that it stores what the write path stores for the same polls. On PostgreSQL the months of the
year are partitions, as the daily retention run makes them ahead of need. Then the service's
own retention runs with the default policy, as it would have every day: nothing is folded
(400 days), the fetch log is cut to its last 30 days. PostgreSQL then gets the VACUUM ANALYZE
its autovacuum would have run during the year; SQLite, which the service never analyzes, gets
none.

The built database is cached (SQLite: bench/.cache/, gitignored; PostgreSQL: the database
CACHE_NAME on the server, `--drop-cache` removes it) and reused while its data is younger than
MAX_CACHE_AGE; every run measures a fresh copy of it.

The measure: `app-rank-monitor run` on the copy (nothing due: it only serves), requests to
GET /api/v1/apps/{app}/history with httpx over one keep-alive connection, warm (WARMUP
requests first), REPEAT times each: median and p95. Walks follow `next` to the end and report
pages, total time and the slowest page. `since=7d` is sent as the time 7 days before the
data's last poll, so a cached database answers as a fresh one would. Target (issue #6): every
history request answered in <= 300 ms.

Then retention folds the older part of the year on the same copy (`--folded-days`, default
180: the first half of the year becomes daily summaries, its snapshots removed) and the same
requests are measured again: history reading summaries and snapshots together.

    python bench/api_history.py [--backend sqlite|postgres|both] [--repeat 20] [--rebuild]
        [--folded-days 180] [--drop-cache] [--postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import math
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import psycopg
from full_cycle import create_postgres_database, drop_postgres_database, free_port
from metrics_scrape import wait_ready
from psycopg import sql
from sqlalchemy import Connection, bindparam, func, insert, select, update

from monitor.config import Settings, load_settings
from monitor.model import ChartKey, Collection, FetchOutcome, FetchRecord, SourceName
from monitor.store import derived, packing, partitions
from monitor.store.engine import Database, open_database
from monitor.store.repository import Repository
from monitor.store.retention import RetentionPolicy
from monitor.store.schedule import ChartCatalog
from monitor.store.tables import apps, fetch_log, poll_tasks, snapshots
from monitor.worker import prepare_database

HERE = Path(__file__).resolve().parent
CACHE_DIR = HERE / ".cache"
DATA_VERSION = 2  # bump when the data changes: cached databases of other versions are unused
CACHE_NAME = f"arm_bench_api_history_v{DATA_VERSION}"
MAX_CACHE_AGE = dt.timedelta(days=30)

HOUR = dt.timedelta(hours=1)
HOURS = 365 * 24
DEPTH = 100
POLL_SPREAD = dt.timedelta(seconds=50)  # between the charts' polls within an hour
FAILED_SHARE = 0.003
OTHER_APPS = 3_000
APPS_PER_CHART = 250
SWAPS_PER_HOUR = 10
CLIMBER_SHARE = 0.05  # chance per hour that an app from below jumps into the chart
# Watchlist apps: (store id, name, the lowest place of their walk; below DEPTH: not listed).
WATCHED = (
    ("6448311069", "ChatGPT", 120),
    ("6737597349", "DeepSeek", 160),
    ("6477489729", "Google Gemini", 160),
    ("6446901002", "Threads", 180),
    ("1641486558", "Temu", 140),
    ("835599320", "TikTok", 130),
)
APP = WATCHED[0][0]
FAR_FUTURE = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
BATCH_HOURS = 24

WARMUP = 3
REPEAT = 20
TARGET_MS = 300.0


# -- the data --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Poll:
    """One hourly poll of a chart: the store ids by rank, or None when it failed."""

    chart: ChartKey
    at: dt.datetime
    ranking: tuple[str, ...] | None


def app_name(store_id: str) -> str:
    return next((name for sid, name, _ in WATCHED if sid == store_id), f"App {store_id}")


def source_of(chart: ChartKey) -> SourceName:
    # The v2 feed has no grossing chart: that one comes from the legacy feed.
    return (
        SourceName.ITUNES_RSS
        if chart.collection is Collection.TOP_GROSSING
        else SourceName.APPLE_V2
    )


class _ChartRanks:
    """One chart's ranking as it drifts: small reshuffles, the odd climber, and the watched
    apps' random walks."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        pool = [str(1_000_000_000 + n) for n in range(OTHER_APPS)]
        self._order = rng.sample(pool, APPS_PER_CHART)
        self._walks = {store_id: [rng.randint(1, low), low] for store_id, _, low in WATCHED}

    def step(self) -> None:
        rng, order = self._rng, self._order
        for _ in range(SWAPS_PER_HOUR):
            i = rng.randrange(len(order) - 1)
            order[i], order[i + 1] = order[i + 1], order[i]
        if rng.random() < CLIMBER_SHARE:
            order.insert(rng.randrange(DEPTH), order.pop(rng.randrange(DEPTH, len(order))))
        for walk in self._walks.values():
            place, low = walk
            place += rng.choice((-2, -1, 0, 0, 1, 2))
            walk[0] = min(max(place, 1), low)

    def ranking(self) -> tuple[str, ...]:
        top = self._order[:DEPTH]
        for place, store_id in sorted((w[0], sid) for sid, w in self._walks.items()):
            if place <= DEPTH:
                top.insert(place - 1, store_id)
        return tuple(top[:DEPTH])


def polls(charts: Sequence[ChartKey], *, hours: int, end: dt.datetime) -> Iterator[Poll]:
    """Every chart's hourly polls for `hours` hours before `end`, hour by hour."""
    rng = random.Random(DATA_VERSION)
    ranks = [_ChartRanks(rng) for _ in charts]
    start = end - hours * HOUR
    for hour in range(hours):
        for index, (chart, chart_ranks) in enumerate(zip(charts, ranks, strict=True)):
            chart_ranks.step()
            at = start + hour * HOUR + index * POLL_SPREAD
            failed = rng.random() < FAILED_SHARE
            yield Poll(chart, at, None if failed else chart_ranks.ranking())


def content_hash(poll: Poll) -> str:
    """What the poller hashes (the body): here the ranking stands for it."""
    return hashlib.sha256(repr(poll.ranking).encode()).hexdigest()


def fetch_record(poll: Poll) -> FetchRecord:
    """The fetch of a poll, as the poller reports it."""
    ok = poll.ranking is not None
    return FetchRecord(
        chart=poll.chart,
        started_at=poll.at,
        duration_seconds=0.2 if ok else 12.0,
        outcome=FetchOutcome.CHANGED if ok else FetchOutcome.FAILED,
        source=source_of(poll.chart),
        url=f"https://feeds.invalid/{poll.chart.slug}",
        http_status=200 if ok else None,
        attempts=1 if ok else 3,
        body_bytes=40_000 if ok else None,
        error_class=None if ok else "FetchTimeout",
        error_message=None if ok else "no response within 10 s",
    )


def _log_row(chart_id: int, fetch: FetchRecord) -> dict[str, Any]:
    """The fetch log row the write path stores for a one-fetch poll."""
    failed = fetch.outcome == FetchOutcome.FAILED
    return {
        "chart_id": chart_id,
        "started_at": fetch.started_at,
        "duration_ms": round(fetch.duration_seconds * 1000),
        "attempts": fetch.attempts,
        "http_status": fetch.http_status,
        "body_bytes": fetch.body_bytes,
        "outcome": fetch.outcome.value,
        "recovered": False,
        "source": fetch.source.value if fetch.source else None,
        "url": fetch.url if failed else None,
        "error_class": fetch.error_class,
        "error_message": fetch.error_message,
        "poll_started_at": None,
        "body_sample": None,
    }


# -- bulk writing ----------------------------------------------------------------------------


_INSERT_APPS = insert(apps).returning(apps.c.store_id, apps.c.id)
_SEEN = (
    update(apps)
    .where(apps.c.id == bindparam("app_id"))
    .values(first_seen_at=bindparam("first"), last_seen_at=bindparam("last"))
)


def bulk_write(database: Database, charts: Sequence[ChartKey], stream: Iterable[Poll]) -> int:
    """Store `stream` (polls of `charts`, which must be scheduled and the watchlist synced)
    as the write path would; returns the snapshots stored."""
    engine, dialect = database.engine, database.dialect
    with engine.connect() as connection:
        chart_ids = ChartCatalog().ids(connection, charts)
        app_ids = dict(connection.execute(select(apps.c.store_id, apps.c.id)).all())
        tracked = set(connection.scalars(select(apps.c.id).where(apps.c.tracked)))
    first_seen: dict[int, dt.datetime] = {}
    last_seen: dict[int, dt.datetime] = {}
    stored = 0
    batch: list[Poll] = []

    def flush(connection: Connection) -> None:
        new = {
            store_id: {
                "store": poll.chart.store.value,
                "store_id": store_id,
                "name": app_name(store_id),
            }
            for poll in batch
            for store_id in poll.ranking or ()
            if store_id not in app_ids
        }
        if new:
            app_ids.update(connection.execute(_INSERT_APPS, list(new.values())).all())
        snapshot_rows = []
        for poll in batch:
            if poll.ranking is None:
                continue
            ranked = list(map(app_ids.__getitem__, poll.ranking))
            last_seen.update(dict.fromkeys(ranked, poll.at))
            for app_id in ranked:
                first_seen.setdefault(app_id, poll.at)
            snapshot_rows.append(
                {
                    "fetched_at": poll.at,
                    "confirmed_at": poll.at,
                    "feed_updated_at": None,
                    "chart_id": chart_ids[poll.chart],
                    "requested_depth": DEPTH,
                    "visible_depth": len(ranked),
                    "source": source_of(poll.chart).value,
                    "content_hash": packing.hash_bytes(content_hash(poll)),
                    "ranked_app_ids": packing.pack_ranking(dict(enumerate(ranked, start=1))),
                }
            )
        if snapshot_rows:
            connection.execute(insert(snapshots), snapshot_rows)
        log_rows = [_log_row(chart_ids[poll.chart], fetch_record(poll)) for poll in batch]
        connection.execute(insert(fetch_log), log_rows)
        batch.clear()

    for poll in stream:
        batch.append(poll)
        stored += poll.ranking is not None
        if len(batch) >= BATCH_HOURS * len(charts):
            with engine.begin() as connection:
                flush(connection)
    with engine.begin() as connection:
        if batch:
            flush(connection)
        rows = [
            {"app_id": app_id, "first": first, "last": last_seen[app_id]}
            for app_id, first in first_seen.items()
        ]
        if rows:
            connection.execute(_SEEN, rows)
    derived.derive(engine, dialect, tracked, None, replace=False)
    return stored


# -- databases -------------------------------------------------------------------------------


def write_config(directory: Path, database_url: str, port: int) -> Path:
    watchlist = directory / "watchlist.toml"
    watchlist.write_text(
        "".join(f'[[apps]]\nstore_id = "{sid}"\nname = "{name}"\n\n' for sid, name, _ in WATCHED),
        encoding="utf-8",
    )
    config = directory / "monitor.toml"
    config.write_text(
        f'[database]\nurl = "{database_url}"\n\n'
        f"[http]\nport = {port}\n\n"
        # Nothing answers here: nothing is due during the bench, and a stray poll fails fast.
        '[itunes]\nbase_url = "http://127.0.0.1:9"\n\n'
        '[apple_rss]\nbase_url = "http://127.0.0.1:9"\n\n'
        '[log]\nlevel = "WARNING"\n\n'
        f'[watchlist]\nfile = "{watchlist}"\n',
        encoding="utf-8",
    )
    return config


def build(settings: Settings, *, hours: int = HOURS) -> dict[str, Any]:
    """Fill the (empty) database of `settings` with `hours` of polls ending now."""
    started = time.perf_counter()
    end = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    with open_database(settings.database.url, writer=True) as database:
        prepare_database(settings, database)
        charts = settings.chart_keys()
        if database.dialect == "postgresql":
            with database.engine.begin() as connection:
                partitions.ensure_months(connection, partitions.months(end - hours * HOUR, end))
        stored = bulk_write(database, charts, polls(charts, hours=hours, end=end))
        with database.engine.begin() as connection:
            # Nothing is due while the benchmark's service runs: it only serves.
            connection.execute(update(poll_tasks).values(next_due_at=FAR_FUTURE))
        retention = Repository(database).run_retention(RetentionPolicy(), now=end)
    if settings.database.url.startswith("postgresql"):
        # Outside the service's engine, whose statement timeout a big VACUUM may pass.
        with psycopg.connect(_libpq(settings.database.url), autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
    return {
        "snapshots": stored,
        "fetches_deleted": retention.fetches_deleted,
        "partitions_dropped": len(retention.partitions_dropped),
        "build_s": round(time.perf_counter() - started, 1),
    }


def data_end(database_url: str) -> dt.datetime | None:
    with open_database(database_url, writer=False) as database, database.engine.connect() as c:
        latest: dt.datetime | None = c.scalar(select(func.max(snapshots.c.fetched_at)))
    return latest


def fresh_enough(end: dt.datetime | None) -> bool:
    return end is not None and dt.datetime.now(dt.UTC) - end < MAX_CACHE_AGE


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _postgres_exists(admin_url: str, name: str) -> bool:
    with psycopg.connect(_libpq(admin_url), autocommit=True) as conn:
        query = "SELECT 1 FROM pg_database WHERE datname = %s"
        return conn.execute(query, (name,)).fetchone() is not None


def cached_database(backend: str, admin_url: str, *, rebuild: bool) -> tuple[str, dict[str, Any]]:
    """The URL of the built database of `backend`, building it unless a fresh one is cached,
    and what was done (cached, or the build's figures)."""
    port = free_port()  # the build starts no service: any port will do
    if backend == "sqlite":
        CACHE_DIR.mkdir(exist_ok=True)
        path = CACHE_DIR / f"api_history-v{DATA_VERSION}.sqlite3"
        url = f"sqlite:///{path}"
        if path.exists() and not rebuild and fresh_enough(data_end(url)):
            return url, {"cached": True}
        building = path.with_suffix(".building.sqlite3")
        building.unlink(missing_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            figures = build(load_settings(write_config(Path(tmp), f"sqlite:///{building}", port)))
        building.replace(path)
        Path(f"{building}.lock").unlink(missing_ok=True)  # the writer's lock, left behind
        return url, figures
    url = f"{admin_url.rpartition('/')[0]}/{CACHE_NAME}"
    if _postgres_exists(admin_url, CACHE_NAME):
        if not rebuild and fresh_enough(data_end(url)):
            return url, {"cached": True}
        drop_postgres_database(admin_url, CACHE_NAME)
    building = f"{CACHE_NAME}_building"
    drop_postgres_database(admin_url, building)
    building_url, _ = create_postgres_database(admin_url, name=building)
    with tempfile.TemporaryDirectory() as tmp:
        figures = build(load_settings(write_config(Path(tmp), building_url, port)))
    with psycopg.connect(_libpq(admin_url), autocommit=True) as conn:
        rename = sql.SQL("ALTER DATABASE {} RENAME TO {}")
        conn.execute(rename.format(sql.Identifier(building), sql.Identifier(CACHE_NAME)))
    return url, figures


# -- measuring -------------------------------------------------------------------------------


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(share * len(ordered)) - 1, 0)]


def summary(timings: Sequence[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(timings), 1),
        "p95_ms": round(percentile(timings, 0.95), 1),
        "max_ms": round(max(timings), 1),
    }


class HistoryClient:
    def __init__(self, client: httpx.Client) -> None:
        self._client = client

    def get(self, path_and_query: str) -> tuple[float, dict[str, Any]]:
        started = time.perf_counter()
        response = self._client.get(path_and_query).raise_for_status()
        body: dict[str, Any] = response.json()
        return (time.perf_counter() - started) * 1000, body

    def repeated(self, query: Mapping[str, str | int], repeat: int) -> dict[str, Any]:
        path = str(httpx.URL(f"/api/v1/apps/{APP}/history", params=dict(query)))
        for _ in range(WARMUP):
            self.get(path)
        timings, points = [], 0
        for _ in range(repeat):
            ms, body = self.get(path)
            timings.append(ms)
            points = len(body["points"])
        return {"points": points, **summary(timings)}

    def walk(self, query: Mapping[str, str | int]) -> dict[str, Any]:
        """Every page from the first, following `next`."""
        path: str | None = str(httpx.URL(f"/api/v1/apps/{APP}/history", params=dict(query)))
        timings, points = [], 0
        while path is not None:
            ms, body = self.get(path)
            timings.append(ms)
            points += len(body["points"])
            path = body["next"]
        return {
            "points": points,
            "pages": len(timings),
            "total_s": round(sum(timings) / 1000, 2),
            **summary(timings),
        }


def measure(port: int, end: dt.datetime, repeat: int) -> dict[str, dict[str, Any]]:
    week = (end - dt.timedelta(days=7)).isoformat()
    one_chart = {"country": "us", "collection": "top_free"}
    requests: dict[str, dict[str, str | int]] = {
        "first page, all charts (limit 100)": {},
        "limit=1000, all charts": {"limit": 1000},
        "one chart (us top_free), first page": one_chart,
        "since=7d, all charts (limit 100)": {"since": week},
        "since=7d, limit=1000": {"since": week, "limit": 1000},
    }
    walks: dict[str, dict[str, str | int]] = {
        "walk: one chart's year, pages of 100": one_chart,
        "walk: one chart's year, pages of 1000": {**one_chart, "limit": 1000},
    }
    results: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        history = HistoryClient(client)
        for name, query in requests.items():
            results[name] = history.repeated(query, repeat)
        for name, query in walks.items():
            history.walk(query)  # warms what the measured walk reads
            results[name] = history.walk(query)
    return results


def fold(url: str, end: dt.datetime, days: int) -> dict[str, Any]:
    """Retention on the copy at `url` as of `end`, keeping `days` of snapshots."""
    started = time.perf_counter()
    with open_database(url, writer=True) as database:
        report = Repository(database).run_retention(RetentionPolicy(snapshot_days=days), now=end)
    return {
        "chart_days_folded": report.days_folded,
        "snapshots_deleted": report.snapshots_deleted,
        "partitions_dropped": len(report.partitions_dropped),
        "retention_s": round(time.perf_counter() - started, 1),
    }


def serve_and_measure(url: str, directory: Path, end: dt.datetime, repeat: int) -> Any:
    port = free_port()
    config = write_config(directory, url, port)
    service = subprocess.Popen(
        [sys.executable, "-m", "monitor", "--config", str(config), "run"],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_ready(port, service)
        return measure(port, end, repeat)
    finally:
        service.terminate()
        service.wait(timeout=30)


def run_backend(
    backend: str, admin_url: str, *, repeat: int, rebuild: bool, folded_days: int
) -> list[dict[str, Any]]:
    cache_url, built = cached_database(backend, admin_url, rebuild=rebuild)
    end = data_end(cache_url)
    assert end is not None
    with tempfile.TemporaryDirectory() as tmp:
        if backend == "sqlite":
            copy = Path(tmp) / "copy.sqlite3"
            shutil.copyfile(cache_url.removeprefix("sqlite:///"), copy)
            url, scratch = f"sqlite:///{copy}", None
        else:
            url, scratch = create_postgres_database(admin_url, template=CACHE_NAME)
        try:
            results = serve_and_measure(url, Path(tmp), end, repeat)
            folded = fold(url, end, folded_days)
            folded_results = serve_and_measure(url, Path(tmp), end, repeat)
        finally:
            if scratch is not None:
                drop_postgres_database(admin_url, scratch)
    return [
        {"backend": backend, "database": built, "data_end": end.isoformat(), **results},
        {"backend": f"{backend}, {folded_days} d kept", "retention": folded, **folded_results},
    ]


def table(results: Sequence[dict[str, Any]]) -> str:
    names = [
        name
        for name, value in results[0].items()
        if isinstance(value, dict) and "median_ms" in value
    ]
    header = f"{'request':<40}{'points':>7}" + "".join(
        f"{r['backend'] + ' median / p95 / max ms':>46}" for r in results
    )
    lines = [header, "-" * len(header)]
    for name in names:
        cells = []
        for result in results:
            figures = result[name]
            cell = f"{figures['median_ms']} / {figures['p95_ms']} / {figures['max_ms']}"
            if "pages" in figures:
                cell = f"{figures['pages']} pages {figures['total_s']} s; " + cell
            ok = figures["max_ms" if "pages" in figures else "p95_ms"] <= TARGET_MS
            cells.append(f"{cell + ('' if ok else ' MISSED'):>46}")
        lines.append(f"{name:<40}{results[0][name]['points']:>7}" + "".join(cells))
    lines.append(
        f"target: each history request <= {TARGET_MS:g} ms (p95 of repeated requests, "
        "slowest page of a walk)"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=REPEAT)
    parser.add_argument("--rebuild", action="store_true", help="ignore the cached database")
    parser.add_argument("--drop-cache", action="store_true", help="remove the cache, then exit")
    parser.add_argument(
        "--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument(
        "--folded-days",
        type=int,
        default=180,
        help="snapshot days kept by the retention run before the second measure",
    )
    args = parser.parse_args()
    if args.drop_cache:
        shutil.rmtree(CACHE_DIR, ignore_errors=True)
        drop_postgres_database(args.postgres_url, CACHE_NAME)
        return
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    results = []
    for backend in backends:
        for result in run_backend(
            backend,
            args.postgres_url,
            repeat=args.repeat,
            rebuild=args.rebuild,
            folded_days=args.folded_days,
        ):
            print(json.dumps(result), flush=True)
            results.append(result)
    print(table(results))


if __name__ == "__main__":
    main()
