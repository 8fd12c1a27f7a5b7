"""Payment-card numbers in a caller's words, found so they can be removed: cards are never taken or stored."""

from __future__ import annotations

import re

from agent.understanding.numbers import DigitRun, digit_runs

MASK = "[card number removed]"
# Issuer prefixes in use (Amex/Diners 3, Visa 4, Mastercard 2/5, Discover/UnionPay/Maestro 6); other
# leading digits are almost always something else that happens to pass the Luhn check.
_CARD_FIRST_DIGITS = "23456"


def luhn_valid(digits: str) -> bool:
    """Whether a digit string passes the Luhn checksum that every payment card number carries."""
    if not re.fullmatch(r"[0-9]+", digits):
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def _is_card(digits: str) -> bool:
    return 12 <= len(digits) <= 19 and digits[0] in _CARD_FIRST_DIGITS and luhn_valid(digits)


def _international_phone(text: str, run: DigitRun) -> bool:
    return text[: run.start].rstrip().endswith("+")


def _card_spans(run: DigitRun) -> list[tuple[int, int]]:
    """Where cards sit inside a run; a card may share a run with an expiry date or security code."""
    items, spans, i = run.items, [], 0
    while i < len(items):
        for j in range(len(items), i, -1):
            if _is_card("".join(item.digits for item in items[i:j])):
                spans.append((items[i].start, items[j - 1].end))
                i = j
                break
        else:
            i += 1
    return spans


def mask_card_numbers(text: str) -> tuple[str, int]:
    """The text with every card number, typed or read aloud, replaced by a marker; and how many there were."""
    spans = [span for run in digit_runs(text) if not _international_phone(text, run) for span in _card_spans(run)]
    out, pos = [], 0
    for start, end in spans:
        out += [text[pos:start], MASK]
        pos = end
    out.append(text[pos:])
    return "".join(out), len(spans)


def contains_card_like_number(text: str) -> bool:
    """Whether something shaped like a card number (13-19 digits, checksum or not) is in the text."""
    return any(13 <= len(run.digits) <= 19 for run in digit_runs(text) if not _international_phone(text, run))
