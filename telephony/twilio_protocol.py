"""The Twilio Media Streams wire protocol: typed messages, parsing, outbound messages, TwiML, signatures.

Twilio opens a websocket to us (from `<Connect><Stream>` TwiML) and sends JSON text messages:
`connected`, then `start`, then `media` every 20 ms (base64 mu-law, 8 kHz, mono), `dtmf` on key
presses, `mark` when audio we queued up to a mark has been played (or dropped by `clear`), and `stop`.
We send `media` (audio to play), `mark` (tell us when playback reaches here) and `clear` (drop all
queued audio: barge-in). Field names follow Twilio's camelCase on the wire and snake_case in Python.

Parsing is strict about what the server relies on and lenient about the rest: unknown extra fields are
ignored (Twilio adds fields over time), an unknown event raises `UnknownEvent` (a `ProtocolError` the
server can skip), anything else malformed raises `ProtocolError` with a reason fit for the log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, Stream, VoiceResponse

from telephony.codec import mulaw_decode, mulaw_encode

TWILIO_SAMPLE_RATE = 8000
_Model = TypeVar("_Model", bound=BaseModel)
MAX_TWILIO_MESSAGE_BYTES = 64 * 1024  # a 20 ms media message is ~250 bytes; `start` with parameters a few KiB

DTMF_DIGIT_PATTERN = r"^[0-9*#A-D]$"


class ProtocolError(ValueError):
    """A message that does not follow the protocol; `reason` says what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownEvent(ProtocolError):
    """A well-formed message of a kind we do not know: log it and carry on (the peer may be newer)."""

    def __init__(self, event: str) -> None:
        super().__init__(f"unknown event {event!r}")
        self.event = event


def decode_json_object(text: str | bytes, max_bytes: int) -> dict[str, Any]:
    """Parse one websocket text message that must be a JSON object no larger than `max_bytes`."""
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8"))
    if size > max_bytes:
        raise ProtocolError(f"message of {size} bytes exceeds the {max_bytes}-byte limit")
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def validation_reason(kind: str, exc: ValidationError) -> str:
    """One line naming every bad field by its wire path, e.g. "start message: start.callSid: Field required"."""
    problems = "; ".join(f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors())
    return f"{kind} message: {problems}"


class _Wire(BaseModel):
    """camelCase on the wire, snake_case in Python; immutable once parsed."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


# --- inbound (Twilio -> us) -------------------------------------------------------------------------


class MediaFormat(_Wire):
    # Literal types: anything else is a stream this server cannot decode, so refuse it at `start`.
    encoding: Literal["audio/x-mulaw"]
    sample_rate: Literal[8000]
    channels: Literal[1]


class StartInfo(_Wire):
    stream_sid: str = Field(min_length=1)
    account_sid: str = Field(min_length=1)
    call_sid: str = Field(min_length=1)
    tracks: list[str] = Field(min_length=1)
    media_format: MediaFormat
    custom_parameters: dict[str, str] = Field(default_factory=dict)


class MediaInfo(_Wire):
    track: str  # "inbound" for <Connect><Stream>; "outbound" only with <Start><Stream track="both_tracks">
    chunk: int  # Twilio sends these numbers as strings; pydantic converts them
    timestamp: int  # milliseconds since the stream started
    payload: str  # base64 mu-law

    @field_validator("payload")
    @classmethod
    def _payload_is_base64(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("payload is not valid base64") from None
        return value


class MarkInfo(_Wire):
    name: str


class DtmfInfo(_Wire):
    track: str = "inbound_track"
    digit: str = Field(pattern=DTMF_DIGIT_PATTERN)


class StopInfo(_Wire):
    account_sid: str
    call_sid: str


class ConnectedMessage(_Wire):
    event: Literal["connected"]
    protocol: str
    version: str


class StartMessage(_Wire):
    event: Literal["start"]
    sequence_number: int | None = None
    stream_sid: str = Field(min_length=1)
    start: StartInfo


class MediaMessage(_Wire):
    event: Literal["media"]
    sequence_number: int | None = None
    stream_sid: str
    media: MediaInfo

    def pcm16(self) -> npt.NDArray[np.int16]:
        """The caller's audio in this message: 8 kHz int16."""
        return media_payload_to_pcm16(self.media.payload)


class MarkMessage(_Wire):
    event: Literal["mark"]
    sequence_number: int | None = None
    stream_sid: str
    mark: MarkInfo


class DtmfMessage(_Wire):
    event: Literal["dtmf"]
    sequence_number: int | None = None
    stream_sid: str
    dtmf: DtmfInfo


class StopMessage(_Wire):
    event: Literal["stop"]
    sequence_number: int | None = None
    stream_sid: str
    stop: StopInfo


InboundMessage = ConnectedMessage | StartMessage | MediaMessage | MarkMessage | DtmfMessage | StopMessage

_INBOUND: dict[str, type[InboundMessage]] = {
    "connected": ConnectedMessage,
    "start": StartMessage,
    "media": MediaMessage,
    "mark": MarkMessage,
    "dtmf": DtmfMessage,
    "stop": StopMessage,
}


