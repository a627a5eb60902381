"""The service's HTTP surface: liveness and readiness (metrics and the API come on top)."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from monitor import __version__


@dataclasses.dataclass(frozen=True)
class Readiness:
    """Each check maps to "ok" or to what is wrong; ready only when all are ok."""

    checks: dict[str, str]

    @property
    def ready(self) -> bool:
        return all(value == "ok" for value in self.checks.values())


def create_app(*, readiness: Callable[[], Awaitable[Readiness]]) -> FastAPI:
    app = FastAPI(title="app-rank-monitor", version=__version__)

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

    return app
