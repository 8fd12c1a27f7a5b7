"""`innkeeper demo`: the main job — a phone call that books a room (or `--text`, the typed conversation)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from innkeeper.cli.calls import call_transcript
from innkeeper.cli.common import cli_settings, console, err_console
from innkeeper.core.settings import Settings

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


def demo(
    text: Annotated[bool, typer.Option("--text", help="The text-chat demo (no server, no audio).")] = False,
    no_llm: Annotated[bool, typer.Option("--no-llm", help="--text: template wording only.")] = False,
    llm: Annotated[bool, typer.Option("--llm", help="Voice: let the LLM word replies (slower).")] = False,
    database: Annotated[Path | None, typer.Option(help="--text: SQLite file for the demo (reset each run).")] = None,
) -> None:
    """The main job: a phone call that books a room: server, Twilio protocol, speech both ways, a real database."""
    settings = cli_settings()
    if text:
        _text_demo(settings, no_llm=no_llm, database=database)
    else:
        _voice_demo(settings, llm=llm)


def _voice_demo(settings: Settings, *, llm: bool) -> None:
    """Start `innkeeper serve`, place a call over the Twilio protocol, show transcript, timings and the booking."""
    import shutil

    from innkeeper.serve.speech import load_synthesizer
    from innkeeper.simulation.call_report import call_url, latency_table
    from innkeeper.simulation.caller_lines import lines_from_text
    from innkeeper.simulation.server_process import ServerProcess
    from innkeeper.simulation.voice_caller import place_call

    home = settings.home / "demo-voice"
    shutil.rmtree(home, ignore_errors=True)  # a fresh database each run: the booking below is this call's
    lines = lines_from_text(VOICE_DEMO_SCRIPT, load_synthesizer(settings, variation=False))
    console.print("[bold]Innkeeper voice demo[/]: starting the server (models load first) …")
    demo_db = f"sqlite:///{home / 'innkeeper.db'}"  # its own database, whatever INNKEEPER_DATABASE_URL says
    with ServerProcess(home, env={"INNKEEPER_DATABASE_URL": demo_db}, llm=llm) as server:
        target = call_url(server.url, "twilio")
        console.print(f"placing a phone call to {target} (Twilio Media Streams, 8 kHz mu-law, real time)")
        report = asyncio.run(
            place_call(
                target,
                lines,
                protocol="twilio",
                record_dir=home / "recording",
                twilio_auth_token=settings.twilio_auth_token,  # the server checks streams when one is set
            )
        )
        transcript = call_transcript(report, target, server.token)
        stages = _server_stages(server.http, report.call_id, server.token)
    for role, line in transcript:
        console.print(f"[{'yellow' if role == 'caller' else 'cyan'}]{role}:[/] {escape(line)}")
    console.print(latency_table(report))
    if stages is not None:
        console.print(stages)
    console.print(f"call audio: {home / 'recording'}")
    _check_demo_booking(settings.model_copy(update={"home": home, "database_url": demo_db}), nights=4)


def _server_stages(http: str, call_sid: str | None, token: str) -> Table | None:
    """Where the time went in each reply, from the server's call record (ms after the caller stopped)."""
    from innkeeper.simulation.call_report import fetch_call_record

    record = asyncio.run(fetch_call_record(http, call_sid=call_sid, token=token)) if call_sid else None
    if not record:
        return None
    columns = {
        "endpoint_ms": "endpt",
        "asr_wait_ms": "asr",
        "decide_ms": "dec",
        "llm_first_token_ms": "llm",
        "tts_first_ms": "tts",
        "first_audio_sent_ms": "audio",
    }
    table = Table(
        title="server stages per reply, ms after the caller stopped",
        caption="by: model (a model read or worded it) or tmpl (templates); dec, llm: from the end of ASR",
        width=80,
    )
    table.add_column("agent reply", no_wrap=True, overflow="ellipsis", max_width=22)
    table.add_column("by")
    for header in columns.values():
        table.add_column(header, justify="right")
    for turn in record.get("turns", []):
        latencies = turn.get("latencies") or {}
        if turn.get("role") == "agent" and "first_audio_sent_ms" in latencies:
            cells = [f"{latencies[c]:.0f}" if c in latencies else "—" for c in columns]
            by = "tmpl" if turn.get("model_version") in (None, "template") else "model"
            table.add_row(escape(str(turn.get("text", ""))), by, *cells)
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
