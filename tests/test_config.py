"""Settings: defaults, file and environment precedence, and start-up problem reports."""

from __future__ import annotations

import datetime as dt
import json
import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import monitor
from monitor.config import DEFAULT_HTTP_PORT, Settings, env_names, load_settings
from monitor.config_types import format_duration, parse_duration
from monitor.errors import ConfigError
from tests.conftest import REPO_ROOT


def write(directory: Path, text: str, name: str = "config.toml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def line_of(path: Path, needle: str) -> int:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


def problems_of(path: Path | None = None, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ or {})
    return info.value.problems


def one_problem_about(problems: list[str], needle: str) -> str:
    matching = [problem for problem in problems if needle in problem]
    assert len(matching) == 1, f"expected one problem about {needle!r} in {problems}"
    return matching[0]


def test_defaults_apply_without_a_file_or_environment() -> None:
    settings = load_settings(None, {})

    assert settings.database.url == "sqlite:///app-rank-monitor.sqlite3"
    assert (settings.http.host, settings.http.port) == ("127.0.0.1", DEFAULT_HTTP_PORT)
    assert settings.itunes.base_url == "https://itunes.apple.com"
    assert settings.apple_rss.base_url == "https://rss.marketingtools.apple.com"
    assert settings.fetch.user_agent.startswith(f"app-rank-monitor/{monitor.__version__} (+https")
    assert settings.fetch.max_body_bytes == 8 * 1024 * 1024
    assert settings.fetch.requests_per_minute == 20
    assert settings.poll.interval == dt.timedelta(hours=1)
    assert settings.poll.tick == dt.timedelta(seconds=5)
    assert settings.poll.lease == dt.timedelta(minutes=5)
    assert (settings.poll.depth, settings.poll.prefer_v2) == (100, True)
    assert (settings.log.format, settings.log.level) == ("text", "INFO")
    assert settings.seeds.dir == REPO_ROOT / "seeds"


def test_file_overrides_defaults_and_environment_overrides_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [http]
        host = "0.0.0.0"
        port = 9999

        [poll]
        interval = "15m"
        """,
    )

    from_file = load_settings(path, {})
    from_env = load_settings(path, {"MONITOR_HTTP_PORT": "8001", "MONITOR_POLL_TICK": "90"})

    assert (from_file.http.host, from_file.http.port) == ("0.0.0.0", 9999)
    assert from_file.poll.interval == dt.timedelta(minutes=15)
    assert from_file.poll.tick == dt.timedelta(seconds=5)
    assert (from_env.http.host, from_env.http.port) == ("0.0.0.0", 8001)
    assert from_env.poll.tick == dt.timedelta(seconds=90)


def test_every_key_has_a_variable_named_after_its_section_and_key() -> None:
    names = env_names()

    for name in (
        "MONITOR_DATABASE_URL",
        "MONITOR_ITUNES_BASE_URL",
        "MONITOR_APPLE_RSS_BASE_URL",
        "MONITOR_HTTP_HOST",
        "MONITOR_HTTP_PORT",
        "MONITOR_LOG_FORMAT",
        "MONITOR_SEEDS_DIR",
        "MONITOR_WATCHLIST_APPS",
    ):
        assert name in names
    keys = sum(len(type(getattr(Settings(), s)).model_fields) for s in Settings.model_fields)
    assert len(names) == keys


def test_file_variant_reads_the_value_without_its_trailing_newline(tmp_path: Path) -> None:
    secret = tmp_path / "database_url"
    secret.write_text("postgresql://monitor:s3cret@db:5432/monitor\n", encoding="utf-8")
    port = tmp_path / "port"
    port.write_text("9100\r\n", encoding="utf-8")

    settings = load_settings(
        None, {"MONITOR_DATABASE_URL_FILE": str(secret), "MONITOR_HTTP_PORT_FILE": str(port)}
    )

    assert settings.database.url == "postgresql+psycopg://monitor:s3cret@db:5432/monitor"
    assert settings.http.port == 9100


def test_setting_a_variable_and_its_file_variant_is_an_error(tmp_path: Path) -> None:
    secret = write(tmp_path, "sqlite:///other.sqlite3", name="url")

    problems = problems_of(
        environ={"MONITOR_DATABASE_URL": "sqlite:///x.db", "MONITOR_DATABASE_URL_FILE": str(secret)}
    )

    assert problems == [
        "MONITOR_DATABASE_URL and MONITOR_DATABASE_URL_FILE are both set: set only one"
    ]


def test_a_missing_file_variant_target_is_reported(tmp_path: Path) -> None:
    problems = problems_of(environ={"MONITOR_DATABASE_URL_FILE": str(tmp_path / "absent")})

    assert one_problem_about(problems, "MONITOR_DATABASE_URL_FILE: cannot read")


@pytest.mark.parametrize("value", ['["us", "jp"]', "us, jp", "us,jp,"])
def test_list_keys_take_json_arrays_or_comma_separated_values(value: str) -> None:
    settings = load_settings(None, {"MONITOR_CHARTS_STOREFRONTS": value})

    assert {chart.country for chart in settings.chart_keys()} == {"us", "jp"}


def test_inline_apps_from_the_environment_are_a_json_array() -> None:
    apps = json.dumps([{"store_id": "284882215", "name": "Facebook"}])

    settings = load_settings(None, {"MONITOR_WATCHLIST_APPS": apps})

    assert settings.watched_apps()[-1].store_id == "284882215"
    problems = problems_of(environ={"MONITOR_WATCHLIST_APPS": "284882215"})
    assert one_problem_about(problems, "MONITOR_WATCHLIST_APPS: [watchlist] apps: expected a JSON")


def test_a_malformed_json_list_in_the_environment_is_reported() -> None:
    problems = problems_of(environ={"MONITOR_CHARTS_GENRES": '["6014",'})

    assert one_problem_about(problems, "MONITOR_CHARTS_GENRES: [charts] genres: expected a JSON")


def test_every_problem_is_reported_at_once_with_its_line_or_variable(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [http]
        port = 70000

        [poll]
        interval = "soon"
        depht = 100

        [apple_rss]
        base_url = "ftp://rss.example"
        """,
    )
    environ = {"MONITOR_ITUNES_BASE_URL": "itunes.apple.com", "MONITOR_LOG_LEVEL": "LOUD"}

    problems = problems_of(path, environ)

    assert len(problems) == 6
    port = one_problem_about(problems, "[http] port")
    assert port.startswith(f"{path}:{line_of(path, 'port = 70000')}: [http] port = 70000: ")
    assert "less than or equal to 65535" in port
    interval = one_problem_about(problems, "[poll] interval")
    assert interval.startswith(f"{path}:{line_of(path, 'interval')}: [poll] interval = 'soon'")
    assert 'expected a duration such as "90s"' in interval
    typo = one_problem_about(problems, "depht")
    assert (
        typo == f"{path}:{line_of(path, 'depht')}: [poll] depht: unknown key (did you mean depth?)"
    )
    rss = one_problem_about(problems, "[apple_rss] base_url")
    assert rss.startswith(f"{path}:{line_of(path, 'ftp://')}: [apple_rss] base_url = 'ftp://")
    assert "expected an http:// or https:// URL" in rss
    itunes = one_problem_about(problems, "[itunes] base_url")
    assert itunes.startswith("MONITOR_ITUNES_BASE_URL: [itunes] base_url = 'itunes.apple.com'")
    level = one_problem_about(problems, "[log] level")
    assert level.startswith("MONITOR_LOG_LEVEL: [log] level = 'LOUD': Input should be 'DEBUG'")


