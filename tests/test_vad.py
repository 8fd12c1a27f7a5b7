"""Streaming Silero VAD and end-of-turn detection (agent/speech/vad.py).

The state machine is tested twice: on scripted probabilities (a fake VAD that reads each window's
probability from the audio itself, so timings are exact) and on real speech from the bundled Piper
voice through the real Silero model.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import pytest
from faster_whisper.vad import SileroVADModel

from agent.speech.tts import Synthesizer
from agent.speech.vad import (
    WINDOW,
    EarlyEnd,
    End,
    EndpointConfig,
    Endpointer,
    Event,
    EventKind,
    Resumed,
    SpeechStart,
    VadStream,
    default_vad,
    silero_model_path,
)
from innkeeper.core.provision import ModelIntegrityError
from innkeeper.core.settings import Settings
from innkeeper.serve.speech import load_synthesizer
from telephony.codec import float32_to_pcm16, mulaw_decode, mulaw_encode, pcm16_to_float32
from telephony.resample import ASR_RATE, resample

RATE = ASR_RATE
MS = RATE // 1000  # samples per millisecond
Audio = npt.NDArray[np.float32]

START, EARLY, RESUMED, END = EventKind.SPEECH_START, EventKind.EARLY_END, EventKind.RESUMED, EventKind.END


def silence(ms: int) -> Audio:
    return np.zeros(ms * MS, dtype=np.float32)


def push_in_chunks(endpointer: Endpointer, audio: Audio, sizes: Sequence[int] | int) -> list[Event]:
    """Push `audio` in chunks of `sizes` samples (one size, or a list cycled through)."""
    cycle = [sizes] if isinstance(sizes, int) else list(sizes)
    events: list[Event] = []
    at, i = 0, 0
    while at < len(audio):
        size = cycle[i % len(cycle)]
        events += endpointer.push(audio[at : at + size])
        at, i = at + size, i + 1
    return events


def kinds(events: Sequence[Event]) -> list[EventKind]:
    return [event.kind for event in events]


def ends(events: Sequence[Event]) -> list[End]:
    return [event for event in events if isinstance(event, End)]


def summary(event: Event) -> tuple[object, ...]:
    """An event as comparable values (the dataclasses hold numpy arrays, which `==` cannot compare)."""
    audio = getattr(event, "audio", None)
    fields = {k: v for k, v in vars(event).items() if k != "audio"}
    return (event.kind, tuple(sorted(fields.items())), None if audio is None else audio.tobytes())


# ---------------------------------------------------------------- scripted probabilities


class ScriptedStream:
    """A VAD stream whose probability for each window is the window's first sample: the test writes it."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._pending = np.zeros(0, dtype=np.float32)

    def feed(self, audio: npt.ArrayLike) -> list[float]:
        self._pending = np.concatenate([self._pending, np.asarray(audio, dtype=np.float32)])
        count = len(self._pending) // WINDOW
        probs = [float(self._pending[i * WINDOW]) for i in range(count)]
        self._pending = self._pending[count * WINDOW :]
        return probs


class ScriptedVad:
    def stream(self) -> ScriptedStream:
        return ScriptedStream()


def script(*runs: tuple[float, int]) -> Audio:
    """Audio that makes ScriptedStream report `prob` for `n` windows, for each (prob, n)."""
    return np.concatenate([np.full(n * WINDOW, prob, dtype=np.float32) for prob, n in runs])


def scripted(config: EndpointConfig | None = None) -> Endpointer:
    return Endpointer(ScriptedVad(), config)


def test_a_turn_needs_min_speech_of_unbroken_speech() -> None:
    # 96 ms = 3 windows: two voiced windows (a click, a cough) open no turn.
    assert push_in_chunks(scripted(), script((0.0, 10), (0.9, 2), (0.0, 30)), 320) == []
    events = push_in_chunks(scripted(), script((0.0, 10), (0.9, 3), (0.0, 30)), 320)
    assert kinds(events) == [START, EARLY, END]
    start = events[0]
    assert isinstance(start, SpeechStart) and start.start == 10 * WINDOW and start.position == 13 * WINDOW


def test_hysteresis_between_the_thresholds() -> None:
    # 0.4 lies between neg_threshold and threshold: it cannot start speech but it keeps speech going.
    assert push_in_chunks(scripted(), script((0.4, 20), (0.0, 30)), 320) == []
    events = push_in_chunks(scripted(), script((0.0, 10), (0.9, 3), (0.4, 10), (0.0, 30)), 320)
    end = ends(events)[0]
    assert end.speech_end == 23 * WINDOW and end.speech_ms == 13 * 32


