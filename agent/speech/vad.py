"""Voice activity and end-of-turn detection for live calls: when the caller starts and stops talking.

`SileroVad` is the Silero VAD v6 ONNX model that faster-whisper bundles, loaded once per process;
`VadStream` runs it on one call's 16 kHz audio, chunk by chunk, with one speech probability per
512-sample (32 ms) window. `Endpointer` turns those probabilities into turn events for the voice loop
(`SpeechStart`, `EarlyEnd`, `Resumed`, `End`) and keeps the audio of the current utterance.

Time is counted in samples fed (16 kHz), never read from a clock, so the same audio always gives the
same events whatever the chunk sizes.
"""

from __future__ import annotations

import enum
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime

from telephony.codec import pcm16_to_float32

SAMPLE_RATE = 16000
WINDOW = 512  # samples per VAD decision: the model was trained on 32 ms windows at 16 kHz
CONTEXT = 64  # samples of the previous window that the model sees in front of each window
STATE_SHAPE = (1, 1, 128)
MODEL_FILE = "silero_vad_v6.onnx"

Float32Audio = npt.NDArray[np.float32]


class VadModelMissing(FileNotFoundError):
    """The Silero VAD model that ships inside faster-whisper is not installed."""


def silero_model_path() -> Path:
    """Path of the Silero VAD v6 model in faster-whisper's assets (raises `VadModelMissing`)."""
    # find_spec locates the package without importing it (and ctranslate2 with it).
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or spec.origin is None:
        raise VadModelMissing("faster-whisper is not installed; install the `voice` extra to get the Silero VAD model")
    path = Path(spec.origin).parent / "assets" / MODEL_FILE
    if not path.is_file():
        raise VadModelMissing(f"{path} is missing; this faster-whisper does not ship {MODEL_FILE} (needs >= 1.1)")
    return path


@functools.cache
def _session(path: Path) -> onnxruntime.InferenceSession:
    """One session per model file and process: sessions are thread-safe and the model state lives in the caller."""
    options = onnxruntime.SessionOptions()
    # One window costs ~0.1 ms; threads would only fight ASR and TTS for the cores.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def as_float32(audio: npt.ArrayLike) -> Float32Audio:
    """Mono audio as float32 in [-1, 1); int16 PCM is scaled, floats are taken as they are."""
    array = np.asarray(audio)
    if array.ndim != 1:
        raise ValueError(f"expected mono 1-D audio, got shape {array.shape}")
    if array.dtype == np.int16:
        return pcm16_to_float32(array)
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"expected float32 or int16 audio, got {array.dtype}")
    return array.astype(np.float32, copy=False)


class SileroVad:
    """The Silero VAD model, shared by all calls of the process; `stream()` gives each call its own state.

    The onnxruntime session may be run from several threads at once: all per-call state is in the stream.
    """

    def __init__(self, model_path: Path | str | None = None) -> None:
        self.model_path = Path(model_path) if model_path is not None else silero_model_path()
        self._session = _session(self.model_path.resolve())

    def stream(self) -> VadStream:
        return VadStream(self)

    def run(
        self, windows: Float32Audio, h: Float32Audio, c: Float32Audio
    ) -> tuple[Float32Audio, Float32Audio, Float32Audio]:
        """Speech probabilities of consecutive (context + window) rows, shape (n, 576); returns (probs, h, c)."""
        probs, h, c = self._session.run(None, {"input": windows, "h": h, "c": c})
        return np.asarray(probs, dtype=np.float32).reshape(-1), h, c


@functools.cache
def default_vad() -> SileroVad:
    """The process-wide VAD on faster-whisper's bundled model."""
    return SileroVad()


