"""Number words, spoken digits, party size, contact details, confirmation codes and card-number masking."""

from __future__ import annotations

import pytest

from agent.understanding.cards import MASK, contains_card_like_number, luhn_valid, mask_card_numbers
from agent.understanding.contacts import find_confirmation_code, find_email, find_phone
from agent.understanding.dates import parse_guest_count
from agent.understanding.numbers import normalize_spoken_digits, parse_number, words_to_numbers
from innkeeper.core.codes import CODE_ALPHABET, new_confirmation_code


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("four", 4),
        ("twenty-two", 22),
        ("twenty two", 22),
        ("a couple", 2),
        ("a couple of nights", 2),
        ("one hundred and five", 105),
        ("a hundred", 100),
        ("two thousand and twenty six", 2026),
        ("3", 3),
        ("3rd", 3),
        ("third", 3),
        ("twenty first", 21),
        ("the thirtieth", 30),
        ("make it seven please", 7),
        ("zero", 0),
        ("no idea yet", None),
        ("hold on a second", None),
    ],
)
def test_parse_number(text: str, expected: int | None):
    assert parse_number(text) == expected


def test_words_to_numbers_keeps_the_other_words():
    assert words_to_numbers("four nights from the twenty first") == "4 nights from the 21st"
    assert words_to_numbers("the twelfth and the twenty-second") == "the 12th and the 22nd"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("my number is two oh seven five five five one two one two", "my number is 2075551212"),
        ("four one one one, one one one one - one one one one dash one one one one", "4111111111111111"),
        ("it's five-five-five, one-two-one-two.", "it's 5551212."),
        ("five five five twelve twelve", "5551212"),
        ("one eight hundred five five five zero one four two", "18005550142"),
        ("double five", "55"),
        ("triple seven", "777"),
        ("room two oh four please", "room 204 please"),
        # Ordinary sentences keep their meaning.
        ("I need one room for two people", "I need one room for two people"),
        ("one, two, three", "one, two, three"),
        ("check-in is at two thirty", "check-in is at two thirty"),
        ("around two o'clock", "around two o'clock"),
        ("one hundred and five dollars", "one hundred and five dollars"),
        ("call 207 555 0142", "call 207 555 0142"),
    ],
)
def test_normalize_spoken_digits(text: str, expected: str):
    assert normalize_spoken_digits(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("two adults and a child", 3),
        ("2 adults, 2 kids", 4),
        ("for 2 people", 2),
        ("just me", 1),
        ("myself", 1),
        ("it's only for myself", 1),
        ("me and my wife", 2),
        ("my husband and I", 2),
        ("me, my wife and our two kids", 4),
        ("a family of four", 4),
        ("party of 3", 3),
        ("there are five of us", 5),
        ("a room for two", 2),
        ("for one person", 1),
        ("for four", 4),
        ("just for 1", 1),
        ("three individuals", 3),
        ("I'm bringing 2 others, so 3 in total", 3),
        ("I'm alone", 1),
        ("for 2 rooms", None),
        ("for 3 nights", None),
        ("for 9:30", None),
        ("four nights", None),
        ("Dec 7", None),
        ("arriving on the 3rd for 2 nights", None),
        ("I'll pay with my card", None),
    ],
)
def test_parse_guest_count(text: str, expected: int | None):
    assert parse_guest_count(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("my number is two oh seven five five five one two one two", "2075551212"),
        ("two oh seven, five five five, oh one four two", "2075550142"),
        ("+1 (207) 555-0142", "12075550142"),
        ("call me on 207.555.0142 after six", "2075550142"),
        ("it's a room for 2 207 555 0142", "2075550142"),
        ("+44 20 7946 0958", "442079460958"),
        ("2075550142", "2075550142"),
        ("12/20 to 12/23", None),
        ("arriving 2026-12-20", None),
        ("room 12, three nights", None),
        ("4111 1111 1111 1111", None),
    ],
)
def test_find_phone(text: str, expected: str | None):
    assert find_phone(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("john dot smith at gmail dot com", "john.smith@gmail.com"),
        ("my email is John.Smith@Example.org.", "john.smith@example.org"),
        ("mary underscore jones at yahoo dot co dot uk", "mary_jones@yahoo.co.uk"),
        ("j o e dash b at mail dot com", "joe-b@mail.com"),
        ("I'll arrive at 3 pm", None),
        ("we're staying at the hotel", None),
    ],
)
def test_find_email(text: str, expected: str | None):
    assert find_email(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("R7K4XA", "R7K4XA"),
        ("my code is r7k4xa.", "R7K4XA"),
        ("r 7 k 4 x a", "R7K4XA"),
        ("R-7-K-4-X-A", "R7K4XA"),
        ("the code is r seven k four x a", "R7K4XA"),
        ("it's a r 7 k 4 x a", "R7K4XA"),
        ("a 7 k 4 x a", "A7K4XA"),
        ("romeo seven kilo four x-ray alpha", "R7K4XA"),
        ("double seven k four x a", "77K4XA"),
        ("R7 K4 XA", "R7K4XA"),
    ],
)
def test_find_confirmation_code(text: str, expected: str):
    assert find_confirmation_code(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "ACCEPT",  # letters all in the alphabet, but a word
        "I'd like to check my reservation",
        "WE ARE 2",
        "r seven k five x a",  # 5 is never in a code
        "my number is 207 555 0142",
        "arriving Dec 7 for 4 nights",
    ],
)
def test_find_confirmation_code_rejects_non_codes(text: str):
    assert find_confirmation_code(text) is None


