"""The service's HTTP surface: status page, liveness, readiness, Prometheus metrics and the
read API (monitor.api)."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, Response

from monitor import __version__
from monitor.api import ReadApi
from monitor.metrics import EXPOSITION_CONTENT_TYPE


@dataclasses.dataclass(frozen=True)
class Readiness:
    """Each check maps to "ok" or to what is wrong; ready only when all are ok."""

    checks: dict[str, str]

    @property
    def ready(self) -> bool:
        return all(value == "ok" for value in self.checks.values())


def create_app(
    *,
    readiness: Callable[[], Awaitable[Readiness]],
    exposition: Callable[[], Awaitable[bytes]],
    status_page: Callable[[], Awaitable[str]],
    api: ReadApi | None = None,
) -> FastAPI:
    # No Swagger UI or ReDoc: they load their scripts from a CDN, and the service works
    # offline. The OpenAPI documents are served as JSON.
    app = FastAPI(title="app-rank-monitor", version=__version__, docs_url=None, redoc_url=None)

    @app.get("/", response_class=HTMLResponse)
    async def status() -> HTMLResponse:
        """The status page: tracked apps' current ranks, source and schedule health."""
        return HTMLResponse(await status_page())

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process and its event loop answer."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: the database answers and the scheduler runs."""
        report = await readiness()
        return JSONResponse(
            {"ready": report.ready, "checks": report.checks},
            status_code=200 if report.ready else 503,
        )

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics: this process's counters and the stored state, read once."""
        return Response(await exposition(), media_type=EXPOSITION_CONTENT_TYPE)

    if api is not None:
        api.install(app)
    return app
