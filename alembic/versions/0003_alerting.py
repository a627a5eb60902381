"""Alerting: rule episodes, glitch holds, alert events, the notification outbox, silences.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

New tables only: nothing stored before changes. Alerts start from the first snapshot written
after the upgrade (the snapshot before it is their baseline).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "alert_episodes",
        sa.Column("rule", sa.String(length=64), nullable=False),
        sa.Column("app_id", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=128), nullable=False),
        sa.Column("chart_id", sa.Integer(), nullable=True),
        sa.Column("since", _utc(), nullable=False),
        sa.Column("polls", sa.Integer(), nullable=False),
        sa.Column("firing", sa.Boolean(), nullable=False),
        sa.Column("notified_at", _utc(), nullable=True),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_alert_episodes_app_id_apps"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["chart_id"],
            ["charts.id"],
            name=op.f("fk_alert_episodes_chart_id_charts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("rule", "app_id", "target", name=op.f("pk_alert_episodes")),
    )
    with op.batch_alter_table("alert_episodes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alert_episodes_chart_id"), ["chart_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_alert_episodes_target"), ["target"], unique=False)

    op.create_table(
        "alert_events",
        sa.Column("id", RowId, nullable=False),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("app_id", sa.Integer(), nullable=False),
        sa.Column("chart_id", sa.Integer(), nullable=True),
        sa.Column("snapshot_id", RowId, nullable=True),
        sa.Column("rank", sa.SmallInteger(), nullable=True),
        sa.Column("previous_rank", sa.SmallInteger(), nullable=True),
        sa.Column("depth", sa.SmallInteger(), nullable=True),
        sa.Column("rule", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("facts", sa.Text(), nullable=False),
        sa.Column("silenced_by", sa.Text(), nullable=True),
        sa.Column("dedupe_key", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_alert_events_app_id_apps"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["chart_id"],
            ["charts.id"],
            name=op.f("fk_alert_events_chart_id_charts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["snapshot_id"],
            ["snapshots.id"],
            name=op.f("fk_alert_events_snapshot_id_snapshots"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_events")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_alert_events_dedupe_key")),
    )
    with op.batch_alter_table("alert_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alert_events_at"), ["at"], unique=False)

    op.create_table(
        "alert_holds",
        sa.Column("chart_id", sa.Integer(), nullable=False),
        sa.Column("baseline_snapshot_id", RowId, nullable=False),
        sa.Column("held_snapshot_id", RowId, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["baseline_snapshot_id"],
            ["snapshots.id"],
            name=op.f("fk_alert_holds_baseline_snapshot_id_snapshots"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["chart_id"],
            ["charts.id"],
            name=op.f("fk_alert_holds_chart_id_charts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["held_snapshot_id"],
            ["snapshots.id"],
            name=op.f("fk_alert_holds_held_snapshot_id_snapshots"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("chart_id", name=op.f("pk_alert_holds")),
    )
    op.create_table(
        "notifications",
        sa.Column("id", RowId, nullable=False),
        sa.Column("event_id", RowId, nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("recipient", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("not_before", _utc(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("message_id", sa.String(length=255), nullable=True),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("claimed_until", _utc(), nullable=True),
        sa.Column("sent_at", _utc(), nullable=True),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["alert_events.id"],
            name=op.f("fk_notifications_event_id_alert_events"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
        sa.UniqueConstraint(
            "event_id",
            "channel",
            "recipient",
            name=op.f("uq_notifications_event_id_channel_recipient"),
        ),
    )
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_notifications_state_not_before"), ["state", "not_before"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_notifications_message_id"), ["message_id"], unique=False
        )

    op.create_table(
        "delivery_attempts",
        sa.Column("id", RowId, nullable=False),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("recipient", sa.Text(), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_attempts")),
    )
    with op.batch_alter_table("delivery_attempts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_delivery_attempts_message_id"), ["message_id"], unique=False
        )

    op.create_table(
        "silences",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("until", _utc(), nullable=False),
        sa.Column("apps", sa.Text(), nullable=False),
        sa.Column("countries", sa.Text(), nullable=False),
        sa.Column("rules", sa.Text(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("expired_at", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_silences")),
    )


def downgrade() -> None:
    op.drop_table("silences")
    with op.batch_alter_table("delivery_attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_delivery_attempts_message_id"))

    op.drop_table("delivery_attempts")
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notifications_message_id"))
        batch_op.drop_index(batch_op.f("ix_notifications_state_not_before"))

    op.drop_table("notifications")
    op.drop_table("alert_holds")
    with op.batch_alter_table("alert_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alert_events_at"))

    op.drop_table("alert_events")
    with op.batch_alter_table("alert_episodes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alert_episodes_target"))
        batch_op.drop_index(batch_op.f("ix_alert_episodes_chart_id"))

    op.drop_table("alert_episodes")
