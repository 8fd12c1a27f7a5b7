"""What a caller turn asks for: intents, yes/no, room type, names and the hotel topic asked about.

Keyword and pattern rules, deliberately: they are exact, fast, explainable and testable, and
the dialogue decisions that follow (tool calls, bookings) must not depend on a sampled model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum


class Intent(Enum):
    BOOK = "book"
    AVAILABILITY = "availability"
    PRICE = "price"
    LOOKUP = "lookup"
    MODIFY = "modify"
    CANCEL = "cancel"
    QUESTION = "question"
    GREETING = "greeting"
    GOODBYE = "goodbye"
    THANKS = "thanks"


_INTENT_PATTERNS: dict[Intent, re.Pattern[str]] = {
    Intent.CANCEL: re.compile(r"\bcancel\w*\b", re.I),
    Intent.MODIFY: re.compile(
        r"\b(change|modify|move|extend|shorten|reschedul\w*|switch|upgrade|different dates"
        r"|add (?:a|one|another) night)\b",
        re.I,
    ),
    Intent.LOOKUP: re.compile(
        r"\b(?:(?:my|existing|a|the) (?:booking|reservation)|look ?up|check on|confirm my|details of)\b", re.I
    ),
    Intent.BOOK: re.compile(
        r"\b(book\w*|reserv\w*|(?:need|want|like|looking for|get) (?:a |one |two |\w+ )?rooms?|stay(?:ing)?"
        r"|make a booking)\b",
        re.I,
    ),
    Intent.AVAILABILITY: re.compile(
        r"\b(availab\w*|vacanc\w*|any rooms|rooms? (?:free|open|left)|(?:do|would) you have (?:a |any )?rooms?)\b", re.I
    ),
    Intent.PRICE: re.compile(r"\b(how much|price|rates?|cost|costs|expensive|cheap\w*)\b", re.I),
    Intent.GREETING: re.compile(r"^\s*(hi|hello|hey|good (?:morning|afternoon|evening))\b", re.I),
    Intent.GOODBYE: re.compile(r"\b(bye|goodbye|that'?s all|that is all|that'?s it|nothing else|have a good)\b", re.I),
    Intent.THANKS: re.compile(r"\b(thanks|thank you)\b", re.I),
}

_YES = re.compile(
    r"^\s*(?:yes|yeah|yep|yup|sure|correct|right|ok(?:ay)?|absolutely|definitely|please do|go ahead|sounds good"
    r"|that'?s (?:right|correct|perfect|great|fine)|perfect|confirm\w*|do it|book it|great)\b",
    re.I,
)
_NO = re.compile(
    r"^\s*(?:no|nope|nah|not (?:quite|really|right)|wrong|that'?s (?:wrong|not right)|wait|actually)\b", re.I
)

# Hotel-file topic keys (facts and policies) and the words callers use for them.
TOPIC_WORDS: dict[str, tuple[str, ...]] = {
    "airport": ("airport", "jetport", "flight", "fly in"),
    "parking": ("parking", "park my car", "park the car", "valet", "garage"),
    "breakfast": ("breakfast",),
    "wifi": ("wifi", "wi-fi", "internet"),
    "pool": ("pool", "hot tub", "swim"),
    "gym": ("gym", "fitness", "workout"),
    "shuttle": ("shuttle",),
    "restaurant": ("restaurant", "dinner", "eat", "food"),
    # what a room has ("what beds are in the suite?"): answered from the room types' descriptions
    "room_details": ("bed", "beds", "king bed", "queen bed", "sofa bed", "balcony", "bathtub", "sleeps", "sleep"),
    # around the hotel: the profile's "nearby" fact when it has one, else no information (never the restaurant)
    "nearby": ("near", "nearby", "close to", "around the hotel", "walking distance", "neighborhood", "things to do"),
    "cancellation": (
        "cancellation policy",
        "cancel policy",
        "refund",
        "free cancellation",
        "cancel for free",
        "cancellation fee",
        "if i cancel",
        "if we cancel",
    ),
    "pets": ("pet", "pets", "dog", "dogs", "cat"),
    "smoking": ("smoke", "smoking"),
    "children": ("child", "children", "kids", "kid", "baby"),
    "payment": ("pay", "payment", "deposit"),
    "check_times": (
        "check-in time",
        "check in time",
        "check-out time",
        "check out time",
        "what time can i check",
        "what time can we check",
        "when can i check",
        "when can we check",
        "what time is check",
        "when is check",
        "how late is check",
        "how early is check",
        "have to check out",
        "need to check out",
        "late check-out",
        "late checkout",
        "early check-in",
    ),
    "address": ("address", "where are you", "where is the hotel", "located", "location", "directions"),
}
_CANCEL_MY_BOOKING = re.compile(
    r"\b(?:cancel|cancell?ing) (?:my|our|the|a|this) (?:booking|reservation|room|stay)\b", re.I
)
_QUESTION_CUE = re.compile(r"\?|^\s*(what|when|where|how|is|are|do|does|can|could|will|any)\b", re.I)

ROOM_WORDS: dict[str, tuple[str, ...]] = {
    "standard": ("standard", "queen", "basic", "cheapest", "regular"),
    "deluxe": ("deluxe", "king", "harbor view room"),
    "suite": ("suite", "harbor suite"),
}

_NAME_WORD = r"[A-Za-z][a-zA-Z'\-]+"
_TITLE = r"(?:(?:mr|mrs|ms|miss|dr)\.?\s+)?"
# "my name is ..." is explicit enough to trust in any letter case; "I'm Ana" only when capitalised.
_EXPLICIT_NAME = re.compile(
    rf"\b(?:my name is|my name's|name is|name's|under the name(?: of)?|booked under)\s+{_TITLE}"
    rf"({_NAME_WORD}(?:\s+{_NAME_WORD}){{0,2}})",
    re.I,
)
_SOFT_NAME = re.compile(
    r"\b(?:[Tt]his is|I am|I'm|[Ii]t's|[Ii]t is)\s+((?:[A-Z][a-zA-Z'\-]+)(?:\s+[A-Z][a-zA-Z'\-]+){0,2})"
)
_SURNAME_INTRO = re.compile(rf"\b(?:last name|surname|family name)(?: is|'s)?\s+({_NAME_WORD})", re.I)
_NOT_NAMES = {
    "looking",
    "calling",
    "interested",
    "trying",
    "here",
    "fine",
    "good",
    "ok",
    "okay",
    "sorry",
    "not",
    "just",
    "staying",
    "arriving",
    "going",
    "coming",
    "wondering",
    "hoping",
    "travelling",
    "traveling",
    "the",
    "a",
    "an",
    "two",
    "three",
    "four",
    "one",
    "me",
    "us",
    "my",
    "tomorrow",
    "tonight",
    "next",
    "this",
    "that",
    "correct",
    "right",
    "great",
    "all",
    "booking",
    "reservation",
    "room",
    "suite",
    "deluxe",
    "standard",
    "and",
    "yes",
    "no",
    "please",
    "thanks",
    "thank",
    "you",
    "is",
    "it",
    "for",
    "with",
    "phone",
    "number",
    "name",
    "hi",
    "hello",
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
    "weekend",
}


@dataclass(frozen=True)
class TurnMeaning:
    """Everything the dialogue needs to know about one caller turn, besides dates and contacts."""

    intents: frozenset[Intent] = field(default_factory=frozenset)
    affirm: bool | None = None
    room_type: str | None = None
    topics: tuple[str, ...] = ()
    is_question: bool = False


def read_turn(text: str) -> TurnMeaning:
    intents = frozenset(i for i, pattern in _INTENT_PATTERNS.items() if pattern.search(text))
    topics = tuple(topic for topic, words in TOPIC_WORDS.items() if _mentions_any(text, words))
    if "cancellation" in topics and not _CANCEL_MY_BOOKING.search(text):
        intents -= {Intent.CANCEL}  # "what's your cancellation policy?" asks about cancelling, it does not cancel
    return TurnMeaning(
        intents=intents,
        affirm=_affirmation(text),
        room_type=find_room_type(text),
        topics=topics,
        is_question=bool(_QUESTION_CUE.search(text)),
    )


def _mentions_any(text: str, words: tuple[str, ...]) -> bool:
    return any(re.search(rf"\b{re.escape(w)}\b", text, re.I) for w in words)


def _affirmation(text: str) -> bool | None:
    if _NO.search(text):
        return False
    if _YES.search(text):
        return True
    return None


def find_room_type(text: str) -> str | None:
    for code, words in ROOM_WORDS.items():
        if _mentions_any(text, words):
            return code
    return None


def find_name(text: str, *, expecting: bool = False) -> tuple[str | None, str | None]:
    """(first, last) from "my name is Ana Diaz" style phrases, or a bare name when one was asked for."""
    for pattern in (_EXPLICIT_NAME, _SOFT_NAME):
        match = pattern.search(text)
        if match:
            words = _leading_name_words(match.group(1))
            if words:
                return _split_name(words)
    surname = _SURNAME_INTRO.search(text)
    if surname and surname.group(1).lower() not in _NOT_NAMES:
        return None, surname.group(1).capitalize()
    if expecting:
        # "Ana Diaz, 207 555 0199" / "Ana Diaz and my email is ...": the name leads, contact details follow
        lead = re.split(r"[,;]|\s(?:and|at|my|phone|number|email|it'?s)\s|\s\+?\d", text, maxsplit=1)[0]
        bare = re.fullmatch(r"\s*([A-Za-z'\-]+(?:\s+[A-Za-z'\-]+){0,2})[\s.!]*", lead)
        if bare and all(w.lower() not in _NOT_NAMES for w in bare.group(1).split()):
            return _split_name(bare.group(1).split())
    return None, None


def _leading_name_words(phrase: str) -> list[str]:
    words = []
    for word in phrase.split():
        if word.lower() in _NOT_NAMES:
            break
        words.append(word)
    return words


def _split_name(words: list[str]) -> tuple[str | None, str | None]:
    words = [w[:1].upper() + w[1:] for w in words]
    if len(words) == 1:
        return words[0], None
    return " ".join(words[:-1]), words[-1]


# What the agent's last words asked for, as the dialogue's pending slot (for words from another agent: an
# annotated dialogue's system turns, an operator). Checked in this order: "how many nights" before "arrive".
_ASKED: tuple[tuple[str, re.Pattern[str]], ...] = (
    # guests before nights: "How many guests will be staying?" asks for a party size, not a length
    ("guests", re.compile(r"\bhow many\b[^.?!]*\b(?:people|persons?|guests?|adults?|of you)\b", re.I)),
    ("nights", re.compile(r"\bhow (?:many|long)\b[^.?!]*\b(?:nights?|days?|stay(?:ing)?)\b|\bhow long\b", re.I)),
    ("check_out", re.compile(r"\b(?:check(?:ing)?[ -]?out|leav(?:e|ing)|depart\w*)\b[^.]*\?", re.I)),
    ("check_in", re.compile(r"\b(?:check(?:ing)?[ -]?in|arriv\w*|what date|which date|what day|when)\b[^.]*\?", re.I)),
    ("name", re.compile(r"\b(?:your|the guest'?s?) (?:full |first |last )?name\b", re.I)),
)


def asked_slot(agent_text: str | None) -> str | None:
    """The detail the agent's words ask the caller for ("nights", "guests", "check_in", ...), if any."""
    if not agent_text:
        return None
    for slot, pattern in _ASKED:
        if pattern.search(agent_text):
            return slot
    return None
