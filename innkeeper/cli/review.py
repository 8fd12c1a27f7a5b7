"""`innkeeper review`: correct how the agent read a caller turn (a training example for the nightly run)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from innkeeper.cli.common import cli_settings, console, err_console, one_line_errors

review_app = typer.Typer(help="Operator review: correct the agent's reading of caller turns; list corrections.")


def _corrections():
    from agent.call.review import Corrections
    from innkeeper.core.db.database import Database

    db = Database.from_settings(cli_settings())
    db.migrate()
    return Corrections(db)


@review_app.command("correct")
def correct(
    call_id: Annotated[str, typer.Argument(help="The call's id (innkeeper call / the call log).")],
    turn: Annotated[int, typer.Argument(help="The caller turn's index in the call (0 = the first turn).")],
    action: Annotated[
        str,
        typer.Option(
            help='How the turn should have been read, as TurnAction JSON, e.g. \'{"intents": ["book"], '
            '"slots": {"check_in": "next Friday", "nights": 2}}\'.'
        ),
    ],
    by: Annotated[str, typer.Option("--by", help="Who makes the correction (kept with it).")],
    reply: Annotated[str | None, typer.Option(help="What the agent should have said instead.")] = None,
    note: Annotated[str, typer.Option(help="Why, for the next reviewer.")] = "",
) -> None:
    """Store the right reading of one caller turn; the next nightly run trains on it."""
    from agent.call.review import NotACallerTurn
    from agent.understanding.action import TurnAction

    try:
        parsed = TurnAction.model_validate_json(action)
    except ValidationError as err:
        err_console.print(f"[red]--action is not a valid TurnAction:[/] {escape(str(err))}")
        raise typer.Exit(2) from None
    from innkeeper.core.db.database import DatabaseUnavailable

    with one_line_errors(NotACallerTurn, ValueError, DatabaseUnavailable):
        record = _corrections().add(call_id, turn, parsed, author=by, reply=reply, note=note)
    console.print(f"correction {record.id} stored for call {record.call_id} turn {record.turn_index}")


@review_app.command("list")
def list_corrections(
    call_id: Annotated[str | None, typer.Option("--call", help="Only this call's corrections.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The stored corrections, oldest first."""
    from innkeeper.core.db.database import DatabaseUnavailable

    with one_line_errors(DatabaseUnavailable):
        records = _corrections().list(call_id=call_id)
    if as_json:
        rows = [
            {
                "id": r.id,
                "call_id": r.call_id,
                "turn": r.turn_index,
                "action": r.action.model_dump(mode="json", exclude_defaults=True),
                "reply": r.reply,
                "author": r.author,
                "created_at": r.created_at.isoformat(),
                "note": r.note,
            }
            for r in records
        ]
        print(json.dumps(rows, indent=2))
        return
    table = Table("id", "call", "turn", "action", "by", title=f"{len(records)} corrections")
    for r in records:
        action = r.action.model_dump_json(exclude_defaults=True)
        table.add_row(str(r.id), r.call_id[:8], str(r.turn_index), escape(action), escape(r.author))
    console.print(table)
