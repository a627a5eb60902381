"""fetch_log.body_sample: the head of a feed body that did not parse.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

A 200 with an HTML error page, cut or reshaped JSON is a failed fetch; its first bytes
(capped by monitor.polling) are kept so the failure can be understood after the fact. Rows
written before this revision keep NULL, as do all fetches whose body parsed or never came.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: added in place on both backends, however long the log (see 0002).
    with op.batch_alter_table("fetch_log") as batch:
        batch.add_column(sa.Column("body_sample", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    # WITHOUT ROWID is restated for SQLite's table rebuild, as in 0002.
    with op.batch_alter_table("fetch_log", table_kwargs={"sqlite_with_rowid": False}) as batch:
        batch.drop_column("body_sample")
