"""The read API under /api/v1, through the real FastAPI app and a real database.

The database is filled the way the poller fills it (claim, record the snapshot or the failure,
alert rules evaluated in the same transaction): over a day DeepSeek climbs the US top free
chart from #31 to #1 past ChatGPT, and rises on JP top free, which then fails a poll. Requests
go through httpx's ASGI transport; each answer is checked against what the repository (and
so the command line) says for the same question.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from monitor.api import ApiSources, ReadApi
from monitor.config import Settings, load_settings
from monitor.documents import alert_document, chart_document, point_document
from monitor.metrics import ServiceMetrics
from monitor.model import watchlist_names
from monitor.status_page import StatusPage
from monitor.store.engine import Database, open_database
from monitor.store.repository import Repository, ServiceState
from monitor.store.retention import RetentionPolicy
from monitor.web import Readiness, create_app
from monitor.wiring import service_metrics, service_repository
from monitor.worker import _Service, bind_listener
from tests.store.conftest import CHATGPT, DEEPSEEK, JP_FREE, US_FREE, US_PAID
from tests.test_status_page import ChartWriter, ranked

pytestmark = pytest.mark.anyio

HOUR = dt.timedelta(hours=1)
START = dt.datetime(2025, 1, 25, 0, 0, tzinfo=dt.UTC)
HOURS = 24
NOW = START + (HOURS - 1) * HOUR + dt.timedelta(minutes=30)
TOKEN = "s3cret-token"
SEEDED_APPS = 9  # seeds/watchlist.toml


def deepseek_rank(hour: int) -> int:
    return max(1, 31 - 2 * hour)


def settings() -> Settings:
    return load_settings(environ={"MONITOR_ALERTS_RECIPIENTS": '["ops@example.com"]'})


def fill(database: Database) -> Repository:
    """A day of hourly US top free snapshots (DeepSeek #31 -> #1), two of US top paid
    (ChatGPT #5 -> #3) and of JP top free (DeepSeek #7 -> #2, then a failed poll)."""
    configured = settings()
    repository = Repository(
        database,
        alerts=configured.alerts.policy(configured.watched_apps()),
        clock=lambda: NOW,
    )
    repository.sync_charts([US_FREE, US_PAID, JP_FREE], now=START - HOUR)
    repository.sync_watchlist(configured.watched_apps())
    writer = ChartWriter(repository, {DEEPSEEK: "DeepSeek - AI Assistant", CHATGPT: "ChatGPT"})
    for hour in range(HOURS):
        deepseek = deepseek_rank(hour)
        chatgpt = 2 if deepseek == 1 else 1
        ranks = ranked({deepseek: DEEPSEEK, chatgpt: CHATGPT}, depth=40)
        writer.snapshot(US_FREE, START + hour * HOUR, ranks)
    writer.snapshot(US_PAID, START, ranked({5: CHATGPT}, depth=40))
    writer.snapshot(US_PAID, START + 20 * HOUR, ranked({3: CHATGPT}, depth=40))
    writer.snapshot(JP_FREE, START, ranked({7: DEEPSEEK}, depth=40))
    writer.snapshot(JP_FREE, START + 22 * HOUR, ranked({2: DEEPSEEK}, depth=40))
    writer.failure(JP_FREE, START + 23 * HOUR)
    return repository


async def ready() -> Readiness:
    return Readiness({"database": "ok"})


async def exposition() -> bytes:
    return b""


async def status_page() -> str:
    return "<!doctype html>"


def api_app(
    repository: Repository, *, token: str | None = None, open_without_token: bool = True
) -> Any:
    api = ReadApi(
        ApiSources(repository, watchlist_names(settings().watched_apps()), lambda: NOW),
        token=token,
        open_without_token=open_without_token,
    )
    return create_app(readiness=ready, exposition=exposition, status_page=status_page, api=api)


def client_of(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://monitor.test")


@pytest.fixture
def filled(database: Database) -> Repository:
    return fill(database)


@pytest.fixture
async def client(filled: Repository) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(api_app(filled)) as client:
        yield client


@pytest.fixture
async def sqlite_client(sqlite_database: Database) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(api_app(fill(sqlite_database))) as client:
        yield client


async def walk(client: httpx.AsyncClient, url: str, key: str) -> list[dict[str, Any]]:
    """Every item of a paged list, following `next` while `has_more`."""
    items: list[dict[str, Any]] = []
    next_url: str | None = url
    pages = 0
    while next_url is not None:
        response = await client.get(next_url)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["has_more"] == (body["next"] is not None)
        items += body[key]
        next_url = body["next"]
        pages += 1
        assert pages < 100
    return items


def same_times(document: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """`document` with its ISO times as datetimes: the API writes UTC as Z, the CLI +00:00."""
    return {
        key: dt.datetime.fromisoformat(value) if key in fields and value else value
        for key, value in document.items()
    }


# -- data ---------------------------------------------------------------------------------------


async def test_apps_lists_every_tracked_app_with_its_current_ranks(
    client: httpx.AsyncClient, filled: Repository
) -> None:
    body = (await client.get("/api/v1/apps")).json()

    assert (body["has_more"], body["next"]) == (False, None)
    apps = {app["name"]: app for app in body["apps"]}
    assert len(apps) == SEEDED_APPS
    deepseek = apps["DeepSeek"]
    assert (deepseek["store_id"], deepseek["store_name"]) == (DEEPSEEK, "DeepSeek - AI Assistant")
    assert (deepseek["best_rank"], deepseek["best_chart"], deepseek["charts_listed"]) == (
        1,
        US_FREE.slug,
        2,
    )
    assert {r["chart"]: r["rank"] for r in deepseek["ranks"]} == {
        US_FREE.slug: 1,
        US_PAID.slug: None,
        JP_FREE.slug: 2,
    }
    assert {r["chart"]: r["rank"] for r in apps["ChatGPT"]["ranks"]}[US_PAID.slug] == 3
    assert [(row["store_id"], row["best_rank"]) for row in body["apps"]] == [
        (status.app.store_id, status.best_rank) for status in filled.tracked_apps()
    ]


async def test_history_pages_walk_the_whole_series_without_loss_or_repeat(
    client: httpx.AsyncClient, filled: Repository
) -> None:
    single = (await client.get("/api/v1/apps/DeepSeek/history?limit=1000")).json()
    paged = await walk(client, "/api/v1/apps/DeepSeek/history?limit=4", "points")

    app_id = filled.find_apps(DEEPSEEK)[0].id
    expected = sorted(filled.history(app_id), key=lambda point: (point.at, point.chart.slug))
    times = ("time",)
    assert len(expected) == HOURS + 3  # US top free hourly; JP: two snapshots, one failure
    assert [same_times(point, times) for point in paged] == [
        same_times(point_document(point), times) for point in expected
    ]
    assert single["points"] == paged
    assert (single["store_id"], single["name"]) == (DEEPSEEK, "DeepSeek")
    assert [p["rank"] for p in paged if p["chart"] == US_FREE.slug] == [
        deepseek_rank(hour) for hour in range(HOURS)
    ]
    assert [p["status"] for p in paged if p["chart"] == JP_FREE.slug] == [
        "listed",
        "listed",
        "fetch_failed",
    ]


async def test_history_pages_walk_folded_days_and_snapshots_alike(
    client: httpx.AsyncClient, filled: Repository
) -> None:
    # Two days on, a one-day retention folds the whole first day: each chart becomes one point.
    policy = RetentionPolicy(snapshot_days=1, fetch_log_days=30)
    filled.run_retention(policy, now=START + dt.timedelta(days=2))
    app_id = filled.find_apps(DEEPSEEK)[0].id

    paged = await walk(client, "/api/v1/apps/DeepSeek/history?limit=2", "points")

    expected = sorted(filled.history(app_id), key=lambda point: (point.at, point.chart.slug))
    times = ("time",)
    assert [same_times(point, times) for point in paged] == [
        same_times(point_document(point), times) for point in expected
    ]
    (us_day,) = [p for p in paged if p["chart"] == US_FREE.slug]
    assert (us_day["resolution"], us_day["rank"], us_day["best"], us_day["worst"]) == (
        "day",
        1,
        1,
        31,
    )
    assert same_times(us_day, times)["time"] == START
    # The JP failure stays: the fetch log keeps 30 days.
    assert [(p["resolution"], p["status"]) for p in paged if p["chart"] == JP_FREE.slug] == [
        ("day", "listed"),
        ("poll", "fetch_failed"),
    ]


async def test_history_filters_like_the_cli(client: httpx.AsyncClient) -> None:
    # By store id, bundle-less; since as a duration ago (NOW is 23:30 on the day's last hour).
    recent = (await client.get(f"/api/v1/apps/{DEEPSEEK}/history?since=2h")).json()["points"]
    us = await walk(
        client, "/api/v1/apps/deepseek/history?country=US&collection=top_free", "points"
    )
    window = (
        await client.get(
            "/api/v1/apps/DeepSeek/history",
            params={"since": "2025-01-25T10:00:00Z", "until": "2025-01-25T12:00:00+00:00"},
        )
    ).json()["points"]

    assert [(p["time"][11:16], p["chart"], p["status"]) for p in recent] == [
        ("22:00", JP_FREE.slug, "listed"),
        ("22:00", US_FREE.slug, "listed"),
        ("23:00", JP_FREE.slug, "fetch_failed"),
        ("23:00", US_FREE.slug, "listed"),
    ]
    assert {p["chart"] for p in us} == {US_FREE.slug}
    assert len(us) == HOURS
    assert [p["rank"] for p in window] == [deepseek_rank(h) for h in (10, 11, 12)]


async def test_a_chart_as_stored_at_a_time(client: httpx.AsyncClient, filled: Repository) -> None:
    at = START + 5 * HOUR + dt.timedelta(minutes=20)
    response = await client.get("/api/v1/charts/us/top_free", params={"at": at.isoformat()})
    latest = await client.get("/api/v1/charts/JP/top_free?device=iphone&genre=all")

    assert response.status_code == 200
    view = filled.chart_at(US_FREE, at)
    assert view is not None
    expected = chart_document(view)
    times = ("fetched_at", "confirmed_at", "feed_updated_at")
    assert same_times(response.json(), times) == same_times(expected, times)
    assert response.json()["entries"][deepseek_rank(5) - 1]["store_id"] == DEEPSEEK
    assert latest.json()["entries"][1]["name"] == "DeepSeek - AI Assistant"
    assert latest.json()["fetched_at"].startswith("2025-01-25T22:00:00")


async def test_movers_compare_each_chart_with_its_state_a_window_ago(
    client: httpx.AsyncClient,
) -> None:
    body = (await client.get("/api/v1/movers?window=12h")).json()
    us = (await client.get("/api/v1/movers?window=12h&country=us&collection=top_free")).json()

    # As of 11:30 DeepSeek was #9 on US top free (the 11:00 snapshot), #7 on JP.
    assert [(m["name"], m["chart"], m["movement"], m["places"]) for m in body["movers"]] == [
        ("DeepSeek", US_FREE.slug, "rose", 8),
        ("DeepSeek", JP_FREE.slug, "rose", 5),
        ("ChatGPT", US_PAID.slug, "rose", 2),
        ("ChatGPT", US_FREE.slug, "fell", -1),
    ]
    assert dt.datetime.fromisoformat(body["since"]) == NOW - 12 * HOUR
    assert [(m["name"], m["rank"], m["previous_rank"]) for m in us["movers"]] == [
        ("DeepSeek", 1, 9),
        ("ChatGPT", 2, 1),
    ]
    paged = await walk(client, "/api/v1/movers?window=12h&limit=3", "movers")
    assert paged == body["movers"]


async def test_alerts_are_the_stored_events_with_their_deliveries(
    client: httpx.AsyncClient, filled: Repository
) -> None:
    names = watchlist_names(settings().watched_apps())
    stored = filled.recent_alerts(limit=1000, app_names=names)
    paged = await walk(client, "/api/v1/alerts?limit=3", "alerts")
    chatgpt = await walk(client, "/api/v1/alerts?app=chatgpt", "alerts")

    assert len(stored) > 3, "the climb fires several alerts"
    times = ("at",)
    assert [same_times({**a, "deliveries": None}, times) for a in paged] == [
        same_times({**alert_document(record), "deliveries": None}, times) for record in stored
    ]
    assert {d["recipient"] for a in paged for d in a["deliveries"]} == {"ops@example.com"}
    assert {a["store_id"] for a in chatgpt} == {CHATGPT}
    assert [a["id"] for a in chatgpt] == [a["id"] for a in paged if a["store_id"] == CHATGPT]
    cutoff = NOW - 5 * HOUR
    recent = await walk(client, "/api/v1/alerts?since=5h", "alerts")
    assert [a["id"] for a in recent] == [r.id for r in stored if r.event.at >= cutoff]


# -- bad requests -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "status", "parameter"),
    [
        ("/api/v1/apps?limit=0", 400, "limit"),
        ("/api/v1/apps?limit=1001", 400, "limit"),
        ("/api/v1/apps?limit=ten", 400, "limit"),
        ("/api/v1/apps?offset=-1", 400, "offset"),
        ("/api/v1/apps/DeepSeek/history?since=yesterday", 400, "since"),
        ("/api/v1/apps/DeepSeek/history?until=99999999999d", 400, "until"),
        ("/api/v1/apps/DeepSeek/history?since=1h&until=2h", 400, "since"),
        ("/api/v1/apps/DeepSeek/history?country=usa", 400, "country"),
        ("/api/v1/apps/DeepSeek/history?collection=top_cool", 400, "collection"),
        ("/api/v1/apps/DeepSeek/history?device=watch", 400, "device"),
        ("/api/v1/apps/DeepSeek/history?cursor=not-a-cursor", 400, "cursor"),
        ("/api/v1/apps/App/history", 400, "app"),  # every stored app is "App <id>" or so
        ("/api/v1/apps/NoSuchApp/history", 404, "app"),
        ("/api/v1/charts/usa/top_free", 400, "country"),
        ("/api/v1/charts/us/top_cool", 400, "collection"),
        ("/api/v1/charts/us/top_free?genre=games", 400, "genre"),
        ("/api/v1/charts/us/top_free?at=soon", 400, "at"),
        ("/api/v1/charts/gb/top_free", 404, None),
        ("/api/v1/charts/us/top_free?at=2024-01-01", 404, None),
        ("/api/v1/movers?window=forever", 400, "window"),
        ("/api/v1/movers?window=0s", 400, "window"),
        ("/api/v1/movers?limit=-5", 400, "limit"),
        ("/api/v1/alerts?since=x", 400, "since"),
        ("/api/v1/alerts?app=Nobody", 404, "app"),
        ("/api/v1/nothing-here", 404, None),
    ],
)
async def test_bad_requests_get_a_4xx_naming_the_parameter(
    sqlite_client: httpx.AsyncClient, url: str, status: int, parameter: str | None
) -> None:
    response = await sqlite_client.get(url)

    assert response.status_code == status, response.text
    body = response.json()
    assert body["parameter"] == parameter
    assert body["error"]


async def test_a_database_that_cannot_be_read_is_a_503_saying_so(sqlite_url: str) -> None:
    # Before the start-up has migrated it, say: the listener answers from the first moment.
    with open_database(sqlite_url, writer=True) as unmigrated:
        async with client_of(api_app(Repository(unmigrated))) as client:
            response = await client.get("/api/v1/apps")

    assert response.status_code == 503
    assert response.json()["error"].startswith("the database could not be read: ")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_the_api_is_read_only(sqlite_client: httpx.AsyncClient, method: str) -> None:
    response = await sqlite_client.request(method, "/api/v1/apps")

    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    assert "read-only" in response.json()["error"]


# -- access -------------------------------------------------------------------------------------


@pytest.fixture
def empty(sqlite_database: Database) -> Repository:
    return Repository(sqlite_database)


async def test_on_loopback_without_a_token_the_api_is_open(empty: Repository) -> None:
    async with client_of(api_app(empty)) as client:
        response = await client.get("/api/v1/apps")

    assert response.status_code == 200
    assert response.json() == {"apps": [], "has_more": False, "next": None}


async def test_with_a_token_every_api_request_needs_it(empty: Repository) -> None:
    async with client_of(api_app(empty, token=TOKEN, open_without_token=True)) as client:
        missing = await client.get("/api/v1/apps")
        wrong = await client.get("/api/v1/apps", headers={"Authorization": "Bearer nope"})
        basic = await client.get("/api/v1/apps", headers={"Authorization": f"Basic {TOKEN}"})
        right = await client.get("/api/v1/apps", headers={"Authorization": f"Bearer {TOKEN}"})
        document = await client.get("/api/v1/openapi.json")
        health = await client.get("/healthz")

    for refused in (missing, wrong, basic, document):
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert "api_token" in refused.json()["error"]
    assert right.status_code == 200
    assert health.status_code == 200


async def test_off_loopback_without_a_token_the_api_is_off_and_says_why(
    empty: Repository,
) -> None:
    async with client_of(api_app(empty, open_without_token=False)) as client:
        answers = [
            await client.get(path)
            for path in ("/api/v1/apps", "/api/v1/openapi.json", "/api/v1/unknown")
        ]
        bearer = await client.get("/api/v1/apps", headers={"Authorization": "Bearer x"})
        others = [await client.get(path) for path in ("/healthz", "/readyz", "/", "/metrics")]

    for refused in (*answers, bearer):
        assert refused.status_code == 403
        assert "MONITOR_HTTP_API_TOKEN" in refused.json()["error"]
    assert [answer.status_code for answer in others] == [200, 200, 200, 200]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("monitor.example", False),
    ],
)
def test_only_loopback_listeners_open_the_api_without_a_token(host: str, loopback: bool) -> None:
    assert load_settings(environ={"MONITOR_HTTP_HOST": host}).http.on_loopback is loopback


def test_the_token_is_a_secret_read_from_a_file(tmp_path: Any) -> None:
    secret = tmp_path / "token"
    secret.write_text(f"{TOKEN}\n")

    configured = load_settings(environ={"MONITOR_HTTP_API_TOKEN_FILE": str(secret)})

    assert configured.http.api_token == TOKEN
    assert configured.redacted()["http"]["api_token"] == "***"
    assert TOKEN not in repr(configured)


async def test_the_worker_logs_once_that_the_api_is_off(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    configured = load_settings(
        environ={
            "MONITOR_DATABASE_URL": sqlite_url,
            "MONITOR_HTTP_HOST": "0.0.0.0",
            "MONITOR_HTTP_PORT": "1",
        }
    )
    listener = bind_listener("127.0.0.1", 0)
    with listener, open_database(sqlite_url, writer=True) as database:
        repository = service_repository(configured, database)
        service = _Service(configured, repository, service_metrics(configured, repository))
        with caplog.at_level(logging.WARNING, logger="monitor.worker"):
            async with service.serving(listener):
                pass

    off = [r for r in caplog.records if "read API is off" in r.getMessage()]
    assert len(off) == 1


# -- status page and OpenAPI --------------------------------------------------------------------


def page(repository: Repository, *, api_enabled: bool) -> str:
    def scrape(now: dt.datetime) -> ServiceState:
        raise AssertionError("not scraped")

    metrics = ServiceMetrics(
        poll_interval=HOUR, read_state=scrape, app_labels={}, clock=lambda: NOW
    )
    return StatusPage(
        repository, metrics, app_names={}, clock=lambda: NOW, api_enabled=api_enabled
    ).render()


def test_the_status_page_links_to_the_api(empty: Repository) -> None:
    on, off = page(empty, api_enabled=True), page(empty, api_enabled=False)

    for link in ("/api/v1/openapi.json", "/api/v1/apps", "/api/v1/movers", "/api/v1/alerts"):
        assert f'href="{link}' in on
    assert 'href="/api/v1/apps"' not in off
    assert "api_token" in off


async def test_the_openapi_document_describes_every_endpoint_and_its_errors(
    empty: Repository,
) -> None:
    async with client_of(api_app(empty, token=TOKEN)) as client:
        response = await client.get(
            "/api/v1/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        docs = await client.get("/docs")

    assert response.status_code == 200
    document = response.json()
    assert set(document["paths"]) == {
        "/api/v1/apps",
        "/api/v1/apps/{app}/history",
        "/api/v1/charts/{country}/{collection}",
        "/api/v1/movers",
        "/api/v1/alerts",
    }
    for path in document["paths"].values():
        responses = path["get"]["responses"]
        assert {"200", "400", "401", "403"} <= responses.keys()
        assert "422" not in responses
    assert document["security"] == [{"bearer": []}]
    assert "ApiError" in document["components"]["schemas"]
    assert docs.status_code == 404  # no Swagger UI pulling scripts from a CDN
