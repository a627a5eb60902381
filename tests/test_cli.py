"""The command line as a user runs it: check-config, poll-once, migrate and rebuild.

Every command runs in-process through click's CliRunner against a config file that points
the feeds at a local fake Apple (tests.support.fake_apple) and the database at a temporary
SQLite file, or a fresh PostgreSQL database for the tests parametrized by backend. The
helpers here are shared with test_cli_queries.py (history, chart, apps) and
test_cli_processes.py (exit codes and locking seen from real processes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import re
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner, Result

from monitor.cli import cli
from monitor.logs import NOISY_LOGGERS
from monitor.model import ChartKey
from monitor.sources.catalog import FeedEndpoints, feed_requests
from monitor.store.engine import open_database
from monitor.store.repository import Repository
from tests.store.conftest import DEEPSEEK as DEEPSEEK_ID
from tests.support.fake_apple import DEEPSEEK, FakeAppleCharts
from tests.support.http_server import Request, Response, ScriptedServer
from tests.test_retention_job import OLD, OLD_DAYS, store_old_history

US_TOP_FREE = "us/top_free"
DEFAULT_STOREFRONTS = ("us", "gb", "de", "fr", "jp", "kr", "cn", "in", "br", "ca", "au")
DEFAULT_COLLECTIONS = ("top_free", "top_paid", "top_grossing")
WATCHLIST_IDS = (
    DEEPSEEK["id"],
    "6448311069",  # ChatGPT
    "6473753684",  # Claude
    "6477489729",  # Gemini
    "6472538445",  # Copilot
    "1668000334",  # Perplexity
    "1558240027",  # Meta AI
    "6670324846",  # Grok
    "6740410176",  # Le Chat
)


# -- the fake Apple ---------------------------------------------------------------------------


class FakeApple:
    """A ScriptedServer serving FakeAppleCharts, with charts that can be made to fail."""

    def __init__(self, server: ScriptedServer) -> None:
        self.server = server
        self.base_url = server.url("").rstrip("/")

    def feed_paths(self, slug: str, depth: int = 100) -> list[str]:
        """The request paths of every feed that serves the chart, preferred first."""
        endpoints = FeedEndpoints(itunes_base_url=self.base_url, apple_rss_base_url=self.base_url)
        requests = feed_requests(ChartKey.parse(slug), depth=depth, endpoints=endpoints)
        return [urlsplit(request.url).path for request in requests]

    def fail(self, slug: str, status: int = 500) -> None:
        """From now on every feed of the chart answers `status`."""
        for path in self.feed_paths(slug):
            self.server.route(path, lambda request: Response(status, b"upstream trouble"))

    def requests_for(self, slug: str) -> list[Request]:
        paths = set(self.feed_paths(slug))
        return [request for request in self.server.requests if request.path in paths]


@contextlib.contextmanager
def fake_apple_server() -> Iterator[FakeApple]:
    charts = FakeAppleCharts()

    def serve(request: Request) -> Response:
        body = charts.respond(request.path)
        if body is None:
            return Response(404)
        return Response(200, body, headers=[("Content-Type", "application/json")])

    with ScriptedServer(fallback=serve) as server:
        yield FakeApple(server)
        assert not server.unexpected, server.unexpected
        assert not server.errors, server.errors


# -- configuration and running commands -------------------------------------------------------


def write_config(path: Path, apple: FakeApple, database_url: str, extra: str = "") -> Path:
    """A config file for the fake Apple: no request budget, one attempt per feed, so a
    failing chart fails at once. `extra` adds sections (not [fetch])."""
    path.write_text(
        textwrap.dedent(
            f"""
            [database]
            url = "{database_url}"

            [itunes]
            base_url = "{apple.base_url}"

            [apple_rss]
            base_url = "{apple.base_url}"

            [fetch]
            requests_per_minute = 0
            max_attempts = 1
            """
        )
        + textwrap.dedent(extra),
        encoding="utf-8",
    )
    return path


def settings_variables() -> dict[str, str | None]:
    """The MONITOR_* variables of this environment, set to None (CliRunner unsets those)."""
    return {
        name: None
        for name in os.environ
        if name.startswith("MONITOR_") and not name.startswith("MONITOR_TEST_")
    }


def run_cli(
    config: Path | None, *args: str, env: Mapping[str, str] | None = None, color: bool = False
) -> Result:
    """`app-rank-monitor [--config FILE] ARGS` in-process, with no MONITOR_* variable but
    `env`. The logging the command installs (on the runner's stderr) is taken down after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    argv = [*(["--config", str(config)] if config else []), *args]
    try:
        return CliRunner().invoke(
            cli, argv, env={**settings_variables(), **(env or {})}, color=color,
            catch_exceptions=False, prog_name="app-rank-monitor",
        )  # fmt: skip
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)
        for name, noisy_level in noisy.items():
            logging.getLogger(name).setLevel(noisy_level)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}"
    return result