def test_a_toml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '[http]\nhost = "127.0.0.1"\nport = \n')

    problems = problems_of(path)

    assert problems == [f"{path}:3:8: TOML syntax error: Invalid value"]


def test_a_config_path_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "nope.toml") == [
        f"{tmp_path / 'nope.toml'}: config file does not exist"
    ]


def test_unknown_sections_and_non_table_sections_in_the_file_are_errors(tmp_path: Path) -> None:
    path = write(tmp_path, 'log = "json"\n\n[htp]\nport = 1\n')

    problems = problems_of(path)

    assert problems == [
        f"{path}:1: log must be a table: [log]",
        f"{path}:3: unknown section [htp] (did you mean http?)",
    ]


def test_unknown_monitor_variables_are_errors_unless_they_are_not_settings() -> None:
    environ = {
        "MONITOR_DATABSE_URL": "sqlite:///x.db",
        "MONITOR_CONFIG": "/etc/monitor.toml",
        "MONITOR_TEST_POSTGRES_URL": "postgresql://localhost/test",
        "MONITOR_LOG_FORMAT": "json",
    }

    problems = problems_of(environ=environ)

    assert problems == ["MONITOR_DATABSE_URL: unknown setting (did you mean MONITOR_DATABASE_URL?)"]


@pytest.mark.parametrize(
    "value", ["mailto:ops@example.com", "https://", "itunes.apple.com", "https://host:99999"]
)
def test_feed_base_urls_must_be_http_urls_with_a_host(value: str) -> None:
    problem = one_problem_about(problems_of(environ={"MONITOR_ITUNES_BASE_URL": value}), "base_url")

    assert problem.startswith(f"MONITOR_ITUNES_BASE_URL: [itunes] base_url = {value!r}")


