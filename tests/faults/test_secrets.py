"""Secrets stay secret and store-supplied text stays text, in the real processes.

The service and the CLI run as subprocesses with an SMTP password, a database password and a
webhook URL with credentials; every byte they print or serve (logs in text and JSON, the CLI's
output, /metrics, the status page, error messages) is searched for the secret strings. The
feed gives DeepSeek a hostile name and developer (HTML, header injection, terminal escapes, a
forged log line): it must come out escaped wherever it is shown. And the HTTP listener of a
default configuration binds to loopback alone.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.logs import JsonFormatter, TextFormatter
from tests.support.fake_apple import DEEPSEEK, FakeAppleCharts
from tests.support.http_server import Response, ScriptedServer
from tests.support.processes import environment, monitor, wait_for
from tests.support.service import ServiceProcess, serve_charts, write_config
from tests.support.smtp_server import SmtpServer, refusing_port
from tests.test_cli import run_cli

SMTP_PASSWORD = "smtp-Pa55-w0rd-never-shown"
DATABASE_PASSWORD = "db-Pa55-w0rd-never-shown"
WEBHOOK_PASSWORD = "hook-Pa55-w0rd-never-shown"
SECRETS = (SMTP_PASSWORD, DATABASE_PASSWORD, WEBHOOK_PASSWORD)
HOSTILE_NAME = "<script>alert(1)</script> Evil\r\nBcc: x@y \x1b[31mred\x1b[0m line\nINFO forged"
HOSTILE_DEVELOPER = "Dev\x1b]0;pwned\x07\nWARNING forged developer"
# What a terminal or a log reader would act on, were it passed through raw.
TERMINAL_CONTROLS = ("\x1b", "\r", "\x07")


def assert_no_secret(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret ({secret}) shows in {where}:\n{text}"


class HostileCharts:
    """FakeAppleCharts, with DeepSeek named by an attacker who got a name past the store."""

    def __init__(self) -> None:
        self._charts = FakeAppleCharts()

    def respond(self, path: str) -> bytes | None:
        body = self._charts.respond(path)
        if body is None:
            return None
        document = json.loads(body)
        for app in document["feed"].get("results", []):
            if app["id"] == DEEPSEEK["id"]:
                app["name"], app["artistName"] = HOSTILE_NAME, HOSTILE_DEVELOPER
        return json.dumps(document).encode()


@pytest.fixture
def hostile_feeds() -> Iterator[ScriptedServer]:
    with serve_charts(HostileCharts()) as server:
        yield server


@pytest.fixture
def failing_webhook() -> Iterator[ScriptedServer]:
    """A webhook receiver that is down (503), so that its URL ends up in error messages."""
    with ScriptedServer(fallback=lambda request: Response(503, b"down")) as server:
        yield server


def with_password(url: str, password: str) -> str:
    scheme, _, rest = url.partition("://")
    userinfo, _, host = rest.partition("@")
    return f"{scheme}://{userinfo}:{password}@{host}"


def webhook_url(receiver: ScriptedServer) -> str:
    return receiver.url("/hook").replace("http://", f"http://hook-user:{WEBHOOK_PASSWORD}@")


def secret_settings(smtp_port: int, webhook: str, log_format: str) -> str:
    """TOML for write_config's `extra`: mail with a login, a webhook with credentials."""
    return textwrap.dedent(
        f"""
        [smtp]
        host = "127.0.0.1"
        port = {smtp_port}
        from_address = "monitor@example.com"
        username = "monitor"
        password = "{SMTP_PASSWORD}"
        timeout_seconds = 5

        [alerts]
        recipients = ["ops@example.com"]
        webhooks = ["{webhook}"]
        group_wait = "1s"

        [log]
        format = "{log_format}"
        """
    )


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on `port`, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text(encoding="ascii").splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


