"""The new-booking flow: collect a stay's details slot by slot, offer rooms that fit, read back, book on a yes.

Code decides every step (which slot to ask for next, the room check, the quote), and a booking is only made
after the details were read back and the caller said yes. `DialogueManager` routes turns here while the call
is at `Stage.BOOKING` or `Stage.CONFIRM_BOOKING`, or when a turn at `Stage.OPEN` starts a booking.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import date, timedelta
from decimal import Decimal

from agent.dialogue.spoken import plural, say_date, say_money, say_phone, spell
from agent.dialogue.state import BookingDraft, DialogueState, ReplyPlan, Stage
from agent.dialogue.tools import NoAvailability, RoomAvailability, ToolError
from agent.understanding.action import TurnAction
from agent.understanding.contacts import find_email, find_phone
from agent.understanding.dates import StayDates, parse_guest_count, parse_stay
from agent.understanding.intents import Intent, TurnMeaning, find_name
from agent.understanding.numbers import number_phrases, parse_number, words_to_numbers

HORIZON_DAYS = 731  # a date the model names further out than two years is not a booking date


class NewBookingFlow:
    """The steps of a new booking, over the call's shared `DialogueState` (its draft, pending slot and quote)."""

    def __init__(self, state: DialogueState) -> None:
        self.state = state

    def fill_draft(self, text: str, meaning: TurnMeaning, action: TurnAction | None = None) -> bool:
        """Apply every detail found in the turn to the draft; True if anything changed.

        With the model's `action`, its stay and party size come first wherever they validate, and the rules'
        reading of the text is the second opinion; the slots where the two disagree are kept in
        `state.disagreements` (for the call log, review and training).
        """
        before = replace(self.state.draft)
        self.state.asked = meaning.intents
        if self.state.pending == "room_type" and meaning.affirm and len(self.state.offered) == 1:
            self.state.draft.room_type = self.state.offered[0]  # "yes" to "we have the Harbor Suite"
        stay, guests = self.stay_said(text), self.guests_said(text)
        if action is not None:
            stay, guests = self._with_model_reading(action, text, stay, guests)
        self._apply_stay(stay)
        if guests:
            self.state.draft.guests = guests
        if meaning.room_type:
            self.state.draft.room_type = meaning.room_type
        first, last = find_name(text, expecting=self.state.pending == "name")
        if first or last:
            self.state.draft.first_name = first or self.state.draft.first_name
            self.state.draft.last_name = last or self.state.draft.last_name
        phone = find_phone(text)
        if phone:
            self.state.draft.phone = phone
        email = find_email(text)
        if email:
            self.state.draft.email = email
        if self.state.draft != before:
            self.state.quote = None
            self.state.draft_changed = True
        return self.state.draft != before

    def stay_said(self, text: str) -> StayDates:
        """The rules' reading of the stay in the caller's words, with the agent's pending question in mind."""
        stay = parse_stay(text, self.state.today())
        if stay.nights is None and self.state.pending == "nights" and (n := _bare_count(text)) and 0 < n <= 60:
            stay = StayDates(nights=n)
        if stay.check_in and not stay.check_out and not stay.nights and self.state.pending == "check_out":
            stay = StayDates(check_out=stay.check_in, said_check_out=True)
        return stay

    def guests_said(self, text: str) -> int | None:
        guests = parse_guest_count(text)
        if guests is None and self.state.pending == "guests" and (n := _bare_count(text)) and 0 < n < 50:
            guests = n
        return guests

    def _with_model_reading(
        self, action: TurnAction, text: str, rules: StayDates, rules_guests: int | None
    ) -> tuple[StayDates, int | None]:
        """The model's stay and party size where they validate, the rules' elsewhere; disagreements noted."""
        today = self.state.today()
        slots = action.slots
        model = {
            "check_in": _valid_date(_quoted(slots.check_in, text), today),
            "check_out": _valid_date(_quoted(slots.check_out, text), today),
            "nights": _said_count(slots.nights, text, _ONE_NIGHT, _COUNTS_GUESTS),
        }
        ruled = {"check_in": rules.check_in, "check_out": rules.check_out, "nights": rules.nights}
        first, second = (model, ruled) if self.state.trust == "model" else (ruled, model)
        chosen = {k: first[k] if first[k] is not None else second[k] for k in ruled}
        self.state.disagreements += [k for k in ruled if None not in (model[k], ruled[k]) and model[k] != ruled[k]]
        adults = _said_count(slots.adults, text, _ONE_GUEST, _COUNTS_NIGHTS)
        model_guests = (adults + (slots.children or 0)) if adults else None
        if model_guests and rules_guests and model_guests != rules_guests:
            self.state.disagreements.append("guests")
        guests = (model_guests or rules_guests) if self.state.trust == "model" else (rules_guests or model_guests)
        from_model = model["check_out"] is not None and chosen["check_out"] == model["check_out"]
        said_out = True if from_model else rules.said_check_out
        if chosen["check_in"] and chosen["check_out"] and chosen["check_out"] <= chosen["check_in"]:
            chosen["check_out"] = None  # contradictory: ask rather than guess
        stay = StayDates(chosen["check_in"], chosen["check_out"], chosen["nights"], said_check_out=said_out)
        return stay.resolved(), guests

    def _apply_stay(self, stay: StayDates) -> None:
        if not (stay.check_in or stay.check_out or stay.nights):
            return
        d = self.state.draft
        check_in, check_out, nights = stay.check_in or d.check_in, stay.check_out, stay.nights
        if stay.check_in and not check_out and not nights:
            # Arrival set or moved: keep what the caller said of the end — the departure date if they named
            # one ("until Thursday", "out on the 9th") and it still follows, else the length they asked for.
            if self.state.end_said == "check_out" and d.check_out and d.check_out > stay.check_in:
                check_out = d.check_out
            else:
                nights = self.state.nights_wanted or d.nights
                if not nights and d.check_out and d.check_out > stay.check_in:
                    check_out = d.check_out
        if check_in and nights and not check_out:
            check_out = check_in + timedelta(days=nights)
        if check_out and nights and not check_in:
            check_in = check_out - timedelta(days=nights)
        if not check_out and not stay.check_in:
            check_out = d.check_out
        d.check_in, d.check_out = check_in, check_out
        self.state.nights_wanted = nights if not check_in else None
        if stay.check_out or stay.nights:
            self.state.end_said = "check_out" if stay.said_check_out else "nights"

    def next_step(self) -> ReplyPlan:
        """The first missing detail asked for, the room checked, or (all there) the read-back."""
        d = self.state.draft
        if not d.check_in:
            self.state.pending = "check_in"
            lead = [f"Sure, {plural(self.state.nights_wanted, 'night')}."] if self.state.nights_wanted else []
            return ReplyPlan("ask_check_in", [*lead, "What date would you like to arrive?"])
        if not d.check_out:
            self.state.pending = "nights"
            lead = self._one_night_availability() or f"Arriving {say_date(d.check_in)}."
            return ReplyPlan("ask_nights", [lead, "How many nights will you stay?"])
        if not d.guests:
            self.state.pending = "guests"
            lead = self._quote_asked_for() or [f"{self._stay_phrase()}."]
            return ReplyPlan("ask_guests", [*lead, "How many guests will be staying?"])
        biggest = max(r.capacity for r in self.state.hotel.room_types)
        if d.guests > biggest:
            self.state.pending = "guests"
            d.guests = None
            return ReplyPlan(
                "too_many_guests",
                [f"Our largest room sleeps {biggest}. How many guests will share this room?"],
            )
        if not d.room_type:
            quote = self._quote_asked_for()
            plan = self._offer_rooms()
            plan.sentences[:0] = quote or []
            return plan
        offer = self._check_room(d.room_type)
        if isinstance(offer, ReplyPlan):
            return offer
        if not (d.first_name and d.last_name):
            self.state.pending = "name"
            room = self.state.hotel.room(d.room_type).name
            ask = "May I have your first and last name?" if not d.first_name else "And your last name, please?"
            return ReplyPlan("ask_name", [f"The {room} it is.", ask])
        if not d.phone:
            self.state.pending = "phone"
            return ReplyPlan(
                "ask_phone",
                [f"Thank you, {d.first_name}.", "What's the best phone number for your confirmation and payment link?"],
            )
        return self._read_back()

    def _one_night_availability(self) -> str | None:
        """ "Is the suite available on the 20th?": whether that room is free that night, before the length."""
        d = self.state.draft
        if Intent.AVAILABILITY not in self.state.asked or not d.room_type or not d.check_in:
            return None
        spec = self.state.hotel.room(d.room_type)
        try:
            rooms = self.state.run_tool("check_availability", d.check_in, d.check_in + timedelta(days=1), d.guests)
        except ToolError as err:
            return str(err)
        free = next((r for r in rooms if r.room_type == d.room_type), None)
        if free is None:
            return f"I'm sorry, the {spec.name} is not available on {say_date(d.check_in)}."
        return f"Yes, the {spec.name} is available on {say_date(d.check_in)}, {_rate_phrase(free.nightly_rates)}."

    def _quote_asked_for(self) -> list[str] | None:
        """ "What would 3 nights in the deluxe cost?": the total from the tools, before any name is asked."""
        d = self.state.draft
        if Intent.PRICE not in self.state.asked or not (d.check_in and d.check_out):
            return None
        codes = [d.room_type] if d.room_type else [r.code for r in self.state.hotel.room_types]
        totals = []
        for code in codes:
            try:
                quote = self.state.run_tool("quote", code, d.check_in, d.check_out)
            except ToolError as err:
                return [str(err)]
            totals.append(f"the {self.state.hotel.room(code).name} comes to {say_money(quote.total)}")
        listing = totals[0] if len(totals) == 1 else ", ".join(totals[:-1]) + f", and {totals[-1]}"
        return [f"For {self._stay_phrase()}, {listing}, including tax."]

    def _reset_dates(self, reason: str) -> ReplyPlan:
        self.state.draft.check_in = self.state.draft.check_out = None
        self.state.pending = "check_in"
        return ReplyPlan("invalid_dates", [reason, "What date would you like to arrive?"])

    def _stay_phrase(self) -> str:
        d = self.state.draft
        assert d.check_in and d.check_out and d.nights
        return f"{plural(d.nights, 'night')}, from {say_date(d.check_in)} to {say_date(d.check_out)}"

    def _availability(self) -> list[RoomAvailability] | ReplyPlan:
        d = self.state.draft
        assert d.check_in and d.check_out
        try:
            rooms = self.state.run_tool("check_availability", d.check_in, d.check_out, d.guests)
        except ToolError as err:
            return self._reset_dates(str(err))
        return rooms

    def _offer_rooms(self) -> ReplyPlan:
        rooms = self._availability()
        if isinstance(rooms, ReplyPlan):
            return rooms
        if not rooms:
            return self._no_rooms()
        self.state.pending = "room_type"
        self.state.offered = tuple(r.room_type for r in rooms)
        options = [f"the {r.name} {_rate_phrase(r.nightly_rates)}" for r in rooms]
        listing = options[0] if len(options) == 1 else ", ".join(options[:-1]) + f", or {options[-1]}"
        guests = plural(self.state.draft.guests or 1, "guest")
        return ReplyPlan(
            "offer_rooms",
            [f"For {guests}, {self._stay_phrase()}, we have {listing}.", "Which would you like?"],
        )

    def _no_rooms(self) -> ReplyPlan:
        stay = self._stay_phrase()
        self.state.draft.check_in = self.state.draft.check_out = None
        self.state.pending = "check_in"
        return ReplyPlan(
            "no_availability",
            [f"I'm sorry, we have no rooms left that fit for {stay}.", "Would another arrival date work?"],
        )

    def _check_room(self, room_type: str) -> ReplyPlan | None:
        rooms = self._availability()
        if isinstance(rooms, ReplyPlan):
            return rooms
        if any(r.room_type == room_type for r in rooms):
            return None
        spec = self.state.hotel.room(room_type)
        self.state.draft.room_type = None
        reason = (
            f"The {spec.name} sleeps up to {spec.capacity}."
            if (self.state.draft.guests or 0) > spec.capacity
            else f"I'm sorry, the {spec.name} is sold out for those dates."
        )
        if not rooms:
            return self._no_rooms()
        plan = self._offer_rooms()
        plan.sentences.insert(0, reason)
        return plan

    def _read_back(self) -> ReplyPlan:
        d = self.state.draft
        assert d.room_type and d.check_in and d.check_out and d.guests
        self.state.quote = self.state.run_tool("quote", d.room_type, d.check_in, d.check_out)
        self.state.stage = Stage.CONFIRM_BOOKING
        self.state.pending = "confirm"
        q = self.state.quote
        room = self.state.hotel.room(d.room_type).name
        return ReplyPlan(
            "read_back",
            [
                f"Let me read that back: the {room} for {plural(d.guests, 'guest')}, arriving {say_date(d.check_in)} "
                f"and leaving {say_date(d.check_out)}, {plural(q.nights, 'night')}.",
                f"The total is {say_money(q.total)}, including {say_money(q.taxes)} in taxes.",
                f"The booking is under {d.first_name} {d.last_name}, phone {say_phone(d.phone or '')}.",
                "Shall I book it?",
            ],
        )

    def on_confirm(self, text: str, meaning: TurnMeaning) -> ReplyPlan:
        """The answer to the read-back: book on a yes; on a no or a new detail, back to collecting."""
        if self.fill_draft(text, meaning):
            self.state.stage = Stage.BOOKING
            return self.next_step()
        if meaning.affirm is None:
            return ReplyPlan("confirm_again", ["Shall I go ahead and book it? Please say yes or no."])
        if not meaning.affirm:
            self.state.stage = Stage.BOOKING
            self.state.pending = None
            return ReplyPlan("change_what", ["No problem. What would you like to change?"])
        return self._book()

    def _book(self) -> ReplyPlan:
        d = self.state.draft
        assert d.room_type and d.check_in and d.check_out and d.guests and d.first_name and d.last_name
        try:
            booking = self.state.run_tool(
                "create_booking",
                room_type=d.room_type,
                check_in=d.check_in,
                check_out=d.check_out,
                guests=d.guests,
                first_name=d.first_name,
                last_name=d.last_name,
                phone=d.phone,
                email=d.email,
                call_id=self.state.call_id,
            )
        except NoAvailability:
            self.state.stage = Stage.BOOKING
            self.state.draft.room_type = None
            plan = self._offer_rooms()
            plan.sentences.insert(0, "I'm sorry, that room was just taken.")
            return plan
        except ToolError as err:
            self.state.stage = Stage.BOOKING
            return ReplyPlan("booking_failed", [f"I couldn't complete the booking: {err}", "Shall we try again?"])
        self.state.booked = booking
        self.state.stage = Stage.OPEN
        self.state.pending = None
        self.state.draft = BookingDraft()
        return ReplyPlan(
            "booked",
            [
                f"You're booked. Your confirmation code is {booking.code}, that's {spell(booking.code)}.",
                f"We'll text a secure payment link to {say_phone(booking.phone or '')}; "
                "we never take card numbers over the phone.",
                "Is there anything else I can help with?",
            ],
        )


