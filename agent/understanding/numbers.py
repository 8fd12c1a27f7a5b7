"""Numbers said in words: cardinal and ordinal phrases, and digit strings read aloud one digit at a time."""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise

_UNITS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
}  # fmt: skip
_TEENS = {
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
    "ninety": 90,
}  # fmt: skip
_ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
    "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13, "fourteenth": 14,
    "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18, "nineteenth": 19,
    "twentieth": 20, "thirtieth": 30, "fortieth": 40, "fiftieth": 50, "sixtieth": 60, "seventieth": 70,
    "eightieth": 80, "ninetieth": 90, "hundredth": 100, "thousandth": 1000,
}  # fmt: skip
_SCALES = {"hundred": 100, "thousand": 1000}
# "a couple of nights", "a dozen towels": quantities only counted after "a".
_A_QUANTITIES = {"couple": 2, "pair": 2, "dozen": 12}
# "a second" / "one second" is a moment, not an ordinal.
_NOT_BEFORE_SECOND = {"a", "one", "per", "split", "just"}

_WORD = re.compile(r"[A-Za-z]+|(\d+)(?:(st|nd|rd|th)\b)?", re.IGNORECASE)
_NUMBER_GAP = re.compile(r"\s*-?\s*")


@dataclass(frozen=True)
class NumberPhrase:
    """A number found in text: where it is, its value, and whether it was said as an ordinal."""

    start: int
    end: int
    value: int
    ordinal: bool
    spelled: bool  # said in words, as opposed to typed digits


@dataclass(frozen=True)
class _Word:
    text: str
    start: int
    end: int


def _kind(word: str) -> tuple[str, int, bool] | None:
    """(kind, value, is_ordinal) of one number word; kinds drive which word may follow which."""
    if word in _UNITS:
        return "unit", _UNITS[word], False
    if word in _TEENS:
        return "teen", _TEENS[word], False
    if word in _TENS:
        return "tens", _TENS[word], False
    if word in _SCALES:
        return word, _SCALES[word], False
    if word == "zero":
        return "zero", 0, False
    if word in _ORDINALS:
        value = _ORDINALS[word]
        kind = "unit" if value < 10 else "teen" if value < 20 else "tens" if value < 100 else _scale_of(value)
        return kind, value, True
    return None


def _scale_of(value: int) -> str:
    return "hundred" if value == 100 else "thousand"


def _may_follow(last: str | None, kind: str, current: int, total: int) -> bool:
    """English number grammar: "twenty two" is one number, "two twenty" and "two three" are not."""
    if kind == "hundred":
        return last in ("unit", "teen") and 0 < current < 100
    if kind == "thousand":
        return last in ("unit", "teen", "tens", "hundred") and current > 0 and total == 0
    if last is None:
        return True
    if last == "tens":
        return kind == "unit"
    return last in ("hundred", "thousand") and kind in ("unit", "teen", "tens")


def _linked(text: str, left: _Word, right: _Word) -> bool:
    return _NUMBER_GAP.fullmatch(text, left.end, right.start) is not None


def _read(text: str, words: list[_Word], i: int) -> NumberPhrase | None:
    """The number phrase that starts at words[i], if one does."""
    first = words[i]
    numeral = _WORD.fullmatch(first.text)
    if numeral and numeral[1]:
        return NumberPhrase(first.start, first.end, int(numeral[1]), bool(numeral[2]), spelled=False)
    low = first.text.lower()
    nxt = words[i + 1].text.lower() if i + 1 < len(words) and _linked(text, first, words[i + 1]) else ""
    if low == "a" and nxt in _A_QUANTITIES:
        end = i + 1
        of = end + 1 < len(words) and words[end + 1].text.lower() == "of"
        if of and _linked(text, words[end], words[end + 1]):
            end += 1
        return NumberPhrase(first.start, words[end].end, _A_QUANTITIES[nxt], ordinal=False, spelled=True)
    if low == "a" and nxt in _SCALES:
        return _read_words(text, words, i + 1, first.start, current=1, last="unit")
    if low == "second" and i > 0 and words[i - 1].text.lower() in _NOT_BEFORE_SECOND:
        return None
    return _read_words(text, words, i, first.start, current=0, last=None)


