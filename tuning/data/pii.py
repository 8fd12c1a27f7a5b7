"""Where personal data stands in call text: card and phone numbers, e-mail addresses, booking codes and
names, each found as a (start, end, placeholder) span for `tuning.data.redact` to replace.

Card numbers are found by a Luhn check over digit runs typed or read aloud, including a number split over
consecutive caller turns; other runs of 7+ digits are phone numbers. Booking codes and names come from the
call's own tool-call records first, then from what its turns say. `residue` is the deliberately looser scan
run on the redacted text: whatever it still finds makes the call unusable.

Presidio is not used: offline only its pattern recognizers work (no spaCy model), and on call transcripts
they find typed cards, phones and e-mails that these rules find too, while missing everything spoken
("four one one one ...", "ana dot diaz at example dot com"), names and booking codes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from agent.understanding.cards import luhn_valid
from agent.understanding.contacts import find_confirmation_code, find_email, find_phone
from agent.understanding.intents import find_name
from agent.understanding.numbers import DigitItem, DigitRun, digit_runs
from tuning.data.selection import SPOKEN_ROLES, CallDialogue

CARD, PHONE, EMAIL, NAME, CODE = "[CARD]", "[PHONE]", "[EMAIL]", "[NAME]", "[CODE]"
PLACEHOLDERS = (CARD, PHONE, EMAIL, NAME, CODE)
# Tools whose positional arguments are (code, surname, ...).
_CODE_ARG_TOOLS = frozenset({"lookup_booking", "modify_booking", "cancel_booking"})


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


def number_spans(texts: list[str], roles: list[str], keep: set[str]) -> Iterator[tuple[int, tuple[int, int, str]]]:
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
            if MIN_PHONE_DIGITS <= len(digits) <= 15 and last10(digits) not in keep:
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
    if len(digits) < MIN_PHONE_DIGITS or last10(digits) in keep:
        return False
    first = pieces[0]
    text = texts[first.turn]
    span = text[first.item.start : pieces[-1].item.end] if len({p.turn for p in pieces}) == 1 else ""
    return not (_money_or_date(text, first.item.start) or _DATE_SHAPE.search(span))


def _money_or_date(text: str, start: int) -> bool:
    return text[:start].rstrip().endswith("$") or bool(_DATE_SHAPE.match(text, start))


def last10(number: str) -> str:
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


def email_spans(text: str, known: set[str]) -> list[tuple[int, int, str]]:
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


def code_regex(code: str) -> re.Pattern[str]:
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


def call_codes(records: list[dict[str, Any]], texts: list[str]) -> list[str]:
    """Every booking code of the call: from its tool calls, then any its turns say (first seen first)."""
    codes = dict.fromkeys(c.upper() for record in records for c in record_codes(record))
    for text in texts:
        work = _SEEN_AS_TEXT.sub(" redacted ", text)
        for code in codes:
            work = code_regex(code).sub(" ", work)
        # One code at a time: find_confirmation_code reports the first; a code it finds again could not be
        # located by its pattern, and the residue check will drop the call.
        while (code := find_confirmation_code(work)) and code not in codes:
            codes[code] = None
            work = code_regex(code).sub(" ", work)
    return list(codes)


def record_codes(record: dict[str, Any]) -> list[str]:
    found = list(tool_values([record], {"code"}))
    args = record.get("args")
    if record.get("tool") in _CODE_ARG_TOOLS and isinstance(args, list) and args and isinstance(args[0], str):
        found.append(args[0])
    return [c.strip() for c in found if _CODE_LIKE.fullmatch(c.strip())]


# ---- names

# These patterns differ from agent.understanding.intents.find_name on purpose. find_name answers "which name
# does this caller turn give for the booking": the first match, few cues, since a wrong name would be booked.
# Redaction must find every name in every turn, the agent's too ("Thank you, Maria", "Welcome back, Mr. Diaz",
# "it's under Kowalczyk", "spelled D-I-A-Z"): a missed name leaks into training data, a wrong one costs a
# word. Each match still goes through find_name, for its list of words that are not names; with find_name
# alone, tests/test_curate.py::test_names_from_introductions_and_their_echoes_are_redacted leaks "Kowalczyk".
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


def call_names(dialogue: CallDialogue, texts: list[str], keep: set[str]) -> set[str]:
    """Name words of this call: its booking data and the names the caller gave (always), then words that
    introduction patterns point at (unless they are the hotel's own words)."""
    given: set[str] = set()
    for turn in dialogue.turns:
        for record in turn.tools:
            given.update(tool_values([record], {"first_name", "last_name", "surname", "guest_name"}))
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


def name_spans(text: str, names: set[str]) -> list[tuple[int, int, str]]:
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


def tool_values(records: Iterable[Any], keys: set[str]) -> Iterator[str]:
    """Every string stored under one of `keys`, at any depth of the tool-call records."""
    for value in records:
        if isinstance(value, dict):
            for key, inner in value.items():
                if key in keys and isinstance(inner, str) and inner.strip():
                    yield inner.strip()
                else:
                    yield from tool_values([inner], keys)
        elif isinstance(value, list):
            yield from tool_values(value, keys)


# ---- what must not survive

_FILLER = frozenset(
    "um uh er erm ah hmm mm and then so sorry wait okay ok like yeah yes the rest is it's its next that's "
    "again let me see space comma dash hyphen period dot number card".split()
)
_WORD = re.compile(r"[A-Za-z']+")
_SEEN_AS_TEXT = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS))


def residue(texts: list[str], roles: list[str], keep: set[str]) -> str | None:
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
        if last10(m[0]) in keep:
            text = text[: m.start()] + " " + text[m.end() :]
    return text


def _filler_only(gap: str) -> bool:
    return all(word.lower() in _FILLER for word in _WORD.findall(gap))
