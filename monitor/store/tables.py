"""Table definitions: the single source of the schema (Alembic autogenerates against it).

Snapshots are the immutable source of truth, one compact row per fetch whose content changed:
the ranked apps are packed into `ranked_app_ids` as little-endian uint32 internal app ids,
position i holding rank i + 1 and 0 marking a position the parser dropped (see packing.py).
`app_ranks` is derived from snapshots for tracked apps only and can be rebuilt at any time.
Snapshots older than the retention ([retention] snapshot_days) are folded into `daily_ranks`,
one packed row per chart and day, before retention removes them (store/retention.py).

On PostgreSQL the three tables that grow with every poll (`snapshots`, `app_ranks`,
`fetch_log`) are partitioned by month on their time column (store/partitions.py), so that
retention drops a month instead of deleting its rows. A partitioned table's unique keys must
hold the partition key, so there `snapshots` is keyed by (id, fetched_at), and nothing can
refer to a snapshot's id alone: what points at a snapshot does so by (chart_id, fetched_at),
or holds its id without a foreign key.

Bytes matter here (a world poll stores ~100k ranked entries an hour), so every index below is
one a query uses, and the two append-only tables keyed by a natural key (`app_ranks`,
`fetch_log`) are WITHOUT ROWID on SQLite: their primary key is then the table itself instead
of a second b-tree beside a rowid table.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only aliases ROWID for a column declared exactly INTEGER PRIMARY KEY.
RowId = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[dt.datetime]):
    """timestamptz on PostgreSQL; on SQLite (no time zones) stored as UTC and read back aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given where UTC is required")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


apps = Table(
    "apps",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("store", String(16), nullable=False),
    Column("store_id", String(32), nullable=False),
    Column("bundle_id", String(255)),
    Column("name", Text, nullable=False),
    Column("developer", Text),
    Column("developer_id", String(32)),
    Column("genre_id", String(16)),
    Column("genre_name", Text),
    # NULL until the app is first seen in a chart (watchlist apps are created before that).
    # last_seen_at is the fetch time of the latest snapshot listing the app, to within
    # apps.LAST_SEEN_RESOLUTION; confirmations of an unchanged chart do not move it.
    Column("first_seen_at", UtcDateTime),
    Column("last_seen_at", UtcDateTime),
    Column("tracked", Boolean, nullable=False, server_default=false()),
    UniqueConstraint("store", "store_id"),
    # Room on each page for the updated row version: last_seen_at changes every poll round,
    # and an update that stays on its page (HOT) rewrites no index and leaves no bloat.
    postgresql_with={"fillfactor": 80},
)

# Every snapshot write asks which apps are tracked: a few rows among many thousands.
Index(
    "ix_apps_tracked",
    apps.c.id,
    postgresql_where=apps.c.tracked,
    sqlite_where=apps.c.tracked == true(),
)

charts = Table(
    "charts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("store", String(16), nullable=False),
    Column("country", String(2), nullable=False),
    Column("collection", String(32), nullable=False),
    Column("device", String(16), nullable=False),
    Column("genre", String(8), nullable=False),
    # Retention folded this chart's snapshots fetched before it into `daily_ranks` (a UTC
    # midnight): history reads days before it there, and raw snapshots from it on.
    Column("folded_before", UtcDateTime),
    UniqueConstraint("store", "country", "collection", "device", "genre"),
)

poll_tasks = Table(
    "poll_tasks",
    metadata,
    Column("chart_id", Integer, ForeignKey("charts.id", ondelete="CASCADE"), primary_key=True),
    Column("enabled", Boolean, nullable=False, server_default=true()),
    Column("next_due_at", UtcDateTime, nullable=False),
    Column("lease_owner", String(128)),
    Column("lease_expires_at", UtcDateTime),
    # Bumped by every claim and never by a completion: a completion carrying an older token
    # means someone else claimed the chart since, so it must write nothing.
    Column("fencing_token", BigInteger, nullable=False, server_default=text("0")),
    Column("etag", String(255)),
    Column("last_modified", String(64)),
    Column("last_hash", String(128)),
    Column("last_source", String(16)),
    Column("last_attempt_at", UtcDateTime),
    Column("last_success_at", UtcDateTime),
    Column("consecutive_failures", Integer, nullable=False, server_default=text("0")),
    Column("last_error", Text),
    Index(None, "enabled", "next_due_at"),
)

