"""The two call websockets, each adapted to the voice loop: Twilio Media Streams and the plain protocol.

One job: move messages between a websocket and a `VoiceCall`. Parsing and message building live in
`telephony/` (no I/O there); the voice loop in `agent/call/voice.py` (no protocol there). A bad message is
logged (Twilio, which has no error channel) or answered with an `error` (plain) and the call goes on;
an oversized one closes the socket with 1009; a dropped connection ends the call cleanly.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from agent.call.conversation import DB_ERRORS
from agent.call.recorder import CallRecorder
from agent.call.voice import VoiceCall
from agent.call.voice_config import SpeechModels
from innkeeper.serve.auth import Refused, check_origin
from innkeeper.serve.limits import SlidingWindow
from innkeeper.serve.live import LiveFeed, WatchedTransport
from innkeeper.serve.metrics import ServerMetrics
from innkeeper.serve.runtime import AgentRuntime
from telephony import plain_protocol as plain
from telephony import twilio_protocol as twilio
from telephony.codec import pcm16_to_float32
from telephony.resample import ASR_RATE, PHONE_RATE, StreamResampler
from telephony.transports import (
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN_LATER,
    PlainTransport,
    TwilioTransport,
    WebSocketSender,
)

log = logging.getLogger(__name__)

BUSY_MESSAGE = "All our lines are busy right now. Please call again in a few minutes."
TOO_MANY_MESSAGE = "We've had many calls from you in the last minute. Please call again a little later."


@dataclass
class CallServices:
    """What every call handler shares: the agent runtime, the speech models and the live calls."""

    runtime: AgentRuntime
    models: SpeechModels
    active: dict[str, VoiceCall] = field(default_factory=dict)
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    call_starts: SlidingWindow | None = None  # per caller number / address; from settings when not given
    live: LiveFeed = field(default_factory=LiveFeed)  # what the dashboard's live page shows

    def __post_init__(self) -> None:
        self.metrics.calls_active.set_function(lambda: len(self.active))
        if self.call_starts is None:
            self.call_starts = SlidingWindow(self.runtime.settings.calls_per_source_per_minute, 60.0)

    def admit(self, source: str, channel: str) -> str | None:
        """None when a new call from `source` may start; else why not (said to the caller)."""
        if self.at_capacity():
            self.metrics.calls_refused.labels("busy").inc()
            log.warning("%s call refused: all %d lines busy", channel, self.runtime.settings.max_calls)
            return BUSY_MESSAGE
        assert self.call_starts is not None
        if not self.call_starts.allow(source):
            self.metrics.calls_refused.labels("rate").inc()
            log.warning("%s call refused: too many calls from %s", channel, source)
            return TOO_MANY_MESSAGE
        return None

    def at_capacity(self) -> bool:
        """Every line is taken (`INNKEEPER_MAX_CALLS`): a new call is answered politely and not taken."""
        limit = self.runtime.settings.max_calls
        return limit > 0 and len(self.active) >= limit


async def serve_twilio(ws: WebSocket, services: CallServices) -> None:
    """One Twilio Media Stream, from `connected` to `stop` or disconnect."""
    await ws.accept()
    stream = _TwilioStream(WebSocketSender(ws), services)
    try:
        while not stream.sender.closed:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect" or not await stream.handle(message):
                break
    except WebSocketDisconnect:
        pass
    finally:
        await _end(stream.call, stream.sender, services)


class _TwilioStream:
    """The state of one Twilio websocket: the call once `start` came, and the caller's upsampler."""

    def __init__(self, sender: WebSocketSender, services: CallServices) -> None:
        self.sender = sender
        self.services = services
        self.call: VoiceCall | None = None
        self.upsample = StreamResampler(PHONE_RATE, ASR_RATE, low_latency=True)

    async def handle(self, message: dict[str, Any]) -> bool:
        """One websocket message; False when the stream should end."""
        if message.get("bytes") is not None:
            _reject(self.services, "twilio: binary frame (ignored)")
            return True
        text = message.get("text") or ""
        if len(text.encode("utf-8")) > twilio.MAX_TWILIO_MESSAGE_BYTES:
            await self.sender.close(CLOSE_TOO_BIG)
            return False
        try:
            return await self._dispatch(twilio.parse_inbound(text))
        except twilio.ProtocolError as err:  # malformed JSON, a bad field, a payload that is not base64
            _reject(self.services, f"twilio: {err}")
            return True

    async def _dispatch(self, event: twilio.InboundMessage) -> bool:
        if isinstance(event, twilio.StartMessage):
            if self.call is None:
                if not _stream_is_ours(event, self.services):
                    _reject(self.services, "twilio: a stream start without our webhook's token (closed)")
                    await self.sender.close(CLOSE_POLICY)
                    return False
                self.call = await _start_twilio_call(event, self.sender, self.services)
            return True
        if self.call is None:
            if not isinstance(event, twilio.ConnectedMessage):
                _reject(self.services, f"twilio: {event.event} before start (ignored)")
            return True
        if isinstance(event, twilio.MediaMessage):
            pcm8k = event.pcm16()
            self.call.hear(pcm16_to_float32(self.upsample.process(pcm8k)))
        elif isinstance(event, twilio.MarkMessage):
            self.call.played(event.mark.name, None)
        elif isinstance(event, twilio.DtmfMessage):
            await self.call.dtmf(event.dtmf.digit)
        elif isinstance(event, twilio.StopMessage):
            return False
        return True


