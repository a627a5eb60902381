"""Settings resolved with the seed files: charts, watchlist, database URLs and redaction."""

from __future__ import annotations

import itertools
import json
import tomllib
from pathlib import Path

import pytest

from monitor.config import Settings, load_settings
from monitor.model import ChartKey, Collection, Device, Store, WatchedApp
from tests.conftest import REPO_ROOT
from tests.test_config import line_of, problems_of, write

SEEDS = REPO_ROOT / "seeds"
DEFAULT_STOREFRONTS = ["us", "gb", "de", "fr", "jp", "kr", "cn", "in", "br", "ca", "au"]


def shipped_storefronts() -> set[str]:
    with (SEEDS / "storefronts.toml").open("rb") as file:
        return set(tomllib.load(file)["storefronts"])


def test_the_shipped_seeds_give_the_33_default_charts() -> None:
    expected = sorted(
        ChartKey(Store.APPLE, country, collection, Device.IPHONE, "all")
        for country, collection in itertools.product(
            DEFAULT_STOREFRONTS,
            [Collection.TOP_FREE, Collection.TOP_PAID, Collection.TOP_GROSSING],
        )
    )

    assert load_settings(None, {}).chart_keys() == expected
    assert len(expected) == 33


def test_the_shipped_watchlist_holds_the_nine_ai_assistants() -> None:
    apps = load_settings(None, {}).watched_apps()

    assert [(app.store_id, app.name) for app in apps] == [
        ("6737597349", "DeepSeek"),
        ("6448311069", "ChatGPT"),
        ("6473753684", "Claude by Anthropic"),
        ("6477489729", "Google Gemini"),
        ("6472538445", "Microsoft Copilot"),
        ("1668000334", "Perplexity"),
        ("1558240027", "Meta AI"),
        ("6670324846", "Grok - AI Chat & Video"),
        ("6740410176", "Le Chat by Mistral AI"),
    ]
    assert {app.store for app in apps} == {Store.APPLE}
    assert apps[0].bundle_id == "com.deepseek.chat"
    assert apps[1].bundle_id == "com.openai.chat"


def test_the_shipped_storefront_list_covers_every_storefront() -> None:
    storefronts = shipped_storefronts()

    assert len(storefronts) == 175
    assert set(DEFAULT_STOREFRONTS) <= storefronts


def test_all_storefronts_expands_to_every_listed_storefront() -> None:
    settings = load_settings(None, {"MONITOR_CHARTS_STOREFRONTS": "all"})

    charts = settings.chart_keys()
    assert {chart.country for chart in charts} == shipped_storefronts()
    assert len(charts) == 175 * 3
    assert settings.redacted()["charts"]["storefronts"] == "all"


def test_all_cannot_be_combined_with_country_codes(tmp_path: Path) -> None:
    path = write(tmp_path, '[charts]\nstorefronts = ["us", "all"]\n')

    assert problems_of(path) == [
        f"{path}:2: [charts] storefronts = ['us', 'all']: \"all\" cannot be combined with "
        "country codes"
    ]


def test_a_country_missing_from_the_storefront_list_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, '[charts]\nstorefronts = ["us", "zz", "jp"]\n')

    assert problems_of(path) == [
        f"{path}:2: [charts] storefronts: 'zz' is not a storefront listed in storefronts.toml"
    ]


def test_a_collection_no_feed_serves_on_a_device_is_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [charts]
        collections = ["new_free", "top_free"]
        devices = ["iphone", "ipad"]
        """,
    )

    problems = problems_of(path)

    assert problems == [
        "[charts] collections x devices: new_free on ipad (genre all) is not served by any feed "
        f"(collections from {path}:2, devices from {path}:3)"
    ]


def test_top_grossing_per_genre_on_ipad_is_a_chart(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [charts]
        storefronts = ["jp"]
        collections = ["top_grossing"]
        devices = ["ipad"]
        genres = ["6014", "all"]
        """,
    )

    assert [chart.slug for chart in load_settings(path, {}).chart_keys()] == [
        "apple/jp/top_grossing/ipad/6014",
        "apple/jp/top_grossing/ipad/all",
    ]


