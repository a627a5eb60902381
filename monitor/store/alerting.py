"""Alert evaluation inside a snapshot's transaction: state in, events and outbox rows out.

Run for a new snapshot that is the chart's latest. It reads the chart's alert episodes and
glitch hold (unless this process wrote them last and kept them: ChartAlertMemory), evaluates
the rules (monitor.alerts.evaluation, pure), and writes the episodes, the events and their
notifications in the same transaction as the snapshot (on PostgreSQL in one statement, since
each is a round trip): a snapshot is stored with exactly its alerts, or not at all.
Snapshots that arrive late, failed polls and unchanged ones evaluate nothing. An event that a
silence holds back (one of the settings, or one added with `silence add` and active when the
event is written, as the caller read them) is stored, and not queued.

A baseline served shorter than asked (37 entries of 100) does not say where the apps below it
went: each tracked app it leaves out is compared at its last known rank on the chart (its
latest listing, unless a snapshot since was deep enough to show it gone), so that the next deep
snapshot tells a drop-out, and a short one tells nothing about it (monitor.alerts.evaluation).

Breadth episodes span the charts of one kind (every country's Top Free iPhone): on
PostgreSQL, writers of such charts take a transaction lock on the kind first, so that two
countries polled at once cannot both start the same episode.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Integer,
    Select,
    and_,
    bindparam,
    column,
    delete,
    func,
    or_,
    select,
    true,
)
from sqlalchemy.dialects import postgresql, sqlite

from monitor.alerts.evaluation import (
    ChartUpdate,
    Episode,
    EpisodeKey,
    breadth_may_change,
    breadth_target,
    evaluate,
)
from monitor.alerts.glitch import glitch_reason
from monitor.alerts.model import AlertEvent, AppRef
from monitor.alerts.policy import AlertPolicy
from monitor.model import ChartKey, Store
from monitor.store import packing, silences
from monitor.store.queries import latest_of_chart
from monitor.store.results import AlertsWritten
from monitor.store.sql import (
    among,
    insert_ignoring_conflicts,
    json_ready,
    json_recordset,
    json_rows,
    per_dialect,
)
from monitor.store.tables import (
    alert_episodes,
    alert_events,
    alert_holds,
    app_ranks,
    charts,
    notifications,
    poll_tasks,
    snapshots,
)


@dataclasses.dataclass(frozen=True)
class NewSnapshot:
    """The snapshot just written, and the one before it (None for a chart's first)."""

    chart_id: int
    chart: ChartKey
    snapshot_id: int
    at: dt.datetime
    depth: int
    requested_depth: int
    ranked: bytes
    previous_id: int | None
    previous_ranked: bytes | None


@dataclasses.dataclass(frozen=True)
class Hold:
    baseline_snapshot_id: int
    held_snapshot_id: int


@dataclasses.dataclass(frozen=True)
class ChartAlertMemory:
    """What a chart's alert state is in the database after its latest evaluation: its
    episodes (breadth ones aside, which other charts share) and its glitch hold. Kept by the
    process that wrote it, so that its next snapshot of the chart reads neither."""

    episodes: Mapping[EpisodeKey, Episode]
    hold: Hold | None


def evaluate_snapshot(
    connection: Connection,
    dialect: str,
    policy: AlertPolicy,
    new: NewSnapshot,
    tracked: Mapping[int, str],
    *,
    now: dt.datetime,
    known: ChartAlertMemory | None,
    added_silences: Sequence[silences.StoredSilence],
) -> tuple[AlertsWritten, ChartAlertMemory | None]:
    """`tracked`: every tracked app, app id -> store id. `known`: the chart's memory as this
    process left it, valid (the claim proves no other process wrote the chart since).
    `added_silences`: those added at run time and active now."""
    if not policy.rules or not tracked:
        return AlertsWritten(), None
    hold = known.hold if known is not None else _read_hold(connection, new.chart_id)
    baseline, hold = _baseline(connection, new, policy, hold)
    if isinstance(baseline, str):
        memory = None if known is None else dataclasses.replace(known, hold=hold)
        return AlertsWritten(held=baseline), memory
    apps = {
        app_id: _app_ref(policy, new.chart.store, store_id) for app_id, store_id in tracked.items()
    }
    ranks = _ranks(new.ranked, apps)
    previous = None
    if baseline is not None:
        previous = _ranks(baseline.ranked, apps)
        if len(packing.slots(baseline.ranked)) < new.requested_depth:
            previous |= _last_known(
                connection, dialect, new, baseline, apps=apps, previous=previous
            )
    breadth = breadth_may_change(policy.rules, new.chart, ranks, previous)
    if breadth and dialect == "postgresql":
        connection.execute(select(func.pg_advisory_xact_lock(_lock_key(breadth_target(new.chart)))))
    update = ChartUpdate(
        chart=new.chart,
        at=new.at,
        depth=new.depth,
        ranks=ranks,
        previous=previous,
        past={
            window: _ranks(ranked, apps)
            for window in {rule.window for rule in policy.rules if rule.window is not None}
            if (ranked := _ranking_at(connection, new.chart_id, new.at - window)) is not None
        },
        countries=_countries(connection, dialect, new, apps) if breadth else None,
    )
    target = breadth_target(new.chart)
    if known is None:
        episodes = _episodes(connection, new, apps, breadth=breadth)
    else:
        shared = _episodes(connection, new, apps, breadth=breadth, chart=False) if breadth else {}
        episodes = {**known.episodes, **shared}
    result = evaluate(update, episodes, policy.rules)
    writes = _writes(
        policy,
        new,
        result.episodes,
        result.events,
        app_ids={ref: app_id for app_id, ref in apps.items()},
        now=now,
        added_silences=added_silences,
    )
    stored = _WRITE[dialect](connection, writes) if writes else set()
    events = tuple(event for event in result.events if event.dedupe_key in stored)
    after = {**episodes, **result.episodes}
    memory = ChartAlertMemory(
        {key: e for key, e in after.items() if e is not None and key.target != target}, hold
    )
    return AlertsWritten(events=events), memory


def _app_ref(policy: AlertPolicy, store: Store, store_id: str) -> AppRef:
    return AppRef(store, store_id, policy.app_names.get((store, store_id), store_id))


def _read_hold(connection: Connection, chart_id: int) -> Hold | None:
    row = connection.execute(_HOLD, {"chart_id": chart_id}).first()
    return None if row is None else Hold(row.baseline_snapshot_id, row.held_snapshot_id)


_HOLD = select(alert_holds.c.baseline_snapshot_id, alert_holds.c.held_snapshot_id).where(
    alert_holds.c.chart_id == bindparam("chart_id")
)


@dataclasses.dataclass(frozen=True)
class _Baseline:
    snapshot_id: int
    ranked: bytes


def _baseline(
    connection: Connection, new: NewSnapshot, policy: AlertPolicy, hold: Hold | None
) -> tuple[_Baseline | str | None, Hold | None]:
    """The ranking to compare the new snapshot with (None: the chart's first snapshot) or,
    when the new one is held back as a glitch, why; and the chart's hold after it."""
    share = policy.glitch_share
    if hold is None:
        if new.previous_ranked is None or new.previous_id is None:
            return None, None
        reason = glitch_reason(
            packing.slots(new.previous_ranked), packing.slots(new.ranked), share=share
        )
        if reason is None:
            return _Baseline(new.previous_id, new.previous_ranked), None
        hold = Hold(new.previous_id, new.snapshot_id)
        connection.execute(
            alert_holds.insert().values(
                chart_id=new.chart_id,
                baseline_snapshot_id=hold.baseline_snapshot_id,
                held_snapshot_id=hold.held_snapshot_id,
                reason=reason,
            )
        )
        return reason, hold
    baseline = _ranking(connection, hold.baseline_snapshot_id)
    held = _ranking(connection, hold.held_snapshot_id)
    after = packing.slots(new.ranked)
    reason = glitch_reason(packing.slots(held), after, share=share)
    if reason is not None and glitch_reason(packing.slots(baseline), after, share=share):
        # Like neither the held snapshot nor the one before it: still not to be trusted.
        connection.execute(
            alert_holds.update()
            .where(alert_holds.c.chart_id == new.chart_id)
            .values(held_snapshot_id=new.snapshot_id, reason=reason)
        )
        return reason, Hold(hold.baseline_snapshot_id, new.snapshot_id)
    # Confirmed (like the held one) or reverted (like the baseline): the change since the
    # baseline is what alerts are about.
    connection.execute(delete(alert_holds).where(alert_holds.c.chart_id == new.chart_id))
    return _Baseline(hold.baseline_snapshot_id, baseline), None


def _last_known(
    connection: Connection,
    dialect: str,
    new: NewSnapshot,
    baseline: _Baseline,
    *,
    apps: Mapping[int, AppRef],
    previous: Mapping[AppRef, int | None],
) -> dict[AppRef, int]:
    """The apps the baseline does not list because it was too shallow to show them, with
    their last known rank: the one of their latest listing on the chart, when no snapshot
    since was that deep. For a baseline shallower than the chart is asked for."""
    wanted = [app_id for app_id, ref in apps.items() if previous[ref] is None]
    if not wanted:
        return {}
    depth = connection.execute(_DEPTH_OF, {"snapshot_id": baseline.snapshot_id}).one()
    if depth.visible_depth >= new.requested_depth:
        return {}  # its last entries were dropped by policy: it is deep enough
    listed = connection.execute(
        _LAST_LISTED[dialect],
        {"chart_id": new.chart_id, "app_ids": wanted, "until": depth.fetched_at},
    )
    found: dict[AppRef, int] = {}
    for row in listed:
        if row.rank <= depth.visible_depth:
            continue  # the baseline shows that position: the app is known to have left it
        deep_enough = {
            "chart_id": new.chart_id,
            "after": row.fetched_at,
            "until": depth.fetched_at,
            "rank": row.rank,
        }
        if connection.execute(_DEEP_ENOUGH_SINCE, deep_enough).first() is None:
            found[apps[row.app_id]] = row.rank
    return found


_DEPTH_OF = select(snapshots.c.fetched_at, snapshots.c.visible_depth).where(
    snapshots.c.id == bindparam("snapshot_id")
)


def _last_listed(dialect: str) -> Select[Any]:
    """(app id, rank, fetched_at) of the latest listing on a chart, up to a fetch time, of
    each of some apps: a probe of the derived ranks' primary key per app."""
    latest = (
        select(app_ranks.c.app_id, func.max(app_ranks.c.fetched_at).label("fetched_at"))
        .where(
            among(app_ranks.c.app_id, "app_ids", dialect),
            app_ranks.c.chart_id == bindparam("chart_id"),
            app_ranks.c.fetched_at <= bindparam("until", type_=app_ranks.c.fetched_at.type),
        )
        .group_by(app_ranks.c.app_id)
        .subquery("latest")
    )
    return select(latest.c.app_id, app_ranks.c.rank, latest.c.fetched_at).join(
        app_ranks,
        and_(
            app_ranks.c.app_id == latest.c.app_id,
            app_ranks.c.chart_id == bindparam("chart_id"),
            app_ranks.c.fetched_at == latest.c.fetched_at,
        ),
    )


_LAST_LISTED = per_dialect(_last_listed)
_DEEP_ENOUGH_SINCE = (
    select(snapshots.c.id)
    .where(
        snapshots.c.chart_id == bindparam("chart_id"),
        snapshots.c.fetched_at > bindparam("after", type_=snapshots.c.fetched_at.type),
        snapshots.c.fetched_at <= bindparam("until", type_=snapshots.c.fetched_at.type),
        snapshots.c.visible_depth >= bindparam("rank"),
    )
    .limit(1)
)


def _ranking(connection: Connection, snapshot_id: int) -> bytes:
    ranked: bytes = connection.execute(_RANKING, {"snapshot_id": snapshot_id}).scalar_one()
    return ranked


def _ranking_at(connection: Connection, chart_id: int, at: dt.datetime) -> bytes | None:
    """The chart's ranking as of `at`: its latest snapshot fetched then or before."""
    ranked: bytes | None = connection.execute(
        _RANKING_AT, {"chart_id": chart_id, "at": at}
    ).scalar()
    return ranked


_RANKING = select(snapshots.c.ranked_app_ids).where(snapshots.c.id == bindparam("snapshot_id"))
_RANKING_AT = (
    select(snapshots.c.ranked_app_ids)
    .where(
        snapshots.c.chart_id == bindparam("chart_id"),
        snapshots.c.fetched_at <= bindparam("at", type_=snapshots.c.fetched_at.type),
    )
    .order_by(snapshots.c.fetched_at.desc())
    .limit(1)
)


def _ranks(ranked: bytes, apps: Mapping[int, AppRef]) -> dict[AppRef, int | None]:
    found = packing.ranks_of(ranked, apps.keys())
    return {ref: found.get(app_id) for app_id, ref in apps.items()}


def _lock_key(scope: str) -> int:
    return int.from_bytes(hashlib.sha256(f"apprank breadth {scope}".encode()).digest()[:8],
                          "big", signed=True)  # fmt: skip


def _countries(
    connection: Connection, dialect: str, new: NewSnapshot, apps: Mapping[int, AppRef]
) -> dict[AppRef, dict[str, int | None]]:
    """Each tracked app's rank in the latest snapshot of every enabled chart of the new
    snapshot's kind, the new snapshot standing for its own chart. The ranks come from the
    derived ranks, which hold every tracked app's (derived.py), not from the rankings."""
    found = connection.execute(
        _KIND_RANKS[dialect],
        {
            "store": new.chart.store.value,
            "collection": new.chart.collection.value,
            "device": new.chart.device.value,
            "genre": new.chart.genre,
            "chart_id": new.chart_id,
            "app_ids": list(apps),
        },
    ).scalar_one()
    by_country: dict[str, dict[AppRef, int | None]] = {}
    for country, app_id, rank in json.loads(found or "[]"):
        ranks = by_country.setdefault(country, dict.fromkeys(apps.values()))
        if app_id is not None:
            ranks[apps[app_id]] = rank
    by_country[new.chart.country] = _ranks(new.ranked, apps)
    return {ref: {c: ranks[ref] for c, ranks in by_country.items()} for ref in apps.values()}


def _kind_ranks(dialect: str) -> Select[Any]:
    """(country, tracked app id, rank) in the latest snapshot of every other enabled chart
    of a kind, as one JSON row; (country, NULL, NULL) for a chart listing none of the apps."""
    kind = (
        select(
            charts.c.id,
            charts.c.country,
            latest_of_chart(snapshots.c.fetched_at, charts.c.id).label("fetched_at"),
        )
        .join(poll_tasks, poll_tasks.c.chart_id == charts.c.id)
        .where(
            poll_tasks.c.enabled == true(),
            charts.c.store == bindparam("store"),
            charts.c.collection == bindparam("collection"),
            charts.c.device == bindparam("device"),
            charts.c.genre == bindparam("genre"),
            charts.c.id != bindparam("chart_id"),
        )
        .subquery("kind")
    )
    listed = and_(
        app_ranks.c.chart_id == kind.c.id,
        app_ranks.c.fetched_at == kind.c.fetched_at,
        among(app_ranks.c.app_id, "app_ids", dialect),
    )
    return (
        select(json_rows(dialect, kind.c.country, app_ranks.c.app_id, app_ranks.c.rank))
        .select_from(kind.outerjoin(app_ranks, listed))
        .where(kind.c.fetched_at.is_not(None))
    )


_KIND_RANKS = per_dialect(_kind_ranks)


def _episodes(
    connection: Connection,
    new: NewSnapshot,
    apps: Mapping[int, AppRef],
    *,
    breadth: bool,
    chart: bool = True,
) -> dict[EpisodeKey, Episode]:
    """The chart's own episodes (`chart`) and the breadth ones of its kind (`breadth`)."""
    rows = connection.execute(
        _EPISODES[chart, breadth],
        {"chart_id": new.chart_id, "shared": breadth_target(new.chart)},
    ).all()
    return {
        EpisodeKey(row.rule, apps[row.app_id], row.target): Episode(
            since=row.since, polls=row.polls, firing=row.firing, notified_at=row.notified_at
        )
        for row in rows
        if row.app_id in apps  # an app no longer tracked: its episodes are moot
    }


def _episodes_of(*, chart: bool, breadth: bool) -> Select[Any]:
    own = alert_episodes.c.chart_id == bindparam("chart_id")
    shared = and_(
        alert_episodes.c.chart_id.is_(None), alert_episodes.c.target == bindparam("shared")
    )
    return select(alert_episodes).where(
        or_(own, shared) if chart and breadth else own if chart else shared
    )


_EPISODES = {
    (chart, breadth): _episodes_of(chart=chart, breadth=breadth)
    for chart, breadth in ((True, True), (True, False), (False, True))
}


@dataclasses.dataclass(frozen=True)
class _Writes:
    """What an evaluation changes, as rows: episodes that ended and that started or changed,
    events, and the notifications of those events that no silence holds back (by the event's
    dedupe key: the event's id is known once it is stored)."""

    ended: list[dict[str, Any]]
    episodes: list[dict[str, Any]]
    events: list[dict[str, Any]]
    queued: list[dict[str, Any]]

    def __bool__(self) -> bool:
        return bool(self.ended or self.episodes or self.events)


def _writes(
    policy: AlertPolicy,
    new: NewSnapshot,
    changed: Mapping[EpisodeKey, Episode | None],
    events: Sequence[AlertEvent],
    *,
    app_ids: Mapping[AppRef, int],
    now: dt.datetime,
    added_silences: Sequence[silences.StoredSilence],
) -> _Writes:
    shared = breadth_target(new.chart)
    silenced = {event.dedupe_key: _silenced_by(event, policy, added_silences) for event in events}
    return _Writes(
        ended=[
            {"rule": key.rule, "app_id": app_ids[key.app], "target": key.target}
            for key, episode in changed.items()
            if episode is None
        ],
        episodes=[
            {
                "rule": key.rule,
                "app_id": app_ids[key.app],
                "target": key.target,
                "chart_id": None if key.target == shared else new.chart_id,
                "since": episode.since,
                "polls": episode.polls,
                "firing": episode.firing,
                "notified_at": episode.notified_at,
            }
            for key, episode in changed.items()
            if episode is not None
        ],
        events=[_event_row(event, new, app_ids, silenced[event.dedupe_key]) for event in events],
        queued=[
            {
                "dedupe_key": event.dedupe_key,
                "channel": delivery.channel.value,
                "recipient": delivery.recipient,
                "state": "pending",
                "created_at": now,
                "not_before": delivery.not_before,
            }
            for event in events
            if silenced[event.dedupe_key] is None
            for delivery in policy.deliveries(event, now=now)
        ],
    )


def _write_sqlite(connection: Connection, writes: _Writes) -> set[str]:
    """A statement per table written (no round trips to save); returns the dedupe keys of the
    events stored, not those stored before (the same poll written twice)."""
    if writes.ended:
        connection.execute(_DELETE_EPISODE, writes.ended)
    if writes.episodes:
        connection.execute(_UPSERT_EPISODES, writes.episodes)
    if not writes.events:
        return set()
    # An executemany: SQLAlchemy sends the rows as one multi-row INSERT and returns the ids
    # of those that were new.
    ids: dict[str, int] = dict(connection.execute(_INSERT_EVENTS, writes.events).all())
    queued = [
        {key: value for key, value in row.items() if key != "dedupe_key"}
        | {"event_id": ids[row["dedupe_key"]]}
        for row in writes.queued
        if row["dedupe_key"] in ids
    ]
    if queued:
        connection.execute(notifications.insert(), queued)
    return set(ids)


_DELETE_EPISODE = delete(alert_episodes).where(
    alert_episodes.c.rule == bindparam("rule"),
    alert_episodes.c.app_id == bindparam("app_id"),
    alert_episodes.c.target == bindparam("target"),
)


def _upserting_episodes(insert: postgresql.Insert | sqlite.Insert) -> Any:
    """`insert` of episode rows, updating the state of those that exist."""
    return insert.on_conflict_do_update(
        index_elements=["rule", "app_id", "target"],
        set_={name: insert.excluded[name] for name in ("since", "polls", "firing", "notified_at")},
    )


_UPSERT_EPISODES = _upserting_episodes(sqlite.insert(alert_episodes))
_INSERT_EVENTS = insert_ignoring_conflicts(alert_events, "sqlite").returning(
    alert_events.c.dedupe_key, alert_events.c.id
)


def _write_postgresql(connection: Connection, writes: _Writes) -> set[str]:
    """Everything in one statement, one round trip (data-modifying CTEs, rows passed as
    JSON); returns the dedupe keys of the events stored, as _write_sqlite."""
    stored = connection.execute(
        _WRITE_ALL_POSTGRESQL,
        {
            "ended": _positioned(writes.ended),
            "episodes": _positioned(writes.episodes),
            "events": _positioned(writes.events),
            "queued": _positioned(writes.queued),
        },
    ).scalars()
    return set(stored)


def _recordset(name: str, *columns: Column[Any]) -> Any:
    """The rows of a JSON parameter as `_positioned` made them: `columns` and their position."""
    return json_recordset(name, *columns, column("position", Integer))


def _positioned(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for a JSON parameter, numbered: rows inserted in that order get ascending ids."""
    return [json_ready(row) | {"position": position} for position, row in enumerate(rows)]


def _write_all_postgresql() -> Select[Any]:
    key = (alert_episodes.c.rule, alert_episodes.c.app_id, alert_episodes.c.target)
    ended = _recordset("ended", *key)
    deleted = delete(alert_episodes).where(*(c == ended.c[c.name] for c in key)).cte("deleted")
    changed = _recordset("episodes", *alert_episodes.c)
    upserted = _upserting_episodes(
        postgresql.insert(alert_episodes).from_select(
            [c.name for c in alert_episodes.c],
            select(*(changed.c[c.name] for c in alert_episodes.c)),
        )
    ).cte("upserted")
    event_columns = [c for c in alert_events.c if c.name != "id"]
    events = _recordset("events", *event_columns)
    stored = (
        postgresql.insert(alert_events)
        .from_select(
            [c.name for c in event_columns],
            select(*(events.c[c.name] for c in event_columns)).order_by(events.c.position),
        )
        .on_conflict_do_nothing()
        .returning(alert_events.c.id, alert_events.c.dedupe_key)
        .cte("stored")
    )
    queued_columns = ("channel", "recipient", "state", "created_at", "not_before")
    queued = _recordset(
        "queued", alert_events.c.dedupe_key, *(notifications.c[name] for name in queued_columns)
    )
    notified = (
        postgresql.insert(notifications)
        .from_select(
            ["event_id", *queued_columns],
            select(stored.c.id, *(queued.c[name] for name in queued_columns))
            .join(queued, queued.c.dedupe_key == stored.c.dedupe_key)
            .order_by(queued.c.position),
        )
        .cte("notified")
    )
    return select(stored.c.dedupe_key).add_cte(deleted, upserted, notified)


_WRITE_ALL_POSTGRESQL = _write_all_postgresql()
_WRITE = {"sqlite": _write_sqlite, "postgresql": _write_postgresql}


def _silenced_by(
    event: AlertEvent, policy: AlertPolicy, added: Sequence[silences.StoredSilence]
) -> str | None:
    """The silence that holds the event back, from the settings or added at run time."""
    configured = policy.silence_for(event)
    if configured is not None:
        return configured.describe()
    matching = next((stored for stored in added if stored.silence.matches(event)), None)
    return matching.describe() if matching is not None else None


def _event_row(
    event: AlertEvent, new: NewSnapshot, app_ids: Mapping[AppRef, int], silenced_by: str | None
) -> dict[str, Any]:
    return {
        "at": event.at,
        "app_id": app_ids[event.app],
        "chart_id": new.chart_id if event.chart is not None else None,
        "snapshot_id": new.snapshot_id,
        "rank": event.rank,
        "previous_rank": event.previous_rank,
        "depth": event.depth,
        "rule": event.rule,
        "kind": event.kind.value,
        "state": event.state.value,
        "severity": event.severity.value,
        "scope": event.scope,
        "summary": event.summary,
        "facts": json.dumps(dict(event.facts), sort_keys=True),
        "silenced_by": silenced_by,
        "dedupe_key": event.dedupe_key,
    }
