"""What the agent says, as the caller hears it: replies cut into speakable clauses, and the send clock.

`speakable_pieces` decides the units that are synthesized and played one after another (the first audio
of a reply comes early because its first piece is short). `Playback` keeps the time each piece plays at
the caller, so that after a barge-in the call log records only the words the caller actually heard.
Pure bookkeeping, no I/O: `agent.call.voice` drives both.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# A long sentence is spoken in pieces cut after a comma, colon or sentence end: Piper renders a whole
# piece before any of it can play, so a short first piece is what makes the first audio early. Pieces
# stay whole clauses, and a weekday stays with its date. The first piece of a reply may be shorter:
# that is where the caller waits.
MIN_PIECE_WORDS = 4
MIN_FIRST_PIECE_WORDS = 2
SPLIT_ABOVE_WORDS = 8
_CLAUSE_END = re.compile(r"(?<=[,;:.!?])\s+")
_WEEKDAY_COMMA = re.compile(r"(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day,$")


def speakable_pieces(sentence: str, *, first: bool = False) -> list[str]:
    """`sentence` cut at commas into clauses (short sentences stay whole); `first`: the reply's first sentence."""
    if len(sentence.split()) <= SPLIT_ABOVE_WORDS:
        return [sentence]
    pieces: list[str] = []
    for clause in _CLAUSE_END.split(sentence):
        minimum = MIN_FIRST_PIECE_WORDS if first and len(pieces) == 1 else MIN_PIECE_WORDS
        if pieces and (len(pieces[-1].split()) < minimum or _WEEKDAY_COMMA.search(pieces[-1])):
            pieces[-1] = f"{pieces[-1]} {clause}"
        else:
            pieces.append(clause)
    if len(pieces) > 1 and len(pieces[-1].split()) < MIN_PIECE_WORDS:
        pieces[-2:] = [f"{pieces[-2]} {pieces[-1]}"]
    return pieces


@dataclass
class Segment:
    """One spoken sentence: when its audio should play, and what the caller is known to have heard."""

    mark: str
    text: str
    samples: int = 0
    starts_at: float | None = None  # send clock: when its first sample plays at the caller
    ends_at: float | None = None
    sent_all: bool = False
    played_ms: float | None = None  # reported by the client (plain) or implied by a mark echo (Twilio)

    def duration_ms(self, rate: int) -> float:
        return 1000.0 * self.samples / rate

    def heard_fraction(self, at: float, rate: int) -> float:
        if self.played_ms is not None:
            return min(1.0, self.played_ms / max(self.duration_ms(rate), 1.0))
        if self.starts_at is None or at <= self.starts_at:
            return 0.0
        return min(1.0, (at - self.starts_at) * 1000.0 / max(self.duration_ms(rate), 1.0))


class Playback:
    """The send clock: audio plays in real time from when it is sent, one segment after another.

    Marks echoed by Twilio and the plain client's `playback` reports correct the estimate; after a
    barge-in it says which words the caller heard.
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.segments: list[Segment] = []
        self.play_end = 0.0  # when the last sent sample finishes playing

    def begin(self, mark: str, text: str) -> Segment:
        segment = Segment(mark, text)
        self.segments.append(segment)
        return segment

    def sent(self, segment: Segment, samples: int, now: float) -> None:
        self.play_end = max(self.play_end, now)
        if segment.starts_at is None:
            segment.starts_at = self.play_end
        segment.samples += samples
        self.play_end += samples / self.rate
        segment.ends_at = self.play_end

    def acknowledge(self, mark: str, played_ms: float | None, now: float) -> None:
        for segment in self.segments:
            if segment.mark == mark:
                if played_ms is not None:
                    segment.played_ms = float(played_ms)
                elif (
                    segment.sent_all and segment.played_ms is None and segment.ends_at and now >= segment.ends_at - 0.5
                ):
                    segment.played_ms = segment.duration_ms(self.rate)  # a mark echoed in its own time: played
                return

    def playing(self, now: float) -> bool:
        return now < self.play_end

    def ahead_s(self, now: float) -> float:
        """Audio sent but not yet played."""
        return max(0.0, self.play_end - now)

    def heard_text(self, at: float, first: int = 0) -> str:
        """The words of segments[first:] that had played by `at` (a cut segment counts pro rata)."""
        words: list[str] = []
        for segment in self.segments[first:]:
            fraction = segment.heard_fraction(at, self.rate)
            seg_words = segment.text.split()
            words += seg_words[: math.floor(len(seg_words) * fraction + 1e-9)]
        return " ".join(words)

    def cut(self, at: float) -> None:
        """A `clear` was sent at `at`: nothing after it plays."""
        self.play_end = min(self.play_end, at)