def parse_inbound(text: str | bytes) -> InboundMessage:
    """One websocket message from Twilio -> its typed model (ProtocolError / UnknownEvent otherwise)."""
    return parse_tagged(text, "event", _INBOUND, MAX_TWILIO_MESSAGE_BYTES)


def parse_tagged(text: str | bytes, tag: str, models: Mapping[str, type[_Model]], max_bytes: int) -> _Model:
    """A JSON object whose `tag` field names its model -> that model, validated.

    ProtocolError for bad JSON, a missing tag or invalid fields; UnknownEvent for a tag with no model.
    """
    obj = decode_json_object(text, max_bytes)
    kind = obj.get(tag)
    if not isinstance(kind, str):
        raise ProtocolError(f"missing or non-string '{tag}'")
    model = models.get(kind)
    if model is None:
        raise UnknownEvent(kind)
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise ProtocolError(validation_reason(kind, exc)) from None


def media_payload_to_pcm16(payload: str) -> npt.NDArray[np.int16]:
    """A media payload (base64 mu-law) -> 8 kHz int16 samples."""
    try:
        codes = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("media payload is not valid base64") from None
    return mulaw_decode(codes)


# --- outbound (us -> Twilio) ------------------------------------------------------------------------


class OutboundMediaBody(_Wire):
    payload: str


class OutboundMedia(_Wire):
    event: Literal["media"] = "media"
    stream_sid: str
    media: OutboundMediaBody


class OutboundMark(_Wire):
    event: Literal["mark"] = "mark"
    stream_sid: str
    mark: MarkInfo


class OutboundClear(_Wire):
    event: Literal["clear"] = "clear"
    stream_sid: str


def _dump(message: _Wire) -> str:
    return message.model_dump_json(by_alias=True)


def outbound_media_mulaw(stream_sid: str, mulaw: bytes) -> str:
    """A `media` message carrying already-encoded mu-law bytes (8 kHz, no header)."""
    payload = base64.b64encode(mulaw).decode("ascii")
    return _dump(OutboundMedia(stream_sid=stream_sid, media=OutboundMediaBody(payload=payload)))


def outbound_media(stream_sid: str, pcm16_8k: npt.ArrayLike) -> str:
    """A `media` message playing 8 kHz int16 audio to the caller (Twilio queues it behind earlier media)."""
    return outbound_media_mulaw(stream_sid, mulaw_encode(pcm16_8k).tobytes())


def outbound_mark(stream_sid: str, name: str) -> str:
    """A `mark`: Twilio echoes it back once everything queued before it has played (or been cleared)."""
    return _dump(OutboundMark(stream_sid=stream_sid, mark=MarkInfo(name=name)))


def outbound_clear(stream_sid: str) -> str:
    """A `clear`: drop all queued audio now (barge-in); pending marks come back at once."""
    return _dump(OutboundClear(stream_sid=stream_sid))


# --- HTTP side: TwiML and webhook signatures -----------------------------------------------------------


def twiml_connect_stream(
    ws_url: str, parameters: Mapping[str, str] | None = None, *, then_dial: str | None = None
) -> str:
    """The TwiML answer to an incoming-call webhook: a bidirectional stream to `ws_url` (must be wss://).

    `parameters` arrive in the `start` message as `customParameters` (Twilio passes no query string on).
    `then_dial`: a number Twilio dials when the stream ends without the caller hanging up — the agent
    closes the stream to hand a caller to the front desk.
    """
    if not ws_url.startswith("wss://"):
        raise ValueError(f"Twilio only connects media streams to wss:// URLs, got {ws_url!r}")
    response = VoiceResponse()
    connect = Connect()
    stream = Stream(url=ws_url)
    for name, value in (parameters or {}).items():
        stream.parameter(name=name, value=value)
    connect.append(stream)
    response.append(connect)
    if then_dial:
        response.dial(then_dial)
    return str(response)


def twiml_busy(message: str, *, dial: str | None = None) -> str:
    """The answer when every line is taken: say so, then hand the caller to `dial`, or hang up."""
    response = VoiceResponse()
    response.say(message)
    if dial:
        response.dial(dial)
    else:
        response.hangup()
    return str(response)


def stream_token(auth_token: str, call_sid: str) -> str:
    """The token the webhook puts in the stream's parameters, bound to this call: only a stream that Twilio
    opened from our own TwiML (after a signed webhook) can carry it."""
    return hmac.new(auth_token.encode(), f"stream:{call_sid}".encode(), hashlib.sha256).hexdigest()[:32]


def valid_stream_token(auth_token: str, call_sid: str, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(stream_token(auth_token, call_sid), str(token))


def validate_signature(
    auth_token: str, url: str, params: Mapping[str, str] | str | None, signature: str | None
) -> bool:
    """Whether a webhook request really comes from Twilio (the X-Twilio-Signature header).

    `url` is the full URL Twilio requested (scheme, host, path and query, as Twilio saw it: behind a
    proxy, rebuild it from the public address); `params` the POSTed form fields.
    """
    if not auth_token or not signature:
        return False
    return RequestValidator(auth_token).validate(url, params or {}, signature)
