"""`innkeeper db` and `innkeeper bookings`: the schema, seed data and the bookings in the hotel database."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer
from rich.table import Table

from innkeeper.cli.common import cli_settings, console

db_app = typer.Typer(help="Database schema and seed data.", no_args_is_help=True)
bookings_app = typer.Typer(help="Bookings in the hotel database.", no_args_is_help=True)


# ---------------------------------------------------------------------- database
@db_app.command("init")
def db_init() -> None:
    """Create or upgrade the schema (Alembic migrations)."""
    from innkeeper.core.db.database import Database

    settings = cli_settings()
    Database.from_settings(settings).migrate()
    console.print(f"database ready: {_redact(settings.db_url)}")


@db_app.command("seed")
def db_seed() -> None:
    """Load room types and rates from the hotel file (idempotent)."""
    from innkeeper.core.db.database import Database
    from innkeeper.core.hotel import load_hotel

    settings = cli_settings()
    db = Database.from_settings(settings)
    db.migrate()
    db.seed(load_hotel(settings.hotel_file))
    console.print(f"seeded from {settings.hotel_file}")


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


# ---------------------------------------------------------------------- bookings
@bookings_app.command("list")
def bookings_list(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """List bookings, newest last."""
    from innkeeper.serve.runtime import AgentRuntime

    runtime = AgentRuntime.from_settings(cli_settings(), use_llm=False)
    bookings = runtime.tools.list_bookings()
    if as_json:
        print(json.dumps([asdict(b) for b in bookings], default=str, indent=2))
        return
    table = Table("code", "guest", "room", "check-in", "check-out", "guests", "status", "total")
    for b in bookings:
        table.add_row(
            b.code,
            f"{b.first_name} {b.last_name}",
            b.room_type,
            str(b.check_in),
            str(b.check_out),
            str(b.guests),
            b.status,
            f"{b.total} {b.currency}",
        )
    console.print(table)
