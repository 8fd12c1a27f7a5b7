"""Whether a caller's words sound like a finished turn, from their transcript at the first pause.

A silence only says the caller stopped; the words say whether they are done. "Two adults." at a 200 ms pause
is a whole answer, and waiting out the full endpoint silence only adds to the caller's wait; "I'd like to
book the, um" is not. Whisper punctuates what it hears as a finished sentence, and a sentence that ends on a
conjunction, an article or a filler is cut, whatever its punctuation. Numbers are left to the silence: a
phone number or a card is read in groups with pauses between them.
"""

from __future__ import annotations

import re

_FINAL = re.compile(r"[.?!]$")
_TRAILING = frozenset(
    {"and", "or", "but", "so", "because", "um", "uh", "er", "hmm", "the", "a", "an", "my", "our", "to", "for",
     "with", "of", "at", "on", "in", "from", "like", "is", "are", "was", "it's", "if"}
)  # fmt: skip
_WORD = re.compile(r"[a-z']+")


def sounds_finished(text: str) -> bool:
    """True when the transcript reads as a complete turn: ends a sentence, not on a dangling word or a number."""
    text = text.strip()
    if not _FINAL.search(text) or text.endswith("..."):
        return False
    last = text.rstrip(".?!").split()[-1:] or [""]
    if any(ch.isdigit() for ch in last[0]):
        return False
    words = _WORD.findall(text.lower())
    return bool(words) and words[-1] not in _TRAILING