def _rate_phrase(rates: tuple[Decimal, ...]) -> str:
    lowest = say_money(min(rates))
    return f"at {lowest} a night" if len(set(rates)) == 1 else f"from {lowest} a night"


def _bare_count(text: str) -> int | None:
    """The one number in a short answer to "how many?" ("Three.", "just 2 please"); None when the turn says
    more (a date, rooms, a second number), so "the 7th, for one person" is not seven guests."""
    if len(text.split()) > 5 or re.search(r"\d(?:st|nd|rd|th)\b|\brooms?\b", words_to_numbers(text.lower())):
        return None
    return parse_number(text)


_ONE_NIGHT = re.compile(r"\b(?:a|one|single) night\b|\btonight\b|\bovernight\b", re.I)
_ONE_GUEST = re.compile(r"\b(?:just|only) (?:me|myself|one)\b|\balone\b|\bmyself\b|\bsolo\b|\bsingle\b", re.I)
# A number followed by one of these counts rooms, stars, money or a time, never nights or guests.
_COUNTS_SOMETHING_ELSE = re.compile(
    r":\d\d|\s*(?:-\s*)?(?:rooms?|star|stars|dollars?|bucks|euros?|pounds?|percent|%|o'?clock|am\b|pm\b|a\.m|"
    r"p\.m|beds?|bedrooms?|bathrooms?|floors?|miles?|minutes?|hours?)\b",
    re.I,
)
_COUNTS_NIGHTS = re.compile(r"\s*(?:-\s*)?(?:more |whole |full )?(?:nights?|days?|weeks?)\b", re.I)
_COUNTS_GUESTS = re.compile(
    r"\s*(?:more )?(?:people|persons?|guests?|adults?|kids?|children|of us|in (?:my|our) (?:party|group))\b", re.I
)
_TWO = re.compile(r"\b(?:couple|pair|both of us|two of us|(?:wife|husband|partner|friend) and (?:I|me))\b", re.I)


