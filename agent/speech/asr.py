"""Speech recognition: one caller utterance (16 kHz float32) to text with the bundled Whisper base model.

Decoding is tuned for short phone turns about one hotel: the hotel's own names and words go in as the
initial prompt (and optionally as hotwords), there is no temperature fallback and no conditioning on
earlier text (one utterance at a time), and `is_hallucination` drops what Whisper is known to invent
on silence and line noise.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import ctranslate2
import numpy as np
import numpy.typing as npt
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

from agent.speech.speed import RealTimeFactor
from innkeeper.core.hotel import HotelProfile

SAMPLE_RATE = 16000
FRAMES_PER_SECOND = 100  # Whisper's mel hop is 10 ms
MAX_FRAMES = 3000  # Whisper's 30 s window
MAX_NEW_TOKENS = 128  # a phone turn is far shorter; bounds a runaway repetition loop
RETRY_MARGIN_FACTOR = 4.0
MAX_COMPRESSION_RATIO = 2.4  # faster-whisper's default threshold for repetitive text

# Whisper's own skip rule (no_speech_threshold / log_prob_threshold in faster-whisper): both must hold.
# `is_hallucination` applies it instead of faster-whisper, so that what is dropped can be logged.
NO_SPEECH_PROB = 0.6
LOW_AVG_LOGPROB = -1.0
# Below this, the loudest 20 ms of the utterance is not speech: phone speech peaks around -25..-10 dBFS,
# line noise and comfort noise sit under -50 dBFS.
QUIET_DBFS = -45.0
# A phantom phrase (below) needs clear speech to be believed: quieter than this it is taken for noise.
WEAK_DBFS = -30.0
DOUBTFUL_NO_SPEECH = 0.3
# What Whisper says over silence, music and noise: its training subtitles' sign-offs and credits.
PHANTOM_PHRASES = frozenset(
    {
        "you", "thank you", "thank you very much", "thanks", "thanks for watching", "thank you for watching",
        "thanks for listening", "thank you for listening", "bye", "bye bye", "goodbye", "please subscribe",
        "like and subscribe", "so", "oh", "um", "uh", "hmm", "i'm sorry", "the end",
    }
)  # fmt: skip
# Not web addresses in general: a caller may spell out an e-mail address.
PHANTOM_PATTERNS = re.compile(r"subtitles? by|amara\.org|captions? by|transcri(?:bed|ption) by")
_PHANTOM_STRIP = re.compile(r"[^\w' ]+")
# Words callers use that Whisper should expect; the hotel file adds its own names.
DOMAIN_WORDS = (
    "reservation, booking, check-in, check-out, breakfast, parking, valet, airport shuttle, "
    "confirmation code, nights, queen, king, suite"
)


@dataclass(frozen=True)
class SegmentStats:
    """What a decoded utterance says about itself: the text and Whisper's confidence in it."""

    text: str
    avg_logprob: float
    no_speech_prob: float


@dataclass(frozen=True)
class Transcript:
    """One recognised utterance; `text` is "" when nothing was said (or it was dropped as a hallucination)."""

    text: str
    avg_logprob: float
    no_speech_prob: float
    duration: float  # seconds of audio given
    dropped: str = ""  # the text Whisper produced but `is_hallucination` refused


@dataclass(frozen=True)
class DecodeOptions:
    """The levers of one decoding configuration (benchmarks/phone_wer.py compares them)."""

    beam_size: int = 1
    initial_prompt: str | None = None
    hotwords: str | None = None
    filter_hallucinations: bool = True
    # Encode only the utterance plus this margin (seconds) instead of Whisper's fixed 30 s window: the
    # encoder's cost is linear in its input, so a 2 s turn encodes ~10x faster. None = the full window.
    encoder_margin_s: float | None = None


def rms_dbfs(audio: npt.NDArray[np.float32]) -> float:
    """RMS level of float audio relative to full scale (-inf for digital silence)."""
    if audio.size == 0:
        return float("-inf")
    power = float(np.mean(np.square(audio, dtype=np.float64)))
    return 10.0 * np.log10(power) if power > 0 else float("-inf")