def test_end_and_early_end_fire_at_the_configured_silence() -> None:
    config = EndpointConfig()
    events = push_in_chunks(scripted(config), script((0.0, 20), (0.9, 40), (0.0, 40)), 320)
    assert kinds(events) == [START, EARLY, END]
    _, early, end = events
    assert isinstance(early, EarlyEnd) and isinstance(end, End)
    speech_end = 60 * WINDOW
    assert early.position - speech_end == config.early_silence_ms * MS
    assert end.position - speech_end == config.endpoint_silence_ms * MS and end.silence_ms == 480
    assert end.start == 20 * WINDOW and end.speech_end == speech_end and not end.max_length
    # Pre-roll before the start, post-roll after the last speech, and the early audio is the final audio.
    assert end.audio_start == end.start - config.pre_roll_ms * MS
    assert end.audio_start + len(end.audio) == speech_end + config.post_roll_ms * MS
    assert np.array_equal(early.audio, end.audio) and early.audio_start == end.audio_start


def test_a_turn_ended_at_its_early_pause_is_the_turn_the_silence_would_have_ended() -> None:
    endpointer = scripted()
    assert endpointer.end_now() is None  # no turn open
    events = push_in_chunks(endpointer, script((0.0, 20), (0.9, 40)), 320)
    assert kinds(events) == [START] and endpointer.end_now() is None  # open, but no pause yet
    early = push_in_chunks(endpointer, script((0.0, 8)), 320)  # 256 ms: past early_silence_ms (and post-roll)
    assert kinds(early) == [EARLY]
    end = endpointer.end_now()
    assert isinstance(end, End) and np.array_equal(end.audio, early[0].audio) and end.silence_ms == 256
    assert not endpointer.in_speech and endpointer.end_now() is None
    # the rest of the silence ends nothing more; the next speech opens a new turn
    assert kinds(push_in_chunks(endpointer, script((0.0, 30), (0.9, 5), (0.0, 30)), 320)) == [START, EARLY, END]


def test_state_between_start_and_end() -> None:
    endpointer = scripted()
    endpointer.push(script((0.0, 20), (0.9, 10)))
    assert endpointer.in_speech and endpointer.speech_ms_so_far == 10 * 32
    assert len(endpointer.current_audio()) == 10 * WINDOW + 320 * MS  # speech plus the pre-roll
    endpointer.push(script((0.0, 20)))
    assert not endpointer.in_speech and endpointer.speech_ms_so_far == 0 and len(endpointer.current_audio()) == 0


def test_pre_roll_does_not_reach_into_the_previous_turn() -> None:
    config = EndpointConfig(endpoint_silence_ms=320, pre_roll_ms=1000)
    events = push_in_chunks(scripted(config), script((0.9, 10), (0.0, 12), (0.9, 10), (0.0, 20)), 320)
    first, second = ends(events)
    assert second.audio_start == first.audio_start + len(first.audio)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        EndpointConfig(threshold=0.3, neg_threshold=0.5)
    with pytest.raises(ValueError):
        EndpointConfig(endpoint_silence_ms=0)


def test_reset_starts_a_fresh_stream() -> None:
    endpointer = scripted()
    endpointer.push(script((0.0, 5), (0.9, 10)))
    endpointer.reset()
    assert not endpointer.in_speech
    events = endpointer.push(script((0.9, 3)))
    assert isinstance(events[0], SpeechStart) and events[0].start == 0


# ---------------------------------------------------------------- the real Silero model


def test_model_is_found() -> None:
    assert silero_model_path().name == "silero_vad_v6.onnx"


def batch_probs(audio: Audio) -> npt.NDArray[np.float32]:
    """faster-whisper's batch VAD over the whole windows of `audio`."""
    whole = audio[: len(audio) // WINDOW * WINDOW]
    # SileroVADModel zeroes the tail of the last window in place (its context trick); a spare window takes it.
    padded = np.concatenate([whole, np.zeros(WINDOW, dtype=np.float32)])
    return SileroVADModel(str(silero_model_path()))(padded)[:-1]


def stream_probs(audio: Audio, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    stream, probs, at = default_vad().stream(), [], 0
    while at < len(audio):
        size = int(rng.integers(1, 3000))
        probs += stream.feed(audio[at : at + size])
        at += size
    return np.array(probs, dtype=np.float32)


def chirps(seconds: float, rng: np.random.Generator) -> Audio:
    """Half-second chirps every second over faint noise: sound the VAD scores, none of it speech."""
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t * (1 + t)) * (t % 1 < 0.5) + rng.normal(0, 0.01, len(t))).astype(
        np.float32
    )


