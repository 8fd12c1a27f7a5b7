"""What the nightly tuning may learn from: logged calls → redacted, policy-clean training dialogues.

The whole path, in the order `curate` runs it:

1. **Select** (`select_calls`): calls in the window (started after `since`, at or before `now`) that ended
   normally (`NORMAL_END_REASONS`), that the operator left `included`, whose caller did not refuse
   consent (and did give it, where consent is required). Imported dialogues are the tuning benchmark's,
   never nightly data. Every other call is skipped and counted under its first failing reason.
2. **Redact** (`redact_dialogue`): card numbers, phone numbers, e-mail addresses, names and booking
   codes become `[CARD]`, `[PHONE]`, `[EMAIL]`, `[NAME]`, `[CODE]` in caller *and* agent turns. Card
   numbers are found by a Luhn check over digit runs typed or read aloud, including a number split over
   consecutive caller turns. Names come from the call's own data first (booking tool arguments and
   results, names the caller gave) and are then removed wherever they appear ("Thank you, Maria"), then
   from patterns ("my name is X", "this is X", "under X"). Afterwards a deliberately looser scan looks
   for any card number still in the text (digit groups with only filler words between them, within a
   turn or across turns); if one survives, or a phone, e-mail or code is still found, the call is
   dropped whole: redaction rewrites only what it can delimit exactly, and what it cannot is not kept.
3. **Filter** (`filter_for_training`): only agent turns are ever learned (`tuning.data.dialogues.build_examples`
   labels assistant messages only; caller text is context). An agent turn that breaks a policy — states
   booking details or a code the call never created or verified with code + surname, complies with a
   harmful request, reads back a card number, or was flagged by an operator — is dropped together with
   everything after it: the dialogue is kept up to the turn before it. Cutting rather than removing the
   one turn keeps the rest coherent: later agent turns answer a context that contained the bad turn, and
   would teach the model to carry on from a leak as if nothing happened. Then identical dialogues
   (normalised text) are kept once and each caller number keeps only its most recent calls.

Presidio is not used: offline only its pattern recognizers work (no spaCy model), and on call transcripts
they find typed cards, phones and e-mails that these rules find too, while missing everything spoken
("four one one one ...", "ana dot diaz at example dot com"), names and booking codes.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.dialogue import policy
from agent.understanding.cards import MASK as CARD_MASK
from agent.understanding.cards import luhn_valid
from agent.understanding.contacts import find_confirmation_code, find_email, find_phone
from agent.understanding.intents import find_name
from agent.understanding.numbers import DigitItem, DigitRun, digit_runs
from innkeeper.core.db.database import Database
from innkeeper.core.db.schema import Call, Turn, utcnow
from innkeeper.core.hotel import HotelProfile, load_hotel
from innkeeper.core.settings import Settings
from tuning.data.dialogues import IMPORT_CHANNEL, Dialogue
from tuning.refusals import is_refusal

# ---------------------------------------------------------------- constants

# How a call may end and still be learned from; None (still running, or the process died) and anything
# else (e.g. "server shutdown") is an interrupted call.
NORMAL_END_REASONS = frozenset({"completed", "transfer", "hangup"})
SPOKEN_ROLES = ("caller", "agent")
SOURCE = "call"

CARD, PHONE, EMAIL, NAME, CODE = "[CARD]", "[PHONE]", "[EMAIL]", "[NAME]", "[CODE]"
PLACEHOLDERS = (CARD, PHONE, EMAIL, NAME, CODE)
# Where two findings overlap, the span becomes one placeholder, of the kind first in this order.
_PRIORITY = {kind: rank for rank, kind in enumerate((CARD, EMAIL, PHONE, CODE, NAME))}

SKIP_REASONS = ("imported", "unfinished", "abnormal_end", "excluded", "no_consent", "no_turns")
DROP_REASONS = ("unredactable_card", "unredactable_phone", "unredactable_email", "unredactable_code")
TURN_REASONS = ("flagged", "card_readback", "booking_leak", "harmful_compliance")

# Dialogue acts that talk about an existing booking: the dialogue only reaches them after a lookup by code
# and surname succeeded (agent/dialogue/manager.py), so logged without one they are a leak.
EXISTING_BOOKING_ACTS = frozenset(
    {"lookup", "confirm_cancel", "ask_change", "confirm_modify", "modified", "invalid_change", "modify_failed"}
    | {"cancelled", "cancel_failed", "keep_booking"}
)
# Acts that read back the caller's own new booking (the details they just gave).
OWN_BOOKING_ACTS = frozenset({"read_back", "booked"})
# Tool calls whose success shows the call may talk about that booking: it made it, or verified it.
_AUTHORISING_TOOLS = frozenset({"create_booking", "lookup_booking", "modify_booking", "cancel_booking"})
_CODE_ARG_TOOLS = frozenset({"lookup_booking", "modify_booking", "cancel_booking"})  # (code, surname, ...)


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class CallTurn:
    """A spoken turn as logged: `tools` are the agent's tool-call records (raw, with personal data)."""

    id: int
    role: str
    text: str
    act: str | None = None
    tools: tuple[dict[str, Any], ...] = ()
    flagged: bool = False


