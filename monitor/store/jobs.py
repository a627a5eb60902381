"""Jobs that run once per period across every replica sharing a database.

A replica runs a period's job only if it inserts the period's `job_runs` row, or takes over
the row of a run that has neither finished nor been heard of for `stale_after` (its replica
died mid-run): on PostgreSQL the primary key decides between replicas claiming at the same
moment; on SQLite there is only one writer. A job must be idempotent all the same, since a
run taken over may have done part of its work.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Connection, and_, select, update

from monitor.store.sql import insert_ignoring_conflicts
from monitor.store.tables import job_runs


def claim(
    connection: Connection,
    dialect: str,
    *,
    job: str,
    period_start: dt.datetime,
    owner: str,
    now: dt.datetime,
    stale_after: dt.timedelta,
) -> bool:
    """Whether this replica is to run `job` for the period starting at `period_start`."""
    inserted = connection.execute(
        insert_ignoring_conflicts(job_runs, dialect).returning(job_runs.c.job),
        {"job": job, "period_start": period_start, "owner": owner, "started_at": now},
    ).first()
    if inserted is not None:
        return True
    taken_over = connection.execute(
        update(job_runs)
        .where(
            job_runs.c.job == job,
            job_runs.c.period_start == period_start,
            job_runs.c.finished_at.is_(None),
            job_runs.c.started_at < now - stale_after,
        )
        .values(owner=owner, started_at=now)
        .returning(job_runs.c.job)
    ).first()
    return taken_over is not None


def finish(
    connection: Connection,
    *,
    job: str,
    period_start: dt.datetime,
    owner: str,
    now: dt.datetime,
    outcome: str,
) -> None:
    """Record how this replica's run of the period ended (nothing if another took it over)."""
    connection.execute(
        update(job_runs)
        .where(
            and_(
                job_runs.c.job == job,
                job_runs.c.period_start == period_start,
                job_runs.c.owner == owner,
            )
        )
        .values(finished_at=now, outcome=outcome)
    )


def last_finished(connection: Connection, job: str) -> dt.datetime | None:
    return connection.scalar(
        select(job_runs.c.finished_at)
        .where(job_runs.c.job == job, job_runs.c.finished_at.is_not(None))
        .order_by(job_runs.c.period_start.desc())
        .limit(1)
    )
