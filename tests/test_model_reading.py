"""The model's reading of a turn: decoded under the action's JSON schema, validated by code.

A tiny random model says nothing sensible, which is the point: whatever the weights, the constraint makes
every output parse as a `TurnAction`, and a reading that cannot be had falls back (None), never raises. A voice
call starts the reading at the caller's first pause (`ReadAhead`).
"""

import threading

import pytest

from agent.dialogue.read_ahead import ReadAhead
from agent.reply.llm import ChatModel
from agent.reply.understand import ModelReader
from agent.understanding.action import ActionIntent, TurnAction, action_json_schema


@pytest.fixture(scope="module")
def reader(tiny_model_dir, one_torch_thread) -> ModelReader:
    return ModelReader(ChatModel(tiny_model_dir), max_new_tokens=160)


def test_schema_names_every_intent_and_slot_the_issue_lists():
    schema = action_json_schema()
    intents = set(schema["$defs"]["ActionIntent"]["enum"])
    assert intents == {"book", "modify", "cancel", "ask", "quote", "confirm", "deny", "close", "transfer", "other"}
    slots = set(schema["$defs"]["ActionSlots"]["properties"])
    assert {"check_in", "check_out", "nights", "adults", "children", "room_type", "name", "phone"} <= slots


def test_a_random_model_still_emits_a_valid_action_under_the_constraint(reader):
    readings = [reader.read(None, "I need a room for two next Friday."), reader.read("How many nights?", "Three.")]
    for action in readings:
        # None only when the token budget cut the JSON off; otherwise always a valid action
        assert action is None or isinstance(action, TurnAction)
    assert any(isinstance(a, TurnAction) for a in readings)


def test_validation_drops_out_of_range_values():
    with pytest.raises(ValueError):
        TurnAction.model_validate({"intents": ["book"], "slots": {"nights": 0}})
    with pytest.raises(ValueError):
        TurnAction.model_validate({"intents": ["fly"], "slots": {}})
    action = TurnAction.model_validate({"intents": ["book", "ask"], "slots": {"adults": 2, "check_in": "next Friday"}})
    assert action.intents == [ActionIntent.BOOK, ActionIntent.ASK] and action.slots.adults == 2


def test_a_failing_model_falls_back_to_none(reader, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(reader.chat, "complete", broken)
    assert reader.read(None, "Hello") is None


def test_a_turn_read_ahead_is_taken_when_its_words_are_final_and_dropped_when_they_change():
    calls: list[tuple[str, str]] = []
    go = threading.Event()

    def read(agent_text, caller_text):
        calls.append((threading.current_thread().name, caller_text))
        go.wait(5)
        return TurnAction(intents=[ActionIntent.ASK]) if "parking" in caller_text else None

    ahead = ReadAhead(read)
    ahead.prefetch("How can I help?", "Do you have parking?")
    go.set()
    assert ahead("How can I help?", "Do you have parking?") == TurnAction(intents=[ActionIntent.ASK])
    assert ahead.hits == 1 and calls == [("read-ahead_0", "Do you have parking?")]  # read once, ahead
    # the caller went on talking: the guess was for other words, so the final ones are read on the spot
    ahead.prefetch(None, "A room for")
    assert ahead(None, "A room for two nights.") is None and ahead.hits == 1
    assert (threading.current_thread().name, "A room for two nights.") in calls
    ahead.close()