@dataclass(frozen=True)
class CallDialogue:
    """A selected call, oldest turn first."""

    call_id: str
    caller_number: str | None
    started_at: datetime
    turns: tuple[CallTurn, ...]


@dataclass(frozen=True)
class Selection:
    dialogues: list[CallDialogue]
    skipped: dict[str, int]  # reason → calls, every reason in SKIP_REASONS present


@dataclass(frozen=True)
class ToolEvent:
    """A tool call stripped of personal data: which tool, whether it succeeded, which booking (a per-call
    reference such as "code#1", never the code itself)."""

    tool: str
    ok: bool
    code_ref: str | None = None


@dataclass(frozen=True)
class RedactedTurn:
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


@dataclass(frozen=True)
class FilterResult:
    dialogues: list[RedactedDialogue]
    counts: dict[str, int]


@dataclass(frozen=True)
class CurationReport:
    dialogues: list[Dialogue]
    call_ids: list[str]
    counts: dict[str, int]


# ---------------------------------------------------------------- 1. selection


def select_calls(db: Database, *, since: datetime | None, require_consent: bool, now: datetime) -> Selection:
    """Calls started in (since, now] that the nightly job may learn from, with their spoken turns."""
    for name, moment in (("since", since), ("now", now)):
        if moment is not None and moment.tzinfo is None:
            raise ValueError(f"{name}={moment!r} is naive: pass a timezone-aware datetime")
    window = [Call.started_at <= now, *([Call.started_at > since] if since is not None else [])]

    def work(session: Session) -> Selection:
        skipped = dict.fromkeys(SKIP_REASONS, 0)
        wanted: dict[str, Call] = {}
        for call in session.scalars(select(Call).where(*window).order_by(Call.started_at, Call.id)):
            reason = _skip_reason(call, require_consent)
            if reason:
                skipped[reason] += 1
            else:
                wanted[call.id] = call
        turns: dict[str, list[CallTurn]] = {call_id: [] for call_id in wanted}
        rows = session.scalars(
            select(Turn)
            .join(Call, Turn.call_id == Call.id)
            .where(*window, Call.channel != IMPORT_CHANNEL, Turn.role.in_(SPOKEN_ROLES))
            .order_by(Turn.call_id, Turn.index)
        )
        for row in rows:
            if row.call_id in turns and row.text.strip():
                turns[row.call_id].append(_call_turn(row))
        dialogues = []
        for call_id, call in wanted.items():
            if turns[call_id]:
                dialogues.append(CallDialogue(call_id, call.caller_number, call.started_at, tuple(turns[call_id])))
            else:
                skipped["no_turns"] += 1
        return Selection(dialogues, skipped)

    return db.transact(work, write=False)


def _skip_reason(call: Call, require_consent: bool) -> str | None:
    """Why a call is not nightly data (the first reason that applies), or None."""
    if call.channel == IMPORT_CHANNEL:
        return "imported"
    if call.end_reason is None:
        return "unfinished"
    if call.end_reason not in NORMAL_END_REASONS:
        return "abnormal_end"
    if call.training != "included":
        return "excluded"
    # A caller who said no is never learned from; an unknown answer only counts when consent is required.
    if call.consent is False or (require_consent and call.consent is not True):
        return "no_consent"
    return None


def _call_turn(row: Turn) -> CallTurn:
    records = [r for r in row.tool_calls or [] if isinstance(r, dict)]
    act = next((r["meta"].get("act") for r in records if isinstance(r.get("meta"), dict)), None)
    tools = tuple(r for r in records if "tool" in r)
    return CallTurn(row.id, row.role, row.text.strip(), act, tools, bool(row.flagged))


# ---------------------------------------------------------------- 2. redaction


