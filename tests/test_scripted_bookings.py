"""The generation-based domain measure: scripted booking calls through the real brain, worded by a model."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from innkeeper.core.settings import Settings
from innkeeper.simulation.scripted_bookings import booking_scripts, scripted_bookings
from innkeeper.simulation.text_callers import TODAY


class Parrot:
    """Words each reply exactly as the brain's draft: every sentence is grounded."""

    version = "parrot"

    async def astream(self, messages: list[dict[str, str]], **options) -> AsyncIterator[str]:
        draft = messages[-1]["content"].split("Draft: ", 1)[1]
        for word in draft.split(" "):
            yield word + " "


class Drifter:
    """Says something unrelated to every draft, with a wrong number in it (what SmolLM2 did untuned)."""

    version = "drifter"

    async def astream(self, messages: list[dict[str, str]], **options) -> AsyncIterator[str]:
        yield "I'm sorry for your loss. We have 4 guests in the pool. "


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path / "home", today=TODAY, llm_first_sentence_ms=None)


def test_a_parrot_words_the_replies_and_every_call_books_what_its_caller_asked(settings):
    result = scripted_bookings(Parrot(), settings, n=4)

    assert result.calls == result.booked == result.exact == 4
    # the brain's questions are always its own template's words, so about half is the ceiling (measured 0.49)
    assert result.model_worded > 0 and result.model_worded_share > 0.4 and result.template_only > 0
    assert result.summary()["model_worded_share"] == round(result.model_worded_share, 4)


def test_a_drifting_model_words_nothing_and_the_bookings_still_come_out_right(settings):
    result = scripted_bookings(Drifter(), settings, n=4)

    assert result.model_worded == 0 and result.template > 0
    assert result.calls == result.booked == result.exact == 4


def test_without_a_model_the_templates_speak(settings):
    result = scripted_bookings(None, settings, n=2)

    assert (result.model_worded, result.booked, result.exact) == (0, 2, 2)


def test_booking_scripts_are_seeded_and_varied():
    first, again = booking_scripts(6, seed=3), booking_scripts(6, seed=3)
    assert first == again
    assert all(s.kind == "booking" and s.card is None for s in first)
    assert len({s.persona.last for s in first}) > 1 and first != booking_scripts(6, seed=4)
