"""Alembic environment: runs the migrations on the connection `Database.migrate()` hands over.

Run from the alembic CLI instead, it connects to `sqlalchemy.url` from the ini file or, when that is
unset, to the configured `INNKEEPER_DATABASE_URL` / default SQLite file.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from innkeeper.core.db.schema import Base


def _configure_and_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite can only ALTER most things by copying the table, which batch mode does.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_from_cli() -> None:
    from innkeeper.core.db.database import Database
    from innkeeper.core.settings import get_settings

    url = context.config.get_main_option("sqlalchemy.url") or get_settings().db_url
    database = Database(url)
    try:
        with database.engine.begin() as connection:
            _configure_and_run(connection)
    finally:
        database.engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
connection = context.config.attributes.get("connection")
if connection is None:
    _run_from_cli()
else:
    _configure_and_run(connection)