def redact_dialogue(
    dialogue: CallDialogue, *, keep_words: Collection[str] = (), keep_numbers: Collection[str] = ()
) -> RedactedDialogue | Dropped:
    """The call with personal data replaced by typed placeholders, or `Dropped` if some could not be.

    `keep_words` are never taken for names (the hotel's own name and room names); `keep_numbers` (digits)
    are never taken for a caller's phone number (the hotel's own number).
    """
    texts = [t.text.replace(CARD_MASK, CARD) for t in dialogue.turns]
    roles = [t.role for t in dialogue.turns]
    keep = {_last10(n) for n in keep_numbers}
    records = [record for turn in dialogue.turns for record in turn.tools]
    codes = _call_codes(records, texts)
    names = _call_names(dialogue, texts, {w.lower() for w in keep_words})
    emails = set(_values(records, {"email"}))
    spans: list[list[tuple[int, int, str]]] = [[] for _ in texts]
    for i, found in _number_spans(texts, roles, keep):
        spans[i].append(found)
    for i, text in enumerate(texts):
        spans[i] += _email_spans(text, emails)
        spans[i] += [(m.start(), m.end(), CODE) for code in codes for m in _code_regex(code).finditer(text)]
        spans[i] += _name_spans(text, names)
    replaced: Counter[str] = Counter()
    turns = []
    refs = {code: f"code#{n}" for n, code in enumerate(codes, 1)}
    for turn, text, found in zip(dialogue.turns, texts, spans, strict=True):
        merged = _merge(found)
        replaced.update(kind for _, _, kind in merged)
        kinds = frozenset({kind for _, _, kind in merged} | ({CARD} if CARD in text else set()))
        said = frozenset(refs[c] for c in codes if _code_regex(c).search(text))
        events = tuple(_event(record, refs) for record in turn.tools)
        out = _apply(text, merged)
        turns.append(RedactedTurn(turn.id, turn.role, out, turn.act, events, turn.flagged, kinds, said))
    if reason := _residue([t.text for t in turns], roles, keep):
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


# ---- card and phone numbers

# Payment cards start with 2-6 (Mastercard 2/5, Amex 3, Visa 4, Discover 6): the same rule as
# agent/understanding/cards.py, which keeps a Luhn-valid date or count from reading as a card.
_CARD_FIRST = "23456"
_DATE_SHAPE = re.compile(r"\b\d{4}([-./])\d{1,2}\1\d{1,2}\b|\b\d{1,2}([-./])\d{1,2}\2\d{2,4}\b")
# Typed phone formats digit_runs splits apart, e.g. "(207) 555-0142".
_TYPED_PHONE = re.compile(r"(?:\+\s*)?(?:\(\s*\d{1,4}\s*\)|\d)[\d\s().-]*\d")
MIN_PHONE_DIGITS = 7


def is_card_number(digits: str) -> bool:
    """12-19 digits, an issuer's first digit, and a valid Luhn checksum."""
    return 12 <= len(digits) <= 19 and digits[0] in _CARD_FIRST and luhn_valid(digits)


@dataclass(frozen=True)
class _Piece:
    turn: int
    item: DigitItem


def _number_spans(texts: list[str], roles: list[str], keep: set[str]) -> Iterator[tuple[int, tuple[int, int, str]]]:
    """(turn, span) for every card and phone number: cards first (they may span caller turns), then any
    other run of 7+ digits, typed or read aloud, as a phone number."""
    chains = _chains([digit_runs(text) for text in texts], roles)
    carded: set[tuple[int, int]] = set()  # (turn, item start)
    for chain in chains:
        for window in _card_windows(chain):
            carded |= {(p.turn, p.item.start) for p in window}
            for turn, pieces in _by_turn(window):
                yield turn, (pieces[0].item.start, pieces[-1].item.end, CARD)
    for chain in chains:
        rest: list[_Piece] = []
        for piece in [*chain, None]:
            if piece is not None and (piece.turn, piece.item.start) not in carded:
                rest.append(piece)
                continue
            if _is_phone(rest, texts, keep):
                for turn, pieces in _by_turn(rest):
                    yield turn, (pieces[0].item.start, pieces[-1].item.end, PHONE)
            rest = []
    for i, text in enumerate(texts):
        for m in _TYPED_PHONE.finditer(text):
            digits = re.sub(r"\D", "", m[0])
            if MIN_PHONE_DIGITS <= len(digits) <= 15 and _last10(digits) not in keep:
                if _money_or_date(text, m.start()):
                    continue
                yield i, (m.start(), m.end(), CARD if is_card_number(digits) else PHONE)


