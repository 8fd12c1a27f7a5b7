"""The dialogue manager: routes each caller turn to the flow its stage calls for, and plans the reply.

Code, not the language model, decides here: which slot to ask for next, when to call a tool,
the arithmetic, and when a booking is made (only after the details were read back and the
caller said yes). The result of a turn is a `ReplyPlan` — the exact, correct reply as
sentences — which `agent.reply.wording` may phrase more naturally with the LLM.

This module holds the routing: refusals and hand-offs first, questions about the hotel, then the
flow of the current stage. The flows live beside it: a new booking in `agent.dialogue.new_booking`,
an existing one (verify, look up, change, cancel) in `agent.dialogue.existing_booking`, and the state
they share in `agent.dialogue.state`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import date

from agent.dialogue import policy
from agent.dialogue.existing_booking import ExistingBookingFlow
from agent.dialogue.model_queue import ModelQueue
from agent.dialogue.new_booking import NewBookingFlow
from agent.dialogue.read_ahead import ReadAhead, Reader
from agent.dialogue.spoken import say_money, spell
from agent.dialogue.state import DialogueState, ReplyPlan, Stage
from agent.dialogue.tools import HotelTools
from agent.understanding.action import TurnAction
from agent.understanding.contacts import find_phone
from agent.understanding.dates import StayDates, parse_guest_count, parse_stay
from agent.understanding.intents import TOPIC_WORDS, Intent, TurnMeaning, find_name, read_turn
from agent.understanding.merge import with_model_intents
from innkeeper.core.hotel import HotelProfile

log = logging.getLogger(__name__)

# What the agent says when the hotel's facts do not answer a question: never an invented fact.
NO_INFORMATION = "I'm sorry, I don't have that information; the front desk can help with that."
# A question that mentions these is about a stay, not a fact the profile may lack ("do you have a room?").
_STAY_WORDS = re.compile(r"\b(?:rooms?|nights?|stay\w*|book\w*|reserv\w*|vacanc\w*|availab\w*|\d)", re.I)
_TASKS = frozenset({Intent.BOOK, Intent.AVAILABILITY, Intent.PRICE, Intent.MODIFY, Intent.CANCEL, Intent.LOOKUP})
_QUESTION_ACTS = frozenset({"clarify", "change_what", "confirm_again", "confirm_cancel", "offer_rooms"})
_ANOTHER_BOOKING = re.compile(r"\b(another|second|one more|new|also|as well|too)\b", re.I)


class DialogueManager:
    """One conversation's state machine. Synchronous: the brain runs it off the event loop."""

    def __init__(
        self,
        *,
        tools: HotelTools,
        hotel: HotelProfile,
        today: Callable[[], date],
        call_id: str | None,
        reader: Reader | None = None,
        trust: str = "model",
        model_queue: ModelQueue | None = None,
    ):
        self.state = DialogueState(tools=tools, hotel=hotel, today=today, call_id=call_id, trust=trust)
        self._model_queue = model_queue  # shared by a server's calls: waited-on turns first
        self.reader = reader
        self.new_booking = NewBookingFlow(self.state)
        self.existing_booking = ExistingBookingFlow(self.state)
        self._last_reply = ""
        self._repeats = 0  # how many times in a row the same reply was planned
        self._affirmed = False  # the turn being handled said yes
        self._action: TurnAction | None = None  # the model's reading of the turn being handled

    @property
    def reader(self) -> ReadAhead | None:
        """The model's reading of a turn (agent.reply.understand), first where it validates; None: rules only.
        Voice calls start it at the caller's first pause (`anticipate`), before the turn has ended."""
        return self._reader

    @reader.setter
    def reader(self, read: Reader | None) -> None:
        self._reader = ReadAhead(read, self._model_queue) if read is not None else None

    # The call's settings live in the shared state, where the flows read them; these keep the manager's face.
    @property
    def stage(self) -> Stage:
        return self.state.stage

    @property
    def tools(self) -> HotelTools:
        return self.state.tools

    @tools.setter
    def tools(self, tools: HotelTools) -> None:
        self.state.tools = tools

    @property
    def call_id(self) -> str | None:
        return self.state.call_id

    @call_id.setter
    def call_id(self, call_id: str | None) -> None:
        self.state.call_id = call_id  # known only once the call log has the call

    # ------------------------------------------------------------------ entry point
    def anticipate(self, text: str) -> None:
        """These are probably the caller's words (the turn has paused, not ended): start the model reading them."""
        if self.reader is not None:
            self.reader.prefetch(self._last_reply or None, text)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()

    def handle(self, text: str) -> ReplyPlan:
        """Decide the reply to one caller turn (already cleaned and card-masked by the caller)."""
        self.state.begin_turn()
        self._affirmed, self._action = False, None
        plan = self._vary_repeat(self._route(text))
        plan.tool_calls = self.state.tool_calls
        plan.disagreements = list(self.state.disagreements)
        plan.model_read = self.state.model_read
        return plan

    def _vary_repeat(self, plan: ReplyPlan) -> ReplyPlan:
        """The same reply twice in a row sounds like a broken machine: say why the question comes again."""
        repeated = plan.text == self._last_reply
        self._repeats = self._repeats + 1 if repeated else 0
        self._last_reply = plan.text
        if not repeated or not (plan.act.startswith("ask") or plan.act in _QUESTION_ACTS):
            return plan  # an answer, a refusal or a warning asked for twice is simply given twice
        lead = "Got it." if self.state.draft_changed else "Sorry, I didn't catch that."
        if self._affirmed and not self.state.draft_changed and plan.act != "confirm_again":
            # "Yes, book it" before the booking is complete: say what is missing, not that nothing was heard.
            lead = "I can't book it just yet; I still need a detail first."
        tail = ["You can also say 'front desk' to speak with a colleague."] if self._repeats >= 2 else []
        return replace(plan, sentences=[lead, *plan.sentences, *tail])

    def _route(self, text: str) -> ReplyPlan:
        if self.state.stage is Stage.ENDED:
            return ReplyPlan("ended", ["This call has ended. Please call again if you need anything."], end_call=True)
        if policy.is_harmful(text):
            return self.with_reprompt("decline_harmful", ["I'm sorry, I can't help with that."])
        if policy.wants_human(text):
            return self._transfer()
        if policy.is_off_topic(text):
            return self.with_reprompt(
                "decline_off_topic",
                ["I'm sorry, I can only help with the hotel: rooms, reservations and questions about your stay."],
            )
        meaning = self._with_profile_topics(text, read_turn(text))
        self._action = self._read(text)
        if self._action is not None:
            meaning, differ = with_model_intents(meaning, self._action)
            self.state.disagreements += differ
        self._affirmed = meaning.affirm
        if self.state.pending == "transfer_offer":
            if meaning.affirm:
                return self._transfer()
            self.state.pending = None  # the offer lasts one turn: anything else moves on
        if self._closes_the_call(text, meaning):
            return self._goodbye()
        answers = []
        if meaning.topics and (meaning.is_question or not self.state.pending) and not self._is_slot_answer(meaning):
            answers = self._answer_topics(meaning.topics, meaning.room_type)
        elif self._asks_what_the_facts_do_not_say(text, meaning):
            answers = [NO_INFORMATION]
        if answers and self.state.stage is Stage.OPEN and meaning.is_question and not meaning.intents & _TASKS:
            return self._answer_only(answers)
        plan = self._advance(text, meaning)
        if answers and plan.act in {"clarify", "greet"}:
            return self._answer_only(answers)
        plan.sentences[:0] = answers
        return plan

    # ------------------------------------------------------------------ stage logic
    def _advance(self, text: str, meaning: TurnMeaning) -> ReplyPlan:
        handlers = {
            Stage.CONFIRM_BOOKING: self.new_booking.on_confirm,
            Stage.VERIFY: self.existing_booking.on_verify,
            Stage.MODIFY: self.existing_booking.on_modify,
            Stage.CONFIRM_MODIFY: self.existing_booking.on_confirm_modify,
            Stage.CONFIRM_CANCEL: self.existing_booking.on_confirm_cancel,
        }
        if self.state.stage in handlers:
            return handlers[self.state.stage](text, meaning)
        return self._on_open_or_booking(text, meaning)

    def _on_open_or_booking(self, text: str, meaning: TurnMeaning) -> ReplyPlan:
        state = self.state
        existing = meaning.intents & {Intent.CANCEL, Intent.MODIFY, Intent.LOOKUP}
        if existing and state.stage is Stage.OPEN:
            return self.existing_booking.start(text, meaning)
        changed = self.new_booking.fill_draft(text, meaning, self._action)
        if self._echoes_the_booking(text, meaning, changed):
            code = state.booked.code  # type: ignore[union-attr]
            return ReplyPlan(
                "already_booked",
                [f"You're all set: your confirmation code is {code}, that's {spell(code)}.",
                 "Is there anything else I can help with?"],
            )  # fmt: skip
        if state.stage is Stage.BOOKING or changed or meaning.intents & {Intent.BOOK, Intent.AVAILABILITY}:
            state.stage = Stage.BOOKING
            return self.new_booking.next_step()
        if Intent.PRICE in meaning.intents:
            return self.with_reprompt("rates", [self._rate_card()])
        if Intent.GOODBYE in meaning.intents or (Intent.THANKS in meaning.intents and state.booked):
            state.stage = Stage.ENDED
            return ReplyPlan("goodbye", [f"Thank you for calling {state.hotel.name}. Goodbye!"], end_call=True)
        if Intent.GREETING in meaning.intents:
            return ReplyPlan("greet", [f"Hello, thank you for calling {state.hotel.name}. How can I help you today?"])
        return ReplyPlan(
            "clarify",
            [
                "I can book a room, help with an existing reservation, or answer questions about the hotel. "
                "What would you like to do?"
            ],
        )

    def _read(self, text: str) -> TurnAction | None:
        """The model's reading of the turn after the agent's last words; None (the rules read it) if it fails."""
        if self.reader is None:
            return None
        try:
            action = self.reader(self._last_reply or None, text)
        except Exception as exc:  # a model that fails must not break the call: this turn, the rules read it
            log.warning("the model could not read the turn, the rules did: %s", exc)
            return None
        self.state.model_read = action is not None
        return action

    def _echoes_the_booking(self, text: str, meaning: TurnMeaning, changed: bool) -> bool:
        """ "Please book it" just after the booking was made: the tail of the caller's "yes", not a new stay."""
        return (
            self.state.booked is not None
            and self.state.stage is Stage.OPEN
            and not changed
            and Intent.BOOK in meaning.intents
            and not meaning.intents & {Intent.AVAILABILITY, Intent.PRICE}
            and not _ANOTHER_BOOKING.search(text)
        )

    def _answer_only(self, answers: list[str]) -> ReplyPlan:
        if answers[-1] == NO_INFORMATION:
            self.state.pending = "transfer_offer"
            return ReplyPlan("no_information", [*answers, "Would you like me to connect you?"])
        return ReplyPlan("answer_question", [*answers, "Is there anything else I can help with?"])

    def _closes_the_call(self, text: str, meaning: TurnMeaning) -> bool:
        """ "Thanks, that's all for now" in the middle of a task: the caller is leaving, not answering."""
        if Intent.GOODBYE not in meaning.intents or self.state.stage in (Stage.OPEN, Stage.ENDED):
            return False
        if self._answers_the_question(text):
            return False
        return not (meaning.intents & _TASKS or meaning.affirm or meaning.topics or re.search(r"\d", text))

    def _answers_the_question(self, text: str) -> bool:
        """The turn gives what the agent just asked for, with thanks: "Wanjiru Dubois, thanks." after the name
        was asked is an answer, not a goodbye (a model reading it as a closing ended a booking call)."""
        if self._action is not None and any(v is not None for v in self._action.slots.model_dump().values()):
            return True
        pending = self.state.pending
        if pending == "phone":
            return find_phone(text) is not None
        if pending in ("name", "surname"):
            first, last = find_name(text, expecting=True)
            # as typed: a capitalised name ("Never mind" is not one, though a bare-name reading would allow it)
            said = [last] if pending == "surname" else [first, last]
            return all(word and re.search(rf"\b{re.escape(word)}\b", text) for word in said)
        return False

    def _goodbye(self) -> ReplyPlan:
        unfinished = self.state.stage not in (Stage.OPEN, Stage.ENDED) and self.state.booked is None
        self.state.stage = Stage.ENDED
        lead = ["No problem; nothing has been booked."] if unfinished else []
        return ReplyPlan("goodbye", [*lead, f"Thank you for calling {self.state.hotel.name}. Goodbye!"], end_call=True)

    def _transfer(self) -> ReplyPlan:
        self.state.stage = Stage.ENDED
        return ReplyPlan(
            "transfer",
            ["Of course. I'm transferring you to a member of our front desk team now; please hold."],
            transfer=True,
            end_call=True,
        )

    def _with_profile_topics(self, text: str, meaning: TurnMeaning) -> TurnMeaning:
        """Topics staff added to the hotel's facts (a "spa" answer) are understood by their own name."""
        hotel = self.state.hotel
        known = set(TOPIC_WORDS) | set(meaning.topics)
        added = tuple(
            topic
            for topic in (*hotel.facts, *hotel.policies)
            if topic not in known and re.search(rf"\b{re.escape(topic.replace('_', ' '))}s?\b", text, re.I)
        )
        return replace(meaning, topics=(*meaning.topics, *added)) if added else meaning

    def _asks_what_the_facts_do_not_say(self, text: str, meaning: TurnMeaning) -> bool:
        """A question about the hotel that no fact, policy or room answers ("is there a spa?")."""
        return (
            meaning.is_question
            and "?" in text
            and not meaning.topics
            and not meaning.intents & _TASKS
            and meaning.room_type is None
            and not _STAY_WORDS.search(text)
            and parse_stay(text, self.state.today()) == StayDates()
            and parse_guest_count(text) is None
        )

    # ------------------------------------------------------------------ questions and re-prompts
    def _is_slot_answer(self, meaning: TurnMeaning) -> bool:
        """A turn that answers the pending question is not a topic question, even if it names a topic."""
        return self.state.pending == "room_type" and meaning.room_type is not None and not meaning.is_question

    def _answer_topics(self, topics: tuple[str, ...], room_type: str | None = None) -> list[str]:
        hotel = self.state.hotel
        if "nearby" in topics:  # "restaurants near the hotel" asks about the neighbourhood, not the Galley
            topics = (*(t for t in topics if t not in ("nearby", "restaurant")), "nearby")
        answers = []
        for topic in topics:
            if topic == "room_details":
                rooms = [hotel.room(room_type)] if room_type else list(hotel.room_types)
                answers += [f"The {r.name} has {r.description}; it sleeps up to {r.capacity}." for r in rooms]
            elif topic == "check_times":
                answers.append(f"Check-in is from {hotel.check_in_time} and check-out is by {hotel.check_out_time}.")
            elif topic == "address":
                answers.append(f"We're at {hotel.address}.")
            else:
                answer = hotel.facts.get(topic) or hotel.policies.get(topic)
                if answer:
                    answers.append(answer)
        return answers or [NO_INFORMATION]

    def _rate_card(self) -> str:
        rates = [f"the {r.name} from {say_money(r.nightly_rate)}" for r in self.state.hotel.room_types]
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
        }.get(self.state.pending or "", "Is there anything else I can help with?")
        return ReplyPlan(act, [*sentences, reprompt])