@dataclasses.dataclass
class Deployment:
    """A config file, its fake Apple and its database: what one user runs commands on."""

    config: Path
    apple: FakeApple
    database_url: str

    def run(self, *args: str, env: Mapping[str, str] | None = None) -> Result:
        return run_cli(self.config, *args, env=env)

    def json(self, *args: str) -> Any:
        return json.loads(ok(self.run(*args, "--format", "json")).stdout)

    @property
    def sqlite_file(self) -> Path:
        assert self.database_url.startswith("sqlite:///")
        return Path(self.database_url.removeprefix("sqlite:///"))


@contextlib.contextmanager
def deployment(directory: Path, database_url: str, extra: str = "") -> Iterator[Deployment]:
    with fake_apple_server() as apple:
        config = write_config(directory / "monitor.toml", apple, database_url, extra)
        yield Deployment(config, apple, database_url)


@pytest.fixture
def sqlite_deployment(tmp_path: Path, sqlite_url: str) -> Iterator[Deployment]:
    with deployment(tmp_path, sqlite_url) as deployed:
        yield deployed


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    """The same deployment on SQLite and on PostgreSQL."""
    database_url: str = request.getfixturevalue(f"{request.param}_url")
    with deployment(tmp_path, database_url) as deployed:
        yield deployed


# -- reading what the commands print ----------------------------------------------------------


def table(text: str) -> list[dict[str, str]]:
    """Rows of an aligned table, cut at the columns of its header and rule.

    Fails if the rule does not underline each header name exactly: the alignment is part of
    what is checked.
    """
    header, rule, *lines = text.splitlines()
    names = [(m.group(), m.start()) for m in re.finditer(r"\S+", header)]
    dashes = [(m.start(), m.end()) for m in re.finditer(r"-+", rule)]
    assert [start for _, start in names] == [start for start, _ in dashes], (header, rule)
    bounds = [*(start for start, _ in dashes), None]
    rows = []
    for line in lines:
        assert len(line) <= len(rule), f"row wider than its table: {line!r}"
        rows.append(
            {
                name: line[start:end].strip()
                for (name, _), start, end in zip(names, bounds, bounds[1:], strict=False)
            }
        )
    return rows


def config_document(stdout: str) -> dict[str, dict[str, object]]:
    """The JSON block check-config prints before the charts and apps lists."""
    document: dict[str, dict[str, object]] = json.loads(stdout.split("\n\n", 1)[0])
    return document


def listed_after(stdout: str, heading: str) -> list[str]:
    """The indented lines under a heading of check-config, e.g. 'charts will be polled:'."""
    block = next(part for part in stdout.split("\n\n") if heading in part.splitlines()[0])
    return [line.strip() for line in block.splitlines()[1:]]