def _chains(runs: list[list[DigitRun]], roles: list[str]) -> list[list[_Piece]]:
    """Digit runs as chains of pieces; a caller turn's last run continues into the next caller turn's
    first run (a card read out over two turns, with the agent's "go on" between them)."""
    chains: list[list[_Piece]] = []
    open_tail: list[_Piece] | None = None  # the chain that ends the last caller turn
    for i, turn_runs in enumerate(runs):
        if roles[i] != "caller":  # the agent's turns in between do not break the caller's number
            chains += [[_Piece(i, item) for item in run.items] for run in turn_runs]
            continue
        tail = None
        for k, run in enumerate(turn_runs):
            pieces = [_Piece(i, item) for item in run.items]
            if k == 0 and open_tail is not None:
                open_tail += pieces
                tail = open_tail
            else:
                chains.append(pieces)
                tail = pieces
        open_tail = tail
    return chains


def _card_windows(chain: list[_Piece]) -> Iterator[list[_Piece]]:
    """The longest card number starting at each piece, left to right, never overlapping."""
    i = 0
    while i < len(chain):
        for j in range(len(chain), i, -1):
            if is_card_number("".join(p.item.digits for p in chain[i:j])):
                yield chain[i:j]
                i = j
                break
        else:
            i += 1


def _by_turn(pieces: list[_Piece]) -> Iterator[tuple[int, list[_Piece]]]:
    turns = sorted({p.turn for p in pieces})
    for turn in turns:
        yield turn, [p for p in pieces if p.turn == turn]


def _is_phone(pieces: list[_Piece], texts: list[str], keep: set[str]) -> bool:
    digits = "".join(p.item.digits for p in pieces)
    if len(digits) < MIN_PHONE_DIGITS or _last10(digits) in keep:
        return False
    first = pieces[0]
    text = texts[first.turn]
    span = text[first.item.start : pieces[-1].item.end] if len({p.turn for p in pieces}) == 1 else ""
    return not (_money_or_date(text, first.item.start) or _DATE_SHAPE.search(span))


def _money_or_date(text: str, start: int) -> bool:
    return text[:start].rstrip().endswith("$") or bool(_DATE_SHAPE.match(text, start))


def _last10(number: str) -> str:
    """A phone number compared by its last ten digits (with or without the country code)."""
    return re.sub(r"\D", "", number)[-10:]


# ---- e-mail addresses

_EMAIL_TYPED = re.compile(r"[a-z0-9][a-z0-9._%+-]*\s*@\s*[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}\b", re.I)
_SAID_PART = r"(?:[a-z0-9](?:\s+[a-z0-9]\b)+|[a-z0-9][a-z0-9._%+-]*)"  # "j o h n" or "john.smith"
_EMAIL_SAID = re.compile(
    rf"\b{_SAID_PART}(?:\s+(?:dot|underscore|dash|hyphen)\s+{_SAID_PART})*"
    r"(?:\s+at(?:\s+sign|\s+symbol)?\s+|\s*@\s*)[a-z0-9-]+(?:(?:\s+dot\s+|\.)[a-z0-9-]+)*"
    r"(?:\s+dot\s+|\.)(?:com|net|org|edu|gov|io|co|us|uk|ca|de|fr|info|biz|me)\b",
    re.I,
)


def _email_spans(text: str, known: set[str]) -> list[tuple[int, int, str]]:
    spans = [(m.start(), m.end(), EMAIL) for m in _EMAIL_TYPED.finditer(text)]
    spans += [(m.start(), m.end(), EMAIL) for m in _EMAIL_SAID.finditer(text) if find_email(m[0])]
    for value in known:
        spans += [(m.start(), m.end(), EMAIL) for m in re.finditer(re.escape(value), text, re.I)]
    return spans


# ---- booking codes

# Names a code character may be said by (NATO, letter names, digit words); more than the agent's own
# reader accepts, since redaction must also catch what a caller or another system said.
_CHAR_WORDS: dict[str, tuple[str, ...]] = {
    "A": ("alpha", "alfa"), "B": ("bravo", "bee"), "C": ("charlie", "cee", "see"), "D": ("delta", "dee"),
    "E": ("echo",), "F": ("foxtrot", "eff"), "G": ("golf", "gee"), "H": ("hotel", "aitch"), "I": ("india",),
    "J": ("juliett", "juliet", "jay"), "K": ("kilo", "kay"), "L": ("lima", "el"), "M": ("mike", "em"),
    "N": ("november", "en"), "O": ("oscar", "oh"), "P": ("papa", "pee"), "Q": ("quebec", "queue", "cue"),
    "R": ("romeo", "ar"), "S": ("sierra", "ess"), "T": ("tango", "tee"), "U": ("uniform", "you"),
    "V": ("victor", "vee"), "W": ("whiskey", "double-u"), "X": ("x-ray", "xray", "ex"), "Y": ("yankee", "why"),
    "Z": ("zulu", "zed", "zee"), "0": ("zero", "oh"), "1": ("one",), "2": ("two",), "3": ("three",),
    "4": ("four",), "5": ("five",), "6": ("six",), "7": ("seven",), "8": ("eight",), "9": ("nine",),
}  # fmt: skip
_CODE_SEP = r"[\s,.\-–—]*"
_CODE_LIKE = re.compile(r"[A-Za-z0-9]{4,12}")