def peak_frame_dbfs(audio: npt.NDArray[np.float32], frame: int = SAMPLE_RATE // 50) -> float:
    """Level of the loudest 20 ms frame: one word in a long pause still counts as speech."""
    if audio.size < frame:
        return rms_dbfs(audio)
    whole = audio[: len(audio) - len(audio) % frame].reshape(-1, frame)
    power = float(np.max(np.mean(np.square(whole, dtype=np.float64), axis=1)))
    return 10.0 * np.log10(power) if power > 0 else float("-inf")


def normalize_phantom(text: str) -> str:
    return " ".join(_PHANTOM_STRIP.sub(" ", text.lower()).split())


def is_hallucination(stats: SegmentStats, audio: npt.NDArray[np.float32]) -> bool:
    """True when the text is most likely invented; a caller's real "thank you" at speaking level passes."""
    if not stats.text.strip():
        return False  # nothing to drop
    if stats.no_speech_prob > NO_SPEECH_PROB and stats.avg_logprob < LOW_AVG_LOGPROB:
        return True
    if PHANTOM_PATTERNS.search(stats.text.lower()):
        return True  # subtitle credits: no caller says them
    level = peak_frame_dbfs(audio)
    if level < QUIET_DBFS:
        return True  # no frame loud enough to be speech: whatever came out was made up from noise
    if normalize_phantom(stats.text) not in PHANTOM_PHRASES:
        return False
    # A sign-off phrase is believed only when the audio is clearly speech and Whisper heard speech.
    return level < WEAK_DBFS or stats.no_speech_prob > DOUBTFUL_NO_SPEECH


# Whisper hears "two adults" as "to adults", and on some builds "To adult" (the voice demo, 2026-12-07); before
# a counted noun "to"/"too" can only be the number. Singular "adult" too: nobody says "to adult".
_COUNTED = r"adults?|guests|people|persons|nights|kids|children|rooms|beds|queens|kings|suites"  # "to bed"
_TWO_HOMOPHONE = re.compile(rf"\b(?:to|too)\b(?=\s+(?:{_COUNTED})\b)", re.IGNORECASE)


def fix_homophones(text: str) -> str:
    """Undo the recogniser's number homophones that the dialogue would misread ("to adults" -> "two adults")."""
    return _TWO_HOMOPHONE.sub(lambda m: "Two" if m[0][0].isupper() else "two", text)


def domain_prompt(hotel: HotelProfile) -> str:
    """A prompt in the style of a transcript that names the hotel, its rooms and its words."""
    rooms = ", ".join(room.name for room in hotel.room_types)
    return f"A caller phones {hotel.name} about a room: {rooms}; {DOMAIN_WORDS}."


def domain_hotwords(hotel: HotelProfile) -> str:
    """The hotel's proper names, which Whisper would otherwise spell as common words."""
    return " ".join([hotel.name, *(room.name for room in hotel.room_types)])


class Recognizer:
    """Whisper on the CPU, one utterance at a time; safe to share between call threads."""

    def __init__(self, model_dir: Path | str, options: DecodeOptions | None = None, *, threads: int = 1) -> None:
        self.model = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads)
        self.options = options or DecodeOptions()
        self._tokenizer = Tokenizer(
            self.model.hf_tokenizer, self.model.model.is_multilingual, task="transcribe", language="en"
        )
        self._suppressed = get_suppressed_tokens(self._tokenizer, [-1])
        # CTranslate2 runs one request per worker (num_workers=1); the lock makes the queueing explicit.
        self._lock = threading.Lock()
        self.speed = RealTimeFactor()  # decoding time (the engine's own, not waiting for it) per audio second

    @property
    def busy(self) -> bool:
        """Whether a recognition is running now (the voice loop skips optional partials then)."""
        return self._lock.locked()

    def transcribe(self, audio: npt.NDArray[np.float32], options: DecodeOptions | None = None) -> Transcript:
        """Recognise 16 kHz mono float32 audio (one caller turn, under 30 s)."""
        opts = options or self.options
        audio = np.asarray(audio, dtype=np.float32)
        duration = len(audio) / SAMPLE_RATE
        stats = None
        if opts.encoder_margin_s is not None:
            # A pass that looks wrong is retried on a wider window (measured: the loops and cuts of a tight
            # window mostly vanish at 4x the margin), and only then on the full window.
            for margin in (opts.encoder_margin_s, RETRY_MARGIN_FACTOR * opts.encoder_margin_s):
                stats = self._decode_short(audio, replace(opts, encoder_margin_s=margin))
                if stats is not None:
                    break
        if stats is None:  # the full window: the default, and the last resort when short passes look wrong
            stats = self._decode_full(audio, opts)
        if opts.filter_hallucinations and is_hallucination(stats, audio):
            return Transcript("", stats.avg_logprob, stats.no_speech_prob, duration, dropped=stats.text)
        return Transcript(fix_homophones(stats.text), stats.avg_logprob, stats.no_speech_prob, duration)

    def _decode_full(self, audio: npt.NDArray[np.float32], opts: DecodeOptions) -> SegmentStats:
        """faster-whisper's own pipeline: features padded to Whisper's 30 s window."""
        with self._lock, self.speed.timing() as handled:
            handled.append(len(audio) / SAMPLE_RATE)
            segments, _ = self.model.transcribe(
                audio,
                language="en",
                beam_size=opts.beam_size,
                temperature=0.0,  # no fallback: a retry at higher temperature costs time and invents words
                condition_on_previous_text=False,
                without_timestamps=True,
                initial_prompt=opts.initial_prompt,
                hotwords=opts.hotwords,
                no_speech_threshold=None,  # is_hallucination applies the same rule and records what it drops
                log_prob_threshold=LOW_AVG_LOGPROB,
            )
            segments = list(segments)  # decoding happens while iterating
        return _merge(segments)

    def _decode_short(self, audio: npt.NDArray[np.float32], opts: DecodeOptions) -> SegmentStats | None:
        """One pass over a window cut to the utterance (CTranslate2 accepts fewer than 3000 frames), or None.

        Same prompt, suppression and scoring as faster-whisper; the features past the audio are zeros,
        as faster-whisper pads them. A short window fails in two measured ways, a repetition loop and a
        transcript that stops after a word or two; either returns None so the caller decodes the full window.
        """
        margin_frames = round((opts.encoder_margin_s or 0.0) * FRAMES_PER_SECOND)
        features = self.model.feature_extractor(audio)[:, :MAX_FRAMES]
        frames = min(MAX_FRAMES, features.shape[1] + margin_frames)
        frames += -frames % 2  # the encoder's stride-2 convolution wants an even count
        window = np.zeros((1, features.shape[0], frames), dtype=np.float32)
        window[0, :, : features.shape[1]] = features[:, :frames]
        previous = self._tokenizer.encode(" " + opts.initial_prompt.strip()) if opts.initial_prompt else []
        prompt = self.model.get_prompt(self._tokenizer, previous, without_timestamps=True, hotwords=opts.hotwords)
        with self._lock, self.speed.timing() as handled:
            handled.append(len(audio) / SAMPLE_RATE)
            result = self.model.model.generate(
                ctranslate2.StorageView.from_array(window),
                [prompt],
                beam_size=opts.beam_size,
                max_length=min(len(prompt) + MAX_NEW_TOKENS, self.model.max_length),
                return_scores=True,
                return_no_speech_prob=True,
                suppress_blank=True,
                suppress_tokens=self._suppressed,
            )[0]
        tokens = [t for t in result.sequences_ids[0] if t < self._tokenizer.eot]
        text = self._tokenizer.decode(tokens).strip()
        # faster-whisper's recovery of the mean log-probability from the length-normalised score
        avg_logprob = result.scores[0] * len(result.sequences_ids[0]) / (len(result.sequences_ids[0]) + 1)
        if not tokens:
            return SegmentStats("", 0.0, result.no_speech_prob)
        if _looks_cut_or_looping(text, len(audio) / SAMPLE_RATE):
            return None
        return SegmentStats(text, float(avg_logprob), float(result.no_speech_prob))


