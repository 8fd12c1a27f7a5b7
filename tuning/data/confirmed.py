"""Reading examples from calls that made a booking: the caller heard every detail read back and said yes, so
the booking itself labels the turns whose words gave those details.

Each caller turn of such a call (its redacted words) is read by the rules as it was on the call — the agent's
last words say what was asked, so "three" after "How many nights?" is three nights. A turn becomes an example
when everything the rules found in it (dates, length of stay, party size) is what the booking holds; each date
is labelled with the shortest run of the caller's words that names that day (what the served reader is asked
to quote, and what code resolves again on a call). The turn that answered the read-back with a yes becomes a
confirm. Everything else is left out rather than guessed: a value the booking does not hold (the caller
changed their mind later, or the rules misread it), a date no run of words names on its own, a question or a
goodbye the turn also carried (its labels would be incomplete). Names, phone numbers and e-mail addresses stay
the placeholders redaction put in the words.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import select

from agent.dialogue.new_booking import NewBookingFlow
from agent.dialogue.state import DialogueState
from agent.understanding.action import ActionIntent, ActionSlots, TurnAction
from agent.understanding.dates import parse_stay
from agent.understanding.intents import Intent, asked_slot, read_turn
from innkeeper.core.db.database import Database
from innkeeper.core.db.schema import Booking
from innkeeper.core.hotel import HotelProfile
from tuning.data.actions import ActionExample
from tuning.data.pii import EMAIL, NAME, PHONE
from tuning.data.redact import RedactedDialogue

MAX_DATE_WORDS = 6  # the longest run of words tried as a date ("the twenty first of March next year")
_BOOKING_INTENTS = frozenset({Intent.BOOK, Intent.AVAILABILITY})
_PLACEHOLDER_SLOTS = {"name": NAME, "phone": PHONE, "email": EMAIL}


@dataclass(frozen=True)
class BookedStay:
    """What a call booked: the stay the caller confirmed at the read-back."""

    check_in: date
    check_out: date
    guests: int

    @property
    def nights(self) -> int:
        return (self.check_out - self.check_in).days


def booked_stays(db: Database, call_ids: Collection[str]) -> dict[str, BookedStay]:
    """Call id → the stay of the (first) booking that call made."""
    if not call_ids:
        return {}

    def work(session) -> dict[str, BookedStay]:
        query = select(Booking).where(Booking.call_id.in_(list(call_ids))).order_by(Booking.id)
        stays: dict[str, BookedStay] = {}
        for booking in session.scalars(query):
            stays.setdefault(booking.call_id, BookedStay(booking.check_in, booking.check_out, booking.guests))
        return stays

    return db.transact(work)


def confirmed_readings(
    db: Database, dialogues: Sequence[RedactedDialogue], hotel: HotelProfile, day_of: Callable[[RedactedDialogue], date]
) -> list[ActionExample]:
    """The reading examples of these calls' booking turns, each call's booking read from the database."""
    stays = booked_stays(db, [d.call_id for d in dialogues if _made_a_booking(d)])
    return confirmed_booking_examples(dialogues, stays, hotel, day_of)


def confirmed_booking_examples(
    dialogues: Sequence[RedactedDialogue],
    stays: Mapping[str, BookedStay],
    hotel: HotelProfile,
    day_of: Callable[[RedactedDialogue], date],
) -> list[ActionExample]:
    """Reading examples from the turns of each call that led to its booking (`stays`: the calls that made one);
    `day_of` is the date the call's words were understood against (its "today")."""
    examples = []
    for dialogue in dialogues:
        if (stay := stays.get(dialogue.call_id)) is not None:
            examples += _labelled_turns(dialogue, stay, hotel, day_of(dialogue))
    return examples


def _made_a_booking(dialogue: RedactedDialogue) -> bool:
    return any(e.tool == "create_booking" and e.ok for t in dialogue.turns for e in t.events)


def _labelled_turns(
    dialogue: RedactedDialogue, stay: BookedStay, hotel: HotelProfile, today: date
) -> list[ActionExample]:
    examples = []
    agent_text, agent_act = None, None
    for position, turn in enumerate(dialogue.turns):
        if turn.role != "caller":
            agent_text, agent_act = turn.text, turn.act
            continue
        if agent_act == "read_back" and _booked_next(dialogue, position):
            action = _confirmation(turn.text)
        else:
            action = _booking_details(agent_text, turn.text, stay, hotel, today)
        if action is not None:
            examples.append(ActionExample(f"{dialogue.call_id}#{turn.id}", agent_text, turn.text, action))
    return examples


def _booked_next(dialogue: RedactedDialogue, position: int) -> bool:
    """Whether the agent's answer to this turn made the booking."""
    answer = next((t for t in dialogue.turns[position + 1 :] if t.role == "agent"), None)
    return answer is not None and any(e.tool == "create_booking" and e.ok for e in answer.events)


def _confirmation(text: str) -> TurnAction | None:
    meaning = read_turn(text)
    if meaning.affirm is not True or meaning.topics or meaning.is_question:
        return None
    return TurnAction(intents=[ActionIntent.CONFIRM])


def _booking_details(
    agent_text: str | None, text: str, stay: BookedStay, hotel: HotelProfile, today: date
) -> TurnAction | None:
    """The turn's details as the booking confirms them; None where the turn is not a clean label."""
    meaning = read_turn(text)
    if meaning.topics or meaning.is_question or meaning.intents - _BOOKING_INTENTS:
        return None
    state = DialogueState(tools=None, hotel=hotel, today=lambda: today, call_id=None)  # type: ignore[arg-type]
    state.pending = asked_slot(agent_text)
    flow = NewBookingFlow(state)
    said, guests = flow.stay_said(text), flow.guests_said(text)
    slots: dict[str, object] = {}
    days = {said.check_in, said.check_out} - {None}
    if said.check_in and said.nights and not said.said_check_out:
        days.discard(said.check_in + timedelta(days=said.nights))  # worked out from the length, not said
    for day in days:
        role = "check_in" if day == stay.check_in else "check_out" if day == stay.check_out else None
        words = _words_naming(day, text, today)
        if role is None or words is None:
            return None
        slots[role] = words
    for slot, value, booked in (("nights", said.nights, stay.nights), ("adults", guests, stay.guests)):
        if value is not None:
            if value != booked:
                return None
            slots[slot] = value
    slots |= {slot: mark for slot, mark in _PLACEHOLDER_SLOTS.items() if mark in text}
    if not slots:
        return None
    intents = [ActionIntent.BOOK] if Intent.BOOK in meaning.intents else []
    return TurnAction(intents=intents, slots=ActionSlots(**slots))


def _words_naming(day: date, text: str, today: date) -> str | None:
    """The shortest run of the caller's words that names `day` on its own (earliest first)."""
    words = [w.strip(",.;:!?") for w in text.split()]
    for length in range(1, MAX_DATE_WORDS + 1):
        for start in range(len(words) - length + 1):
            run = " ".join(words[start : start + length]).strip()
            if not run or not re.search(r"\w", run):
                continue
            found = parse_stay(run, today)
            if (found.check_in or found.check_out) == day:
                return run
    return None