def _code_regex(code: str) -> re.Pattern[str]:
    """The code typed ("VWP29J", any case) or said character by character ("V-W-P-2-9-J", "victor w ...",
    "double seven")."""
    chars = [f"(?:{'|'.join(map(re.escape, _CHAR_WORDS.get(c, ())))}|{re.escape(c)})" for c in code.upper()]
    parts, i = [], 0
    while i < len(chars):
        if i + 1 < len(chars) and code[i].upper() == code[i + 1].upper():
            parts.append(f"(?:double\\s+{chars[i]}|{chars[i]}{_CODE_SEP}{chars[i]})")
            i += 2
        else:
            parts.append(chars[i])
            i += 1
    return re.compile(rf"(?<![A-Za-z0-9]){_CODE_SEP.join(parts)}(?![A-Za-z0-9])", re.I)


def _call_codes(records: list[dict[str, Any]], texts: list[str]) -> list[str]:
    """Every booking code of the call: from its tool calls, then any its turns say (first seen first)."""
    codes = dict.fromkeys(c.upper() for record in records for c in _record_codes(record))
    for text in texts:
        work = _SEEN_AS_TEXT.sub(" redacted ", text)
        for code in codes:
            work = _code_regex(code).sub(" ", work)
        # One code at a time: find_confirmation_code reports the first; a code it finds again could not be
        # located by its pattern, and the residue check will drop the call.
        while (code := find_confirmation_code(work)) and code not in codes:
            codes[code] = None
            work = _code_regex(code).sub(" ", work)
    return list(codes)


def _record_codes(record: dict[str, Any]) -> list[str]:
    found = list(_values([record], {"code"}))
    args = record.get("args")
    if record.get("tool") in _CODE_ARG_TOOLS and isinstance(args, list) and args and isinstance(args[0], str):
        found.append(args[0])
    return [c.strip() for c in found if _CODE_LIKE.fullmatch(c.strip())]


def _event(record: dict[str, Any], refs: dict[str, str]) -> ToolEvent:
    ok = "error" not in record and "result" in record
    result = record.get("result")
    code = result.get("code") if ok and isinstance(result, dict) else None
    if code is None:
        code = next(iter(_record_codes(record)), None)
    return ToolEvent(str(record.get("tool")), ok, refs.get(code.upper()) if isinstance(code, str) else None)


# ---- names

_NAME_WORDS = r"[A-Za-z][A-Za-z'\-]+(?:\s+[A-Za-z][A-Za-z'\-]+){0,2}"
_CAP_WORDS = r"[A-Z][a-zA-Z'\-]+(?:\s+[A-Z][a-zA-Z'\-]+){0,2}"
_TITLE = r"(?:(?:mr|mrs|ms|miss|dr)\.?\s+)?"
# Explicit introductions: trusted in any letter case.
_NAME_SAID = re.compile(
    rf"\b(?:my name is|my name's|name is|name's|under the name(?: of)?|(?:booked|booking|reservation|it's) under"
    rf"|(?:last|first|sur|family)\s?name(?: is|'s)|spelled)\s+{_TITLE}({_NAME_WORDS})",
    re.I,
)
# Softer cues ("this is Ana", "Thank you, Maria", "under Diaz"): only a capitalised word counts.
_NAME_CUED = re.compile(
    rf"\b(?:[Tt]his is|I'm|I am|[Ii]t's|[Ii]t is|under|[Tt]hank you,?|[Tt]hanks,?|[Hh]ello,?|[Hh]i,?|[Dd]ear"
    rf"|[Ww]elcome(?: back)?,?|(?:Mr|Mrs|Ms|Miss|Dr)\.?)\s+({_CAP_WORDS})"
)
# Name particles and words that are also common English words: removed only where capitalised mid-sentence.
_COMMON_WORDS = frozenset(
    "may will june april august grace hope rose mark bill pat sue art dawn faith joy summer king queen "
    "page hunter bell brown white green black young long price rich case lane street hill wood ford".split()
)
_PARTICLES = frozenset({"van", "von", "der", "den", "de", "la", "le", "da", "del", "di", "du", "st", "mc", "al"})
# Capitalised words a cue may precede that are not names ("Hi, I'd like", "Thanks, Bye").
_NOT_NAMES = frozenset(
    "i i'd i'm i'll i've we we'd we're you you're your our there bye goodbye everyone again sir madam ma'am "
    "welcome what how when where why who which can could would should will do does did is are was were have "
    "has had let please sure okay yes no yeah great good perfect wonderful just also so well oh um uh hey hi "
    "hello thanks thank anyway actually on in at of to from by for with the a an and or but not".split()
)
_SURNAME_ARG_TOOLS = _CODE_ARG_TOOLS  # (code, surname, ...)


