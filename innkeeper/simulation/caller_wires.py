"""The far end of the line: a phone speaker that plays the agent's audio in real time, and the two wire
protocols (Twilio Media Streams as Twilio speaks it; the plain protocol as an SDK client)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from innkeeper.simulation.call_report import CallError
from innkeeper.simulation.caller_lines import Pcm16
from telephony import plain_protocol as plain
from telephony import twilio_protocol as tw
from telephony.codec import mulaw_encode, pcm16_from_bytes, pcm16_to_bytes
from telephony.framing import FRAME_MS
from telephony.resample import PHONE_RATE

if TYPE_CHECKING:
    from innkeeper.simulation.voice_caller import SimulatedCall


CONNECT_TIMEOUT_S = 10.0
# Frames quieter than this are not speech (line noise sits under -50 dBFS): the end of a line's speech,
# from which voice-to-voice latency counts, is its last frame above it, not the end of its trailing hush.
# A server may send a whole sentence of agent audio in one message; the plain protocol allows 1 MiB.
MAX_SERVER_MESSAGE_BYTES = plain.MAX_BINARY_MESSAGE_BYTES


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


class Player:
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


class Wire(Protocol):
    """What differs between Twilio and the plain protocol; the call logic is shared."""

    rate: int  # audio rate on the wire, both directions

    async def setup(self, ws: ClientConnection) -> str: ...
    def uplink(self, frame: Pcm16) -> str | bytes: ...
    async def handle(self, message: str | bytes, call: SimulatedCall) -> None: ...
    def ack(self, name: str, played_ms: int) -> str: ...
    def stop(self) -> str: ...


_TWILIO_SERVER_MESSAGES: dict[str, type[tw.OutboundMedia | tw.OutboundMark | tw.OutboundClear]] = {
    "media": tw.OutboundMedia,
    "mark": tw.OutboundMark,
    "clear": tw.OutboundClear,
}


class TwilioWire:
    """Twilio's side of a Media Stream: its message shapes, with numbers as strings like the real thing."""

    rate = PHONE_RATE

    def __init__(self, caller_id: str, auth_token: str | None = None) -> None:
        """`auth_token`: the Twilio account's, when the server checks it: the stream then carries the token the
        server's signed webhook would have put in the TwiML for this call."""
        self.stream_sid = f"MZ{secrets.token_hex(16)}"
        self.call_sid = f"CA{secrets.token_hex(16)}"
        self.account_sid = f"AC{secrets.token_hex(16)}"
        self.caller_id = caller_id
        self.auth_token = auth_token
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
        if self.auth_token:
            start["customParameters"]["token"] = tw.stream_token(self.auth_token, self.call_sid)
        await ws.send(self._message("start", start=start))
        return self.call_sid

    def uplink(self, frame: Pcm16) -> str:
        self._chunk += 1
        payload = base64.b64encode(mulaw_encode(frame).tobytes()).decode("ascii")
        timestamp = str((self._chunk - 1) * FRAME_MS)  # ms of media since the stream started
        media = {"track": "inbound", "chunk": str(self._chunk), "timestamp": timestamp, "payload": payload}
        return self._message("media", media=media)

    async def handle(self, message: str | bytes, call: SimulatedCall) -> None:
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


class PlainWire:
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

    async def handle(self, message: str | bytes, call: SimulatedCall) -> None:
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

    async def _dispatch(self, parsed: plain.ServerMessage, call: SimulatedCall) -> None:
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
