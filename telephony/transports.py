"""The agent's side of a call websocket: audio frames, segment marks, clears and control messages, per protocol.

`TwilioTransport` speaks Twilio Media Streams, `PlainTransport` the plain protocol (PROTOCOL.md); both
implement the `CallTransport` the voice pipeline sends through (`agent.call.voice_config`), over one
`WebSocketSender` that serialises sends. Which call a websocket feeds is wired in `innkeeper.serve.calls`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import numpy as np
import numpy.typing as npt
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from telephony import plain_protocol as plain
from telephony import twilio_protocol as twilio
from telephony.codec import pcm16_to_bytes
from telephony.resample import PHONE_RATE

log = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008  # a connection the server will not serve (e.g. a stream not opened by our webhook)
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013  # every line is busy: the server takes no more calls just now


class WebSocketSender:
    """Serialises sends on one websocket (the voice loop and the receive loop both send)."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self._lock = asyncio.Lock()
        self.closed = False

    async def text(self, message: str) -> None:
        await self._send(self.ws.send_text, message)

    async def binary(self, data: bytes) -> None:
        await self._send(self.ws.send_bytes, data)

    async def close(self, code: int = CLOSE_NORMAL) -> None:
        async with self._lock:
            if self.closed:
                return
            self.closed = True
            if self.ws.application_state is not WebSocketState.DISCONNECTED:
                with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):  # the peer is gone already
                    await self.ws.close(code)

    async def _send(self, send, payload) -> None:
        async with self._lock:
            if self.closed:
                return
            try:
                await send(payload)
            except (RuntimeError, WebSocketDisconnect, OSError):
                self.closed = True  # the peer left; the receive loop ends the call


class TwilioTransport:
    """Agent audio as mu-law media messages; segment ends as marks; barge-in as `clear`."""

    rate = PHONE_RATE
    reports_playback = False  # mark echoes say "played", not how much: the send clock estimates the rest

    def __init__(self, sender: WebSocketSender, stream_sid: str) -> None:
        self.sender = sender
        self.stream_sid = stream_sid

    async def send_audio(self, frame: npt.NDArray[np.int16]) -> None:
        await self.sender.text(twilio.outbound_media(self.stream_sid, frame))

    async def start_segment(self, mark: str, text: str) -> None:
        return None  # Twilio marks the end of a segment only

    async def end_segment(self, mark: str) -> None:
        await self.sender.text(twilio.outbound_mark(self.stream_sid, mark))

    async def clear(self) -> None:
        await self.sender.text(twilio.outbound_clear(self.stream_sid))

    async def transcript(self, role: str, text: str, final: bool) -> None:
        return None  # no text channel on a phone line

    async def transfer(self, reason: str) -> None:
        # Closing the stream hands the call back to the TwiML after <Connect>, which dials the front desk
        # when one is configured (see server.twilio_voice).
        log.info("twilio stream %s: transfer (%s)", self.stream_sid, reason)

    async def hang_up(self) -> None:
        await self.sender.close(CLOSE_NORMAL)


class PlainTransport:
    """Agent audio as binary PCM16 16 kHz frames inside `agent_audio_start`/`_end`; JSON control messages."""

    rate = plain.SAMPLE_RATE
    reports_playback = True  # the client says how many ms of each segment it played

    def __init__(self, sender: WebSocketSender) -> None:
        self.sender = sender

    async def send_audio(self, frame: npt.NDArray[np.int16]) -> None:
        await self.sender.binary(pcm16_to_bytes(frame))

    async def start_segment(self, mark: str, text: str) -> None:
        await self._send(plain.ServerAgentAudioStart(mark=mark, text=text))

    async def end_segment(self, mark: str) -> None:
        await self._send(plain.ServerAgentAudioEnd(mark=mark))

    async def clear(self) -> None:
        await self._send(plain.ServerClear())

    async def transcript(self, role: str, text: str, final: bool) -> None:
        await self._send(plain.ServerTranscript(role=role, text=text, final=final))

    async def transfer(self, reason: str) -> None:
        await self._send(plain.ServerTransfer(reason=reason))

    async def hang_up(self) -> None:
        await self.sender.close(CLOSE_NORMAL)

    async def ready(self, call_id: str) -> None:
        await self._send(plain.ServerReady(call_id=call_id))

    async def error(self, message: str) -> None:
        await self._send(plain.ServerError(message=message))

    async def _send(self, message: plain.ServerMessage) -> None:
        await self.sender.text(plain.dump_message(message))