def test_every_generated_code_with_letters_and_digits_is_found():
    codes = [new_confirmation_code() for _ in range(200)]
    mixed = [c for c in codes if any(ch.isdigit() for ch in c) and any(ch.isalpha() for ch in c)]
    for code in mixed:
        assert find_confirmation_code(f"it's {code.lower()}") == code
        assert find_confirmation_code(" ".join(code)) == code
    assert set("".join(codes)) <= set(CODE_ALPHABET)


@pytest.mark.parametrize(
    ("digits", "valid"),
    [
        ("4111111111111111", True),
        ("4111111111111112", False),
        ("378282246310005", True),
        ("", False),
        ("41a1", False),
    ],
)
def test_luhn(digits: str, valid: bool):
    assert luhn_valid(digits) is valid


@pytest.mark.parametrize(
    ("text", "masked", "count"),
    [
        ("my card is 4111 1111 1111 1111", f"my card is {MASK}", 1),
        ("4111-1111-1111-1111 expires 12 27", f"{MASK} expires 12 27", 1),
        ("5555555555554444", MASK, 1),
        (
            "it's four one one one one one one one one one one one one one one one thanks",
            f"it's {MASK} thanks",
            1,
        ),
        ("four one one one, one one one one, one one one one, one one one one", MASK, 1),
        ("amex 3782 822463 10005 and visa 4111111111111111", f"amex {MASK} and visa {MASK}", 2),
    ],
)
def test_mask_card_numbers(text: str, masked: str, count: int):
    assert mask_card_numbers(text) == (masked, count)


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",  # fails Luhn
        "four one one one one one one one one one one one one one one two",
        "call 207 555 0142 or +44 20 7946 0958",
        "from 12/20/2026 to 12/23/2026, $1,250.00 total",
        "code R7K4XA, two adults",
    ],
)
def test_mask_leaves_non_cards_alone(text: str):
    assert mask_card_numbers(text) == (text, 0)


def test_card_like_numbers_are_flagged_even_when_invalid():
    assert contains_card_like_number("4111 1111 1111 1112")
    assert contains_card_like_number("four one one one one one one one one one one one one one one two")
    assert not contains_card_like_number("call 207 555 0142")
    assert not contains_card_like_number("+44 20 7946 0958")
    assert not contains_card_like_number(mask_card_numbers("card 4111 1111 1111 1111")[0])
