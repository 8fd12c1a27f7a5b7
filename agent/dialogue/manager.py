"""The dialogue manager: slots, booking stage, tool calls and the reply plan for each caller turn.

Code, not the language model, decides here: which slot to ask for next, when to call a tool,
the arithmetic, and when a booking is made (only after the details were read back and the
caller said yes). The result of a turn is a `ReplyPlan` — the exact, correct reply as
sentences — which `agent.reply.wording` may phrase more naturally with the LLM.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from enum import Enum
from typing import Any

from agent.dialogue import policy
from agent.dialogue.spoken import plural, say_date, say_money, say_phone, spell
from agent.dialogue.tools import BookingView, HotelTools, NoAvailability, Quote, RoomAvailability, ToolError
from agent.understanding.cards import contains_card_like_number, mask_card_numbers
from agent.understanding.contacts import find_confirmation_code, find_email, find_phone
from agent.understanding.dates import StayDates, parse_guest_count, parse_stay
from agent.understanding.intents import Intent, TurnMeaning, find_name, read_turn
from agent.understanding.numbers import parse_number
from innkeeper.core.hotel import HotelProfile

MAX_VERIFY_ATTEMPTS = 3


class Stage(Enum):
    OPEN = "open"  # no task yet, or the last one finished
    BOOKING = "booking"  # collecting the details of a new booking
    CONFIRM_BOOKING = "confirm_booking"  # details read back, waiting for yes/no
    VERIFY = "verify"  # collecting code + surname for an existing booking
    MODIFY = "modify"  # verified; waiting for what to change
    CONFIRM_MODIFY = "confirm_modify"
    CONFIRM_CANCEL = "confirm_cancel"
    ENDED = "ended"


@dataclass
class BookingDraft:
    check_in: date | None = None
    check_out: date | None = None
    guests: int | None = None
    room_type: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    email: str | None = None

    @property
    def nights(self) -> int | None:
        if self.check_in and self.check_out:
            return (self.check_out - self.check_in).days
        return None


@dataclass
class ExistingBooking:
    """A caller's existing reservation: what they must prove, and what they asked to do with it."""

    action: Intent = Intent.LOOKUP
    code: str | None = None
    last_name: str | None = None
    attempts: int = 0
    booking: BookingView | None = None
    change: BookingDraft = field(default_factory=BookingDraft)


@dataclass
class ReplyPlan:
    """The agent's reply as code decided it: exact sentences plus what happened this turn."""

    act: str
    sentences: list[str]
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    transfer: bool = False
    end_call: bool = False
    masked_cards: int = 0

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


_QUESTION_ACTS = frozenset({"clarify", "change_what", "confirm_again", "confirm_cancel", "offer_rooms"})
_ANOTHER_BOOKING = re.compile(r"\b(another|second|one more|new|also|as well|too)\b", re.I)