def test_streaming_equals_batch_on_synthetic_audio() -> None:
    rng = np.random.default_rng(1)
    audio = chirps(1.9, rng)  # shorter than a quiet run that clears the state
    assert len(audio) // WINDOW < VadStream.QUIET_RESET_WINDOWS
    np.testing.assert_allclose(stream_probs(audio, rng), batch_probs(audio), atol=1e-4)


def test_quiet_resets_do_not_depend_on_chunking() -> None:
    rng = np.random.default_rng(5)
    audio = chirps(7.0, rng)  # all quiet to the VAD: the state is cleared three times
    whole = np.array(default_vad().stream().feed(audio), dtype=np.float32)
    np.testing.assert_allclose(stream_probs(audio, rng), whole, atol=1e-5)
    # ...and the clearing is visible: past the first quiet run, the probabilities differ from faster-whisper's.
    assert not np.allclose(whole, batch_probs(audio), atol=1e-4)


def test_int16_and_float32_give_the_same_probabilities() -> None:
    pcm = (np.random.default_rng(2).normal(0, 3000, 8 * WINDOW)).astype(np.int16)
    as_int = default_vad().stream().feed(pcm)
    as_float = default_vad().stream().feed(pcm.astype(np.float32) / 32768)
    assert len(as_int) == 8 and np.allclose(as_int, as_float, atol=1e-6)


def test_low_noise_and_a_click_open_no_turn() -> None:
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 10 ** (-50 / 20), 3 * RATE).astype(np.float32)  # white noise at -50 dBFS RMS
    t = np.arange(60 * MS) / RATE
    click = (rng.normal(0, 0.5, len(t)) * np.exp(-t / 0.01)).astype(np.float32)  # 60 ms decaying burst
    assert push_in_chunks(Endpointer(), noise, 320) == []
    assert push_in_chunks(Endpointer(), np.concatenate([silence(500), click, silence(1000)]), 320) == []


# ---------------------------------------------------------------- real speech (Piper voice)

SENTENCE = "I'd like to book a Standard Queen for three nights."
SECOND = "The reservation is for two adults."
MORE = ("Is breakfast included, and how much is parking?", "We arrive on Friday, December seventh.")


@pytest.fixture(scope="module")
def say() -> Callable[[str], Audio]:
    """Text -> the bundled voice at 16 kHz float32, trimmed to its audible span (cached per text)."""
    try:
        tts: Synthesizer = load_synthesizer(Settings(tts_threads=1), variation=False)  # same audio every run
    except ModelIntegrityError as exc:
        pytest.skip(f"bundled Piper voice not provisioned (run `innkeeper models`): {exc}")

    @functools.cache
    def speak(text: str) -> Audio:
        pcm, rate = tts.synthesize(text)
        audio = resample(pcm, rate, RATE).astype(np.float32) / 32768
        onset, offset = audible_span(audio)
        return audio[onset:offset]

    return speak


