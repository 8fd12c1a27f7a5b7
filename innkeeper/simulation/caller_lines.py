"""What a simulated caller says: lines of audio from text (the bundled voice) or WAV files, and WAV I/O."""

from __future__ import annotations

import asyncio
import wave
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from telephony.codec import mulaw_decode, mulaw_encode, pcm16_from_bytes, pcm16_to_bytes
from telephony.resample import PHONE_RATE, resample

if TYPE_CHECKING:
    from agent.speech.tts import Synthesizer

CallProtocol = Literal["twilio", "plain"]
Pcm16 = npt.NDArray[np.int16]

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
