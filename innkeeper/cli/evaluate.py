"""`innkeeper eval understanding` and `innkeeper eval intents`: how well the agent understands annotated dialogues
(SGD, MultiWOZ) — the stay it tracks, per slot, and the intents it reads in each turn."""

from __future__ import annotations

import functools
import json
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
    scores_out: Annotated[
        Path | None, typer.Option("--scores", help="Write each column's per-slot scores here (JSON).")
    ] = None,
    errors_out: Annotated[
        Path | None,
        typer.Option(
            "--errors",
            help="Write each caller turn some column got wrong here (JSON lines): the words, "
            "the annotation, every column's state and wrong slots.",
        ),
    ] = None,
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
    # functools.cache: each (agent words, caller words) read once, so the columns share one model pass
    reader = None if model == "rules" else functools.cache(_model_reader(settings, model))
    # One reading per turn serves every column: the rules alone, the model first, the rules first.
    runs = {"rules": _tracker_factory(hotel, None)}
    if reader is not None:
        runs |= {f"{trust} first": _tracker_factory(hotel, reader, trust)}
        other = "rules" if trust == "model" else "model"
        runs |= {f"{other} first": _tracker_factory(hotel, reader, other)}
    shown = list(runs)[1] if reader is not None else "rules"  # what --json writes
    scores = {name: und.Scores() for name in runs}
    per_turn: dict[tuple[str, int], dict] = {}
    out = json_out.open("w", encoding="utf-8") if json_out else None
    try:
        with Progress(console=err_console, transient=True) as progress:
            for name, tracker_for in sorted(runs.items(), key=lambda run: run[0] != shown):
                task = progress.add_task(name, total=len(dialogues))
                for dialogue, user_turn, prediction in und.predict(
                    dialogues, tracker_for, pinned, progress=lambda task=task: progress.advance(task)
                ):
                    scores[name].add(dialogue, user_turn, prediction)
                    if errors_out:
                        row = per_turn.setdefault((dialogue.dialogue_id, user_turn.turn), _turn_row(user_turn))
                        wrong = [slot for slot, right in und.judge(user_turn, prediction).items() if not right]
                        row["columns"][name] = {"state": prediction.state, "wrong": wrong}
                    if out and name == shown:
                        out.write(prediction.as_json() + "\n")
    finally:
        if out:
            out.close()
    console.print(_table(model, scores, len(dialogues)))
    if errors_out:
        with errors_out.open("w", encoding="utf-8") as out_errors:
            for (dialogue_id, turn), row in per_turn.items():
                if any(column["wrong"] for column in row["columns"].values()):
                    out_errors.write(json.dumps({"dialogue_id": dialogue_id, "turn": turn, **row}) + "\n")
    if scores_out:
        record = {"files": [str(f) for f in files], "model": model, "dialogues": len(dialogues), "today": today}
        record["scores"] = {name: score.as_dict() for name, score in scores.items()}
        scores_out.write_text(json.dumps(record, indent=2))


@eval_app.command("intents")
def eval_intents(
    files: Annotated[list[Path], typer.Argument(help="Dialogues, one JSON per line (SGD or MultiWOZ format).")],
    model: Annotated[
        str, typer.Option(help="rules only; or also 'base' (the configured model) or a model directory")
    ] = "rules",
    scores_out: Annotated[Path | None, typer.Option("--scores", help="Write each column's scores here (JSON).")] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Only the first N caller turns (a model reads slowly).")
    ] = None,
) -> None:
    """Per-intent precision / recall / F1 of the rules (and a model) against the annotated dialogue acts."""
    from tuning.evaluate import intents as ev

    if model not in ("rules", "base") and not Path(model).is_dir():
        err_console.print(f"[red]unknown reader {model!r}: rules, base, or a model directory")
        raise typer.Exit(2)
    try:
        examples, scored = ev.read_examples(files)
    except (ValueError, OSError) as exc:
        err_console.print(f"[red]{exc}")
        raise typer.Exit(2) from None
    examples = examples[:limit]
    readers = {"rules": ev.rules_intents}
    if model != "rules":
        readers["model"] = ev.model_intents(_model_reader(cli_settings(), model))
    scores = {}
    with Progress(console=err_console, transient=True) as progress:
        for name, read in readers.items():
            task = progress.add_task(name, total=len(examples))
            scores[name] = ev.score_intents(examples, read, scored, progress=lambda task=task: progress.advance(task))
    console.print(_intent_table(model, scores))
    if scores_out:
        record = {"files": [str(f) for f in files], "model": model, "turns": len(examples)}
        scores_out.write_text(json.dumps(record | {"scores": {n: s.as_dict() for n, s in scores.items()}}, indent=2))


def _intent_table(model: str, scores: dict) -> Table:
    """Intents by rows; per reader: precision, recall and F1 (80 columns for two readers)."""
    first = next(iter(scores.values()))
    table = Table("intent", title=f"{model}: {first.turns} caller turns")
    for name in scores:
        table.add_column(f"{name} P / R / F1")
    for intent in first.scored:
        cells = [scores[name].per_intent[intent] for name in scores]
        table.add_row(intent.value, *(" / ".join(_pct(v) for v in (c.precision, c.recall, c.f1)) for c in cells))
    table.add_row("all right", *(f"{s.exact_share:.1%} of turns" for s in scores.values()))
    return table


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def _turn_row(user_turn) -> dict:
    gold = {slot: sorted(map(str, values)) for slot, values in user_turn.gold.items()}
    return {"agent": user_turn.agent_text, "caller": user_turn.text, "gold": gold, "columns": {}}


def _tracker_factory(hotel, reader, trust: str = "model"):
    from agent.dialogue.tracker import StayTracker

    return lambda today: StayTracker(hotel, today, reader, trust)


def _model_reader(settings, model: str):
    """The reader of the configured model ('base') or of a model directory; its `read` for the tracker."""
    from agent.reply.understand import ModelReader
    from innkeeper.models.resolve import load_chat_model, serving_model

    chat = load_chat_model(settings) if model == "base" else serving_model(settings, Path(model))
    return ModelReader(chat).read


def _table(model: str, scores: dict, dialogues: int) -> Table:
    """Slots by rows, one column per understanding (right / scored and accuracy), fitting 80 columns."""
    any_scores = next(iter(scores.values()))
    title = f"{model}: {dialogues} dialogues, {any_scores.turns} turns"
    table = Table("slot", *scores, title=title)
    for slot in any_scores.slots:
        cells = [scores[name].slots[slot] for name in scores]
        if any(cell.scored for cell in cells):
            table.add_row(slot, *(f"{c.right}/{c.scored} {c.accuracy:.1%}" for c in cells))
    return table
