"""How facts are said aloud: dates, money, phone numbers and confirmation codes.

One place, so the template replies, the LLM's facts sheet and the grounding check all spell a
fact the same way.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal


def say_date(day: date) -> str:
    return f"{day:%A}, {day:%B} {day.day}"


def say_money(amount: Decimal) -> str:
    amount = Decimal(amount).quantize(Decimal("0.01"))
    whole = amount == amount.to_integral_value()
    return f"${amount:,.0f}" if whole else f"${amount:,.2f}"


def say_phone(digits: str) -> str:
    if len(digits) == 10:
        return f"{digits[:3]} {digits[3:6]} {digits[6:]}"
    if len(digits) == 11 and digits.startswith("1"):
        return f"1 {digits[1:4]} {digits[4:7]} {digits[7:]}"
    return " ".join(digits[i : i + 3] for i in range(0, len(digits), 3))


def spell(code: str) -> str:
    return "-".join(code)


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"