def _read_words(
    text: str, words: list[_Word], i: int, start: int, current: int, last: str | None
) -> NumberPhrase | None:
    total, end, ordinal, j = 0, 0, False, i
    while j < len(words) and not ordinal:
        if j > i and not _linked(text, words[j - 1], words[j]):
            break
        word = words[j].text.lower()
        kind = _kind(word)
        if kind is None and word == "and" and last in _SCALES and j + 1 < len(words):
            # "one hundred and five": "and" only counts when a smaller number follows.
            after = _kind(words[j + 1].text.lower())
            if after and after[0] in ("unit", "teen", "tens") and _linked(text, words[j], words[j + 1]):
                j += 1
                continue
        if kind is None or last == "zero" or not _may_follow(last, kind[0], current, total):
            break
        name, value, ordinal = kind
        if name == "hundred":
            current *= 100
        elif name == "thousand":
            total, current = total + current * 1000, 0
        else:
            current += value
        last, end, j = name, words[j].end, j + 1
    if last is None:
        return None
    return NumberPhrase(start, end, total + current, ordinal, spelled=True)


def _words(text: str) -> list[_Word]:
    return [_Word(m[0], m.start(), m.end()) for m in _WORD.finditer(text)]


def number_phrases(text: str) -> list[NumberPhrase]:
    """Every number in the text, in order, whether typed ("3", "3rd") or said ("twenty first")."""
    words, found, i = _words(text), [], 0
    while i < len(words):
        phrase = _read(text, words, i)
        if phrase is None:
            i += 1
            continue
        found.append(phrase)
        while i < len(words) and words[i].start < phrase.end:
            i += 1
    return found


def parse_number(text: str) -> int | None:
    """The first number in the text: "twenty-two" → 22, "a couple" → 2, "3rd" → 3; None when there is none."""
    phrases = number_phrases(text)
    return phrases[0].value if phrases else None


def ordinal_suffix(value: int) -> str:
    """The suffix written after an ordinal: 1 → "st", 12 → "th", 22 → "nd"."""
    if value % 100 in (11, 12, 13):
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(value % 10, "th")


def words_to_numbers(text: str) -> str:
    """Number words rewritten as digits, so later patterns only need to match digits.

    "four nights from the twenty first" → "4 nights from the 21st".
    """
    out, pos = [], 0
    for phrase in number_phrases(text):
        if not phrase.spelled:
            continue
        suffix = ordinal_suffix(phrase.value) if phrase.ordinal else ""
        out += [text[pos : phrase.start], f"{phrase.value}{suffix}"]
        pos = phrase.end
    out.append(text[pos:])
    return "".join(out)


# ---- digit strings read aloud ("two oh seven, five five five ...") ----

_DIGIT_WORDS = {"zero": "0", "oh": "0", "o": "0", **{w: str(v) for w, v in _UNITS.items()}}
_REPEATS = {"double": 2, "triple": 3}
_SEPARATOR_WORDS = {"dash", "hyphen"}
_TOKEN = re.compile(r"[A-Za-z]+|\d+|[,.\-–—]")
_INNER_HYPHEN = re.compile(r"(?<=[A-Za-z0-9])-(?=[A-Za-z0-9])")


@dataclass(frozen=True)
class DigitItem:
    """One piece of a read-out digit string: "seven", "double five", "twenty two", "555"."""

    start: int
    end: int
    digits: str
    kind: str  # "single" | "repeat" | "numeral" | "pair" (teens, tens) | "hundred"


@dataclass(frozen=True)
class DigitRun:
    """Digit pieces said or typed one after another, e.g. a phone or card number."""

    items: tuple[DigitItem, ...]

    @property
    def start(self) -> int:
        return self.items[0].start

    @property
    def end(self) -> int:
        return self.items[-1].end

    @property
    def digits(self) -> str:
        return "".join(item.digits for item in self.items)

    @property
    def spoken(self) -> bool:
        return any(item.kind != "numeral" for item in self.items)


@dataclass(frozen=True)
class _Tok:
    low: str
    start: int
    end: int
    glued: bool  # only whitespace between it and the token before

    @property
    def separator(self) -> bool:
        return self.low in _SEPARATOR_WORDS or not self.low.isalnum()