LOOPBACK_V4 = "0100007F"  # 127.0.0.1 in /proc/net/tcp's little-endian hex
CHART_COMMAND = ("chart", "--country", "us", "--collection", "top_free")
ALL_COMMANDS = [
    ("check-config",),
    ("alerts", "list"),
    ("alerts", "list", "--format", "json"),
    ("alerts", "test-email"),
    CHART_COMMAND,
    ("apps",),
    ("history", "--app", "deepseek", "--country", "us"),
]


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize(
    ("log_format", "commands"),
    # The CLI's output does not depend on the log format: the whole set runs once.
    [("text", ALL_COMMANDS), ("json", [("check-config",), ("alerts", "test-email")])],
    ids=["text", "json"],
)
def test_a_running_service_never_shows_its_secrets_and_escapes_hostile_store_names(
    tmp_path: Path,
    postgres_url: str,
    hostile_feeds: ScriptedServer,
    failing_webhook: ScriptedServer,
    log_format: str,
    commands: list[tuple[str, ...]],
) -> None:
    # PostgreSQL here trusts loopback: it ignores the password, which the service still holds.
    database_url = with_password(postgres_url, DATABASE_PASSWORD)
    with SmtpServer(login=("monitor", "the-right-password")) as smtp:
        config = write_config(
            tmp_path,
            database_url=database_url,
            feeds=hostile_feeds,
            extra=secret_settings(smtp.port, webhook_url(failing_webhook), log_format),
        )
        with ServiceProcess(config) as service:
            service.wait_ready()
            # An alert was stored, the mail server turned the login away and the webhook
            # failed: every path where a secret could leak has run.
            wait_for(lambda: any(not login.accepted for login in smtp.logins), "a failed login")
            wait_for(
                lambda: service.metric(
                    "apprank_notifications_total", channel="webhook", result="retrying"
                ),
                "a failed webhook delivery",
            )
            metrics = service.get("/metrics").text
            status_page = service.get("/").text
            bound = listening_addresses(service.port)
            # In-process (the service is the real process here): a start-up each would cost
            # more than the rest of the test.
            cli = {args: run_cli(config, *args) for args in commands}
        logs = service.output

    assert smtp.messages == []
    assert_no_secret("the service's logs", logs)
    assert_no_secret("/metrics", metrics)
    assert_no_secret("the status page", status_page)
    for args, result in cli.items():
        assert_no_secret(" ".join(args), result.output)
    # The failures were logged (else the search above proved nothing), naming the redacted URL.
    assert "535" in logs
    assert "hook-user:***@127.0.0.1" in logs
    assert "***" in cli[("check-config",)].stdout
    assert "535" in cli[("alerts", "test-email")].output
    assert cli[("alerts", "test-email")].exit_code == 1

    # The default configuration listens on loopback alone.
    assert bound == {LOOPBACK_V4}

    # Hostile names: escaped in HTML, one label in /metrics, never raw in a terminal or a log.
    assert "<script>alert(1)</script>" not in status_page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in status_page
    assert 'name="<script>alert(1)</script> Evil\r\nBcc: x@y' not in metrics
    assert "\\nINFO forged" in metrics  # the label's newline, escaped as the format wants
    for text in (logs, *(result.output for result in cli.values())):
        assert not any(control in text for control in TERMINAL_CONTROLS), repr(text[-2000:])
        assert not any(
            line.lstrip().startswith(("INFO forged", "WARNING forged", "Bcc:"))
            for line in text.splitlines()
        )
    if CHART_COMMAND in cli:
        chart = cli[CHART_COMMAND].stdout
        assert "<script>alert(1)</script> Evil\\r\\nBcc: x@y \\x1b[31mred" in chart
    if log_format == "json":
        lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
        assert lines, logs
        assert all(line.startswith("{") for line in logs.splitlines() if line.strip())