# -- check-config -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url_in_file", "url_in_env", "shown"),
    [
        pytest.param(
            "postgresql://monitor:s3cr3t-pa55@db.internal:5432/ranks", None,
            "postgresql+psycopg://monitor:***@db.internal:5432/ranks", id="password-in-file",
        ),
        pytest.param(
            "sqlite:///unused.sqlite3",
            "postgresql://monitor@db.internal/ranks?sslmode=require&password=s3cr3t-pa55",
            "postgresql+psycopg://monitor@db.internal/ranks?sslmode=require&password=***",
            id="password-parameter-in-environment",
        ),
    ],
)  # fmt: skip
def test_check_config_prints_the_resolved_config_with_the_database_password_redacted(
    tmp_path: Path, url_in_file: str, url_in_env: str | None, shown: str
) -> None:
    with fake_apple_server() as apple:
        config = write_config(tmp_path / "monitor.toml", apple, url_in_file)
        env = {"MONITOR_DATABASE_URL": url_in_env} if url_in_env else None
        result = ok(run_cli(config, "check-config", env=env))

    assert "s3cr3t-pa55" not in result.output
    resolved = config_document(result.stdout)
    assert resolved["database"]["url"] == shown
    # Values from the file, defaults and derived keys are all shown resolved.
    assert resolved["itunes"]["base_url"] == apple.base_url
    assert resolved["fetch"]["requests_per_minute"] == 0
    assert resolved["fetch"]["max_attempts"] == 1
    assert resolved["poll"]["interval"] == "1h"
    assert resolved["charts"]["storefronts"] == list(DEFAULT_STOREFRONTS)
    assert not apple.server.requests  # checking the config touches no feed


def test_check_config_lists_the_33_default_charts_and_the_9_watchlist_apps(
    sqlite_deployment: Deployment,
) -> None:
    result = ok(sqlite_deployment.run("check-config"))

    charts = listed_after(result.stdout, "charts will be polled:")
    assert "33 charts will be polled:" in result.stdout
    assert charts == sorted(
        f"apple/{country}/{collection}/iphone/all"
        for country in DEFAULT_STOREFRONTS
        for collection in DEFAULT_COLLECTIONS
    )
    apps = listed_after(result.stdout, "apps on the watchlist:")
    assert "9 apps on the watchlist:" in result.stdout
    assert [line.split()[0] for line in apps] == [f"apple/{i}" for i in WATCHLIST_IDS]
    assert apps[0] == f"apple/{DEEPSEEK['id']}  DeepSeek"
    # Checking the configuration does not create the database.
    assert not sqlite_deployment.sqlite_file.exists()


BROKEN_CONFIG = """\
[database]
url = "mysql://monitor@db/ranks"

[http]
port = 70000

[fetch]
concurency = 3
max_attempts = 0

[poll]
interval = "soon"

[log]
level = "LOUD"
"""
BAD_KEYS = {
    # key as reported: its line in BROKEN_CONFIG
    "[database] url": 2,
    "[http] port": 5,
    "[fetch] concurency": 8,
    "[fetch] max_attempts": 9,
    "[poll] interval": 12,
    "[log] level": 15,
}


@pytest.mark.parametrize(
    "command", [["check-config"], ["poll-once"], ["history", "--app", "deepseek"], ["migrate"]]
)
def test_a_broken_config_exits_2_naming_every_bad_key_with_its_line(
    tmp_path: Path, command: list[str]
) -> None:
    config = tmp_path / "broken.toml"
    config.write_text(BROKEN_CONFIG, encoding="utf-8")

    result = run_cli(config, *command)

    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    problems = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == len(BAD_KEYS), result.stderr
    for key, line in BAD_KEYS.items():
        assert any(f"broken.toml:{line}: {key}" in problem for problem in problems), key
    assert "did you mean concurrency?" in result.stderr


def test_the_config_file_can_come_from_monitor_config(sqlite_deployment: Deployment) -> None:
    result = ok(
        run_cli(None, "check-config", env={"MONITOR_CONFIG": str(sqlite_deployment.config)})
    )

    assert config_document(result.stdout)["database"]["url"] == sqlite_deployment.database_url


def test_a_missing_config_file_exits_2_naming_it(tmp_path: Path) -> None:
    result = run_cli(tmp_path / "nowhere.toml", "check-config")

    assert result.exit_code == 2
    assert "nowhere.toml: config file does not exist" in result.stderr


# -- poll-once --------------------------------------------------------------------------------


def test_poll_once_polls_every_due_chart_and_prints_one_table_row_per_chart(
    sqlite_deployment: Deployment,
) -> None:
    result = ok(sqlite_deployment.run("poll-once"))

    rows = table(result.stdout)
    assert [row["chart"] for row in rows] == sorted(
        f"apple/{country}/{collection}/iphone/all"
        for country in DEFAULT_STOREFRONTS
        for collection in DEFAULT_COLLECTIONS
    )
    assert {row["outcome"] for row in rows} == {"changed"}
    assert {row["entries"] for row in rows} == {"100"}
    assert {row["error"] for row in rows} == {""}
    sources = {row["chart"].split("/")[2]: row["source"] for row in rows}
    # The v2 feed has no top grossing chart: that one comes from the legacy feed.
    assert sources == {"top_free": "apple_v2", "top_paid": "apple_v2", "top_grossing": "itunes_rss"}
    assert len(sqlite_deployment.apple.server.requests) == 33