def test_a_trailing_slash_on_a_base_url_is_dropped() -> None:
    settings = load_settings(None, {"MONITOR_APPLE_RSS_BASE_URL": "http://127.0.0.1:8080/"})

    assert settings.apple_rss.base_url == "http://127.0.0.1:8080"


@pytest.mark.parametrize("value", ["0", "65536", "http"])
def test_the_port_must_be_a_tcp_port_number(value: str) -> None:
    problems = problems_of(environ={"MONITOR_HTTP_PORT": value})

    assert one_problem_about(problems, f"MONITOR_HTTP_PORT: [http] port = {value!r}")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("1h", 3600), ("1d", 86400), ("1h30m", 5400), ("120", 120)],
)
def test_durations_take_units_or_whole_seconds(text: str, seconds: int) -> None:
    settings = load_settings(None, {"MONITOR_POLL_INTERVAL": text})

    assert settings.poll.interval == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("value", ["5 minutes", "1.5h", "-60", "", "1w", "h"])
def test_malformed_durations_are_rejected(value: str) -> None:
    problem = one_problem_about(
        problems_of(environ={"MONITOR_POLL_INTERVAL": value}), "[poll] interval"
    )

    assert problem.endswith(
        'expected a duration such as "90s", "15m", "1h", "1d" or a whole number of seconds'
    )


@given(st.integers(min_value=0, max_value=10**8))
def test_a_formatted_duration_reads_back_as_the_same_duration(seconds: int) -> None:
    duration = dt.timedelta(seconds=seconds)

    assert parse_duration(format_duration(duration)) == duration


def test_the_poll_interval_is_at_least_a_second() -> None:
    problem = one_problem_about(
        problems_of(environ={"MONITOR_POLL_INTERVAL": "0s"}), "[poll] interval"
    )

    assert problem == "MONITOR_POLL_INTERVAL: [poll] interval = '0s': must be at least 1s"


def test_the_lease_must_outlast_the_longest_fetch_of_one_chart(tmp_path: Path) -> None:
    path = write(tmp_path, "[fetch]\ndeadline_seconds = 100\n")

    problems = problems_of(path, {"MONITOR_POLL_LEASE": "6m"})

    problem = one_problem_about(problems, "[poll] lease")
    # 4 attempts x 100 s + backoff sleeps of at most 1 + 2 + 4 s.
    assert problem.startswith("MONITOR_POLL_LEASE: [poll] lease = 6m: must exceed")
    assert "407s" in problem
    assert f"deadline_seconds ({path}:2)" in problem
    assert "max_attempts (built-in default)" in problem


def test_the_lease_must_also_leave_the_time_kept_to_record_the_outcome(tmp_path: Path) -> None:
    path = write(tmp_path, "[fetch]\ndeadline_seconds = 100\n")

    # Fetching stops 10 s before the lease ends: a 410 s lease leaves 400 s, under 407 s.
    problems = problems_of(path, {"MONITOR_POLL_LEASE": "410s"})
    enough = load_settings(path, {"MONITOR_POLL_LEASE": "420s"})

    assert one_problem_about(problems, "[poll] lease").endswith(
        "by the 10s kept to record the outcome"
    )
    assert enough.poll.lease == dt.timedelta(seconds=420)


def test_the_tick_must_be_shorter_than_the_interval() -> None:
    problems = problems_of(environ={"MONITOR_POLL_TICK": "2h"})

    assert one_problem_about(problems, "MONITOR_POLL_TICK: [poll] tick = 2h: must be shorter")


def test_fetch_timeouts_must_fit_the_deadline_and_backoff_base_its_cap() -> None:
    environ = {
        "MONITOR_FETCH_READ_TIMEOUT_SECONDS": "90",
        "MONITOR_FETCH_BACKOFF_BASE_SECONDS": "60",
    }

    problems = problems_of(environ=environ)

    assert one_problem_about(problems, "[fetch] read_timeout_seconds = 90: must not exceed")
    assert one_problem_about(problems, "[fetch] backoff_base_seconds = 60: must not exceed")


def test_settings_are_frozen() -> None:
    settings = load_settings(None, {})

    with pytest.raises(ValueError, match="frozen"):
        settings.http.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(("fmt", "level"), [("JSON", "debug"), (" text ", "Warning")])
