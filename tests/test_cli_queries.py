"""Reading the history back: `history`, `chart` and `apps` as a user runs them.

Most tests share one SQLite database, built once: three `poll-once --chart us/top_free` runs
against the fake Apple, over which DeepSeek climbs 31 -> 12 -> 1. Read commands never write,
so the tests cannot disturb each other.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_apple import DEEPSEEK, DEEPSEEK_US_TOP_FREE_RANKS, FakeAppleCharts
from tests.support.http_server import Request, Response
from tests.test_cli import (
    US_TOP_FREE,
    WATCHLIST_IDS,
    Deployment,
    deployment,
    ok,
    run_cli,
    table,
)

US_TOP_FREE_SLUG = "apple/us/top_free/iphone/all"
CHATGPT_ID = "6448311069"


def poll_us_top_free(deployed: Deployment, times: int = 3) -> None:
    for _ in range(times):
        ok(deployed.run("poll-once", "--chart", US_TOP_FREE))


@pytest.fixture(scope="module")
def climbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """DeepSeek at 31, 12 and 1 in three snapshots of the US top free chart, on SQLite."""
    directory = tmp_path_factory.mktemp("climbed")
    with deployment(directory, f"sqlite:///{directory / 'monitor.sqlite3'}") as deployed:
        poll_us_top_free(deployed)
        yield deployed


def history(deployed: Deployment, *args: str) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = deployed.json("history", *args)
    return points


def snapshot_times(deployed: Deployment) -> list[str]:
    return [point["time"] for point in history(deployed, "--app", DEEPSEEK["id"])]


# -- history ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_history_after_three_polls_shows_deepseek_at_31_12_and_1_in_json_csv_and_table(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with deployment(tmp_path, request.getfixturevalue(f"{backend}_url")) as deployed:
        poll_us_top_free(deployed)

        as_json = history(deployed, "--app", "deepseek")
        as_csv = ok(deployed.run("history", "--app", "deepseek", "--format", "csv")).stdout
        as_table = ok(deployed.run("history", "--app", "deepseek")).stdout

    assert [p["rank"] for p in as_json] == list(DEEPSEEK_US_TOP_FREE_RANKS)
    assert {(p["status"], p["depth"], p["error"]) for p in as_json} == {("listed", 100, None)}
    assert {
        (p["chart"], p["store"], p["country"], p["collection"], p["device"], p["genre"])
        for p in as_json
    } == {(US_TOP_FREE_SLUG, "apple", "us", "top_free", "iphone", "all")}
    times = [dt.datetime.fromisoformat(p["time"]) for p in as_json]
    assert times == sorted(times)
    assert all(t.utcoffset() == dt.timedelta(0) for t in times)

    csv_rows = list(csv.DictReader(io.StringIO(as_csv)))
    assert [row["rank"] for row in csv_rows] == ["31", "12", "1"]
    assert [row["time"] for row in csv_rows] == [p["time"] for p in as_json]
    assert {row["error"] for row in csv_rows} == {""}  # null is an empty field

    table_rows = table(as_table)
    assert list(table_rows[0]) == ["time", "chart", "status", "rank", "depth", "error"]
    assert [row["rank"] for row in table_rows] == ["31", "12", "1"]
    assert [row["time"] for row in table_rows] == [p["time"] for p in as_json]
    assert {row["status"] for row in table_rows} == {"listed"}


@pytest.mark.parametrize(
    "ref", [DEEPSEEK["id"], "deepseek", "DEEPSEEK", "DeepSeek - AI Assistant", "com.deepseek.chat"]
)
def test_history_finds_the_app_by_store_id_bundle_id_or_name_in_any_case(
    climbed: Deployment, ref: str
) -> None:
    points = history(climbed, "--app", ref)

    assert [p["rank"] for p in points] == list(DEEPSEEK_US_TOP_FREE_RANKS)


def test_history_of_an_app_off_the_watchlist_is_read_from_the_snapshots(
    climbed: Deployment,
) -> None:
    chart = ok(climbed.run("chart", "--country", "us", "--collection", "top_free")).stdout
    (threads,) = [row for row in chart_table(chart)[1] if row["name"] == "Threads"]
    tracked = {row["store_id"] for row in table(ok(climbed.run("apps")).stdout)}
    assert threads["store_id"] not in tracked

    points = history(climbed, "--app", "threads")

    assert [p["status"] for p in points] == ["listed"] * 3
    assert points[-1]["rank"] == int(threads["rank"])


def test_history_takes_an_exact_name_over_the_names_containing_it(climbed: Deployment) -> None:
    chart = ok(climbed.run("chart", "--country", "us", "--collection", "top_free")).stdout
    named_google = [row for row in chart_table(chart)[1] if "google" in row["name"].lower()]
    assert len(named_google) > 1  # "Google", "Google Gemini", "Gmail - Email by Google", ...
    (google,) = [row for row in named_google if row["name"] == "Google"]

    assert history(climbed, "--app", "google") == history(climbed, "--app", google["store_id"])


def test_history_with_an_ambiguous_name_exits_2_listing_the_candidates(
    climbed: Deployment,
) -> None:
    result = climbed.run("history", "--app", "AI")

    assert result.exit_code == 2
    assert result.stdout == ""
    first, *candidates = result.stderr.splitlines()
    count = int(first.removeprefix("Error: ").split()[0])
    assert first == f"Error: {count} apps match 'AI'; use the store id:"
    assert f"  {DEEPSEEK['id']}  DeepSeek - AI Assistant" in candidates
    assert "  1558240027  Meta AI" in candidates
    # Ten are shown; the rest are counted.
    assert count > 10
    assert len(candidates) == 11
    assert candidates[-1] == f"  ... and {count - 10} more"


@pytest.mark.parametrize("ref", ["Flappy Bird", "999999999"])
def test_history_of_an_unknown_app_exits_2(climbed: Deployment, ref: str) -> None:
    result = climbed.run("history", "--app", ref)

    assert result.exit_code == 2
    assert result.stdout == ""
    assert f"no stored app matches {ref!r}" in result.stderr


def test_history_of_a_watched_app_never_listed_is_empty(climbed: Deployment) -> None:
    assert history(climbed, "--app", "Perplexity") == []


def test_history_filters_by_time_with_iso_dates_and_durations(climbed: Deployment) -> None:
    first, second, third = snapshot_times(climbed)
    second_in_paris = dt.datetime.fromisoformat(second).astimezone(
        dt.timezone(dt.timedelta(hours=1))
    )
    second_naive = dt.datetime.fromisoformat(second).replace(tzinfo=None)  # read as UTC
    tomorrow = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)

    def ranks(*filters: str) -> list[int]:
        return [p["rank"] for p in history(climbed, "--app", "deepseek", *filters)]

    assert ranks("--since", second) == [12, 1]
    assert ranks("--until", second) == [31, 12]
    assert ranks("--since", second, "--until", second) == [12]
    assert ranks("--since", second_in_paris.isoformat()) == [12, 1]
    assert ranks("--until", second_naive.isoformat()) == [31, 12]
    assert ranks("--since", "7d") == [31, 12, 1]
    assert ranks("--since", "1h30m") == [31, 12, 1]
    assert ranks("--until", "7d") == []
    assert ranks("--since", tomorrow.isoformat()) == []
    # An ISO date in the basic format is a date, not a number of seconds ago.
    assert ranks("--until", tomorrow.strftime("%Y%m%d")) == [31, 12, 1]
    assert first < second < third


@pytest.mark.parametrize(
    ("filters", "complaint"),
    [
        (["--since", "yesterday"], "'yesterday' is neither an ISO date/time nor a duration"),
        (["--since", "1d", "--until", "2d"], "is after --until"),
    ],
)
def test_history_rejects_a_bad_time_filter_as_a_usage_error(
    climbed: Deployment, filters: list[str], complaint: str
) -> None:
    result = climbed.run("history", "--app", "deepseek", *filters)

    assert result.exit_code == 2
    assert "Usage: app-rank-monitor history" in result.stderr
    assert complaint in result.stderr


def test_history_shows_below_depth_with_the_depth_where_the_app_is_absent(
    tmp_path: Path, sqlite_url: str
) -> None:
    # Only the top 20 are asked for: DeepSeek's first position, 31, is not visible.
    with deployment(tmp_path, sqlite_url, extra="[poll]\ndepth = 20\n") as deployed:
        poll_us_top_free(deployed)
        points = history(deployed, "--app", "deepseek")
        as_table = table(ok(deployed.run("history", "--app", "deepseek")).stdout)

    assert [(p["status"], p["rank"], p["depth"]) for p in points] == [
        ("below_depth", None, 20),
        ("listed", 12, 20),
        ("listed", 1, 20),
    ]
    assert [(row["status"], row["rank"], row["depth"]) for row in as_table] == [
        ("below_depth", "", "20"),
        ("listed", "12", "20"),
        ("listed", "1", "20"),
    ]


def failed_poll_history(directory: Path, database_url: str) -> tuple[list[Any], str]:
    """DeepSeek's history, as JSON and CSV, after one good poll of us/top_free and one that
    got 503 from both feeds."""
    with deployment(directory, database_url) as deployed:
        poll_us_top_free(deployed, times=1)
        deployed.apple.fail(US_TOP_FREE, status=503)
        assert deployed.run("poll-once", "--chart", US_TOP_FREE).exit_code == 1
        points = history(deployed, "--app", "deepseek")
        as_csv = ok(deployed.run("history", "--app", "deepseek", "--format", "csv")).stdout
    return points, as_csv


def test_history_shows_fetch_failed_with_the_error_class_after_a_failed_poll(
    tmp_path: Path, sqlite_url: str
) -> None:
    points, as_csv = failed_poll_history(tmp_path, sqlite_url)

    listed, *failed = points
    assert (listed["status"], listed["rank"]) == ("listed", 31)
    assert failed
    for point in failed:
        assert point["status"] == "fetch_failed"
        assert (point["rank"], point["depth"], point["error"]) == (None, None, "HttpStatusError")
        assert point["time"] > listed["time"]
    csv_failed = list(csv.DictReader(io.StringIO(as_csv)))[1]
    assert (csv_failed["status"], csv_failed["rank"], csv_failed["error"]) == (
        "fetch_failed", "", "HttpStatusError",
    )  # fmt: skip


def test_one_failed_poll_is_one_fetch_failed_point(tmp_path: Path, sqlite_url: str) -> None:
    points, _ = failed_poll_history(tmp_path, sqlite_url)

    assert [p["status"] for p in points] == ["listed", "fetch_failed"]


# -- chart ------------------------------------------------------------------------------------


def chart_table(text: str) -> tuple[str, list[dict[str, str]]]:
    """The header line of `chart` and the rows of its table."""
    header, rest = text.split("\n", 1)
    return header, table(rest)


def test_chart_shows_the_latest_snapshot_under_a_header_naming_source_and_depth(
    climbed: Deployment,
) -> None:
    third = snapshot_times(climbed)[-1]

    result = ok(climbed.run("chart", "--country", "US", "--collection", "top_free"))

    header, rows = chart_table(result.stdout)
    assert header.startswith(f"{US_TOP_FREE_SLUG} fetched {third} ")
    assert header.endswith("from apple_v2, 100 of 100 positions")
    assert len(rows) == 100
    assert [row["rank"] for row in rows] == [str(rank) for rank in range(1, 101)]
    assert rows[0] == {
        "rank": "1",
        "store_id": DEEPSEEK["id"],
        "name": DEEPSEEK["name"],
        "developer": DEEPSEEK["artistName"],
    }
    assert rows[1]["store_id"] == CHATGPT_ID


def test_chart_at_an_earlier_time_shows_the_snapshot_then(climbed: Deployment) -> None:
    first, second, _ = snapshot_times(climbed)
    between = (
        dt.datetime.fromisoformat(first)
        + (dt.datetime.fromisoformat(second) - dt.datetime.fromisoformat(first)) / 2
    )

    result = ok(
        climbed.run(
            "chart", "--country", "us", "--collection", "top_free", "--at", between.isoformat()
        )
    )
    as_json = climbed.json(
        "chart", "--country", "us", "--collection", "top_free", "--at", between.isoformat()
    )

    header, rows = chart_table(result.stdout)
    assert header.startswith(f"{US_TOP_FREE_SLUG} fetched {first} ")
    (deepseek,) = [row for row in rows if row["store_id"] == DEEPSEEK["id"]]
    assert deepseek["rank"] == "31"
    assert as_json["chart"] == US_TOP_FREE_SLUG
    assert as_json["fetched_at"] == first
    assert (as_json["source"], as_json["requested_depth"], as_json["visible_depth"]) == (
        "apple_v2", 100, 100,
    )  # fmt: skip
    assert as_json["entries"][30] == {
        "rank": 31,
        "store_id": DEEPSEEK["id"],
        "name": DEEPSEEK["name"],
        "developer": DEEPSEEK["artistName"],
    }


def test_chart_as_csv_has_one_row_per_position(climbed: Deployment) -> None:
    result = ok(
        climbed.run("chart", "--country", "us", "--collection", "top_free", "--format", "csv")
    )

    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 100
    assert list(rows[0]) == ["rank", "store_id", "name", "developer"]
    assert rows[0]["store_id"] == DEEPSEEK["id"]
    # "OpenAI OpCo, LLC" has a comma: quoted, and read back whole.
    assert rows[1]["developer"] == "OpenAI OpCo, LLC"
    assert '"OpenAI OpCo, LLC"' in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--country", "gb"], "no snapshot of apple/gb/top_free/iphone/all stored\n"),
        (["--country", "us", "--device", "ipad"], "no snapshot of apple/us/top_free/ipad/all"),
        (
            ["--country", "us", "--at", "2020-01-01"],
            "stored at or before 2020-01-01T00:00:00+00:00",
        ),
    ],
)
def test_chart_never_stored_exits_2_saying_so(
    climbed: Deployment, args: list[str], message: str
) -> None:
    result = climbed.run("chart", "--collection", "top_free", *args)

    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ")
    assert message in result.stderr


def test_chart_with_a_malformed_country_is_a_usage_error(climbed: Deployment) -> None:
    result = climbed.run("chart", "--country", "usa", "--collection", "top_free")

    assert result.exit_code == 2
    assert "Invalid value for '--country': expected a two-letter storefront code" in result.stderr
    assert "got 'usa'" in result.stderr


# -- apps -------------------------------------------------------------------------------------


def test_apps_lists_the_tracked_apps_with_their_best_rank_and_chart(climbed: Deployment) -> None:
    result = ok(climbed.run("apps"))
    rows = {row["store_id"]: row for row in table(result.stdout)}
    as_json = {app["store_id"]: app for app in climbed.json("apps")}

    assert set(rows) == set(WATCHLIST_IDS) == set(as_json)
    assert rows[DEEPSEEK["id"]] == {
        "store_id": DEEPSEEK["id"],
        "name": DEEPSEEK["name"],  # the feed's name replaced the watchlist's "DeepSeek"
        "best_rank": "1",
        "best_chart": US_TOP_FREE_SLUG,
        "charts_listed": "1",
    }
    assert (rows[CHATGPT_ID]["best_rank"], rows[CHATGPT_ID]["best_chart"]) == (
        "2", US_TOP_FREE_SLUG,
    )  # fmt: skip
    assert as_json["1668000334"] == {
        "store_id": "1668000334",
        "name": "Perplexity",
        "best_rank": None,
        "best_chart": None,
        "charts_listed": 0,
    }
    assert result.stderr == ""  # a read command logs nothing at the default level


# -- names from the store ---------------------------------------------------------------------

HOSTILE_NAME = "Evil\nApp\r\x1b[2J\x1b[31mRED\u202eesrever\u2028end\t."
WIDE_NAME = "原神"  # four terminal cells


def test_chart_table_stays_one_line_per_app_whatever_names_the_store_serves(
    tmp_path: Path, sqlite_url: str
) -> None:
    charts = FakeAppleCharts()

    def hostile(request: Request) -> Response:
        body = json.loads(charts.respond(request.path) or b"{}")
        results = body["feed"]["results"]
        results[0]["name"], results[1]["name"] = HOSTILE_NAME, WIDE_NAME
        return Response.json(body)

    with deployment(tmp_path, sqlite_url) as deployed:
        (v2_path, _) = deployed.apple.feed_paths(US_TOP_FREE)
        deployed.apple.server.route(v2_path, hostile)
        poll_us_top_free(deployed, times=1)
        # As on a terminal: click strips escape sequences only when it sees a pipe.
        text = run_cli(
            deployed.config, "chart", "--country", "us", "--collection", "top_free", color=True
        )
        as_json = deployed.json("chart", "--country", "us", "--collection", "top_free")

    assert text.exit_code == 0
    lines = text.stdout.splitlines()
    assert len(lines) == 1 + 2 + 100
    assert not any(char in text.stdout for char in "\r\x1b\u202e\u2028\t")
    _, rows = chart_table(text.stdout)
    assert rows[0]["name"] == "Evil\\nApp\\r\\x1b[2J\\x1b[31mRED\\u202eesrever\\u2028end\\t."
    # The developer column starts at the same terminal cell on the row of the wide name:
    # each of its characters takes one cell more than its length.
    developer = as_json["entries"][1]["developer"]
    wide_row = lines[1 + 2 + 1]
    assert WIDE_NAME in wide_row
    cells_before = len(wide_row[: wide_row.index(developer)]) + len(WIDE_NAME)
    assert cells_before == lines[1].index("developer")
    # Programs get the names as stored.
    assert [e["name"] for e in as_json["entries"][:2]] == [HOSTILE_NAME, WIDE_NAME]