def test_poll_once_right_after_another_finds_no_chart_due_and_exits_0(
    sqlite_deployment: Deployment,
) -> None:
    first = sqlite_deployment.json("poll-once")
    assert len(first) == 33
    assert set(first[0]) == {"chart", "outcome", "source", "entries", "seconds", "error"}
    requests = len(sqlite_deployment.apple.server.requests)

    second = sqlite_deployment.run("poll-once", "--format", "json")

    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout) == []
    assert len(sqlite_deployment.apple.server.requests) == requests


@pytest.mark.parametrize("slug", [US_TOP_FREE, "apple/US/top_free/iphone/all"])
def test_poll_once_chart_polls_only_that_chart_even_though_it_is_not_due(
    sqlite_deployment: Deployment, slug: str
) -> None:
    ok(sqlite_deployment.run("poll-once"))
    requests = len(sqlite_deployment.apple.server.requests)

    result = ok(sqlite_deployment.run("poll-once", "--chart", slug))

    (row,) = table(result.stdout)
    # The second poll of the fake US chart has DeepSeek at 12 instead of 31: a new snapshot.
    assert (row["chart"], row["outcome"], row["source"]) == (
        "apple/us/top_free/iphone/all", "changed", "apple_v2",
    )  # fmt: skip
    new = sqlite_deployment.apple.server.requests[requests:]
    assert [request.path for request in new] == sqlite_deployment.apple.feed_paths(US_TOP_FREE)[:1]


@pytest.mark.parametrize(
    ("slug", "complaint"),
    [
        ("us/top_dollar", "'top_dollar' is not a valid Collection"),
        ("usa/top_free", "country must be a two-letter lower-case code"),
        ("us", "expected [store/]country/collection[/device[/genre]]"),
        ("nz/top_free", "apple/nz/top_free/iphone/all is not a configured chart"),
        ("us/top_free/ipad", "apple/us/top_free/ipad/all is not a configured chart"),
    ],
)
def test_poll_once_rejects_an_unknown_or_unconfigured_chart_as_a_usage_error(
    sqlite_deployment: Deployment, slug: str, complaint: str
) -> None:
    result = sqlite_deployment.run("poll-once", "--chart", US_TOP_FREE, "--chart", slug)

    assert result.exit_code == 2
    assert "Usage: app-rank-monitor poll-once" in result.stderr
    assert "Invalid value for --chart" in result.stderr
    assert complaint in result.stderr
    # Nothing was polled, not even the valid chart, and no database was created.
    assert not sqlite_deployment.apple.server.requests
    assert not sqlite_deployment.sqlite_file.exists()


def test_a_chart_failing_on_both_feeds_makes_poll_once_exit_1_and_the_others_are_stored(
    any_deployment: Deployment,
) -> None:
    any_deployment.apple.fail("gb/top_paid")

    result = any_deployment.run("poll-once")

    assert result.exit_code == 1, result.output
    rows = {row["chart"]: row for row in table(result.stdout)}
    failed = rows.pop("apple/gb/top_paid/iphone/all")
    assert failed["outcome"] == "failed"
    assert failed["error"].startswith("HttpStatusError: HTTP 500 from ")
    assert len(rows) == 32
    assert {row["outcome"] for row in rows.values()} == {"changed"}
    # Both feeds were tried, the preferred one first.
    tried = [request.path for request in any_deployment.apple.requests_for("gb/top_paid")]
    assert tried == any_deployment.apple.feed_paths("gb/top_paid")

    missing = any_deployment.run("chart", "--country", "gb", "--collection", "top_paid")
    assert missing.exit_code == 2
    assert "no snapshot of apple/gb/top_paid/iphone/all stored" in missing.stderr
    stored = any_deployment.json("chart", "--country", "gb", "--collection", "top_free")
    assert len(stored["entries"]) == 100


