"""`innkeeper eval understanding`: how well the agent understands annotated dialogues (SGD, MultiWOZ), per slot."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress
from rich.table import Table

from innkeeper.cli.common import cli_settings, console, err_console

eval_app = typer.Typer(help="Measure the agent: understanding on annotated dialogues.", no_args_is_help=True)


@eval_app.command("understanding")
def eval_understanding(
    files: Annotated[list[Path], typer.Argument(help="Dialogues, one JSON per line (SGD or MultiWOZ format).")],
    today: Annotated[str, typer.Option(help="'Today' for relative dates, YYYY-MM-DD (SGD: 2019-03-01).")],
    model: Annotated[
        str,
        typer.Option(help="rules; base (the configured model reads each turn, the rules second); or a model directory"),
    ] = "rules",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write one JSON line per caller turn here.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N dialogues (a model reads slowly).")] = None,
    trust: Annotated[
        str, typer.Option(help="With a model: whose value wins where both found one, 'model' or 'rules'.")
    ] = "model",
) -> None:
    """Run the understanding turn by turn (state carried across turns) and print per-slot accuracy."""
    from innkeeper.core.hotel import load_hotel
    from tuning.evaluate import understanding as und

    if model not in ("rules", "base") and not Path(model).is_dir():
        err_console.print(f"[red]unknown understanding {model!r}: rules, base, or a model directory")
        raise typer.Exit(2)
    try:
        pinned = date.fromisoformat(today)
        dialogues = und.read_dialogues(files)[:limit]
    except (ValueError, OSError) as exc:
        err_console.print(f"[red]{exc}")
        raise typer.Exit(2) from None
    settings = cli_settings()
    hotel = load_hotel(settings.hotel_file)
    if trust not in ("model", "rules"):
        err_console.print(f"[red]--trust is 'model' or 'rules', not {trust!r}")
        raise typer.Exit(2)
    tracker_for = _tracker_factory(hotel, None if model == "rules" else _model_reader(settings, model), trust)
    scores = und.Scores()
    out = json_out.open("w", encoding="utf-8") if json_out else None
    try:
        with Progress(console=err_console, transient=True) as progress:
            task = progress.add_task("dialogues", total=len(dialogues))
            for dialogue, user_turn, prediction in und.predict(
                dialogues, tracker_for, pinned, progress=lambda: progress.advance(task)
            ):
                scores.add(dialogue, user_turn, prediction)
                if out:
                    out.write(prediction.as_json() + "\n")
    finally:
        if out:
            out.close()
    console.print(_table(model, scores, len(dialogues)))


def _tracker_factory(hotel, reader, trust: str = "model"):
    from agent.dialogue.tracker import StayTracker

    return lambda today: StayTracker(hotel, today, reader, trust)


def _model_reader(settings, model: str):
    """The reader of the configured model ('base') or of a model directory; its `read` for the tracker."""
    from agent.reply.understand import ModelReader
    from innkeeper.models.resolve import load_chat_model, serving_model

    chat = load_chat_model(settings) if model == "base" else serving_model(settings, Path(model))
    return ModelReader(chat).read


def _table(model: str, scores, dialogues: int) -> Table:
    table = Table("slot", f"{model}: right / scored", "accuracy", title=f"{dialogues} dialogues, {scores.turns} turns")
    for slot, score in scores.slots.items():
        if score.scored:
            table.add_row(slot, f"{score.right} / {score.scored}", f"{score.accuracy:.1%}")
    return table
