"""What a simulated call measured: per-turn voice-to-voice latency and the call's report, as a table; and the
server's own record of the call, fetched over HTTP."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rich.table import Table

from innkeeper.simulation.caller_lines import CallProtocol, Pcm16
from telephony import plain_protocol as plain

TWILIO_PATH = "/twilio/stream"
# Frames quieter than this are not speech (line noise sits under -50 dBFS): the end of a line's speech,
# from which voice-to-voice latency counts, is its last frame above it, not the end of its trailing hush.
# A server may send a whole sentence of agent audio in one message; the plain protocol allows 1 MiB.
HTTP_TIMEOUT_S = 5.0


class CallError(RuntimeError):
    """The call could not be placed (no connection, or the server refused it before any audio)."""


class ConnectFailed(CallError):
    """No websocket connection to the server at all."""


# ---------------------------------------------------------------- the report


@dataclass
class TurnReport:
    """One caller line and the agent's answer to it."""

    text: str | None
    v2v_ms: float | None  # last speech frame sent -> first agent audio received; None when unanswered
    reply_audio_s: float  # agent audio received for this turn (as sent, before any cut)
    answered: bool
    transcripts: list[tuple[str, str]] = field(default_factory=list)  # final (role, text) lines in this turn
    clear_ms: float | None = None  # first `clear` after this line's speech started, ms after that start
    agent_audio: Pcm16 = field(default_factory=lambda: np.zeros(0, np.int16), repr=False)  # as played


@dataclass
class CallReport:
    """What one call measured; audio is at the wire rate (8 kHz Twilio, 16 kHz plain)."""

    protocol: CallProtocol
    url: str
    call_id: str | None  # plain: from `ready`; Twilio: the callSid this caller made up
    sample_rate: int
    turns: list[TurnReport]
    greeting_audio_s: float
    lines_unsaid: int  # lines never started because the server ended the call first
    ended_by: Literal["caller", "server"]
    close_code: int | None
    transcript: list[tuple[str, str]] = field(default_factory=list)  # every final (role, text) line
    clears: list[float] = field(default_factory=list)  # seconds after the call opened
    transferred: bool = False
    transfer_reason: str | None = None
    server_errors: list[str] = field(default_factory=list)  # `error` messages from the server
    bad_messages: list[str] = field(default_factory=list)  # malformed or unexpected server messages
    agent_audio: Pcm16 = field(default_factory=lambda: np.zeros(0, np.int16), repr=False)  # on the call's timeline
    caller_audio: Pcm16 = field(default_factory=lambda: np.zeros(0, np.int16), repr=False)
    recordings: dict[str, Path] = field(default_factory=dict)

    @property
    def unanswered(self) -> int:
        return sum(not turn.answered for turn in self.turns)

    def v2v_ms(self) -> list[float]:
        return [turn.v2v_ms for turn in self.turns if turn.v2v_ms is not None]


def latency_table(report: CallReport) -> Table:
    """Per line: voice-to-voice latency, reply length, and the barge-in `clear` time."""
    table = Table(title=f"{report.protocol} call {report.call_id or ''}".strip())
    for column in ("#", "caller said", "v2v ms", "reply s", "answered", "clear ms"):
        table.add_column(column, justify="left" if column == "caller said" else "right")
    for index, turn in enumerate(report.turns, 1):
        table.add_row(
            str(index),
            turn.text or "(audio)",
            _fmt(turn.v2v_ms, "{:.0f}"),
            f"{turn.reply_audio_s:.1f}",
            "yes" if turn.answered else "[red]no",
            _fmt(turn.clear_ms, "{:.0f}"),
        )
    return table


def _fmt(value: float | None, pattern: str) -> str:
    return "—" if value is None else pattern.format(value)


# ---------------------------------------------------------------- addresses and the server's record


def call_url(url: str, protocol: CallProtocol) -> str:
    """`ws://host:port` -> the protocol's websocket URL; a URL that already has a path is kept as it is."""
    parts = urllib.parse.urlsplit(url)
    if parts.path in ("", "/"):
        parts = parts._replace(path=TWILIO_PATH if protocol == "twilio" else plain.WS_PATH)
    return urllib.parse.urlunsplit(parts)


def http_base(url: str) -> str:
    """The HTTP address of the server behind a websocket URL: ws://h:p/x -> http://h:p."""
    parts = urllib.parse.urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


async def fetch_call_record(
    http_base: str,
    call_id: str | None = None,
    call_sid: str | None = None,
    *,
    token: str | None = None,
    attempts: int = 3,
    retry_s: float = 0.5,
) -> dict[str, Any] | None:
    """The server's record of a call, `{"call": {...}, "turns": [...]}`, or None when it has none (or refuses:
    call records need the server's INNKEEPER_ADMIN_TOKEN as `token`).

    A 404 is retried a few times: the server may still be writing the record as the call closes.
    """
    if call_id is not None:
        url = f"{http_base.rstrip('/')}/api/calls/{urllib.parse.quote(call_id, safe='')}"
    elif call_sid is not None:
        url = f"{http_base.rstrip('/')}/api/calls?{urllib.parse.urlencode({'call_sid': call_sid})}"
    else:
        raise ValueError("fetch_call_record needs call_id or call_sid")
    for attempt in range(attempts):
        status, body = await asyncio.to_thread(_get_json, url, token)
        if status != 404:
            return body if status == 200 and isinstance(body, dict) else None
        if attempt + 1 < attempts:
            await asyncio.sleep(retry_s)
    return None


def _get_json(url: str, token: str | None = None) -> tuple[int | None, Any]:
    """(HTTP status, parsed JSON body or None); status None when the server cannot be reached."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, OSError):
        return None, None
    try:
        return status, json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return status, None
