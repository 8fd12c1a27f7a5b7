"""The stay a dialogue has settled on, turn by turn, as the new-booking flow understands it — without tools,
replies or bookings: what understanding evaluations run on annotated dialogues.

The same `NewBookingFlow.fill_draft` the live agent applies to each caller turn, over a `DialogueState`
whose pending slot comes from the other side's last words (`asked_slot`), so "three" after "How many
nights?" is three nights here as it is on a call.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from agent.dialogue.new_booking import NewBookingFlow
from agent.dialogue.read_ahead import Reader
from agent.dialogue.state import DialogueState
from agent.understanding.intents import asked_slot, read_turn
from innkeeper.core.hotel import HotelProfile


class StayTracker:
    """One dialogue's stay: check-in, check-out, nights and party size after every caller turn.

    With a `reader` (the model's reading of a turn, `agent.reply.understand.ModelReader.read`) its action
    comes first and the rules are the second opinion, as on a call; `disagreements` counts where they differ.
    """

    def __init__(self, hotel: HotelProfile, today: date, reader: Reader | None = None, trust: str = "model") -> None:
        # No tools: filling the draft never calls one (availability and quotes come later in the flow).
        self.state = DialogueState(tools=None, hotel=hotel, today=lambda: today, call_id=None, trust=trust)  # type: ignore[arg-type]
        self.flow = NewBookingFlow(self.state)
        self.reader = reader
        self.disagreements = 0

    def hear(self, agent_text: str | None, caller_text: str) -> dict[str, Any]:
        self.state.begin_turn()
        self.state.pending = asked_slot(agent_text)
        action = self.reader(agent_text, caller_text) if self.reader else None
        self.flow.fill_draft(caller_text, read_turn(caller_text), action)
        self.disagreements += bool(self.state.disagreements)
        return self.stay()

    def stay(self) -> dict[str, Any]:
        draft = self.state.draft
        return {
            "check_in_date": draft.check_in.isoformat() if draft.check_in else None,
            "check_out_date": draft.check_out.isoformat() if draft.check_out else None,
            "number_of_days": draft.nights or self.state.nights_wanted,
            "number_of_adults": draft.guests,
        }
