"""The serving process's shared pieces: one database, hotel, tool set, call log and LLM for all calls.

Built once per process from `Settings`; each caller gets a cheap `Conversation` from it. The
language model sits in a `ModelSlot`: a model swap replaces it between turns, and each conversation
takes the slot's model at the start of every turn.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from agent.call.backlog import CallBacklog
from agent.call.calllog import CallLog
from agent.call.conversation import DB_ERRORS, Conversation
from agent.dialogue.model_queue import ModelQueue
from agent.dialogue.tools import HotelTools
from agent.reply.wording import TextStreamer
from innkeeper.core.db.database import Database
from innkeeper.core.hotel import HotelProfile, load_hotel
from innkeeper.core.hotel_edits import HotelFacts
from innkeeper.core.settings import Settings
from innkeeper.models.slot import ModelSlot

if TYPE_CHECKING:  # torch and the decoding constraint load only where a model reads turns
    from agent.reply.understand import ModelReader
    from agent.understanding.action import TurnAction

log = logging.getLogger(__name__)


def hotel_today(settings: Settings, hotel: HotelProfile) -> Callable[[], date]:
    """'Today' for date understanding: pinned by settings, else the date in the hotel's timezone."""
    if settings.today is not None:
        pinned = settings.today
        return lambda: pinned
    zone = ZoneInfo(settings.timezone or hotel.timezone)
    return lambda: datetime.now(zone).date()


VOICE_CHANNELS = frozenset({"twilio", "web"})


class AgentRuntime:
    def __init__(self, settings: Settings, *, llm: TextStreamer | None, db: Database | None = None):
        self.settings = settings
        self.db = db or Database.from_settings(settings)
        file_profile = load_hotel(settings.hotel_file)
        # Staff edit the facts callers ask about in the dashboard; rooms, rates and limits stay the file's.
        self.hotel_facts = HotelFacts(self.db, file_profile)
        try:
            self.hotel_facts.load()
        except DB_ERRORS as err:
            log.warning("hotel fact edits unreadable, answering from %s: %s", settings.hotel_file, err)
        self.today = hotel_today(settings, file_profile)
        self.tools = HotelTools(self.db, file_profile, today=self.today)
        self.call_log = CallLog(self.db)
        # Calls that end while the database is down are kept here and written when it is back.
        self.backlog = CallBacklog(settings.home / "backlog", self.call_log)
        self.slot = ModelSlot(llm)
        self._reader: ModelReader | None = None
        # Every call's model readings, one at a time, a turn a caller waits on before any read-ahead guess.
        budget_ms = settings.model_understanding_budget_ms
        # A caller waits at most the reading budget for the model, its wait behind other calls' readings included.
        self.model_queue = ModelQueue(workers=1, wait_s=None if budget_ms is None else budget_ms / 1000)

    @property
    def hotel(self) -> HotelProfile:
        """The hotel profile the agent answers from now (the newest edit of its facts)."""
        return self.hotel_facts.current()

    @property
    def llm(self) -> TextStreamer | None:
        """The model serving now (read-only: swaps go through `slot.swap_to`)."""
        return self.slot.current

    @classmethod
    def from_settings(cls, settings: Settings, *, use_llm: bool = True) -> AgentRuntime:
        """Migrate and seed the database, load the configured LLM (verified) and return the runtime."""
        db = Database.from_settings(settings)
        db.migrate()
        db.seed(load_hotel(settings.hotel_file))
        llm = None
        if use_llm:
            from innkeeper.models.resolve import load_chat_model

            llm = load_chat_model(settings)
        return cls(settings, llm=llm, db=db)

    def new_conversation(self, *, channel: str = "text", caller_number: str | None = None) -> Conversation:
        return Conversation(
            hotel=self.hotel,
            hotel_source=self.hotel_facts.current,
            tools=self.tools,
            call_log=self.call_log,
            llm=None,
            # Voice calls without voice_llm stay on templates; every other turn reads the slot afresh.
            model_source=None if channel in VOICE_CHANNELS and not self.settings.voice_llm else self._serving,
            today=self.today,
            channel=channel,
            caller_number=caller_number,
            max_new_tokens=self.settings.llm_max_new_tokens,
            temperature=self.settings.llm_temperature,
            first_sentence_budget_s=self._first_sentence_budget_s(voice=channel in VOICE_CHANNELS),
            turns=self.slot.turns,
            reader=self._read_with_serving_model if self.settings.model_understanding else None,
            model_queue=self.model_queue,
            trust=self.settings.model_understanding_trust,
            call_meta={"server": self.settings.server_id},
            backlog=self.backlog,
        )

    def _read_with_serving_model(self, agent_text: str | None, caller_text: str) -> TurnAction | None:
        """The turn read by the model serving now (a hot swap changes the reader at the next turn)."""
        from agent.reply.understand import ModelReader

        model = self.slot.current
        if not hasattr(model, "complete"):
            return None  # templates only, or a streamer that cannot read
        if self._reader is None or self._reader.chat is not model:
            budget_ms = self.settings.model_understanding_budget_ms
            self._reader = ModelReader(model, budget_s=None if budget_ms is None else budget_ms / 1000)
        return self._reader.read(agent_text, caller_text)

    def _serving(self) -> TextStreamer | None:
        return self.slot.current

    def _first_sentence_budget_s(self, *, voice: bool) -> float | None:
        """A caller on the phone hears the wait as silence: voice calls give the LLM less time."""
        budget_ms = self.settings.voice_llm_first_sentence_ms if voice else self.settings.llm_first_sentence_ms
        return None if budget_ms is None else budget_ms / 1000
