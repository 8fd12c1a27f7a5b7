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
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from agent.call.backlog import CallBacklog, UnsavedCall, UnsavedTurn
from agent.call.calllog import CallLog
from agent.call.turns import TurnsInProgress
from agent.dialogue.manager import DialogueManager, Reader
from agent.dialogue.model_queue import ModelQueue
from agent.dialogue.policy import CleanInput, InputProblem, clean_utterance
from agent.dialogue.state import ReplyPlan, Stage, mask_turn
from agent.dialogue.tools import HotelTools
from agent.reply.wording import ReplyWriter, TextStreamer
from innkeeper.core.db.database import DatabaseUnavailable
from innkeeper.core.hotel import HotelProfile

log = logging.getLogger(__name__)

# A database that is down or refusing writes: the call goes on, the turns wait in memory.
DB_ERRORS = (SQLAlchemyError, DatabaseUnavailable)

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
# After a barge-in, a caller turn the dialogue cannot place ("that's right", "sorry?") gets the words of the
# cut reply the caller never heard, so nothing they need (a confirmation code) is lost to the interruption.
_RESUMABLE_ACTS = frozenset({"clarify", "already_booked"})
_RESUME_LEAD = "Sorry, as I was saying:"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class TurnOutcome:
    """What the last `respond` call did, for the voice loop and for tests."""

    caller_text: str
    reply_text: str
    plan: ReplyPlan
    sources: list[str] = field(default_factory=list)
    latencies: dict[str, float] = field(default_factory=dict)
    model_version: str = "template"  # of the model this turn started with (a swap mid-turn does not change it)


