"""The read API's endpoints under /api/v1: tracked apps, history, charts, movers, alerts.

Each answers what the command line answers for the same question (monitor.documents shapes
both), reads the database in a worker thread, and pages its lists: `limit` (default 100, at
most 1000) and a `next` URL that carries an offset, or for history a time cursor.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Query, Request

from monitor.api.access import API_PREFIX, ApiError
from monitor.api.models import (
    Alert,
    AlertsPage,
    AppsPage,
    Chart,
    ChartRank,
    HistoryPage,
    HistoryPoint,
    MoverItem,
    MoversPage,
    TrackedApp,
)
from monitor.api.models import ApiError as ErrorBody
from monitor.api.paging import decode_cursor, encode_cursor, history_page, next_url, one_page
from monitor.config import parse_duration
from monitor.documents import alert_document, chart_document, point_document
from monitor.lookups import LookupFailed, one_app, parse_time, watchlist_apps
from monitor.metrics_state import unique_app_labels
from monitor.model import ALL_GENRES, ChartKey, Collection, Device, RankPoint, Store
from monitor.store.repository import AppInfo, Repository

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Alerts are paged by reading the rows before the page too: deep pages are for scripts that
# walk a few thousand events, not for an archive.
MAX_OFFSET = 100_000
T = TypeVar("T")

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "A parameter is invalid; `parameter` names it."},
    401: {"model": ErrorBody, "description": "A token is set and the request lacks it."},
    403: {"model": ErrorBody, "description": "The API is off (not on loopback, no token)."},
    503: {"model": ErrorBody, "description": "The database could not be read."},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such app or chart stored."}
}

Limit = Annotated[
    int, Query(ge=1, le=MAX_LIMIT, description=f"Items per page (at most {MAX_LIMIT}).")
]
Offset = Annotated[
    int, Query(ge=0, le=MAX_OFFSET, description="Items to skip: from the `next` URL.")
]
Country = Annotated[
    str | None,
    Query(pattern=r"^[A-Za-z]{2}$", description="Two-letter storefront code, e.g. us."),
]
TimeText = Annotated[
    str | None, Query(description="ISO 8601 date/time (UTC unless an offset) or a duration ago.")
]


@dataclasses.dataclass(frozen=True)
class ApiSources:
    """What the endpoints read: the store, the watchlist's names, the time now."""

    repository: Repository
    app_names: Mapping[tuple[Store, str], str]
    clock: Callable[[], dt.datetime]


def _time(text: str | None, parameter: str, now: dt.datetime) -> dt.datetime | None:
    if text is None:
        return None
    try:
        return parse_time(text, now=now)
    except LookupFailed as exc:
        raise ApiError(400, str(exc), parameter) from None


async def _read(work: Callable[[], T]) -> T:
    return await asyncio.to_thread(work)


def api_router(sources: ApiSources) -> APIRouter:
    router = APIRouter(prefix=API_PREFIX, responses=_ERRORS)
    _app_routes(router, sources)
    _chart_routes(router, sources)
    _alert_routes(router, sources)
    return router


def _app_routes(router: APIRouter, sources: ApiSources) -> None:
    repository = sources.repository

    @router.get("/apps", response_model=AppsPage)
    async def tracked_apps(
        request: Request, limit: Limit = DEFAULT_LIMIT, offset: Offset = 0
    ) -> Any:
        """Tracked apps with their current rank on every enabled chart (`apps`)."""
        statuses = await _read(repository.tracked_apps)
        labels = unique_app_labels(statuses, sources.app_names)
        shown, more = one_page(statuses, offset, limit)
        apps = [
            TrackedApp(
                store=status.app.store,
                store_id=status.app.store_id,
                name=labels[status.app.id],
                store_name=status.app.name,
                best_rank=status.best_rank,
                best_chart=status.best.chart.slug if status.best else None,
                charts_listed=len(status.listed),
                ranks=[
                    ChartRank(
                        chart=current.chart.slug,
                        rank=current.rank,
                        depth=current.depth,
                        fetched_at=current.fetched_at,
                        confirmed_at=current.confirmed_at,
                    )
                    for current in status.ranks
                ],
            )
            for status in shown
        ]
        return AppsPage(
            apps=apps, has_more=more, next=next_url(request, more, offset=offset + limit)
        )

    def find_app(ref: str) -> AppInfo:
        """A watchlist name or store id first (as alerts name apps), then what `history
        --app` accepts: a store id, bundle id or (part of) the store's name."""
        if "\x00" in ref:  # no stored name holds one, and PostgreSQL refuses it in a query
            raise ApiError(404, f"no stored app matches {ref!r}", "app")
        try:
            watched = watchlist_apps(ref, sources.app_names)
        except LookupFailed:
            watched = []
        try:
            return one_app(repository, watched[0][1] if len(watched) == 1 else ref)
        except LookupFailed as exc:
            raise ApiError(404 if exc.found_nothing else 400, str(exc), "app") from None

    @router.get("/apps/{app}/history", response_model=HistoryPage, responses=_NOT_FOUND)
    async def history(
        request: Request,
        *,
        app: Annotated[str, Path(description="Watchlist name, store id, or part of the name.")],
        country: Country = None,
        collection: Collection | None = None,
        device: Device | None = None,
        since: TimeText = None,
        until: TimeText = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Annotated[str | None, Query(description="From the `next` URL.")] = None,
    ) -> Any:
        """One app's rank series, oldest first (`history`): listed, below the visible depth,
        or no data because the fetch failed."""
        now = sources.clock()
        start, end = _time(since, "since", now), _time(until, "until", now)
        if start is not None and end is not None and start > end:
            raise ApiError(
                400, f"since {start.isoformat()} is after until {end.isoformat()}", "since"
            )
        after = decode_cursor(cursor) if cursor is not None else None
        chosen_country = country.lower() if country else None
        chosen_collection = collection.value if collection else None
        chosen_device = device.value if device else None
        info = await _read(lambda: find_app(app))
        # No point is older than the first poll of the charts: pages are read from there.
        first = await _read(
            lambda: repository.first_poll_at(
                country=chosen_country, collection=chosen_collection, device=chosen_device
            )
        )
        bounds = [t for t in (first, start, after[0] if after else None) if t is not None]
        lower = max(bounds) if first is not None else None

        def read(since: dt.datetime, until: dt.datetime | None) -> list[RankPoint]:
            return repository.history(
                info.id,
                country=chosen_country,
                collection=chosen_collection,
                device=chosen_device,
                since=since,
                until=until,
            )

        shown, more = (
            await _read(
                lambda: history_page(read, start=lower, end=end, now=now, after=after, limit=limit)
            )
            if lower is not None and (end is None or lower <= end)
            else ([], False)
        )
        return HistoryPage(
            store_id=info.store_id,
            name=sources.app_names.get((info.store, info.store_id), info.name),
            points=[HistoryPoint.model_validate(point_document(point)) for point in shown],
            has_more=more,
            next=next_url(request, more, cursor=encode_cursor(shown[-1])) if shown else None,
        )


