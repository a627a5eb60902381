"""The service as users run it: `run` in a subprocess, polling a local fake Apple server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fake_apple import DEEPSEEK, DEEPSEEK_US_TOP_FREE_RANKS, FakeAppleCharts
from tests.support.http_server import Request, Response, ScriptedServer
from tests.support.processes import environment, free_port, monitor, wait_for

pytestmark = pytest.mark.slow

US_TOP_FREE_V2 = "/api/v2/us/apps/top-free/100/apps.json"


@pytest.fixture
def fake_apple() -> Iterator[ScriptedServer]:
    charts = FakeAppleCharts()

    def serve(request: Request) -> Response:
        body = charts.respond(request.path)
        if body is None:
            return Response(404)
        # Apple serves the legacy feed as text/javascript: the parser must not care.
        return Response(200, body, headers=[("Content-Type", "text/javascript")], gzip=True)

    with ScriptedServer(fallback=serve) as server:
        yield server


def write_config(tmp_path: Path, server: ScriptedServer, port: int, database_url: str) -> Path:
    config = tmp_path / "monitor.toml"
    config.write_text(
        f"""
[database]
url = "{database_url}"

[itunes]
base_url = "{server.url("")}"

[apple_rss]
base_url = "{server.url("")}"

[http]
host = "127.0.0.1"
port = {port}

[poll]
interval = "2s"
tick = "1s"

[fetch]
requests_per_minute = 0

[charts]
storefronts = ["us", "gb"]
collections = ["top_free", "top_grossing"]
""",
        encoding="utf-8",
    )
    return config


def ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_run_records_deepseek_climbing_to_number_one_and_stops_cleanly_on_sigterm(
    backend: str, tmp_path: Path, fake_apple: ScriptedServer, request: pytest.FixtureRequest
) -> None:
    database_url = request.getfixturevalue(f"{backend}_url")
    port = free_port()
    config = write_config(tmp_path, fake_apple, port, database_url)
    service = subprocess.Popen(
        [sys.executable, "-m", "monitor", "--config", str(config), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment(),
    )
    try:
        wait_for(lambda: ready(port), "/readyz to answer 200")
        wait_for(
            lambda: len(fake_apple.requests_to(US_TOP_FREE_V2)) >= len(DEEPSEEK_US_TOP_FREE_RANKS),
            "three polls of the US top free chart",
        )
        # The third poll may still be in flight: SIGTERM lets it finish (a grace of seconds).
        service.send_signal(signal.SIGTERM)
        output, _ = service.communicate(timeout=15)
    finally:
        if service.poll() is None:
            service.kill()
            service.communicate()
    assert service.returncode == 0, output
    assert "poll round:" in output
    assert not fake_apple.unexpected

    history = monitor(
        config, "history", "--app", DEEPSEEK["id"], "--country", "us",
        "--collection", "top_free", "--format", "json",
    )  # fmt: skip
    assert history.returncode == 0, history.stderr
    points = json.loads(history.stdout)
    listed = [p["rank"] for p in points if p["status"] == "listed"]
    assert listed[: len(DEEPSEEK_US_TOP_FREE_RANKS)] == list(DEEPSEEK_US_TOP_FREE_RANKS)
    assert {p["chart"] for p in points} == {"apple/us/top_free/iphone/all"}

    chart = monitor(
        config, "chart", "--country", "us", "--collection", "top_free", "--format", "json"
    )
    assert chart.returncode == 0, chart.stderr
    top = json.loads(chart.stdout)["entries"][:2]
    assert [e["store_id"] for e in top] == [DEEPSEEK["id"], "6448311069"]
