"""The simulated caller: places one voice call against an Innkeeper server over a real websocket protocol.

Its one job is to be the far end of a phone line. Over Twilio Media Streams it behaves as Twilio does
(`connected`, `start`, then a 20 ms mu-law `media` frame every 20 ms for the whole call, mark echoes when
playback reaches them, `clear` drops queued audio); over the plain protocol it is an SDK client (`start`,
`ready`, PCM16 frames, `playback` acknowledgements). It says scripted lines with a person's turn-taking,
plays the agent's audio in real time, and measures voice-to-voice latency per line (`CallReport`).

Used by `innkeeper call`, `benchmarks/voice_latency.py` and end-to-end tests. Message models, mu-law,
resampling and framing come from `telephony/`; only the messages Twilio itself sends are built here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import urllib.error
import urllib.parse
import urllib.request
import wave
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
from rich.table import Table
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from telephony import plain_protocol as plain
from telephony import twilio_protocol as tw
from telephony.codec import mulaw_decode, mulaw_encode, pcm16_from_bytes, pcm16_to_bytes
from telephony.framing import FRAME_MS, frames_of
from telephony.resample import PHONE_RATE, resample

if TYPE_CHECKING:
    from agent.speech.tts import Synthesizer

CallProtocol = Literal["twilio", "plain"]
Pcm16 = npt.NDArray[np.int16]

TWILIO_PATH = "/twilio/stream"
FRAME_S = FRAME_MS / 1000
GREETING_WAIT_S = 8.0  # a caller who hears nothing starts talking anyway
STOP_WAIT_S = 5.0  # after `stop`, how long the server gets to close the socket before we do
CONNECT_TIMEOUT_S = 10.0
MAX_REPLY_S = 120.0  # an agent still talking after this long is stuck; move on rather than hang the run
RESYNC_S = 0.5  # a clock this far behind (stalled process) restarts its schedule instead of bursting frames
# Frames quieter than this are not speech (line noise sits under -50 dBFS): the end of a line's speech,
# from which voice-to-voice latency counts, is its last frame above it, not the end of its trailing hush.
SPEECH_DBFS = -50.0
# A server may send a whole sentence of agent audio in one message; the plain protocol allows 1 MiB.
MAX_SERVER_MESSAGE_BYTES = plain.MAX_BINARY_MESSAGE_BYTES
HTTP_TIMEOUT_S = 5.0


class CallError(RuntimeError):
    """The call could not be placed (no connection, or the server refused it before any audio)."""


class ConnectFailed(CallError):
    """No websocket connection to the server at all."""


# ---------------------------------------------------------------- what the caller says


@dataclass(frozen=True, eq=False)
class CallerLine:
    """One thing the caller says: mono int16 audio at `rate`, and its text for display (None for a wav file).

    `start_after_agent_audio_ms` makes this a barge-in: instead of waiting for the agent's previous reply
    to finish, start speaking that many ms after that reply's audio began. `after` holds the line back
    until the event is set as well (a script that waits for something outside the call, e.g. an
    operator's action, while the line stays open).
    """

    audio: Pcm16
    rate: int
    text: str | None = None
    start_after_agent_audio_ms: int | None = None
    after: asyncio.Event | None = None


def lines_from_text(texts: Iterable[str], synthesizer: Synthesizer) -> list[CallerLine]:
    """Each text spoken by the Piper voice and passed through a phone line: 8 kHz audio that went through mu-law.

    Twilio re-encodes these samples losslessly and the plain protocol upsamples them to 16 kHz, so the
    server hears a phone caller either way.
    """
    lines = []
    for text in texts:
        audio, rate = synthesizer.synthesize(text)
        lines.append(CallerLine(mulaw_decode(mulaw_encode(resample(audio, rate, PHONE_RATE))), PHONE_RATE, text))
    return lines


def lines_from_wavs(paths: Iterable[Path | str]) -> list[CallerLine]:
    """Mono 16-bit WAV files, one line each, at their own rate (resampled to the wire rate when sent)."""
    lines = []
    for path in paths:
        audio, rate = read_wav(Path(path))
        lines.append(CallerLine(audio, rate))
    return lines


def read_wav(path: Path) -> tuple[Pcm16, int]:
    """A mono 16-bit PCM WAV file -> its samples and rate (ValueError naming the file otherwise)."""
    try:
        with wave.open(str(path), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            data = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"{path}: not a PCM WAV file ({exc}); convert it to mono 16-bit PCM") from None
    if channels != 1:
        raise ValueError(f"{path}: {channels} channels; the caller needs a mono file (e.g. `sox in.wav -c 1 out.wav`)")
    if width != 2:
        raise ValueError(
            f"{path}: {8 * width}-bit samples; the caller needs 16-bit PCM (e.g. `sox in.wav -b 16 out.wav`)"
        )
    return pcm16_from_bytes(data), rate


def write_wav(path: Path, audio: Pcm16, rate: int) -> None:
    """Mono 16-bit PCM WAV."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm16_to_bytes(audio))


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


# ---------------------------------------------------------------- playing the agent's audio


@dataclass(eq=False)
class _Chunk:
    start: float  # loop time its first sample plays
    samples: Pcm16
    turn: int  # index of the turn whose reply it belongs to (0 = greeting)

    def end(self, rate: int) -> float:
        return self.start + len(self.samples) / rate


@dataclass(eq=False)
class _Segment:
    """Agent audio up to one acknowledgement point: a Twilio mark, or a plain agent_audio_start..end."""

    name: str | None  # plain: from agent_audio_start; Twilio: from the mark that closes it
    chunks: list[_Chunk] = field(default_factory=list)
    closed: bool = False  # its end (mark / agent_audio_end) has arrived
    end: float = 0.0  # when playback reaches the end of its audio

    def played_ms(self, now: float, rate: int) -> int:
        seconds = sum(min(max(now - c.start, 0.0), len(c.samples) / rate) for c in self.chunks)
        return round(seconds * 1000)


class _Player:
    """A phone's speaker: audio plays in arrival order from when it arrives, one play clock, no gaps."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.play_end = 0.0  # loop time when everything queued so far will have played
        self.chunks: list[_Chunk] = []  # all audio, trimmed to what was actually played on clear/finish
        self._segments: deque[_Segment] = deque()  # not yet acknowledged, in play order
        self._acknowledged: set[str] = set()

    def start_segment(self, name: str, now: float) -> None:
        if self._segments and not self._segments[-1].closed:
            self._segments[-1].closed = True  # segments never interleave: a new start ends the last one
        self._segments.append(_Segment(name, end=max(now, self.play_end)))

    def add(self, samples: Pcm16, now: float, turn: int) -> None:
        chunk = _Chunk(max(now, self.play_end), samples, turn)
        self.play_end = chunk.end(self.rate)
        self.chunks.append(chunk)
        segment = self._open_segment(now)
        segment.chunks.append(chunk)
        segment.end = self.play_end

    def acknowledged(self, name: str) -> bool:
        return name in self._acknowledged

    def close_segment(self, name: str, now: float) -> bool:
        """The end of segment `name` (False when another segment is playing: a server bug to report)."""
        segment = self._open_segment(now)
        if segment.name not in (None, name):
            return False
        segment.name, segment.closed, segment.end = name, True, max(now, self.play_end)
        return True

    def due(self, now: float) -> list[tuple[str, int]]:
        """Segments played to their end by `now`: (name, ms played), in order, each reported once."""
        done = []
        while self._segments and self._segments[0].closed and self._segments[0].end <= now:
            segment = self._segments.popleft()
            if segment.name is not None:
                done.append((segment.name, segment.played_ms(now, self.rate)))
                self._acknowledged.add(segment.name)
        return done

    def clear(self, now: float) -> list[tuple[str, int]]:
        """Stop now and drop what is queued; every unacknowledged named segment with the ms it played."""
        cut = [(s.name, s.played_ms(now, self.rate)) for s in self._segments if s.name is not None]
        self._acknowledged.update(name for name, _ in cut)
        self._segments.clear()
        self.finish(now)
        return cut

    def finish(self, now: float) -> None:
        """Trim every chunk to what had played by `now` (the rest was never heard)."""
        for chunk in reversed(self.chunks):
            if chunk.end(self.rate) <= now:
                break  # chunks play in order: everything earlier is fully played
            chunk.samples = chunk.samples[: max(0, round((now - chunk.start) * self.rate))]
        self.play_end = min(self.play_end, now)

    def _open_segment(self, now: float) -> _Segment:
        if not self._segments or self._segments[-1].closed:
            self._segments.append(_Segment(None, end=max(now, self.play_end)))
        return self._segments[-1]


# ---------------------------------------------------------------- the two wire protocols


class _Wire(Protocol):
    """What differs between Twilio and the plain protocol; the call logic is shared."""

    rate: int  # audio rate on the wire, both directions

    async def setup(self, ws: ClientConnection) -> str: ...
    def uplink(self, frame: Pcm16) -> str | bytes: ...
    async def handle(self, message: str | bytes, call: _Call) -> None: ...
    def ack(self, name: str, played_ms: int) -> str: ...
    def stop(self) -> str: ...


_TWILIO_SERVER_MESSAGES: dict[str, type[tw.OutboundMedia | tw.OutboundMark | tw.OutboundClear]] = {
    "media": tw.OutboundMedia,
    "mark": tw.OutboundMark,
    "clear": tw.OutboundClear,
}


class _TwilioWire:
    """Twilio's side of a Media Stream: its message shapes, with numbers as strings like the real thing."""

    rate = PHONE_RATE

    def __init__(self, caller_id: str) -> None:
        self.stream_sid = f"MZ{secrets.token_hex(16)}"
        self.call_sid = f"CA{secrets.token_hex(16)}"
        self.account_sid = f"AC{secrets.token_hex(16)}"
        self.caller_id = caller_id
        self._sequence = 0
        self._chunk = 0

    async def setup(self, ws: ClientConnection) -> str:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        start = {
            "accountSid": self.account_sid,
            "streamSid": self.stream_sid,
            "callSid": self.call_sid,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": tw.TWILIO_SAMPLE_RATE, "channels": 1},
            "customParameters": {"caller": self.caller_id},
        }
        await ws.send(self._message("start", start=start))
        return self.call_sid

    def uplink(self, frame: Pcm16) -> str:
        self._chunk += 1
        payload = base64.b64encode(mulaw_encode(frame).tobytes()).decode("ascii")
        timestamp = str((self._chunk - 1) * FRAME_MS)  # ms of media since the stream started
        media = {"track": "inbound", "chunk": str(self._chunk), "timestamp": timestamp, "payload": payload}
        return self._message("media", media=media)

    async def handle(self, message: str | bytes, call: _Call) -> None:
        if isinstance(message, bytes):
            call.bad_message("binary frame on a Twilio stream")
            return
        try:
            parsed = tw.parse_tagged(message, "event", _TWILIO_SERVER_MESSAGES, MAX_SERVER_MESSAGE_BYTES)
            audio = tw.media_payload_to_pcm16(parsed.media.payload) if isinstance(parsed, tw.OutboundMedia) else None
        except tw.ProtocolError as exc:
            call.bad_message(exc.reason)
            return
        if parsed.stream_sid != self.stream_sid:
            call.bad_message(f"{parsed.event} for streamSid {parsed.stream_sid!r}, not this call's")
        elif audio is not None:
            call.on_audio(audio)
        elif isinstance(parsed, tw.OutboundMark):
            call.on_segment_end(parsed.mark.name)
        else:
            await call.on_clear()

    def ack(self, name: str, played_ms: int) -> str:
        # Twilio's echo carries no duration: the server infers it from when the mark comes back.
        return self._message("mark", mark={"name": name})

    def stop(self) -> str:
        return self._message("stop", stop={"accountSid": self.account_sid, "callSid": self.call_sid})

    def _message(self, event: str, **body: Any) -> str:
        self._sequence += 1
        return json.dumps({"event": event, "sequenceNumber": str(self._sequence), **body, "streamSid": self.stream_sid})


class _PlainWire:
    """A plain-protocol client (PROTOCOL.md): JSON control messages, PCM16 16 kHz binary audio."""

    rate = plain.SAMPLE_RATE

    def __init__(self, caller_id: str) -> None:
        self.caller_id = caller_id

    async def setup(self, ws: ClientConnection) -> str:
        await ws.send(plain.dump_message(plain.ClientStart(type="start", caller=self.caller_id)))
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                return await self._await_ready(ws)
        except TimeoutError:
            raise CallError(f"no `ready` from the server within {CONNECT_TIMEOUT_S:g} s") from None
        except ConnectionClosed as exc:
            raise CallError(f"the server closed the call before `ready` (code {exc.rcvd and exc.rcvd.code})") from None

    async def _await_ready(self, ws: ClientConnection) -> str:
        while True:
            message = await ws.recv()
            if isinstance(message, bytes):
                continue  # audio before `ready` breaks rule 1; nothing to play it against yet
            with contextlib.suppress(plain.ProtocolError):
                parsed = plain.parse_server_message(message)
                if isinstance(parsed, plain.ServerReady):
                    return parsed.call_id
                if isinstance(parsed, plain.ServerError):
                    raise CallError(f"the server refused the call: {parsed.message}")

    def uplink(self, frame: Pcm16) -> bytes:
        return pcm16_to_bytes(frame)

    async def handle(self, message: str | bytes, call: _Call) -> None:
        if isinstance(message, bytes):
            try:
                call.on_audio(pcm16_from_bytes(message))
            except ValueError as exc:
                call.bad_message(str(exc))
            return
        try:
            parsed = plain.parse_server_message(message)
        except plain.ProtocolError as exc:
            call.bad_message(exc.reason)
            return
        await self._dispatch(parsed, call)

    async def _dispatch(self, parsed: plain.ServerMessage, call: _Call) -> None:
        match parsed:
            case plain.ServerAgentAudioStart(mark=mark):
                call.on_segment_start(mark)
            case plain.ServerAgentAudioEnd(mark=mark) if not call.player.acknowledged(mark):
                call.on_segment_end(mark)  # (the end of a segment cut by `clear` was answered already)
            case plain.ServerClear():
                await call.on_clear()
            case plain.ServerTranscript(role=role, text=text, final=final):
                call.on_transcript(role, text, final)
            case plain.ServerTransfer(reason=reason):
                call.on_transfer(reason)
            case plain.ServerError(message=text):
                call.server_errors.append(text)
            case plain.ServerReady():
                call.bad_message("a second `ready`")

    def ack(self, name: str, played_ms: int) -> str:
        return plain.dump_message(plain.ClientPlayback(type="playback", mark=name, played_ms=played_ms))

    def stop(self) -> str:
        return plain.dump_message(plain.ClientStop(type="stop"))


# ---------------------------------------------------------------- the call


@dataclass(eq=False)
class _Turn:
    index: int  # 0 is the greeting: "said" by nobody when the call opened
    text: str | None
    speech_start: float | None = None
    speech_end: float | None = None  # loop time the line's last speech frame was sent
    first_audio: float | None = None  # loop time the first agent audio after speech_end arrived
    received_samples: int = 0
    clear_at: float | None = None
    transcripts: list[tuple[str, str]] = field(default_factory=list)
    spoken: asyncio.Event = field(default_factory=asyncio.Event)
    replied: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False)
