"""`innkeeper eval understanding`: annotated dialogues in the shared sets' formats, scored per slot.

The dialogues here are written for the test in the two formats (SGD frames with canonical values; MultiWOZ
belief states on the system turn after each user turn), so the expected figures are known by hand.
"""

import json
from datetime import date
from pathlib import Path

from typer.testing import CliRunner

from agent.dialogue.tracker import StayTracker
from innkeeper.cli import app
from innkeeper.core.hotel import load_hotel
from innkeeper.core.settings import Settings
from tuning.evaluate import understanding as und

FRIDAY = "2019-03-01"


def _sgd_user(text: str, state: dict[str, list[str]], actions: list[tuple[str, str, str]] = ()) -> dict:
    return {
        "speaker": "USER",
        "utterance": text,
        "frames": [
            {
                "service": "Hotels_2",
                "actions": [
                    {"act": "INFORM", "slot": s, "values": [v], "canonical_values": [c]} for s, v, c in actions
                ],
                "state": {"slot_values": state},
            }
        ],
    }


def _sgd_system(text: str) -> dict:
    return {"speaker": "SYSTEM", "utterance": text, "frames": [{"service": "Hotels_2", "actions": []}]}


SGD_DIALOGUE = {
    "dialogue_id": "t_1",
    "turns": [
        _sgd_user("I need a house in Denver.", {}),
        _sgd_system("When do you check in, and how many of you are there?"),
        _sgd_user(
            "We are three, arriving next Tuesday.",
            {"number_of_adults": ["3"], "check_in_date": ["next Tuesday"]},
            [("number_of_adults", "3", "3"), ("check_in_date", "next Tuesday", "2019-03-05")],
        ),
        _sgd_system("And when will you leave?"),
        _sgd_user(
            "On the 9th.",
            {"number_of_adults": ["3"], "check_in_date": ["next Tuesday"], "check_out_date": ["the 9th"]},
            [("check_out_date", "the 9th", "2019-03-09")],
        ),
    ],
}

MULTIWOZ_DIALOGUE = {
    "dialogue_id": "m_1.json",
    "turns": [
        {"speaker": "USER", "utterance": "Book it for 2 people, 3 nights from Monday."},
        {
            "speaker": "SYSTEM",
            "utterance": "Done.",
            "belief_state": {"hotel": {"book": {"booked": [], "stay": "3", "day": "monday", "people": "2"}}},
        },
    ],
}


def _write(path: Path, *dialogues: dict) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in dialogues))
    return path


def test_gold_comes_from_the_dialogue_annotations():
    sgd = und.parse_dialogue(SGD_DIALOGUE)
    assert sgd.source == "sgd"
    assert [t.turn for t in sgd.user_turns] == [0, 2, 4]
    assert sgd.user_turns[0].gold == {}
    assert sgd.user_turns[1].agent_text.startswith("When do you check in")
    assert sgd.user_turns[1].gold == {"number_of_adults": {3}, "check_in_date": {"2019-03-05"}}
    assert sgd.user_turns[-1].gold["check_out_date"] == {"2019-03-09"}
    woz = und.parse_dialogue(MULTIWOZ_DIALOGUE)
    assert woz.source == "multiwoz"
    assert woz.user_turns[0].gold == {
        "check_in_weekday": {"monday"},
        "number_of_adults": {2},
        "number_of_days": {3},
    }


def test_the_rules_track_the_stay_across_turns_with_the_agents_question_in_mind():
    tracker = StayTracker(load_hotel(Settings().hotel_file), date(2019, 3, 1))
    assert tracker.hear(None, "I'd like a room next Tuesday.")["check_in_date"] == "2019-03-05"
    state = tracker.hear("How many nights will you stay?", "Three.")
    assert state["number_of_days"] == 3 and state["check_out_date"] == "2019-03-08"
    state = tracker.hear("How many guests?", "Two adults.")
    assert state["number_of_adults"] == 2
    # the arrival moved after a departure date was named: the departure stays
    tracker = StayTracker(load_hotel(Settings().hotel_file), date(2019, 3, 1))
    tracker.hear(None, "I'll stay until the 9th.")
    state = tracker.hear("When will you arrive?", "Actually I arrive on the 4th.")
    assert (state["check_in_date"], state["check_out_date"], state["number_of_days"]) == ("2019-03-04", "2019-03-09", 5)
    # both ends named as dates, then the arrival moves: the departure date stays, not the length
    tracker = StayTracker(load_hotel(Settings().hotel_file), date(2019, 3, 1))
    tracker.hear(None, "From the 4th to the 9th, please.")
    state = tracker.hear("Shall I book it?", "No, check in on the 6th.")
    assert (state["check_in_date"], state["check_out_date"]) == ("2019-03-06", "2019-03-09")
    # the length named in nights, then the arrival moves: the length stays
    tracker = StayTracker(load_hotel(Settings().hotel_file), date(2019, 3, 1))
    tracker.hear(None, "From the 4th for 5 nights.")
    state = tracker.hear("Shall I book it?", "No, check in on the 6th.")
    assert (state["check_in_date"], state["number_of_days"]) == ("2019-03-06", 5)


