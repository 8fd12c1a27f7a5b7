"""Grounded wording: the LLM phrases the reply plan, and only grounded sentences reach the caller.

The dialogue manager decides *what* to say as exact template sentences. Here the language
model gets those sentences, the caller's words and the recent turns, and its streamed tokens
are cut into sentences. Each sentence passes a grounding check before it is spoken: every
fact in it (number, date, price, room, code) must appear in the plan or the caller's words,
and it may not ask its own questions, promise a booking, or touch card numbers. Whatever the
accepted sentences leave out — a fact not yet said, the plan's closing question — follows from
the template, so the caller always hears the exact facts while the model supplies the tone.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import EllipsisType
from typing import Protocol

from agent.dialogue.state import ReplyPlan
from innkeeper.core.codes import CODE_PATTERN
from innkeeper.core.hotel import HotelProfile

# Acts whose exact wording is a policy: the model never rephrases them.
TEMPLATE_ONLY_ACTS = frozenset(
    {
        "decline_harmful",
        "decline_off_topic",
        "transfer",
        "card_warning",
        "bad_input",
        "ended",
        "verify_failed",
        "not_found",
        "ask_code",
        "ask_surname",
        "confirm_again",
        "goodbye",
    }
)
MAX_MODEL_SENTENCES = 2
MAX_SENTENCE_WORDS = 30

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?])$")
_NUMBER_WORDS = {
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
    "eleven": "11",
    "twelve": "12",
    "first": "1",
    "second": "2",
    "third": "3",
}
_CALENDAR = (
    "january february march april may june july august september october november december "
    "monday tuesday wednesday thursday friday saturday sunday"
).split()
_UNITS = {
    "night",
    "guest",
    "adult",
    "child",
    "people",
    "person",
    "room",
    "minute",
    "mile",
    "dollar",
    "hour",
    "am",
    "pm",
}
# Words any receptionist may add without stating a fact; everything else must come from the draft.
_FUNCTION_WORDS = set(
    "the and for you your are was were our with that this will would can could have has had not but from "
    "into onto about just all any its it's i'm i'll we'll we're you're you'll that's there's here's let "
    "great wonderful sure course happy help thank thanks perfect lovely glad absolutely certainly yes okay "
    "right got noted sounds good well welcome pleasure fine alright".split()
)
_FORBIDDEN = re.compile(
    r"\b(card|credit|debit|cvv|cvc|expir\w*|as an ai|language model|assistant|smollm|hugging ?face|http\S*|www\.\S*"
    r"|\S+@\S+|password)\b",
    re.I,
)
_CLAIMS = re.compile(r"\b(booked|confirmed|reserved|cancell?ed|changed|updated|all set|done)\b", re.I)
_CLAIM_ACTS = frozenset({"booked", "modified", "cancelled"})


class TextStreamer(Protocol):
    """What wording needs from a language model (agent.reply.llm.ChatModel satisfies it)."""

    version: str

    def astream(
        self, messages: list[dict[str, str]], *, max_new_tokens: int, temperature: float = 0.0
    ) -> AsyncIterator[str]: ...


@dataclass(frozen=True)
class ReplyChunk:
    """One speakable piece of the reply, and where its words came from."""

    text: str
    source: str  # "llm" or "template"


def fact_tokens(text: str, room_names: tuple[str, ...] = ()) -> set[str]:
    """The checkable facts in a sentence: numbers (with their unit), calendar words, rooms and codes.

    A number is kept with the unit that follows it ("4 night"), so "4 guests" is not grounded
    by a draft that only says "4 nights".
    """
    lowered = text.lower()
    for word, digit in _NUMBER_WORDS.items():
        lowered = re.sub(rf"\b{word}\b", digit, lowered)
    tokens = set()
    for number, unit in re.findall(r"(\$?\d[\d,]*(?:[.:]\d+)?)(?:st|nd|rd|th)?(?:\s+([a-z]+))?", lowered):
        unit = unit.rstrip("s") if unit and unit.rstrip("s") in _UNITS else ""
        tokens.add(f"{number.replace(',', '')} {unit}".strip())
    tokens |= {w for w in _CALENDAR if re.search(rf"\b{w}\b", lowered)}
    tokens |= {name.lower() for name in room_names if name.lower() in lowered}
    tokens |= set(CODE_PATTERN.findall(text))
    return tokens


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z']+", text.lower()) if w not in _FUNCTION_WORDS and len(w) > 2}


def split_sentences(text: str) -> tuple[list[str], str]:
    """Complete sentences in `text`, and the unfinished remainder."""
    parts = _SENTENCE_END.split(text)
    *done, rest = parts if parts else [""]
    return [p.strip() for p in done if p.strip()], rest


class ReplyWriter:
    """Turns a `ReplyPlan` into streamed, grounded reply chunks."""

    def __init__(
        self,
        hotel: HotelProfile,
        llm: TextStreamer | None,
        *,
        max_new_tokens: int = 48,
        temperature: float = 0.0,
        first_sentence_budget_s: float | None = None,
    ):
        self.hotel = hotel
        self.llm = llm
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.first_sentence_budget_s = first_sentence_budget_s
        self.room_names = tuple(word for room in hotel.room_types for word in (room.name, room.code))

    async def stream(
        self,
        plan: ReplyPlan,
        caller_text: str,
        clock: dict[str, float] | None = None,
        *,
        llm: TextStreamer | EllipsisType | None = ...,
    ) -> AsyncIterator[ReplyChunk]:
        """Grounded model sentences while they last, then the template's remainder.

        `clock`, when given, receives `llm_first_token` (time.perf_counter) for per-stage timings.
        `llm` words this one reply instead of the writer's own model (`...`): a conversation passes the
        model it took at the start of the turn, so a model swap mid-turn never changes the turn's words.
        """
        model = self.llm if llm is ... else llm
        spoken: list[str] = []
        if model is not None and plan.act not in TEMPLATE_ONLY_ACTS:
            async for sentence in self._grounded_model_sentences(model, plan, caller_text, clock):
                spoken.append(sentence)
                yield ReplyChunk(sentence, "llm")
        for sentence in self._template_remainder(plan, spoken):
            yield ReplyChunk(sentence, "template")

    async def _grounded_model_sentences(
        self, model: TextStreamer, plan: ReplyPlan, caller_text: str, clock: dict[str, float] | None
    ) -> AsyncIterator[str]:
        allowed = fact_tokens(plan.text, self.room_names)
        vocabulary = content_words(plan.text + " " + self.hotel.name)
        buffer, accepted = "", 0
        stream = model.astream(
            self._messages(plan, caller_text),
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
        )
        deadline = None if self.first_sentence_budget_s is None else time.monotonic() + self.first_sentence_budget_s
        pending: asyncio.Future[str] | None = None
        try:
            while True:
                pending = asyncio.ensure_future(anext(stream))
                timeout = None if deadline is None or accepted else max(deadline - time.monotonic(), 0.0)
                done, _ = await asyncio.wait({pending}, timeout=timeout)
                if not done:
                    return  # too slow to be worth the caller's wait: the template carries the reply
                finished, pending = pending, None
                try:
                    piece = finished.result()
                except StopAsyncIteration:
                    return
                if clock is not None and "llm_first_token" not in clock:
                    clock["llm_first_token"] = time.perf_counter()
                buffer += piece
                sentences, buffer = split_sentences(buffer)
                for sentence in sentences:
                    if not self._is_grounded(sentence, allowed, vocabulary, plan.act):
                        return  # the model drifted: stop generating, the template carries the reply
                    accepted += 1
                    yield sentence
                    if accepted >= MAX_MODEL_SENTENCES:
                        return
        finally:
            # Stopping generation waits for the model's current step (a whole prompt prefill at first):
            # that happens in the background so the template reply is not held up by it.
            _close_later(stream, pending)

    def _is_grounded(self, sentence: str, allowed: set[str], vocabulary: set[str], act: str) -> bool:
        words = sentence.split()
        if not words or len(words) > MAX_SENTENCE_WORDS or not re.search(r"[A-Za-z]", sentence):
            return False
        if sentence.rstrip().endswith("?") or _FORBIDDEN.search(sentence):
            return False
        if _CLAIMS.search(sentence) and act not in _CLAIM_ACTS:
            return False
        novel = content_words(sentence) - vocabulary
        return not novel and fact_tokens(sentence, self.room_names) <= allowed

    def _template_remainder(self, plan: ReplyPlan, spoken: list[str]) -> list[str]:
        said = fact_tokens(" ".join(spoken), self.room_names)
        remainder = []
        for sentence in plan.sentences:
            facts = fact_tokens(sentence, self.room_names)
            is_question = sentence.rstrip().endswith("?")
            if is_question or not spoken or (facts and not facts <= said):
                remainder.append(sentence)
        return remainder

    def _messages(self, plan: ReplyPlan, caller_text: str) -> list[dict[str, str]]:
        """A few-shot prompt: small models follow a shown pattern far better than an instruction."""
        messages = [{"role": "system", "content": _SYSTEM_PROMPT}]
        for caller, draft, reply in _EXAMPLES:
            messages += [
                {"role": "user", "content": f"Caller: {caller}\nDraft: {draft}"},
                {"role": "assistant", "content": reply},
            ]
        messages.append({"role": "user", "content": f"Caller: {caller_text}\nDraft: {plan.text}"})
        return messages


_closing: set[asyncio.Task[None]] = set()  # strong references: the loop keeps only weak ones


def _close_later(stream: AsyncIterator[str], pending: asyncio.Future[str] | None) -> None:
    """Stop a model stream without waiting for it: cancel the pending read, then close the generator."""

    async def close() -> None:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        with contextlib.suppress(Exception):
            await stream.aclose()  # type: ignore[attr-defined]

    task = asyncio.get_running_loop().create_task(close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


_SYSTEM_PROMPT = (
    "You are a hotel receptionist on the phone. Say the draft reply in your own friendly words, "
    "keeping every fact exactly. One or two short sentences."
)
_EXAMPLES = (
    (
        "I need a room for tonight.",
        "Arriving Thursday, November 26. How many nights will you stay?",
        "Of course! You'd arrive Thursday, November 26. How many nights will you stay?",
    ),
    (
        "Do you have a gym?",
        "The fitness room is open 24 hours. Is there anything else I can help with?",
        "Yes, our fitness room is open 24 hours. Anything else I can help with?",
    ),
)
