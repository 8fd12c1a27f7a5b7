"""Step 2 of the nightly curation (`tuning.data.curate`): a selected call with its personal data replaced.

Card numbers, phone numbers, e-mail addresses, names and booking codes become `[CARD]`, `[PHONE]`, `[EMAIL]`,
`[NAME]`, `[CODE]` in caller *and* agent turns (`tuning.data.pii` finds them). Names come from the call's own
data first (booking tool arguments and results, names the caller gave) and are then removed wherever they
appear ("Thank you, Maria"), then from patterns ("my name is X", "this is X", "under X"). Afterwards a
deliberately looser scan looks for any card number still in the text (digit groups with only filler words
between them, within a turn or across turns); if one survives, or a phone, e-mail or code is still found, the
call is dropped whole: redaction rewrites only what it can delimit exactly, and what it cannot is not kept.

Tool calls survive only as `ToolEvent`s (tool, success, a per-call booking reference), which is what the
policy filter in `tuning.data.curate` needs to judge whether an agent turn was entitled to booking details.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agent.understanding.cards import MASK as CARD_MASK
from tuning.data.dialogues import Dialogue
from tuning.data.pii import (
    CARD,
    CODE,
    EMAIL,
    NAME,
    PHONE,
    call_codes,
    call_names,
    code_regex,
    email_spans,
    last10,
    name_spans,
    number_spans,
    record_codes,
    residue,
    tool_values,
)
from tuning.data.selection import CallDialogue

SOURCE = "call"
# Where two findings overlap, the span becomes one placeholder, of the kind first in this order.
_PRIORITY = {kind: rank for rank, kind in enumerate((CARD, EMAIL, PHONE, CODE, NAME))}
DROP_REASONS = ("unredactable_card", "unredactable_phone", "unredactable_email", "unredactable_code")


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class ToolEvent:
    """A tool call stripped of personal data: which tool, whether it succeeded, which booking (a per-call
    reference such as "code#1", never the code itself)."""

    tool: str
    ok: bool
    code_ref: str | None = None


@dataclass(frozen=True)
class RedactedTurn:
    """A spoken turn after redaction; its tool calls kept only as `ToolEvent`s."""

    id: int
    role: str
    text: str
    act: str | None = None
    events: tuple[ToolEvent, ...] = ()
    flagged: bool = False
    found: frozenset[str] = frozenset()  # placeholder kinds put into this turn
    code_refs: frozenset[str] = frozenset()  # the bookings whose code this turn said


@dataclass(frozen=True)
class RedactedDialogue:
    """A call after redaction, oldest turn first."""

    call_id: str
    caller_number: str | None
    started_at: datetime
    turns: tuple[RedactedTurn, ...]
    replaced: Mapping[str, int] = field(default_factory=dict)  # placeholder → how many were put in

    def to_dialogue(self) -> Dialogue:
        """The training-data form (`tuning.data.dialogues.Dialogue`): id = call id, source 'call'."""
        return Dialogue(id=self.call_id, source=SOURCE, turns=tuple((t.role, t.text) for t in self.turns))


@dataclass(frozen=True)
class Dropped:
    """A call left out whole; `reason` is one of DROP_REASONS and says nothing about the data itself."""

    call_id: str
    reason: str


# ---------------------------------------------------------------- redacting


def redact_dialogue(
    dialogue: CallDialogue, *, keep_words: Collection[str] = (), keep_numbers: Collection[str] = ()
) -> RedactedDialogue | Dropped:
    """The call with personal data replaced by typed placeholders, or `Dropped` if some could not be.

    `keep_words` are never taken for names (the hotel's own name and room names); `keep_numbers` (digits)
    are never taken for a caller's phone number (the hotel's own number).
    """
    texts = [t.text.replace(CARD_MASK, CARD) for t in dialogue.turns]
    roles = [t.role for t in dialogue.turns]
    keep = {last10(n) for n in keep_numbers}
    records = [record for turn in dialogue.turns for record in turn.tools]
    codes = call_codes(records, texts)
    names = call_names(dialogue, texts, {w.lower() for w in keep_words})
    emails = set(tool_values(records, {"email"}))
    spans: list[list[tuple[int, int, str]]] = [[] for _ in texts]
    for i, found in number_spans(texts, roles, keep):
        spans[i].append(found)
    for i, text in enumerate(texts):
        spans[i] += email_spans(text, emails)
        spans[i] += [(m.start(), m.end(), CODE) for code in codes for m in code_regex(code).finditer(text)]
        spans[i] += name_spans(text, names)
    replaced: Counter[str] = Counter()
    turns = []
    refs = {code: f"code#{n}" for n, code in enumerate(codes, 1)}
    for turn, text, found in zip(dialogue.turns, texts, spans, strict=True):
        merged = _merge(found)
        replaced.update(kind for _, _, kind in merged)
        kinds = frozenset({kind for _, _, kind in merged} | ({CARD} if CARD in text else set()))
        said = frozenset(refs[c] for c in codes if code_regex(c).search(text))
        events = tuple(_event(record, refs) for record in turn.tools)
        out = _apply(text, merged)
        turns.append(RedactedTurn(turn.id, turn.role, out, turn.act, events, turn.flagged, kinds, said))
    if reason := residue([t.text for t in turns], roles, keep):
        return Dropped(dialogue.call_id, reason)
    return RedactedDialogue(dialogue.call_id, dialogue.caller_number, dialogue.started_at, tuple(turns), replaced)


def _merge(spans: Iterable[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Overlapping findings joined into one span (so no part of either leaks), of the stronger kind."""
    merged: list[tuple[int, int, str]] = []
    for start, end, kind in sorted(spans):
        if merged and start < merged[-1][1]:
            s, e, k = merged[-1]
            merged[-1] = (s, max(e, end), min(k, kind, key=_PRIORITY.__getitem__))
        else:
            merged.append((start, end, kind))
    return merged


def _apply(text: str, spans: list[tuple[int, int, str]]) -> str:
    out, pos = [], 0
    for start, end, kind in spans:
        out += [text[pos:start], kind]
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _event(record: dict[str, Any], refs: dict[str, str]) -> ToolEvent:
    """The tool-call record without personal data: its booking code becomes the call's reference for it."""
    ok = "error" not in record and "result" in record
    result = record.get("result")
    code = result.get("code") if ok and isinstance(result, dict) else None
    if code is None:
        code = next(iter(record_codes(record)), None)
    return ToolEvent(str(record.get("tool")), ok, refs.get(code.upper()) if isinstance(code, str) else None)