def test_cli_writes_a_line_per_caller_turn_and_scores_each_slot(tmp_path):
    files = [_write(tmp_path / "sgd.jsonl", SGD_DIALOGUE), _write(tmp_path / "woz.jsonl", MULTIWOZ_DIALOGUE)]
    out = tmp_path / "pred.jsonl"
    result = CliRunner().invoke(
        app, ["eval", "understanding", *map(str, files), "--today", FRIDAY, "--json", str(out)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(line["dialogue_id"], line["turn"]) for line in lines] == [
        ("t_1", 0),
        ("t_1", 2),
        ("t_1", 4),
        ("m_1.json", 0),
    ]
    assert set(lines[0]["state"]) == {"check_in_date", "check_out_date", "number_of_days", "number_of_adults"}
    assert lines[2]["state"] == {
        "check_in_date": "2019-03-05",
        "check_out_date": "2019-03-09",
        "number_of_days": 4,
        "number_of_adults": 3,
    }
    assert lines[3]["state"]["number_of_adults"] == 2 and lines[3]["state"]["number_of_days"] == 3
    assert "check_out_date" in result.output and "joint" in result.output


def test_a_wrong_value_counts_against_its_slot():
    dialogue = und.parse_dialogue(SGD_DIALOGUE)
    wrong = {"check_in_date": "2019-03-06", "check_out_date": None, "number_of_days": None, "number_of_adults": 3}
    scores = und.Scores()
    for user_turn in dialogue.user_turns:
        scores.add(dialogue, user_turn, und.Prediction(dialogue.dialogue_id, user_turn.turn, wrong))
    table = scores.as_dict()
    assert table["check_in_date"] == {"right": 0, "scored": 2, "accuracy": 0.0}
    assert table["number_of_adults"]["accuracy"] == 1.0
    assert table["check_out_date"]["right"] == 0


def test_bad_input_is_a_clear_error_not_a_traceback(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"dialogue_id": "x", "turns": [\n')
    result = CliRunner().invoke(app, ["eval", "understanding", str(bad), "--today", FRIDAY])
    assert result.exit_code == 2 and "not a JSON line" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["eval", "understanding", str(bad), "--today", "tomorrow"])
    assert result.exit_code == 2
    result = CliRunner().invoke(app, ["eval", "understanding", str(bad), "--today", FRIDAY, "--model", "magic"])
    assert result.exit_code == 2 and "unknown understanding" in " ".join(result.output.split())


def test_a_model_directory_reads_each_turn_with_the_rules_second(tmp_path, tiny_model_dir, one_torch_thread):
    # a random model proposes anything; what validates is used, the rest falls back to the rules, and the
    # output keeps its shape
    files = [_write(tmp_path / "sgd.jsonl", SGD_DIALOGUE)]
    out = tmp_path / "pred.jsonl"
    args = ["eval", "understanding", *map(str, files), "--today", FRIDAY, "--json", str(out)]
    result = CliRunner().invoke(app, [*args, "--model", str(tiny_model_dir)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 3 and set(lines[-1]["state"]) == set(und.TRACKED)


def test_the_table_compares_the_rules_with_the_model_first_and_second_from_one_reading_per_turn(tmp_path, monkeypatch):
    from agent.understanding.action import ActionSlots, TurnAction
    from innkeeper.cli import evaluate

    read = []

    def reader_of(settings, model):  # a reader that says the party is nine, and counts how often it is asked
        def reader(agent_text, caller_text):
            read.append(caller_text)
            return TurnAction(slots=ActionSlots(adults=9))

        return reader

    monkeypatch.setattr(evaluate, "_model_reader", reader_of)
    dialogue = {**SGD_DIALOGUE, "turns": [dict(t) for t in SGD_DIALOGUE["turns"]]}
    dialogue["turns"][2]["utterance"] = "We are three, not nine, arriving next Tuesday."  # the model's 9 is said
    files, scores, errors = [_write(tmp_path / "sgd.jsonl", dialogue)], tmp_path / "scores.json", tmp_path / "e.jsonl"
    args = [
        "eval",
        "understanding",
        *map(str, files),
        "--today",
        FRIDAY,
        "--scores",
        str(scores),
        "--errors",
        str(errors),
    ]
    result = CliRunner().invoke(app, [*args, "--model", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len(read) == 3  # three caller turns, each read once for all three columns
    columns = json.loads(scores.read_text())["scores"]
    assert list(columns) == ["rules", "model first", "rules first"]
    adults = {name: column["number_of_adults"]["accuracy"] for name, column in columns.items()}
    assert adults["rules"] == adults["rules first"] == 1.0 and adults["model first"] < 1.0, columns
    assert all(len(line) <= 80 for line in result.output.splitlines())
    # the turns some column got wrong, with the words and every column's state: here the model's 9 guests
    wrong = [json.loads(line) for line in errors.read_text().splitlines()]
    assert [row["turn"] for row in wrong] == [2, 4] and wrong[0]["caller"].startswith("We are three, not nine")
    assert wrong[0]["gold"]["number_of_adults"] == ["3"]
    assert wrong[0]["columns"]["model first"] == {
        "state": {"check_in_date": "2019-03-05", "check_out_date": None, "number_of_days": None, "number_of_adults": 9},
        "wrong": ["number_of_adults"],
    }
    assert wrong[0]["columns"]["rules"]["wrong"] == []


def test_the_models_reading_comes_first_where_it_validates_and_disagreements_are_noted():
    from agent.understanding.action import ActionSlots, TurnAction

    readings = {
        "We are three, four with the baby, from next Tuesday.": TurnAction(
            slots=ActionSlots(check_in="next Tuesday", adults=4)
        ),
        "Until the 9th.": TurnAction(slots=ActionSlots(check_out="banana")),  # does not name a date
        "For two nights.": None,  # the model failed: the rules read the turn
    }
    tracker = StayTracker(load_hotel(Settings().hotel_file), date(2019, 3, 1), lambda agent, caller: readings[caller])
    state = tracker.hear(None, "We are three, four with the baby, from next Tuesday.")
    assert state["check_in_date"] == "2019-03-05" and state["number_of_adults"] == 4  # the model's 4 over the rules' 3
    assert tracker.state.disagreements == ["guests"]
    state = tracker.hear("When will you leave?", "Until the 9th.")
    assert state["check_out_date"] == "2019-03-09"  # "banana" fell back to the rules
    state = tracker.hear("Anything else?", "For two nights.")
    assert state["number_of_days"] == 2 and tracker.disagreements == 1


def test_a_count_of_rooms_stars_money_a_time_or_the_other_slot_does_not_vouch_for_the_models_count():
    from agent.understanding.action import ActionSlots, TurnAction

    readings = {
        "Two nights from the 4th, please.": TurnAction(slots=ActionSlots(nights=2)),
        "Oh, and we need 3 rooms.": TurnAction(slots=ActionSlots(nights=3, adults=3)),  # the number counts rooms
        "Is that the 4-star one? We are 4 adults.": TurnAction(slots=ActionSlots(adults=4)),  # said as guests too
        "Could they do just one night? We land at 11:00.": TurnAction(slots=ActionSlots(nights=11, adults=1)),
    }
    tracker = StayTracker(load_hotel(Settings().hotel_file), date(2019, 3, 1), lambda agent, caller: readings[caller])
    tracker.hear(None, "Two nights from the 4th, please.")
    state = tracker.hear("Anything else?", "Oh, and we need 3 rooms.")
    assert (state["number_of_days"], state["number_of_adults"]) == (2, None)
    state = tracker.hear("Anything else?", "Is that the 4-star one? We are 4 adults.")
    assert state["number_of_adults"] == 4
    # "one night" is a length, not a party of one; "11:00" is a time
    state = tracker.hear("Anything else?", "Could they do just one night? We land at 11:00.")
    assert (state["number_of_days"], state["number_of_adults"]) == (1, 4)


# --------------------------------------------------------------------------------------------- intents


def _sgd_acts(text: str, *acts: tuple[str, str]) -> dict:
    return {
        "speaker": "USER",
        "utterance": text,
        "frames": [{"service": "Hotels_1", "actions": [{"act": a, "slot": s, "values": []} for a, s in acts]}],
    }


INTENT_DIALOGUE = {
    "dialogue_id": "i_1",
    "turns": [
        _sgd_acts("Could you reserve me a room somewhere quiet?", ("INFORM_INTENT", "intent")),
        _sgd_system("Sure. I found the Lakeside Lodge; shall I book it?"),
        _sgd_acts("Yes, and how much is it?", ("AFFIRM", ""), ("REQUEST", "price")),
        _sgd_system("It is $120 a night. Anything else?"),
        _sgd_acts("No, thank you, goodbye.", ("NEGATE", ""), ("GOODBYE", "")),
    ],
}


def test_intents_are_scored_per_intent_against_the_annotated_acts():
    from agent.understanding.action import ActionIntent as A
    from tuning.evaluate import intents as ev

    examples = list(ev.sgd_action_examples(INTENT_DIALOGUE))
    gold = [set(e.action.intents) for e in examples]
    assert gold == [{A.BOOK}, {A.CONFIRM, A.QUOTE}, {A.DENY, A.CLOSE}]
    # a reader that finds exactly the annotation, then one that misses the close and calls the first turn a question
    perfect = iter(frozenset(g) for g in gold)
    scores = ev.score_intents(examples, lambda agent, caller: next(perfect))
    assert scores.exact_share == 1.0 and all(c.f1 in (1.0, None) for c in scores.per_intent.values())
    found = iter([frozenset({A.ASK}), frozenset({A.CONFIRM, A.QUOTE}), None])
    scores = ev.score_intents(examples, lambda agent, caller: next(found))
    book, ask, close = (scores.per_intent[i] for i in (A.BOOK, A.ASK, A.CLOSE))
    assert (book.false_negative, ask.false_positive, close.false_negative) == (1, 1, 1)
    assert scores.exact == 1 and scores.failed == 1 and ask.precision == 0.0 and book.recall == 0.0


def test_the_rules_intents_name_what_the_dialogue_manager_acts_on():
    from agent.understanding.action import ActionIntent as A
    from tuning.evaluate.intents import rules_intents

    assert rules_intents(None, "Yes, please.") == {A.CONFIRM}
    assert A.DENY in rules_intents(None, "No, that's all.")
    assert A.QUOTE in rules_intents(None, "How much would two nights cost?")
    assert A.CLOSE in rules_intents(None, "Thanks, goodbye!")


def test_cli_intents_scores_only_what_the_annotation_can_say(tmp_path):
    sgd = _write(tmp_path / "sgd.jsonl", INTENT_DIALOGUE)
    scores = tmp_path / "scores.json"
    result = CliRunner().invoke(app, ["eval", "intents", str(sgd), "--scores", str(scores)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    record = json.loads(scores.read_text())["scores"]["rules"]
    assert record["turns"] == 3 and set(record["per_intent"]) == {"book", "ask", "quote", "confirm", "deny", "close"}
    multiwoz = {
        "dialogue_id": "m_2.json",
        "turns": [{"speaker": "USER", "utterance": "Thanks, bye.", "dialog_act": {"general-bye": [["none", "none"]]}}],
    }
    result = CliRunner().invoke(
        app, ["eval", "intents", str(_write(tmp_path / "m.jsonl", multiwoz)), "--scores", str(scores)]
    )
    assert result.exit_code == 0, result.output
    assert set(json.loads(scores.read_text())["scores"]["rules"]["per_intent"]) == {"book", "ask", "close"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"turns": []}\n')
    result = CliRunner().invoke(app, ["eval", "intents", str(bad)])
    assert result.exit_code == 2 and "not a dialogue" in " ".join(result.output.split())
