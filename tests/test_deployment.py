"""The docker compose deployment, checked with the tools that read it (no container engine
runs here): `docker-compose config` (Debian's docker-compose) parses the compose file, yamllint
passes, and the image's healthcheck command is run against the service started natively.

Without those tools the tests skip with the reason, except under CI=true where that fails.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.compose import bind_mounts, named_volumes
from tests.support.http_server import Response, ScriptedServer
from tests.support.processes import environment, free_port, wait_for
from tests.support.tools import assert_lints_clean, require

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
PASSWORD_VARIABLE = "POSTGRES_PASSWORD"
SECRETS = {PASSWORD_VARIABLE: "s3cret", "GRAFANA_ADMIN_PASSWORD": "gr4fana"}
# Service -> the container ports published: web UIs only.
PUBLISHED = {"monitor": [10127], "prometheus": [9090], "grafana": [3000], "mailpit": [8025]}


def compose_config(tmp_path: Path, variables: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` with exactly `variables` as the .env file."""
    env_file = tmp_path / "compose.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in variables.items()), encoding="utf-8")
    env = {k: v for k, v in environment().items() if k not in SECRETS}
    return subprocess.run(
        [require("docker-compose"), "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.fixture
def resolved(tmp_path: Path) -> dict[str, Any]:
    """The compose file as docker-compose resolves it, with the secrets set."""
    result = compose_config(tmp_path, SECRETS)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def test_the_compose_file_runs_the_monitor_on_a_healthy_postgres(resolved: dict[str, Any]) -> None:
    postgres = resolved["services"]["postgres"]
    monitor = resolved["services"]["monitor"]

    assert postgres["healthcheck"]["test"][0] == "CMD-SHELL"
    assert monitor["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert monitor["init"] is True
    assert {postgres["restart"], monitor["restart"]} == {"unless-stopped"}
    assert monitor["environment"]["MONITOR_DATABASE_URL"] == (
        "postgresql+psycopg://monitor:s3cret@postgres:5432/monitor"
    )
    assert monitor["build"]["dockerfile"] == "deploy/Dockerfile"
    # Alert emails go to mailpit by default, on its SMTP port inside the network.
    assert (
        monitor["environment"]["MONITOR_SMTP_HOST"],
        monitor["environment"]["MONITOR_SMTP_PORT"],
    ) == ("mailpit", "1025")
    assert monitor["environment"]["MONITOR_ALERTS_RECIPIENTS"] == "ops@example.com"
    assert "postgres-data" in resolved["volumes"]


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_the_compose_file_refuses_to_run_without_a_required_secret(
    tmp_path: Path, missing: str
) -> None:
    result = compose_config(tmp_path, {k: v for k, v in SECRETS.items() if k != missing})

    assert result.returncode != 0
    assert missing in result.stderr
    assert ".env.example" in result.stderr  # says where to look


def test_images_are_pinned_and_only_the_web_uis_are_published(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    pulled = {name: s["image"] for name, s in services.items() if "build" not in s}
    published = {
        name: [port["target"] for port in service["ports"]]
        for name, service in services.items()
        if service.get("ports")
    }

    # A tag with a version number, never `latest` or none: `up` must mean the same thing later.
    assert set(pulled) == {"postgres", "prometheus", "grafana", "mailpit"}
    assert all(re.search(r":[^:]*\d", image) for image in pulled.values()), pulled
    assert published == PUBLISHED


def test_grafana_requires_its_admin_password_and_anonymous_viewing_is_opt_in(
    resolved: dict[str, Any],
) -> None:
    grafana = resolved["services"]["grafana"]["environment"]

    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == SECRETS["GRAFANA_ADMIN_PASSWORD"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert grafana["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_prometheus_gets_the_scrape_config_and_rules_where_the_config_looks(
    resolved: dict[str, Any],
) -> None:
    prometheus = resolved["services"]["prometheus"]
    mounts = bind_mounts(prometheus, ROOT)
    scrape_config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text("utf-8"))

    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert (
        Path(mounts["/etc/prometheus/prometheus.yml"]) == ROOT / "deploy/prometheus/prometheus.yml"
    )
    assert Path(mounts["/etc/prometheus/rules"]) == ROOT / "deploy/prometheus/rules"
    assert scrape_config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    (job,) = scrape_config["scrape_configs"]
    assert job["static_configs"] == [{"targets": ["monitor:10127"]}]
    # Every named volume is declared, so data survives `docker compose down`.
    named = set().union(*(named_volumes(service) for service in resolved["services"].values()))
    assert named == set(resolved["volumes"]) == {
        "postgres-data", "prometheus-data", "grafana-data", "mailpit-data"
    }  # fmt: skip


def test_the_compose_file_has_no_version_key_and_the_deployment_yaml_lints_clean() -> None:
    assert "version" not in yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert_lints_clean(ROOT, COMPOSE_FILE, ROOT / ".yamllint.yaml")


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_the_image_is_built_in_two_stages_and_runs_unprivileged_and_unbuffered() -> None:
    instructions = dockerfile_instructions()
    stages = [i for i, (name, _) in enumerate(instructions) if name == "FROM"]
    final_stage = instructions[stages[-1] :]

    assert len(stages) == 2
    # A slim base, pinned to a patch release.
    assert all(
        re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+( AS \w+)?", instructions[i][1]) for i in stages
    )
    assert any(name == "ENV" and "PYTHONUNBUFFERED=1" in args for name, args in final_stage)


def test_the_image_runs_as_a_numeric_non_root_user_that_compose_does_not_override(
    resolved: dict[str, Any],
) -> None:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    final_stage = instructions[last_from:]
    users = [args for name, args in final_stage if name == "USER"]

    # The last USER is the one the container runs as; numeric, so that runAsNonRoot and the
    # like can check it without reading /etc/passwd.
    assert users, "the final stage sets no USER: the container would run as root"
    uid, _, gid = users[-1].partition(":")
    assert re.fullmatch(r"[1-9]\d*", uid), users[-1]
    assert re.fullmatch(r"[1-9]\d*", gid), users[-1]
    # The user the image creates has that uid, so its home (/data, the SQLite volume) is its own.
    (useradd,) = [args for name, args in final_stage if name == "RUN" and "useradd" in args]
    assert f"--uid {uid}" in useradd
    assert "user" not in resolved["services"]["monitor"]
    assert "privileged" not in resolved["services"]["monitor"]


@pytest.fixture
def quiet_apple() -> Iterator[ScriptedServer]:
    with ScriptedServer(fallback=lambda request: Response(404)) as server:
        yield server


def healthcheck_command() -> list[str]:
    (arguments,) = [args for name, args in dockerfile_instructions() if name == "HEALTHCHECK"]
    exec_form = arguments[arguments.index("CMD") + len("CMD") :].strip()
    command: list[str] = json.loads(exec_form)
    return command


def run_healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    command = healthcheck_command()
    assert command[0] == "python"  # the image's Python: this test runs it with the venv's
    return subprocess.run(
        [sys.executable, *command[1:]],
        capture_output=True,
        text=True,
        timeout=30,
        env={**environment(), "MONITOR_HTTP_PORT": str(port)},
        check=False,
    )


@pytest.mark.slow
def test_the_image_healthcheck_passes_while_the_service_runs_and_fails_once_it_stopped(
    tmp_path: Path, quiet_apple: ScriptedServer
) -> None:
    port = free_port()
    env = {
        **environment(),
        "MONITOR_DATABASE_URL": f"sqlite:///{tmp_path}/monitor.sqlite3",
        "MONITOR_HTTP_PORT": str(port),
        "MONITOR_ITUNES_BASE_URL": quiet_apple.url(""),
        "MONITOR_APPLE_RSS_BASE_URL": quiet_apple.url(""),
    }
    service = subprocess.Popen(
        [sys.executable, "-m", "monitor", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: run_healthcheck(port).returncode == 0, "the healthcheck to pass", 60)
    finally:
        service.send_signal(signal.SIGTERM)
        _, stderr = service.communicate(timeout=30)
    assert service.returncode == 0, stderr

    stopped = run_healthcheck(port)
    assert stopped.returncode != 0
    assert "Connection refused" in stopped.stderr
