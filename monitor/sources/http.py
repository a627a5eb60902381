"""The one HTTP client of the service: every feed request goes through `FeedClient.fetch`.

Rules (DESIGN.md §5): HTTP/1.1 only; connect/read/write/pool timeouts plus a deadline per
request for headers and the whole body (httpx has none, so a server dripping a byte a second
would otherwise hold a fetch forever); the body is capped while streaming, after
decompression, which this module does itself in bounded pieces so a gzip bomb is never
inflated past the cap; conditional requests; a content hash; redirects followed by hand so
that each hop waits for its own host's budget.

Retries: connect errors, timeouts, broken connections, 408, 429 and 5xx, with full-jitter
exponential backoff, at most `max_attempts` attempts; an attempt is the whole redirect chain
from the URL asked for. A `Retry-After` on any 3xx-5xx blocks its host for every URL (see
host_budget). Only monitor.errors leave this module; httpx errors stay as `__cause__`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import random as _random
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from types import TracebackType
from typing import Self

import httpx

from monitor.errors import (
    BodyTooLarge,
    FetchConnectError,
    FetchError,
    FetchProtocolError,
    FetchRequestError,
    FetchTimeout,
    HostBackoff,
    HttpStatusError,
)
from monitor.model import Validators
from monitor.sources.host_budget import HostBudget, parse_retry_after

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
# Output of one inflate step: how far memory may run past the cap before the check sees it.
_INFLATE_STEP = 64 * 1024
_POSITIVE = ("connect_timeout", "read_timeout", "deadline", "max_body_bytes", "backoff_max")
_NATURAL = ("backoff_base", "retry_after_max", "max_host_wait", "requests_per_minute")


@dataclasses.dataclass(frozen=True)
class HttpSettings:
    """How the client behaves; built from the validated config in one wiring place."""

    user_agent: str  # descriptive, with the project URL: Apple can tell who is calling
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    deadline: float = 60.0  # per request: headers and the whole body
    max_body_bytes: int = 8 * 1024 * 1024  # after decompression
    max_attempts: int = 4
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    retry_after_max: float = 900.0
    max_host_wait: float = 120.0
    requests_per_minute: float = 20.0  # per host; 0 disables the budget

    def __post_init__(self) -> None:
        problems = [f"{name} must be positive" for name in _POSITIVE if getattr(self, name) <= 0]
        problems += [f"{name} must not be negative" for name in _NATURAL if getattr(self, name) < 0]
        if not self.user_agent.strip():
            problems.append("user_agent must not be empty")
        if self.max_attempts < 1:
            problems.append("max_attempts must be at least 1")
        if problems:
            raise ValueError("invalid HTTP settings: " + "; ".join(problems))


@dataclasses.dataclass(frozen=True)
class FetchResult:
    """One successful fetch: a 2xx with its whole body, or a 304."""

    url: str  # final URL after redirects
    status: int  # 2xx, or 304
    body: bytes = dataclasses.field(repr=False)  # b"" on 304
    content_hash: str | None  # sha256 hex of body; None on 304
    validators: Validators  # on 304: the ones sent, unless the server sent new ones
    attempts: int
    elapsed: float  # seconds, all attempts and waits, on the injected clock

    @property
    def not_modified(self) -> bool:
        return self.status == 304


class FeedClient:
    """Fetches feed URLs politely; one per process, shared by every concurrent fetch.

    `clock`, `sleep` and `random` drive the host budget, Retry-After and backoff, so tests can
    run them on virtual time; the per-request deadline always runs on the event loop's clock.
    """

    def __init__(
        self,
        settings: HttpSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._random = random
        self._budget = HostBudget(
            requests_per_minute=settings.requests_per_minute,
            max_wait=settings.max_host_wait,
            clock=clock,
            sleep=sleep,
        )
        self._client = httpx.AsyncClient(
            transport=transport,
            http1=True,
            http2=False,
            follow_redirects=False,
            timeout=httpx.Timeout(
                connect=settings.connect_timeout,
                read=settings.read_timeout,
                write=settings.read_timeout,
                pool=settings.connect_timeout,
            ),
            headers={
                "User-Agent": settings.user_agent,
                "Accept": "application/json",
                "Accept-Encoding": "gzip",
            },
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, url: str, validators: Validators | None = None) -> FetchResult:
        """GET `url`, retrying transient failures; raises a monitor.errors.FetchError."""
        started = self._clock()
        headers = _conditional_headers(validators)
        settings = self._settings
        attempt, delay = 1, 0.0
        while True:
            try:
                response, body = await self._attempt(url, headers, delay)
            except HostBackoff as exc:
                exc.attempts = attempt - 1
                raise
            except FetchError as exc:
                exc.attempts = attempt
                if exc.permanent or attempt >= settings.max_attempts:
                    raise
                cap = min(settings.backoff_max, settings.backoff_base * 2 ** (attempt - 1))
                delay = self._random() * cap
                log.info("retrying %s in %.1fs after attempt %d: %s", url, delay, attempt, exc)
                attempt += 1
                continue
            return _result(response, body, validators, attempt, self._clock() - started)

    async def _attempt(
        self, url: str, headers: Mapping[str, str], delay: float
    ) -> tuple[httpx.Response, bytes]:
        try:
            request = self._client.build_request("GET", url, headers=headers)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _transport_error(exc, url) from exc
        for _ in range(MAX_REDIRECTS + 1):
            await self._budget.acquire(request.url.host, url=str(request.url), delay=delay)
            delay = 0.0
            response, body = await self._exchange(request)
            if response.next_request is None:
                return response, body
            request = response.next_request
        raise FetchRequestError(f"{url}: more than {MAX_REDIRECTS} redirects", url=url)

    async def _exchange(self, request: httpx.Request) -> tuple[httpx.Response, bytes]:
        """One request and, for a 2xx, its whole body, within the deadline."""
        url = str(request.url)
        try:
            async with asyncio.timeout(self._settings.deadline):
                response = await self._client.send(request, stream=True)
                try:
                    self._honour_retry_after(request.url.host, response)
                    if response.next_request is not None or response.status_code == 304:
                        body = b""
                    elif response.is_success:
                        body = await self._read_body(response, url)
                    else:
                        raise HttpStatusError(response.status_code, url=url)
                finally:
                    await response.aclose()
        except TimeoutError:
            message = (
                f"{url}: no complete response within the {self._settings.deadline:g}s deadline"
            )
            raise FetchTimeout(message, url=url) from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _transport_error(exc, url) from exc
        return response, body

    def _honour_retry_after(self, host: str, response: httpx.Response) -> None:
        if response.status_code < 300:
            return
        seconds = parse_retry_after(
            response.headers.get("retry-after"), server_date=response.headers.get("date")
        )
        if seconds is not None:
            seconds = min(max(seconds, 0.0), self._settings.retry_after_max)
            log.info("%s sent Retry-After: holding host %s for %.0fs", response.url, host, seconds)
            self._budget.block(host, seconds)

    async def _read_body(self, response: httpx.Response, url: str) -> bytes:
        cap = self._settings.max_body_bytes
        too_large = f"{url}: body passed the {cap}-byte cap"
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            inflater: _Inflater | None = _Inflater()
        elif encoding in ("identity", ""):
            inflater = None
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap:
                raise BodyTooLarge(too_large, url=url)
        else:
            raise FetchRequestError(f"{url}: unsupported Content-Encoding {encoding}", url=url)
        body = bytearray()
        try:
            async for raw in response.aiter_raw():
                for piece in inflater.feed(raw) if inflater else (raw,):
                    body += piece
                    if len(body) > cap:
                        raise BodyTooLarge(too_large, url=url)
        except zlib.error as exc:
            message = f"{url}: corrupt {encoding} body: {exc}"
            raise FetchRequestError(message, url=url) from exc
        return bytes(body)


class _Inflater:
    """gzip or zlib decompression that never produces more than one step of output at once."""

    def __init__(self) -> None:
        self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 32)  # either header, detected

    def feed(self, data: bytes) -> Iterator[bytes]:
        while not self._zlib.eof:
            piece = self._zlib.decompress(data, _INFLATE_STEP)
            if not piece:
                return
            data = self._zlib.unconsumed_tail
            yield piece


def _transport_error(exc: Exception, url: str) -> FetchError:
    """The one place an httpx failure becomes a monitor error, and so gets its retry class."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        kind = type(exc).__name__.removesuffix("Timeout").lower() or "request"
        return FetchTimeout(f"{url}: {kind} timeout ({detail})", url=url)
    if isinstance(exc, httpx.ConnectError | httpx.ProxyError):
        return FetchConnectError(f"{url}: could not connect: {detail}", url=url)
    if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
        # Reset mid-body, a cut body, a keep-alive connection closed under us: as transient as
        # a refused connect, and the usual way a busy edge server fails.
        return FetchProtocolError(f"{url}: connection broken: {detail}", url=url)
    # An invalid URL, an unsupported scheme, a malformed redirect: retrying cannot help.
    return FetchRequestError(f"{url}: request failed: {detail}", url=url)


def _conditional_headers(validators: Validators | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if validators and validators.etag:
        headers["If-None-Match"] = validators.etag
    if validators and validators.last_modified:
        headers["If-Modified-Since"] = validators.last_modified
    return headers


def _result(
    response: httpx.Response,
    body: bytes,
    sent: Validators | None,
    attempts: int,
    elapsed: float,
) -> FetchResult:
    etag = response.headers.get("etag")
    last_modified = response.headers.get("last-modified")
    if response.status_code == 304 and sent is not None:
        etag, last_modified = etag or sent.etag, last_modified or sent.last_modified
    return FetchResult(
        url=str(response.url),
        status=response.status_code,
        body=body,
        content_hash=None if response.status_code == 304 else hashlib.sha256(body).hexdigest(),
        validators=Validators(etag=etag, last_modified=last_modified),
        attempts=attempts,
        elapsed=elapsed,
    )
