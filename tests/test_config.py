"""Settings: defaults, file and environment precedence, and start-up problem reports."""

from __future__ import annotations

import datetime as dt
import json
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