def _call_names(dialogue: CallDialogue, texts: list[str], keep: set[str]) -> set[str]:
    """Name words of this call: its booking data and the names the caller gave (always), then words that
    introduction patterns point at (unless they are the hotel's own words)."""
    given: set[str] = set()
    for turn in dialogue.turns:
        for record in turn.tools:
            given.update(_values([record], {"first_name", "last_name", "surname", "guest_name"}))
            args = record.get("args")
            if record.get("tool") in _SURNAME_ARG_TOOLS and isinstance(args, list) and len(args) > 1:
                given.add(str(args[1]))
    patterned: set[str] = set()
    asked = False
    for turn, text in zip(dialogue.turns, texts, strict=True):
        if turn.role == "caller":
            given.update(n for n in find_name(text, expecting=asked) if n)
        asked = turn.role == "agent" and turn.act in ("ask_name", "ask_surname")
        for pattern in (_NAME_SAID, _NAME_CUED):
            for m in pattern.finditer(text):
                # find_name's own filter drops words that are not names ("I'm looking", "under two").
                patterned.update(n for n in find_name(f"my name is {m[1]}") if n)
    patterned = {w for w in _name_words(patterned) if w.lower() not in keep | _NOT_NAMES}
    return _name_words(given) | patterned


def _name_words(names: Iterable[str]) -> set[str]:
    words = {w for name in names for w in name.split()}
    return {w for w in words if len(w) >= 2 and w.lower() not in _PARTICLES and re.search(r"[A-Za-z]", w)}


def _name_spans(text: str, names: set[str]) -> list[tuple[int, int, str]]:
    spans = []
    for word in names:
        common = word.lower() in _COMMON_WORDS
        for m in re.finditer(rf"(?<![\w\[]){re.escape(word)}(?![\w\]])", text, 0 if common else re.I):
            if common and (not m[0][0].isupper() or _sentence_start(text, m.start())):
                continue
            spans.append((m.start(), m.end(), NAME))
        letters = [c for c in word if c.isalpha()]
        if len(letters) >= 3:  # spelled out: "D-I-A-Z", "d i a z"
            spelled = r"[\s.\-]+".join(map(re.escape, letters))
            spans += [(m.start(), m.end(), NAME) for m in re.finditer(rf"(?<!\w){spelled}(?!\w)", text, re.I)]
    return spans


def _sentence_start(text: str, start: int) -> bool:
    before = text[:start].rstrip()
    return not before or before[-1] in ".!?"


def _values(records: Iterable[Any], keys: set[str]) -> Iterator[str]:
    """Every string stored under one of `keys`, at any depth of the tool-call records."""
    for value in records:
        if isinstance(value, dict):
            for key, inner in value.items():
                if key in keys and isinstance(inner, str) and inner.strip():
                    yield inner.strip()
                else:
                    yield from _values([inner], keys)
        elif isinstance(value, list):
            yield from _values(value, keys)


# ---- what must not survive

_FILLER = frozenset(
    "um uh er erm ah hmm mm and then so sorry wait okay ok like yeah yes the rest is it's its next that's "
    "again let me see space comma dash hyphen period dot number card".split()
)
_WORD = re.compile(r"[A-Za-z']+")
_SEEN_AS_TEXT = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS))


def _residue(texts: list[str], roles: list[str], keep: set[str]) -> str | None:
    """Why the redacted call still holds personal data, or None. Looser than redaction on purpose."""
    plain = [_SEEN_AS_TEXT.sub(" redacted ", text) for text in texts]
    for role in SPOKEN_ROLES:
        if _loose_card([t for t, r in zip(plain, roles, strict=True) if r == role]):
            return "unredactable_card"
    for text in plain:
        if find_phone(_without_kept(text, keep)):
            return "unredactable_phone"
        if find_email(text):
            return "unredactable_email"
        if find_confirmation_code(text):
            return "unredactable_code"
    return None


