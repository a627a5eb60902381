"""What every command shares: settings, database access, errors, time and format options."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from monitor import lookups
from monitor.config import Settings, load_settings
from monitor.config_types import redact_url_password
from monitor.errors import MonitorError
from monitor.logs import configure_logging
from monitor.model import Store
from monitor.output import OutputFormat
from monitor.store.engine import Database, open_database
from monitor.store.migrate import current_revision
from monitor.store.repository import Repository

FORMAT_OPTION = click.option(
    "--format",
    "fmt",
    type=click.Choice([f.value for f in OutputFormat]),
    default=OutputFormat.TABLE.value,
    show_default=True,
    help="Output format.",
)


class CommandFailed(click.ClickException):
    """The command could not run at all."""

    exit_code = 2


@dataclasses.dataclass
class CliState:
    config_path: Path | None
    settings: Settings | None = None


class MonitorGroup(click.Group):
    """Turns the service's errors into exit status 2 with one line, not a traceback.

    MonitorError covers what the store reports (a locked file, a failed transaction); a
    database that cannot be reached at all fails inside SQLAlchemy or Alembic first.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MonitorError as exc:
            raise CommandFailed(str(exc)) from None
        except SQLAlchemyError as exc:
            raise CommandFailed(database_problem(ctx, exc)) from None


def database_problem(ctx: click.Context, exc: SQLAlchemyError) -> str:
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    detail = lines[0] if lines else type(cause).__name__
    state = ctx.find_object(CliState)
    if state is None or state.settings is None:
        return f"database error: {detail}"
    url = redact_url_password(state.settings.database.url)
    return f"cannot use the database {url}: {detail}"


def settings_of(ctx: click.Context) -> Settings:
    state: CliState = ctx.ensure_object(CliState)
    if state.settings is None:
        try:
            state.settings = load_settings(state.config_path)
        except MonitorError as exc:
            raise CommandFailed(str(exc)) from None
        configure_logging(state.settings.log.format, state.settings.log.level)
    return state.settings


def open_or_fail(settings: Settings, *, writer: bool, exclusive: bool = True) -> Database:
    try:
        return open_database(settings.database.url, writer=writer, exclusive=exclusive)
    except MonitorError as exc:
        raise CommandFailed(str(exc)) from None


@contextlib.contextmanager
def reading(settings: Settings) -> Iterator[Repository]:
    """A read-only repository; refuses a database without the schema instead of creating one."""
    with _migrated(settings, writer=False) as database:
        yield Repository(database)


@contextlib.contextmanager
def writing(settings: Settings) -> Iterator[Repository]:
    """A repository for a command that changes a few rows (silences), also while the service
    runs on the same SQLite file; like `reading`, it refuses a database without the schema."""
    with _migrated(settings, writer=True, exclusive=False) as database:
        yield Repository(database)


@contextlib.contextmanager
def _migrated(settings: Settings, *, writer: bool, exclusive: bool = True) -> Iterator[Database]:
    with open_or_fail(settings, writer=writer, exclusive=exclusive) as database:
        with quiet_alembic():
            revision = current_revision(database)
        if revision is None:
            url = redact_url_password(settings.database.url)
            raise CommandFailed(f"database {url} has no schema: run `app-rank-monitor migrate`")
        yield database


@contextlib.contextmanager
def quiet_alembic() -> Iterator[None]:
    """Without Alembic's INFO lines about DDL, for commands that only read the schema
    (still shown at DEBUG)."""
    alembic_log = logging.getLogger("alembic")
    level, effective = alembic_log.level, alembic_log.getEffectiveLevel()
    if effective > logging.DEBUG:
        alembic_log.setLevel(max(logging.WARNING, effective))
    try:
        yield
    finally:
        alembic_log.setLevel(level)


def parse_time(text: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """See monitor.lookups.parse_time; a usage error for what it cannot read."""
    try:
        return lookups.parse_time(text, now=now)
    except lookups.LookupFailed as exc:
        raise click.BadParameter(str(exc)) from None


def country_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """A storefront code as the charts name it: two letters, any case given."""
    if value is None:
        return None
    code = value.strip().lower()
    if not re.fullmatch(r"[a-z]{2}", code):
        raise click.BadParameter(f"expected a two-letter storefront code such as us, got {value!r}")
    return code


def time_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    return None if value is None else parse_time(value)


def watchlist_apps(
    ref: str, names: Mapping[tuple[Store, str], str], *, param_hint: str
) -> list[tuple[Store, str]]:
    """The watchlist apps `ref` names, by watchlist name (any case) or store id; a usage error
    listing the watchlist when there is none."""
    try:
        return lookups.watchlist_apps(ref, names)
    except lookups.LookupFailed as exc:
        raise click.BadParameter(str(exc), param_hint=param_hint) from None