def audible_span(audio: Audio) -> tuple[int, int]:
    """First and one-past-last sample of the 10 ms frames within 50 dB of the loudest: where the voice is."""
    frames = audio[: len(audio) // (10 * MS) * 10 * MS].reshape(-1, 10 * MS)
    level = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    loud = np.flatnonzero(level > level.max() - 50)
    return int(loud[0]) * 10 * MS, (int(loud[-1]) + 1) * 10 * MS


def two_sentences(say: Callable[[str], Audio], pause_ms: int) -> Audio:
    return np.concatenate([silence(1000), say(SENTENCE), silence(pause_ms), say(SECOND), silence(1000)])


@pytest.mark.real_model
def test_streaming_equals_batch_on_speech(say: Callable[[str], Audio]) -> None:
    audio = np.concatenate([silence(300), say(SENTENCE), silence(700)])
    np.testing.assert_allclose(stream_probs(audio, np.random.default_rng(4)), batch_probs(audio), atol=1e-4)


@pytest.mark.real_model
def test_a_sentence_in_silence_is_one_turn(say: Callable[[str], Audio]) -> None:
    config = EndpointConfig()
    audio = np.concatenate([silence(1000), say(SENTENCE), silence(1000)])
    onset, offset = 1000 * MS, 1000 * MS + len(say(SENTENCE))
    events = push_in_chunks(Endpointer(config=config), audio, 320)
    assert kinds(events).count(START) == 1 and kinds(events).count(END) == 1, kinds(events)
    (end,) = ends(events)
    # Silero holds speech for about a window after the sound dies away; the decision lands on a window edge.
    assert 0 <= end.position - offset - config.endpoint_silence_ms * MS <= 64 * MS, (end.position - offset) / MS
    # Silero starts speech up to ~200 ms into a soft onset ("Is ..."); the pre-roll must reach back past it.
    assert onset - (config.pre_roll_ms + 32) * MS <= end.audio_start <= onset - config.pre_roll_ms * MS // 2
    assert end.audio_start + len(end.audio) >= offset
    assert np.array_equal(end.audio, audio[end.audio_start : end.audio_start + len(end.audio)])
    heard_on, heard_off = audible_span(end.audio)
    assert heard_on + end.audio_start <= onset + 10 * MS and heard_off + end.audio_start >= offset - 10 * MS
    assert config.endpoint_silence_ms <= end.silence_ms < config.endpoint_silence_ms + 32


@pytest.mark.real_model
def test_a_short_word_after_long_digital_silence_opens_the_turn(say: Callable[[str], Audio]) -> None:
    # A caller who listened to a 25 s read-back in silence (a phone line's silent frames are exact zeros)
    # says "Yes, please book it.": the "Yes" must be in the turn, as it is after a short silence.
    phone = mulaw_decode(mulaw_encode(float32_to_pcm16(resample(say("Yes, please book it."), RATE, 8000))))
    words = pcm16_to_float32(resample(phone, 8000, RATE))
    turns = {}
    for quiet_s in (0.5, 25.0):
        audio = np.concatenate([np.zeros(int(quiet_s * RATE), np.float32), words, silence(1000)])
        (end,) = ends(push_in_chunks(Endpointer(), audio, 320))
        turns[quiet_s] = end.start - int(quiet_s * RATE)
    assert abs(turns[25.0] - turns[0.5]) <= 64 * MS, turns
    assert turns[25.0] <= 150 * MS, turns  # "Yes" starts the turn, not "please" (~0.6 s later)


@pytest.mark.real_model
def test_a_short_pause_keeps_one_turn_and_a_long_one_splits_it(say: Callable[[str], Audio]) -> None:
    assert kinds(push_in_chunks(Endpointer(), two_sentences(say, 250), 320)).count(END) == 1
    split = ends(push_in_chunks(Endpointer(), two_sentences(say, 900), 320))
    assert len(split) == 2
    first, second = split
    assert first.audio_start + len(first.audio) <= second.audio_start


@pytest.mark.real_model
def test_a_pause_gives_early_end_then_resumed(say: Callable[[str], Audio]) -> None:
    events = push_in_chunks(Endpointer(), two_sentences(say, 250), 320)
    # The second EarlyEnd is not resumed: its audio is the final one, ready before End.
    assert kinds(events) == [START, EARLY, RESUMED, EARLY, END]
    assert isinstance(events[3], EarlyEnd) and isinstance(events[4], End)
    assert np.array_equal(events[3].audio, events[4].audio)
    assert isinstance(events[2], Resumed) and events[2].position > events[1].position


@pytest.mark.real_model
def test_max_turn_forces_an_end_on_continuous_speech(say: Callable[[str], Audio]) -> None:
    config = EndpointConfig(max_turn_ms=3000)
    talk = [part for text in (SENTENCE, *MORE) for part in (say(text), silence(100))]
    audio = np.concatenate([silence(500), *talk, silence(1000)])
    turns = ends(push_in_chunks(Endpointer(config=config), audio, 320))
    assert turns[0].max_length and 3000 <= turns[0].speech_ms < 3000 + 32
    assert not turns[-1].max_length and len(turns) >= 3
    for before, after in itertools.pairwise(turns):
        assert before.audio_start + len(before.audio) <= after.audio_start  # no sample in two turns


@pytest.mark.real_model
def test_chunk_size_does_not_change_the_events(say: Callable[[str], Audio]) -> None:
    audio = np.concatenate([two_sentences(say, 250), say(SENTENCE), silence(1000)])
    by_20ms = push_in_chunks(Endpointer(), audio, 20 * MS)
    by_1s = push_in_chunks(Endpointer(), audio, RATE)
    odd = push_in_chunks(Endpointer(), audio, [1, 77, 512, 999, 4000])
    assert len(by_20ms) >= 5
    assert [summary(e) for e in by_20ms] == [summary(e) for e in by_1s] == [summary(e) for e in odd]


@pytest.mark.parametrize(
    ("words", "finished"),
    [
        ("Two adults.", True),
        ("Do you have parking?", True),
        ("Yes, please book it!", True),
        ("I'd like to book the deluxe king and", False),
        ("I'd like to book the, um.", False),  # a filler ends it, whatever Whisper's full stop says
        ("For the.", False),
        ("So I was thinking...", False),  # trailing off
        ("My number is 617-555.", False),  # numbers come in groups: the silence decides
        ("December 7.", False),
        ("", False),
        ("okay", False),  # no sentence end heard
    ],
)
def test_words_that_sound_finished(words: str, finished: bool) -> None:
    from agent.speech.turn_end import sounds_finished

    assert sounds_finished(words) is finished