snapshots = Table(
    "snapshots",
    metadata,
    # Fixed-width columns first, widest first: PostgreSQL pads each to its alignment.
    Column("id", RowId, primary_key=True),
    Column("fetched_at", UtcDateTime, nullable=False),
    # Last time the feed served this exact content again (unchanged polls write no new row).
    Column("confirmed_at", UtcDateTime, nullable=False),
    Column("feed_updated_at", UtcDateTime),
    Column("chart_id", Integer, ForeignKey("charts.id", ondelete="CASCADE"), nullable=False),
    Column("requested_depth", SmallInteger, nullable=False),
    Column("visible_depth", SmallInteger, nullable=False),
    Column("source", String(16), nullable=False),
    Column("content_hash", LargeBinary(16), nullable=False),
    Column("ranked_app_ids", LargeBinary, nullable=False),
    # Serves idempotent inserts, "latest snapshot of a chart" and history ranges alike.
    UniqueConstraint("chart_id", "fetched_at"),
)

app_ranks = Table(
    "app_ranks",
    metadata,
    Column("app_id", Integer, ForeignKey("apps.id", ondelete="CASCADE"), nullable=False),
    # Denormalized from the snapshot so that "charts this app was ever listed on" is a scan of
    # the primary key prefix, not a join over every snapshot.
    Column("chart_id", Integer, ForeignKey("charts.id", ondelete="CASCADE"), nullable=False),
    # With chart_id, the snapshot's natural key, and the partition key on PostgreSQL. There is
    # no foreign key to the snapshot: SQLite would look for referencing rows through a second
    # index on every snapshot deleted, and PostgreSQL would check them on every partition
    # detached. Writes, rebuilds and retention keep the two tables in step.
    Column("fetched_at", UtcDateTime, nullable=False),
    Column("rank", SmallInteger, nullable=False),
    PrimaryKeyConstraint("app_id", "chart_id", "fetched_at"),
    sqlite_with_rowid=False,
)

# Snapshots older than the retention, folded per chart and UTC day: the apps listed at any
# time of the day packed as in `snapshots.ranked_app_ids` (packing.py), and beside them, slot
# for slot, the app's best, worst and last rank of the day and the minutes it was listed
# (packing.pack_day_stats). A snapshot counts from its fetch until the chart's next snapshot,
# the latest one until its last confirmation.
daily_ranks = Table(
    "daily_ranks",
    metadata,
    Column("chart_id", Integer, ForeignKey("charts.id", ondelete="CASCADE"), nullable=False),
    Column("day", Date, nullable=False),
    # The deepest visible depth of the day's snapshots: "not listed" means below it.
    Column("depth", SmallInteger, nullable=False),
    Column("snapshots", SmallInteger, nullable=False),
    Column("app_ids", LargeBinary, nullable=False),
    Column("stats", LargeBinary, nullable=False),
    PrimaryKeyConstraint("chart_id", "day"),
    sqlite_with_rowid=False,
)

# Jobs that run once per period across every replica (retention, once a day): the first
# process to insert the period's row runs it, the others find it there (store/jobs.py).
job_runs = Table(
    "job_runs",
    metadata,
    Column("job", String(32), nullable=False),
    Column("period_start", UtcDateTime, nullable=False),
    Column("owner", String(128), nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime),
    Column("outcome", Text),
    PrimaryKeyConstraint("job", "period_start"),
)

