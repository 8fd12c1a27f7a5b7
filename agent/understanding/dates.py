"""Stay dates and party size out of what a caller says, relative to a given "today".

Focused patterns rather than a general date parser: callers say a handful of shapes ("Dec. 7 for four
nights", "the 3rd to the 5th", "next Friday"), and a general parser guesses where these must not
(dateparser reads "the 3rd" as March and "on Dec. 7" as December 26).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from itertools import pairwise

from agent.understanding.numbers import words_to_numbers


@dataclass(frozen=True)
class StayDates:
    """What a caller said about a stay; a field stays None when it was not said."""

    check_in: date | None = None
    check_out: date | None = None
    nights: int | None = None
    said_check_out: bool = field(default=False, compare=False)  # the departure named as a date, not from nights

    def resolved(self) -> StayDates:
        """The same stay with the third field filled in whenever two are known."""
        check_in, check_out, nights = self.check_in, self.check_out, self.nights
        if check_in and check_out and nights is None and check_out > check_in:
            nights = (check_out - check_in).days
        elif check_in and nights and check_out is None:
            check_out = check_in + timedelta(days=nights)
        elif check_out and nights and check_in is None:
            check_in = check_out - timedelta(days=nights)
        return StayDates(check_in, check_out, nights, self.said_check_out)


_MONTHS = {
    "jan": 1, "january": 1, "feb": 2, "february": 2, "mar": 3, "march": 3, "apr": 4, "april": 4, "may": 5,
    "jun": 6, "june": 6, "jul": 7, "july": 7, "aug": 8, "august": 8, "sep": 9, "sept": 9, "september": 9,
    "oct": 10, "october": 10, "nov": 11, "november": 11, "dec": 12, "december": 12,
}  # fmt: skip
_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_HOLIDAYS = {
    "christmas eve": (12, 24), "christmas day": (12, 25), "christmas": (12, 25),
    "new year's eve": (12, 31), "new years eve": (12, 31), "new year's day": (1, 1), "new years day": (1, 1),
}  # fmt: skip

_MONTH = r"(?P<month>" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_DAY = r"(?P<day>\d{1,2})(?:st|nd|rd|th)?"
_YEAR = r"(?:,?\s+(?P<year>\d{4}))?"
_WEEKDAY = r"(?P<weekday>" + "|".join(_WEEKDAYS) + r")s?"
_HOLIDAY = r"\b(?:" + "|".join(re.escape(h) for h in sorted(_HOLIDAYS, key=len, reverse=True)) + r")\b"
# Words after an ordinal that make it something other than a day of the month ("the 2nd floor").
_NOT_A_DAY = (
    r"(?!\s+(?:floor|time|room|bed|bedroom|guest|person|people|adult|child|kid|night|option|choice|one|of\s+us"
    r"|of\s+them))"
)
_DAY_ONLY = rf"\b(?:the\s+)?(?P<day>\d{{1,2}})(?:st|nd|rd|th)\b{_NOT_A_DAY}"
# "March 3 to 6": a bare number after a date and a range word is another day of the same month.
_RANGE_TAIL = re.compile(
    r"\s*(?:-|–|\bto|\bthrough|\bthru|\buntil|\btill)\s*(?:the\s+)?(?P<day>\d{1,2})(?:st|nd|rd|th)?\b"
    r"(?!\s*(?:nights?|days?|weeks?|people|guests|adults|kids|children|rooms?|am|pm|o'clock|:|/|\.\d))"
)

_AND_TAIL = re.compile(
    r"\s+(?:and|&)\s+(?:the\s+)?(?P<day>\d{1,2})(?:st|nd|rd|th)?\b"
    r"(?!\s*(?:nights?|days?|weeks?|people|guests|adults|kids|children|rooms?|am|pm|o'clock|of\s+us|:|/|\.\d))"
)
_IN_AND_OUT = re.compile(r"\brespectively\b|\bcheckin (?:and|&) checkout\b|\barriv\w* (?:and|&) (?:leav|depart)")

_OUT_CUES = {"out", "leaving", "leave", "depart", "departing", "departure", "checkout", "until", "till"}
_IN_CUES = {"from", "arriving", "arrive", "arrival", "in", "starting", "beginning", "checkin", "coming"}
_OFFSET = re.compile(r"\b(?:(\d+)|a) (day|week)s? (?:from|after) $")
_LAST_NIGHT = re.compile(r"\s+night\b")
_RANGE_WORDS = {"to", "through", "thru", "-", "–"}
# Words before "a night" / "a week" that make it a price ("$200 a night"), not a length of stay.
_PRICE_WORDS = {"per", "much", "cost", "costs", "is", "it", "rate", "price", "dollars", "bucks", "euros"}


@dataclass(frozen=True)
class _Mention:
    """A date in the text, resolved once we know the date it must come on or after."""

    start: int
    end: int
    resolve: Callable[[date], date | None]
    day_of_month: bool = False  # a range tail may follow ("March 3 to 6")
    weekday: bool = False
    last_night: bool = False  # names the stay's last night, not the departure ("December 14 and 15")


def parse_stay(text: str, today: date) -> StayDates:
    """Check-in, check-out and nights said in one utterance; what was not said stays None."""
    norm = _normalize(text)
    nights = _find_nights(norm)
    check_in, check_out = _assign(norm, _mentions(norm, today), today)
    weekend = _weekend(norm, today)
    if weekend:
        check_in = check_in or weekend[0]
        if check_out is None and (check_in is None or weekend[1] > check_in):
            check_out = weekend[1]
    if check_in and check_out and check_out <= check_in:
        check_out = None  # contradictory; better to ask again than to guess which half was meant
    return StayDates(check_in, check_out, nights, said_check_out=check_out is not None).resolved()


_SAID_TWICE = re.compile(r"\b(\d{1,2}) \1\b(?= (?:more |whole |full )?(?:nights?|days?|weeks?)\b)")


def _normalize(text: str) -> str:
    text = words_to_numbers(text.lower().replace("’", "'"))
    text = _SAID_TWICE.sub(r"\1", text)  # "four 4 days" (a number said, then typed): one number
    text = re.sub(r"\bcheck(?:ing)?[\s-]?(in|out)\b", r"check\1", text)
    text = re.sub(r"(?<=[a-z\d])-(?=[a-z])|(?<=[a-z])-(?=\d)", " ", text)
    return re.sub(r"\s+", " ", text)


def _find_nights(norm: str) -> int | None:
    """Length of stay said outright: "4 nights", "a week", "a night" (but not "$200 a night"). Where a turn
    names several, the last one counts: "4 days is too little, I'd rather have 10 days"."""
    nights = re.findall(r"\b(\d+) (?:more )?nights?\b", norm)
    if nights:
        return int(nights[-1]) or None
    days = [
        m for m in _DAYS_OF_STAY.finditer(norm)
        if _previous_word(norm, m.start()) not in _PRICE_WORDS | {"in", "within", "next", "last", "first"}
    ]  # fmt: skip
    if days:
        return int(days[-1][1]) or None
    m = re.search(r"\b(?:(\d+)|a) (?:more )?weeks?\b(?! from| ago)", norm)
    if m and _previous_word(norm, m.start()) not in _PRICE_WORDS | {"in", "next", "this", "last"}:
        return 7 * int(m[1] or 1)
    m = re.search(r"\ba fortnight\b|\ba (?:single )?night\b", norm)
    if m and _previous_word(norm, m.start()) not in _PRICE_WORDS:
        return 14 if "fortnight" in m[0] else 1
    m = _ONE_NAMED_NIGHT.search(norm)
    if m and _previous_word(norm, m.start()) not in {"and", "through", "to", "till", "until"}:
        return 1  # "for tomorrow night", "just tonight": one night, the day named is the arrival
    return None


# "for 3 days", "a 2 day stay", "twelve whole days", "5 days from the 6th" (a stay that starts then): in a
# hotel booking a stay's days are its nights (SGD's number_of_days). Not "in 3 days", "3 days from now".
_DAYS_OF_STAY = re.compile(
    r"\b(\d+) (?:more |whole |full |total )?days?\b(?! (?:from|after) (?:now|today|tomorrow)\b| ago| before| later)"
)

_ONE_NAMED_NIGHT = re.compile(
    r"\b(?:for|just|only)(?: the)? (?:tonight|night\b(?! of \w+ (?:to|through|until))|"
    r"(?:tomorrow|today|(?:mon|tues|wednes|thurs|fri|satur|sun)day) night(?!s| and| through| to| until))"
)


def _previous_word(norm: str, pos: int) -> str:
    """The word just before `pos` in the same clause ("" after a full stop or a comma: "a party of 7. 5 days")."""
    words = re.findall(r"[\w$'-]+", norm[:pos])
    if not words or re.search(r"[.,;!?]\s*$", norm[:pos]):
        return ""
    if words[-1] == "it" and len(words) > 1 and words[-2] in _CHANGE_VERBS:
        return "make it"  # "make it 4 days" changes the stay; "is it $200 a night" is a price
    return "dollars" if re.fullmatch(r"\$?\d+(?:\.\d+)?", words[-1]) else words[-1]


_CHANGE_VERBS = frozenset({"make", "have", "keep", "extend", "change", "making", "be", "need", "want"})


# "that's all for today", "thanks for your help today": "today" closing a conversation names no date.
_SMALL_TALK_TODAY = re.compile(
    r"\b(?:that'?s all|that is all|be all|that'?s everything|all i need(?:ed)?|thanks|thank you|help|helping|done"
    r"|that'?s it|assistance|your time)\b"
    r"(?:\W+\w+){0,4}\W+(?:for )?today\W*$"
)


def _mentions(norm: str, today: date) -> list[_Mention]:
    found: list[_Mention] = []
    for pattern, build in _PATTERNS:
        for m in pattern.finditer(norm):
            if m[0].endswith("today") and _SMALL_TALK_TODAY.search(norm[: m.end() + 1]):
                continue
            if not any(m.start() < f.end and f.start < m.end() for f in found):
                found.append(build(m, today))
    found = sorted(found + _range_tails(norm, found), key=lambda f: f.start)
    return [_shifted(norm, f) for f in _without_named_weekdays(norm, found)]


def _without_named_weekdays(norm: str, found: list[_Mention]) -> list[_Mention]:
    """Drop weekdays that only name the dates after them: "Friday the 4th", "Friday, December 4", and the
    list form "Monday and Tuesday, December 14 and 15" (right to left, so a chain of weekdays goes too)."""
    kept: list[_Mention] = []
    dropped_next = False
    for f, nxt in reversed(list(pairwise([*found, None]))):
        gap = norm[f.end : nxt.start] if nxt else ""
        names_date = nxt is not None and re.fullmatch(r",?\s*", gap) and not nxt.weekday
        in_list = nxt is not None and nxt.weekday and dropped_next and re.fullmatch(r",?\s*(?:and|&)\s*", gap)
        dropped_next = bool(f.weekday and (names_date or in_list))
        if not dropped_next:
            kept.append(f)
    return kept[::-1]


def _shifted(norm: str, mention: _Mention) -> _Mention:
    """The date named, moved on by what precedes it: "a week from Friday", "2 days after Christmas"."""
    m = _OFFSET.search(norm, 0, mention.start)
    if not m or (m[2] == "day" and mention.day_of_month):
        return mention  # "four days from the 7th": a stay of four days from the 7th (its length: _find_nights)
    days = int(m[1] or 1) * (7 if m[2] == "week" else 1)
    base = mention.resolve
    return replace(mention, start=m.start(), resolve=lambda after: _plus(base(after), days))


def _plus(day: date | None, days: int) -> date | None:
    return day + timedelta(days=days) if day else None


def _range_tails(norm: str, found: list[_Mention]) -> list[_Mention]:
    tails = []
    for mention in found:
        if not mention.day_of_month:
            continue
        m = _RANGE_TAIL.match(norm, mention.end)
        last_night = False
        if not m and (m := _AND_TAIL.match(norm, mention.end)):
            # "December 14 and 15" names the nights (out the morning after the 15th), unless the caller
            # says the two are the arrival and the departure ("... respectively", "check-in and check-out")
            last_night = not _IN_AND_OUT.search(norm)
        if m and not any(f.start < m.end() and m.start() < f.end for f in found):
            tails.append(_Mention(m.start("day"), m.end(), _on_day(int(m["day"])), last_night=last_night))
    return tails


def _assign(norm: str, mentions: list[_Mention], today: date) -> tuple[date | None, date | None]:
    """Which date is the arrival and which the departure, from the words just before each one."""
    if len(mentions) == 2 and _IN_AND_OUT.search(norm):  # "check-in and check-out are the 10th and the 12th"
        check_in = mentions[0].resolve(today)
        return check_in, mentions[1].resolve(check_in + timedelta(days=1) if check_in else today)
    check_in = check_out = None
    prev_end = 0
    for mention in mentions:
        before = norm[prev_end : mention.start]
        role = _role_after(norm[mention.end : mention.end + 30]) or _role(before) or ("out" if check_in else "in")
        prev_end = mention.end
        if role == "in" and check_in is None:
            check_in = mention.resolve(today)
        elif role == "out" and check_out is None:
            check_out = mention.resolve(check_in + timedelta(days=1) if check_in else today)
            # "Friday and Saturday night" names the last night, not the departure.
            named_night = _LAST_NIGHT.match(norm, mention.end) and re.search(r"\band\b", before)
            if check_out and (named_night or mention.last_night):
                check_out += timedelta(days=1)
    return check_in, check_out


# Words between a field and its value: "check-in date to", "checkout will be on", "check in as".
_FIELD_TO_VALUE = {"date", "day", "to", "as", "is", "be", "will", "should", "for", "on", "of", "my", "it", "at"}
# A field named right after its value: "the 3rd of March for check-in", "the 9th as my checkout date".
_ROLE_AFTER = re.compile(r"^\W*(?:for|as|is|be)(?: (?:the|my|our))? (checkin|checkout)\b")


def _role_after(after: str) -> str | None:
    m = _ROLE_AFTER.match(after)
    return None if not m else ("in" if m[1] == "checkin" else "out")


def _role(before: str) -> str | None:
    """Whether a date is the arrival ("in") or departure ("out"), from the words just before it."""
    words = re.findall(r"[\w'-]+|–", before)
    if words and words[-1] == "the":
        words.pop()
    # "change the check-in date to the 2nd": the field named just before wins over "to" as a range word
    for word in reversed(words[-5:]):
        if word in ("checkin", "checkout"):
            return "in" if word == "checkin" else "out"
        if word not in _FIELD_TO_VALUE:
            break
    if words and words[-1] in _RANGE_WORDS:
        return "out"
    for word in reversed(words[-4:]):
        if word in _OUT_CUES:
            return "out"
        if word in _IN_CUES:
            return "in"
    return None


def _next_day_of_month(day: int, after: date) -> date | None:
    """The first date on or after `after` that falls on this day of the month."""
    year, month = after.year, after.month
    for _ in range(13):
        if day >= (after.day if (year, month) == (after.year, after.month) else 1):
            try:
                return date(year, month, day)
            except ValueError:
                pass
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return None


def _next_month_day(month: int, day: int, after: date) -> date | None:
    """This month and day in the year that puts it on or after `after`."""
    for year in range(after.year, after.year + 5):
        try:
            candidate = date(year, month, day)
        except ValueError:
            continue
        if candidate >= after:
            return candidate
    return None


def _exact(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _on_weekday(weekday: int, after: date, next_week: bool) -> date:
    """The first such weekday on or after `after`, or with `next_week` the one in the following calendar
    week: "next Friday" said on a Thursday is eight days away, not tomorrow."""
    if next_week:
        monday = after - timedelta(days=after.weekday()) + timedelta(days=7)
        return monday + timedelta(days=weekday)
    return after + timedelta(days=(weekday - after.weekday()) % 7)


def _weekend(norm: str, today: date) -> tuple[date, date] | None:
    """Friday and Sunday of "the weekend": on a Saturday it starts today, on a Sunday it is the next one."""
    m = re.search(r"\b(next|this coming|this|the) weekend\b", norm)
    if not m:
        return None
    if m[1] == "next":
        friday = _on_weekday(4, today, next_week=True)
    elif today.weekday() == 5:
        friday = today
    else:
        friday = _on_weekday(4, today, next_week=False)
    return friday, friday + timedelta(days=6 - friday.weekday())


def _iso(m: re.Match[str], today: date) -> _Mention:
    day = _exact(int(m["year"]), int(m["month"]), int(m["day"]))
    return _Mention(m.start(), m.end(), lambda after: day)


def _numeric(m: re.Match[str], today: date) -> _Mention:
    month, day = int(m["month"]), int(m["day"])
    if m["year"]:
        year = int(m["year"]) + (2000 if len(m["year"]) == 2 else 0)
        fixed = _exact(year, month, day)
        return _Mention(m.start(), m.end(), lambda after: fixed)
    return _Mention(m.start(), m.end(), lambda after: _next_month_day(month, day, after))


def _month_day(m: re.Match[str], today: date) -> _Mention:
    month, day = _MONTHS[m["month"]], int(m["day"])
    if m["year"]:
        fixed = _exact(int(m["year"]), month, day)
        return _Mention(m.start(), m.end(), lambda after: fixed, day_of_month=True)
    return _Mention(m.start(), m.end(), lambda after: _next_month_day(month, day, after), day_of_month=True)


def _day_only(m: re.Match[str], today: date) -> _Mention:
    return _Mention(m.start(), m.end(), _on_day(int(m["day"])), day_of_month=True)


def _on_day(day: int) -> Callable[[date], date | None]:
    return lambda after: _next_day_of_month(day, after)


def _relative(m: re.Match[str], today: date) -> _Mention:
    if m["count"]:
        offset = int(m["count"]) * (7 if m["unit"].startswith("week") else 1)
    else:
        offset = {"today": 0, "tonight": 0, "tomorrow": 1}.get(m["word"], 2)
    day = today + timedelta(days=offset)
    return _Mention(m.start(), m.end(), lambda after: day)


def _weekday(m: re.Match[str], today: date) -> _Mention:
    weekday, next_week = _WEEKDAYS.index(m["weekday"]), m["which"] == "next"
    if m["which"]:  # "next Thursday", "Friday this week" count from today, even as the departure
        return _Mention(m.start(), m.end(), lambda after: _on_weekday(weekday, today, next_week), weekday=True)
    return _Mention(m.start(), m.end(), lambda after: _on_weekday(weekday, after, next_week), weekday=True)


def _holiday(m: re.Match[str], today: date) -> _Mention:
    month, day = _HOLIDAYS[m[0]]
    return _Mention(m.start(), m.end(), lambda after: _next_month_day(month, day, after))


# Earlier patterns win where two overlap ("the day after tomorrow" over "tomorrow").
_PATTERNS: list[tuple[re.Pattern[str], Callable[[re.Match[str], date], _Mention]]] = [
    (re.compile(r"\b(?P<year>\d{4})-(?P<month>\d{1,2})-(?P<day>\d{1,2})\b"), _iso),
    (re.compile(r"\b(?P<month>\d{1,2})/(?P<day>\d{1,2})(?:/(?P<year>\d{4}|\d{2}))?\b"), _numeric),
    (
        re.compile(
            r"\b(?:the |later )?(?P<word>day after tomorrow|today|tonight|tomorrow)\b"
            r"|\bin (?P<count>\d+) (?P<unit>days?|weeks?)\b"
        ),
        _relative,
    ),
    (re.compile(rf"\b{_MONTH}\s+(?:the\s+)?{_DAY}\b{_YEAR}"), _month_day),
    (re.compile(rf"\b(?:the\s+)?{_DAY}\s+(?:of\s+)?{_MONTH}(?![a-z]){_YEAR}"), _month_day),
    (re.compile(_HOLIDAY), _holiday),
    (re.compile(rf"\b{_WEEKDAY} (?:of )?(?P<which>next|this) week\b"), _weekday),
    (re.compile(rf"\b(?:(?P<which>next|this coming|this|coming) )?{_WEEKDAY}\b"), _weekday),
    (re.compile(_DAY_ONLY), _day_only),
]


# ---- party size ----

_CHILD = r"(?:child|children|kids?|infants?|bab(?:y|ies)|toddlers?|teens?|teenagers?)"
_COMPANIONS = (
    r"wife|husband|partner|spouse|fianc[ée]e?|friend|boyfriend|girlfriend|son|daughter|mom|mum|mother|dad"
    r"|father|colleague|coworker|sister|brother|kid|child|baby|grandma|grandpa|grandmother|grandfather"
)
_NOT_PEOPLE = r"(?! (?:nights?|days?|weeks?|rooms?|beds?|adults?|kids?|children|bab(?:y|ies)))"
_TOTALS = [
    re.compile(r"\b(\d+) (?:people|persons?|guests?|individuals?|pax|of us|travell?ers)\b"),
    re.compile(r"\b(\d+) (?:people |persons? |guests? )?in total\b"),
    re.compile(r"\b(?:party|family|group|total) of (\d+)\b"),
]
_LOOSE_TOTALS = [
    re.compile(rf"\b(?:we are|we're|there are|there's|there will be|there'll be) (\d+)\b{_NOT_PEOPLE}"),
    re.compile(rf"\b(?:room|booking|reservation) for (\d+)\b{_NOT_PEOPLE}"),
    # "a house for one", "just for 1 please": a bare count after "for" that is no date, time or length
    re.compile(rf"\b(?:just |only )?for (\d+)\b(?!\s*(?:st|nd|rd|th)\b|:|\.\d|\s*(?:am|pm|o'clock)\b){_NOT_PEOPLE}"),
]
_ADULTS = re.compile(r"\b(\d+|an?) adults?\b")
_CHILDREN = re.compile(rf"\b(\d+|an?) (?:little |young |small )?{_CHILD}\b")
# The caller counted in alongside someone: "me and my wife", "my husband and I", "with our 2 kids".
_WITH_ME = re.compile(r"\b(?:me|myself)(?: and|,)|\band (?:i|me|myself)\b|\b(?:with|bringing) (?:my|our)\b")
_SOLO = re.compile(
    r"\b(?:just|only) (?:for )?(?:me|myself|1 person|1 guest|1 adult)\b|\bby myself\b|\bon my own\b"
    r"|\btravell?ing alone\b|^\W*(?:me|myself)\W*$|\bi'?m alone\b|\bnot bringing anyone\b"
)


def parse_guest_count(text: str) -> int | None:
    """How many people are staying, if the caller says; None otherwise (never a night count or a date)."""
    norm = _normalize(text)
    for pattern in _TOTALS:
        if (m := pattern.search(norm)) and int(m[1]) > 0:
            return int(m[1])
    if adults := _ADULTS.search(norm):
        return _count(adults[1]) + sum(_count(m[1]) for m in _CHILDREN.finditer(norm))
    for pattern in _LOOSE_TOTALS:
        if (m := pattern.search(norm)) and int(m[1]) > 0:
            return int(m[1])
    if _WITH_ME.search(norm) and (companions := _companions(norm)):
        return 1 + companions
    return 1 if _SOLO.search(norm) else None


def _count(word: str) -> int:
    return 1 if word in ("a", "an") else int(word)


def _companions(norm: str) -> int:
    """People named alongside the caller: "my wife and our 2 kids" → 3."""
    counted = sum(int(m[1]) for m in re.finditer(rf"\b(?:my|our) (\d+) (?:{_COMPANIONS}|children)s?\b", norm))
    return counted + len(re.findall(rf"\b(?:my|our|a) (?:{_COMPANIONS})\b", norm))
