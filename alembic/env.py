"""Alembic environment: the service's table metadata, engine setup and settings.

Programmatic runs (monitor.store.migrate) hand over a connection that is already in the
migration transaction; command-line runs open the database like the service does (SQLite
writer lock included) and take the URL from `-x url=...` or the settings.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from monitor.store import migrate
from monitor.store.engine import open_database
from monitor.store.tables import metadata

config = context.config
# Only the command line configures logging: a programmatic run belongs to a service that did.
if config.config_file_name is not None and "connection" not in config.attributes:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        **migrate.context_options(connection.dialect.name),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    url = migrate.configured_url(config)
    context.configure(
        url=url,
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **migrate.context_options(url.partition(":")[0].partition("+")[0]),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    url = migrate.configured_url(config)
    writer = not migrate.is_read_only(config)
    with (
        open_database(url, writer=writer) as database,
        migrate.migration_connection(database) as connection,
    ):
        run(connection)


if context.is_offline_mode():
    run_offline()
else:
    run_online()