@pytest.mark.parametrize("command", [("history", "--app", "deepseek"), ("migrate",), ("apps",)])
def test_an_unreachable_database_is_reported_without_its_password(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    with refusing_port() as (host, port):
        config = tmp_path / "config.toml"
        config.write_text(
            f'[database]\nurl = "postgresql://monitor:{DATABASE_PASSWORD}@{host}:{port}/monitor"\n',
            encoding="utf-8",
        )
        result = monitor(config, *command)

    assert result.returncode == 2, result
    assert_no_secret(" ".join(command), result.stdout + result.stderr)
    assert f"postgresql+psycopg://monitor:***@{host}:{port}/monitor" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_rejected_smtp_login_is_reported_without_the_password(
    tmp_path: Path, log_format: str
) -> None:
    with SmtpServer(login=("monitor", "the-right-password")) as smtp:
        config = tmp_path / "config.toml"
        config.write_text(
            "[database]\n"
            f'url = "sqlite:///{tmp_path}/monitor.sqlite3"\n'
            + secret_settings(smtp.port, "https://hook-user:x@hooks.example/", log_format),
            encoding="utf-8",
        )
        result = monitor(config, "alerts", "test-email", "--to", "someone@example.com")

    assert result.returncode == 1
    # smtplib tries each mechanism the server offers before it gives up.
    assert smtp.logins
    assert not any(login.accepted for login in smtp.logins)
    output = result.stdout + result.stderr
    assert_no_secret("alerts test-email", output)
    assert f"SMTP server 127.0.0.1:{smtp.port} answered 535" in output


def test_secrets_from_the_environment_and_files_are_redacted_by_check_config(
    tmp_path: Path,
) -> None:
    password_file = tmp_path / "smtp-password"
    password_file.write_text(SMTP_PASSWORD + "\n", encoding="utf-8")
    env = environment() | {
        "MONITOR_DATABASE_URL": f"postgresql://monitor:{DATABASE_PASSWORD}@db.example/monitor",
        "MONITOR_SMTP_USERNAME": "monitor",
        "MONITOR_SMTP_PASSWORD_FILE": str(password_file),
        "MONITOR_ALERTS_WEBHOOKS": f'["https://hook-user:{WEBHOOK_PASSWORD}@hooks.example/x"]',
    }
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "check-config"],
        capture_output=True, text=True, env=env, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert_no_secret("check-config", result.stdout + result.stderr)
    shown = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    assert shown["database"]["url"] == "postgresql+psycopg://monitor:***@db.example/monitor"
    assert shown["alerts"]["webhooks"] == ["https://hook-user:***@hooks.example/x"]
    assert shown["smtp"]["password"] != SMTP_PASSWORD


def test_a_bad_webhook_url_is_refused_without_showing_its_password(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[alerts]\nwebhooks = ["ftp://hook-user:{WEBHOOK_PASSWORD}@hooks.example/x"]\n',
        encoding="utf-8",
    )
    result = monitor(config, "check-config")

    assert result.returncode == 2
    assert_no_secret("check-config", result.stdout + result.stderr)
    assert (
        f"{config}:2: [alerts] webhooks[0] = 'ftp://hook-user:***@hooks.example/x': "
        "expected an http:// or https:// URL with a host"
    ) in result.stderr


def test_the_http_listener_binds_loopback_alone_by_default(
    tmp_path: Path, hostile_feeds: ScriptedServer
) -> None:
    """The address actually bound, not the setting's default: `[http] host` is left unset."""
    database_url = f"sqlite:///{tmp_path}/monitor.sqlite3"
    config = write_config(tmp_path, database_url=database_url, feeds=hostile_feeds)
    assert "host" not in config.read_text(encoding="utf-8").split("[http]")[1].split("[")[0]
    with ServiceProcess(config) as service:
        service.wait_ready()
        bound = listening_addresses(service.port)
    assert bound == {LOOPBACK_V4}


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_a_hostile_name_logged_stays_on_one_line_and_drives_no_terminal(
    formatter: logging.Formatter,
) -> None:
    """In the message and in extra fields alike: a feed's app name is logged in both (parser
    notices, failed fetches), and a log line is read on a terminal or split on newlines."""
    record = logging.LogRecord(
        "monitor.worker", logging.WARNING, __file__, 1, "dropped %s", (HOSTILE_NAME,), None
    )
    record.developer = HOSTILE_DEVELOPER
    record.chart = "\x1b[2Japple/us/top_free"  # no space: once passed through unquoted

    line = formatter.format(record)

    assert "\n" not in line
    assert not any(control in line for control in TERMINAL_CONTROLS), line
    assert "line\\nINFO forged" in line
    assert "Evil\\r\\nBcc: x@y" in line


def test_a_service_whose_database_is_down_shows_its_url_without_the_password(
    tmp_path: Path, hostile_feeds: ScriptedServer
) -> None:
    with refusing_port() as (host, port):
        database_url = f"postgresql://monitor:{DATABASE_PASSWORD}@{host}:{port}/monitor"
        config = write_config(tmp_path, database_url=database_url, feeds=hostile_feeds)
        with ServiceProcess(config) as service:
            wait_for(lambda: "not usable (attempt 2)" in service.output, "two failed connects")
            served = {path: service.get(path) for path in ("/readyz", "/", "/metrics")}
        logs = service.output

    assert served["/readyz"].status_code == 503
    assert_no_secret("the logs", logs)
    for path, response in served.items():
        assert_no_secret(path, response.text)
    assert f"postgresql+psycopg://monitor:***@{host}:{port}/monitor not usable" in logs