def test_log_format_and_level_ignore_case(fmt: str, level: str) -> None:
    settings = load_settings(None, {"MONITOR_LOG_FORMAT": fmt, "MONITOR_LOG_LEVEL": level})

    assert settings.log.format == fmt.strip().lower()
    assert settings.log.level == level.upper()


def test_a_seeds_directory_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    problems = problems_of(environ={"MONITOR_SEEDS_DIR": str(tmp_path / "absent")})

    assert problems == [
        f"MONITOR_SEEDS_DIR: [seeds] dir = {str(tmp_path / 'absent')!r}: expected an existing "
        "directory holding the seed files"
    ]


def test_the_example_config_documents_every_key_with_its_real_default(tmp_path: Path) -> None:
    example = REPO_ROOT / "deploy" / "config.example.toml"
    lines = example.read_text(encoding="utf-8").splitlines()
    section = ""
    documented: dict[str, str] = {}
    uncommented = []
    for number, line in enumerate(lines):
        if line.startswith("["):
            section = line.strip("[]")
            uncommented.append(line)
        elif line.startswith("# env: "):
            name = line.removeprefix("# env: ").split()[0]
            documented[name] = section
            default = lines[number + 1]
            if not default.startswith("# e.g. "):
                uncommented.append(default.removeprefix("# "))

    assert documented == {name: section for name, (section, _) in env_names().items()}
    path = write(tmp_path, "\n".join(uncommented))
    assert load_settings(path, {}).redacted() == load_settings(None, {}).redacted()


def test_lines_are_found_past_comments_strings_and_multiline_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '''
        # [http] port = 1 in a comment
        [fetch]
        user_agent = "ua [with] # brackets"
        connect_timeout_seconds = """
        port = 2
        """

        [charts]
        storefronts = [
          "us",  # ]
          "jp",
        ]
        [http]  # the real one
        port = 0
        ''',
    )

    problems = problems_of(path)

    assert [problem.split(": ")[0] for problem in problems] == [f"{path}:14", f"{path}:4"]
    assert "[http] port = 0" in problems[0]
    assert "[fetch] connect_timeout_seconds" in problems[1]


