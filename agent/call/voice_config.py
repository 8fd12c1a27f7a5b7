"""What a `VoiceCall` is built from: its turn-taking settings, the shared speech models, and its transport.

Kept apart from the pipeline in `agent.call.voice` so that `innkeeper.serve` can load the models and read
the settings once per process without reaching into the per-call code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from agent.speech.asr import Recognizer
from agent.speech.tts import Synthesizer
from agent.speech.vad import EndpointConfig, SileroVad


@dataclass(frozen=True)
class VoiceConfig:
    """Turn-taking and playback settings of a call (from `Settings`; see `voice_config`)."""

    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    # Caller speech over the agent interrupts once it lasts this long and holds a word that is not a
    # backchannel ("mhm", "okay"): long enough that a cough or a murmur of assent does not cut the agent off.
    barge_in_min_speech_ms: int = 400
    backchannels: frozenset[str] = frozenset(
        {"mhm", "mm", "hmm", "uh", "huh", "uh-huh", "um", "okay", "ok", "yeah", "yes", "right", "sure", "yep", "ah"}
        # assent the agent should talk through: "that's right", "correct", "got it", "I see"
        | {"that's", "thats", "correct", "exactly", "alright", "got", "it", "i", "see", "great", "perfect", "oh"}
    )
    # Audio sent ahead of the caller's playback: enough to ride out jitter, small enough that a `clear`
    # rarely has much to drop and the send clock stays a good estimate of what was heard.
    lead_ms: int = 240
    partial_every_ms: int | None = 1200  # partial transcripts while the caller speaks (None = off)
    ack_wait_ms: int = 400  # after a barge-in, how long to wait for the client's playback report
    read_ahead: bool = True  # where the model reads turns, start on the words of the caller's first pause
    # End the turn at the first pause when its words sound finished (`agent.speech.turn_end`), not after the
    # whole endpoint silence: the caller's wait shrinks by the difference. Off by default: at a comma pause
    # Whisper may hear "Thanks," as the finished "Thanks." and the turn is cut in two.
    end_on_finished_words: bool = False


@dataclass
class SpeechModels:
    """The process-wide speech models every call shares."""

    recognizer: Recognizer
    synthesizer: Synthesizer
    vad: SileroVad
    config: VoiceConfig = field(default_factory=VoiceConfig)


class CallTransport(Protocol):
    """What the voice loop needs from a websocket protocol (Twilio or plain)."""

    rate: int  # sample rate of agent audio on the wire

    async def send_audio(self, frame: npt.NDArray[np.int16]) -> None: ...
    async def start_segment(self, mark: str, text: str) -> None: ...
    async def end_segment(self, mark: str) -> None: ...
    async def clear(self) -> None: ...
    async def transcript(self, role: str, text: str, final: bool) -> None: ...
    async def transfer(self, reason: str) -> None: ...
    async def hang_up(self) -> None: ...
