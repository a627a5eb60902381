"""What a shell sees: exit statuses of `python -m monitor`, one writer per SQLite file beside
read commands, and databases that are missing or unreachable."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fake_apple import DEEPSEEK
from tests.support.processes import environment, free_port, monitor, wait_for
from tests.test_cli import (
    BROKEN_CONFIG,
    US_TOP_FREE,
    Deployment,
    deployment,
    ok,
    run_cli,
    table,
)

READ_COMMANDS = [
    ["history", "--app", "deepseek"],
    ["chart", "--country", "us", "--collection", "top_free"],
    ["apps"],
    ["migrate", "--check"],
]


@pytest.fixture
def sqlite_deployment(tmp_path: Path, sqlite_url: str) -> Iterator[Deployment]:
    with deployment(tmp_path, sqlite_url) as deployed:
        yield deployed


@pytest.mark.slow
def test_exit_status_is_0_for_success_1_for_a_failed_chart_and_2_when_nothing_could_run(
    tmp_path: Path, sqlite_url: str
) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text(BROKEN_CONFIG, encoding="utf-8")
    with deployment(tmp_path, sqlite_url) as deployed:
        succeeded = monitor(deployed.config, "poll-once", "--chart", US_TOP_FREE)
        deployed.apple.fail("gb/top_free")
        failed = monitor(
            deployed.config, "poll-once", "--chart", "gb/top_free", "--chart", "us/top_paid"
        )
        could_not_run = monitor(broken, "poll-once")

    assert succeeded.returncode == 0, succeeded.stderr
    assert [row["outcome"] for row in table(succeeded.stdout)] == ["changed"]
    assert failed.returncode == 1, failed.stderr
    assert [(row["chart"], row["outcome"]) for row in table(failed.stdout)] == [
        ("apple/gb/top_free/iphone/all", "failed"),
        ("apple/us/top_paid/iphone/all", "changed"),
    ]
    assert "poll failed: apple/gb/top_free/iphone/all" in failed.stderr  # the log, on stderr
    assert could_not_run.returncode == 2
    assert could_not_run.stderr.startswith("Error: invalid configuration:\n")
    assert "Traceback" not in could_not_run.stderr


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: c[0] + "".join(c[1:2]))
def test_read_commands_on_a_missing_sqlite_file_exit_2_without_creating_it(
    sqlite_deployment: Deployment, command: list[str]
) -> None:
    database = sqlite_deployment.sqlite_file

    result = sqlite_deployment.run(*command)

    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"Error: no database at {database}: run `app-rank-monitor migrate` first\n"
    )
    assert list(database.parent.iterdir()) == [sqlite_deployment.config]


@pytest.mark.parametrize("command", [["poll-once"], ["history", "--app", "deepseek"]])
def test_an_unreachable_postgresql_server_exits_2_with_one_line_and_no_password(
    tmp_path: Path, command: list[str]
) -> None:
    url = f"postgresql://monitor:hunter2@127.0.0.1:{free_port()}/ranks"
    config = tmp_path / "monitor.toml"
    config.write_text(f'[database]\nurl = "{url}"\n', encoding="utf-8")

    result = run_cli(config, *command)

    assert result.exit_code == 2
    last_line = result.stderr.splitlines()[-1]
    assert last_line.startswith(
        f"Error: cannot use the database postgresql+psycopg://monitor:***@{url.split('@')[1]}: "
    )
    assert "connection" in last_line.lower()
    assert "hunter2" not in result.output
    assert "Traceback" not in result.output


@pytest.mark.postgres
def test_read_commands_on_a_postgresql_database_without_schema_exit_2_asking_for_migrate(
    tmp_path: Path, postgres_url: str
) -> None:
    # Trust authentication ignores the password, so it can be given to show it stays hidden.
    url = postgres_url.replace("://postgres@", "://postgres:hunter2@", 1)
    config = tmp_path / "monitor.toml"
    config.write_text(f'[database]\nurl = "{url}"\n', encoding="utf-8")

    result = run_cli(config, "apps")

    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: database {url.replace(':hunter2@', ':***@')} has no schema: "
        "run `app-rank-monitor migrate`\n"
    )


@pytest.mark.slow
def test_while_run_holds_the_sqlite_file_writers_are_refused_and_readers_and_silences_work(
    tmp_path: Path, sqlite_url: str
) -> None:
    port = free_port()
    with deployment(tmp_path, sqlite_url, extra=f"[http]\nport = {port}\n") as deployed:
        service = subprocess.Popen(
            [sys.executable, "-m", "monitor", "--config", str(deployed.config), "run"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=environment(),
        )
        try:
            wait_for(lambda: ready(port), "the service to be ready")
            wait_for(lambda: deepseek_listed(deployed), "the service's first poll round")

            second = monitor(deployed.config, "poll-once")
            rebuild = deployed.run("rebuild")
            # Readers do not take the writer's lock.
            history = deployed.json("history", "--app", "deepseek")
            chart = deployed.json("chart", "--country", "us", "--collection", "top_free")
            apps = table(ok(deployed.run("apps")).stdout)
            # Silences are managed while the service runs: SQLite's lock lets them take turns.
            ok(deployed.run("silence", "add", "--for", "1h", "--app", "DeepSeek"))
            listed = deployed.json("silence", "list")
            expired = deployed.run("silence", "expire", str(listed[0]["id"]))
            after_expiry = deployed.json("silence", "list")

            service.send_signal(signal.SIGTERM)
            output, _ = service.communicate(timeout=15)
        finally:
            if service.poll() is None:
                service.kill()
                service.communicate()
        # The lock went with the service.
        after = deployed.run("poll-once", "--chart", US_TOP_FREE)

    message = (
        f"{deployed.sqlite_file} is already used by another writer (pid {service.pid}). "
        "Stop that process, or use read-only commands (history, chart, apps) or `silence` "
        "beside it."
    )
    assert second.returncode == 2, second.stderr
    assert second.stdout == ""
    assert second.stderr.strip() == f"Error: {message}"
    assert rebuild.exit_code == 2
    assert rebuild.stderr.strip() == f"Error: {message}"

    assert [p["rank"] for p in history] == [31]
    assert chart["entries"][30]["store_id"] == DEEPSEEK["id"]
    assert {row["store_id"]: row["best_rank"] for row in apps}[DEEPSEEK["id"]] == "31"
    assert [silence["apps"] for silence in listed] == [["DeepSeek"]]
    assert expired.exit_code == 0, expired.output
    assert after_expiry == []

    assert service.returncode == 0, output
    assert after.exit_code == 0, after.output
    assert [row["outcome"] for row in table(after.stdout)] == ["changed"]


def ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def deepseek_listed(deployed: Deployment) -> bool:
    result = deployed.run("apps", "--format", "json")
    if result.exit_code != 0:
        return False
    best = {app["store_id"]: app["best_rank"] for app in json.loads(result.stdout)}
    return best.get(DEEPSEEK["id"]) is not None
