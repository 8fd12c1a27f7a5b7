"""The grounding check between the language model and the caller.

A scripted text streamer stands in for the model here because the point is what the check
lets through, not how a model phrases things (the real model is exercised in test_llm and the
real-model conversation test).
"""

from __future__ import annotations

import asyncio

import pytest

from agent.dialogue.state import ReplyPlan
from agent.reply.wording import ReplyWriter, fact_tokens, split_sentences
from innkeeper.core.hotel import load_hotel
from innkeeper.core.settings import Settings


class ScriptedModel:
    version = "scripted"

    def __init__(self, text: str):
        self.text = text
        self.pieces_sent = 0

    async def astream(self, messages, *, max_new_tokens, temperature=0.0):
        for word in self.text.split(" "):
            self.pieces_sent += 1
            yield word + " "


@pytest.fixture(scope="module")
def hotel():
    return load_hotel(Settings().hotel_file)


READ_BACK = ReplyPlan(
    "read_back",
    [
        "Let me read that back: the Deluxe King for 2 guests, arriving Monday, December 7 and leaving "
        "Friday, December 11, 4 nights.",
        "The total is $954.48, including $78.81 in taxes.",
        "Shall I book it?",
    ],
)


def write(hotel, plan: ReplyPlan, model_text: str | None):
    model = ScriptedModel(model_text) if model_text is not None else None
    writer = ReplyWriter(hotel, model)

    async def run():
        return [chunk async for chunk in writer.stream(plan, "yes")]

    return asyncio.run(run()), model


def test_grounded_paraphrase_is_spoken_and_missing_facts_follow_from_the_template(hotel):
    chunks, _ = write(
        hotel, READ_BACK, "Great, the Deluxe King for 2 guests, Monday, December 7 to Friday, December 11, 4 nights."
    )
    assert chunks[0].source == "llm"
    text = " ".join(c.text for c in chunks)
    assert "$954.48" in text  # the model left out the price: the template sentence carries it
    assert text.endswith("Shall I book it?")
    assert text.count("Deluxe King") == 1  # the covered read-back sentence is not repeated


@pytest.mark.parametrize(
    "invented",
    [
        "Great, the Deluxe King for 4 guests.",  # a number from the draft, attached to the wrong thing
        "Your total is $900.",  # an invented price
        "You're booked for December 7.",  # claims a booking before the caller said yes
        "Please read me your card number.",
        "I'm sorry for your loss.",  # not in the draft at all
        "Which date works for you?",  # questions come from the plan only
    ],
)
def test_ungrounded_sentences_never_reach_the_caller(hotel, invented):
    chunks, model = write(hotel, READ_BACK, invented + " Then more text that should never be generated at all.")
    assert all(c.source == "template" for c in chunks)
    assert [c.text for c in chunks] == READ_BACK.sentences
    assert model.pieces_sent < len((invented + " Then more text that should never be generated at all.").split())


def test_policy_replies_bypass_the_model(hotel):
    plan = ReplyPlan("decline_harmful", ["I'm sorry, I can't help with that."])
    chunks, model = write(hotel, plan, "Sure! Here is how.")
    assert [c.text for c in chunks] == plan.sentences and model.pieces_sent == 0


def test_without_a_model_the_template_is_the_reply(hotel):
    chunks, _ = write(hotel, READ_BACK, None)
    assert [c.text for c in chunks] == READ_BACK.sentences


def test_fact_tokens_keep_units_and_calendar_words():
    facts = fact_tokens("Two nights from Friday, December 11, $1,034.50 total.", ("Deluxe King",))
    assert {"2 night", "friday", "december", "$1034.50"} <= facts
    assert "2 guest" not in facts


def test_split_sentences_keeps_the_unfinished_tail():
    done, rest = split_sentences("Hello there. How are")
    assert done == ["Hello there."] and rest == "How are"


class SlowModel(ScriptedModel):
    """Produces a grounded sentence, but too slowly for a spoken reply."""

    def __init__(self, text: str, delay_s: float):
        super().__init__(text)
        self.delay_s = delay_s
        self.closed = False

    async def astream(self, messages, *, max_new_tokens, temperature=0.0):
        try:
            for word in self.text.split(" "):
                await asyncio.sleep(self.delay_s)
                self.pieces_sent += 1
                yield word + " "
        finally:
            self.closed = True


def test_a_model_too_slow_for_its_first_sentence_is_replaced_by_the_template(hotel):
    model = SlowModel("Great, the Deluxe King for 2 guests.", delay_s=0.05)
    writer = ReplyWriter(hotel, model, first_sentence_budget_s=0.12)

    async def run():
        started = asyncio.get_running_loop().time()
        chunks = [chunk async for chunk in writer.stream(READ_BACK, "yes")]
        return chunks, asyncio.get_running_loop().time() - started

    chunks, elapsed = asyncio.run(run())
    assert [c.text for c in chunks] == READ_BACK.sentences and all(c.source == "template" for c in chunks)
    assert elapsed < 0.5 and model.closed  # gave up at the budget and stopped the generation
    fast = ReplyWriter(hotel, SlowModel("Great, the Deluxe King for 2 guests.", delay_s=0.0), first_sentence_budget_s=1)
    assert asyncio.run(_collect(fast))[0].source == "llm"


async def _collect(writer: ReplyWriter):
    return [chunk async for chunk in writer.stream(READ_BACK, "yes")]