class DialogueManager:
    """One conversation's state machine. Synchronous: the brain runs it off the event loop."""

    def __init__(self, *, tools: HotelTools, hotel: HotelProfile, today: Callable[[], date], call_id: str | None):
        self.tools = tools
        self.hotel = hotel
        self.today = today
        self.call_id = call_id
        self.stage = Stage.OPEN
        self.draft = BookingDraft()
        self.existing = ExistingBooking()
        self.pending: str | None = None  # the slot the last reply asked for
        self.quote: Quote | None = None
        self.nights_wanted: int | None = None  # "three nights" said before any arrival date
        self.booked: BookingView | None = None
        self._tool_calls: list[dict[str, Any]] = []
        self._draft_changed = False  # this turn added or changed a booking detail
        self._last_reply = ""
        self._repeats = 0  # how many times in a row the same reply was planned

    # ------------------------------------------------------------------ entry point
    def handle(self, text: str) -> ReplyPlan:
        """Decide the reply to one caller turn (already cleaned and card-masked by the caller)."""
        self._tool_calls = []
        self._draft_changed = False
        plan = self._vary_repeat(self._route(text))
        plan.tool_calls = self._tool_calls
        return plan

    def _vary_repeat(self, plan: ReplyPlan) -> ReplyPlan:
        """The same reply twice in a row sounds like a broken machine: say why the question comes again."""
        repeated = plan.text == self._last_reply
        self._repeats = self._repeats + 1 if repeated else 0
        self._last_reply = plan.text
        if not repeated or not (plan.act.startswith("ask") or plan.act in _QUESTION_ACTS):
            return plan  # an answer, a refusal or a warning asked for twice is simply given twice
        lead = "Got it." if self._draft_changed else "Sorry, I didn't catch that."
        tail = ["You can also say 'front desk' to speak with a colleague."] if self._repeats >= 2 else []
        return replace(plan, sentences=[lead, *plan.sentences, *tail])

    def _route(self, text: str) -> ReplyPlan:
        if self.stage is Stage.ENDED:
            return ReplyPlan("ended", ["This call has ended. Please call again if you need anything."], end_call=True)
        if policy.is_harmful(text):
            return self.with_reprompt("decline_harmful", ["I'm sorry, I can't help with that."])
        if policy.wants_human(text):
            self.stage = Stage.ENDED
            return ReplyPlan(
                "transfer",
                ["Of course. I'm transferring you to a member of our front desk team now; please hold."],
                transfer=True,
                end_call=True,
            )
        if policy.is_off_topic(text):
            return self.with_reprompt(
                "decline_off_topic",
                ["I'm sorry, I can only help with the hotel: rooms, reservations and questions about your stay."],
            )
        meaning = read_turn(text)
        answers = []
        if meaning.topics and (meaning.is_question or not self.pending) and not self._is_slot_answer(meaning):
            answers = self._answer_topics(meaning.topics)
        plan = self._advance(text, meaning)
        if answers and plan.act in {"clarify", "greet"}:
            return ReplyPlan("answer_question", [*answers, "Is there anything else I can help with?"])
        plan.sentences[:0] = answers
        return plan

    # ------------------------------------------------------------------ stage logic
    def _advance(self, text: str, meaning: TurnMeaning) -> ReplyPlan:
        handlers = {
            Stage.CONFIRM_BOOKING: self._on_confirm_booking,
            Stage.VERIFY: self._on_verify,
            Stage.MODIFY: self._on_modify,
            Stage.CONFIRM_MODIFY: self._on_confirm_modify,
            Stage.CONFIRM_CANCEL: self._on_confirm_cancel,
        }
        if self.stage in handlers:
            return handlers[self.stage](text, meaning)
        return self._on_open_or_booking(text, meaning)

    def _on_open_or_booking(self, text: str, meaning: TurnMeaning) -> ReplyPlan:
        existing = meaning.intents & {Intent.CANCEL, Intent.MODIFY, Intent.LOOKUP}
        if existing and self.stage is Stage.OPEN:
            return self._start_existing(text, meaning)
        changed = self._fill_draft(text, meaning)
        if self._echoes_the_booking(text, meaning, changed):
            code = self.booked.code  # type: ignore[union-attr]
            return ReplyPlan(
                "already_booked",
                [f"You're all set: your confirmation code is {code}, that's {spell(code)}.",
                 "Is there anything else I can help with?"],
            )  # fmt: skip
        if self.stage is Stage.BOOKING or changed or meaning.intents & {Intent.BOOK, Intent.AVAILABILITY}:
            self.stage = Stage.BOOKING
            return self._next_booking_step()
        if Intent.PRICE in meaning.intents:
            return self.with_reprompt("rates", [self._rate_card()])
        if Intent.GOODBYE in meaning.intents or (Intent.THANKS in meaning.intents and self.booked):
            self.stage = Stage.ENDED
            return ReplyPlan("goodbye", [f"Thank you for calling {self.hotel.name}. Goodbye!"], end_call=True)
        if Intent.GREETING in meaning.intents:
            return ReplyPlan("greet", [f"Hello, thank you for calling {self.hotel.name}. How can I help you today?"])
        return ReplyPlan(
            "clarify",
            [
                "I can book a room, help with an existing reservation, or answer questions about the hotel. "
                "What would you like to do?"
            ],
        )

    def _echoes_the_booking(self, text: str, meaning: TurnMeaning, changed: bool) -> bool:
        """ "Please book it" just after the booking was made: the tail of the caller's "yes", not a new stay."""
        return (
            self.booked is not None
            and self.stage is Stage.OPEN
            and not changed
            and Intent.BOOK in meaning.intents
            and not meaning.intents & {Intent.AVAILABILITY, Intent.PRICE}
            and not _ANOTHER_BOOKING.search(text)
        )

    # ------------------------------------------------------------------ new booking
    def _fill_draft(self, text: str, meaning: TurnMeaning) -> bool:
        """Apply every detail found in the turn to the draft; True if anything changed."""
        before = replace(self.draft)
        self._apply_dates(text)
        self._apply_guests(text)
        if meaning.room_type:
            self.draft.room_type = meaning.room_type
        first, last = find_name(text, expecting=self.pending == "name")
        if first or last:
            self.draft.first_name = first or self.draft.first_name
            self.draft.last_name = last or self.draft.last_name
        phone = find_phone(text)
        if phone:
            self.draft.phone = phone
        email = find_email(text)
        if email:
            self.draft.email = email
        if self.draft != before:
            self.quote = None
            self._draft_changed = True
        return self.draft != before

    def _apply_dates(self, text: str) -> None:
        stay = parse_stay(text, self.today())
        if stay.nights is None and self.pending == "nights" and (n := parse_number(text)) and 0 < n <= 60:
            stay = StayDates(nights=n)
        if stay.check_in and not stay.check_out and not stay.nights and self.pending == "check_out":
            stay = StayDates(check_out=stay.check_in)
        if not (stay.check_in or stay.check_out or stay.nights):
            return
        d = self.draft
        check_in, check_out, nights = stay.check_in or d.check_in, stay.check_out, stay.nights
        if stay.check_in and not check_out and not nights:
            nights = self.nights_wanted or d.nights  # arrival set or moved: keep the length already asked for
        if check_in and nights and not check_out:
            check_out = check_in + timedelta(days=nights)
        if check_out and nights and not check_in:
            check_in = check_out - timedelta(days=nights)
        if not check_out and not stay.check_in:
            check_out = d.check_out
        d.check_in, d.check_out = check_in, check_out
        self.nights_wanted = nights if not check_in else None

    def _apply_guests(self, text: str) -> None:
        guests = parse_guest_count(text)
        if guests is None and self.pending == "guests" and (n := parse_number(text)) and 0 < n < 50:
            guests = n
        if guests:
            self.draft.guests = guests

    def _next_booking_step(self) -> ReplyPlan:
        d = self.draft
        if not d.check_in:
            self.pending = "check_in"
            lead = [f"Sure, {plural(self.nights_wanted, 'night')}."] if self.nights_wanted else []
            return ReplyPlan("ask_check_in", [*lead, "What date would you like to arrive?"])
        if not d.check_out:
            self.pending = "nights"
            return ReplyPlan("ask_nights", [f"Arriving {say_date(d.check_in)}. How many nights will you stay?"])
        if not d.guests:
            self.pending = "guests"
            return ReplyPlan("ask_guests", [f"{self._stay_phrase()}. How many guests will be staying?"])
        biggest = max(r.capacity for r in self.hotel.room_types)
        if d.guests > biggest:
            self.pending = "guests"
            d.guests = None
            return ReplyPlan(
                "too_many_guests",
                [f"Our largest room sleeps {biggest}. How many guests will share this room?"],
            )
        if not d.room_type:
            return self._offer_rooms()
        offer = self._check_room(d.room_type)
        if isinstance(offer, ReplyPlan):
            return offer
        if not (d.first_name and d.last_name):
            self.pending = "name"
            room = self.hotel.room(d.room_type).name
            ask = "May I have your first and last name?" if not d.first_name else "And your last name, please?"
            return ReplyPlan("ask_name", [f"The {room} it is.", ask])
        if not d.phone:
            self.pending = "phone"
            return ReplyPlan(
                "ask_phone",
                [f"Thank you, {d.first_name}.", "What's the best phone number for your confirmation and payment link?"],
            )
        return self._read_back()

    def _reset_dates(self, reason: str) -> ReplyPlan:
        self.draft.check_in = self.draft.check_out = None
        self.pending = "check_in"
        return ReplyPlan("invalid_dates", [reason, "What date would you like to arrive?"])

    def _stay_phrase(self) -> str:
        d = self.draft
        assert d.check_in and d.check_out and d.nights
        return f"{plural(d.nights, 'night')}, from {say_date(d.check_in)} to {say_date(d.check_out)}"

    def _availability(self) -> list[RoomAvailability] | ReplyPlan:
        d = self.draft
        assert d.check_in and d.check_out
        try:
            rooms = self._call("check_availability", self.tools.check_availability, d.check_in, d.check_out, d.guests)
        except ToolError as err:
            return self._reset_dates(str(err))
        return rooms

    def _offer_rooms(self) -> ReplyPlan:
        rooms = self._availability()
        if isinstance(rooms, ReplyPlan):
            return rooms
        if not rooms:
            return self._no_rooms()
        self.pending = "room_type"
        options = [f"the {r.name} {_rate_phrase(r.nightly_rates)}" for r in rooms]
        listing = options[0] if len(options) == 1 else ", ".join(options[:-1]) + f", or {options[-1]}"
        guests = plural(self.draft.guests or 1, "guest")
        return ReplyPlan(
            "offer_rooms",
            [f"For {guests}, {self._stay_phrase()}, we have {listing}.", "Which would you like?"],
        )

    def _no_rooms(self) -> ReplyPlan:
        stay = self._stay_phrase()
        self.draft.check_in = self.draft.check_out = None
        self.pending = "check_in"
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
        spec = self.hotel.room(room_type)
        self.draft.room_type = None
        reason = (
            f"The {spec.name} sleeps up to {spec.capacity}."
            if (self.draft.guests or 0) > spec.capacity
            else f"I'm sorry, the {spec.name} is sold out for those dates."
        )
        if not rooms:
            return self._no_rooms()
        plan = self._offer_rooms()
        plan.sentences.insert(0, reason)
        return plan

    def _read_back(self) -> ReplyPlan:
        d = self.draft
        assert d.room_type and d.check_in and d.check_out and d.guests
        self.quote = self._call("quote", self.tools.quote, d.room_type, d.check_in, d.check_out)
        self.stage = Stage.CONFIRM_BOOKING
        self.pending = "confirm"
        q = self.quote
        room = self.hotel.room(d.room_type).name
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

    def _on_confirm_booking(self, text: str, meaning: TurnMeaning) -> ReplyPlan:
        if self._fill_draft(text, meaning):
            self.stage = Stage.BOOKING
            return self._next_booking_step()
        if meaning.affirm is None:
            return ReplyPlan("confirm_again", ["Shall I go ahead and book it? Please say yes or no."])
        if not meaning.affirm:
            self.stage = Stage.BOOKING
            self.pending = None
            return ReplyPlan("change_what", ["No problem. What would you like to change?"])
        return self._book()

    def _book(self) -> ReplyPlan:
        d = self.draft
        assert d.room_type and d.check_in and d.check_out and d.guests and d.first_name and d.last_name
        try:
            booking = self._call(
                "create_booking",
                self.tools.create_booking,
                room_type=d.room_type,
                check_in=d.check_in,
                check_out=d.check_out,
                guests=d.guests,
                first_name=d.first_name,
                last_name=d.last_name,
                phone=d.phone,
                email=d.email,
                call_id=self.call_id,
            )
        except NoAvailability:
            self.stage = Stage.BOOKING
            self.draft.room_type = None
            plan = self._offer_rooms()
            plan.sentences.insert(0, "I'm sorry, that room was just taken.")
            return plan
        except ToolError as err:
            self.stage = Stage.BOOKING
            return ReplyPlan("booking_failed", [f"I couldn't complete the booking: {err}", "Shall we try again?"])
        self.booked = booking
        self.stage = Stage.OPEN
        self.pending = None
        self.draft = BookingDraft()
        return ReplyPlan(
            "booked",
            [
                f"You're booked. Your confirmation code is {booking.code}, that's {spell(booking.code)}.",
                f"We'll text a secure payment link to {say_phone(booking.phone or '')}; "
                "we never take card numbers over the phone.",
                "Is there anything else I can help with?",
            ],
        )

    # ------------------------------------------------------------------ existing bookings
    def _start_existing(self, text: str, meaning: TurnMeaning) -> ReplyPlan:
        action = next(i for i in (Intent.CANCEL, Intent.MODIFY, Intent.LOOKUP) if i in meaning.intents)
        self.existing = ExistingBooking(action=action)
        self.stage = Stage.VERIFY
        return self._on_verify(text, meaning)

    def _on_verify(self, text: str, meaning: TurnMeaning) -> ReplyPlan:
        ex = self.existing
        code = find_confirmation_code(text)
        if code:
            ex.code = code
        _, last = find_name(text.replace(code or "\0", " "), expecting=self.pending == "surname")
        first_only, _ = find_name(text, expecting=self.pending == "surname")
        surname = last or (first_only if self.pending == "surname" and not code else None)
        if surname:
            ex.last_name = surname
        if not ex.code:
            self.pending = "code"
            lead = "I can help with that. " if ex.attempts == 0 else ""
            return ReplyPlan(
                "ask_code",
                [
                    f"{lead}For privacy, I need the confirmation code and the surname on the booking. "
                    "What's the confirmation code?"
                ],
            )
        if not ex.last_name:
            self.pending = "surname"
            return ReplyPlan("ask_surname", ["And the surname on the booking?"])
        return self._verify_booking()

    def _verify_booking(self) -> ReplyPlan:
        ex = self.existing
        assert ex.code and ex.last_name
        try:
            ex.booking = self._call("lookup_booking", self.tools.lookup_booking, ex.code, ex.last_name)
        except ToolError:
            ex.attempts += 1
            ex.code = ex.last_name = None
            if ex.attempts >= MAX_VERIFY_ATTEMPTS:
                self.stage = Stage.OPEN
                return ReplyPlan(
                    "verify_failed",
                    [
                        "I still can't find a booking with those details.",
                        "I can transfer you to the front desk if you'd like; just say 'front desk'.",
                    ],
                )
            self.pending = "code"
            return ReplyPlan(
                "not_found",
                ["I couldn't find a booking with that code and surname.", "Could you tell me the code again?"],
            )
        return self._act_on_verified()

    def _act_on_verified(self) -> ReplyPlan:
        ex = self.existing
        b = ex.booking
        assert b
        details = self._booking_sentence(b)
        if b.status != "confirmed":
            self.stage = Stage.OPEN
            return ReplyPlan("lookup", [f"I found it: {details}", "That booking has been cancelled."])
        if ex.action is Intent.CANCEL:
            self.stage = Stage.CONFIRM_CANCEL
            self.pending = "confirm"
            return ReplyPlan("confirm_cancel", [f"I found it: {details}", "Shall I cancel it?"])
        if ex.action is Intent.MODIFY:
            self.stage = Stage.MODIFY
            self.pending = "change"
            return ReplyPlan("ask_change", [f"I found it: {details}", "What would you like to change?"])
        self.stage = Stage.OPEN
        return ReplyPlan("lookup", [f"I found it: {details}", "Is there anything else I can help with?"])

    def _booking_sentence(self, b: BookingView) -> str:
        room = self.hotel.room(b.room_type).name
        nights = (b.check_out - b.check_in).days
        return (
            f"the {room} for {plural(b.guests, 'guest')}, arriving {say_date(b.check_in)} and leaving "
            f"{say_date(b.check_out)}, {plural(nights, 'night')}, total {say_money(b.total)}."
        )

    def _on_modify(self, text: str, meaning: TurnMeaning) -> ReplyPlan:
        b = self.existing.booking
        assert b
        change = self._proposed_change(text, meaning, b)
        if change is None:
            return ReplyPlan(
                "ask_change", ["I can change the dates, the room type or the number of guests.", "What would you like?"]
            )
        self.existing.change = change
        try:
            quote = self._call("quote", self.tools.quote, change.room_type, change.check_in, change.check_out)
        except ToolError as err:
            return ReplyPlan("invalid_change", [str(err), "What would you like to change?"])
        self.stage = Stage.CONFIRM_MODIFY
        self.pending = "confirm"
        room = self.hotel.room(change.room_type or b.room_type).name
        return ReplyPlan(
            "confirm_modify",
            [
                f"So the new booking would be the {room} for {plural(change.guests or b.guests, 'guest')}, arriving "
                f"{say_date(quote.check_in)} and leaving {say_date(quote.check_out)}, {plural(quote.nights, 'night')}, "
                f"total {say_money(quote.total)}.",
                "Shall I make that change?",
            ],
        )

    def _proposed_change(self, text: str, meaning: TurnMeaning, b: BookingView) -> BookingDraft | None:
        stay = parse_stay(text, self.today())
        check_in, check_out = stay.check_in or b.check_in, stay.check_out
        if stay.nights and not check_out:
            check_out = check_in + timedelta(days=stay.nights)
        if stay.check_in and not check_out:
            check_out = check_in + (b.check_out - b.check_in)
        check_out = check_out or b.check_out
        guests = parse_guest_count(text) or b.guests
        room = meaning.room_type or b.room_type
        proposed = BookingDraft(check_in=check_in, check_out=check_out, guests=guests, room_type=room)
        unchanged = (check_in, check_out, guests, room) == (b.check_in, b.check_out, b.guests, b.room_type)
        return None if unchanged else proposed

    def _on_confirm_modify(self, text: str, meaning: TurnMeaning) -> ReplyPlan:
        if meaning.affirm is None:
            if self._proposed_change(text, meaning, self.existing.booking) is not None:  # type: ignore[arg-type]
                self.stage = Stage.MODIFY
                return self._on_modify(text, meaning)
            return ReplyPlan("confirm_again", ["Shall I make that change? Please say yes or no."])
        if not meaning.affirm:
            self.stage = Stage.MODIFY
            return ReplyPlan("ask_change", ["All right. What would you like to change instead?"])
        ex, change = self.existing, self.existing.change
        try:
            updated = self._call(
                "modify_booking",
                self.tools.modify_booking,
                ex.code or (ex.booking.code if ex.booking else ""),
                ex.booking.last_name if ex.booking else "",
                check_in=change.check_in,
                check_out=change.check_out,
                room_type=change.room_type,
                guests=change.guests,
            )
        except ToolError as err:
            self.stage = Stage.MODIFY
            return ReplyPlan("modify_failed", [f"I couldn't make that change: {err}", "Would something else work?"])
        self.stage = Stage.OPEN
        self.pending = None
        return ReplyPlan(
            "modified",
            [
                f"Done. Your booking {updated.code} is now {self._booking_sentence(updated)}",
                "Is there anything else I can help with?",
            ],
        )

    def _on_confirm_cancel(self, text: str, meaning: TurnMeaning) -> ReplyPlan:
        if meaning.affirm is None:
            return ReplyPlan("confirm_again", ["Shall I cancel the booking? Please say yes or no."])
        self.stage = Stage.OPEN
        self.pending = None
        if not meaning.affirm:
            return ReplyPlan("keep_booking", ["Okay, I've kept your booking as it is. Anything else?"])
        b = self.existing.booking
        assert b
        try:
            self._call("cancel_booking", self.tools.cancel_booking, b.code, b.last_name)
        except ToolError as err:
            return ReplyPlan("cancel_failed", [f"I couldn't cancel it: {err}"])
        return ReplyPlan(
            "cancelled",
            [f"Your booking {b.code} is cancelled.", "Is there anything else I can help with?"],
        )

    # ------------------------------------------------------------------ questions and re-prompts
    def _is_slot_answer(self, meaning: TurnMeaning) -> bool:
        """A turn that answers the pending question is not a topic question, even if it names a topic."""
        return self.pending == "room_type" and meaning.room_type is not None and not meaning.is_question

    def _answer_topics(self, topics: tuple[str, ...]) -> list[str]:
        answers = []
        for topic in topics:
            if topic == "check_times":
                hotel = self.hotel
                answers.append(f"Check-in is from {hotel.check_in_time} and check-out is by {hotel.check_out_time}.")
            elif topic == "address":
                answers.append(f"We're at {self.hotel.address}.")
            else:
                answer = self.hotel.facts.get(topic) or self.hotel.policies.get(topic)
                if answer:
                    answers.append(answer)
        return answers or ["I'm not sure about that one; the front desk can tell you more."]

    def _rate_card(self) -> str:
        rates = [f"the {r.name} from {say_money(r.nightly_rate)}" for r in self.hotel.room_types]
        return "Nightly rates before tax are " + ", ".join(rates[:-1]) + f", and {rates[-1]}."

    def with_reprompt(self, act: str, sentences: list[str]) -> ReplyPlan:
        """Answer something off the main path, then bring the caller back to where they were."""
        reprompt = {
            "check_in": "Now, what date would you like to arrive?",
            "nights": "How many nights will you stay?",
            "guests": "How many guests will be staying?",
            "room_type": "Which room would you like?",
            "name": "May I have your first and last name?",
            "phone": "What's the best phone number for your confirmation?",
            "confirm": "Shall I go ahead?",
            "code": "What's your confirmation code?",
            "surname": "And the surname on the booking?",
            "change": "What would you like to change?",
        }.get(self.pending or "", "Is there anything else I can help with?")
        return ReplyPlan(act, [*sentences, reprompt])

    def _call(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a tool and record it (arguments and outcome) for the turn log."""
        record: dict[str, Any] = {"tool": name, "args": _jsonable([*args]), "kwargs": _jsonable(kwargs)}
        self._tool_calls.append(record)
        try:
            result = fn(*args, **kwargs)
        except ToolError as err:
            record["error"] = f"{type(err).__name__}: {err}"
            raise
        record["result"] = _jsonable(result)
        return result


def _rate_phrase(rates: tuple) -> str:
    lowest = say_money(min(rates))
    return f"at {lowest} a night" if len(set(rates)) == 1 else f"from {lowest} a night"


def mask_turn(text: str) -> tuple[str, int, bool]:
    """Card numbers out of a caller turn before anything stores or reasons about it.

    Returns (masked text, cards masked, whether something card-like remained).
    """
    masked, count = mask_card_numbers(text)
    return masked, count, contains_card_like_number(masked)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {k: _jsonable(getattr(value, k)) for k in value.__dataclass_fields__}
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
