"""Benchmark: a full-world poll cycle, 175 storefronts x 6 charts x 100 entries.

Measures, per backend, in one run against a local feed server (bench/feed_server.py, a
separate process, budget disabled):
  (a) floor: the same fetches + JSON parsing alone, same client, same concurrency
  (b) full cycle: fetch, parse, store, derive (cold first cycle, then the median warm one)
  (c) b / a, with a measured between the cycles (before the first and every FLOOR_EVERY
      cycles, median): the speed of a shared machine drifts by more than the overhead measured
  (d) bytes per stored ranked entry after N cycles (tables + indexes, every table but the
      alerting's, whose size is reported apart: it grows with the number of alerts)
  (e) `history` of one tracked app over all charts and N cycles
  (f) peak RSS of the process doing the work
Targets (issue #2): c <= 1.5, b <= 20 s, d <= 12 (PostgreSQL) / 16 (SQLite), e <= 200 ms,
f <= 250 MB.

Alert rules (the default set, evaluated in every snapshot's transaction) are on, as in the
service; `--no-alerts` measures the storage path alone.

    python bench/full_cycle.py [--cycles 24] [--backend sqlite|postgres|both] [--no-alerts]
        [--postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql
from sqlalchemy import text

from monitor.config import Settings, load_settings
from monitor.model import ChartKey
from monitor.sources.catalog import FeedEndpoints, feed_requests
from monitor.sources.http import FeedClient
from monitor.sources.parsers import PARSERS
from monitor.store.engine import Database, open_database
from monitor.store.repository import Repository
from monitor.wiring import http_settings, polling, service_metrics, utc_now
from monitor.worker import prepare_database

HERE = Path(__file__).resolve().parent
TRACKED_APP = "6448311069"  # ChatGPT: in about 60% of the bench charts
FLOOR_EVERY = 4
TARGETS = {"ratio": 1.5, "cycle_s": 20.0, "history_ms": 200.0, "rss_mb": 250.0}
BYTES_TARGET = {"sqlite": 16.0, "postgresql": 12.0}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def bench_settings(feed_url: str, database_url: str, *, alerts: bool = True) -> Settings:
    return load_settings(
        None,
        {
            "MONITOR_DATABASE_URL": database_url,
            "MONITOR_ITUNES_BASE_URL": feed_url,
            "MONITOR_APPLE_RSS_BASE_URL": feed_url,
            "MONITOR_CHARTS_STOREFRONTS": "all",
            "MONITOR_CHARTS_COLLECTIONS": "top_free,top_paid,top_grossing",
            "MONITOR_CHARTS_DEVICES": "iphone,ipad",
            "MONITOR_FETCH_REQUESTS_PER_MINUTE": "0",
            "MONITOR_LOG_LEVEL": "WARNING",
            "MONITOR_ALERTS_ENABLED": str(alerts).lower(),
        },
    )


def set_cycle(feed_url: str, cycle: int) -> None:
    httpx.get(f"{feed_url}/_cycle/{cycle}").raise_for_status()


async def floor_cycle(settings: Settings, charts: list[ChartKey]) -> float:
    """Fetch and parse every chart as a poll round would, storing nothing."""
    endpoints = FeedEndpoints(settings.itunes.base_url, settings.apple_rss.base_url)
    limit = asyncio.Semaphore(settings.fetch.concurrency)

    async def one(client: FeedClient, chart: ChartKey) -> None:
        request = feed_requests(chart, depth=settings.poll.depth, endpoints=endpoints)[0]
        async with limit:
            fetched = await client.fetch(request.url)
            await asyncio.to_thread(
                PARSERS[request.source],
                fetched.body,
                chart=chart,
                requested_depth=settings.poll.depth,
                fetched_at=utc_now(),
            )

    async with FeedClient(http_settings(settings)) as client:
        started = time.perf_counter()
        await asyncio.gather(*(one(client, chart) for chart in charts))
        return time.perf_counter() - started


async def full_cycles(
    settings: Settings, repository: Repository, charts: list[ChartKey], feed_url: str, cycles: int
) -> tuple[list[float], list[float]]:
    """Seconds of each full cycle, and of the floor cycles measured between them."""
    seconds: list[float] = []
    floors: list[float] = []
    metrics = service_metrics(settings, repository)
    async with polling(settings, repository, metrics=metrics) as rounds:
        for cycle in range(1, cycles + 1):
            set_cycle(feed_url, cycle)
            if cycle % FLOOR_EVERY == 1:
                floors.append(await floor_cycle(settings, charts))
            started = time.perf_counter()
            summary = await rounds.run_round(charts)
            seconds.append(time.perf_counter() - started)
            if summary.failed or summary.changed != len(charts):
                raise SystemExit(
                    f"cycle {cycle}: {summary.failed} failed, {summary.changed} changed"
                )
    return seconds, floors


ALERTING_TABLES = (
    "alert_episodes",
    "alert_events",
    "alert_holds",
    "notifications",
    "delivery_attempts",
    "silences",
)


def is_alerting(relation: str) -> bool:
    """A table of the alerting, or one of its indexes (SQLite lists those apart)."""
    return any(table in relation for table in ALERTING_TABLES)


def stored_bytes(database: Database) -> dict[str, int]:
    with database.engine.connect() as conn:
        if database.dialect == "sqlite":
            rows = conn.execute(text("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"))
            return {name: int(size) for name, size in rows}
        rows = conn.execute(
            text(
                "SELECT relname, pg_total_relation_size(c.oid) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')"
            )
        )
        return {name: int(size) for name, size in rows}


def ranked_entries(database: Database) -> int:
    with database.engine.connect() as conn:
        return int(conn.execute(text("SELECT SUM(visible_depth) FROM snapshots")).scalar_one())


def history_ms(database: Database) -> tuple[float, int]:
    repository = Repository(database)
    app = next(a for a in repository.find_apps(TRACKED_APP) if a.store_id == TRACKED_APP)
    timings = []
    points = []
    for _ in range(5):
        started = time.perf_counter()
        points = repository.history(app.id)
        timings.append((time.perf_counter() - started) * 1000)
    return min(timings), len(points)


def run_backend(
    backend: str, feed_url: str, database_url: str, cycles: int, *, alerts: bool
) -> dict[str, Any]:
    settings = bench_settings(feed_url, database_url, alerts=alerts)
    charts = settings.chart_keys()
    set_cycle(feed_url, 0)
    asyncio.run(floor_cycle(settings, charts))  # warms up what the first measured one would
    with open_database(database_url, writer=True) as database:
        repository = prepare_database(settings, database)
        seconds, floors = asyncio.run(full_cycles(settings, repository, charts, feed_url, cycles))
        sizes = stored_bytes(database)
        entries = ranked_entries(database)
        history, points = history_ms(database)
    warm = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
    floor = statistics.median(floors)
    return {
        "backend": backend,
        "alerts": alerts,
        "charts": len(charts),
        "cycles": cycles,
        "floor_s": round(floor, 2),
        "floors_s": [round(f, 2) for f in floors],
        "cold_cycle_s": round(seconds[0], 2),
        "cycles_s": [round(c, 2) for c in seconds],
        "warm_cycle_s": round(warm, 2),
        "ratio": round(warm / floor, 2),
        "ranked_entries": entries,
        # The history (d) apart from what the alerts stored, which grows with their number.
        "bytes_per_entry": round(
            sum(size for name, size in sizes.items() if not is_alerting(name)) / entries, 2
        ),
        "alerting_bytes": sum(size for name, size in sizes.items() if is_alerting(name)),
        "bytes_by_table": dict(sorted(sizes.items(), key=lambda kv: -kv[1])),
        "history_ms": round(history, 1),
        "history_points": points,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def create_postgres_database(
    admin_url: str, *, name: str | None = None, template: str | None = None
) -> tuple[str, str]:
    """A new database (a copy of `template` if given): its URL and name."""
    name = name or f"arm_bench_{uuid.uuid4().hex[:8]}"
    libpq = admin_url.replace("postgresql+psycopg://", "postgresql://", 1)
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(statement)
    return f"{admin_url.rpartition('/')[0]}/{name}", name


def drop_postgres_database(admin_url: str, name: str) -> None:
    libpq = admin_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(libpq, autocommit=True) as conn:
        statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(statement.format(sql.Identifier(name)))


@contextlib.contextmanager
def scratch_database(backend: str, postgres_admin_url: str) -> Iterator[str]:
    """The URL of a new, empty database on `backend` ("sqlite" or "postgres"), removed after."""
    with tempfile.TemporaryDirectory() as tmp:
        if backend == "sqlite":
            yield f"sqlite:///{tmp}/bench.sqlite3"
            return
        url, name = create_postgres_database(postgres_admin_url)
        try:
            yield url
        finally:
            drop_postgres_database(postgres_admin_url, name)


def verdict(result: dict[str, Any]) -> list[str]:
    checks = [
        ("ratio b/a", result["ratio"], TARGETS["ratio"]),
        ("warm cycle s", result["warm_cycle_s"], TARGETS["cycle_s"]),
        ("bytes/entry", result["bytes_per_entry"], BYTES_TARGET[result["backend"]]),
        ("history ms", result["history_ms"], TARGETS["history_ms"]),
        ("peak RSS MB", result["peak_rss_mb"], TARGETS["rss_mb"]),
    ]
    return [
        f"  {name:<13} {value:>9} (target <= {target}) {'ok' if value <= target else 'MISSED'}"
        for name, value, target in checks
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=24)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument(
        "--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--no-alerts", action="store_true", help="alert rules off")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: feed_url,database_url
    args = parser.parse_args()
    if args.one:
        backend, feed_url, database_url = args.one.split(",", 2)
        result = run_backend(
            backend, feed_url, database_url, args.cycles, alerts=not args.no_alerts
        )
        print(json.dumps(result))
        return

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(HERE / "feed_server.py"), str(port)], stdout=subprocess.PIPE
    )
    try:
        assert server.stdout is not None
        server.stdout.readline()  # "serving on ..."
        feed_url = f"http://127.0.0.1:{port}"
        backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
        for backend in backends:
            dialect = "postgresql" if backend == "postgres" else "sqlite"
            with scratch_database(backend, args.postgres_url) as url:
                # One process per backend, so each reports its own peak RSS.
                out = subprocess.run(
                    [sys.executable, __file__, "--cycles", str(args.cycles),
                     *(["--no-alerts"] if args.no_alerts else []),
                     "--one", f"{dialect},{feed_url},{url}"],
                    capture_output=True, text=True, check=True,
                ).stdout  # fmt: skip
            result = json.loads(out)
            print(json.dumps(result, indent=2))
            print(f"{result['backend']}:")
            print("\n".join(verdict(result)))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
