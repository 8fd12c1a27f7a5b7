"""Contact details and booking codes in a caller's words: phone number, email address, confirmation code."""

from __future__ import annotations

import re

from agent.understanding.cards import luhn_valid
from agent.understanding.numbers import normalize_spoken_digits
from innkeeper.core.codes import CODE_ALPHABET, CODE_LENGTH, CODE_PATTERN

_PHONE_SPAN = re.compile(r"(\+\s*)?\(?\d[\d().\s-]*\d")


def find_phone(text: str) -> str | None:
    """The first phone number, as digits only ("+1 (207) 555-0142" → "12075550142"), typed or read aloud."""
    for m in _PHONE_SPAN.finditer(normalize_spoken_digits(text)):
        groups = re.findall(r"\d+", m[0])
        if m[1]:  # said with "+": an international number, taken whole
            digits = "".join(groups)
            if 10 <= len(digits) <= 15:
                return digits
            continue
        phone = _phone_in(groups)
        if phone:
            return phone
    return None


def _phone_in(groups: list[str]) -> str | None:
    """The longest stretch of digit groups shaped like a phone number ("for 2 207 555 0142" → 2075550142)."""
    for size in range(len(groups), 0, -1):
        for start in range(len(groups) - size + 1):
            digits = "".join(groups[start : start + size])
            if len(digits) == 10 or (len(digits) == 11 and digits[0] in "01"):
                return digits
            # Long numbers only when they are the whole span, and never one that checks out as a card.
            if size == len(groups) and 12 <= len(digits) <= 15 and not luhn_valid(digits):
                return digits
    return None


_EMAIL = re.compile(r"([a-z0-9][a-z0-9._%+-]*)\s*@\s*([a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,})\b")
_SPOKEN_SYMBOLS = [
    (re.compile(r"\s+dot\s+"), "."),
    (re.compile(r"\s+underscore\s+"), "_"),
    (re.compile(r"\s+(?:dash|hyphen)\s+"), "-"),
    # "at" is only the @ when a domain follows it ("at gmail.com"), not "arriving at 3".
    (re.compile(r"\s+at(?:\s+sign|\s+symbol)?\s+(?=[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}\b)"), "@"),
]
_SPELLED = re.compile(r"\b[a-z0-9](?:\s+[a-z0-9]\b)+")


def find_email(text: str) -> str | None:
    """The first email address, typed or spoken ("john dot smith at gmail dot com"), in lower case."""
    said = _SPELLED.sub(lambda m: m[0].replace(" ", ""), text.lower())  # "j o h n" → "john"
    for pattern, symbol in _SPOKEN_SYMBOLS:
        said = pattern.sub(symbol, said)
    m = _EMAIL.search(said)
    return f"{m[1]}@{m[2]}" if m else None


# Names a caller or the ASR may use for a code character. Digits 0/1/5/8 and letters like O, I, L, S, B
# are not in the alphabet, so saying them ends a code.
_SAID_CHARS = {
    "two": "2", "three": "3", "four": "4", "six": "6", "seven": "7", "nine": "9",
    "alpha": "A", "alfa": "A", "charlie": "C", "delta": "D", "echo": "E", "foxtrot": "F", "golf": "G",
    "hotel": "H", "juliet": "J", "juliett": "J", "kilo": "K", "mike": "M", "november": "N", "papa": "P",
    "quebec": "Q", "romeo": "R", "tango": "T", "uniform": "U", "victor": "V", "whiskey": "W", "xray": "X",
    "yankee": "Y", "ex": "X", "jay": "J", "kay": "K", "cue": "Q", "queue": "Q", "tee": "T", "vee": "V",
    "dee": "D", "gee": "G", "eff": "F", "em": "M", "en": "N", "aitch": "H", "pee": "P",
}  # fmt: skip
_REPEATS = {"double": 2, "triple": 3}
_CODE_TOKEN = re.compile(r"[A-Za-z0-9]+")


def find_confirmation_code(text: str) -> str | None:
    """A booking code, typed ("R7K4XA", any case) or spelled out ("r seven k four x a", "R-7-K-4-X-A").

    A code always mixes letters and digits, so an ordinary word is never taken for one.
    """
    for m in CODE_PATTERN.finditer(text.upper()):
        if _mixed(m[0]):
            return m[0]
    tokens = _CODE_TOKEN.findall(re.sub(r"(?i)\bx-ray\b", "xray", text))
    for run in _chunk_runs(tokens):
        code = "".join(chunk for _, chunk in run)
        if len(code) == CODE_LENGTH + 1 and run[0][0] == "a":
            code = code[1:]  # "the code is a r 7 k 4 x a": one letter too many, and it was the article
        if len(code) == CODE_LENGTH and _mixed(code) and _typed_groups_agree(run):
            return code
    return None


def _typed_groups_agree(run: list[tuple[str, str]]) -> bool:
    """Letter-only groups ("XA" in "R7 K4 XA") count only beside typed groups that hold a digit; otherwise
    capitalised words ("WE ARE 2") would read as a code."""
    spoken = _SAID_CHARS.keys() | _REPEATS.keys()
    groups = [token for token, _ in run if len(token) > 1 and token.lower() not in spoken]
    return not groups or any(not group.isalpha() for group in groups)


def _mixed(code: str) -> bool:
    return any(c.isdigit() for c in code) and any(c.isalpha() for c in code)


def _chunk_runs(tokens: list[str]) -> list[list[tuple[str, str]]]:
    """Stretches of consecutive tokens that each stand for code characters, as (token, characters)."""
    runs: list[list[tuple[str, str]]] = [[]]
    for k, token in enumerate(tokens):
        chunk = _chunk(token)
        if chunk is None and token.lower() in _REPEATS and k + 1 < len(tokens):
            after = _chunk(tokens[k + 1])
            # "double seven": the repeated character; the next token adds its own copy.
            chunk = after * (_REPEATS[token.lower()] - 1) if after and len(after) == 1 else None
        if chunk is None:
            runs.append([])
        else:
            runs[-1].append((token, chunk))
    return [run for run in runs if run]


def _chunk(token: str) -> str | None:
    """The code characters one token stands for, or None when it is an ordinary word."""
    if token.lower() in _SAID_CHARS:
        return _SAID_CHARS[token.lower()]
    upper = token.upper()
    if not all(c in CODE_ALPHABET for c in upper):
        return None
    # Lower-case words made of code letters ("the", "cat") are words; a typed group has a digit or is in caps.
    if len(token) == 1 or any(c.isdigit() for c in token) or token.isupper():
        return upper
    return None
