"""`export history|charts` as a user runs it: what it writes reads back as what is stored.

The shared database holds five snapshots from `poll-once` against the fake Apple: the US top
free chart three times (DeepSeek climbing 31 -> 12 -> 1) and the GB top paid chart twice.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor import cli_export
from tests.support.fake_apple import DEEPSEEK, DEEPSEEK_US_TOP_FREE_RANKS
from tests.test_cli import US_TOP_FREE, Deployment, deployment, ok

GB_TOP_PAID = "gb/top_paid"


def poll(deployed: Deployment) -> None:
    for chart, times in ((US_TOP_FREE, 3), (GB_TOP_PAID, 2)):
        for _ in range(times):
            ok(deployed.run("poll-once", "--chart", chart))


@pytest.fixture(scope="module")
def polled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    directory = tmp_path_factory.mktemp("polled")
    with deployment(directory, f"sqlite:///{directory / 'monitor.sqlite3'}") as deployed:
        poll(deployed)
        yield deployed


def exported(deployed: Deployment, *args: str) -> list[dict[str, Any]]:
    """The rows `export ARGS` writes, read back from JSON and from CSV (which must agree)."""
    as_json = json.loads(ok(deployed.run("export", *args, "--format", "json")).stdout)
    as_csv = list(csv.DictReader(io.StringIO(ok(deployed.run("export", *args)).stdout)))
    assert as_csv == [
        {key: "" if value is None else str(value) for key, value in row.items()} for row in as_json
    ]
    rows: list[dict[str, Any]] = as_json
    return rows


def as_stored(deployed: Deployment, snapshots: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """What `chart --at` says of each (chart slug, fetched_at) snapshot, as export rows."""
    rows = []
    for slug, time in snapshots:
        store, country, collection, device, genre = slug.split("/")
        view = deployed.json(
            "chart", "--country", country, "--collection", collection, "--device", device,
            "--genre", genre, "--at", time,
        )  # fmt: skip
        assert view["fetched_at"] == time
        chart = {"store": store, "country": country, "collection": collection,
                 "device": device, "genre": genre}  # fmt: skip
        rows += [
            {"fetched_at": time, "chart": slug, **chart, "source": view["source"],
             "visible_depth": view["visible_depth"], **entry}
            for entry in view["entries"]
        ]  # fmt: skip
    return rows


def snapshots_in(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (chart, fetched_at) of the snapshots rows come from, in the order they come."""
    return list(dict.fromkeys((row["chart"], row["fetched_at"]) for row in rows))


def test_history_export_is_each_tracked_apps_history_under_its_watchlist_name(
    polled: Deployment,
) -> None:
    rows = exported(polled, "history")

    apps = {row["store_id"]: row["app"] for row in rows}
    assert apps[DEEPSEEK["id"]] == "DeepSeek"
    for store_id, name in apps.items():
        mine = [row for row in rows if row["store_id"] == store_id]
        assert {row["app"] for row in mine} == {name}
        assert [
            {key: value for key, value in row.items() if key not in ("app", "store_id")}
            for row in mine
        ] == polled.json("history", "--app", store_id)
    deepseek = [row for row in rows if row["store_id"] == DEEPSEEK["id"]]
    assert [row["rank"] for row in deepseek if row["chart"].startswith("apple/us/top_free")] == (
        list(DEEPSEEK_US_TOP_FREE_RANKS)
    )


def test_history_export_of_named_apps_between_two_times(polled: Deployment) -> None:
    times = [row["time"] for row in polled.json("history", "--app", DEEPSEEK["id"])]

    rows = exported(
        polled, "history", "--app", "deepseek", "--since", times[1], "--until", times[1]
    )

    assert [(row["app"], row["time"], row["rank"]) for row in rows] == [("DeepSeek", times[1], 12)]


def test_charts_export_is_every_entry_of_every_snapshot_chart_by_chart_oldest_first(
    polled: Deployment,
) -> None:
    rows = exported(polled, "charts")

    snapshots = snapshots_in(rows)
    assert rows == as_stored(polled, snapshots)
    assert [chart for chart, _ in snapshots] == [
        *["apple/us/top_free/iphone/all"] * 3,
        *["apple/gb/top_paid/iphone/all"] * 2,
    ] or [chart for chart, _ in snapshots] == [
        *["apple/gb/top_paid/iphone/all"] * 2,
        *["apple/us/top_free/iphone/all"] * 3,
    ]
    for chart in {chart for chart, _ in snapshots}:
        times = [time for name, time in snapshots if name == chart]
        assert times == sorted(times)
    us_top_free = [row for row in rows if row["chart"] == "apple/us/top_free/iphone/all"]
    assert [row["rank"] for row in us_top_free if row["store_id"] == DEEPSEEK["id"]] == list(
        DEEPSEEK_US_TOP_FREE_RANKS
    )


def test_charts_export_pages_through_every_snapshot_once(
    polled: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = exported(polled, "charts")
    monkeypatch.setattr(cli_export, "SNAPSHOTS_PER_PAGE", 2)

    paged = exported(polled, "charts")

    assert paged == whole


def test_charts_export_since_a_time_leaves_out_what_was_fetched_before(polled: Deployment) -> None:
    times = sorted({row["fetched_at"] for row in exported(polled, "charts")})

    rows = exported(polled, "charts", "--since", times[2])

    assert sorted({row["fetched_at"] for row in rows}) == times[2:]


def test_an_export_to_a_file_logs_its_progress_and_a_failed_one_leaves_no_file(
    polled: Deployment, tmp_path: Path
) -> None:
    target = tmp_path / "charts.csv"

    written = ok(polled.run("export", "charts", "--output", str(target)))
    failed = polled.run("export", "history", "--app", "no-such-app", "-o", str(tmp_path / "x.csv"))

    assert written.stdout == ""
    assert "export charts: 5/5 (100%)" in written.stderr
    assert len(list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"))))) == 500
    assert failed.exit_code == 2
    assert "no-such-app" in failed.stderr
    assert list(tmp_path.iterdir()) == [target]


def test_since_after_until_is_a_usage_error(polled: Deployment) -> None:
    result = polled.run("export", "charts", "--since", "2025-02-01", "--until", "2025-01-01")

    assert result.exit_code == 2
    assert "--since/--until" in result.stderr


@pytest.mark.postgres
def test_exports_read_back_as_stored_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    with deployment(tmp_path, postgres_url) as deployed:
        poll(deployed)

        charts = exported(deployed, "charts")
        history = exported(deployed, "history", "--app", "deepseek")

        assert len(snapshots_in(charts)) == 5
        assert charts == as_stored(deployed, snapshots_in(charts))
        assert [row["rank"] for row in history if row["status"] == "listed"] == list(
            DEEPSEEK_US_TOP_FREE_RANKS
        )
