"""Training examples for the reading of a turn, from SGD- and MultiWOZ-format annotations written for the test."""

import json

from agent.reply.llm import ChatModel
from agent.reply.understand import action_text, reading_messages
from agent.understanding.action import ActionIntent, ActionSlots
from tuning.data.actions import (
    annotated_readings,
    encode_action_examples,
    multiwoz_action_examples,
    sgd_action_examples,
    shared_readings,
)
from tuning.data.dialogues import IGNORE_INDEX

DIALOGUE = {
    "dialogue_id": "t_9",
    "turns": [
        {
            "speaker": "USER",
            "utterance": "I want to book a house for two from next Monday.",
            "frames": [
                {
                    "service": "Homes_1",  # another service's frame in the turn: not the hotel's reading
                    "actions": [{"act": "INFORM", "slot": "visit_date", "values": ["Monday"], "canonical_values": []}],
                },
                {
                    "service": "Hotels_2",
                    "actions": [
                        {"act": "INFORM_INTENT", "slot": "intent", "values": ["BookHouse"], "canonical_values": []},
                        {"act": "INFORM", "slot": "number_of_adults", "values": ["two"], "canonical_values": ["2"]},
                        {
                            "act": "INFORM",
                            "slot": "check_in_date",
                            "values": ["next Monday"],
                            "canonical_values": ["2019-03-04"],
                        },
                    ],
                },
            ],
        },
        {
            "speaker": "SYSTEM",
            "utterance": "Booked. Anything else?",
            "frames": [{"service": "Hotels_2", "actions": []}],
        },
        {
            "speaker": "USER",
            "utterance": "What's the total and their phone number?",
            "frames": [
                {
                    "service": "Hotels_2",
                    "actions": [
                        {"act": "REQUEST", "slot": "total_price", "values": [], "canonical_values": []},
                        {"act": "REQUEST", "slot": "phone_number", "values": [], "canonical_values": []},
                    ],
                }
            ],
        },
    ],
}


def test_annotations_become_typed_actions_with_dates_in_the_callers_words():
    first, second = sgd_action_examples(DIALOGUE)
    assert (first.example_id, first.agent_text) == ("t_9#0", None)
    assert first.action.intents == [ActionIntent.BOOK]
    assert (first.action.slots.check_in, first.action.slots.adults) == ("next Monday", 2)
    assert second.agent_text == "Booked. Anything else?"
    assert second.action.intents == [ActionIntent.QUOTE, ActionIntent.ASK]
    assert second.action.questions == ["phone number"]


def test_only_the_actions_json_carries_loss(tiny_model_dir):
    tokenizer = ChatModel(tiny_model_dir).tokenizer
    examples = list(sgd_action_examples(DIALOGUE))
    encoded = encode_action_examples(examples, tokenizer)
    assert len(encoded) == 2
    learned = [t for t, label in zip(encoded[0].input_ids, encoded[0].labels, strict=True) if label != IGNORE_INDEX]
    text = tokenizer.decode(learned, skip_special_tokens=True).strip()
    assert text == action_text(examples[0].action)
    # the prompt (instructions, the agent's and the caller's words) is read, never learned
    assert encoded[0].labels[0] == IGNORE_INDEX and examples[0].caller_text not in text
    assert reading_messages(None, "x")[0]["role"] == "system"


def _book(day: str = "", stay: str = "", people: str = "") -> dict:
    return {"hotel": {"book": {"booked": [], "day": day, "stay": stay, "people": people}, "semi": {}}}


def _multiwoz(dialogue_id: str) -> dict:
    """A MultiWOZ 2.1-shaped dialogue written for the test: acts that miss values, a belief state one turn late."""
    return {
        "dialogue_id": dialogue_id,
        "turns": [
            {"speaker": "USER", "utterance": "Is there a train to Ely on Friday ?", "dialog_act": {"Train-Inform": []}},
            {"speaker": "SYSTEM", "utterance": "Yes, at 9 .", "belief_state": _book()},
            {
                "speaker": "USER",
                "utterance": "Also book the Lodge for two nights , 3 people please .",
                "dialog_act": {"Hotel-Inform": [["Name", "lodge"]]},  # the counts are not annotated as acts
            },
            {"speaker": "SYSTEM", "utterance": "What day ?", "belief_state": _book()},  # recorded one turn late
            {
                "speaker": "USER",
                "utterance": "Arriving TUESDAY . Do they have parking ?",
                "dialog_act": {"Hotel-Inform": [["Day", "tuesday"]], "Hotel-Request": [["Parking", "?"]]},
            },
            {"speaker": "SYSTEM", "utterance": "Booked .", "belief_state": _book("tuesday", "2", "3")},
            {"speaker": "USER", "utterance": "Thanks , bye .", "dialog_act": {"general-thank": [["none", "none"]]}},
        ],
    }


def test_multiwoz_turns_become_actions_with_the_values_their_words_say():
    train, hotel, day, thanks = multiwoz_action_examples(_multiwoz("MUL1.json"))
    assert train.action.intents == [ActionIntent.OTHER] and train.action.slots == ActionSlots()
    # the belief state gained nights and people one turn late; these words say them, so they are this turn's
    assert hotel.action.intents == [ActionIntent.BOOK]
    assert (hotel.action.slots.nights, hotel.action.slots.adults, hotel.action.slots.check_in) == (2, 3, None)
    # the next turn says the day (in its own spelling) and asks a question; the counts are not its words
    assert day.agent_text == "What day ?"
    assert day.action.slots == ActionSlots(check_in="TUESDAY")
    assert day.action.intents == [ActionIntent.BOOK, ActionIntent.ASK] and day.action.questions == ["parking"]
    assert thanks.action.intents == [ActionIntent.CLOSE]


def test_the_measured_multiwoz_dialogues_are_never_taught(tmp_path):
    folder = tmp_path / "dialogues" / "multiwoz_hotel"
    folder.mkdir(parents=True)
    (folder / "dev_hotel_any.jsonl").write_text("\n".join(json.dumps(_multiwoz(i)) for i in ("MUL1", "PMUL2")))
    (folder / "dev_hotel_only.jsonl").write_text(json.dumps(_multiwoz("PMUL2")) + "\n")
    readings = annotated_readings(tmp_path)
    assert {r.example_id.split("#")[0] for r in readings} == {"MUL1"}
    assert len(shared_readings(tmp_path, 2)) == 2 and shared_readings(tmp_path, 0) == []
