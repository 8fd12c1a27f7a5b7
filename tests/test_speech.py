"""Speech in and out: the Piper synthesizer, Whisper through a phone line, and the hallucination filter."""

from __future__ import annotations

import numpy as np
import pytest

from agent.speech.asr import (
    QUIET_DBFS,
    Recognizer,
    SegmentStats,
    domain_hotwords,
    domain_prompt,
    is_hallucination,
    peak_frame_dbfs,
)
from agent.speech.tts import Synthesizer
from benchmarks.phone_wer import edit_distance, normalize, phone_channel, wer
from innkeeper.core.hotel import HotelProfile
from innkeeper.core.provision import ModelIntegrityError
from innkeeper.core.settings import Settings
from innkeeper.serve.speech import load_recognizer, load_synthesizer
from telephony.resample import ASR_RATE, PHONE_RATE, resample

RATE = 16000


def tone(seconds: float, amplitude: float) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return (amplitude * np.sin(2 * np.pi * 300 * t)).astype(np.float32)


SPEECH_LEVEL = tone(1.0, 0.3)  # about -13 dBFS: a caller speaking normally
WEAK_LEVEL = tone(1.0, 0.02)  # about -37 dBFS: audible but not clear speech
SILENCE = np.zeros(RATE, dtype=np.float32)


def stats(text: str, avg_logprob: float = -0.3, no_speech_prob: float = 0.05) -> SegmentStats:
    return SegmentStats(text, avg_logprob, no_speech_prob)


# ---------------------------------------------------------------- hallucination filter (no model)


def test_confident_speech_passes() -> None:
    assert not is_hallucination(stats("I need a room for two nights"), SPEECH_LEVEL)


def test_a_real_thank_you_at_speaking_level_passes() -> None:
    assert not is_hallucination(stats("Thank you."), SPEECH_LEVEL)


@pytest.mark.parametrize("text", ["Okay.", "It's dan.brennan@example.com", "Bye, thanks for your help."])
def test_ordinary_caller_words_pass(text: str) -> None:
    assert not is_hallucination(stats(text), SPEECH_LEVEL)


def test_empty_text_is_not_a_hallucination() -> None:
    assert not is_hallucination(stats(""), SILENCE)


@pytest.mark.parametrize("text", ["Thank you.", "you", "Thanks for watching!", "Bye.", "I need a room"])
def test_anything_on_silence_is_dropped(text: str) -> None:
    assert is_hallucination(stats(text), SILENCE)


@pytest.mark.parametrize("text", ["Thank you.", "You", " thanks for watching", "Bye-bye."])
def test_phantom_phrases_on_weak_audio_are_dropped(text: str) -> None:
    assert peak_frame_dbfs(WEAK_LEVEL) > QUIET_DBFS  # loud enough to pass the plain energy gate
    assert is_hallucination(stats(text), WEAK_LEVEL)


def test_phantom_phrase_is_dropped_when_whisper_doubts_speech() -> None:
    assert is_hallucination(stats("Thank you.", no_speech_prob=0.5), SPEECH_LEVEL)


def test_subtitle_credits_are_always_dropped() -> None:
    assert is_hallucination(stats("Subtitles by the Amara.org community"), SPEECH_LEVEL)


def test_whisper_no_speech_rule() -> None:
    assert is_hallucination(stats("a room", avg_logprob=-1.4, no_speech_prob=0.8), SPEECH_LEVEL)
    assert not is_hallucination(stats("a room", avg_logprob=-0.4, no_speech_prob=0.8), SPEECH_LEVEL)


def test_one_loud_word_in_a_long_pause_counts_as_speech() -> None:
    audio = np.concatenate([np.zeros(3 * RATE, dtype=np.float32), tone(0.3, 0.3)])
    assert not is_hallucination(stats("Yes"), audio)


def test_domain_prompt_and_hotwords_name_the_hotel(hotel: HotelProfile) -> None:
    prompt, hotwords = domain_prompt(hotel), domain_hotwords(hotel)
    for room in hotel.room_types:
        assert room.name in prompt and room.name in hotwords
    assert hotel.name in prompt
    assert all(word in prompt for word in ("breakfast", "parking", "reservation", "check-in"))


