"""The status page at `/`: rendered from a real SQLite database, and once through the service.

The database gets charts, a watchlist and a week of snapshots written the way the poller
writes them (claim, then record the snapshot or the failure). The page is read as a person
would: which apps, ranks, sparklines, feed and schedule states it shows.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Sequence

import pytest

from monitor.config import load_settings
from monitor.errors import ConfigError
from monitor.metrics import ServiceMetrics
from monitor.model import (
    ChartEntry,
    ChartKey,
    ChartSnapshot,
    FetchOutcome,
    FetchRecord,
    RankPoint,
    RankStatus,
    SourceName,
    Store,
    Validators,
    WatchedApp,
)
from monitor.status_page import (
    SPARKLINE_HEIGHT,
    SPARKLINE_WIDTH,
    StatusPage,
    held_ranks,
    sparkline,
)
from monitor.store.engine import open_database
from monitor.store.migrate import upgrade
from monitor.store.repository import CurrentRank, Repository, ServiceState
from tests.store.conftest import CHATGPT, DEEPSEEK, JP_FREE, US_FREE, US_PAID, claim_one, fetch

NOW = dt.datetime(2025, 1, 27, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)
SCRIPT_NAME = '<script>alert(1)</script> & "Co"'
SCRIPT_ID = "1000000666"
WATCHLIST = {(Store.APPLE, DEEPSEEK): "DeepSeek", (Store.APPLE, CHATGPT): "ChatGPT"}
GRAFANA = "https://grafana.example/d/apprank/app-ranks"


def ranked(store_ids: dict[int, str], *, depth: int = 100) -> list[str]:
    """A full chart of `depth` apps with `store_ids` at the given ranks, fillers elsewhere."""
    return [store_ids.get(rank, f"9{rank:09d}") for rank in range(1, depth + 1)]


class ChartWriter:
    """Writes snapshots and failed polls as the poller does; names come from `names`."""

    def __init__(self, repository: Repository, names: dict[str, str]) -> None:
        self.repository = repository
        self.names = names

    def snapshot(self, chart: ChartKey, at: dt.datetime, store_ids: Sequence[str]) -> None:
        value = ChartSnapshot(
            chart=chart,
            source=SourceName.APPLE_V2,
            fetched_at=at,
            requested_depth=len(store_ids),
            entries=tuple(
                ChartEntry(
                    rank=rank,
                    store_id=store_id,
                    name=self.names.get(store_id, f"App {store_id}"),
                    developer=f"<b>Developer</b> {store_id}",
                )
                for rank, store_id in enumerate(store_ids, start=1)
            ),
        )
        self.repository.record_snapshot(
            claim_one(self.repository, chart, at),
            value,
            content_hash=f"{chart.slug}@{at.isoformat()}",
            validators=Validators(),
            fetches=[fetch(chart, at)],
            next_due_at=at + HOUR,
        )

    def failure(self, chart: ChartKey, at: dt.datetime, message: str = "HTTP 503") -> None:
        record = FetchRecord(
            chart=chart,
            started_at=at,
            duration_seconds=0.5,
            outcome=FetchOutcome.FAILED,
            source=SourceName.APPLE_V2,
            error_class="HttpStatusError",
            error_message=message,
        )
        self.repository.record_failure(
            claim_one(self.repository, chart, at), fetches=[record], next_due_at=at + HOUR
        )


@pytest.fixture
def repository(sqlite_url: str) -> Iterator[Repository]:
    with open_database(sqlite_url, writer=True) as database:
        upgrade(database)
        repository = Repository(database)
        repository.sync_charts([US_FREE, US_PAID, JP_FREE], now=NOW - 8 * DAY)
        yield repository


@pytest.fixture
def metrics() -> ServiceMetrics:
    def scrape(now: dt.datetime) -> ServiceState:
        raise AssertionError("the page reads the state itself, not through a scrape")

    return ServiceMetrics(
        poll_interval=HOUR, read_state=scrape, app_labels=WATCHLIST, clock=lambda: NOW
    )


@pytest.fixture
def week(repository: Repository) -> Repository:
    """DeepSeek climbs US top free from #50 to #1 over the week, passing ChatGPT; neither is
    on US top paid; JP top free lists DeepSeek, then fails its last two polls."""
    repository.sync_watchlist(
        [WatchedApp(store, store_id, name) for (store, store_id), name in WATCHLIST.items()]
    )
    store = ChartWriter(repository, {DEEPSEEK: "DeepSeek - AI Assistant", CHATGPT: "ChatGPT"})
    store.snapshot(US_FREE, NOW - 6 * DAY, ranked({1: CHATGPT, 50: DEEPSEEK}))
    store.snapshot(US_FREE, NOW - 3 * DAY, ranked({1: CHATGPT, 12: DEEPSEEK}))
    store.snapshot(US_FREE, NOW - DAY, ranked({1: DEEPSEEK, 2: CHATGPT}))
    store.snapshot(US_PAID, NOW - 2 * DAY, ranked({}))
    store.snapshot(JP_FREE, NOW - 5 * DAY, ranked({7: DEEPSEEK}))
    store.failure(JP_FREE, NOW - 2 * HOUR, "HTTP 503 <from> the feed")
    store.failure(JP_FREE, NOW - HOUR, "HTTP 503 <from> the feed")
    return repository


def page(repository: Repository, metrics: ServiceMetrics, *, grafana_url: str | None = None) -> str:
    return StatusPage(
        repository, metrics, app_names=WATCHLIST, clock=lambda: NOW, grafana_url=grafana_url
    ).render()


def app_section(html: str, label: str) -> str:
    """The part of the page about one tracked app: from its heading to the next one."""
    sections = re.split(r'<h3 id="app-\d+">', html)
    matching = [section for section in sections if section.startswith(label)]
    assert len(matching) == 1, f"no single section for {label!r}"
    return matching[0].split("</section>")[0]


def row(section: str, chart_name: str) -> str:
    rows = [r for r in section.split("<tr>") if chart_name in r]
    assert len(rows) == 1, f"no single row for {chart_name!r}"
    return rows[0]


def polyline_vertices(html: str) -> list[list[tuple[float, float]]]:
    return [
        [tuple(map(float, vertex.split(","))) for vertex in points.split()]  # type: ignore[misc]
        for points in re.findall(r'<polyline points="([^"]*)"', html)
    ]


# -- the page --------------------------------------------------------------------------------


def test_the_page_lists_each_tracked_app_with_its_ranks_best_first(
    week: Repository, metrics: ServiceMetrics
) -> None:
    html = page(week, metrics)

    deepseek = app_section(html, "DeepSeek")
    assert "DeepSeek - AI Assistant" in deepseek  # the store's name, as it differs
    assert f"id {DEEPSEEK}" in deepseek
    assert "#1<" in row(deepseek, "US · top free · iphone · all genres")
    assert "#7<" in row(deepseek, "JP · top free · iphone · all genres")
    assert deepseek.index("US · top free") < deepseek.index("JP · top free")
    chatgpt = app_section(html, "ChatGPT")
    assert "#2<" in row(chatgpt, "US · top free")
    # The name is the watchlist's and the store's: said once.
    assert chatgpt.count("ChatGPT") == 1
    assert html.index(">ChatGPT <small>") < html.index(">DeepSeek <small>")


def test_an_overview_leads_with_each_apps_best_rank_and_links_to_its_section(
    week: Repository, metrics: ServiceMetrics
) -> None:
    html = page(week, metrics)

    overview = html.split("<h3")[0]
    deepseek = row(overview, ">DeepSeek</a>")
    anchor = re.search(r'href="#(app-\d+)"', deepseek)
    assert anchor is not None
    assert f'<h3 id="{anchor[1]}">DeepSeek' in html
    assert "#1<" in deepseek
    assert "US · top free · iphone · all genres" in deepseek
    assert "2 of 3 charts" in deepseek


def test_past_the_sparkline_budget_listed_charts_show_their_rank_without_one(
    week: Repository, metrics: ServiceMetrics
) -> None:
    html = StatusPage(
        week, metrics, app_names=WATCHLIST, clock=lambda: NOW, sparkline_charts=1
    ).render()

    deepseek = app_section(html, "DeepSeek")
    best = row(deepseek, "US · top free · iphone · all genres")
    beyond = row(deepseek, "JP · top free · iphone · all genres")
    assert "<svg" in best
    assert "#7<" in beyond
    assert "<svg" not in beyond


def test_a_chart_not_listing_the_app_says_so_with_its_depth(
    week: Repository, metrics: ServiceMetrics
) -> None:
    html = page(week, metrics)

    chatgpt = app_section(html, "ChatGPT")
    folded = chatgpt.split("<details>")[1]
    assert "Not listed on 2 more charts<" in folded
    assert "US · top paid · iphone · all genres: not listed (below #100)" in folded
    assert "JP · top free · iphone · all genres: not listed (below #100)" in folded
    assert "confirmed 2d ago" in folded


def test_the_sparkline_puts_rank_1_at_the_top_and_breaks_at_failed_polls(
    week: Repository, metrics: ServiceMetrics
) -> None:
    html = page(week, metrics)
    deepseek = app_section(html, "DeepSeek")

    climb = polyline_vertices(row(deepseek, "US · top free"))
    assert len(climb) == 1  # listed throughout: one unbroken line
    heights = sorted({y for _, y in climb[0]})
    assert len(heights) == 3  # 50, 12, 1 ...
    assert climb[0][0][1] == heights[-1]  # ... starting at #50, at the bottom
    assert climb[0][-1][1] == heights[0]  # ... and ending at #1, at the top
    assert all(0 <= x <= SPARKLINE_WIDTH and 0 <= y <= SPARKLINE_HEIGHT for x, y in climb[0])
    assert "#1\N{EN DASH}#50" in row(deepseek, "US · top free")

    # JP: #7 from day -5 until the first of the last two polls, which failed.
    jp = polyline_vertices(row(deepseek, "JP · top free"))
    assert len(jp) == 1
    assert jp[0][0][0] == pytest.approx(SPARKLINE_WIDTH * 2 / 7, abs=0.05)
    assert jp[0][-1][0] == pytest.approx(SPARKLINE_WIDTH * (1 - 2 / (7 * 24)), abs=0.05)


def test_the_sparkline_svg_holds_numbers_only(week: Repository, metrics: ServiceMetrics) -> None:
    html = page(week, metrics)

    svgs = re.findall(r"<svg.*?</svg>", html, flags=re.DOTALL)
    assert svgs
    for svg in svgs:
        for value in re.findall(r'(?:points|width|height|viewBox)="([^"]*)"', svg):
            assert re.fullmatch(r"[0-9., ]+", value)


def test_source_health_and_the_schedule_are_shown(
    week: Repository, metrics: ServiceMetrics
) -> None:
    for outcome in (FetchOutcome.CHANGED, FetchOutcome.CHANGED, FetchOutcome.NOT_MODIFIED):
        metrics.fetched(fetch(US_FREE, NOW, outcome))
    for _ in range(3):
        metrics.fetched(fetch(US_FREE, NOW, FetchOutcome.FAILED, source=SourceName.ITUNES_RSS))

    html = page(week, metrics)

    sources = html.split("<h2>Feed sources")[1].split("</section>")[0]
    cells = [re.sub(r"<[^>]+>", " ", r).split() for r in sources.split("<tr>")[2:]]
    # feed, state, then changed / unchanged / not modified / failed, then failures in a row
    assert cells == [
        ["apple_v2", "up", "2", "0", "1", "0", "0"],
        ["itunes_rss", "down", "0", "0", "0", "3", "3"],
    ]
    schedule = html.split("<h2>Schedule")[1]
    assert re.sub(r"<[^>]+>|\s", " ", schedule).split()[:12] == [
        *("Enabled", "Due", "Leased", "Failing", "Poll", "lag"),
        *("3", "3", "0", "1"),
        "1d23h",  # US top paid was due an hour after its poll 2 days ago: nothing polls here
        "Failing",
    ]
    failing = row(schedule, "JP · top free")
    assert ">2<" in failing
    assert "HttpStatusError: HTTP 503 &lt;from&gt; the feed" in failing
    assert "changed" not in failing


def test_sources_are_unknown_before_the_first_fetch(
    repository: Repository, metrics: ServiceMetrics
) -> None:
    html = page(repository, metrics)

    assert html.count('<td class="unknown">unknown</td>') == 2
    assert "No apps on the watchlist." in html


def test_the_grafana_link_is_there_only_when_configured(
    repository: Repository, metrics: ServiceMetrics
) -> None:
    without = page(repository, metrics)
    with_grafana = page(repository, metrics, grafana_url=GRAFANA)

    for html in (without, with_grafana):
        for path in ("/metrics", "/readyz", "/healthz"):
            assert f'<a href="{path}">' in html
    assert "Grafana" not in without
    assert f'<a href="{GRAFANA}">Grafana</a>' in with_grafana


def test_names_and_errors_from_the_stores_are_escaped(
    repository: Repository, metrics: ServiceMetrics
) -> None:
    repository.sync_watchlist([WatchedApp(Store.APPLE, SCRIPT_ID, "placeholder")])
    store = ChartWriter(repository, {SCRIPT_ID: SCRIPT_NAME})
    store.snapshot(US_FREE, NOW - DAY, ranked({3: SCRIPT_ID}))
    store.failure(US_PAID, NOW - HOUR, "<script>alert(2)</script>")

    html = StatusPage(repository, metrics, app_names={}, clock=lambda: NOW).render()

    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &#34;Co&#34;" in html
    assert "&lt;b&gt;Developer&lt;/b&gt;" in html
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in html


def test_a_database_that_cannot_be_read_is_reported_on_the_page(
    sqlite_url: str, metrics: ServiceMetrics
) -> None:
    with open_database(sqlite_url, writer=True) as never_migrated:
        html = page(Repository(never_migrated), metrics)

    assert "Could not read the stored state: database error: no such table" in html
    assert "<h2>Feed sources" in html  # what this process knows is still shown
    assert "<h2>Tracked apps" not in html


# -- sparkline geometry ----------------------------------------------------------------------

SINCE = NOW - 7 * DAY


def current(rank: int | None, fetched_at: dt.datetime, confirmed_at: dt.datetime) -> CurrentRank:
    return CurrentRank(US_FREE, rank, 100, fetched_at, confirmed_at)


def listed(at: dt.datetime, rank: int) -> RankPoint:
    return RankPoint(at, US_FREE, RankStatus.LISTED, rank=rank, depth=100)


def below(at: dt.datetime) -> RankPoint:
    return RankPoint(at, US_FREE, RankStatus.BELOW_DEPTH, depth=100)


def failed(at: dt.datetime) -> RankPoint:
    return RankPoint(at, US_FREE, RankStatus.FETCH_FAILED, error="FetchTimeout")


def at(days: float) -> dt.datetime:
    return SINCE + days * DAY


def test_a_rank_holds_until_the_next_snapshot_and_the_last_until_confirmed() -> None:
    points = [listed(at(1), 20), listed(at(3), 5)]

    lines = held_ranks(points, current(5, at(3), at(6.5)), since=SINCE)

    assert lines == [[(at(1), 20), (at(3), 20), (at(3), 5), (at(6.5), 5)]]


def test_not_listed_breaks_the_line() -> None:
    points = [listed(at(1), 20), below(at(2)), listed(at(4), 9)]

    lines = held_ranks(points, current(9, at(4), at(5)), since=SINCE)

    assert lines == [[(at(1), 20), (at(2), 20)], [(at(4), 9), (at(5), 9)]]


def test_failed_polls_break_the_line_until_a_poll_succeeds_again() -> None:
    points = [listed(at(1), 20), failed(at(2)), failed(at(2.5)), listed(at(4), 9), failed(at(6))]

    # The chart was confirmed after the last failure: the rank resumes from it.
    recovered = held_ranks(points, current(9, at(4), at(6.5)), since=SINCE)
    # The last failure is the latest news: the line stops at it.
    failing = held_ranks(points, current(9, at(4), at(5)), since=SINCE)

    first_lines = [[(at(1), 20), (at(2), 20)], [(at(2.5), 20), (at(4), 20), (at(4), 9), (at(6), 9)]]
    assert recovered == [*first_lines, [(at(6), 9), (at(6.5), 9)]]
    assert failing == first_lines


def test_a_snapshot_older_than_the_window_holds_from_its_start() -> None:
    lines = held_ranks([], current(3, SINCE - DAY, at(7)), since=SINCE)

    assert lines == [[(SINCE, 3), (at(7), 3)]]
    assert held_ranks([], current(None, SINCE - DAY, at(7)), since=SINCE) == []


def test_the_sparkline_maps_time_left_to_right_and_rank_1_to_the_top() -> None:
    lines = [[(at(0), 100), (at(3.5), 100), (at(3.5), 10), (at(7), 10)], [(at(7), 1), (at(7), 1)]]

    drawn = sparkline(lines, since=SINCE, until=at(7), depth=100)

    assert drawn is not None
    assert (drawn.best, drawn.worst) == (1, 100)
    first, second = ([tuple(map(float, v.split(","))) for v in p.split()] for p in drawn.polylines)
    assert first[0] == (0.0, SPARKLINE_HEIGHT - 2.0)  # #100 of 100 at the bottom, at the start
    assert first[2] == (SPARKLINE_WIDTH / 2, SPARKLINE_HEIGHT / 2)  # #10: halfway on a log scale
    assert first[-1][0] == SPARKLINE_WIDTH - 1.0  # trimmed: a gap before the next line
    assert second[0] == (SPARKLINE_WIDTH, 2.0)  # #1 at the top
    assert sparkline([], since=SINCE, until=at(7), depth=100) is None


# -- configuration and the running service ---------------------------------------------------


def test_the_grafana_url_is_read_from_the_environment_and_checked() -> None:
    assert load_settings(None, {}).http.grafana_url is None
    settings = load_settings(None, {"MONITOR_HTTP_GRAFANA_URL": f" {GRAFANA}/ "})
    assert settings.http.grafana_url == GRAFANA
    assert settings.redacted()["http"]["grafana_url"] == GRAFANA

    with pytest.raises(ConfigError) as invalid:
        load_settings(None, {"MONITOR_HTTP_GRAFANA_URL": "javascript:alert(1)"})
    assert invalid.value.problems == [
        "MONITOR_HTTP_GRAFANA_URL: [http] grafana_url = 'javascript:alert(1)': expected an "
        "http:// or https:// URL with a host"
    ]