fetch_log = Table(
    "fetch_log",
    metadata,
    Column("chart_id", Integer, ForeignKey("charts.id", ondelete="CASCADE"), nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("duration_ms", Integer, nullable=False),
    Column("attempts", SmallInteger, nullable=False),
    Column("http_status", SmallInteger),
    Column("body_bytes", Integer),
    Column("outcome", String(16), nullable=False),
    # A failed attempt followed by a successful one in the same poll (a fallback feed served
    # the chart): history must not show it as a gap.
    Column("recovered", Boolean, nullable=False, server_default=false()),
    Column("source", String(16)),
    Column("url", Text),  # kept for failed fetches only
    Column("error_class", String(64)),
    Column("error_message", Text),
    # The fetches of one poll (a feed, then its fallback) are one poll: history shows a poll
    # that failed on both feeds as one failure. This is the started_at of the poll's first
    # fetch, set on its later fetches only: NULL on a first fetch (nearly every row, at no
    # cost) means the row starts its own poll, so a poll is coalesce(this, started_at).
    Column("poll_started_at", UtcDateTime),
    # The first bytes of a body that arrived but did not parse (monitor.polling caps it):
    # an HTML error page or a changed JSON shape is then visible without refetching.
    Column("body_sample", LargeBinary),
    PrimaryKeyConstraint("chart_id", "started_at"),
    sqlite_with_rowid=False,
)

# -- alerting ----------------------------------------------------------------------------------
# Written in the transaction of the snapshot that caused them (store/alerting.py): episodes
# carry rule state between snapshots, events are what the rules said, notifications are the
# outbox the sender delivers from.

alert_episodes = Table(
    "alert_episodes",
    metadata,
    Column("rule", String(64), nullable=False),
    Column("app_id", Integer, ForeignKey("apps.id", ondelete="CASCADE"), nullable=False),
    # A chart slug, "slug>rival store id", or a breadth scope "collection/device/genre".
    Column("target", String(128), nullable=False),
    # The chart whose snapshots evaluate the episode; NULL for breadth (several charts do).
    Column("chart_id", Integer, ForeignKey("charts.id", ondelete="CASCADE")),
    Column("since", UtcDateTime, nullable=False),
    Column("polls", Integer, nullable=False),
    Column("firing", Boolean, nullable=False),
    Column("notified_at", UtcDateTime),
    PrimaryKeyConstraint("rule", "app_id", "target"),
    Index(None, "chart_id"),
    Index(None, "target"),
)

# A chart whose latest snapshot looked like a feed glitch: its alerts wait for the next one.
alert_holds = Table(
    "alert_holds",
    metadata,
    Column("chart_id", Integer, ForeignKey("charts.id", ondelete="CASCADE"), primary_key=True),
    # The last snapshot alerts were evaluated against, and the one held back.
    # Snapshot ids without a foreign key (see the module docstring); retention keeps the
    # snapshots a hold names.
    Column("baseline_snapshot_id", RowId, nullable=False),
    Column("held_snapshot_id", RowId, nullable=False),
    Column("reason", Text, nullable=False),
)

alert_events = Table(
    "alert_events",
    metadata,
    Column("id", RowId, primary_key=True),
    Column("at", UtcDateTime, nullable=False),
    Column("app_id", Integer, ForeignKey("apps.id", ondelete="CASCADE"), nullable=False),
    Column("chart_id", Integer, ForeignKey("charts.id", ondelete="CASCADE")),
    # The snapshot that caused it; retention may have removed it since.
    Column("snapshot_id", RowId),
    Column("rank", SmallInteger),
    Column("previous_rank", SmallInteger),
    Column("depth", SmallInteger),
    Column("rule", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("scope", Text, nullable=False),
    Column("summary", Text, nullable=False),
    Column("facts", Text, nullable=False),  # JSON object of text values
    # The silence that kept it from being sent, if one did.
    Column("silenced_by", Text),
    Column("dedupe_key", String(255), nullable=False),
    UniqueConstraint("dedupe_key"),
    Index(None, "at"),
)

notifications = Table(
    "notifications",
    metadata,
    Column("id", RowId, primary_key=True),
    Column("event_id", RowId, ForeignKey("alert_events.id", ondelete="CASCADE"), nullable=False),
    Column("channel", String(16), nullable=False),  # email, webhook
    Column("recipient", Text, nullable=False),
    Column("state", String(16), nullable=False),  # pending, sent, dead
    Column("created_at", UtcDateTime, nullable=False),
    # Held back until then: the group wait, quiet hours, the next retry.
    Column("not_before", UtcDateTime, nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("last_error", Text),
    # Set when the row first goes out with others in one message: a retry sends the same
    # rows again under the same Message-ID, so a duplicate after a crash is recognisable.
    Column("message_id", String(255)),
    # A sender's lease on the row while it delivers; expired, another sender may take it.
    Column("claimed_by", String(128)),
    Column("claimed_until", UtcDateTime),
    Column("sent_at", UtcDateTime),
    UniqueConstraint("event_id", "channel", "recipient"),
    Index(None, "state", "not_before"),
    Index(None, "message_id"),
)

# Every delivery attempt of a message, whatever its outcome: what `alerts list` explains.
delivery_attempts = Table(
    "delivery_attempts",
    metadata,
    Column("id", RowId, primary_key=True),
    Column("at", UtcDateTime, nullable=False),
    Column("message_id", String(255), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("recipient", Text, nullable=False),
    Column("events", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),  # sent, retrying, dead_lettered
    Column("error", Text),
    Index(None, "message_id"),
)

# Silences added at run time with `app-rank-monitor silence add`; those of [alerts] silences
# live in the configuration. Each selection is a JSON array of text, [] matching every value.
silences = Table(
    "silences",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("until", UtcDateTime, nullable=False),
    Column("apps", Text, nullable=False),
    Column("countries", Text, nullable=False),
    Column("rules", Text, nullable=False),
    Column("comment", Text, nullable=False),
    # Set by `silence expire`: the silence ended then, before `until`.
    Column("expired_at", UtcDateTime),
)
