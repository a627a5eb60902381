"""Benchmark: the time of one GET /metrics with 2,000 tracked series, through the real service.

Per backend: a database holding 20 tracked apps x 100 charts (50 storefronts x top free/paid),
24 snapshots of 100 entries per chart, each tracked app listed in about 70% of the latest
snapshots; then `app-rank-monitor run` in its own process (nothing due, so it only serves),
and 50 sequential scrapes over one keep-alive connection after 5 warm-up ones. Reported:
median and p95 scrape time, series and bytes per scrape. Target (issue #3): median <= 50 ms.

    python bench/metrics_scrape.py [--backend sqlite|postgres|both] [--scrapes 50]
        [--postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from full_cycle import free_port, scratch_database

from monitor.config import Settings, load_settings
from monitor.model import (
    ChartEntry,
    ChartKey,
    ChartSnapshot,
    FetchOutcome,
    FetchRecord,
    SourceName,
    Validators,
)
from monitor.store.engine import open_database
from monitor.store.repository import Repository
from monitor.wiring import utc_now
from monitor.worker import prepare_database

TRACKED_APPS = 20
STOREFRONTS = 50
SNAPSHOTS_PER_CHART = 24
DEPTH = 100
LISTED_SHARE = 0.7
TARGET_MEDIAN_MS = 50.0
INTERVAL = dt.timedelta(hours=1)


def tracked_id(n: int) -> str:
    return str(6_000_000_000 + n)


def write_config(directory: Path, database_url: str, port: int) -> Path:
    watchlist = directory / "watchlist.toml"
    watchlist.write_text(
        "".join(
            f'[[apps]]\nstore_id = "{tracked_id(n)}"\nname = "Tracked app {n}"\n\n'
            for n in range(TRACKED_APPS)
        ),
        encoding="utf-8",
    )
    config = directory / "monitor.toml"
    config.write_text(
        f'[database]\nurl = "{database_url}"\n\n'
        f"[http]\nport = {port}\n\n"
        # Nothing answers here: nothing is due during the bench, and a stray poll fails fast.
        f'[itunes]\nbase_url = "http://127.0.0.1:9"\n\n'
        f'[apple_rss]\nbase_url = "http://127.0.0.1:9"\n\n'
        f'[poll]\ninterval = "1h"\n\n'
        f'[log]\nlevel = "WARNING"\n\n'
        f'[watchlist]\nfile = "{watchlist}"\n\n'
        "[charts]\n"
        f"storefronts = {json.dumps(sorted(storefront_codes())[:STOREFRONTS])}\n"
        'collections = ["top_free", "top_paid"]\n'
        'devices = ["iphone"]\ngenres = ["all"]\n',
        encoding="utf-8",
    )
    return config


def storefront_codes() -> list[str]:
    settings = load_settings(None, {"MONITOR_CHARTS_STOREFRONTS": "all"})
    return sorted({chart.country for chart in settings.chart_keys()})


def ranking(chart: ChartKey, hour: int, rng: random.Random) -> tuple[ChartEntry, ...]:
    listed = [tracked_id(n) for n in range(TRACKED_APPS) if rng.random() < LISTED_SHARE]
    others = [f"{chart.country}{chart.collection.value}{hour}-{i}" for i in range(DEPTH)]
    ids = (listed + others)[:DEPTH]
    rng.shuffle(ids)
    return tuple(
        ChartEntry(rank=rank, store_id=store_id, name=f"App {store_id}")
        for rank, store_id in enumerate(ids, start=1)
    )


def fill(settings: Settings) -> int:
    """Store SNAPSHOTS_PER_CHART hourly snapshots per chart, ending now; returns the charts."""
    rng = random.Random(3)
    charts = settings.chart_keys()
    with open_database(settings.database.url, writer=True) as database:
        prepare_database(settings, database)
        repository = Repository(database)
        end = utc_now()
        for hour in range(SNAPSHOTS_PER_CHART):
            at = end - (SNAPSHOTS_PER_CHART - 1 - hour) * INTERVAL
            for claim in repository.claim_due(
                owner="bench", now=at, lease=INTERVAL, limit=len(charts), charts=charts
            ):
                snapshot = ChartSnapshot(
                    chart=claim.chart,
                    source=SourceName.APPLE_V2,
                    fetched_at=at,
                    requested_depth=DEPTH,
                    entries=ranking(claim.chart, hour, rng),
                )
                repository.record_snapshot(
                    claim,
                    snapshot,
                    content_hash=hashlib.sha256(repr(snapshot.entries).encode()).hexdigest(),
                    validators=Validators(),
                    fetches=[
                        FetchRecord(
                            chart=claim.chart,
                            started_at=at,
                            duration_seconds=0.2,
                            outcome=FetchOutcome.CHANGED,
                            source=SourceName.APPLE_V2,
                            url="http://bench/",
                            http_status=200,
                            attempts=1,
                        )
                    ],
                    next_due_at=end + INTERVAL,
                )
    return len(charts)


def scrape_times(port: int, scrapes: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/metrics"
    with httpx.Client(timeout=10) as client:
        for _ in range(5):
            body = client.get(url).raise_for_status().content
        timings = []
        for _ in range(scrapes):
            started = time.perf_counter()
            body = client.get(url).raise_for_status().content
            timings.append((time.perf_counter() - started) * 1000)
    lines = body.decode().splitlines()
    timings.sort()
    return {
        "median_ms": round(statistics.median(timings), 1),
        "p95_ms": round(timings[int(len(timings) * 0.95) - 1], 1),
        "min_ms": round(timings[0], 1),
        "listed_series": sum(line.startswith("apprank_listed{") for line in lines),
        "rank_series": sum(line.startswith("apprank_rank{") for line in lines),
        "samples": sum(not line.startswith("#") for line in lines),
        "bytes": len(body),
    }


def wait_ready(port: int, service: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise SystemExit(f"the service exited with {service.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the service did not become ready")


def run_backend(backend: str, database_url: str, scrapes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        config = write_config(Path(tmp), database_url, port)
        charts = fill(load_settings(config, {}))
        service = subprocess.Popen(
            [sys.executable, "-m", "monitor", "--config", str(config), "run"],
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_ready(port, service)
            result = scrape_times(port, scrapes)
        finally:
            service.terminate()
            service.wait(timeout=30)
    return {"backend": backend, "charts": charts, "tracked_apps": TRACKED_APPS, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument(
        "--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    for backend in backends:
        with scratch_database(backend, args.postgres_url) as url:
            result = run_backend(backend, url, args.scrapes)
        verdict = "ok" if result["median_ms"] <= TARGET_MEDIAN_MS else "MISSED"
        print(json.dumps(result))
        print(f"  median {result['median_ms']} ms (target <= {TARGET_MEDIAN_MS}) {verdict}")


if __name__ == "__main__":
    main()
