"""Command-line arguments out of range: exit 2 with one clear line naming the option, never a
traceback, and nothing done (the database is not even opened: none exists here).

Malformed configuration files are table-driven in tests/test_config.py; mutated feeds in
tests/faults/test_parser_fuzz.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_cli import run_cli

# (arguments, the option the error names, what it says)
OUT_OF_RANGE = {
    "limit zero": (["alerts", "list", "--limit", "0"], "'--limit'", "0 is not in the range"),
    "limit negative": (["alerts", "list", "--limit", "-1"], "'--limit'", "-1 is not in the"),
    "limit huge": (
        ["alerts", "list", "--limit", "99999999999999999999"],
        "'--limit'",
        "is not in the range 1<=x<=100000",
    ),
    "limit not a number": (["alerts", "list", "--limit", "ten"], "'--limit'", "not a valid"),
    "since garbage": (
        ["history", "--app", "deepseek", "--since", "garbage"],
        "'--since'",
        "'garbage' is neither an ISO date/time nor a duration like 24h or 7d",
    ),
    "since before year one": (
        ["alerts", "list", "--since", "9999999999999d"],
        "'--since'",
        "a duration must be at most 365000d",
    ),
    "since out of range in UTC": (
        ["history", "--app", "deepseek", "--since", "0001-01-01T00:00+01:00"],
        "'--since'",
        "out of range in UTC",
    ),
    "until in the future as a negative duration": (
        ["history", "--app", "deepseek", "--until", "-5h"],
        "'--until'",
        "neither an ISO date/time nor a duration",
    ),
    "since after until": (
        ["history", "--app", "deepseek", "--since", "2025-02-01", "--until", "2025-01-01"],
        "--since/--until",
        "is after --until",
    ),
    "silence for a negative duration": (
        ["silence", "add", "--for", "-1h", "--app", "deepseek"],
        "--for",
        'expected a duration such as "90s"',
    ),
    "silence for nothing": (
        ["silence", "add", "--for", "0s", "--app", "deepseek"],
        "--for",
        "a silence must last longer than 0s",
    ),
    "silence past the calendar": (
        ["silence", "add", "--for", "99999999d", "--app", "deepseek"],
        "--for",
        "a duration must be at most 365000d",
    ),
    "silence until past the calendar in UTC": (
        ["silence", "add", "--until", "9999-12-31T23:59:59-14:00", "--app", "deepseek"],
        "--until",
        "past the year 9999 in UTC",
    ),
    "silence until garbage": (
        ["silence", "add", "--until", "garbage", "--app", "deepseek"],
        "--until",
        "is not an ISO date/time",
    ),
    "silence until the past": (
        ["silence", "add", "--until", "2020-01-01", "--app", "deepseek"],
        "--until",
        "is already past",
    ),
    "silence of an unknown app": (
        ["silence", "add", "--for", "1h", "--app", "no-such-app"],
        "--app",
        "is neither the name nor the store id of a watchlist app",
    ),
    "chart of a three-letter country": (
        ["chart", "--country", "zz1", "--collection", "top_free"],
        "'--country'",
        "expected a two-letter storefront code such as us, got 'zz1'",
    ),
    "history of a three-letter country": (
        ["history", "--app", "deepseek", "--country", "usa"],
        "'--country'",
        "expected a two-letter storefront code such as us, got 'usa'",
    ),
    "chart of a genre by name": (
        ["chart", "--country", "us", "--collection", "top_free", "--genre", "games"],
        "--genre",
        "genre must be 'all' or a numeric genre id",
    ),
    "chart of an unknown collection": (
        ["chart", "--country", "us", "--collection", "top_everything"],
        "'--collection'",
        "'top_everything' is not one of 'top_free'",
    ),
    "chart at garbage": (
        ["chart", "--country", "us", "--collection", "top_free", "--at", "yesterday"],
        "'--at'",
        "neither an ISO date/time nor a duration",
    ),
    "poll-once of nonsense": (
        ["poll-once", "--chart", "nonsense"],
        "--chart",
        "chart 'nonsense': expected [store/]country/collection[/device[/genre]]",
    ),
    "format xml": (["apps", "--format", "xml"], "'--format'", "'xml' is not one of 'table'"),
    "alerts as xml": (["alerts", "list", "--format", "xml"], "'--format'", "'xml' is not one"),
    "test email to a non-address": (
        ["alerts", "test-email", "--to", "ops at example.com"],
        "--to",
        "'ops at example.com' is not a plain ASCII email address",
    ),
    "test email with header injection": (
        ["alerts", "test-email", "--to", "ops@example.com\r\nBcc: x@y"],
        "--to",
        "is not a plain ASCII email address",
    ),
}


@pytest.mark.parametrize(("args", "option", "says"), OUT_OF_RANGE.values(), ids=OUT_OF_RANGE)
def test_an_argument_out_of_range_is_a_usage_error_naming_the_option(
    tmp_path: Path, args: list[str], option: str, says: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/monitor.sqlite3"\n')

    result = run_cli(config, *args)

    assert result.exit_code == 2, result.output
    error = result.output.splitlines()[-1]
    assert error.startswith(f"Error: Invalid value for {option}: "), result.output
    assert says in error, result.output
    assert "\r" not in error
    assert not (tmp_path / "monitor.sqlite3").exists()
