"""Operator corrections of the agent's reading: stored against caller turns only, listed, taken by the nightly
curation as redacted training examples of the reading (never from a call it may not learn from), and
reachable from the command line."""

from __future__ import annotations

import json
from datetime import date

import pytest
from transformers import AutoTokenizer
from typer.testing import CliRunner

from agent.call.calllog import CallLog
from agent.call.review import Corrections, NotACallerTurn
from agent.understanding.action import ActionIntent, ActionSlots, TurnAction
from innkeeper.cli import app
from innkeeper.cli import common as cli_common
from innkeeper.core.db.schema import utcnow
from innkeeper.core.settings import Settings, get_settings
from tuning.data.actions import encode_action_examples, example_from_json, example_json
from tuning.data.curate import curate
from tuning.data.pii import NAME, PHONE

TURNS = [
    ("agent", "Thank you for calling The Harbor View Inn. How can I help you today?"),
    ("caller", "This is Priya Raman, 207 555 0199, I'd like a room from the fifth for a couple of nights."),
    ("agent", "May I have your first and last name?"),
    ("caller", "I just told you."),
    ("agent", "Sorry about that. Goodbye."),
]
RIGHT_READING = TurnAction(
    intents=[ActionIntent.BOOK],
    slots=ActionSlots(check_in="the fifth", nights=2, name="Priya Raman", phone="207 555 0199"),
)


def logged_call(db, turns=TURNS, *, training: bool = True) -> str:
    log = CallLog(db)
    call_id = log.start_call(channel="text", caller_number="+12075550199")
    for role, text in turns:
        now = utcnow()
        log.log_turn(call_id, role=role, text=text, started_at=now, ended_at=now)
    log.end_call(call_id, reason="completed")
    if not training:
        log.set_training(call_id, included=False)
    return call_id


@pytest.fixture
def settings(db, tmp_path) -> Settings:
    return Settings(home=tmp_path, today=date(2026, 11, 26), database_url=db.engine.url.render_as_string(False))


def test_a_correction_names_a_caller_turn_and_keeps_who_and_when(db):
    call_id = logged_call(db)
    corrections = Corrections(db)
    stored = corrections.add(call_id, 1, RIGHT_READING, author="dana", note="name and phone in one sentence")
    assert (stored.call_id, stored.turn_index, stored.author) == (call_id, 1, "dana")
    assert stored.action == RIGHT_READING and stored.created_at.tzinfo is not None
    with pytest.raises(NotACallerTurn, match="agent"):
        corrections.add(call_id, 2, RIGHT_READING, author="dana")
    with pytest.raises(NotACallerTurn, match="no such turn"):
        corrections.add(call_id, 99, RIGHT_READING, author="dana")
    with pytest.raises(ValueError, match="author"):
        corrections.add(call_id, 1, RIGHT_READING, author=" ")
    other = logged_call(db)
    corrections.add(other, 3, TurnAction(intents=[ActionIntent.OTHER]), author="lee")
    assert [c.call_id for c in corrections.list()] == [call_id, other]
    assert [c.turn_index for c in corrections.list(call_id=other)] == [3]


def test_curation_turns_corrections_into_redacted_reading_examples(db, settings, tiny_model_dir):
    call_id = logged_call(db)
    excluded = logged_call(db, [*TURNS[:2], ("agent", "Anything else?")], training=False)
    Corrections(db).add(call_id, 1, RIGHT_READING, author="dana")
    Corrections(db).add(excluded, 1, RIGHT_READING, author="dana")

    report = curate(db, settings, since=None)

    assert report.counts["corrected_readings"] == 1  # the excluded call teaches nothing, corrections included
    (example,) = report.readings
    assert example.example_id.startswith(call_id)
    assert example.agent_text == TURNS[0][1]
    assert "Priya" not in example.caller_text and "555" not in example.caller_text
    assert NAME in example.caller_text and PHONE in example.caller_text
    slots = example.action.slots
    assert (slots.name, slots.phone, slots.check_in, slots.nights) == (NAME, PHONE, "the fifth", 2)
    # stored in the run's frozen dataset and read back the same; encoded with loss on the action only
    assert example_from_json(json.loads(json.dumps(example_json(example)))) == example
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    (encoded,) = encode_action_examples([example], tokenizer, max_tokens=4096)  # the tiny vocabulary spells words out
    learned = [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != -100]
    assert json.loads(tokenizer.decode(learned).strip().removesuffix("<|im_end|>")) == example_json(example)["action"]


@pytest.fixture
def cli(db, tmp_path, monkeypatch):
    monkeypatch.setenv("INNKEEPER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("INNKEEPER_DATABASE_URL", db.engine.url.render_as_string(False))
    monkeypatch.setattr(cli_common.console, "width", 200)
    get_settings.cache_clear()
    yield CliRunner()
    get_settings.cache_clear()


def test_the_cli_stores_a_correction_and_refuses_bad_ones(cli, db):
    call_id = logged_call(db)
    action = RIGHT_READING.model_dump_json(exclude_defaults=True)
    stored = cli.invoke(app, ["review", "correct", call_id, "1", "--action", action, "--by", "dana"])
    assert stored.exit_code == 0, stored.output
    listed = json.loads(cli.invoke(app, ["review", "list", "--json"]).stdout)
    assert [(r["call_id"], r["turn"], r["author"]) for r in listed] == [(call_id, 1, "dana")]
    assert TurnAction.model_validate(listed[0]["action"]) == RIGHT_READING

    not_json = cli.invoke(app, ["review", "correct", call_id, "1", "--action", "{nope", "--by", "dana"])
    assert not_json.exit_code == 2 and "not a valid TurnAction" in not_json.output
    zero_guests = cli.invoke(
        app, ["review", "correct", call_id, "1", "--action", '{"slots": {"adults": 0}}', "--by", "dana"]
    )
    assert zero_guests.exit_code == 2
    agent_turn = cli.invoke(app, ["review", "correct", call_id, "2", "--action", action, "--by", "dana"])
    assert agent_turn.exit_code == 1 and "caller turn" in agent_turn.output
    assert len(json.loads(cli.invoke(app, ["review", "list", "--json"]).stdout)) == 1