class _Utterance:
    turn: _Turn
    frames: list[Pcm16]
    last_speech: int  # index of the last frame loud enough to be speech
    sent: int = 0


def _utterance(line: CallerLine, turn: _Turn, rate: int) -> _Utterance:
    """The line at the wire rate, cut into 20 ms frames."""
    frames = frames_of(resample(line.audio, line.rate, rate), rate) or [np.zeros(rate * FRAME_MS // 1000, np.int16)]
    loud = [i for i, frame in enumerate(frames) if _dbfs(frame) > SPEECH_DBFS]
    return _Utterance(turn, frames, loud[-1] if loud else len(frames) - 1)


def _dbfs(frame: Pcm16) -> float:
    power = float(np.mean(np.square(frame, dtype=np.float64))) / 32768.0**2
    return 10.0 * np.log10(power) if power > 0 else float("-inf")


class _Call:
    """One call in progress: a 20 ms clock that talks and plays, a receiver, and the caller's script."""

    def __init__(self, ws: ClientConnection, wire: _Wire, reply_timeout_s: float, gap_after_reply_s: float) -> None:
        self.ws = ws
        self.wire = wire
        self.reply_timeout_s = reply_timeout_s
        self.gap_after_reply_s = gap_after_reply_s
        self.loop = asyncio.get_running_loop()
        self.opened = self.loop.time()
        self.player = _Player(wire.rate)
        self.turns = [_Turn(0, None, speech_start=self.opened, speech_end=self.opened)]
        self.reply_turn = self.turns[0]  # the turn agent audio arriving now answers
        self.mouth: deque[_Utterance] = deque()
        self.silence = np.zeros(wire.rate * FRAME_MS // 1000, np.int16)
        self.sent_frames: list[Pcm16] = []
        self.clock_start = self.opened
        self.hung_up = False
        self.transcript: list[tuple[str, str]] = []
        self.clears: list[float] = []
        self.transfer: tuple[bool, str | None] = (False, None)
        self.server_errors: list[str] = []
        self.bad_messages: list[str] = []

    # -- tasks

    async def run(self, lines: list[CallerLine]) -> Literal["caller", "server"]:
        """Talk until the lines run out or the server closes; returns who ended the call."""
        clock = asyncio.create_task(self._run_clock())
        receiver = asyncio.create_task(self._run_receiver())
        script = asyncio.create_task(self._run_script(lines))
        try:
            await asyncio.wait({receiver, script}, return_when=asyncio.FIRST_COMPLETED)
            ended_by: Literal["caller", "server"] = "server" if receiver.done() else "caller"
            if script.done():
                script.result()  # a bug in the script surfaces here rather than as a silent hang-up
            await self._hang_up(clock, receiver)
            return ended_by
        finally:
            for task in (script, clock, receiver):
                task.cancel()
            await asyncio.gather(script, clock, receiver, return_exceptions=True)
            self.player.finish(self.loop.time())

    async def _hang_up(self, clock: asyncio.Task[None], receiver: asyncio.Task[None]) -> None:
        self.hung_up = True  # the clock sends nothing after this (a phone line goes quiet at `stop`)
        await clock
        if receiver.done():
            return
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(self.wire.stop())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(receiver), STOP_WAIT_S)

    async def _run_clock(self) -> None:
        """Every 20 ms, against absolute deadlines: one uplink frame, then acknowledge what finished playing."""
        self.clock_start = self.loop.time()
        sent = 0
        while not self.hung_up:
            delay = self.clock_start + sent * FRAME_S - self.loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -RESYNC_S:
                self.clock_start -= delay
            now = self.loop.time()
            frame = self._next_frame(now)
            self.sent_frames.append(frame)
            await self.send(self.wire.uplink(frame))
            for name, played_ms in self.player.due(now):
                await self.send(self.wire.ack(name, played_ms))
            sent += 1

    async def _run_receiver(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in self.ws:
                await self.wire.handle(message, self)

    async def _run_script(self, lines: list[CallerLine]) -> None:
        reply_began = await self._await_reply(self.turns[0], GREETING_WAIT_S)
        for line in lines:
            await self._wait_for_turn(line, reply_began)
            turn = self._say(line)
            await turn.spoken.wait()
            reply_began = await self._await_reply(turn, self.reply_timeout_s)
        if reply_began is not None:
            await self._wait_quiet()

    # -- the script's steps

    async def _wait_for_turn(self, line: CallerLine, reply_began: float | None) -> None:
        if line.after is not None:
            await line.after.wait()
        if reply_began is None:
            return  # nothing to wait for: the agent did not answer
        if line.start_after_agent_audio_ms is None:
            await self._wait_quiet()
        else:
            await asyncio.sleep(max(0.0, reply_began + line.start_after_agent_audio_ms / 1000 - self.loop.time()))

    def _say(self, line: CallerLine) -> _Turn:
        turn = _Turn(len(self.turns), line.text)
        self.turns.append(turn)
        self.mouth.append(_utterance(line, turn, self.wire.rate))
        return turn

    async def _await_reply(self, turn: _Turn, timeout: float) -> float | None:
        """When the first agent audio after this turn's speech arrived (None if none within `timeout`)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(turn.replied.wait(), timeout)
        return turn.first_audio

    async def _wait_quiet(self) -> None:
        """Until the agent's audio has played out and `gap_after_reply_s` passed with nothing new."""
        limit = self.loop.time() + MAX_REPLY_S
        # New audio only ever moves play_end later, so sleeping to the current deadline and rechecking is enough.
        while (remaining := self.player.play_end + self.gap_after_reply_s - self.loop.time()) > 0:
            if (left := limit - self.loop.time()) <= 0:
                self.bad_message(f"the agent was still talking after {MAX_REPLY_S:g} s")
                return
            await asyncio.sleep(min(remaining, left))

    def _next_frame(self, now: float) -> Pcm16:
        """The caller's next 20 ms: the current line's next frame, or silence (a line never stops streaming)."""
        if not self.mouth:
            return self.silence
        utterance = self.mouth[0]
        index, utterance.sent = utterance.sent, utterance.sent + 1
        if index == 0:
            utterance.turn.speech_start = now
        if index == utterance.last_speech:
            utterance.turn.speech_end = now
            self.reply_turn = utterance.turn  # agent audio from now on answers this line
            utterance.turn.spoken.set()
        if utterance.sent == len(utterance.frames):
            self.mouth.popleft()
        return utterance.frames[index]

    # -- events from the server (called by the wire)

    async def send(self, message: str | bytes) -> None:
        if self.hung_up:
            return  # after `stop` the caller is gone: no more audio or acknowledgements
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(message)

    def on_audio(self, samples: Pcm16) -> None:
        now = self.loop.time()
        turn = self.reply_turn
        if turn.first_audio is None:
            turn.first_audio = now
            turn.replied.set()
        turn.received_samples += len(samples)
        self.player.add(samples, now, turn.index)

    def on_segment_start(self, name: str) -> None:
        self.player.start_segment(name, self.loop.time())

    def on_segment_end(self, name: str) -> None:
        if not self.player.close_segment(name, self.loop.time()):
            self.bad_message(f"end of segment {name!r} while another segment was playing")

    async def on_clear(self) -> None:
        now = self.loop.time()
        self.clears.append(now - self.opened)
        speaking = self.turns[-1]
        if speaking.index > 0 and speaking.speech_start is not None and speaking.clear_at is None:
            speaking.clear_at = now
        # As Twilio does: everything pending is acknowledged at once, with what was actually played.
        for name, played_ms in self.player.clear(now):
            await self.send(self.wire.ack(name, played_ms))

    def on_transcript(self, role: str, text: str, final: bool) -> None:
        if final:
            self.transcript.append((role, text))
            self.reply_turn.transcripts.append((role, text))

    def on_transfer(self, reason: str | None) -> None:
        self.transfer = (True, reason)

    def bad_message(self, reason: str) -> None:
        self.bad_messages.append(reason)

    # -- results

    def turn_reports(self) -> list[TurnReport]:
        """The lines that were (at least partly) said; a line queued as the call ended was not."""
        return [self._turn_report(turn) for turn in self.turns[1:] if turn.speech_start is not None]

    def _turn_report(self, turn: _Turn) -> TurnReport:
        answered = turn.first_audio is not None and turn.speech_end is not None
        return TurnReport(
            text=turn.text,
            v2v_ms=(turn.first_audio - turn.speech_end) * 1000 if answered else None,
            reply_audio_s=turn.received_samples / self.wire.rate,
            answered=answered,
            transcripts=turn.transcripts,
            clear_ms=None if turn.clear_at is None else (turn.clear_at - turn.speech_start) * 1000,
            agent_audio=self.played(turn.index),
        )

    def played(self, turn: int) -> Pcm16:
        pieces = [c.samples for c in self.player.chunks if c.turn == turn]
        return np.concatenate(pieces) if pieces else np.zeros(0, np.int16)

    def agent_timeline(self) -> Pcm16:
        """The agent's audio as played, placed at its time on the caller's recording (silence between)."""
        rate = self.wire.rate
        caller_samples = sum(len(frame) for frame in self.sent_frames)
        starts = [max(0, round((c.start - self.clock_start) * rate)) for c in self.player.chunks]
        ends = [start + len(c.samples) for start, c in zip(starts, self.player.chunks, strict=True)]
        timeline = np.zeros(max([caller_samples, *ends]), np.int16)
        for start, end, chunk in zip(starts, ends, self.player.chunks, strict=True):
            timeline[start:end] = chunk.samples
        return timeline

    def caller_recording(self) -> Pcm16:
        return np.concatenate(self.sent_frames) if self.sent_frames else np.zeros(0, np.int16)


# ---------------------------------------------------------------- placing a call


async def place_call(
    url: str,
    lines: list[CallerLine],
    *,
    protocol: CallProtocol,
    caller_id: str = "+15555550100",
    reply_timeout_s: float = 30.0,
    gap_after_reply_s: float = 1.2,
    record_dir: Path | None = None,
) -> CallReport:
    """Call the server at `url` (a full websocket URL: see `call_url`), say `lines` in turn, and report.

    Raises `ConnectFailed` when there is no connection and `CallError` when the plain server never says
    `ready`; once the call is up, anything the server does (bad messages, closing early) ends up in the report.
    """
    wire = _make_wire(protocol, caller_id)
    try:
        ws = await connect(url, max_size=MAX_SERVER_MESSAGE_BYTES, compression=None, open_timeout=CONNECT_TIMEOUT_S)
    except (OSError, InvalidURI, InvalidHandshake, TimeoutError) as exc:
        raise ConnectFailed(f"could not connect to {url}: {exc or type(exc).__name__}") from exc
    async with ws:
        call_id = await wire.setup(ws)
        call = _Call(ws, wire, reply_timeout_s, gap_after_reply_s)
        ended_by = await call.run(lines)
    report = _report(call, protocol, url, call_id, ended_by, len(lines), ws.close_code)
    if record_dir is not None:
        report.recordings = _record(report, record_dir)
    return report


def _make_wire(protocol: CallProtocol, caller_id: str) -> _Wire:
    if protocol == "twilio":
        return _TwilioWire(caller_id)
    if protocol == "plain":
        return _PlainWire(caller_id)
    raise ValueError(f"unknown protocol {protocol!r}: 'twilio' or 'plain'")


def _report(
    call: _Call,
    protocol: CallProtocol,
    url: str,
    call_id: str,
    ended_by: Literal["caller", "server"],
    lines: int,
    code: int | None,
) -> CallReport:
    turns = call.turn_reports()
    return CallReport(
        protocol=protocol,
        url=url,
        call_id=call_id,
        sample_rate=call.wire.rate,
        turns=turns,
        greeting_audio_s=call.turns[0].received_samples / call.wire.rate,
        lines_unsaid=lines - len(turns),
        ended_by=ended_by,
        close_code=code,
        transcript=call.transcript,
        clears=call.clears,
        transferred=call.transfer[0],
        transfer_reason=call.transfer[1],
        server_errors=call.server_errors,
        bad_messages=call.bad_messages,
        agent_audio=call.agent_timeline(),
        caller_audio=call.caller_recording(),
    )


def _record(report: CallReport, directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"agent": directory / "agent.wav", "caller": directory / "caller.wav"}
    write_wav(paths["agent"], report.agent_audio, report.sample_rate)
    write_wav(paths["caller"], report.caller_audio, report.sample_rate)
    return paths


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
    http_base: str, call_id: str | None = None, call_sid: str | None = None, *, attempts: int = 3, retry_s: float = 0.5
) -> dict[str, Any] | None:
    """The server's record of a call, `{"call": {...}, "turns": [...]}`, or None when it has none.

    A 404 is retried a few times: the server may still be writing the record as the call closes.
    """
    if call_id is not None:
        url = f"{http_base.rstrip('/')}/api/calls/{urllib.parse.quote(call_id, safe='')}"
    elif call_sid is not None:
        url = f"{http_base.rstrip('/')}/api/calls?{urllib.parse.urlencode({'call_sid': call_sid})}"
    else:
        raise ValueError("fetch_call_record needs call_id or call_sid")
    for attempt in range(attempts):
        status, body = await asyncio.to_thread(_get_json, url)
        if status != 404:
            return body if status == 200 and isinstance(body, dict) else None
        if attempt + 1 < attempts:
            await asyncio.sleep(retry_s)
    return None


def _get_json(url: str) -> tuple[int | None, Any]:
    """(HTTP status, parsed JSON body or None); status None when the server cannot be reached."""
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
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