def _stream_is_ours(start: twilio.StartMessage, services: CallServices) -> bool:
    """With a Twilio auth token configured, a stream must carry the token our signed webhook gave its call."""
    auth_token = services.runtime.settings.twilio_auth_token
    if not auth_token:
        return True
    token = (start.start.custom_parameters or {}).get("token")
    return twilio.valid_stream_token(auth_token, start.start.call_sid, token)


async def _start_twilio_call(start: twilio.StartMessage, sender: WebSocketSender, services: CallServices) -> VoiceCall:
    params = start.start.custom_parameters or {}
    transport = TwilioTransport(sender, start.stream_sid)
    meta = {"call_sid": start.start.call_sid, "stream_sid": start.stream_sid, "parameters": params}
    return await _open_call(services, transport, "twilio", params.get("caller"), meta, caller_rate=ASR_RATE)


# ------------------------------------------------------------------------------------------ plain


async def serve_plain(ws: WebSocket, services: CallServices) -> None:
    """One call on the plain protocol (telephony/PROTOCOL.md)."""
    try:  # a page on another site must not place calls with a visitor's browser
        check_origin(ws, services.runtime.settings)
    except Refused as refused:
        log.warning("plain call refused: %s", refused)
        await ws.close(code=1008, reason=str(refused)[:120])
        return
    await ws.accept()
    sender = WebSocketSender(ws)
    transport = PlainTransport(sender)
    source = f"address:{ws.client.host if ws.client else 'unknown'}"  # the caller field is the client's to say
    call: VoiceCall | None = None
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            if message.get("bytes") is not None:
                call = await _plain_audio(message["bytes"], call, transport, services)
            else:
                text = message.get("text") or ""
                if len(text.encode("utf-8")) > plain.MAX_TEXT_MESSAGE_BYTES:
                    await sender.close(CLOSE_TOO_BIG)
                    break
                call, stop = await _plain_control(text, call, transport, services, source)
                if stop:
                    break
            if sender.closed:
                break
    except WebSocketDisconnect:
        pass
    finally:
        await _end(call, sender, services)


async def _plain_audio(data: bytes, call: VoiceCall | None, transport: PlainTransport, services) -> VoiceCall | None:
    if len(data) > plain.MAX_BINARY_MESSAGE_BYTES:
        await transport.sender.close(CLOSE_TOO_BIG)
        return call
    if call is None:
        _reject(services, "plain: audio before start")
        await transport.error("send a start message first")
        return call
    try:
        pcm = plain.parse_client_audio(data)
    except plain.ProtocolError as err:
        _reject(services, f"plain: {err}")
        await transport.error(str(err))
        return call
    call.hear(pcm16_to_float32(pcm))
    return call


