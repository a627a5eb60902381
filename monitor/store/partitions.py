"""PostgreSQL's monthly range partitions of the tables that grow with every poll.

Each of `snapshots`, `app_ranks` and `fetch_log` is partitioned on its time column into one
table a month, `<table>_pYYYYMM`, plus a default partition, `<table>_default`, that takes a
row no month covers yet (a replay of old payloads, a clock far ahead): no write ever fails
for want of a partition. Retention creates the coming months ahead of need; a month made
while the default partition holds rows of it takes those rows over. Retention drops a month
as a whole once it is past (store/retention.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import time
from collections.abc import Callable, Iterable

from sqlalchemy import Connection, Engine, text

from monitor.errors import StoreError
from monitor.store.sql import in_transaction, sqlstate

log = logging.getLogger(__name__)

# Table -> the time column it is partitioned on.
PARTITIONED = {"snapshots": "fetched_at", "app_ranks": "fetched_at", "fetch_log": "started_at"}
_NAME = re.compile(r"^(?P<table>snapshots|app_ranks|fetch_log)_(?:p(?P<month>\d{6})|default)$")
# Months made ahead of the current one: a month's partition exists before its first write.
MONTHS_AHEAD = 2
# Making or dropping a month waits at most this long at a time for its table's lock, this many
# times, with this pause between the waits (alter_briefly).
DDL_LOCK_WAIT_MS = 1_000
DDL_ATTEMPTS = 5
DDL_RETRY_PAUSE_SECONDS = 2.0
LOCK_NOT_AVAILABLE = "55P03"


def is_partition(name: str) -> bool:
    """Whether `name` is one of the partitions made here (schema checks leave them out: the
    table metadata describes their parents)."""
    return _NAME.match(name) is not None


def month_start(moment: dt.datetime | dt.date) -> dt.date:
    return dt.date(moment.year, moment.month, 1)


def next_month(month: dt.date) -> dt.date:
    return dt.date(month.year + month.month // 12, month.month % 12 + 1, 1)


def months(first: dt.datetime | dt.date, last: dt.datetime | dt.date) -> list[dt.date]:
    """Every month from the one of `first` to the one of `last`, both included."""
    found, month, final = [], month_start(first), month_start(last)
    while month <= final:
        found.append(month)
        month = next_month(month)
    return found


def last_month_ahead(now: dt.datetime) -> dt.date:
    """The last month whose partition exists ahead of `now`."""
    month = month_start(now)
    for _ in range(MONTHS_AHEAD):
        month = next_month(month)
    return month


def _bound(month: dt.date) -> str:
    return f"{month:%Y-%m-%d} 00:00:00+00"


@dataclasses.dataclass(frozen=True, order=True)
class MonthPartition:
    table: str
    month: dt.date

    @property
    def name(self) -> str:
        return f"{self.table}_p{self.month:%Y%m}"

    @property
    def end(self) -> dt.datetime:
        """The first moment past the month, in UTC."""
        end = next_month(self.month)
        return dt.datetime(end.year, end.month, end.day, tzinfo=dt.UTC)


def default_partition(table: str) -> str:
    return f"{table}_default"


def create_parent(connection: Connection, table: str) -> None:
    """The default partition of a partitioned `table` (the parent exists already)."""
    connection.exec_driver_sql(
        f"CREATE TABLE IF NOT EXISTS {default_partition(table)} PARTITION OF {table} DEFAULT"
    )


def month_partitions(connection: Connection, table: str) -> list[MonthPartition]:
    """The monthly partitions of `table`, oldest first."""
    names = connection.scalars(
        text(
            "SELECT child.relname FROM pg_inherits"
            " JOIN pg_class child ON child.oid = pg_inherits.inhrelid"
            " JOIN pg_class parent ON parent.oid = pg_inherits.inhparent"
            " WHERE parent.relname = :table AND parent.relnamespace = child.relnamespace"
            " AND parent.relnamespace = to_regnamespace(current_schema())::oid"
        ),
        {"table": table},
    )
    found = []
    for name in names:
        match = _NAME.match(name)
        if match is not None and match["month"] is not None:
            month = dt.datetime.strptime(match["month"], "%Y%m").replace(tzinfo=dt.UTC).date()
            found.append(MonthPartition(table, month))
    return sorted(found)


def ensure_months(connection: Connection, wanted: Iterable[dt.date]) -> list[MonthPartition]:
    """Make the monthly partitions of `wanted` months that are missing, for every partitioned
    table; returns the ones made."""
    made = []
    for table, column in PARTITIONED.items():
        existing = {partition.month for partition in month_partitions(connection, table)}
        for month in sorted(set(map(month_start, wanted)) - existing):
            partition = MonthPartition(table, month)
            create_month(connection, partition, column)
            made.append(partition)
    return made


def create_month(connection: Connection, partition: MonthPartition, column: str) -> None:
    table, default = partition.table, default_partition(partition.table)
    lower, upper = _bound(partition.month), _bound(next_month(partition.month))
    in_month = f"{column} >= '{lower}' AND {column} < '{upper}'"
    has_rows = connection.exec_driver_sql(f"SELECT 1 FROM {default} WHERE {in_month} LIMIT 1")
    if has_rows.first() is None:
        connection.exec_driver_sql(
            f"CREATE TABLE {partition.name} PARTITION OF {table}"
            f" FOR VALUES FROM ('{lower}') TO ('{upper}')"
        )
        return
    # A partition may not be made for rows the default one holds: they move to a table of
    # their own first, which is then attached as the month.
    connection.exec_driver_sql(
        f"CREATE TABLE {partition.name}"
        f" (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)"
    )
    connection.exec_driver_sql(
        f"WITH moved AS (DELETE FROM {default} WHERE {in_month} RETURNING *)"
        f" INSERT INTO {partition.name} SELECT * FROM moved"
    )
    connection.exec_driver_sql(
        f"ALTER TABLE {table} ATTACH PARTITION {partition.name}"
        f" FOR VALUES FROM ('{lower}') TO ('{upper}')"
    )


def drop_month(connection: Connection, partition: MonthPartition) -> None:
    connection.exec_driver_sql(f"DROP TABLE {partition.name}")


def make_months_ahead(engine: Engine, now: dt.datetime) -> list[str]:
    """Make the partitions of the month of `now` and the MONTHS_AHEAD after it that are
    missing; returns their names (none when a table stayed busy: see alter_briefly)."""
    wanted = months(now, last_month_ahead(now))
    made: list[MonthPartition] = []

    def make(connection: Connection) -> None:
        made[:] = ensure_months(connection, wanted)

    if not alter_briefly(engine, make, "making partitions"):
        return []
    return [partition.name for partition in made]


def alter_briefly(engine: Engine, work: Callable[[Connection], None], what: str) -> bool:
    """Run DDL `work` in a transaction that waits at most DDL_LOCK_WAIT_MS at a time for its
    table's lock (while DDL waits, the service's writes to the table wait behind it); False
    when the table stayed busy for DDL_ATTEMPTS waits: `what` is left for the next run."""

    def briefly(connection: Connection) -> None:
        connection.exec_driver_sql(f"SET LOCAL lock_timeout = '{DDL_LOCK_WAIT_MS}ms'")
        work(connection)

    for attempt in range(1, DDL_ATTEMPTS + 1):
        try:
            in_transaction(engine, briefly)
        except StoreError as exc:
            if sqlstate(exc.__cause__) != LOCK_NOT_AVAILABLE:
                raise
            log.info("%s: table busy (attempt %d of %d)", what, attempt, DDL_ATTEMPTS)
            if attempt < DDL_ATTEMPTS:
                time.sleep(DDL_RETRY_PAUSE_SECONDS)
        else:
            return True
    log.warning("%s left for the next run: its table stayed busy", what)
    return False
