"""`innkeeper users`: the staff who may sign in to the dashboard (operators and admins)."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from rich.table import Table

from innkeeper.cli.common import cli_settings, console, one_line_errors

users_app = typer.Typer(help="Dashboard users: add, list, disable.", no_args_is_help=True)


def _accounts():
    from innkeeper.core.accounts import Accounts
    from innkeeper.core.db.database import Database

    db = Database.from_settings(cli_settings())
    db.migrate()
    return Accounts(db)


def _audit(actor: str, action: str, target: str, **detail: object) -> None:
    from innkeeper.core.audit import AuditLog
    from innkeeper.core.db.database import Database

    AuditLog(Database.from_settings(cli_settings())).record(actor, action, target, **detail)


def _password(from_stdin: bool) -> str:
    """The new password: from stdin for scripts, INNKEEPER_NEW_PASSWORD, else asked twice at the prompt."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    if os.environ.get("INNKEEPER_NEW_PASSWORD"):
        return os.environ["INNKEEPER_NEW_PASSWORD"]
    return typer.prompt("password", hide_input=True, confirmation_prompt=True)


@users_app.command("add")
def add(
    username: Annotated[str, typer.Argument(help="Sign-in name (lower case letters, digits, . _ -).")],
    role: Annotated[str, typer.Option(help="operator (calls, review, bookings) or admin (also models, users).")] = (
        "operator"
    ),
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin.")] = False,
) -> None:
    """Add a dashboard user (the password is hashed with argon2id; it is never stored)."""
    from innkeeper.core.accounts import AccountError
    from innkeeper.core.db.database import DatabaseUnavailable

    with one_line_errors(AccountError, DatabaseUnavailable):
        account = _accounts().add(username, _password(password_stdin), role)
        _audit("cli", "user.add", account.username, role=account.role)
    console.print(f"user {account.username} added ({account.role})")


@users_app.command("list")
def list_users() -> None:
    """Every user, with role and whether they may sign in."""
    from innkeeper.core.db.database import DatabaseUnavailable

    with one_line_errors(DatabaseUnavailable):
        accounts = _accounts().list()
    table = Table("user", "role", "state", "added (UTC)")
    for account in accounts:
        state = "[red]disabled" if account.disabled else "active"
        table.add_row(account.username, account.role, state, account.created_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)


@users_app.command("disable")
def disable(username: Annotated[str, typer.Argument(help="The user to stop signing in.")]) -> None:
    """Stop a user signing in and end their open sessions."""
    from innkeeper.core.accounts import AccountError
    from innkeeper.core.db.database import DatabaseUnavailable

    with one_line_errors(AccountError, DatabaseUnavailable):
        account = _accounts().disable(username)
        _audit("cli", "user.disable", account.username)
    console.print(f"user {account.username} disabled; their sessions are closed")
