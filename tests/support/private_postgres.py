"""A throwaway PostgreSQL cluster that a test may stop and restart, beside the shared server.

    with private_postgres() as cluster:               # initdb + start: a second or two
        url = cluster.create_database()               # a fresh database, SQLAlchemy URL
        cluster.restart()                             # same port: clients reconnect
        cluster.stop("immediate")                     # as a crash would; start() again

The cluster runs as the `postgres` OS user (initdb refuses root), listens on 127.0.0.1 on a
free port that it keeps across restarts, trusts every local connection, and does not flush
to disk (fsync off): it only lives for the tests. Where it cannot be run (not
root, no PostgreSQL binaries) `require_private_postgres` skips with the reason, except under
CI=true, where that is a failure (as tests/conftest.py does for the shared server).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import psycopg
from psycopg import sql

from tests.support.processes import free_port
from tests.support.requirements import unavailable

POSTGRES_LIBS = Path("/usr/lib/postgresql")
OS_USER = "postgres"
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    # Fast without changing what a client sees: a commit reaches the OS before it is
    # acknowledged (synchronous_commit stays on), so a crash of the server (stop "immediate")
    # loses nothing committed; only a crash of the machine would.
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "'32MB'",
    "max_connections": "40",
    "log_min_messages": "warning",
}


def postgres_binaries() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian layout)."""
    versions = sorted(
        (path for path in POSTGRES_LIBS.glob("*/bin") if (path / "initdb").exists()),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    return versions[-1] if versions else None


def unavailable_reason() -> str | None:
    """Why no private cluster can run here, or None."""
    if postgres_binaries() is None:
        return f"no PostgreSQL binaries under {POSTGRES_LIBS}"
    if os.geteuid() != 0:
        return "starting a cluster as the postgres OS user needs root"
    if shutil.which("runuser") is None:
        return "runuser is missing"
    return None


def require_private_postgres() -> None:
    reason = unavailable_reason()
    if reason is not None:
        unavailable("a private PostgreSQL cluster", reason)


class PrivatePostgres:
    """One cluster in `directory` (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        binaries = postgres_binaries()
        assert binaries is not None, unavailable_reason()
        self._bin = binaries
        self.directory = directory
        self.data = directory / "data"
        self.log = directory / "postgres.log"
        self.port = free_port()

    @property
    def admin_url(self) -> str:
        """libpq URL of the `postgres` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of `database`, as the service is configured with."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        shutil.chown(self.directory, OS_USER, OS_USER)
        self._as_postgres(
            "initdb",
            "--pgdata",
            str(self.data),
            "--username",
            "postgres",
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-sync",
        )
        settings = {**SETTINGS, "port": str(self.port), "unix_socket_directories": "''"}
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def start(self) -> None:
        self._as_postgres(
            "pg_ctl", "--pgdata", str(self.data), "--log", str(self.log), "-w", "start"
        )

    def stop(self, mode: Literal["immediate", "fast"] = "fast") -> None:
        """`immediate`: the postmaster and its backends die as in a crash (recovery at the
        next start); `fast`: open transactions are rolled back and clients disconnected."""
        self._as_postgres("pg_ctl", "--pgdata", str(self.data), "--mode", mode, "-w", "stop")

    def restart(self, mode: Literal["immediate", "fast"] = "fast") -> None:
        self.stop(mode)
        self.start()

    @property
    def running(self) -> bool:
        status = subprocess.run(
            [
                "runuser",
                "-u",
                OS_USER,
                "--",
                str(self._bin / "pg_ctl"),
                "status",
                "-D",
                str(self.data),
            ],
            capture_output=True,
            check=False,
        )
        return status.returncode == 0

    def create_database(self) -> str:
        """A fresh empty database; its SQLAlchemy URL."""
        name = f"arm_fault_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def _as_postgres(self, program: str, *args: str) -> None:
        command = ["runuser", "-u", OS_USER, "--", str(self._bin / program), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise AssertionError(
                f"{program} failed ({done.returncode}):\n{done.stdout}{done.stderr}\n{log}"
            )


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started cluster in a new directory, stopped (immediately) and deleted afterwards.
    The directory is made in the system's temporary directory, not pytest's: the postgres
    user must be able to reach it, and pytest's base directory is private to root."""
    require_private_postgres()
    cluster = PrivatePostgres(Path(tempfile.mkdtemp(prefix="arm-postgres-")))
    cluster.init()
    try:
        cluster.start()
        yield cluster
    finally:
        if cluster.running:
            cluster.stop("immediate")
        shutil.rmtree(cluster.directory, ignore_errors=True)
