"""fetch_log.poll_started_at: group the fetches of one poll.

Revision ID: 0002
Revises: 0001
Create Date: 2026-05-28

A poll that fails on a feed and then on its fallback logs two rows; history must show it as
one failure. Rows written before this revision keep NULL, which reads as "starts its own
poll": their history is what it was.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A nullable column without a default: SQLite adds it in place (no table rebuild), and so
    # does PostgreSQL (no table rewrite), however long the log.
    with op.batch_alter_table("fetch_log") as batch:
        batch.add_column(sa.Column("poll_started_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # SQLite rebuilds the table to drop a column; reflection does not see WITHOUT ROWID, so
    # it is restated here or the rebuilt table would get a rowid b-tree it never had.
    with op.batch_alter_table("fetch_log", table_kwargs={"sqlite_with_rowid": False}) as batch:
        batch.drop_column("poll_started_at")
