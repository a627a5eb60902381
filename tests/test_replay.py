"""`app-rank-monitor replay DIR`: recorded payloads imported into history as polling them would.

The scenario folder (seeds/scenarios/deepseek-2025-01) is replayed into one SQLite database and
polled into another, moment by moment, through a local feed server and the real poller with
its clock at each payload's time: both must hold the same snapshots, charts and rank
histories. Small hand-made folders show the command on both backends: idempotence,
confirmations, a broken file named and skipped, charts that are not configured kept out of
polling, and the folder problems that stop it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from monitor.metrics import ServiceMetrics
from monitor.model import ChartKey, Collection, Device, RankPoint, RankStatus, Store, WatchedApp
from monitor.polling import Poller, PollSettings
from monitor.replay import ReplayReport, ReplaySettings, find_payloads, replay
from monitor.sources.catalog import FeedEndpoints
from monitor.sources.http import FeedClient
from monitor.store.engine import Database, open_database
from monitor.store.repository import Repository
from monitor.store.retention import RetentionPolicy, horizon_of
from monitor.store.tables import charts, poll_tasks, snapshots
from monitor.wiring import utc_now
from tests.conftest import migrated
from tests.support.fake_apple import FIXTURES
from tests.support.http_server import ScriptedServer
from tests.support.recorded_feeds import RecordedFeeds
from tests.test_cli import Deployment, deployment, table
from tests.test_polling import http_settings

SCENARIO = Path(__file__).resolve().parents[1] / "seeds" / "scenarios" / "deepseek-2025-01"
SCENARIO_COUNTRIES = ["de", "gb", "in", "jp", "us"]
DEEPSEEK = "6737597349"
CHATGPT = "6448311069"
WATCHED = [
    WatchedApp(Store.APPLE, DEEPSEEK, "DeepSeek"),
    WatchedApp(Store.APPLE, CHATGPT, "ChatGPT"),
]
DEPTH = 100
LEASE = dt.timedelta(minutes=5)
INTERVAL = dt.timedelta(hours=1)
US_FREE = ChartKey(Store.APPLE, "us", Collection.TOP_FREE, Device.IPHONE)
HK_GROSSING = ChartKey(Store.APPLE, "hk", Collection.TOP_GROSSING, Device.IPHONE)
V2_US_FREE = (FIXTURES / "apple_v2_us_top-free_100_2026-05-26.json").read_bytes()
LEGACY_HK_GROSSING = (
    FIXTURES / "legacy_itunes_hk_topgrossingapplications_limit10_2024-09-04.json"
).read_bytes()
HTML_ERROR_PAGE = (FIXTURES / "handmade_apple_error_page.html").read_bytes()


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


# -- the scenario, replayed and polled ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stored:
    database: Database
    repository: Repository


def replay_into(repository: Repository, folder: Path) -> ReplayReport:
    """What the command does after preparing the database."""
    payloads, unusable = find_payloads(folder)
    assert not unusable
    repository.add_disabled_charts([payload.chart for payload in payloads], now=utc_now())
    settings = ReplaySettings(depth=DEPTH, max_body_bytes=8 << 20, owner="replay", lease=LEASE)
    return replay(repository, payloads, settings, report=ReplayReport(), clock=utc_now)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    """The whole scenario replayed into a SQLite database, once for the tests that read it."""
    url = f"sqlite:///{tmp_path_factory.mktemp('replayed') / 'replayed.sqlite3'}"
    with migrated(url) as database:
        repository = Repository(database)
        repository.sync_watchlist(WATCHED)
        report = replay_into(repository, SCENARIO)
        assert not report.failures
        yield Stored(database, repository)


def stored_snapshots(database: Database) -> list[tuple[Any, ...]]:
    """Every snapshot as stored (times, source, depths, content hash), in a fixed order."""
    with database.engine.connect() as connection:
        rows = connection.execute(
            select(
                charts.c.country,
                charts.c.collection,
                snapshots.c.fetched_at,
                snapshots.c.confirmed_at,
                snapshots.c.feed_updated_at,
                snapshots.c.source,
                snapshots.c.requested_depth,
                snapshots.c.visible_depth,
                snapshots.c.content_hash,
            )
            .join(charts, charts.c.id == snapshots.c.chart_id)
            .order_by(charts.c.country, snapshots.c.fetched_at)
        )
        return [tuple(row) for row in rows]


def what_users_see(repository: Repository) -> dict[str, Any]:
    """The watched apps' rank histories, and every chart as `chart --at` shows it at every
    recorded time."""
    seen: dict[str, Any] = {app.name: history(repository, app.store_id) for app in WATCHED}
    payloads, _ = find_payloads(SCENARIO)
    for payload in payloads:
        view = repository.chart_at(payload.chart, payload.fetched_at)
        assert view is not None
        seen[f"{payload.chart}@{payload.fetched_at}"] = (
            view.fetched_at,
            view.confirmed_at,
            view.source,
            view.visible_depth,
            [(entry.rank, entry.store_id, entry.name, entry.developer) for entry in view.entries],
        )
    return seen


def history(repository: Repository, store_id: str, country: str | None = None) -> list[RankPoint]:
    (app,) = repository.find_apps(store_id)
    return repository.history(app.id, country=country)


@pytest.mark.anyio
async def test_replaying_the_scenario_stores_what_polling_its_feeds_would_have(
    replayed: Stored, sqlite_database: Database
) -> None:
    payloads, _ = find_payloads(SCENARIO)
    feeds = RecordedFeeds(payloads, depth=DEPTH)
    clock = [utc("2025-01-20T00:00:00")]
    polled = Repository(sqlite_database)
    polled.sync_charts(sorted({payload.chart for payload in payloads}), now=clock[0])
    polled.sync_watchlist(WATCHED)
    with ScriptedServer(fallback=feeds.serve) as server:
        async with FeedClient(http_settings()) as client:
            poller = Poller(
                client=client,
                repository=polled,
                endpoints=FeedEndpoints(server.url(""), server.url("")),
                settings=PollSettings(
                    depth=DEPTH,
                    prefer_v2=True,
                    interval=INTERVAL,
                    failure_retry=INTERVAL,
                    lease=LEASE,
                ),
                clock=lambda: clock[0],
                metrics=ServiceMetrics(
                    poll_interval=INTERVAL,
                    read_state=lambda at: polled.service_state(now=at),
                    app_labels={},
                    clock=utc_now,
                ),
            )
            for at, recorded_charts in feeds.moments():
                clock[0] = feeds.now = at
                claims = polled.claim_due(
                    owner="poller", now=at, lease=LEASE, limit=len(recorded_charts),
                    charts=recorded_charts,
                )  # fmt: skip
                assert len(claims) == len(recorded_charts)
                for claim in claims:
                    result = await poller.poll(claim)
                    assert result.error is None, result
        assert not server.unexpected
        assert not server.errors

    assert stored_snapshots(replayed.database) == stored_snapshots(sqlite_database)
    # The US charts recorded at 03:00 UTC repeat those of 00:00: confirmations, not snapshots.
    assert len(stored_snapshots(sqlite_database)) == len(payloads) - 12
    assert what_users_see(replayed.repository) == what_users_see(polled)


def test_deepseek_climbs_the_replayed_us_chart_as_reported(replayed: Stored) -> None:
    deepseek = {p.at: p for p in history(replayed.repository, DEEPSEEK, "us")}
    chatgpt = {p.at: p for p in history(replayed.repository, CHATGPT, "us")}
    assert deepseek.keys() == chatgpt.keys()
    # Below the chart's 100 entries before its climb: not listed, yet not a failed fetch.
    assert {p.status for at, p in deepseek.items() if at < utc("2025-01-23T00:00")} == {
        RankStatus.BELOW_DEPTH
    }
    assert deepseek[utc("2025-01-24T12:00")].rank == 31
    first_top = min(at for at, p in deepseek.items() if p.rank == 1)
    assert first_top == utc("2025-01-26T06:00")
    for at, point in deepseek.items():
        ranks = (point.rank or DEPTH + 1, chatgpt[at].rank or DEPTH + 1)
        if at < first_top:
            assert ranks[1] < ranks[0], (at, ranks)  # ChatGPT ahead until DeepSeek's #1
        else:
            assert ranks == (1, 2), at


def test_deepseek_is_number_one_in_every_replayed_storefront_by_the_end_of_27_january(
    replayed: Stored,
) -> None:
    end_of_27 = utc("2025-01-27T23:59")
    for country in SCENARIO_COUNTRIES:
        points = history(replayed.repository, DEEPSEEK, country)
        assert [p.rank for p in points if p.at > end_of_27] == [1] * len(
            [p for p in points if p.at > end_of_27]
        ), country
        assert any(p.rank == 1 for p in points if p.at <= end_of_27), country


def test_replaying_the_scenario_again_stores_nothing_new(replayed: Stored) -> None:
    before = stored_snapshots(replayed.database)
    report = replay_into(replayed.repository, SCENARIO)
    assert sum(chart.stored for chart in report.charts.values()) == 0
    assert sum(chart.unchanged for chart in report.charts.values()) == 288
    assert stored_snapshots(replayed.database) == before


# -- the command, on small folders --------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    database_url: str = request.getfixturevalue(f"{request.param}_url")
    with deployment(tmp_path, database_url) as deployed:
        yield deployed


def write(path: Path, body: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(body) if path.name.endswith(".gz") else body)
    return path


@pytest.fixture
def bug_report(tmp_path: Path) -> Path:
    """A few payloads saved by hand: the US chart twice with the same content, then an error
    page instead of the feed; the Hong Kong grossing chart (not configured) from the legacy
    feed, gzip-compressed; a stray JSON file beside the charts, and a note."""
    folder = tmp_path / "bug-report"
    write(folder / "us/top_free/20250126T060000Z.apple_v2.json", V2_US_FREE)
    write(folder / "us/top_free/2025-01-26T07:00:00+00:00.apple_v2.json", V2_US_FREE)
    write(folder / "us/top_free/2025-01-26T08:00:00Z.apple_v2.json", HTML_ERROR_PAGE)
    write(folder / "apple/hk/top_grossing/iphone/all/20240904T140000Z.itunes_rss.json.gz",
          LEGACY_HK_GROSSING)  # fmt: skip
    write(folder / "settings.json", b"{}")
    write(folder / "NOTES.txt", b"DeepSeek shows twice")
    return folder


def test_replay_imports_a_bug_report_folder_and_names_the_files_it_could_not(
    any_deployment: Deployment, bug_report: Path
) -> None:
    result = any_deployment.run("replay", str(bug_report))

    assert result.exit_code == 1, result.output
    failed = sorted(line for line in result.stderr.splitlines() if line.startswith("failed: "))
    assert len(failed) == 2, result.stderr
    assert failed[0].startswith("failed: settings.json: not in a chart's folder")
    assert failed[1].startswith(
        "failed: us/top_free/2025-01-26T08:00:00Z.apple_v2.json: FeedFormatError"
    )
    rows = {row["chart"]: row for row in table(result.stdout)}
    assert rows["apple/us/top_free/iphone/all"] == {
        "chart": "apple/us/top_free/iphone/all", "payloads": "3", "stored": "1",
        "unchanged": "1", "failed": "1", "first": "2025-01-26T06:00:00+00:00",
        "last": "2025-01-26T07:00:00+00:00",
    }  # fmt: skip
    assert rows["apple/hk/top_grossing/iphone/all"]["stored"] == "1"

    us = any_deployment.json("chart", "--country", "us", "--collection", "top_free")
    assert (us["fetched_at"], us["confirmed_at"]) == (
        "2025-01-26T06:00:00+00:00",
        "2025-01-26T07:00:00+00:00",
    )
    assert us["entries"][0]["store_id"] == CHATGPT
    hk = any_deployment.json("chart", "--country", "hk", "--collection", "top_grossing")
    assert (hk["source"], hk["visible_depth"]) == ("itunes_rss", 10)
    assert enabled_charts(any_deployment) == {US_FREE.slug: True, HK_GROSSING.slug: False}

    again = any_deployment.run("replay", str(bug_report), "--format", "json")
    assert again.exit_code == 1
    assert {row["chart"]: row["stored"] for row in json.loads(again.stdout)} == {
        US_FREE.slug: 0,
        HK_GROSSING.slug: 0,
    }


def enabled_charts(deployed: Deployment) -> dict[str, bool]:
    """Whether the schedule polls the US top free and HK top grossing charts."""
    with (
        open_database(deployed.database_url, writer=False) as database,
        database.engine.connect() as connection,
    ):
        rows = connection.execute(
            select(charts.c.country, charts.c.collection, poll_tasks.c.enabled).join(
                poll_tasks, poll_tasks.c.chart_id == charts.c.id
            )
        )
        enabled = {f"apple/{r.country}/{r.collection}/iphone/all": r.enabled for r in rows}
    return {slug: enabled[slug] for slug in (US_FREE.slug, HK_GROSSING.slug)}


def test_a_dry_run_parses_every_payload_and_writes_nothing(
    tmp_path: Path, sqlite_url: str, bug_report: Path
) -> None:
    with deployment(tmp_path, sqlite_url) as deployed:
        result = deployed.run("replay", "--dry-run", str(bug_report), "--format", "json")
        assert result.exit_code == 1
        assert {row["chart"]: row["stored"] for row in json.loads(result.stdout)} == {
            US_FREE.slug: 2,
            HK_GROSSING.slug: 1,
        }
        assert "FeedFormatError" in result.stderr
        assert not deployed.sqlite_file.exists()


def test_a_missing_file_or_empty_folder_is_refused_with_exit_2(
    tmp_path: Path, sqlite_url: str
) -> None:
    empty = tmp_path / "empty"
    write(empty / "README.md", b"nothing recorded yet")
    with deployment(tmp_path, sqlite_url) as deployed:
        missing = deployed.run("replay", str(tmp_path / "missing"))
        assert missing.exit_code == 2
        assert "does not exist" in missing.stderr
        not_a_folder = deployed.run("replay", str(empty / "README.md"))
        assert not_a_folder.exit_code == 2
        nothing = deployed.run("replay", str(empty))
        assert nothing.exit_code == 2
        assert "no recorded payloads" in nothing.stderr
        assert not deployed.sqlite_file.exists()


def test_the_committed_scenario_is_what_its_generator_writes(tmp_path: Path) -> None:
    """The payloads can be reviewed through generate.py: running it again in a copy of the
    tree writes every file byte for byte the same, and nothing else."""
    copy = tmp_path / "seeds" / "scenarios" / SCENARIO.name
    shutil.copytree(SCENARIO, copy, ignore=shutil.ignore_patterns("??"))
    (tmp_path / "tests" / "fixtures").mkdir(parents=True)
    (tmp_path / "tests" / "fixtures" / "feeds").symlink_to(FIXTURES)
    subprocess.run([sys.executable, str(copy / "generate.py")], check=True, timeout=60)

    def files(folder: Path) -> dict[str, bytes]:
        return {
            p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*.json.gz"))
        }

    committed = files(SCENARIO)
    assert len(committed) == 96 + 4 * 48
    assert files(copy) == committed
    assert sum(map(len, committed.values())) < 2_500_000
    assert "RECONSTRUCTED" in (SCENARIO / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(("flags", "alerted"), [((), False), (("--alerts",), True)])
def test_imported_history_raises_alerts_only_when_asked(
    tmp_path: Path, sqlite_url: str, bug_report: Path, flags: tuple[str, ...], alerted: bool
) -> None:
    feed = json.loads(V2_US_FREE)
    results = feed["feed"]["results"]
    assert (results[0]["id"], results[2]["name"]) == (CHATGPT, "Claude by Anthropic")
    results[0], results[2] = results[2], results[0]
    write(bug_report / "us/top_free/20250126T090000Z.apple_v2.json", json.dumps(feed).encode())
    with deployment(tmp_path, sqlite_url) as deployed:
        assert deployed.run("replay", *flags, str(bug_report)).exit_code == 1
        events = deployed.json("alerts", "list")
    # Claude takes #1 from ChatGPT: the default rule "top-top1" fires for it.
    assert any(event["rule"] == "top-top1" for event in events) is alerted, events


def test_replay_does_not_import_a_payload_older_than_where_retention_folded(
    any_deployment: Deployment, tmp_path: Path
) -> None:
    folder = tmp_path / "old"
    write(folder / "us/top_free/20250126T060000Z.apple_v2.json", V2_US_FREE)
    ok_first = any_deployment.run("replay", str(folder))
    assert ok_first.exit_code == 0, ok_first.output
    # January 2025 is more than 400 days old for any run of this test: folded now.
    assert any_deployment.json("retention")[0]["chart_days_folded"] == 1
    write(folder / "us/top_free/20250126T070000Z.apple_v2.json", HTML_ERROR_PAGE)

    result = any_deployment.run("replay", str(folder))

    assert result.exit_code == 1
    failed = sorted(line for line in result.stderr.splitlines() if line.startswith("failed: "))
    assert failed == [
        "failed: us/top_free/20250126T060000Z.apple_v2.json: not imported: older than "
        f"{retention_horizon():%Y-%m-%d}, before which retention keeps daily summaries",
        "failed: us/top_free/20250126T070000Z.apple_v2.json: not imported: older than "
        f"{retention_horizon():%Y-%m-%d}, before which retention keeps daily summaries",
    ]


def retention_horizon() -> dt.datetime:
    return horizon_of(RetentionPolicy(), utc_now())
