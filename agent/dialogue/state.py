"""The dialogue's state: the stage a call is at, the booking being built, the reply plan, the turn's tool log.

Plain data and small helpers, no decisions: `agent.dialogue.manager` routes each caller turn on this state,
and the flows it routes to (`agent.dialogue.new_booking`, `agent.dialogue.existing_booking`) read and change
the one `DialogueState` they share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from enum import Enum
from typing import Any

from agent.dialogue.tools import BookingView, HotelTools, Quote, ToolError
from agent.understanding.cards import contains_card_like_number, mask_card_numbers
from agent.understanding.intents import Intent
from innkeeper.core.hotel import HotelProfile


class Stage(Enum):
    """Where the call is in its task: it picks the flow that handles the next caller turn."""

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
    """A booking's details as collected so far (None: not given yet); also a proposed change to one."""

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
    disagreements: list[str] = field(default_factory=list)  # slots where the model's reading and the rules differ
    model_read: bool = False  # the model's reading of the turn was used (the rules second)

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


@dataclass
class DialogueState:
    """One call's dialogue: what the manager and its flows share, and what they need to act on it."""

    tools: HotelTools
    hotel: HotelProfile
    today: Callable[[], date]
    call_id: str | None
    stage: Stage = Stage.OPEN
    draft: BookingDraft = field(default_factory=BookingDraft)
    existing: ExistingBooking = field(default_factory=ExistingBooking)
    pending: str | None = None  # the slot the last reply asked for
    # Whose value wins where the model's reading and the rules both found one: the model's ("model") or the
    # rules' ("rules"; the model then only fills what the rules missed). Disagreements are logged either way.
    trust: str = "model"
    quote: Quote | None = None
    nights_wanted: int | None = None  # "three nights" said before any arrival date
    end_said: str | None = None  # how the caller last named the stay's end: "check_out" (a date) or "nights"
    asked: frozenset[Intent] = frozenset()  # this turn's intents: an availability question, a price question
    offered: tuple[str, ...] = ()  # room types in the last offer (a "yes" to a single offer takes it)
    disagreements: list[str] = field(default_factory=list)  # this turn's slots where the model and rules differ
    model_read: bool = False  # this turn was read by the model (its reading validated and was used)
    booked: BookingView | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # this turn's, for the turn log
    draft_changed: bool = False  # this turn added or changed a booking detail

    def begin_turn(self) -> None:
        """A new caller turn: its tool log and its changes start empty."""
        self.tool_calls = []
        self.draft_changed = False
        self.disagreements = []
        self.model_read = False

    def run_tool(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Run the hotel tool `name` and record it (arguments and outcome) for the turn log."""
        fn: Callable[..., Any] = getattr(self.tools, name)
        record: dict[str, Any] = {"tool": name, "args": _jsonable([*args]), "kwargs": _jsonable(kwargs)}
        self.tool_calls.append(record)
        try:
            result = fn(*args, **kwargs)
        except ToolError as err:
            record["error"] = f"{type(err).__name__}: {err}"
            raise
        record["result"] = _jsonable(result)
        return result


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