def test_extra_charts_are_added_once_and_checked_like_the_others(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [charts]
        extra = ["apple/jp/top_free/ipad/6014", "us/top_free", "JP/Top-Free/iPad/6014"]
        """,
    )

    charts = load_settings(path, {}).chart_keys()

    assert len(charts) == 34
    assert ChartKey.parse("apple/jp/top_free/ipad/6014") in charts
    problems = problems_of(
        environ={"MONITOR_CHARTS_EXTRA": "zz/top_free,us/new/ipad,us/top_sideways"}
    )
    assert problems == [
        "MONITOR_CHARTS_EXTRA: [charts] extra[0] = 'zz/top_free': 'zz' is not a storefront "
        "listed in storefronts.toml",
        "MONITOR_CHARTS_EXTRA: [charts] extra[1] = 'us/new/ipad': no feed serves new on ipad",
        "MONITOR_CHARTS_EXTRA: [charts] extra[2] = 'us/top_sideways': chart 'us/top_sideways': "
        "'top_sideways' is not a valid Collection",
    ]


def test_genres_must_be_all_or_numeric_ids() -> None:
    problems = problems_of(environ={"MONITOR_CHARTS_GENRES": "all,games"})

    assert problems == [
        "MONITOR_CHARTS_GENRES: [charts] genres[1] = 'games': expected \"all\" or a numeric genre "
        'id such as "6014"'
    ]


@pytest.mark.parametrize(
    "url",
    [
        "postgres://monitor:pw@db/monitor",
        "postgresql://monitor:pw@db/monitor",
        "postgresql+psycopg://monitor:pw@db/monitor",
    ],
)
def test_postgresql_urls_are_normalised_to_psycopg(url: str) -> None:
    settings = load_settings(None, {"MONITOR_DATABASE_URL": url})

    assert settings.database.url == "postgresql+psycopg://monitor:pw@db/monitor"


@pytest.mark.parametrize(
    "url", ["mysql://u:hunter2@db/x", "sqlite://", "sqlite:///:memory:", "/var/lib/x.sqlite3"]
)
def test_unsupported_database_urls_are_rejected_without_showing_the_password(url: str) -> None:
    problems = problems_of(environ={"MONITOR_DATABASE_URL": url})

    assert len(problems) == 1
    assert problems[0].startswith("MONITOR_DATABASE_URL: [database] url = ")
    assert "hunter2" not in problems[0]


def test_the_database_password_is_redacted_wherever_settings_are_shown() -> None:
    url = "postgresql://monitor:hunter2@db:5432/monitor?sslmode=require"

    settings = load_settings(None, {"MONITOR_DATABASE_URL": url})

    shown = settings.redacted()
    assert shown["database"]["url"] == (
        "postgresql+psycopg://monitor:***@db:5432/monitor?sslmode=require"
    )
    assert "hunter2" not in json.dumps(shown)
    assert "hunter2" not in repr(settings)
    assert settings.database.url.endswith("hunter2@db:5432/monitor?sslmode=require")


def test_redacted_shows_every_key_of_every_section_printably() -> None:
    settings = load_settings(None, {})

    shown = settings.redacted()

    assert set(shown) == set(Settings.model_fields)
    for section, values in shown.items():
        assert set(values) == set(type(getattr(settings, section)).model_fields)
    assert shown["poll"] == {
        "interval": "1h",
        "tick": "5s",
        "lease": "5m",
        "depth": 100,
        "prefer_v2": True,
    }
    assert shown["watchlist"]["file"] == str(SEEDS / "watchlist.toml")
    json.dumps(shown)


def test_inline_apps_are_added_after_the_watchlist_file(tmp_path: Path) -> None:
    watchlist = write(
        tmp_path,
        """
        [[apps]]
        store_id = "6737597349"
        name = "DeepSeek"

        [[apps]]
        store = "apple"
        store_id = "6448311069"
        name = "ChatGPT"
        bundle_id = "com.openai.chat"
        """,
        name="watchlist.toml",
    )
    config = write(
        tmp_path,
        f"""
        [watchlist]
        file = "{watchlist}"
        apps = [{{ store_id = "284882215", name = "Facebook" }}]
        """,
    )

    apps = load_settings(config, {}).watched_apps()

    assert apps == [
        WatchedApp(Store.APPLE, "6737597349", "DeepSeek"),
        WatchedApp(Store.APPLE, "6448311069", "ChatGPT", "com.openai.chat"),
        WatchedApp(Store.APPLE, "284882215", "Facebook"),
    ]


def test_an_app_listed_twice_is_an_error_naming_both_places(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        """
        [watchlist]
        apps = [
          { store_id = "284882215", name = "Facebook" },
          { store_id = "6448311069", name = "ChatGPT again" },
        ]
        """,
    )

    problems = problems_of(config)

    assert problems == [
        f"{config}:4: app apple/6448311069 (ChatGPT again) is listed twice: first at "
        f"{SEEDS / 'watchlist.toml'}:{line_of(SEEDS / 'watchlist.toml', '6448311069') - 1}"
    ]


def test_store_ids_must_be_digit_strings(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        """
        [watchlist]
        apps = [
          { store_id = "id284882215", name = "Facebook" },
          { store_id = 284882215, name = "Facebook" },
          { store_id = "1", name = "" },
        ]
        """,
    )

    problems = problems_of(config)

    assert problems == [
        f"{config}:3: [watchlist] apps[0].store_id = 'id284882215': expected a string of digits "
        'such as "6448311069"',
        f"{config}:4: [watchlist] apps[1].store_id = 284882215: Input should be a valid string",
        f"{config}:5: [watchlist] apps[2].name = '': String should have at least 1 character",
    ]


def test_problems_in_a_watchlist_file_name_its_lines(tmp_path: Path) -> None:
    watchlist = write(
        tmp_path,
        """
        [[apps]]
        store_id = "6737597349"
        name = "DeepSeek"

        [[apps]]
        store_id = "6448311069"
        nmae = "ChatGPT"
        """,
        name="watchlist.toml",
    )

    problems = problems_of(environ={"MONITOR_WATCHLIST_FILE": str(watchlist)})

    assert problems == [
        f"{watchlist}:5: apps.1.name: Field required",
        f"{watchlist}:7: apps.1.nmae = 'ChatGPT': Extra inputs are not permitted",
    ]


def test_a_missing_watchlist_file_is_an_error(tmp_path: Path) -> None:
    problems = problems_of(environ={"MONITOR_WATCHLIST_FILE": str(tmp_path / "absent.toml")})

    assert problems == [f"{tmp_path / 'absent.toml'}: watchlist file does not exist"]


def test_settings_built_in_code_resolve_the_seeds_on_first_use() -> None:
    settings = Settings()

    assert len(settings.chart_keys()) == 33
    assert len(settings.watched_apps()) == 9
