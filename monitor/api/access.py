"""Who may use the read API, and the JSON errors every /api/v1 path answers with.

With `[http] api_token` set, each request needs `Authorization: Bearer <token>` (compared in
constant time). Without one the API is open on a loopback listener only: bound to any other
address, every /api/v1 path answers 403 saying which setting turns it on. The gate sits in
front of routing, so unknown paths and other methods are refused the same way.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from monitor.errors import StoreError

API_PREFIX = "/api/v1"
TURN_ON_HINT = "[http] api_token (MONITOR_HTTP_API_TOKEN or MONITOR_HTTP_API_TOKEN_FILE)"
OFF_MESSAGE = (
    "the read API is off: the HTTP listener is not on loopback and no API token is set; "
    f"set {TURN_ON_HINT} to turn it on"
)


class ApiError(Exception):
    """A request the API answers with `status` and a JSON body naming `parameter`."""

    def __init__(self, status: int, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.parameter = parameter


def error_response(
    status: int,
    message: str,
    parameter: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        {"error": message, "parameter": parameter}, status_code=status, headers=headers
    )


def is_api_path(path: str) -> bool:
    return path == API_PREFIX or path.startswith(f"{API_PREFIX}/")


class ApiGate:
    """ASGI middleware: refuses /api/v1 requests the token rules do not let through."""

    def __init__(self, app: ASGIApp, *, token: str | None, open_without_token: bool) -> None:
        self._app = app
        self._token = token.encode() if token is not None else None
        self._open = open_without_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_api_path(scope["path"]):
            refusal = self._refusal(Headers(scope=scope))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self._app(scope, receive, send)

    def _refusal(self, headers: Headers) -> JSONResponse | None:
        if self._token is None:
            return None if self._open else error_response(403, OFF_MESSAGE)
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token):
            return None
        return error_response(
            401,
            "this API needs `Authorization: Bearer <token>` with the token of " + TURN_ON_HINT,
            headers={"WWW-Authenticate": 'Bearer realm="app-rank-monitor"'},
        )


def install_error_handlers(app: FastAPI) -> None:
    """Every error of an /api/v1 path as {"error", "parameter"}; bad input is a 400 naming
    the parameter (FastAPI's own would be a 422 listing pydantic's details)."""

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        location = [str(part) for part in first.get("loc", ())]
        parameter = location[-1] if location else None
        return error_response(400, f"{parameter}: {first.get('msg', 'invalid')}", parameter)

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, str(exc), exc.parameter)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if not is_api_path(request.url.path):
            return await http_exception_handler(request, exc)
        message = "no such API path" if exc.status_code == 404 else str(exc.detail)
        if exc.status_code == 405:
            message = "the read API is read-only: only GET is allowed"
        return error_response(exc.status_code, message, headers=exc.headers)

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        return error_response(503, f"the database could not be read: {exc}")

    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(ApiError, refused)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(StoreError, unavailable)
