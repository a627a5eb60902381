"""`fetches`: the fetch log as a user reads it, with the head of a body that was no chart.

The fake Apple of test_cli.py serves the charts; the v2 feed of the US top free chart serves
an HTML page with a 200 instead (a byte that is not UTF-8 first), so the poll falls back to
the legacy feed and the failed fetch keeps what it got.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.cli_fetches import TABLE_SAMPLE_CHARS
from monitor.polling import BODY_SAMPLE_BYTES
from tests.support.feed_faults import html_error_page
from tests.support.http_server import Response
from tests.test_cli import US_TOP_FREE, Deployment, deployment, ok, table

US_TOP_PAID = "us/top_paid"
PAGE = b"\xff" + html_error_page()
PAGE_HEAD = PAGE[:BODY_SAMPLE_BYTES].decode("utf-8", errors="backslashreplace")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def polled(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    """US top free polled (its v2 feed serving HTML), then US top paid."""
    database_url: str = request.getfixturevalue(f"{request.param}_url")
    with deployment(tmp_path, database_url) as deployed:
        v2_path = deployed.apple.feed_paths(US_TOP_FREE)[0]
        deployed.apple.server.route(v2_path, lambda request: Response(200, PAGE))
        ok(deployed.run("poll-once", "--chart", US_TOP_FREE))
        ok(deployed.run("poll-once", "--chart", US_TOP_PAID))
        yield deployed


def fetches(deployed: Deployment, *args: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = deployed.json("fetches", *args)
    return rows


def test_fetches_lists_every_fetch_newest_first_with_the_head_of_a_body_that_was_no_chart(
    polled: Deployment,
) -> None:
    rows = fetches(polled)

    assert [(r["chart"], r["source"], r["outcome"]) for r in rows] == [
        ("apple/us/top_paid/iphone/all", "apple_v2", "changed"),
        ("apple/us/top_free/iphone/all", "itunes_rss", "changed"),
        ("apple/us/top_free/iphone/all", "apple_v2", "failed"),
    ]
    failed = rows[-1]
    assert {key: failed[key] for key in failed if key not in ("time", "seconds", "url")} == {
        "chart": "apple/us/top_free/iphone/all",
        "source": "apple_v2",
        "outcome": "failed",
        "recovered": True,
        "http_status": 200,
        "attempts": 1,
        "body_bytes": len(PAGE),
        "error_class": "FeedFormatError",
        "error_message": failed["error_message"],
        "body_sample": PAGE_HEAD,
    }
    assert failed["url"].endswith(polled.apple.feed_paths(US_TOP_FREE)[0])
    assert failed["body_sample"].startswith("\\xff<!DOCTYPE html>")
    assert failed["error_message"].startswith("not UTF-8: byte 0xff at offset 0")
    # Only a body that was no chart is kept.
    assert [r["body_sample"] for r in rows[:2]] == [None, None]


def test_fetches_filters_by_chart_failure_and_count(polled: Deployment) -> None:
    failed = fetches(polled, "--failed")
    top_paid = fetches(polled, "--chart", US_TOP_PAID)
    newest = fetches(polled, "--limit", "1")
    elsewhere = fetches(polled, "--chart", "jp/top_free")

    assert [(r["source"], r["outcome"]) for r in failed] == [("apple_v2", "failed")]
    assert [(r["chart"], r["outcome"]) for r in top_paid] == [
        ("apple/us/top_paid/iphone/all", "changed")
    ]
    assert [r["chart"] for r in newest] == ["apple/us/top_paid/iphone/all"]
    assert elsewhere == []


def test_fetches_shows_a_short_sample_in_the_table_and_all_of_it_in_csv(
    polled: Deployment,
) -> None:
    (shown,) = table(ok(polled.run("fetches", "--failed")).stdout)
    (exported,) = csv.DictReader(
        io.StringIO(ok(polled.run("fetches", "--failed", "--format", "csv")).stdout)
    )

    assert shown["error_class"] == "FeedFormatError"
    assert shown["body_sample"].startswith("\\xff<!DOCTYPE html>\\n<html")
    assert shown["body_sample"].endswith("...")
    assert len(shown["body_sample"].replace("\\n", "\n")) == TABLE_SAMPLE_CHARS
    assert exported["body_sample"] == PAGE_HEAD
    assert exported["recovered"] == "True"


def test_fetches_refuses_a_chart_it_cannot_read(tmp_path: Path, sqlite_url: str) -> None:
    with deployment(tmp_path, sqlite_url) as deployed:
        result = deployed.run("fetches", "--chart", "usa/top_free")

    assert result.exit_code == 2
    assert "country must be a two-letter lower-case code" in result.output