class Conversation:
    """One conversation with one caller. Create through `innkeeper.serve.runtime.AgentRuntime.new_conversation`."""

    def __init__(
        self,
        *,
        hotel: HotelProfile,
        hotel_source: Callable[[], HotelProfile] | None = None,
        tools: HotelTools,
        call_log: CallLog,
        llm: TextStreamer | None,
        today: Callable[[], date],
        model_source: Callable[[], TextStreamer | None] | None = None,
        channel: str = "text",
        caller_number: str | None = None,
        max_new_tokens: int = 48,
        temperature: float = 0.0,
        first_sentence_budget_s: float | None = None,
        turns: TurnsInProgress | None = None,
        reader: Reader | None = None,
        trust: str = "model",
        model_queue: ModelQueue | None = None,
        call_meta: dict[str, Any] | None = None,
        backlog: CallBacklog | None = None,
    ):
        self.hotel = hotel
        # Where turns still unsaved when the call ends go (the database was down): disk, written back later.
        self.backlog = backlog
        self._started_at = _now()
        self._call_meta = call_meta or {}  # written with the call record (e.g. which server took the call)
        # Asked at every turn: facts staff edit in the dashboard reach a call in progress at its next turn.
        self._hotel_source = hotel_source
        # Where this call's turns are marked in progress (a model loader waits for the gaps); its own if none given.
        self._turns = turns if turns is not None else TurnsInProgress()
        self.call_log = call_log
        # `model_source` (the runtime's model slot) is asked once per turn, so a hot-swapped model takes
        # over at the next turn; without one, `llm` serves the whole conversation.
        self._llm = llm
        self._model_source = model_source
        self.channel = channel
        self.caller_number = caller_number
        self.call_id: str | None = None  # set once the call record exists
        # Chosen up front so that audio files and transport ids can name the call even while the
        # database is unreachable; the record is written under this id when it comes back.
        self.planned_call_id = str(uuid.uuid4())
        self.dialogue = DialogueManager(
            tools=tools, hotel=hotel, today=today, call_id=None, reader=reader, trust=trust, model_queue=model_queue
        )
        self.writer = ReplyWriter(
            hotel,
            llm,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            first_sentence_budget_s=first_sentence_budget_s,
        )
        self.history: list[dict[str, str]] = []
        self.last_turn: TurnOutcome | None = None
        self._unsaved: list[UnsavedTurn] = []
        self._writing: asyncio.Task[None] | None = None  # the caller turn's write, while it runs
        self._write_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._open_reply: tuple[TurnOutcome, datetime, str] | None = None
        self._unheard: list[str] = []  # sentences of the last reply a barge-in kept from the caller
        self._closed = False

    @property
    def llm(self) -> TextStreamer | None:
        """The model a turn starting now would use."""
        return self._model_source() if self._model_source is not None else self._llm

    @property
    def model_version(self) -> str:
        return _version_of(self.llm)

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
            call_id=self.planned_call_id,
            metadata=self._call_meta,
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
        await self._save(UnsavedTurn("agent", text, now, now, model_version=self.model_version))
        return text

    def _follow_hotel_edits(self) -> None:
        """Answer this turn from the newest hotel facts (the source keeps them in memory: no I/O here)."""
        if self._hotel_source is None:
            return
        hotel = self._hotel_source()
        if hotel is not self.hotel:
            self.hotel = self.dialogue.state.hotel = self.writer.hotel = hotel

    async def respond(
        self, user_text: str | bytes, *, defer_log: bool = False, heard: dict[str, float] | None = None
    ) -> AsyncIterator[str]:
        """Stream the agent's reply to one caller turn, chunk by chunk (each chunk is speakable).

        The reply is logged when the stream ends with every chunk it yielded. A voice call passes
        `defer_log=True` instead: what was *heard* is known only after playback, so it calls
        `finish_reply` with the heard words and the voice timings. `heard` is logged with the caller's
        turn (speech recognition timings and confidence).
        """
        with self._turns.during():
            started, t0 = _now(), time.perf_counter()
            model = self.llm  # this turn's model, to its end, whatever a model swap does meanwhile
            self._follow_hotel_edits()
            masked, plan = await self._decide(user_text)
            plan = self._resume_if_unplaced(plan)
            decided_ms = _ms_since(t0)
            # The caller's turn is written while the reply is worded and spoken: a slow or locked database
            # must not hold the first words back. Writes keep their order (one at a time, `_flush`), and the
            # reply's own write waits for this one, so the log never shows a reply before its question.
            self._unsaved.append(UnsavedTurn("caller", masked, started, _now(), latencies=heard))
            self._writing = asyncio.create_task(self._flush(), name="log-caller-turn")
            record = TurnOutcome(
                caller_text=masked,
                reply_text="",
                plan=plan,
                latencies={"decide_ms": decided_ms},
                model_version=_version_of(model),
            )
            self.last_turn = record
            reply_started = _now()
            chunks: list[str] = []
            clock: dict[str, float] = {}
            try:
                async for chunk in self.writer.stream(plan, masked, clock, llm=model):
                    if not chunks:
                        record.latencies["first_chunk_ms"] = _ms_since(t0)
                    chunks.append(chunk.text)
                    record.sources.append(chunk.source)
                    yield chunk.text
            finally:
                # Runs on barge-in too (the consumer stops early): only what was yielded was said.
                record.reply_text = " ".join(chunks)
                record.latencies["total_ms"] = _ms_since(t0)
                if "llm_first_token" in clock:
                    record.latencies["llm_first_token_ms"] = round((clock["llm_first_token"] - t0) * 1000, 1)
                if defer_log:
                    self._open_reply = (record, reply_started, masked)
                else:
                    await self._log_reply(record, reply_started, masked)

    async def finish_reply(
        self, heard_text: str | None = None, *, interrupted: bool = False, latencies: dict[str, float] | None = None
    ) -> None:
        """Log the reply of a `respond(..., defer_log=True)` turn as the caller heard it.

        `heard_text` replaces the generated text (None = all of it was heard): after a barge-in the
        history and the log keep only the words that were played, so the next turn's context is what
        the caller knows. Idempotent: a second call does nothing.
        """
        if self._open_reply is None:
            return
        record, started, caller_text = self._open_reply
        self._open_reply = None
        if heard_text is not None:
            record.latencies["generated_words"] = len(record.reply_text.split())
            if interrupted:
                self._unheard = unheard_sentences(record.reply_text, heard_text)
            record.reply_text = heard_text
        if interrupted:
            record.latencies["interrupted"] = 1.0
        record.latencies.update(latencies or {})
        await self._log_reply(record, started, caller_text)

    async def reply(self, user_text: str | bytes) -> str:
        """The whole reply as one string (scripts and tests)."""
        return " ".join([chunk async for chunk in self.respond(user_text)])

    async def log_caller_fragment(self, text: str, meta: dict[str, float] | None = None) -> None:
        """Log caller words that got no reply (the caller hung up mid-sentence); card numbers are masked."""
        masked, _, _ = mask_turn(clean_utterance(text).text)
        now = _now()
        await self._save(UnsavedTurn("caller", masked, now, now, latencies=meta))

    async def log_handoff(self, reason: str) -> None:
        """Record that the call was handed to a person, and why (the call's metadata)."""
        if self.call_id is None:
            await self._flush()
        if self.call_id is None:
            return
        try:
            await asyncio.to_thread(
                self.call_log.update_meta, self.call_id, handoff={"reason": reason, "at": _now().isoformat()}
            )
        except DB_ERRORS as err:
            log.error("could not log the hand-off of call %s: %s", self.call_id, err)

    async def close(self, reason: str = "completed") -> None:
        """End the call record (a reply still waiting for `finish_reply` is logged as generated)."""
        if self._open_reply is not None:
            await self.finish_reply()
        if self._closed or (self.call_id is None and not self._unsaved):
            return
        self._closed = True
        self.dialogue.close()
        await self._flush()
        ended = False
        if self.call_id is not None:
            try:
                await asyncio.to_thread(self.call_log.end_call, self.call_id, reason=reason)
                ended = True
            except DB_ERRORS as err:
                log.error("could not close call %s: %s", self.call_id, err)
        if (self._unsaved or not ended) and self.backlog is not None:
            await asyncio.to_thread(self.backlog.keep, self._unsaved_call(reason))
            self._unsaved = []

    def _unsaved_call(self, reason: str) -> UnsavedCall:
        return UnsavedCall(
            call_id=self.call_id or self.planned_call_id,
            channel=self.channel,
            caller_number=self.caller_number,
            model_version=self.model_version,
            meta=dict(self._call_meta),
            started_at=self._started_at,
            ended_at=_now(),
            end_reason=reason,
            turns=list(self._unsaved),
        )

    # ------------------------------------------------------------------ internals
    def _resume_if_unplaced(self, plan: ReplyPlan) -> ReplyPlan:
        unheard, self._unheard = self._unheard, []
        if not unheard or plan.act not in _RESUMABLE_ACTS or plan.tool_calls:
            return plan
        return ReplyPlan("resume", [_RESUME_LEAD, *unheard])

    def anticipate(self, user_text: str) -> None:
        """The caller paused on these words: the model may start reading them (voice calls, `ReadAhead`)."""
        clean, masked, cards, card_like = _screened(user_text)
        if clean.problem is None and not (cards or card_like):
            self.dialogue.anticipate(masked)

    async def _decide(self, user_text: str | bytes) -> tuple[str, ReplyPlan]:
        clean, masked, cards, card_like = _screened(user_text)
        if clean.problem is not None:
            return masked, ReplyPlan("bad_input", [_BAD_INPUT_REPLIES[clean.problem]])
        if cards or card_like:
            plan = self.dialogue.with_reprompt("card_warning", [_CARD_WARNING])
            plan.masked_cards = cards
            return masked, plan
        try:
            return masked, await asyncio.to_thread(self.dialogue.handle, masked)
        except DB_ERRORS as err:
            log.error("tool call failed on call %s: %s", self.call_id, err)
            return masked, ReplyPlan("system_trouble", [_SYSTEM_TROUBLE])

    async def _log_reply(self, record: TurnOutcome, started: datetime, caller_text: str) -> None:
        plan = record.plan
        meta = {
            "act": plan.act,
            "wording": sorted(set(record.sources)),
            "understanding": "model" if plan.model_read else "rules",
            "serving": record.model_version,  # the model this turn started with, whether or not it took part
            "masked_cards": plan.masked_cards,
        }
        # The turn's model_version names the model that read or worded it; "template" where code understood
        # and templates spoke.
        took_part = plan.model_read or "llm" in record.sources
        if plan.disagreements:  # the model's reading and the rules differ: a turn to review and learn from
            meta["disagreements"] = plan.disagreements
        self.history += [
            {"role": "user", "content": caller_text},
            {"role": "assistant", "content": record.reply_text},
        ]
        await self._save(
            UnsavedTurn(
                "agent",
                record.reply_text,
                started,
                _now(),
                model_version=record.model_version if took_part else "template",
                tool_calls=[*plan.tool_calls, {"meta": meta}],
                latencies=record.latencies,
            )
        )
        if plan.end_call:
            await self.close("transfer" if plan.transfer else "completed")

    async def _save(self, turn: UnsavedTurn) -> None:
        self._unsaved.append(turn)
        await self._flush()

    async def _flush(self) -> None:
        """Write unsaved turns in order, one writer at a time; on a database error keep them for the next attempt."""
        async with self._writer_lock():
            await self._write_unsaved()

    def _writer_lock(self) -> asyncio.Lock:
        """The lock that keeps this call's writes in order (one per event loop: scripts run a loop per turn)."""
        loop = asyncio.get_running_loop()
        if self._write_lock is None or self._write_lock[0] is not loop:
            self._write_lock = (loop, asyncio.Lock())
        return self._write_lock[1]

    async def _write_unsaved(self) -> None:
        if self.call_id is None:
            try:
                await self.start()
            except DB_ERRORS as err:
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
            except DB_ERRORS as err:
                log.error("call log unavailable, keeping %d turns in memory: %s", len(self._unsaved), err)
                return
            self._unsaved.pop(0)


def _screened(user_text: str | bytes) -> tuple[CleanInput, str, int, bool]:
    """The caller's words cleaned (`clean.problem` says why they are unusable) and card-masked."""
    clean = clean_utterance(user_text)
    masked, cards, card_like = mask_turn(clean.text)
    return clean, masked, cards, card_like


def unheard_sentences(generated: str, heard: str) -> list[str]:
    """The sentences of `generated` from the first one the caller did not hear to the end.

    `heard` is a word prefix of `generated` (what played before a barge-in), so counting words is enough.
    """
    heard_words = len(heard.split())
    sentences = [s for s in _SENTENCE_END.split(generated.strip()) if s]
    spoken = 0
    for index, sentence in enumerate(sentences):
        spoken += len(sentence.split())
        if spoken > heard_words:
            return sentences[index:]
    return []


def _version_of(model: TextStreamer | None) -> str:
    return model.version if model is not None else "template"


def _now() -> datetime:
    return datetime.now(UTC)


def _ms_since(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 1)