def test_wer_normalisation() -> None:
    assert normalize("December seventh, check-in at 3:30!") == normalize("december 7th check in at 3 30")
    assert normalize("The Harbour Suite") == normalize("the harbor suite")
    assert normalize("What time is checkin?") == normalize("what time is check-in")
    assert edit_distance("a b c".split(), "a x c d".split()) == 2
    assert wer(["one two three four"], ["1 2 3 5"]) == 0.25


# ---------------------------------------------------------------- real models


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(asr_threads=1, tts_threads=1)


@pytest.fixture(scope="module")
def tts(settings: Settings) -> Synthesizer:
    try:
        return load_synthesizer(settings, variation=False)  # same audio every run
    except ModelIntegrityError as exc:
        pytest.skip(f"bundled Piper voice not provisioned (run `innkeeper models`): {exc}")


@pytest.fixture(scope="module")
def asr(settings: Settings, hotel: HotelProfile) -> Recognizer:
    try:
        return load_recognizer(settings, hotel)
    except ModelIntegrityError as exc:
        pytest.skip(f"bundled Whisper model not provisioned (run `innkeeper models`): {exc}")


@pytest.mark.real_model
def test_tts_speaks_a_sentence(tts: Synthesizer) -> None:
    text = "Your Deluxe King is booked for two nights from Friday, December 7."
    audio, rate = tts.synthesize(text)
    assert audio.dtype == np.int16 and rate == 22050
    seconds = len(audio) / rate
    # 12 words at a calm 2-4 words per second.
    assert 2.5 < seconds < 7.0, seconds
    assert peak_frame_dbfs(resample(audio, rate, ASR_RATE).astype(np.float32) / 32768) > -20


@pytest.mark.real_model
def test_tts_streams_one_chunk_per_sentence(tts: Synthesizer) -> None:
    chunks = list(tts.stream("Thank you for calling. How can I help you today?"))
    assert len(chunks) == 2 and all(c.dtype == np.int16 and len(c) > 0.3 * tts.sample_rate for c in chunks)


BOOKING_LINES = (
    "I'd like to book a Standard Queen for three nights.",
    "We arrive on Friday, December seventh.",
    "Is breakfast included, and how much is parking?",
    "The reservation is for two adults.",
)
# benchmarks/phone_wer.py measured 3.7% corpus WER (8 words of ~215) on its 26 caller lines with the
# production settings (greedy + domain prompt), 3.7-5.1% across all configurations; these four lines
# score 3.3% today (1 word of 30: "Is breakfast" -> "Breakfast"). 15% leaves room for ~3 more slipped
# small words after a model or library update; the bound is there to catch a broken channel, model or
# decoding setup, not to rank configurations (the benchmark does that).
MAX_BOOKING_WER = 0.15


@pytest.mark.real_model
def test_booking_sentences_survive_the_phone_line(tts: Synthesizer, asr: Recognizer) -> None:
    hyps = [asr.transcribe(phone_channel(*tts.synthesize(line))).text for line in BOOKING_LINES]
    assert wer(list(BOOKING_LINES), hyps) <= MAX_BOOKING_WER, hyps


def line_noise(rms: float, seconds: float = 2.0) -> np.ndarray:
    """White noise at `rms` (full scale 1) as the caller's 8 kHz PCM16, before the phone channel."""
    noise = np.random.default_rng(7).normal(0.0, rms, int(seconds * PHONE_RATE)) * 32768
    return np.clip(noise, -32768, 32767).astype(np.int16)


@pytest.mark.real_model
@pytest.mark.parametrize("rms", [0.0, 0.001, 0.003], ids=["silence", "hiss-60dB", "hiss-50dB"])
def test_silence_and_low_noise_yield_no_text(asr: Recognizer, rms: float) -> None:
    # Unfiltered, Whisper says "The", "The Harbor View Inn" (echoing the prompt) or "A phone call." here.
    transcript = asr.transcribe(phone_channel(line_noise(rms), PHONE_RATE))
    assert transcript.text == "", transcript


def test_number_homophones_before_a_counted_noun_are_the_number():
    from agent.speech.asr import fix_homophones

    assert fix_homophones("To adult") == "Two adult"  # what Whisper base heard for "Two adults." in the demo
    assert fix_homophones("for too nights, to adults") == "for two nights, two adults"
    assert fix_homophones("I want to book, then go to bed") == "I want to book, then go to bed"