# One malformed setting per row: (TOML after a comment line, the key the problem names, what
# it says). The problem must give the file and the line of the key, then the key.
MALFORMED = {
    "wrong type, integer": ('[poll]\ndepth = "ten"', "[poll] depth = 'ten'", "valid integer"),
    "wrong type, string": ("[http]\nhost = 5", "[http] host = 5", "valid string"),
    "wrong type, list": (
        '[alerts]\nrecipients = "ops@example.com"',
        "[alerts] recipients = 'ops@example.com'",
        "valid list",
    ),
    "below range": ("[fetch]\nconcurrency = 0", "[fetch] concurrency = 0", "greater than or"),
    "above range": ("[fetch]\nmax_attempts = 11", "[fetch] max_attempts = 11", "less than or"),
    "negative seconds": (
        "[smtp]\ntimeout_seconds = -1",
        "[smtp] timeout_seconds = -1",
        "greater than 0",
    ),
    "share above one": ("[alerts]\nglitch_share = 1.5", "[alerts] glitch_share = 1.5", "less"),
    "unknown key": ('[poll]\nfrequency = "1h"', "[poll] frequency", "unknown key"),
    "unknown rule key": (
        '[[alerts.rules]]\nname = "x"\nkind = "entered_top"\ntop = 10\ncolour = "red"',
        "[alerts] rules[0].colour = 'red'",
        "Extra inputs are not permitted",
    ),
    "duration in words": (
        '[poll]\ninterval = "1 hour"',
        "[poll] interval = '1 hour'",
        'expected a duration such as "90s"',
    ),
    "fractional duration": ("[poll]\ninterval = 3600.5", "[poll] interval = 3600.5", "duration"),
    "duration past any date": (
        '[alerts]\ngroup_wait = "9999999999999d"',
        "[alerts] group_wait = '9999999999999d'",
        "a duration must be at most 365000d",
    ),
    "huge integer duration": (
        "[poll]\nlease = 99999999999999999999",
        "[poll] lease = 99999999999999999999",
        "a duration must be at most",
    ),
    "bad from address": (
        '[smtp]\nfrom_address = "not an address"',
        "[smtp] from_address = 'not an address'",
        "expected a plain ASCII e-mail address",
    ),
    "bad recipient": (
        '[alerts]\nrecipients = ["ops@example.com", "ops at example.com"]',
        "[alerts] recipients[1] = 'ops at example.com'",
        "expected a plain ASCII e-mail address",
    ),
    "header injection in a recipient": (
        '[alerts]\nrecipients = ["ops@example.com\\r\\nBcc: x@y"]',
        "[alerts] recipients[0] = 'ops@example.com\\r\\nBcc: x@y'",
        "expected a plain ASCII e-mail address",
    ),
    "unknown rule kind": (
        '[[alerts.rules]]\nname = "x"\nkind = "nope"',
        "[alerts] rules[0].kind = 'nope'",
        "'moved', 'entered_top'",
    ),
    "rule without a name": (
        '[[alerts.rules]]\nkind = "entered_top"\ntop = 10',
        "[alerts] rules[0].name",
        "required key is missing",
    ),
    "rule with a negative move": (
        '[[alerts.rules]]\nname = "x"\nkind = "moved"\nplaces_up = -3',
        "[alerts] rules[0]",
        "places_up and places_down must be at least 1",
    ),
    "rule with a bad window": (
        '[[alerts.rules]]\nname = "x"\nkind = "moved"\nwindow = "a day"',
        "[alerts] rules[0].window = 'a day'",
        "expected a duration",
    ),
    "bad quiet hours": (
        '[alerts]\nquiet_hours = "22-07"',
        "[alerts] quiet_hours = '22-07'",
        'expected "HH:MM-HH:MM Area/City"',
    ),
    "feed URL without a scheme": (
        '[itunes]\nbase_url = "itunes.apple.com"',
        "[itunes] base_url = 'itunes.apple.com'",
        "expected an http:// or https:// URL with a host",
    ),
    "script URL for Grafana": (
        '[http]\ngrafana_url = "javascript:alert(1)"',
        "[http] grafana_url = 'javascript:alert(1)'",
        "expected an http:// or https:// URL with a host",
    ),
    "webhook that is no URL": (
        '[alerts]\nwebhooks = ["not a url"]',
        "[alerts] webhooks[0] = 'not a url'",
        "expected an http:// or https:// URL with a host",
    ),
    "webhook with a space": (
        '[alerts]\nwebhooks = ["https://hooks.example/a b"]',
        "[alerts] webhooks[0] = 'https://hooks.example/a b'",
        "without spaces or control characters",
    ),
    "unsupported database": (
        '[database]\nurl = "mysql://monitor:pw@db/monitor"',
        "[database] url = 'mysql://monitor:***@db/monitor'",
        "expected sqlite:///",
    ),
    "bad storefront": (
        '[charts]\nstorefronts = ["zz1"]',
        "[charts] storefronts[0] = 'zz1'",
        "expected a two-letter country code",
    ),
    "bad extra chart": (
        '[charts]\nextra = ["apple/us/nonsense"]',
        "[charts] extra[0] = 'apple/us/nonsense'",
        "'nonsense' is not a valid Collection",
    ),
    "bad log format": ('[log]\nformat = "xml"', "[log] format = 'xml'", "'text' or 'json'"),
}


@pytest.mark.parametrize(("toml", "key", "says"), MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_setting_is_one_problem_naming_file_line_and_key(
    tmp_path: Path, toml: str, key: str, says: str
) -> None:
    path = write(tmp_path, "# app-rank-monitor\n" + toml + "\n")
    section_line = 2  # the first line after the comment
    key_name = re.findall(r"[a-z_]+", key.partition(" =")[0])[-1]  # rules[0].window: window
    lines = path.read_text(encoding="utf-8").splitlines()
    key_line = next(
        (n for n, line in enumerate(lines, start=1) if line.startswith(f"{key_name} =")),
        section_line,  # a whole rule, or a missing key: the rule's [[alerts.rules]] line
    )

    (problem,) = problems_of(path)

    assert problem.startswith(f"{path}:{key_line}: {key}"), problem
    assert says in problem, problem


@pytest.mark.parametrize(
    ("toml", "where"),
    [
        (
            '[poll]\ninterval = "1h"\n[poll]\ntick = "1s"\n',
            ":3:6: TOML syntax error: Cannot declare",
        ),
        ("[poll\n", ":1:6: TOML syntax error: Expected ']'"),
        ('[http]\nhost = "127.0.0.1\n', ":2:18: TOML syntax error: Illegal character"),
    ],
    ids=["table declared twice", "unclosed table header", "unclosed string"],
)
def test_toml_syntax_errors_name_the_file_line_and_column(
    tmp_path: Path, toml: str, where: str
) -> None:
    path = write(tmp_path, toml)

    (problem,) = problems_of(path)

    assert problem.startswith(f"{path}{where}"), problem