def _quoted(said: str | None, text: str) -> str | None:
    """The model's date words, kept only if the caller said them: every word of them is in the turn."""
    if not said:
        return None
    words = set(re.findall(r"[a-z0-9]+", text.lower()))
    return said if set(re.findall(r"[a-z0-9]+", said.lower())) <= words else None


def _said_count(value: int | None, text: str, one: re.Pattern[str], other_unit: re.Pattern[str]) -> int | None:
    """A count the model read, kept only if the caller said that number (digits or words, "a couple", "just
    me") and not as a count of something else — a date ("the 9th"), rooms, stars, money, a time, or the other
    count (`other_unit`: "one night" vouches for no party of one): a reader must not invent a length of stay or
    a party size the turn does not carry."""
    if value is None:
        return None
    said = {
        phrase.value
        for phrase in number_phrases(text)
        if not phrase.ordinal
        and not _COUNTS_SOMETHING_ELSE.match(text, phrase.end)
        and not other_unit.match(text, phrase.end)
    }
    for count, pattern in ((1, one), (2, _TWO)):  # "just me", "a couple" — but "just one night" is no party
        if value == count and any(not other_unit.match(text, m.end()) for m in pattern.finditer(text)):
            said.add(value)
    return value if value in said else None


def _valid_date(said: str | None, today: date) -> date | None:
    """A date the model quoted from the caller, resolved by the code against today; None unless it is a real
    date from today on (the model proposes the words, the code decides what day they name)."""
    if not said:
        return None
    stay = parse_stay(said, today)
    day = stay.check_in or stay.check_out
    return day if day and today <= day <= today + timedelta(days=HORIZON_DAYS) else None