def _tokens(text: str) -> list[_Tok]:
    # A hyphen inside a group ("4111-1111", "five-five") is just a joint; blanking it keeps offsets intact.
    spaced = _INNER_HYPHEN.sub(" ", text)
    toks: list[_Tok] = []
    for m in _TOKEN.finditer(spaced):
        glued = bool(toks) and spaced[toks[-1].end : m.start()].strip() == ""
        toks.append(_Tok(m[0].lower(), m.start(), m.end(), glued))
    return toks


def _item_at(toks: list[_Tok], i: int) -> tuple[DigitItem, int] | None:
    """The digit piece starting at toks[i] and the index just past it."""
    tok = toks[i]
    nxt = toks[i + 1] if i + 1 < len(toks) and toks[i + 1].glued else None
    if tok.low.isdigit():
        return DigitItem(tok.start, tok.end, tok.low, "numeral"), i + 1
    if tok.low in _REPEATS and nxt and (nxt.low in _DIGIT_WORDS or (nxt.low.isdigit() and len(nxt.low) == 1)):
        digit = _DIGIT_WORDS.get(nxt.low, nxt.low)
        return DigitItem(tok.start, nxt.end, digit * _REPEATS[tok.low], "repeat"), i + 2
    if tok.low in _UNITS and nxt and nxt.low == "hundred":
        return DigitItem(tok.start, nxt.end, f"{_UNITS[tok.low]}00", "hundred"), i + 2
    if tok.low in _DIGIT_WORDS:
        return DigitItem(tok.start, tok.end, _DIGIT_WORDS[tok.low], "single"), i + 1
    if tok.low in _TEENS:
        return DigitItem(tok.start, tok.end, str(_TEENS[tok.low]), "pair"), i + 1
    if tok.low in _TENS:
        if nxt and nxt.low in _UNITS:
            return DigitItem(tok.start, nxt.end, str(_TENS[tok.low] + _UNITS[nxt.low]), "pair"), i + 2
        return DigitItem(tok.start, tok.end, str(_TENS[tok.low]), "pair"), i + 1
    return None


def _groups(toks: list[_Tok], i: int) -> tuple[list[list[DigitItem]], int]:
    """Groups of digit pieces from toks[i] on, split where a comma, dash or "dash" stands between them."""
    groups: list[list[DigitItem]] = [[]]
    while i < len(toks):
        if groups[-1] and toks[i].separator:
            after = i + 1
            if after == len(toks) or not (toks[i].glued and toks[after].glued) or not _item_at(toks, after):
                break
            groups.append([])
            i = after
            continue
        if groups[-1] and not toks[i].glued:
            break
        found = _item_at(toks, i)
        if found is None:
            break
        item, i = found
        groups[-1].append(item)
    return [g for g in groups if g], i


def _joined(groups: list[list[DigitItem]]) -> list[DigitRun]:
    """Groups across a separator belong together only when both sides are real groups ("four one one one,
    one one one one"); "one, two, three" stays three separate numbers."""
    runs = [list(groups[0])]
    for prev, group in pairwise(groups):
        if len("".join(i.digits for i in prev)) >= 2 and len("".join(i.digits for i in group)) >= 2:
            runs[-1] += group
        else:
            runs.append(list(group))
    return [DigitRun(tuple(run)) for run in runs]


def digit_runs(text: str) -> list[DigitRun]:
    """Every run of digits in the text, typed or read aloud, with where each piece sits."""
    toks, runs, i = _tokens(text), [], 0
    while i < len(toks):
        if toks[i].separator or _item_at(toks, i) is None:
            i += 1
            continue
        groups, i = _groups(toks, i)
        runs += _joined(groups)
    return runs


def _reads_as_digits(run: DigitRun) -> bool:
    """Whether a run was read out digit by digit, unlike a count ("one room") or a time ("two thirty")."""
    kinds = [item.kind for item in run.items]
    if not run.spoken:
        return False
    if "repeat" in kinds:
        return True
    singles = sum(kind in ("single", "numeral") for kind in kinds)
    return singles >= 2 and len(run.digits) >= 3


def normalize_spoken_digits(text: str) -> str:
    """Digit strings read aloud rewritten as digits; every other word is kept.

    "my number is two oh seven five five five one two one two" → "my number is 2075551212",
    "double five" → "55", while "one room for two people" is left alone.
    """
    out, pos = [], 0
    for run in digit_runs(text):
        if _reads_as_digits(run):
            out += [text[pos : run.start], run.digits]
            pos = run.end
    out.append(text[pos:])
    return "".join(out)