class VadStream:
    """One call's VAD state: feed 16 kHz audio in chunks of any length, get one probability per 32 ms window.

    Each window is preceded by the last 64 samples of the previous window (zeros before the first) and
    the LSTM state carries over from window to window, as in faster-whisper's batch `SileroVADModel`;
    the probabilities equal its own until `QUIET_RESET_WINDOWS` quiet windows in a row clear the state.
    Why: the v6 state drifts over long digital silence (a phone line's silent frames are exact zeros).
    Measured on the bundled voice's "Yes, please book it." at 8 kHz mu-law: after 0.5-2 s of zeros its
    onset windows score ~0.8, after 10 s ~0.5 and after 24 s ~0.4, so a short "Yes" never opened a turn.
    With the state cleared after every 2 s of quiet an onset always scores as after at most 2 s.
    """

    QUIET_PROB = 0.1  # a window below this is quiet
    QUIET_RESET_WINDOWS = 62  # ~2 s of quiet windows in a row clear the LSTM state

    def __init__(self, vad: SileroVad) -> None:
        self._vad = vad
        self.reset()

    def reset(self) -> None:
        self._clear_state()
        # Context plus the samples not yet making a full window, kept contiguous.
        self._pending = np.zeros(CONTEXT, dtype=np.float32)

    def _clear_state(self) -> None:
        self._h = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._quiet = 0  # quiet windows in a row since the last speech-like window or state reset

    def feed(self, audio: npt.ArrayLike) -> list[float]:
        """Probabilities of the windows this chunk completes, in order (empty while a window is filling)."""
        self._pending = np.concatenate([self._pending, as_float32(audio)])
        out: list[float] = []
        while (count := (len(self._pending) - CONTEXT) // WINDOW) > 0:
            probs = self._run(count)
            used = self._accept(probs)
            out.extend(probs[:used])
            self._pending = self._pending[used * WINDOW :].copy()
        return out

    def _run(self, count: int) -> list[float]:
        # Each row is a window with the 64 samples before it. The v6 graph carries its LSTM state from row
        # to row (faster-whisper's batch call relies on that too), so a 1 s chunk is one session run.
        rows = np.lib.stride_tricks.sliding_window_view(self._pending[: CONTEXT + count * WINDOW], CONTEXT + WINDOW)
        probs, self._h, self._c = self._vad.run(np.ascontiguousarray(rows[::WINDOW]), self._h, self._c)
        return probs.tolist()

    def _accept(self, probs: list[float]) -> int:
        """How many of `probs` stand; if a quiet run completes inside them, clear the state after it.

        The windows after a reset are run again from the clear state (next loop in `feed`), so the result
        does not depend on how the audio was chunked.
        """
        for index, prob in enumerate(probs):
            self._quiet = self._quiet + 1 if prob < self.QUIET_PROB else 0
            if self._quiet >= self.QUIET_RESET_WINDOWS:
                self._clear_state()
                return index + 1
        return len(probs)


# ---------------------------------------------------------------- end of turn


class ProbabilityStream(Protocol):
    """What `Endpointer` needs from a VAD stream (`VadStream`; tests script their own probabilities)."""

    def feed(self, audio: npt.ArrayLike) -> list[float]: ...

    def reset(self) -> None: ...


class StreamingVad(Protocol):
    def stream(self) -> ProbabilityStream: ...


@dataclass(frozen=True)
class EndpointConfig:
    """Thresholds and timings of turn detection, in milliseconds of audio (rounded to 32 ms windows)."""

    threshold: float = 0.5  # probability at which silence turns into speech
    neg_threshold: float = 0.35  # probability below which speech turns into silence (hysteresis)
    min_speech_ms: int = 96  # a turn starts only after this much unbroken speech: clicks and coughs don't count
    endpoint_silence_ms: int = 480  # silence after speech that ends the turn
    early_silence_ms: int = 192  # silence that emits EarlyEnd so recognition can start speculatively
    pre_roll_ms: int = 320  # audio kept before the speech start, so word onsets are not clipped
    max_turn_ms: int = 20000  # speech longer than this is cut into a forced End
    post_roll_ms: int = 160  # audio kept after the last speech, so word endings are not clipped

    def __post_init__(self) -> None:
        if not 0.0 < self.neg_threshold <= self.threshold < 1.0:
            raise ValueError(f"need 0 < neg_threshold <= threshold < 1, got {self.neg_threshold}, {self.threshold}")
        if min(self.min_speech_ms, self.endpoint_silence_ms, self.early_silence_ms, self.max_turn_ms) <= 0:
            raise ValueError("min_speech_ms, endpoint_silence_ms, early_silence_ms and max_turn_ms must be positive")
        if min(self.pre_roll_ms, self.post_roll_ms) < 0:
            raise ValueError("pre_roll_ms and post_roll_ms must not be negative")


class EventKind(enum.Enum):
    SPEECH_START = "speech_start"
    EARLY_END = "early_end"
    RESUMED = "resumed"
    END = "end"


def _ms(samples: int) -> int:
    return samples * 1000 // SAMPLE_RATE


def _samples(ms: int) -> int:
    return ms * SAMPLE_RATE // 1000


@dataclass(frozen=True)
class SpeechStart:
    """A turn started: `start` is the first sample of the speech; detected at `position` (min_speech later)."""

    kind: ClassVar[EventKind] = EventKind.SPEECH_START
    position: int
    start: int


@dataclass(frozen=True, eq=False)
class EarlyEnd:
    """The caller has been silent for early_silence_ms: `audio` is the utterance so far, as End would give it.

    If no `Resumed` follows before `End`, the End audio is exactly this audio, so a transcript started
    on it can be used as is.
    """

    kind: ClassVar[EventKind] = EventKind.EARLY_END
    position: int
    audio: Float32Audio
    audio_start: int  # stream sample position of audio[0]
    speech_end: int


@dataclass(frozen=True)
class Resumed:
    """Speech came back after an EarlyEnd: discard whatever was started on it."""

    kind: ClassVar[EventKind] = EventKind.RESUMED
    position: int


@dataclass(frozen=True, eq=False)
class End:
    """The turn is over: `audio` runs from pre_roll before the speech start to post_roll after its end.

    `max_length` marks a turn cut at max_turn_ms while the caller may still be talking; if they are,
    the next turn starts where this audio stops (no sample is in two turns).
    """

    kind: ClassVar[EventKind] = EventKind.END
    position: int
    audio: Float32Audio
    audio_start: int  # stream sample position of audio[0]
    start: int  # first speech sample
    speech_end: int  # one past the last speech sample
    silence_ms: int  # silence between speech_end and position
    max_length: bool = False

    @property
    def speech_ms(self) -> int:
        """From the first to the last speech sample, pauses inside the turn included."""
        return _ms(self.speech_end - self.start)


Event = SpeechStart | EarlyEnd | Resumed | End


class _AudioBuffer:
    """The stream's recent audio addressed by absolute sample position; old samples are dropped explicitly."""

    def __init__(self) -> None:
        self._data = np.zeros(4 * SAMPLE_RATE, dtype=np.float32)
        self.start = 0  # position of _data[0]
        self.end = 0  # position after the last sample appended

    def append(self, audio: Float32Audio) -> None:
        used = self.end - self.start
        if used + len(audio) > len(self._data):
            grown = np.zeros(max(2 * len(self._data), used + len(audio)), dtype=np.float32)
            grown[:used] = self._data[:used]
            self._data = grown
        self._data[used : used + len(audio)] = audio
        self.end += len(audio)

    def drop_before(self, position: int) -> None:
        cut = min(position, self.end) - self.start
        if cut <= 0:
            return
        kept = self.end - self.start - cut
        self._data[:kept] = self._data[cut : cut + kept]
        self.start += cut

    def slice(self, begin: int, end: int) -> Float32Audio:
        begin, end = max(begin, self.start), min(end, self.end)
        return self._data[begin - self.start : max(begin, end) - self.start].copy()


class Endpointer:
    """One call's turn detector: `push` caller audio (16 kHz), act on the events it returns.

    A pure state machine over the VAD probabilities of 32 ms windows, so events are decided at window
    boundaries: SpeechStart min_speech_ms after the onset, EarlyEnd and End at the first boundary where
    the silence since the last speech window reaches early_silence_ms / endpoint_silence_ms.
    """

    def __init__(self, vad: StreamingVad | None = None, config: EndpointConfig | None = None) -> None:
        self.config = config or EndpointConfig()
        self._stream = (vad or default_vad()).stream()
        self._min_speech = _samples(self.config.min_speech_ms)
        self._endpoint = _samples(self.config.endpoint_silence_ms)
        # Not before the post-roll has arrived: then EarlyEnd's audio is final, and equals End's if no Resumed follows.
        self._early = _samples(max(self.config.early_silence_ms, self.config.post_roll_ms))
        self._pre_roll = _samples(self.config.pre_roll_ms)
        self._post_roll = _samples(self.config.post_roll_ms)
        self._max_turn = _samples(self.config.max_turn_ms)
        self.reset()

    def reset(self) -> None:
        """Forget everything: a new stream starting at position 0."""
        self._stream.reset()
        self._buffer = _AudioBuffer()
        self._position = 0  # end of the last window the VAD has decided
        self._voiced = False  # hysteresis state of the last window
        self._candidate: int | None = None  # start of speech not yet long enough to open a turn
        self._start: int | None = None  # speech start of the open turn
        self._speech_end = 0  # end of the last speech window of the open turn
        self._early_sent = False
        self._floor = 0  # audio before this belongs to an ended turn

    @property
    def in_speech(self) -> bool:
        """A turn is open: from SpeechStart until End, pauses included."""
        return self._start is not None

    @property
    def speech_ms_so_far(self) -> int:
        """How long the open turn's speech has lasted (first to latest speech window); 0 when idle."""
        return 0 if self._start is None else _ms(self._speech_end - self._start)

    def current_audio(self) -> Float32Audio:
        """The open turn's audio from its pre-roll up to the latest sample pushed; empty when idle."""
        if self._start is None:
            return np.zeros(0, dtype=np.float32)
        return self._buffer.slice(self._audio_start(), self._buffer.end)

    def push(self, audio: npt.ArrayLike) -> list[Event]:
        """Feed a chunk of 16 kHz caller audio (float32 or int16, any length); the events it caused, in order."""
        samples = as_float32(audio)
        self._buffer.append(samples)
        events: list[Event] = []
        for prob in self._stream.feed(samples):
            self._position += WINDOW
            events.extend(self._step(prob))
        self._trim()
        return events

    def _step(self, prob: float) -> list[Event]:
        cfg = self.config
        self._voiced = prob >= (cfg.neg_threshold if self._voiced else cfg.threshold)
        if self._start is None:
            return self._step_idle()
        return self._step_in_turn()

    def _step_idle(self) -> list[Event]:
        window_start = self._position - WINDOW
        if not self._voiced:
            self._candidate = None
            return []
        if self._candidate is None:
            self._candidate = window_start
        if self._position - self._candidate < self._min_speech:
            return []
        self._start, self._candidate = self._candidate, None
        self._speech_end = self._position
        self._early_sent = False
        return [SpeechStart(position=self._position, start=self._start)]

    def _step_in_turn(self) -> list[Event]:
        assert self._start is not None
        events: list[Event] = []
        if self._voiced:
            self._speech_end = self._position
            if self._early_sent:
                self._early_sent = False
                events.append(Resumed(position=self._position))
        silence = self._position - self._speech_end
        if self._position - self._start >= self._max_turn:
            events.append(self._end(max_length=True))
        elif silence >= self._endpoint:
            events.append(self._end(max_length=False))
        elif silence >= self._early and not self._early_sent:
            self._early_sent = True
            begin, end = self._utterance_bounds()
            audio = self._buffer.slice(begin, end)
            events.append(EarlyEnd(self._position, audio, begin, self._speech_end))
        return events

    def end_now(self) -> End | None:
        """End the open turn at once, after an EarlyEnd that no speech has followed (the words sound finished):
        the End the endpoint silence would give later, with the same audio. None when there is no such pause."""
        if self._start is None or not self._early_sent:
            return None
        return self._end(max_length=False)

    def _end(self, *, max_length: bool) -> End:
        assert self._start is not None
        begin, end = self._utterance_bounds()
        event = End(
            position=self._position,
            audio=self._buffer.slice(begin, end),
            audio_start=begin,
            start=self._start,
            speech_end=self._speech_end,
            silence_ms=_ms(self._position - self._speech_end),
            max_length=max_length,
        )
        self._start, self._floor, self._early_sent = None, end, False
        # A cut turn hands over mid-speech: the next one must prove itself from its own onset.
        self._voiced = False
        return event

    def _audio_start(self) -> int:
        assert self._start is not None
        return max(self._start - self._pre_roll, self._floor)

    def _utterance_bounds(self) -> tuple[int, int]:
        """Pre-roll before the speech start to post-roll after the last speech, within the audio decided so far."""
        return self._audio_start(), min(self._speech_end + self._post_roll, self._position)

    def _trim(self) -> None:
        """Keep only what a turn can still need: the open turn, or the pre-roll in front of a possible start."""
        if self._start is not None:
            return
        onset = self._candidate if self._candidate is not None else self._position
        self._buffer.drop_before(max(onset - self._pre_roll, self._floor))