def _chart_routes(router: APIRouter, sources: ApiSources) -> None:
    repository = sources.repository

    @router.get("/charts/{country}/{collection}", response_model=Chart, responses=_NOT_FOUND)
    async def chart(
        country: Annotated[str, Path(pattern=r"^[A-Za-z]{2}$", description="Storefront code.")],
        collection: Collection,
        device: Device = Device.IPHONE,
        genre: Annotated[
            str, Query(pattern=r"^(all|\d{1,6})$", description="Genre id or all.")
        ] = ALL_GENRES,
        at: TimeText = None,
    ) -> Any:
        """The chart as stored at a time (default: its latest snapshot), like `chart`."""
        moment = _time(at, "at", sources.clock())
        key = ChartKey(Store.APPLE, country.lower(), collection, device, genre)
        view = await _read(lambda: repository.chart_at(key, moment))
        if view is None:
            when = f" at or before {moment.isoformat()}" if moment else ""
            raise ApiError(404, f"no snapshot of {key} stored{when}")
        return Chart.model_validate(chart_document(view))

    @router.get("/movers", response_model=MoversPage)
    async def movers(
        request: Request,
        *,
        window: Annotated[
            str, Query(description="How far back to compare: 24h, 7d, 1h30m.")
        ] = "24h",
        country: Country = None,
        collection: Collection | None = None,
        device: Device | None = None,
        genre: Annotated[str | None, Query(pattern=r"^(all|\d{1,6})$")] = None,
        limit: Limit = DEFAULT_LIMIT,
        offset: Offset = 0,
    ) -> Any:
        """Tracked apps' biggest rises and falls: each chart's latest snapshot against its
        latest one as of `window` ago; entering or leaving counts from one below the depth."""
        now = sources.clock()
        try:
            span = parse_duration(window)
            since = now - span
        except (ValueError, OverflowError) as exc:
            raise ApiError(400, f"{window!r}: {exc}", "window") from None
        if span <= dt.timedelta(0):
            raise ApiError(400, "the window must be longer than 0s", "window")
        found = await _read(
            lambda: repository.movers(
                now=now,
                window=span,
                country=country.lower() if country else None,
                collection=collection.value if collection else None,
                device=device.value if device else None,
                genre=genre,
            )
        )
        shown, more = one_page(found, offset, limit)
        items = [
            MoverItem(
                store_id=mover.store_id,
                name=sources.app_names.get((mover.store, mover.store_id), mover.name),
                chart=mover.chart.slug,
                movement=mover.movement,
                places=mover.places,
                rank=mover.rank,
                previous_rank=mover.previous_rank,
                depth=mover.depth,
                previous_depth=mover.previous_depth,
                at=mover.at,
                previous_at=mover.previous_at,
            )
            for mover in shown
        ]
        return MoversPage(
            since=since,
            movers=items,
            has_more=more,
            next=next_url(request, more, offset=offset + limit),
        )


def _alert_routes(router: APIRouter, sources: ApiSources) -> None:
    repository = sources.repository

    @router.get("/alerts", response_model=AlertsPage, responses=_NOT_FOUND)
    async def alerts(
        request: Request,
        *,
        limit: Limit = DEFAULT_LIMIT,
        offset: Offset = 0,
        app: Annotated[str | None, Query(description="Watchlist name or store id.")] = None,
        since: TimeText = None,
    ) -> Any:
        """Recent alert events, newest first, with each delivery's state (`alerts list`)."""
        start = _time(since, "since", sources.clock())
        try:
            of_apps = None if app is None else watchlist_apps(app, sources.app_names)
        except LookupFailed as exc:
            raise ApiError(404, str(exc), "app") from None
        records = await _read(
            lambda: repository.recent_alerts(
                limit=offset + limit + 1, since=start, of_apps=of_apps, app_names=sources.app_names
            )
        )
        shown, more = one_page(records, offset, limit)
        return AlertsPage(
            alerts=[Alert.model_validate(alert_document(record)) for record in shown],
            has_more=more,
            next=next_url(request, more, offset=offset + limit),
        )
