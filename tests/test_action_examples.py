"""Training examples for the model's reading of a turn, from SGD-format annotations written for the test."""

from agent.reply.llm import ChatModel
from agent.reply.understand import action_text, reading_messages
from agent.understanding.action import ActionIntent
from tuning.data.actions import encode_action_examples, sgd_action_examples
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
