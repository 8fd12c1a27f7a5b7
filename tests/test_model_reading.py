"""The model's reading of a turn: decoded under the action's JSON schema, validated by code.

A tiny random model says nothing sensible, which is the point: whatever the weights, the constraint makes
every output parse as a `TurnAction`, and a reading that cannot be had falls back (None), never raises. A voice
call starts the reading at the caller's first pause (`ReadAhead`).
"""

import threading
import time

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


# ------------------------------------------------------------------------ the calls' shared model queue


def _blocked_queue(**options):
    """A one-worker queue whose worker is held on a first job until the returned event is set."""
    from agent.dialogue.model_queue import ModelQueue

    queue, release, started = ModelQueue(**options), threading.Event(), threading.Event()
    queue.submit(lambda: started.set() or release.wait(5), waited_on=True)
    assert started.wait(5)
    return queue, release


def test_a_turn_a_caller_waits_on_goes_before_every_guess_and_a_guess_is_hurried_when_its_turn_ends():
    queue, release = _blocked_queue()
    order: list[str] = []
    jobs = {name: (lambda name=name: order.append(name) or name) for name in ("guess-1", "guess-2", "final", "late")}
    futures = [queue.submit(jobs[n], waited_on=n in ("final",)) for n in ("guess-1", "guess-2", "final")]
    futures.append(queue.submit(jobs["late"], waited_on=False))
    queue.hurry(futures[1])  # guess-2's turn ended: its caller waits now
    release.set()
    assert [f.result(5) for f in futures] == ["guess-1", "guess-2", "final", "late"]
    assert order == ["final", "guess-2", "guess-1", "late"]


def test_guesses_past_the_bound_are_dropped_oldest_first_and_a_failure_reaches_its_caller():
    queue, release = _blocked_queue(max_guesses=2)
    guesses = [queue.submit(lambda i=i: i, waited_on=False) for i in range(3)]

    def broken():
        raise RuntimeError("model failed")

    failing = queue.submit(broken, waited_on=True)
    release.set()
    assert guesses[0].cancelled() and queue.dropped == 1
    assert [g.result(5) for g in guesses[1:]] == [1, 2]
    with pytest.raises(RuntimeError, match="model failed"):
        failing.result(5)
    assert queue.submit(lambda: "still working", waited_on=True).result(5) == "still working"


def test_a_caller_waits_no_longer_than_the_budget_behind_other_calls_work():
    queue, release = _blocked_queue(wait_s=0.2)  # another call's reading holds the model
    ran: list[str] = []
    read = ReadAhead(lambda agent_text, caller_text: ran.append(caller_text) or None, queue)
    started = time.monotonic()
    assert read(None, "Two nights from Friday.") is None  # the rules read this turn
    waited = time.monotonic() - started
    release.set()
    assert 0.2 <= waited < 2.0 and queue.late == 1
    assert queue.submit(lambda: "next turn", waited_on=True).result(5) == "next turn"
    assert ran == []  # the reading nobody waits for any more was dropped, not run late


def test_calls_sharing_a_queue_read_a_finished_turn_before_another_calls_guess():
    from agent.dialogue.model_queue import ModelQueue

    order: list[str] = []
    queue = ModelQueue()

    def read(agent_text, caller_text):
        order.append(caller_text)
        return None

    first, second = ReadAhead(read, queue), ReadAhead(read, queue)
    hold = threading.Event()
    queue.submit(lambda: hold.wait(5), waited_on=True)  # the model is busy with some other turn
    second.prefetch(None, "A guess at the second call's words")
    answer = threading.Thread(target=lambda: first(None, "The first caller has finished."))
    answer.start()
    time.sleep(0.2)  # the first call's turn is queued behind the busy model, as a waited-on turn
    hold.set()
    answer.join(5)
    assert second(None, "A guess at the second call's words") is None and second.hits == 1
    assert order == ["The first caller has finished.", "A guess at the second call's words"]
    first.close()
    second.close()
