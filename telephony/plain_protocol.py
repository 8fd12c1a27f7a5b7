"""The plain websocket call protocol on `/ws/call` for SDKs and browsers (specified in PROTOCOL.md).

Text frames carry JSON control messages tagged by `type`; binary frames carry audio as PCM16
little-endian mono at 16 kHz, in both directions. This module holds the message models, the parsers
and the size limits the server enforces; it does no I/O. Errors are the Twilio module's own types (so
one server loop handles both protocols alike): a `ProtocolError` with a reason, and its subclass
`UnknownEvent` for a well-formed message of an unknown type.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from telephony.codec import pcm16_from_bytes
from telephony.twilio_protocol import (
    DTMF_DIGIT_PATTERN,
    parse_tagged,
)
from telephony.twilio_protocol import (
    ProtocolError as ProtocolError,  # re-exported: this protocol's errors too
)
from telephony.twilio_protocol import (
    UnknownEvent as UnknownEvent,
)

WS_PATH = "/ws/call"
SAMPLE_RATE = 16000  # the only rate of protocol version 1, both directions
FRAME_MS = 20  # recommended audio frame length (640 bytes), not required
MAX_TEXT_MESSAGE_BYTES = 64 * 1024
MAX_BINARY_MESSAGE_BYTES = 1024 * 1024  # 32 s of audio: far more than any sane chunk, small enough to bound memory
MAX_TEXT_FIELD_CHARS = 4096  # caller ids, mark ids and the like; a transcript line is well below


class _Message(BaseModel):
    """Unknown fields are ignored so that older servers accept newer clients."""

    model_config = ConfigDict(extra="ignore", frozen=True)


# --- client -> server ---------------------------------------------------------------------------------


class ClientStart(_Message):
    """First message of a call."""

    type: Literal["start"]
    caller: str | None = Field(default=None, max_length=256)  # free text: a phone number, a user id...
    sample_rate: Literal[16000] = SAMPLE_RATE


class ClientPlayback(_Message):
    """What the caller actually heard of the agent audio labelled `mark` (sent when it finished or was cut)."""

    type: Literal["playback"]
    mark: str = Field(min_length=1, max_length=MAX_TEXT_FIELD_CHARS)
    played_ms: int = Field(ge=0)


class ClientDtmf(_Message):
    type: Literal["dtmf"]
    digit: str = Field(pattern=DTMF_DIGIT_PATTERN)


class ClientStop(_Message):
    """The caller hung up; the server ends the call and closes the socket."""

    type: Literal["stop"]


ClientMessage = ClientStart | ClientPlayback | ClientDtmf | ClientStop

_CLIENT: dict[str, type[ClientMessage]] = {
    "start": ClientStart,
    "playback": ClientPlayback,
    "dtmf": ClientDtmf,
    "stop": ClientStop,
}


# --- server -> client ---------------------------------------------------------------------------------


class ServerReady(_Message):
    """The call is set up; audio may flow."""

    type: Literal["ready"] = "ready"
    call_id: str
    sample_rate: int = SAMPLE_RATE


class ServerTranscript(_Message):
    """A line of the conversation; caller lines come as partials (final=False) before the final one."""

    type: Literal["transcript"] = "transcript"
    role: Literal["caller", "agent"]
    text: str
    final: bool


class ServerAgentAudioStart(_Message):
    """The binary frames that follow, up to the matching `agent_audio_end`, speak `text`."""

    type: Literal["agent_audio_start"] = "agent_audio_start"
    mark: str
    text: str = ""


class ServerAgentAudioEnd(_Message):
    """All audio for `mark` has been sent; the client answers with `playback` once it has played it."""

    type: Literal["agent_audio_end"] = "agent_audio_end"
    mark: str
    text: str = ""


class ServerClear(_Message):
    """Barge-in: drop all queued agent audio now, then report `playback` for each mark cut short."""

    type: Literal["clear"] = "clear"


class ServerTransfer(_Message):
    """The call is being handed to a person; `reason` is for display/logging."""

    type: Literal["transfer"] = "transfer"
    reason: str | None = None


class ServerError(_Message):
    """Something the client did or the server hit; fatal errors are followed by a close."""

    type: Literal["error"] = "error"
    message: str


ServerMessage = (
    ServerReady
    | ServerTranscript
    | ServerAgentAudioStart
    | ServerAgentAudioEnd
    | ServerClear
    | ServerTransfer
    | ServerError
)

_SERVER: dict[str, type[ServerMessage]] = {
    "ready": ServerReady,
    "transcript": ServerTranscript,
    "agent_audio_start": ServerAgentAudioStart,
    "agent_audio_end": ServerAgentAudioEnd,
    "clear": ServerClear,
    "transfer": ServerTransfer,
    "error": ServerError,
}


# --- parsing ------------------------------------------------------------------------------------------


def parse_client_message(text: str | bytes) -> ClientMessage:
    """A text frame from the client -> its typed model (ProtocolError / UnknownEvent otherwise)."""
    return parse_tagged(text, "type", _CLIENT, MAX_TEXT_MESSAGE_BYTES)


def parse_server_message(text: str | bytes) -> ServerMessage:
    """A text frame from the server -> its typed model (for clients and tests)."""
    return parse_tagged(text, "type", _SERVER, MAX_TEXT_MESSAGE_BYTES)


def parse_client_audio(data: bytes | bytearray | memoryview) -> npt.NDArray[np.int16]:
    """A binary frame from the client -> 16 kHz int16 samples (ProtocolError if oversized or odd-length)."""
    if len(data) > MAX_BINARY_MESSAGE_BYTES:
        raise ProtocolError(f"audio frame of {len(data)} bytes exceeds the {MAX_BINARY_MESSAGE_BYTES}-byte limit")
    try:
        return pcm16_from_bytes(data)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None


def dump_message(message: ClientMessage | ServerMessage) -> str:
    """A message as the JSON text frame to send."""
    return message.model_dump_json()
