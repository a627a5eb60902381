"""The HTTP surface on its own: liveness, and readiness built from the checks it is given.

Requests go through httpx's ASGI transport to the real FastAPI app; the service's own
readiness checks (database, scheduler) are exercised with run_service in tests/test_worker.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from monitor import __version__
from monitor.web import Readiness, create_app

pytestmark = pytest.mark.anyio


class Checks:
    """A readiness source whose answer the test changes, and that counts how often it is asked."""

    def __init__(self, **checks: str) -> None:
        self.checks = checks
        self.asked = 0

    async def __call__(self) -> Readiness:
        self.asked += 1
        return Readiness(dict(self.checks))


@pytest.fixture
def checks() -> Checks:
    return Checks(database="ok", scheduler="ok")


EXPOSITION = (
    b"# HELP apprank_example An example.\n# TYPE apprank_example gauge\napprank_example 1.0\n"
)
STATUS_PAGE = "<!doctype html><title>status</title>"


async def exposition() -> bytes:
    return EXPOSITION


async def status_page() -> str:
    return STATUS_PAGE


@pytest.fixture
async def client(checks: Checks) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(
        app=create_app(readiness=checks, exposition=exposition, status_page=status_page)
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://monitor.test") as client:
        yield client


async def test_healthz_answers_200_without_asking_the_readiness_checks(
    client: httpx.AsyncClient, checks: Checks
) -> None:
    checks.checks["database"] = "StoreError: database error: connection refused"

    response = await client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert checks.asked == 0  # liveness must not fail because a dependency is down


async def test_readyz_is_200_when_every_check_is_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"ready": True, "checks": {"database": "ok", "scheduler": "ok"}}


@pytest.mark.parametrize(
    ("failing", "message"),
    [
        ("database", "StoreError: database error: connection refused"),
        ("scheduler", "stopped"),
    ],
)
async def test_readyz_is_503_and_names_the_failing_check(
    client: httpx.AsyncClient, checks: Checks, failing: str, message: str
) -> None:
    checks.checks[failing] = message

    response = await client.get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False
    assert body["checks"][failing] == message
    assert all(value == "ok" for name, value in body["checks"].items() if name != failing)


async def test_readyz_asks_the_checks_on_every_request(
    client: httpx.AsyncClient, checks: Checks
) -> None:
    first = await client.get("/readyz")
    checks.checks["database"] = "TimeoutError: no answer within 2s"
    second = await client.get("/readyz")
    checks.checks["database"] = "ok"
    third = await client.get("/readyz")

    assert [r.status_code for r in (first, second, third)] == [200, 503, 200]
    assert checks.asked == 3


async def test_the_openapi_document_names_the_service_and_its_version(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/openapi.json")

    assert response.status_code == 200
    info = response.json()["info"]
    assert (info["title"], info["version"]) == ("app-rank-monitor", __version__)
    assert {"/healthz", "/readyz"} <= response.json()["paths"].keys()


async def test_metrics_are_served_in_the_prometheus_text_format(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert response.content == EXPOSITION


async def test_the_status_page_is_served_as_html_at_the_root(client: httpx.AsyncClient) -> None:
    response = await client.get("/")

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.text == STATUS_PAGE