def _loose_card(texts: list[str]) -> bool:
    """Any card number in these consecutive turns of one speaker, reading digit groups as one number when
    only filler words ("um", "and then") or punctuation stand between them, within a turn or across turns."""
    groups: list[list[str]] = [[]]
    for text in texts:
        pos = 0
        for run in digit_runs(text):
            if not _filler_only(text[pos : run.start]):
                groups.append([])
            groups[-1] += [item.digits for item in run.items]
            pos = run.end
        if not _filler_only(text[pos:]):
            groups.append([])
    return any(_holds_card(group) for group in groups)


def _holds_card(pieces: list[str]) -> bool:
    return any(is_card_number("".join(pieces[i:j])) for i in range(len(pieces)) for j in range(i + 1, len(pieces) + 1))


def _without_kept(text: str, keep: set[str]) -> str:
    """The text with the hotel's own phone number blanked, so only a caller's number is looked for."""
    for m in reversed(list(_TYPED_PHONE.finditer(text))):
        if _last10(m[0]) in keep:
            text = text[: m.start()] + " " + text[m.end() :]
    return text


def _filler_only(gap: str) -> bool:
    return all(word.lower() in _FILLER for word in _WORD.findall(gap))


# ---------------------------------------------------------------- 3. filtering


_BOOKING_TALK = re.compile(
    r"\b(?:I found (?:it|the|your|her|his|their)|(?:booking|reservation)s? (?:is |are )?(?:under|for)"
    r"|(?:is|are) (?:staying|booked|checked in)|(?:her|his|their) (?:booking|reservation|room|stay)|room number)\b",
    re.I,
)
_STAY_FACT = re.compile(
    r"\b(?:January|February|March|April|May|June|July|August|September|October|November|December)\s+\d{1,2}\b"
    r"|\$\s?\d|\b\d+ nights?\b|\b(?:arriving|leaving|checking (?:in|out))\b|\[CODE\]",
    re.I,
)


def filter_for_training(
    dialogues: Sequence[RedactedDialogue], *, max_calls_per_caller: int, flagged_turns: Collection[int] = frozenset()
) -> FilterResult:
    """Dialogues cut before their first policy-breaking agent turn, deduplicated, capped per caller."""
    if max_calls_per_caller < 1:
        raise ValueError(f"max_calls_per_caller must be at least 1, got {max_calls_per_caller}")
    counts = dict.fromkeys([f"turns_dropped_{r}" for r in TURN_REASONS], 0)
    counts |= {"turns_cut_after_drop": 0, "no_target": 0, "duplicates": 0, "capped": 0}
    kept: list[RedactedDialogue] = []
    for dialogue in dialogues:
        cut = _cut(dialogue, set(flagged_turns), counts)
        if cut is None:
            counts["no_target"] += 1
        else:
            kept.append(cut)
    newest_first = sorted(kept, key=lambda d: (d.started_at, d.call_id), reverse=True)
    unique, seen = [], set()
    for d in newest_first:
        key = _dedup_key(d)
        if key in seen:
            counts["duplicates"] += 1
        else:
            seen.add(key)
            unique.append(d)
    per_caller: Counter[str] = Counter()
    result = []
    for d in unique:
        number = caller_key(d.caller_number)
        if number is not None:
            per_caller[number] += 1
            if per_caller[number] > max_calls_per_caller:
                counts["capped"] += 1
                continue
        result.append(d)
    return FilterResult(result[::-1], counts)


def _cut(dialogue: RedactedDialogue, flagged: set[int], counts: dict[str, int]) -> RedactedDialogue | None:
    """The dialogue up to its first bad agent turn (every bad turn counted), or None with nothing to learn."""
    first_bad: int | None = None
    agent_after = 0
    for i, reason in _turn_verdicts(dialogue, flagged):
        if reason is not None:
            counts[f"turns_dropped_{reason}"] += 1
            first_bad = i if first_bad is None else first_bad
        elif first_bad is not None:
            agent_after += 1
    counts["turns_cut_after_drop"] += agent_after
    turns = list(dialogue.turns if first_bad is None else dialogue.turns[:first_bad])
    while turns and turns[-1].role != "agent":
        turns.pop()  # nothing to learn from a caller's last words
    # Trailing caller turns are gone, so a caller turn means an agent reply after it: something to learn.
    return replace(dialogue, turns=tuple(turns)) if any(t.role == "caller" for t in turns) else None


