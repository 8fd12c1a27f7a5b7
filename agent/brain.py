"""A caller's conversation: the streaming `respond(text)` API that the text chat and the voice loop call.

Per turn: clean the input → mask card numbers → the dialogue manager decides (tools run in a
worker thread) → the reply writer streams grounded chunks → both turns are logged with their
timings and the model version. Nothing here blocks the event loop, and a failing database
costs the caller a polite apology, never the conversation: unsaved turns are kept and written
once the database answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from agent.calllog import CallLog
from agent.dialogue import DialogueManager, ReplyPlan, Stage, mask_turn
from agent.hotel import HotelProfile
from agent.policy import InputProblem, clean_utterance
from agent.tools import HotelTools
from agent.wording import ReplyWriter, TextStreamer
from innkeeper.db.database import DatabaseUnavailable

log = logging.getLogger(__name__)

# A database that is down or refusing writes: the call goes on, the turns wait in memory.
_DB_ERRORS = (SQLAlchemyError, DatabaseUnavailable)

_BAD_INPUT_REPLIES = {
    InputProblem.EMPTY: "Sorry, I didn't catch that. Could you say it again?",
    InputProblem.TOO_LONG: "That was a lot at once. Could you tell me briefly what you need?",
    InputProblem.NOT_TEXT: "Sorry, I couldn't understand that. Could you say it again?",
    InputProblem.NOT_ENGLISH: "I'm sorry, I can only help in English on this line. "
    "Say 'front desk' and I'll transfer you to a colleague.",
}
_CARD_WARNING = (
    "For your security, please don't read out card numbers; I've not kept it. "
    "We send a secure payment link by text message instead."
)
_SYSTEM_TROUBLE = "I'm sorry, I'm having trouble reaching our reservation system. Could you try that again in a moment?"


@dataclass
class _PendingTurn:
    role: str
    text: str
    started_at: datetime
    ended_at: datetime
    model_version: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    latencies: dict[str, float] | None = None


@dataclass
class TurnOutcome:
    """What the last `respond` call did, for the voice loop and for tests."""

    caller_text: str
    reply_text: str
    plan: ReplyPlan
    sources: list[str] = field(default_factory=list)
    latencies: dict[str, float] = field(default_factory=dict)


class Conversation:
    """One conversation with one caller. Create through `agent.runtime.AgentRuntime.new_conversation`."""

    def __init__(
        self,
        *,
        hotel: HotelProfile,
        tools: HotelTools,
        call_log: CallLog,
        llm: TextStreamer | None,
        today: Callable[[], date],
        channel: str = "text",
        caller_number: str | None = None,
        max_new_tokens: int = 48,
        temperature: float = 0.0,
        first_sentence_budget_s: float | None = None,
    ):
        self.hotel = hotel
        self.call_log = call_log
        self.llm = llm
        self.channel = channel
        self.caller_number = caller_number
        self.call_id: str | None = None
        self.dialogue = DialogueManager(tools=tools, hotel=hotel, today=today, call_id=None)
        self.writer = ReplyWriter(
            hotel,
            llm,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            first_sentence_budget_s=first_sentence_budget_s,
        )
        self.history: list[dict[str, str]] = []
        self.last_turn: TurnOutcome | None = None
        self._unsaved: list[_PendingTurn] = []
        self._closed = False

    @property
    def model_version(self) -> str:
        return self.llm.version if self.llm is not None else "template"

    @property
    def ended(self) -> bool:
        return self.dialogue.stage is Stage.ENDED

    async def start(self) -> str:
        """Open the call record; returns the call id."""
        self.call_id = await asyncio.to_thread(
            self.call_log.start_call,
            channel=self.channel,
            caller_number=self.caller_number,
            model_version=self.model_version,
        )
        self.dialogue.call_id = self.call_id
        return self.call_id

    def greeting(self) -> str:
        return f"Thank you for calling {self.hotel.name}. How can I help you today?"

    async def greet(self) -> str:
        """Say and log the opening line."""
        text = self.greeting()
        now = _now()
        self.history.append({"role": "assistant", "content": text})
        await self._save(_PendingTurn("agent", text, now, now, model_version=self.model_version))
        return text

    async def respond(self, user_text: str | bytes) -> AsyncIterator[str]:
        """Stream the agent's reply to one caller turn, chunk by chunk (each chunk is speakable)."""
        started, t0 = _now(), time.perf_counter()
        masked, plan = await self._decide(user_text)
        decided_ms = _ms_since(t0)
        await self._save(_PendingTurn("caller", masked, started, _now()))
        record = TurnOutcome(caller_text=masked, reply_text="", plan=plan, latencies={"decide_ms": decided_ms})
        self.last_turn = record
        reply_started = _now()
        chunks: list[str] = []
        try:
            async for chunk in self.writer.stream(plan, masked):
                if not chunks:
                    record.latencies["first_chunk_ms"] = _ms_since(t0)
                chunks.append(chunk.text)
                record.sources.append(chunk.source)
                yield chunk.text
        finally:
            # Runs on barge-in too (the consumer stops early): only what was yielded was said.
            record.reply_text = " ".join(chunks)
            record.latencies["total_ms"] = _ms_since(t0)
            await self._log_reply(record, reply_started, masked)

    async def reply(self, user_text: str | bytes) -> str:
        """The whole reply as one string (scripts and tests)."""
        return " ".join([chunk async for chunk in self.respond(user_text)])

    async def close(self, reason: str = "completed") -> None:
        if self._closed or self.call_id is None:
            return
        self._closed = True
        await self._flush()
        try:
            await asyncio.to_thread(self.call_log.end_call, self.call_id, reason=reason)
        except _DB_ERRORS as err:
            log.error("could not close call %s: %s", self.call_id, err)

    # ------------------------------------------------------------------ internals
    async def _decide(self, user_text: str | bytes) -> tuple[str, ReplyPlan]:
        clean = clean_utterance(user_text)
        masked, cards, card_like = mask_turn(clean.text)
        if clean.problem is not None:
            return masked, ReplyPlan("bad_input", [_BAD_INPUT_REPLIES[clean.problem]])
        if cards or card_like:
            plan = self.dialogue.with_reprompt("card_warning", [_CARD_WARNING])
            plan.masked_cards = cards
            return masked, plan
        try:
            return masked, await asyncio.to_thread(self.dialogue.handle, masked)
        except _DB_ERRORS as err:
            log.error("tool call failed on call %s: %s", self.call_id, err)
            return masked, ReplyPlan("system_trouble", [_SYSTEM_TROUBLE])

    async def _log_reply(self, record: TurnOutcome, started: datetime, caller_text: str) -> None:
        plan = record.plan
        meta = {"act": plan.act, "wording": sorted(set(record.sources)), "masked_cards": plan.masked_cards}
        self.history += [
            {"role": "user", "content": caller_text},
            {"role": "assistant", "content": record.reply_text},
        ]
        await self._save(
            _PendingTurn(
                "agent",
                record.reply_text,
                started,
                _now(),
                model_version=self.model_version,
                tool_calls=[*plan.tool_calls, {"meta": meta}],
                latencies=record.latencies,
            )
        )
        if plan.end_call:
            await self.close("transfer" if plan.transfer else "completed")

    async def _save(self, turn: _PendingTurn) -> None:
        self._unsaved.append(turn)
        await self._flush()

    async def _flush(self) -> None:
        """Write unsaved turns in order; on a database error keep them for the next attempt."""
        if self.call_id is None:
            try:
                await self.start()
            except _DB_ERRORS as err:
                log.error("call log unavailable, keeping %d turns in memory: %s", len(self._unsaved), err)
                return
        while self._unsaved:
            turn = self._unsaved[0]
            try:
                await asyncio.to_thread(
                    self.call_log.log_turn,
                    self.call_id,
                    role=turn.role,
                    text=turn.text,
                    started_at=turn.started_at,
                    ended_at=turn.ended_at,
                    model_version=turn.model_version,
                    tool_calls=turn.tool_calls,
                    latencies=turn.latencies,
                )
            except _DB_ERRORS as err:
                log.error("call log unavailable, keeping %d turns in memory: %s", len(self._unsaved), err)
                return
            self._unsaved.pop(0)


def _now() -> datetime:
    return datetime.now(UTC)


def _ms_since(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 1)
