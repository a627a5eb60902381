"""Initial schema: apps, charts, the poll schedule, snapshots, derived ranks, fetch log.

Revision ID: 0001
Revises:
Create Date: 2026-05-10

Hand-reviewed: constraint names follow the metadata naming convention (so later batch
migrations on SQLite can address them), boolean defaults render per dialect, the two
append-only natural-key tables are WITHOUT ROWID on SQLite, and the storage options that
autogenerate does not see (apps fillfactor, the partial index predicate) are written out.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "apps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("store", sa.String(length=16), nullable=False),
        sa.Column("store_id", sa.String(length=32), nullable=False),
        sa.Column("bundle_id", sa.String(length=255), nullable=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("developer", sa.Text(), nullable=True),
        sa.Column("developer_id", sa.String(length=32), nullable=True),
        sa.Column("genre_id", sa.String(length=16), nullable=True),
        sa.Column("genre_name", sa.Text(), nullable=True),
        sa.Column("first_seen_at", _utc(), nullable=True),
        sa.Column("last_seen_at", _utc(), nullable=True),
        sa.Column("tracked", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_apps")),
        sa.UniqueConstraint("store", "store_id", name=op.f("uq_apps_store_store_id")),
        postgresql_with={"fillfactor": 80},
    )
    op.create_index(
        "ix_apps_tracked",
        "apps",
        ["id"],
        postgresql_where=sa.text("tracked"),
        sqlite_where=sa.text("tracked = 1"),
    )
    op.create_table(
        "charts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("store", sa.String(length=16), nullable=False),
        sa.Column("country", sa.String(length=2), nullable=False),
        sa.Column("collection", sa.String(length=32), nullable=False),
        sa.Column("device", sa.String(length=16), nullable=False),
        sa.Column("genre", sa.String(length=8), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_charts")),
        sa.UniqueConstraint(
            "store",
            "country",
            "collection",
            "device",
            "genre",
            name=op.f("uq_charts_store_country_collection_device_genre"),
        ),
    )
    op.create_table(
        "poll_tasks",
        sa.Column("chart_id", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("next_due_at", _utc(), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", _utc(), nullable=True),
        sa.Column("fencing_token", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("etag", sa.String(length=255), nullable=True),
        sa.Column("last_modified", sa.String(length=64), nullable=True),
        sa.Column("last_hash", sa.String(length=128), nullable=True),
        sa.Column("last_source", sa.String(length=16), nullable=True),
        sa.Column("last_attempt_at", _utc(), nullable=True),
        sa.Column("last_success_at", _utc(), nullable=True),
        sa.Column(
            "consecutive_failures", sa.Integer(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["chart_id"],
            ["charts.id"],
            name=op.f("fk_poll_tasks_chart_id_charts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("chart_id", name=op.f("pk_poll_tasks")),
    )
    op.create_index(
        op.f("ix_poll_tasks_enabled_next_due_at"), "poll_tasks", ["enabled", "next_due_at"]
    )
    op.create_table(
        "snapshots",
        sa.Column("id", RowId, nullable=False),
        sa.Column("fetched_at", _utc(), nullable=False),
        sa.Column("confirmed_at", _utc(), nullable=False),
        sa.Column("feed_updated_at", _utc(), nullable=True),
        sa.Column("chart_id", sa.Integer(), nullable=False),
        sa.Column("requested_depth", sa.SmallInteger(), nullable=False),
        sa.Column("visible_depth", sa.SmallInteger(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("content_hash", sa.LargeBinary(length=16), nullable=False),
        sa.Column("ranked_app_ids", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["chart_id"],
            ["charts.id"],
            name=op.f("fk_snapshots_chart_id_charts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_snapshots")),
        sa.UniqueConstraint(
            "chart_id", "fetched_at", name=op.f("uq_snapshots_chart_id_fetched_at")
        ),
    )
    op.create_table(
        "app_ranks",
        sa.Column("app_id", sa.Integer(), nullable=False),
        sa.Column("chart_id", sa.Integer(), nullable=False),
        sa.Column("snapshot_id", RowId, nullable=False),
        sa.Column("rank", sa.SmallInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_app_ranks_app_id_apps"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["snapshot_id"],
            ["snapshots.id"],
            name=op.f("fk_app_ranks_snapshot_id_snapshots"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("app_id", "chart_id", "snapshot_id", name=op.f("pk_app_ranks")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "fetch_log",
        sa.Column("chart_id", sa.Integer(), nullable=False),
        sa.Column("started_at", _utc(), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.SmallInteger(), nullable=False),
        sa.Column("http_status", sa.SmallInteger(), nullable=True),
        sa.Column("body_bytes", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("recovered", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("error_class", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["chart_id"],
            ["charts.id"],
            name=op.f("fk_fetch_log_chart_id_charts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("chart_id", "started_at", name=op.f("pk_fetch_log")),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("fetch_log")
    op.drop_table("app_ranks")
    op.drop_table("snapshots")
    op.drop_index(op.f("ix_poll_tasks_enabled_next_due_at"), table_name="poll_tasks")
    op.drop_table("poll_tasks")
    op.drop_table("charts")
    op.drop_index("ix_apps_tracked", table_name="apps")
    op.drop_table("apps")
