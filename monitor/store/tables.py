"""Table definitions: the single source of the schema (Alembic autogenerates against it).

Snapshots are the immutable source of truth, one compact row per fetch: the ranked apps are
packed into `ranked_app_ids` as little-endian uint32 internal app ids, position i holding rank
i + 1 and 0 marking a position the parser dropped. `app_ranks` is derived from snapshots for
tracked apps only and can be rebuilt at any time.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
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
    Column("first_seen_at", UtcDateTime),
    Column("last_seen_at", UtcDateTime),
    Column("tracked", Boolean, nullable=False, server_default="0"),
    UniqueConstraint("store", "store_id"),
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
    UniqueConstraint("store", "country", "collection", "device", "genre"),
)

poll_tasks = Table(
    "poll_tasks",
    metadata,
    Column("chart_id", Integer, ForeignKey("charts.id", ondelete="CASCADE"), primary_key=True),
    Column("enabled", Boolean, nullable=False, server_default="1"),
    Column("next_due_at", UtcDateTime, nullable=False),
    Column("lease_owner", String(128)),
    Column("lease_expires_at", UtcDateTime),
    Column("fencing_token", BigInteger, nullable=False, server_default="0"),
    Column("etag", String(255)),
    Column("last_modified", String(64)),
    Column("last_hash", String(64)),
    Column("last_source", String(16)),
    Column("last_attempt_at", UtcDateTime),
    Column("last_success_at", UtcDateTime),
    Column("consecutive_failures", Integer, nullable=False, server_default="0"),
    Column("last_error", Text),
    Index(None, "enabled", "next_due_at"),
)

snapshots = Table(
    "snapshots",
    metadata,
    Column("id", RowId, primary_key=True),
    Column("chart_id", Integer, ForeignKey("charts.id", ondelete="CASCADE"), nullable=False),
    Column("fetched_at", UtcDateTime, nullable=False),
    # Last time the feed served this exact content again (unchanged polls write no new row).
    Column("confirmed_at", UtcDateTime, nullable=False),
    Column("feed_updated_at", UtcDateTime),
    Column("source", String(16), nullable=False),
    Column("requested_depth", SmallInteger, nullable=False),
    Column("visible_depth", SmallInteger, nullable=False),
    Column("content_hash", LargeBinary(32), nullable=False),
    Column("ranked_app_ids", LargeBinary, nullable=False),
    UniqueConstraint("chart_id", "fetched_at"),
)

app_ranks = Table(
    "app_ranks",
    metadata,
    Column("app_id", Integer, ForeignKey("apps.id", ondelete="CASCADE"), primary_key=True),
    Column(
        "snapshot_id",
        RowId,
        ForeignKey("snapshots.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("chart_id", Integer, nullable=False),
    Column("captured_at", UtcDateTime, nullable=False),
    Column("rank", SmallInteger, nullable=False),
    Index(None, "app_id", "captured_at"),
)

fetch_log = Table(
    "fetch_log",
    metadata,
    Column("id", RowId, primary_key=True),
    Column("chart_id", Integer, ForeignKey("charts.id", ondelete="CASCADE"), nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("duration_ms", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("source", String(16)),
    Column("url", Text),
    Column("http_status", SmallInteger),
    Column("attempts", SmallInteger, nullable=False),
    Column("body_bytes", Integer),
    Column("error_class", String(64)),
    Column("error_message", Text),
    Index(None, "chart_id", "started_at"),
)
