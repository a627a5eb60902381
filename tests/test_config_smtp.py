"""The [smtp] settings: defaults, validation, the login pair, and the password kept secret."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from monitor.config import Settings, load_settings
from monitor.errors import ConfigError
from tests.test_cli import ok, run_cli

PASSWORD = "s3cr3t-smtp-pa55"


def problems_of(environ: dict[str, str], path: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ)
    return info.value.problems


def test_smtp_defaults() -> None:
    smtp = load_settings(None, {}).smtp

    assert (smtp.host, smtp.port, smtp.security) == ("localhost", 25, "none")
    assert (smtp.username, smtp.password) == (None, None)
    assert smtp.from_address == "app-rank-monitor@localhost"
    assert smtp.timeout_seconds == 30
    assert smtp.message_id_domain == "localhost"
    assert Settings().smtp == smtp


def test_the_message_id_domain_defaults_to_the_from_address_domain() -> None:
    derived = load_settings(None, {"MONITOR_SMTP_FROM_ADDRESS": " alerts@Example.COM "}).smtp
    chosen = load_settings(
        None,
        {
            "MONITOR_SMTP_FROM_ADDRESS": "alerts@example.com",
            "MONITOR_SMTP_MESSAGE_ID_DOMAIN": "mail.example.net",
        },
    ).smtp

    assert (derived.from_address, derived.message_id_domain) == (
        "alerts@Example.COM",
        "example.com",
    )
    assert chosen.message_id_domain == "mail.example.net"


@pytest.mark.parametrize(
    "address",
    ["alerts", "Alerts <alerts@example.com>", "alerts@", "a@b@c", "al erts@example.com",
     "ålerts@example.com", "alerts@example.com\r\nBcc: x@y"],
)  # fmt: skip
def test_from_address_must_be_a_plain_ascii_address(address: str) -> None:
    [problem] = problems_of({"MONITOR_SMTP_FROM_ADDRESS": address})

    assert problem.startswith("MONITOR_SMTP_FROM_ADDRESS: [smtp] from_address = ")
    assert "expected a plain ASCII e-mail address" in problem


@pytest.mark.parametrize("port", ["0", "65536", "smtp"])
def test_port_must_be_a_tcp_port(port: str) -> None:
    [problem] = problems_of({"MONITOR_SMTP_PORT": port})

    assert problem.startswith(f"MONITOR_SMTP_PORT: [smtp] port = {port!r}")


def test_security_takes_three_values_in_any_case() -> None:
    assert load_settings(None, {"MONITOR_SMTP_SECURITY": " STARTTLS"}).smtp.security == "starttls"
    [problem] = problems_of({"MONITOR_SMTP_SECURITY": "ssl"})
    assert "[smtp] security = 'ssl'" in problem
    assert "'none', 'starttls' or 'tls'" in problem


def test_a_username_without_a_password_names_both_keys(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[smtp]\nusername = "alerts"\n', encoding="utf-8")

    [problem] = problems_of({}, path)

    assert problem == (
        f"{path}:2: [smtp] username is set without password: SMTP login needs both username "
        "and password (set [smtp] password, or unset username)"
    )


def test_a_password_without_a_username_names_both_keys() -> None:
    [problem] = problems_of({"MONITOR_SMTP_PASSWORD": PASSWORD})

    assert problem.startswith("MONITOR_SMTP_PASSWORD: [smtp] password is set without username")
    assert PASSWORD not in problem


def test_the_password_is_read_from_a_file_and_never_shown(tmp_path: Path) -> None:
    secret = tmp_path / "smtp_password"
    secret.write_text(PASSWORD + "\n", encoding="utf-8")

    settings = load_settings(
        None, {"MONITOR_SMTP_USERNAME": "alerts", "MONITOR_SMTP_PASSWORD_FILE": str(secret)}
    )

    assert settings.smtp.password == PASSWORD
    assert settings.redacted()["smtp"]["password"] == "***"
    assert settings.redacted()["smtp"]["username"] == "alerts"
    for shown in (
        repr(settings),
        str(settings),
        repr(settings.smtp),
        json.dumps(settings.redacted()),
    ):
        assert PASSWORD not in shown


def test_a_password_of_the_wrong_type_is_not_shown_in_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[smtp]\nusername = "alerts"\npassword = 12345678\n', encoding="utf-8")

    [problem] = problems_of({}, path)

    assert problem.startswith(f"{path}:3: [smtp] password = '***'")
    assert "12345678" not in problem


def test_check_config_redacts_the_smtp_password(tmp_path: Path) -> None:
    config = tmp_path / "monitor.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [smtp]
            host = "mail.example.com"
            port = 587
            security = "starttls"
            username = "alerts@example.com"
            password = "{PASSWORD}"
            from_address = "alerts@example.com"
            """
        ),
        encoding="utf-8",
    )

    result = ok(run_cli(config, "check-config"))

    assert PASSWORD not in result.output
    shown = json.loads(result.stdout.split("\n\n", 1)[0])["smtp"]
    assert shown == {
        "host": "mail.example.com",
        "port": 587,
        "security": "starttls",
        "username": "alerts@example.com",
        "password": "***",
        "from_address": "alerts@example.com",
        "timeout_seconds": 30.0,
        "message_id_domain": "example.com",
    }
