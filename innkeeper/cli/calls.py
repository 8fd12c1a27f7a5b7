"""`innkeeper chat`, `serve` and `call`: talk to the agent, run the server, place a simulated phone call."""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from innkeeper.cli.common import cli_settings, console, err_console
from innkeeper.core.settings import Settings


# ---------------------------------------------------------------------- chat
def chat(
    no_llm: Annotated[bool, typer.Option("--no-llm", help="Template wording only (no language model).")] = False,
) -> None:
    """Talk to the agent. With a pipe on stdin, each input line is one caller turn."""
    from innkeeper.serve.runtime import AgentRuntime

    runtime = AgentRuntime.from_settings(cli_settings(), use_llm=not no_llm)
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


# ---------------------------------------------------------------------- call
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on (INNKEEPER_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (INNKEEPER_PORT).")] = None,
    llm: Annotated[
        bool, typer.Option("--llm", help="Let the LLM word replies (INNKEEPER_VOICE_LLM; adds its wait to replies).")
    ] = False,
) -> None:
    """The call server: Twilio Media Streams, the plain websocket (/ws/call) and the call records API."""
    from innkeeper.serve.app import serve as run_server

    settings = cli_settings()
    logging.getLogger().setLevel(logging.INFO)
    updates = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    if llm:
        updates["voice_llm"] = True
    settings = settings.model_copy(update=updates)
    where = f"http://{settings.host}:{settings.port}"
    console.print(f"[bold]Innkeeper[/] serving on {where} (websockets: /twilio/stream, /ws/call)")
    run_server(settings, training_view=_training_view)


def _training_view(db, settings, call_id: str):
    """What the nightly run would learn from a call, for its page (`tuning.data.preview`; imported when a page
    first asks, so the server starts without loading the training stack)."""
    from tuning.data.preview import preview_call

    return preview_call(db, settings, call_id)


CALL_SCRIPT = (
    "Hi, I'd like to book a room for two nights starting December seventh.",
    "Two adults.",
)


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
    from innkeeper.simulation.call_report import CallError, ConnectFailed, call_url, latency_table
    from innkeeper.simulation.voice_caller import place_call

    settings = cli_settings()
    if protocol not in ("twilio", "plain"):
        err_console.print(f"[red]--protocol must be twilio or plain, not {protocol!r}")
        raise typer.Exit(2)
    lines = _call_lines(settings, say, wav)
    target = call_url(url, protocol)
    record_dir = out or settings.home / "caller" / datetime.now().strftime("%Y%m%d-%H%M%S")
    console.print(f"[bold]calling {target}[/] ({protocol}, {len(lines)} lines)")
    try:
        report = asyncio.run(
            place_call(
                target,
                lines,
                protocol=protocol,
                caller_id=caller,
                record_dir=record_dir,
                twilio_auth_token=settings.twilio_auth_token,
            )
        )
    except ConnectFailed as exc:
        err_console.print(f"[red]{exc}: is `innkeeper serve` running?")
        raise typer.Exit(1) from None
    except CallError as exc:
        err_console.print(f"[red]call failed: {exc}")
        raise typer.Exit(1) from None
    token = cli_settings().admin_token  # the server's call records need it (INNKEEPER_ADMIN_TOKEN)
    for role, text in call_transcript(report, target, token):
        console.print(f"[{'yellow' if role == 'caller' else 'cyan'}]{role}:[/] {escape(text)}")
    console.print(latency_table(report))
    _print_call_notes(report)
    _print_model_versions(report, target, token)
    if report.unanswered:
        err_console.print(f"[red]{report.unanswered} of {len(report.turns)} lines went unanswered")
        raise typer.Exit(1)


def _call_lines(settings: Settings, say: list[str] | None, wav: list[Path] | None) -> list:
    from innkeeper.simulation.caller_lines import lines_from_text, lines_from_wavs

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


def call_transcript(report, target: str, token: str | None) -> list[tuple[str, str]]:
    """Plain: the server's transcript messages; Twilio: the server's call record. Else what the caller knows."""
    from innkeeper.simulation.call_report import fetch_call_record, http_base

    if report.protocol == "plain" and report.transcript:
        return report.transcript
    if report.protocol == "twilio":
        record = asyncio.run(fetch_call_record(http_base(target), call_sid=report.call_id, token=token))
        turns = record.get("turns") if record else None
        if isinstance(turns, list) and turns:
            return [(str(t.get("role", "?")), str(t.get("text", ""))) for t in turns if isinstance(t, dict)]
    heard = [("agent", f"(greeting, {report.greeting_audio_s:.1f} s)")] if report.greeting_audio_s else []
    for turn in report.turns:
        answer = f"(agent audio, {turn.reply_audio_s:.1f} s)" if turn.answered else "(no answer)"
        heard += [("caller", turn.text or "(audio)"), ("agent", answer)]
    return heard


def _print_model_versions(report, target: str, token: str | None) -> None:
    """Which model version answered (from the server's call record): what a model swap changes."""
    from innkeeper.simulation.call_report import fetch_call_record, http_base

    if report.protocol == "twilio":
        record = asyncio.run(fetch_call_record(http_base(target), call_sid=report.call_id, token=token))
    else:
        record = asyncio.run(fetch_call_record(http_base(target), report.call_id, token=token))
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