def _turn_verdicts(dialogue: RedactedDialogue, flagged: set[int]) -> Iterator[tuple[int, str | None]]:
    """(index, reason or None) for each agent turn; reasons as in TURN_REASONS."""
    authorised: set[str] = set()
    verified = False
    caller_said: list[str] = []
    for i, turn in enumerate(dialogue.turns):
        if turn.role == "caller":
            caller_said.append(turn.text)
            continue
        for event in turn.events:
            if event.ok and event.tool in _AUTHORISING_TOOLS and event.code_ref:
                authorised.add(event.code_ref)
            verified |= event.ok and event.tool == "lookup_booking"
        yield i, _bad_turn(turn, caller_said, authorised, verified, flagged)
        caller_said = []


def _bad_turn(
    turn: RedactedTurn, caller_said: list[str], authorised: set[str], verified: bool, flagged: set[int]
) -> str | None:
    if turn.flagged or turn.id in flagged:
        return "flagged"
    if CARD in turn.found:
        return "card_readback"
    if _leaks_booking(turn, authorised, verified):
        return "booking_leak"
    if any(policy.is_harmful(text) for text in caller_said) and not is_refusal(turn.text):
        return "harmful_compliance"
    return None


def _leaks_booking(turn: RedactedTurn, authorised: set[str], verified: bool) -> bool:
    """Booking details or a code the call had not earned: not made in this call, not verified by code and
    surname. A code said that no tool call of the call stands behind is always a leak."""
    if CODE in turn.found and not turn.code_refs <= authorised:
        return True
    if CODE in turn.found and not turn.code_refs:
        return True
    if verified:
        return False
    if turn.act in EXISTING_BOOKING_ACTS:
        return True
    talks = bool(_BOOKING_TALK.search(turn.text) and _STAY_FACT.search(turn.text))
    return talks and turn.act not in OWN_BOOKING_ACTS


def _dedup_key(dialogue: RedactedDialogue) -> tuple[tuple[str, str], ...]:
    return tuple((t.role, " ".join(re.findall(r"\[[A-Z]+\]|\w+", t.text.lower()))) for t in dialogue.turns)


def caller_key(number: str | None) -> str | None:
    """A caller number compared by its digits ("+1 (207) 555-0142" = "2075550142"); None when unknown."""
    digits = re.sub(r"\D", "", number or "")
    if len(digits) == 11 and digits.startswith("1"):
        digits = digits[1:]
    return digits or None


# ---------------------------------------------------------------- 4. the whole path


def curate(
    db: Database,
    settings: Settings,
    *,
    since: datetime | None,
    flagged_turns: Collection[int] = frozenset(),
    now: datetime | None = None,
) -> CurationReport:
    """Select, redact and filter the calls of (since, now]; counts say what was left out and why."""
    now = now or utcnow()
    selection = select_calls(db, since=since, require_consent=settings.nightly_require_consent, now=now)
    keep_words, keep_numbers = hotel_terms(load_hotel(settings.hotel_file))
    counts = {"selected": len(selection.dialogues), **{f"skipped_{r}": n for r, n in selection.skipped.items()}}
    counts |= {f"dropped_{r}": 0 for r in DROP_REASONS}
    redacted: list[RedactedDialogue] = []
    replaced: Counter[str] = Counter()
    for dialogue in selection.dialogues:
        outcome = redact_dialogue(dialogue, keep_words=keep_words, keep_numbers=keep_numbers)
        if isinstance(outcome, Dropped):
            counts[f"dropped_{outcome.reason}"] += 1
        else:
            redacted.append(outcome)
            replaced.update(outcome.replaced)
    counts |= {f"redacted_{p.strip('[]').lower()}": replaced[p] for p in PLACEHOLDERS}
    filtered = filter_for_training(
        redacted, max_calls_per_caller=settings.nightly_max_calls_per_caller, flagged_turns=flagged_turns
    )
    counts |= filtered.counts
    counts["kept"] = len(filtered.dialogues)
    return CurationReport(
        dialogues=[d.to_dialogue() for d in filtered.dialogues],
        call_ids=[d.call_id for d in filtered.dialogues],
        counts=counts,
    )


def hotel_terms(hotel: HotelProfile) -> tuple[frozenset[str], frozenset[str]]:
    """The hotel's own words (its name, room names) and phone number, which are never personal data."""
    words = {w.lower() for text in (hotel.name, *(r.name for r in hotel.room_types)) for w in text.split()}
    return frozenset(words), frozenset({re.sub(r"\D", "", hotel.phone)})