async def _plain_control(
    text: str, call: VoiceCall | None, transport: PlainTransport, services: CallServices, source: str
) -> tuple[VoiceCall | None, bool]:
    """Handle one JSON message; returns the call (created by `start`) and whether the call should end."""
    try:
        message = plain.parse_client_message(text)
    except plain.UnknownEvent as err:
        _reject(services, f"plain: {err}")
        return call, False  # newer clients may send types we do not know
    except plain.ProtocolError as err:
        _reject(services, f"plain: {err}")
        await transport.error(str(err))
        return call, False
    if isinstance(message, plain.ClientStart):
        if call is not None:
            await transport.error("the call has started already")
            return call, False
        refusal = services.admit(source, "web")
        if refusal is not None:
            await transport.error(refusal)
            await transport.sender.close(CLOSE_TRY_AGAIN_LATER)
            return call, True
        call = await _open_call(services, transport, "web", message.caller, {}, caller_rate=plain.SAMPLE_RATE)
        await transport.ready(call.conversation.planned_call_id)
        return call, False
    if call is None:
        _reject(services, f"plain: {message.type} before start")
        await transport.error("send a start message first")
        return call, False
    if isinstance(message, plain.ClientPlayback):
        call.played(message.mark, message.played_ms)
    elif isinstance(message, plain.ClientDtmf):
        await call.dtmf(message.digit)
    elif isinstance(message, plain.ClientStop):
        return call, True
    return call, False


# ------------------------------------------------------------------------------------------ shared


async def _open_call(
    services: CallServices, transport, channel: str, caller: str | None, meta: dict[str, Any], *, caller_rate: int
) -> VoiceCall:
    conversation = services.runtime.new_conversation(channel=channel, caller_number=caller)
    call_id = conversation.planned_call_id
    settings = services.runtime.settings
    recorder = CallRecorder(settings.calls_dir, call_id, caller_rate=caller_rate, agent_rate=transport.rate)
    try:
        await conversation.start()
        await asyncio.to_thread(
            services.runtime.call_log.set_audio,
            call_id,
            caller_audio=None if "caller" in recorder.errors else str(recorder.caller_path),
            agent_audio=None if "agent" in recorder.errors else str(recorder.agent_path),
        )
        if meta:
            await asyncio.to_thread(services.runtime.call_log.update_meta, call_id, **meta)
    except DB_ERRORS as err:  # the call goes on; the conversation writes its turns once the database is back
        log.error("call %s: call record unavailable: %s", call_id, err)
    watched = WatchedTransport(transport, services.live, call_id)
    call = VoiceCall(conversation, services.models, watched, recorder=recorder)
    services.active[call_id] = call
    services.live.publish(call_id, "call_started", channel=channel, caller=caller or "")
    await call.begin()
    return call


async def _end(call: VoiceCall | None, sender: WebSocketSender, services: CallServices) -> None:
    """Whatever ended the call: log what is pending, stop its tasks, close the socket."""
    if call is not None:
        try:
            await call.hang_up()
            meta: dict[str, Any] = {"voice_events": call.events} if call.events else {}
            if call.recorder is not None and not call.recorder.complete:
                services.metrics.errors.labels("recording").inc()
                meta["recording_error"] = call.recorder.errors  # the call went on; its recording did not
            if meta:
                await asyncio.to_thread(services.runtime.call_log.update_meta, call.conversation.call_id, **meta)
            await _count(call, services)
        except Exception:  # never let one call's cleanup take the server down
            services.metrics.errors.labels("call_cleanup").inc()
            log.exception("call %s: cleanup failed", call.conversation.call_id)
        finally:
            services.active.pop(call.conversation.planned_call_id, None)
            services.live.publish(call.conversation.planned_call_id, "call_ended")
            services.live.forget(call.conversation.planned_call_id)
    await sender.close(CLOSE_NORMAL)


async def _count(call: VoiceCall, services: CallServices) -> None:
    """The ended call's turns and latencies into the metrics, from its record (nothing when it has none)."""
    if call.conversation.call_id is None:
        return
    call_log = services.runtime.call_log
    try:
        summary = await asyncio.to_thread(call_log.call_summary, call.conversation.call_id)
        turns = await asyncio.to_thread(call_log.transcript, call.conversation.call_id)
    except DB_ERRORS:
        services.metrics.errors.labels("call_log").inc()
        return
    barge_ins = sum(1 for event in call.events if event.get("event") == "barge_in")
    services.metrics.call_ended(summary.channel, summary.end_reason, turns, barge_ins)


def _reject(services: CallServices, reason: str) -> None:
    services.metrics.rejected_messages.inc()
    log.warning("%s", reason)