def test_poll_once_chart_reports_a_chart_another_poller_holds_and_exits_1(
    sqlite_deployment: Deployment,
) -> None:
    ok(sqlite_deployment.run("poll-once", "--chart", US_TOP_FREE))
    # Another poller claimed the chart and died (or is still at it): its lease runs 5 minutes.
    with open_database(sqlite_deployment.database_url, writer=True) as database:
        claims = Repository(database).claim_due(
            owner="elsewhere:4242:0",
            now=dt.datetime.now(dt.UTC),
            lease=dt.timedelta(minutes=5),
            limit=1,
            charts=[ChartKey.parse(US_TOP_FREE)],
        )
        assert len(claims) == 1
    requests = len(sqlite_deployment.apple.server.requests)

    result = sqlite_deployment.run("poll-once", "--chart", US_TOP_FREE)

    assert result.exit_code == 1, result.output
    (row,) = table(result.stdout)
    assert row["chart"] == "apple/us/top_free/iphone/all"
    assert row["outcome"] == "not_polled"
    assert row["error"] == "leased by another poller (for at most 5m)"
    assert len(sqlite_deployment.apple.server.requests) == requests


# -- migrate and rebuild ----------------------------------------------------------------------


def test_migrate_brings_a_new_database_to_head_and_migrate_check_then_exits_0(
    any_deployment: Deployment,
) -> None:
    if any_deployment.database_url.startswith("sqlite"):
        any_deployment.sqlite_file.touch()  # an empty file: a database without a schema

    before = any_deployment.run("migrate", "--check")
    assert before.exit_code == 1, before.output
    assert "database is at revision None, the code at " in before.stdout

    migrated = ok(any_deployment.run("migrate"))
    revision = migrated.stdout.strip().removeprefix("database at revision ")
    assert re.fullmatch(r"\w+", revision), migrated.stdout

    again = ok(any_deployment.run("migrate"))
    assert again.stdout == migrated.stdout
    check = ok(any_deployment.run("migrate", "--check"))
    assert check.stdout == f"schema matches the code (revision {revision})\n"


def test_rebuild_reports_the_rank_points_it_derived_and_leaves_every_history_identical(
    sqlite_deployment: Deployment,
) -> None:
    ok(sqlite_deployment.run("poll-once"))
    ok(sqlite_deployment.run("poll-once", "--chart", US_TOP_FREE))
    ok(sqlite_deployment.run("poll-once", "--chart", US_TOP_FREE))

    def histories() -> dict[str, Any]:
        return {app: sqlite_deployment.json("history", "--app", app) for app in WATCHLIST_IDS}

    before = histories()
    result = ok(sqlite_deployment.run("rebuild"))
    after = histories()

    listed = sum(1 for points in before.values() for p in points if p["status"] == "listed")
    assert listed > 33  # several watched apps on several charts
    assert result.stdout == f"rebuilt {listed} rank points from stored snapshots\n"
    assert after == before


def test_retention_folds_old_snapshots_now_and_history_reads_their_days(
    any_deployment: Deployment,
) -> None:
    store_old_history(any_deployment.database_url)

    (report,) = any_deployment.json("retention")
    history = any_deployment.json("history", "--app", DEEPSEEK_ID, "--country", "us")
    text = ok(any_deployment.run("history", "--app", DEEPSEEK_ID, "--country", "us")).stdout

    # The last snapshot stands two poll intervals (2 h) past its fetch at 23:00: into a day
    # of its own.
    assert report["chart_days_folded"] == OLD_DAYS + 1
    assert report["charts_not_folded"] == ""
    days = [point for point in history if point["resolution"] == "day"]
    assert [point["time"][:10] for point in days] == [
        (OLD + dt.timedelta(days=n)).date().isoformat() for n in range(OLD_DAYS + 1)
    ]
    # Every hour of each day DeepSeek stood somewhere from #1 to #7 of the chart.
    assert {(p["best"], p["worst"], p["hours_listed"]) for p in days[:-1]} == {(1, 7, 24.0)}
    assert days[-1]["hours_listed"] == 1.0
    assert table(text)[0]["resolution"] == "day"
    again = any_deployment.json("retention")
    assert again[0]["chart_days_folded"] == 0
