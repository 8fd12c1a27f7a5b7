"""Measure word error rate of the bundled Whisper on hotel callers heard through a phone line.

Each caller line below is spoken by the bundled Piper voice (22050 Hz), sent through the channel a real
call uses (soxr to 8 kHz, G.711 mu-law encode and decode, soxr to 16 kHz) and recognised under several
decoding configurations. Prints a table, writes `benchmarks/results/phone_wer.json`, and reports the
real-time factor (processing seconds per audio second) of ASR and TTS.

    .venv/bin/python benchmarks/phone_wer.py [--threads 1] [--limit N]

Caveat: one synthetic voice with clean studio audio; real callers (accents, speakerphones, noise) will
score worse. The numbers compare configurations; they do not predict field WER.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.speech.asr import DecodeOptions, Recognizer, domain_hotwords, domain_prompt
from agent.speech.tts import Synthesizer
from agent.understanding.numbers import words_to_numbers
from innkeeper.core.hotel import load_hotel
from innkeeper.core.provision import bundled_piper_path, bundled_whisper_path
from innkeeper.core.settings import Settings
from telephony.codec import mulaw_decode, mulaw_encode, pcm16_to_float32
from telephony.resample import ASR_RATE, PHONE_RATE, resample

RESULTS = Path(__file__).resolve().parent / "results" / "phone_wer.json"
PAD_SECONDS = 0.5

# Written for this benchmark: what callers to a small harbour hotel ask, with dates, rooms and names.
CALLER_LINES = (
    "Hi, I'd like to book a room for two nights starting December seventh.",
    "Do you have a Deluxe King available next Friday?",
    "How much is the Harbor Suite for the weekend?",
    "Is breakfast included in the room rate?",
    "What time is check-in?",
    "Can I check out late on Sunday morning?",
    "How much does parking cost per night?",
    "I need to cancel my reservation, please.",
    "The reservation is under Maria Lopez.",
    "We are two adults and one child.",
    "I would like a Standard Queen for three nights.",
    "Could I change my booking to March fourteenth?",
    "Do you allow dogs in the rooms?",
    "Is there a shuttle from the airport?",
    "What time does the restaurant open for dinner?",
    "Is valet parking available at the hotel?",
    "I'm arriving on January twenty second and leaving on the twenty fifth.",
    "Can you text the payment link to my phone?",
    "My name is Daniel Brennan, that's B R E N N A N.",
    "Is the pool open in the evening?",
    "Do you have any rooms with a view of the harbor?",
    "I'd like to add breakfast for two people.",
    "How far is the hotel from the airport?",
    "Can I get a king bed for four nights in July?",
    "Please move my arrival to Thursday the ninth.",
    "Thank you, that's all I needed.",
)


@dataclass(frozen=True)
class Config:
    """One row of the table: decoding levers plus whether silence precedes the speech."""

    name: str
    options: DecodeOptions | None  # None = faster-whisper's own defaults, no wrapper
    pad: bool = False


# ---------------------------------------------------------------- channel and scoring


def phone_channel(audio: npt.NDArray[np.int16], rate: int) -> npt.NDArray[np.float32]:
    """What the recogniser hears from a caller: 8 kHz mu-law on the wire, back up to 16 kHz float32."""
    wire = mulaw_encode(resample(audio, rate, PHONE_RATE))
    return pcm16_to_float32(resample(mulaw_decode(wire), PHONE_RATE, ASR_RATE))


_ORDINAL = re.compile(r"\b(\d+)(?:st|nd|rd|th)\b")
_MONEY = re.compile(r"\$(\d+)")
_NON_WORD = re.compile(r"[^a-z0-9 ]+")
# Whisper's own English normaliser maps British spellings too; the hotel is written in US English.
_US_SPELLING = {"harbour": "harbor", "neighbour": "neighbor", "favourite": "favorite", "cancelled": "canceled"}


def normalize(text: str) -> list[str]:
    """Words for scoring: lower case, numbers as digits ("seventh" = "7th" = "7"), no punctuation."""
    text = text.lower().replace("'", "").replace("’", "")
    text = _MONEY.sub(r"\1 dollars", text)
    text = re.sub(r"[-:/]", " ", text)  # check-in = check in, 3:30 = 3 30
    text = re.sub(r"\bcheck(in|out)\b", r"check \1", text)  # "checkin" is the same word run together
    text = _ORDINAL.sub(r"\1", words_to_numbers(text))
    return [_US_SPELLING.get(word, word) for word in _NON_WORD.sub(" ", text).split()]


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance (substitutions + deletions + insertions)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def wer(refs: list[str], hyps: list[str]) -> float:
    """Corpus WER: all edits over all reference words (long lines weigh more than short ones)."""
    edits = sum(edit_distance(normalize(r), normalize(h)) for r, h in zip(refs, hyps, strict=True))
    return edits / max(sum(len(normalize(r)) for r in refs), 1)


# ---------------------------------------------------------------- the run


def configs(prompt: str, hotwords: str) -> list[Config]:
    return [
        Config("faster-whisper defaults (beam 5, fallback)", None),
        Config("greedy", DecodeOptions(beam_size=1)),
        Config("greedy + prompt", DecodeOptions(beam_size=1, initial_prompt=prompt)),
        Config("greedy + hotwords", DecodeOptions(beam_size=1, hotwords=hotwords)),
        Config("greedy + prompt + hotwords", DecodeOptions(beam_size=1, initial_prompt=prompt, hotwords=hotwords)),
        Config("beam 5", DecodeOptions(beam_size=5)),
        Config("beam 5 + prompt", DecodeOptions(beam_size=5, initial_prompt=prompt)),
        Config("beam 5 + prompt + hotwords", DecodeOptions(beam_size=5, initial_prompt=prompt, hotwords=hotwords)),
        Config("faster-whisper defaults, pad", None, pad=True),
        Config("greedy, pad", DecodeOptions(beam_size=1), pad=True),
        Config("greedy + prompt, pad", DecodeOptions(beam_size=1, initial_prompt=prompt), pad=True),
        *(
            Config(f"greedy + prompt, short window +{margin:g} s", _short(prompt, margin))
            for margin in (0.5, 1.0, 2.0, 4.0)
        ),
        Config("greedy + prompt, short window +1 s, pad", _short(prompt, 1.0), pad=True),
    ]


def _short(prompt: str, margin: float) -> DecodeOptions:
    return DecodeOptions(beam_size=1, initial_prompt=prompt, encoder_margin_s=margin)


def synthesize_all(tts: Synthesizer, lines: tuple[str, ...]) -> tuple[list[npt.NDArray[np.float32]], float, float]:
    """Every line through TTS and the phone channel; returns the 16 kHz audio, TTS seconds, audio seconds."""
    heard, tts_seconds, audio_seconds = [], 0.0, 0.0
    for line in lines:
        start = time.perf_counter()
        audio, rate = tts.synthesize(line)
        tts_seconds += time.perf_counter() - start
        audio_seconds += len(audio) / rate
        heard.append(phone_channel(audio, rate))
    return heard, tts_seconds, audio_seconds


def recognise(asr: Recognizer, audio: npt.NDArray[np.float32], config: Config) -> str:
    if config.pad:
        audio = np.concatenate([np.zeros(int(PAD_SECONDS * ASR_RATE), dtype=np.float32), audio])
    if config.options is None:
        segments, _ = asr.model.transcribe(audio, language="en")
        return " ".join(s.text.strip() for s in segments)
    return asr.transcribe(audio, config.options).text


def run_config(asr: Recognizer, heard: list[npt.NDArray[np.float32]], config: Config) -> dict[str, Any]:
    start = time.perf_counter()
    hyps = [recognise(asr, audio, config) for audio in heard]
    seconds = time.perf_counter() - start
    audio_seconds = sum(len(a) for a in heard) / ASR_RATE + (PAD_SECONDS * len(heard) if config.pad else 0.0)
    refs = list(CALLER_LINES[: len(heard)])
    wrong = sum(normalize(r) != normalize(h) for r, h in zip(refs, hyps, strict=True))
    return {
        "config": config.name,
        "options": asdict(config.options) if config.options else "faster-whisper defaults",
        "pad_seconds": PAD_SECONDS if config.pad else 0.0,
        "wer": wer(refs, hyps),
        "utterances_with_errors": wrong,
        "asr_rtf": seconds / audio_seconds,
        "hypotheses": hyps,
    }


def print_table(rows: list[dict[str, Any]], tts_rtf: float, n: int, threads: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Phone-channel WER, {n} caller lines (Piper → 8 kHz mu-law → Whisper base int8)")
    for column in ("configuration", "WER", "lines wrong", "ASR RTF"):
        table.add_column(column, justify="left" if column == "configuration" else "right")
    for row in rows:
        wrong = f"{row['utterances_with_errors']}/{n}"
        table.add_row(row["config"], f"{row['wer']:.1%}", wrong, f"{row['asr_rtf']:.3f}")
    console = Console()
    console.print(table)
    console.print(f"TTS RTF {tts_rtf:.3f} ({threads} thread); RTF = processing seconds / audio seconds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="ASR and TTS threads (the CPU is shared)")
    parser.add_argument("--limit", type=int, default=len(CALLER_LINES), help="use only the first N lines")
    parser.add_argument("--only", default="", help="run only configurations whose name contains this")
    parser.add_argument("--variation", action="store_true", help="natural (random) prosody: runs differ")
    args = parser.parse_args()
    settings = Settings()
    hotel = load_hotel(settings.hotel_file)
    # Without prosody noise every run hears the same audio, so runs are comparable (and configs are
    # compared on identical audio within a run either way).
    tts = Synthesizer(
        bundled_piper_path(settings), threads=args.threads, volume=settings.tts_volume, variation=args.variation
    )
    asr = Recognizer(bundled_whisper_path(settings), threads=args.threads)
    lines = CALLER_LINES[: args.limit]
    heard, tts_seconds, audio_seconds = synthesize_all(tts, lines)
    chosen = [c for c in configs(domain_prompt(hotel), domain_hotwords(hotel)) if args.only in c.name]
    rows = [run_config(asr, heard, c) for c in chosen]
    tts_rtf = tts_seconds / audio_seconds
    print_table(rows, tts_rtf, len(lines), args.threads)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": args.threads},
        "lines": list(lines),
        "audio_seconds": audio_seconds,
        "tts_variation": args.variation,
        "tts_rtf": tts_rtf,
        "prompt": domain_prompt(hotel),
        "hotwords": domain_hotwords(hotel),
        "configs": rows,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
