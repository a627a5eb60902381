"""Retention: daily summaries, once-a-day jobs, app_ranks keyed by fetch time, monthly
partitions on PostgreSQL.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05

- `daily_ranks` holds what retention folds snapshots into; `charts.folded_before` says up to
  where; `job_runs` lets one replica of many run a once-a-day job.
- `app_ranks` refers to its snapshot by (chart_id, fetched_at) instead of the snapshot's id,
  with no foreign key to it; nor do the alert tables' snapshot ids keep theirs. The rows are
  rewritten on both backends.
- PostgreSQL: `snapshots`, `app_ranks` and `fetch_log` become partitioned by month (see
  monitor/store/partitions.py). Their rows are copied into the new tables: the upgrade takes
  about as long as copying the history once, under the migration's lock.

The downgrade puts the former tables back with every row still stored; the daily summaries
(rows retention has already folded, whose snapshots are gone) are lost.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from monitor.store import partitions

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_OLD = "_pre0005"
_SNAPSHOT_KEYS = ("pk_snapshots", "uq_snapshots_chart_id_fetched_at")
_PARTITIONED_SNAPSHOT_KEY = {"pk_snapshots": "PRIMARY KEY (id, fetched_at)"}
_SNAPSHOT_FOREIGN_KEYS = (
    ("alert_events", "snapshot_id", "SET NULL"),
    ("alert_holds", "baseline_snapshot_id", "CASCADE"),
    ("alert_holds", "held_snapshot_id", "CASCADE"),
)


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table, column, _ in _SNAPSHOT_FOREIGN_KEYS:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"fk_{table}_{column}_snapshots", type_="foreignkey")
    with op.batch_alter_table("charts") as batch:
        batch.add_column(sa.Column("folded_before", _utc(), nullable=True))
    op.create_table(
        "daily_ranks",
        sa.Column("chart_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("depth", sa.SmallInteger(), nullable=False),
        sa.Column("snapshots", sa.SmallInteger(), nullable=False),
        sa.Column("app_ids", sa.LargeBinary(), nullable=False),
        sa.Column("stats", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["chart_id"],
            ["charts.id"],
            name=op.f("fk_daily_ranks_chart_id_charts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("chart_id", "day", name=op.f("pk_daily_ranks")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "job_runs",
        sa.Column("job", sa.String(length=32), nullable=False),
        sa.Column("period_start", _utc(), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("started_at", _utc(), nullable=False),
        sa.Column("finished_at", _utc(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("job", "period_start", name=op.f("pk_job_runs")),
    )
    if postgresql:
        _rename_aside("app_ranks", "pk_app_ranks")
        # The unique keys of a partitioned table must hold its partition key.
        _partition_like("snapshots", "fetched_at", _SNAPSHOT_KEYS, _PARTITIONED_SNAPSHOT_KEY)
        _partition_like("fetch_log", "started_at", ("pk_fetch_log",))
        op.execute("ALTER SEQUENCE snapshots_id_seq OWNED BY snapshots.id")
        _create_app_ranks(postgresql_partition_by="RANGE (fetched_at)")
        _make_partitions("app_ranks", "fetched_at", source=f"snapshots{_OLD}")
    else:
        _rename_aside("app_ranks")
        _create_app_ranks()
    op.execute(
        "INSERT INTO app_ranks (app_id, chart_id, fetched_at, rank)"
        " SELECT r.app_id, r.chart_id, s.fetched_at, r.rank"
        f" FROM app_ranks{_OLD} r JOIN snapshots s ON s.id = r.snapshot_id"
    )
    op.drop_table(f"app_ranks{_OLD}")
    if postgresql:
        op.drop_table(f"snapshots{_OLD}")
        op.drop_table(f"fetch_log{_OLD}")


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    _rename_aside("app_ranks", *(["pk_app_ranks"] if postgresql else []))
    if postgresql:
        _unpartition("snapshots", _SNAPSHOT_KEYS, {"pk_snapshots": "PRIMARY KEY (id)"})
        _unpartition("fetch_log", ("pk_fetch_log",))
        op.execute("ALTER SEQUENCE snapshots_id_seq OWNED BY snapshots.id")
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
    op.execute(
        "INSERT INTO app_ranks (app_id, chart_id, snapshot_id, rank)"
        " SELECT r.app_id, r.chart_id, s.id, r.rank FROM app_ranks_pre0005 r"
        " JOIN snapshots s ON s.chart_id = r.chart_id AND s.fetched_at = r.fetched_at"
    )
    op.drop_table(f"app_ranks{_OLD}")
    if postgresql:
        op.drop_table(f"snapshots{_OLD}")
        op.drop_table(f"fetch_log{_OLD}")
    op.drop_table("job_runs")
    op.drop_table("daily_ranks")
    with op.batch_alter_table("charts") as batch:
        batch.drop_column("folded_before")
    for table, column, on_delete in _SNAPSHOT_FOREIGN_KEYS:
        with op.batch_alter_table(table) as batch:
            batch.create_foreign_key(
                f"fk_{table}_{column}_snapshots",
                "snapshots",
                [column],
                ["id"],
                ondelete=on_delete,
            )


def _create_app_ranks(**kwargs: str) -> None:
    op.create_table(
        "app_ranks",
        sa.Column("app_id", sa.Integer(), nullable=False),
        sa.Column("chart_id", sa.Integer(), nullable=False),
        sa.Column("fetched_at", _utc(), nullable=False),
        sa.Column("rank", sa.SmallInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_app_ranks_app_id_apps"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["chart_id"],
            ["charts.id"],
            name=op.f("fk_app_ranks_chart_id_charts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("app_id", "chart_id", "fetched_at", name=op.f("pk_app_ranks")),
        sqlite_with_rowid=False,
        **kwargs,
    )


def _rename_aside(table: str, *indexed_constraints: str) -> None:
    """Rename `table` out of the way, and on PostgreSQL those of its constraints that own an
    index (index names are unique in a schema, so the new table could not take them)."""
    for constraint in indexed_constraints:
        op.execute(f"ALTER TABLE {table} RENAME CONSTRAINT {constraint} TO {constraint}{_OLD}")
    op.rename_table(table, f"{table}{_OLD}")


def _partition_like(
    table: str, column: str, keys: Sequence[str], changed: dict[str, str] | None = None
) -> None:
    """PostgreSQL: `table` again, partitioned by month on `column`, with every row; its
    constraints `keys` as they were, but for those `changed`."""
    definitions = {**_definitions(table, keys), **(changed or {})}
    _rename_aside(table, *keys)
    op.execute(
        f"CREATE TABLE {table} (LIKE {table}{_OLD} INCLUDING DEFAULTS INCLUDING STORAGE)"
        f" PARTITION BY RANGE ({column})"
    )
    _add_constraints(table, definitions)
    _make_partitions(table, column, source=f"{table}{_OLD}")
    op.execute(f"INSERT INTO {table} SELECT * FROM {table}{_OLD}")


def _unpartition(table: str, keys: Sequence[str], changed: dict[str, str] | None = None) -> None:
    """PostgreSQL: `table` again as one plain table, with every row, as `_partition_like`."""
    definitions = {**_definitions(table, keys), **(changed or {})}
    _rename_aside(table, *keys)
    op.execute(f"CREATE TABLE {table} (LIKE {table}{_OLD} INCLUDING DEFAULTS INCLUDING STORAGE)")
    op.execute(f"INSERT INTO {table} SELECT * FROM {table}{_OLD}")
    _add_constraints(table, definitions)


def _definitions(table: str, names: Sequence[str]) -> dict[str, str]:
    """Constraint name -> its definition, as PostgreSQL states it."""
    rows = op.get_bind().execute(
        sa.text(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = CAST(:table AS regclass) AND conname = ANY(:names)"
        ),
        {"table": table, "names": list(names)},
    )
    return dict(rows.all())


def _add_constraints(table: str, definitions: dict[str, str]) -> None:
    for name, definition in definitions.items():
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}")
    op.execute(
        f"ALTER TABLE {table} ADD CONSTRAINT fk_{table}_chart_id_charts"
        " FOREIGN KEY (chart_id) REFERENCES charts (id) ON DELETE CASCADE"
    )


def _make_partitions(table: str, column: str, *, source: str) -> None:
    """The default partition of `table` and a month for each month of `source`'s rows, up to
    the ones retention would make ahead of now."""
    bind = op.get_bind()
    partitions.create_parent(bind, table)
    first = bind.execute(sa.text(f"SELECT min({column}) FROM {source}")).scalar()
    now = dt.datetime.now(dt.UTC)
    for month in partitions.months(first or now, partitions.last_month_ahead(now)):
        partitions.create_month(bind, partitions.MonthPartition(table, month), column)
