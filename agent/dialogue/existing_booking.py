"""The existing-booking flow: verify the caller (code and surname), then look up, change or cancel the booking.

Nothing about a booking is said before the lookup by code and surname succeeded, and a change or a
cancellation is only made after the caller said yes to it. `DialogueManager` routes turns here from
`Stage.VERIFY` to `Stage.CONFIRM_CANCEL`, or when a turn at `Stage.OPEN` asks about a booking.
"""

from __future__ import annotations

from datetime import timedelta

from agent.dialogue.spoken import plural, say_date, say_money
from agent.dialogue.state import BookingDraft, DialogueState, ExistingBooking, ReplyPlan, Stage
from agent.dialogue.tools import BookingView, ToolError
from agent.understanding.contacts import find_confirmation_code
from agent.understanding.dates import parse_guest_count, parse_stay
from agent.understanding.intents import Intent, TurnMeaning, find_name

MAX_VERIFY_ATTEMPTS = 3  # wrong code/surname pairs before the caller is pointed to the front desk


class ExistingBookingFlow:
    """The steps for a booking the caller already has, over the call's shared `DialogueState`."""

    def __init__(self, state: DialogueState) -> None:
        self.state = state

    def start(self, text: str, meaning: TurnMeaning) -> ReplyPlan:
        """A turn asked about a booking: remember what for (cancel, change, look up), then verify the caller."""
        action = next(i for i in (Intent.CANCEL, Intent.MODIFY, Intent.LOOKUP) if i in meaning.intents)
        self.state.existing = ExistingBooking(action=action)
        self.state.stage = Stage.VERIFY
        return self.on_verify(text, meaning)

    def on_verify(self, text: str, meaning: TurnMeaning) -> ReplyPlan:
        """Collect the confirmation code and surname; with both, look the booking up."""
        ex = self.state.existing
        code = find_confirmation_code(text)
        if code:
            ex.code = code
        _, last = find_name(text.replace(code or "\0", " "), expecting=self.state.pending == "surname")
        first_only, _ = find_name(text, expecting=self.state.pending == "surname")
        surname = last or (first_only if self.state.pending == "surname" and not code else None)
        if surname:
            ex.last_name = surname
        if not ex.code:
            self.state.pending = "code"
            lead = "I can help with that. " if ex.attempts == 0 else ""
            return ReplyPlan(
                "ask_code",
                [
                    f"{lead}For privacy, I need the confirmation code and the surname on the booking. "
                    "What's the confirmation code?"
                ],
            )
        if not ex.last_name:
            self.state.pending = "surname"
            return ReplyPlan("ask_surname", ["And the surname on the booking?"])
        return self._verify_booking()

    def _verify_booking(self) -> ReplyPlan:
        ex = self.state.existing
        assert ex.code and ex.last_name
        try:
            ex.booking = self.state.run_tool("lookup_booking", ex.code, ex.last_name)
        except ToolError:
            ex.attempts += 1
            ex.code = ex.last_name = None
            if ex.attempts >= MAX_VERIFY_ATTEMPTS:
                self.state.stage = Stage.OPEN
                return ReplyPlan(
                    "verify_failed",
                    [
                        "I still can't find a booking with those details.",
                        "I can transfer you to the front desk if you'd like; just say 'front desk'.",
                    ],
                )
            self.state.pending = "code"
            return ReplyPlan(
                "not_found",
                ["I couldn't find a booking with that code and surname.", "Could you tell me the code again?"],
            )
        return self._act_on_verified()

    def _act_on_verified(self) -> ReplyPlan:
        ex = self.state.existing
        b = ex.booking
        assert b
        details = self._booking_sentence(b)
        if b.status != "confirmed":
            self.state.stage = Stage.OPEN
            return ReplyPlan("lookup", [f"I found it: {details}", "That booking has been cancelled."])
        if ex.action is Intent.CANCEL:
            self.state.stage = Stage.CONFIRM_CANCEL
            self.state.pending = "confirm"
            return ReplyPlan("confirm_cancel", [f"I found it: {details}", "Shall I cancel it?"])
        if ex.action is Intent.MODIFY:
            self.state.stage = Stage.MODIFY
            self.state.pending = "change"
            return ReplyPlan("ask_change", [f"I found it: {details}", "What would you like to change?"])
        self.state.stage = Stage.OPEN
        return ReplyPlan("lookup", [f"I found it: {details}", "Is there anything else I can help with?"])

    def _booking_sentence(self, b: BookingView) -> str:
        room = self.state.hotel.room(b.room_type).name
        nights = (b.check_out - b.check_in).days
        return (
            f"the {room} for {plural(b.guests, 'guest')}, arriving {say_date(b.check_in)} and leaving "
            f"{say_date(b.check_out)}, {plural(nights, 'night')}, total {say_money(b.total)}."
        )

    def on_modify(self, text: str, meaning: TurnMeaning) -> ReplyPlan:
        """The change the caller asked for, quoted and read back for a yes."""
        b = self.state.existing.booking
        assert b
        change = self._proposed_change(text, meaning, b)
        if change is None:
            return ReplyPlan(
                "ask_change", ["I can change the dates, the room type or the number of guests.", "What would you like?"]
            )
        self.state.existing.change = change
        try:
            quote = self.state.run_tool("quote", change.room_type, change.check_in, change.check_out)
        except ToolError as err:
            return ReplyPlan("invalid_change", [str(err), "What would you like to change?"])
        self.state.stage = Stage.CONFIRM_MODIFY
        self.state.pending = "confirm"
        room = self.state.hotel.room(change.room_type or b.room_type).name
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
        stay = parse_stay(text, self.state.today())
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

    def on_confirm_modify(self, text: str, meaning: TurnMeaning) -> ReplyPlan:
        """The answer to the quoted change: make it on a yes; a new change is quoted again."""
        if meaning.affirm is None:
            if self._proposed_change(text, meaning, self.state.existing.booking) is not None:  # type: ignore[arg-type]
                self.state.stage = Stage.MODIFY
                return self.on_modify(text, meaning)
            return ReplyPlan("confirm_again", ["Shall I make that change? Please say yes or no."])
        if not meaning.affirm:
            self.state.stage = Stage.MODIFY
            return ReplyPlan("ask_change", ["All right. What would you like to change instead?"])
        ex, change = self.state.existing, self.state.existing.change
        try:
            updated = self.state.run_tool(
                "modify_booking",
                ex.code or (ex.booking.code if ex.booking else ""),
                ex.booking.last_name if ex.booking else "",
                check_in=change.check_in,
                check_out=change.check_out,
                room_type=change.room_type,
                guests=change.guests,
            )
        except ToolError as err:
            self.state.stage = Stage.MODIFY
            return ReplyPlan("modify_failed", [f"I couldn't make that change: {err}", "Would something else work?"])
        self.state.stage = Stage.OPEN
        self.state.pending = None
        return ReplyPlan(
            "modified",
            [
                f"Done. Your booking {updated.code} is now {self._booking_sentence(updated)}",
                "Is there anything else I can help with?",
            ],
        )

    def on_confirm_cancel(self, text: str, meaning: TurnMeaning) -> ReplyPlan:
        """The answer to "Shall I cancel it?": cancel on a yes, keep the booking on a no."""
        if meaning.affirm is None:
            return ReplyPlan("confirm_again", ["Shall I cancel the booking? Please say yes or no."])
        self.state.stage = Stage.OPEN
        self.state.pending = None
        if not meaning.affirm:
            return ReplyPlan("keep_booking", ["Okay, I've kept your booking as it is. Anything else?"])
        b = self.state.existing.booking
        assert b
        try:
            self.state.run_tool("cancel_booking", b.code, b.last_name)
        except ToolError as err:
            return ReplyPlan("cancel_failed", [f"I couldn't cancel it: {err}"])
        return ReplyPlan(
            "cancelled",
            [f"Your booking {b.code} is cancelled.", "Is there anything else I can help with?"],
        )