# The same phrase of two or more words twice in a row ("Two adults Two adults"): a short window's loop
# that is too short for the compression-ratio rule. Callers do not repeat whole phrases back to back.
_REPEATED_PHRASE = re.compile(r"\b(\w+(?:\W+\w+)+)\W+\1\b", re.IGNORECASE)


def _looks_cut_or_looping(text: str, seconds: float) -> bool:
    """Text too repetitive (faster-whisper's compression-ratio rule) or too short for the audio's length."""
    if get_compression_ratio(text) > MAX_COMPRESSION_RATIO or _REPEATED_PHRASE.search(text):
        return True
    # Callers speak 12-15 characters a second (a digit, written as one character, takes as long to say as a
    # short word: count it as 4). Under 3 a second over a long turn, words were lost. The audio includes
    # pre-roll and trailing silence, so the bound is loose; a real one-word answer is short audio.
    spoken_chars = len(text) + 3 * sum(ch.isdigit() for ch in text)
    return seconds > 2.0 and spoken_chars < 3.0 * seconds


def _merge(segments: list) -> SegmentStats:
    """One utterance's stats: token-weighted mean log-probability, the most doubtful no-speech probability."""
    if not segments:
        return SegmentStats("", 0.0, 1.0)
    text = " ".join(s.text.strip() for s in segments if s.text.strip())
    weights = [max(len(s.tokens), 1) for s in segments]
    avg_logprob = float(np.average([s.avg_logprob for s in segments], weights=weights))
    return SegmentStats(text, avg_logprob, max(s.no_speech_prob for s in segments))
