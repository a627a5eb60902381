"""Shared fixtures: database URLs for the contract tests run on SQLite and PostgreSQL.

PostgreSQL tests need MONITOR_TEST_POSTGRES_URL (e.g.
postgresql+psycopg://postgres@127.0.0.1:5432/test). Without it, or when the server is
unreachable, they skip with the reason, except under CI=true where that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from monitor.store.engine import Database, open_database
from monitor.store.migrate import upgrade
from tests.support.requirements import unavailable

REPO_ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ENV = "MONITOR_TEST_POSTGRES_URL"


def _libpq_url(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


def _postgres_unavailable(reason: str) -> None:
    unavailable("PostgreSQL", reason)


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        _postgres_unavailable(f"{POSTGRES_ENV} is not set")
        raise AssertionError("unreachable")
    try:
        with psycopg.connect(_libpq_url(url), connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        _postgres_unavailable(f"cannot connect to {url}: {exc}")
    return url


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"arm_test_{uuid.uuid4().hex[:12]}"
    admin = _libpq_url(postgres_admin_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base, _, _ = postgres_admin_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'monitor.sqlite3'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """Runs a test once on SQLite and once on PostgreSQL (the contract both must honour)."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url


@contextlib.contextmanager
def migrated(url: str) -> Iterator[Database]:
    """The database at `url`, opened as its writer and migrated to the newest schema."""
    with open_database(url, writer=True) as db:
        upgrade(db)
        yield db


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """A migrated database, on SQLite and on PostgreSQL (see `database_url`)."""
    with migrated(database_url) as db:
        yield db


@pytest.fixture
def sqlite_database(sqlite_url: str) -> Iterator[Database]:
    """A migrated SQLite database, for what only one backend needs to show."""
    with migrated(sqlite_url) as db:
        yield db


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the service runs on asyncio (asyncio.timeout, to_thread)
