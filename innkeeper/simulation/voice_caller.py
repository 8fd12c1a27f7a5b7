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
import contextlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from innkeeper.simulation.call_report import CallReport, ConnectFailed, TurnReport
from innkeeper.simulation.caller_lines import CallerLine, CallProtocol, Pcm16, write_wav
from innkeeper.simulation.caller_wires import (
    CONNECT_TIMEOUT_S,
    MAX_SERVER_MESSAGE_BYTES,
    PlainWire,
    Player,
    TwilioWire,
    Wire,
)
from telephony.framing import FRAME_MS, frames_of
from telephony.resample import resample

FRAME_S = FRAME_MS / 1000
GREETING_WAIT_S = 8.0  # a caller who hears nothing starts talking anyway
STOP_WAIT_S = 5.0  # after `stop`, how long the server gets to close the socket before we do
MAX_REPLY_S = 120.0  # an agent still talking after this long is stuck; move on rather than hang the run
RESYNC_S = 0.5  # a clock this far behind (stalled process) restarts its schedule instead of bursting frames
# Frames quieter than this are not speech (line noise sits under -50 dBFS): the end of a line's speech,
# from which voice-to-voice latency counts, is its last frame above it, not the end of its trailing hush.
SPEECH_DBFS = -50.0


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


class SimulatedCall:
    """One call in progress: a 20 ms clock that talks and plays, a receiver, and the caller's script."""

    def __init__(self, ws: ClientConnection, wire: Wire, reply_timeout_s: float, gap_after_reply_s: float) -> None:
        self.ws = ws
        self.wire = wire
        self.reply_timeout_s = reply_timeout_s
        self.gap_after_reply_s = gap_after_reply_s
        self.loop = asyncio.get_running_loop()
        self.opened = self.loop.time()
        self.player = Player(wire.rate)
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
    twilio_auth_token: str | None = None,
) -> CallReport:
    """Call the server at `url` (a full websocket URL: see `call_url`), say `lines` in turn, and report.

    `twilio_auth_token`: the account's token when the server checks it (its streams must carry the token its
    signed webhook hands out).

    Raises `ConnectFailed` when there is no connection and `CallError` when the plain server never says
    `ready`; once the call is up, anything the server does (bad messages, closing early) ends up in the report.
    """
    wire = make_wire(protocol, caller_id, twilio_auth_token)
    try:
        ws = await connect(url, max_size=MAX_SERVER_MESSAGE_BYTES, compression=None, open_timeout=CONNECT_TIMEOUT_S)
    except (OSError, InvalidURI, InvalidHandshake, TimeoutError) as exc:
        raise ConnectFailed(f"could not connect to {url}: {exc or type(exc).__name__}") from exc
    async with ws:
        call_id = await wire.setup(ws)
        call = SimulatedCall(ws, wire, reply_timeout_s, gap_after_reply_s)
        ended_by = await call.run(lines)
    report = _report(call, protocol, url, call_id, ended_by, len(lines), ws.close_code)
    if record_dir is not None:
        report.recordings = _record(report, record_dir)
    return report


def make_wire(protocol: CallProtocol, caller_id: str, twilio_auth_token: str | None = None) -> Wire:
    if protocol == "twilio":
        return TwilioWire(caller_id, twilio_auth_token)
    if protocol == "plain":
        return PlainWire(caller_id)
    raise ValueError(f"unknown protocol {protocol!r}: 'twilio' or 'plain'")


def _report(
    call: SimulatedCall,
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
