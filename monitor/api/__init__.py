"""The read API: versioned JSON endpoints under /api/v1 on the service's HTTP listener.

`install` adds the endpoints (monitor.api.routes), the token gate and JSON errors
(monitor.api.access) and the API's own OpenAPI document at /api/v1/openapi.json, generated
by FastAPI from the routes and their pydantic models (monitor.api.models).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.routing import BaseRoute

from monitor import __version__
from monitor.api.access import API_PREFIX, ApiGate, install_error_handlers, is_api_path
from monitor.api.routes import ApiSources, api_router

__all__ = ["API_PREFIX", "ApiSources", "ReadApi"]


@dataclasses.dataclass(frozen=True)
class ReadApi:
    """`token`: required of every request when set; `open_without_token`: whether the API
    answers without one (a loopback listener)."""

    sources: ApiSources
    token: str | None
    open_without_token: bool

    @property
    def enabled(self) -> bool:
        return self.token is not None or self.open_without_token

    def install(self, app: FastAPI) -> None:
        router = api_router(self.sources)
        app.include_router(router)
        install_error_handlers(app)
        app.add_middleware(ApiGate, token=self.token, open_without_token=self.open_without_token)
        document: dict[str, Any] = {}

        @app.get(f"{API_PREFIX}/openapi.json", include_in_schema=False)
        async def openapi() -> dict[str, Any]:
            if not document:
                document.update(self._openapi(router.routes))
            return document

        def service_openapi() -> dict[str, Any]:
            """The service's own document at /openapi.json, without the API's paths: those
            are in the API's document, with its error responses and security."""
            if app.openapi_schema is None:
                full = get_openapi(title=app.title, version=app.version, routes=app.routes)
                full["paths"] = {
                    path: item for path, item in full["paths"].items() if not is_api_path(path)
                }
                app.openapi_schema = full
            return app.openapi_schema

        app.openapi = service_openapi  # type: ignore[method-assign]

    def _openapi(self, routes: Sequence[BaseRoute]) -> dict[str, Any]:
        document = get_openapi(
            title="app-rank-monitor read API",
            version=__version__,
            description=(
                "Read-only JSON: tracked apps, rank history, charts as stored, movers and "
                "alert events. Lists are paged: follow `next` while `has_more`."
            ),
            routes=routes,
        )
        # Bad input is answered 400 with {"error", "parameter"} (monitor.api.access), never
        # with FastAPI's 422: the document says what the API does.
        for path in document["paths"].values():
            for operation in path.values():
                operation["responses"].pop("422", None)
        schemas = document.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        if self.token is not None:
            document.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            document["security"] = [{"bearer": []}]
        return document
