"""The typed action a caller turn carries, as the language model reads it: what the caller wants (several
intents per turn), the details they gave (in their own words for dates, so code resolves them against today),
and what they asked about.

The schema is the contract between the model and the code: the model is decoded under its JSON schema
(`agent.reply.understand`), and the code validates every field before it touches the dialogue state
(`agent.dialogue.tracker`, `agent.dialogue.new_booking`). A field that fails validation is dropped and the
rules' reading of the turn stands.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class ActionIntent(StrEnum):
    BOOK = "book"
    MODIFY = "modify"
    CANCEL = "cancel"
    ASK = "ask"  # a question about the hotel
    QUOTE = "quote"  # a price for a stay
    CONFIRM = "confirm"
    DENY = "deny"
    CLOSE = "close"  # the caller is done
    TRANSFER = "transfer"  # wants a person
    OTHER = "other"


class ActionSlots(BaseModel):
    """Details the caller gave in this turn; null when not said. Dates stay in the caller's words."""

    model_config = ConfigDict(extra="forbid")

    check_in: str | None = Field(default=None, max_length=40, description="arrival date as said, e.g. 'next Friday'")
    check_out: str | None = Field(default=None, max_length=40, description="departure date as said")
    nights: int | None = Field(default=None, ge=1, le=60)
    adults: int | None = Field(default=None, ge=1, le=20)
    children: int | None = Field(default=None, ge=0, le=20)
    room_type: str | None = Field(default=None, max_length=30)
    name: str | None = Field(default=None, max_length=60)
    phone: str | None = Field(default=None, max_length=30)
    email: str | None = Field(default=None, max_length=80)
    confirmation_code: str | None = Field(default=None, max_length=12)


class TurnAction(BaseModel):
    """One caller turn, read: intents, slots and questions (topics or free text)."""

    model_config = ConfigDict(extra="forbid")

    intents: list[ActionIntent] = Field(default_factory=list, max_length=4)
    slots: ActionSlots = Field(default_factory=ActionSlots)
    questions: list[str] = Field(default_factory=list, max_length=3)


def action_json_schema() -> dict:
    """The JSON schema the model is decoded under."""
    return TurnAction.model_json_schema()
