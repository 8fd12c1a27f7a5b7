"""Stay dates from caller phrasings, against two fixed "todays": late November and the end of the year."""

from __future__ import annotations

from datetime import date

import pytest

from agent.understanding.dates import StayDates, parse_stay

THU_NOV_26 = date(2026, 11, 26)
MON_DEC_28 = date(2026, 12, 28)


def d(month: int, day: int, year: int = 2026) -> date:
    return date(year, month, day)


CASES = [
    # (today, what the caller said, check_in, check_out, nights)
    (THU_NOV_26, "I'll be arriving on Dec. 7 for four nights", d(12, 7), d(12, 11), 4),
    (THU_NOV_26, "next Friday", d(12, 4), None, None),
    # a correction names the old length first and the new one last; a number said then repeated; "make it"
    (THU_NOV_26, "Two days won't do, let's have it be 5 days instead", None, None, 5),
    (THU_NOV_26, "we need it three 3 days from the 9th", d(12, 9), d(12, 12), 3),
    (THU_NOV_26, "Please make it 6 days.", None, None, 6),
    (THU_NOV_26, "is it 150 a night?", None, None, None),
    (THU_NOV_26, "We are a group of 6. 2 days starting Saturday.", d(11, 28), d(11, 30), 2),  # count, full stop
    (THU_NOV_26, "Perfect, I think we're done for today.", None, None, None),  # closing small talk, no date
    (THU_NOV_26, "this Friday", d(11, 27), None, None),
    (THU_NOV_26, "Thursday", d(11, 26), None, None),
    (THU_NOV_26, "tomorrow", d(11, 27), None, None),
    (THU_NOV_26, "I need a room tonight", d(11, 26), None, None),
    (THU_NOV_26, "a room for tonight", d(11, 26), d(11, 27), 1),
    (THU_NOV_26, "I need a room for tomorrow night, just me", d(11, 27), d(11, 28), 1),
    (THU_NOV_26, "for Friday and Saturday night", d(11, 27), d(11, 29), 2),
    (THU_NOV_26, "for the night of December 7", d(12, 7), d(12, 8), 1),
    (THU_NOV_26, "I want to stay Friday night", d(11, 27), None, None),
    (THU_NOV_26, "the day after tomorrow", d(11, 28), None, None),
    (THU_NOV_26, "the 3rd to the 5th", d(12, 3), d(12, 5), 2),
    (THU_NOV_26, "from the twenty-seventh to the thirtieth", d(11, 27), d(11, 30), 3),
    (THU_NOV_26, "from March 3 to March 6", d(3, 3, 2027), d(3, 6, 2027), 3),
    (THU_NOV_26, "March 3rd through the 6th", d(3, 3, 2027), d(3, 6, 2027), 3),
    (THU_NOV_26, "march 3-6 please", d(3, 3, 2027), d(3, 6, 2027), 3),
    (THU_NOV_26, "December twentieth through the twenty third", d(12, 20), d(12, 23), 3),
    (THU_NOV_26, "12/20 to 12/23", d(12, 20), d(12, 23), 3),
    (THU_NOV_26, "12/20/2026 - 12/23/2026", d(12, 20), d(12, 23), 3),
    (THU_NOV_26, "2026-12-20", d(12, 20), None, None),
    (THU_NOV_26, "December 7th, 2027", d(12, 7, 2027), None, None),
    (THU_NOV_26, "two nights starting tomorrow", d(11, 27), d(11, 29), 2),
    (THU_NOV_26, "for a week", None, None, 7),
    (THU_NOV_26, "for two weeks", None, None, 14),
    (THU_NOV_26, "for the weekend", d(11, 27), d(11, 29), 2),
    (THU_NOV_26, "next weekend", d(12, 4), d(12, 6), 2),
    (THU_NOV_26, "checking out on the 9th", None, d(12, 9), None),
    (THU_NOV_26, "check-out Friday", None, d(11, 27), None),
    (THU_NOV_26, "from Friday to Monday", d(11, 27), d(11, 30), 3),
    (THU_NOV_26, "I arrive tomorrow and leave on Sunday", d(11, 27), d(11, 29), 2),
    (THU_NOV_26, "Friday the 4th for two nights", d(12, 4), d(12, 6), 2),
    (THU_NOV_26, "Friday and Saturday night", d(11, 27), d(11, 29), 2),
    (THU_NOV_26, "Christmas Eve for two nights", d(12, 24), d(12, 26), 2),
    (THU_NOV_26, "three nights", None, None, 3),
    (THU_NOV_26, "a night", None, None, 1),
    (THU_NOV_26, "just one night", None, None, 1),
    (THU_NOV_26, "a couple of nights", None, None, 2),
    (THU_NOV_26, "Dec 28 to Jan 2", d(12, 28), d(1, 2, 2027), 5),
    (THU_NOV_26, "check in on the first, check out on the fourth", d(12, 1), d(12, 4), 3),
    (THU_NOV_26, "arriving the 7th of December, leaving the 10th", d(12, 7), d(12, 10), 3),
    (THU_NOV_26, "the 25th", d(12, 25), None, None),
    (THU_NOV_26, "in two weeks for 3 nights", d(12, 10), d(12, 13), 3),
    (THU_NOV_26, "a week from Friday", d(12, 4), None, None),
    (THU_NOV_26, "I'll stay four nights from the second of January", d(1, 2, 2027), d(1, 6, 2027), 4),
    # A stay's days are its nights; "N days from <date>" is a stay that starts then.
    (THU_NOV_26, "for three days", None, None, 3),
    (THU_NOV_26, "a 2 day stay", None, None, 2),
    (THU_NOV_26, "five days from the 6th of December", d(12, 6), d(12, 11), 5),
    (THU_NOV_26, "in 3 days", d(11, 29), None, None),
    (THU_NOV_26, "Friday next week", d(12, 4), None, None),
    (THU_NOV_26, "I need the room later today", d(11, 26), None, None),
    # Two dates in one list: the nights named, unless they are the arrival and the departure.
    (THU_NOV_26, "Monday and Tuesday, December 14 and 15", d(12, 14), d(12, 16), 2),
    (THU_NOV_26, "check-in and check-out are the 10th and the 12th respectively", d(12, 10), d(12, 12), 2),
    # The field named next to its value wins over "to" as a range word.
    (THU_NOV_26, "please change the check-in date to the 2nd", d(12, 2), None, None),
    (THU_NOV_26, "change that to the 3rd for check in and make it four nights", d(12, 3), d(12, 7), 4),
    # "next Thursday" counts from today, also as the departure after an arrival named first
    (THU_NOV_26, "check in on the 1st and check out next Thursday", d(12, 1), d(12, 3), 2),
    # Nothing said, or nothing certain: stays None rather than a guess.
    (THU_NOV_26, "thanks, that's all I needed today", None, None, None),
    (THU_NOV_26, "I'd like to book a room", None, None, None),
    (THU_NOV_26, "sometime next week", None, None, None),
    (THU_NOV_26, "how much is it a night?", None, None, None),
    (THU_NOV_26, "$180 a night is fine, a room on the 2nd floor for 2 people", None, None, None),
    (THU_NOV_26, "wait a second", None, None, None),
    # Year rollover.
    (MON_DEC_28, "I'll be arriving on Dec. 7 for four nights", d(12, 7, 2027), d(12, 11, 2027), 4),
    (MON_DEC_28, "the 3rd to the 5th", d(1, 3, 2027), d(1, 5, 2027), 2),
    (MON_DEC_28, "from the 30th to the 2nd", d(12, 30), d(1, 2, 2027), 3),
    (MON_DEC_28, "New Year's Eve for two nights", d(12, 31), d(1, 2, 2027), 2),
    (MON_DEC_28, "this weekend", d(1, 1, 2027), d(1, 3, 2027), 2),
    (MON_DEC_28, "tomorrow for a week", d(12, 29), d(1, 5, 2027), 7),
    (MON_DEC_28, "January 2nd", d(1, 2, 2027), None, None),
    (MON_DEC_28, "12/27", d(12, 27, 2027), None, None),
    (MON_DEC_28, "this Monday", d(12, 28), None, None),
    (MON_DEC_28, "next Monday", d(1, 4, 2027), None, None),
    (MON_DEC_28, "Christmas", d(12, 25, 2027), None, None),
]


@pytest.mark.parametrize(("today", "text", "check_in", "check_out", "nights"), CASES)
def test_parse_stay(today: date, text: str, check_in: date | None, check_out: date | None, nights: int | None) -> None:
    assert parse_stay(text, today) == StayDates(check_in, check_out, nights)


def test_resolved_fills_the_missing_field():
    assert StayDates(d(12, 7), nights=4).resolved() == StayDates(d(12, 7), d(12, 11), 4)
    assert StayDates(d(12, 7), d(12, 11)).resolved() == StayDates(d(12, 7), d(12, 11), 4)
    assert StayDates(check_out=d(12, 11), nights=4).resolved() == StayDates(d(12, 7), d(12, 11), 4)
    assert StayDates(d(12, 7)).resolved() == StayDates(d(12, 7))


def test_departure_before_arrival_is_dropped_not_guessed():
    assert parse_stay("from 2026-12-10 to 2026-12-05", THU_NOV_26) == StayDates(d(12, 10))
