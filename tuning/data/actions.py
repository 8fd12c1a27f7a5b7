"""Training examples for the model's reading of a turn: from the dialogue sets' annotations and from operator
corrections of logged calls.

Each SGD caller turn (the train split) becomes (the agent's words before it, the caller's words, the `TurnAction`
its frames annotate): INFORM_INTENT → book, AFFIRM / SELECT → confirm, NEGATE → deny, THANK_YOU / GOODBYE → close,
REQUEST of a price → quote, of anything else → ask (the slot named as the question), and INFORM values as
slots — dates in the caller's own words (the annotated span), counts as numbers (the canonical value). The
example is the chat the serving reader sends (`agent.reply.understand.reading_messages`) with the action's
compact JSON as the reply, the only tokens that carry loss.

Each MultiWOZ caller turn of the hotel dialogues that also visit another domain becomes one too (`Hotel-Inform` →
book with Day / Stay / People as check-in in the caller's words, nights and party size; `Hotel-Request` → ask,
the slot named as the question; thanks / bye → close; a turn only about another domain → other). The hotel-only
dialogues are the understanding measure's dev set (`innkeeper eval understanding`), so they are never taught:
the shared folder holds MultiWOZ's dev split only, and this keeps the two apart by dialogue id.

A correction (`agent.call.review`) of a caller turn becomes the same kind of example, with the words of the
redacted call (`tuning.data.redact`) and the action's personal details replaced by the same placeholders.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.reply.understand import action_text, reading_messages
from agent.understanding.action import ActionIntent, ActionSlots, TurnAction
from agent.understanding.numbers import parse_number
from tuning.data.dialogues import TrainingExample, encode_chat
from tuning.data.pii import CODE, EMAIL, NAME, PHONE
from tuning.data.redact import RedactedDialogue

READING = "reading:"  # the id prefix of a reading example among training sequences (lineage tells them apart)
SGD_TRAIN = "dialogues/sgd_hotels/train_hotels_only.jsonl"  # under Settings.shared_data; dev stays for measuring
MULTIWOZ_ANY = "dialogues/multiwoz_hotel/dev_hotel_any.jsonl"  # taught: these less the hotel-only ones
MULTIWOZ_MEASURED = "dialogues/multiwoz_hotel/dev_hotel_only.jsonl"
PERSONAL_SLOTS = {"name": NAME, "phone": PHONE, "email": EMAIL, "confirmation_code": CODE}

_INTENT_OF_ACT = {
    "INFORM_INTENT": ActionIntent.BOOK,
    "AFFIRM": ActionIntent.CONFIRM,
    "AFFIRM_INTENT": ActionIntent.CONFIRM,
    "SELECT": ActionIntent.CONFIRM,
    "NEGATE": ActionIntent.DENY,
    "NEGATE_INTENT": ActionIntent.DENY,
    "THANK_YOU": ActionIntent.CLOSE,
    "GOODBYE": ActionIntent.CLOSE,
    "REQUEST_ALTS": ActionIntent.OTHER,
}
_PRICE_SLOTS = {"total_price", "price", "price_per_night"}
_QUESTION_OF_SLOT = {
    "phone_number": "phone number",
    "street_address": "address",
    "address": "address",
    "has_wifi": "wifi",
    "pets_welcome": "pets",
    "smoking_allowed": "smoking",
    "has_laundry_service": "laundry",
}
_DATE_SLOTS = {"check_in_date": "check_in", "check_out_date": "check_out"}
_COUNT_SLOTS = {"number_of_days": "nights", "stay_length": "nights", "number_of_adults": "adults"}


@dataclass(frozen=True)
class ActionExample:
    example_id: str  # dialogue id and turn index
    agent_text: str | None
    caller_text: str
    action: TurnAction


def _caller_turns(dialogue: dict[str, Any]) -> Iterator[tuple[int, str | None, dict[str, Any]]]:
    """(index, the agent's words just before, the turn) for each caller turn of a dialogue-set dialogue."""
    agent_text = None
    for index, turn in enumerate(dialogue.get("turns", [])):
        if turn.get("speaker") != "USER":
            agent_text = turn.get("utterance")
        else:
            yield index, agent_text, turn


def sgd_action_examples(dialogue: dict[str, Any]) -> Iterator[ActionExample]:
    """One example per caller turn of an SGD dialogue (hotel frames only)."""
    for index, agent_text, turn in _caller_turns(dialogue):
        frames = [f for f in turn.get("frames", []) if str(f.get("service", "Hotels")).startswith("Hotels")]
        actions = [a for frame in frames for a in frame.get("actions", [])]
        yield ActionExample(f"{dialogue['dialogue_id']}#{index}", agent_text, turn["utterance"], _action(actions))


def _action(acts: list[dict[str, Any]]) -> TurnAction:
    intents: list[ActionIntent] = []
    questions: list[str] = []
    slots: dict[str, Any] = {}
    for act in acts:
        kind, slot = act.get("act"), act.get("slot", "")
        if kind == "REQUEST":
            intent = ActionIntent.QUOTE if slot in _PRICE_SLOTS else ActionIntent.ASK
            if slot in _QUESTION_OF_SLOT:
                questions.append(_QUESTION_OF_SLOT[slot])
        elif kind == "INFORM" and act.get("values"):
            intent = None
            if slot in _DATE_SLOTS:
                slots[_DATE_SLOTS[slot]] = act["values"][0]
            elif slot in _COUNT_SLOTS and (count := _count(act)):
                slots[_COUNT_SLOTS[slot]] = count
        else:
            intent = _INTENT_OF_ACT.get(kind)
        if intent is not None and intent not in intents:
            intents.append(intent)
    return TurnAction(intents=intents[:4], slots=ActionSlots(**slots), questions=list(dict.fromkeys(questions))[:3])


_MULTIWOZ_QUESTIONS = {
    "Addr": "address",
    "Phone": "phone number",
    "Post": "postcode",
    "Parking": "parking",
    "Internet": "wifi",
    "Ref": "confirmation code",
    "Area": "area",
    "Stars": "stars",
    "Type": "type",
    "Price": "price",
}


def multiwoz_action_examples(dialogue: dict[str, Any]) -> Iterator[ActionExample]:
    """One example per caller turn of a MultiWOZ 2.1 dialogue (its `dialog_act` annotation read for the hotel)."""
    for index, agent_text, turn in _caller_turns(dialogue):
        text = turn.get("utterance", "")
        acts = dict(turn.get("dialog_act") or {})
        if told := _booking_told(dialogue["turns"], index):
            acts["Hotel-Inform"] = [*acts.get("Hotel-Inform", []), *told]
        action = _multiwoz_action(acts, text)
        yield ActionExample(f"{dialogue['dialogue_id']}#{index}", agent_text, text, action)


def _booking_told(turns: list[dict[str, Any]], index: int) -> list[list[str]]:
    """The hotel booking values the belief state gains after this caller turn. The dialogue acts miss some
    ("for one night, 1 person" is often annotated with the hotel's name only) and the belief state often
    records a value one agent turn late: a value that appears only then counts for this turn unless the next
    caller turn says it. A value counts only where these words say it (`_multiwoz_action`)."""

    def book(at: int) -> dict[str, str]:
        value = turns[at].get("belief_state", {}).get("hotel", {}).get("book", {}) if at < len(turns) else {}
        return {slot: str(value.get(slot, "")) for slot in ("day", "stay", "people")}

    before, after, late = (book(index - 1) if index > 0 else {}), book(index + 1), book(index + 3)
    next_words = turns[index + 2].get("utterance", "") if index + 2 < len(turns) else ""
    told = {slot: v for slot, v in after.items() if v not in ("", "not mentioned") and v != before.get(slot)}
    for slot, value in late.items():
        new = value not in ("", "not mentioned") and value not in (before.get(slot), after.get(slot))
        if new and slot not in told and not _mentions(slot, value, next_words):
            told[slot] = value
    return [[slot.capitalize(), value] for slot, value in told.items()]


def _mentions(slot: str, value: str, text: str) -> bool:
    if slot == "day":
        return _as_said(value, text) is not None
    count = _count({"values": [value]})
    return count is not None and _says(count, text)


def _multiwoz_action(acts: dict[str, list[list[str]]], text: str) -> TurnAction:
    intents: list[ActionIntent] = []
    slots: dict[str, Any] = {}
    questions: list[str] = []
    for act, pairs in acts.items():
        if act == "Hotel-Inform":
            intents.append(ActionIntent.BOOK)
            for slot, value in pairs:
                if slot == "Day" and (said := _as_said(value, text)):
                    slots["check_in"] = said
                elif slot in ("Stay", "People") and (count := _count({"values": [value]})) and _says(count, text):
                    slots["nights" if slot == "Stay" else "adults"] = count
        elif act == "Hotel-Request":
            intents.append(ActionIntent.ASK)
            questions += [_MULTIWOZ_QUESTIONS[slot] for slot, _ in pairs if slot in _MULTIWOZ_QUESTIONS]
        elif act in ("general-thank", "general-bye"):
            intents.append(ActionIntent.CLOSE)
        elif not act.startswith(("Hotel", "general")):
            intents.append(ActionIntent.OTHER)
    intents = list(dict.fromkeys(intents))
    if len(intents) > 1:
        intents = [i for i in intents if i is not ActionIntent.OTHER]  # the hotel's part of a mixed turn
    return TurnAction(intents=intents[:4], slots=ActionSlots(**slots), questions=list(dict.fromkeys(questions))[:3])


def _says(count: int, text: str) -> bool:
    """Whether the caller's words hold this number (a value carried over from earlier turns is not theirs)."""
    return any(
        (word.isdigit() and int(word) == count) or parse_number(word) == count
        for word in text.lower().replace("-", " ").split()
    )


def _as_said(value: str, text: str) -> str | None:
    """The annotated value as the caller's words spell it (MultiWOZ lower-cases its values), if they say it."""
    start = text.lower().find(value.lower())
    return text[start : start + len(value)] if value and start >= 0 else None


def _count(act: dict[str, Any]) -> int | None:
    for value in (*act.get("canonical_values", []), *act.get("values", [])):
        number = int(value) if str(value).isdigit() else parse_number(str(value))
        if number and 0 < number <= 20:
            return number
    return None


def annotated_readings(shared_data: Path) -> list[ActionExample]:
    """Every taught annotated turn: SGD's hotel train split, then MultiWOZ's hotel dialogues that are not the
    measured hotel-only ones (a file that is absent gives none)."""
    examples = [e for row in _jsonl(shared_data / SGD_TRAIN) for e in sgd_action_examples(row)]
    measured = {row["dialogue_id"] for row in _jsonl(shared_data / MULTIWOZ_MEASURED)}
    for row in _jsonl(shared_data / MULTIWOZ_ANY):
        if row["dialogue_id"] not in measured:
            examples += multiwoz_action_examples(row)
    return examples


def shared_readings(shared_data: Path, count: int) -> list[ActionExample]:
    """`count` annotated turns spread evenly over `annotated_readings` (both sets, none if both are absent)."""
    if count <= 0:
        return []
    examples = annotated_readings(shared_data)
    step = max(len(examples) // count, 1)
    return examples[::step][:count]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def correction_examples(
    dialogues: Iterable[RedactedDialogue], corrections: Mapping[int, TurnAction]
) -> list[ActionExample]:
    """One example per corrected caller turn (`corrections`: turn id → action) of these redacted calls."""
    examples = []
    for dialogue in dialogues:
        agent_text = None
        for turn in dialogue.turns:
            if turn.role == "agent":
                agent_text = turn.text
            elif turn.role == "caller" and turn.id in corrections:
                action = redact_action(corrections[turn.id])
                examples.append(ActionExample(f"{dialogue.call_id}#{turn.id}", agent_text, turn.text, action))
    return examples


def redact_action(action: TurnAction) -> TurnAction:
    """The action with its personal details replaced by the placeholders redaction puts in the words."""
    personal = {slot: mark for slot, mark in PERSONAL_SLOTS.items() if getattr(action.slots, slot)}
    return action.model_copy(update={"slots": action.slots.model_copy(update=personal)})


def example_json(example: ActionExample) -> dict[str, Any]:
    """An example as the nightly run's frozen dataset stores it (`example_from_json` reads it back)."""
    return {**asdict(example), "action": example.action.model_dump(mode="json", exclude_defaults=True)}


def example_from_json(data: Mapping[str, Any]) -> ActionExample:
    return ActionExample(
        data["example_id"], data["agent_text"], data["caller_text"], TurnAction.model_validate(data["action"])
    )


def encode_action_examples(
    examples: Iterable[ActionExample], tokenizer: Any, *, max_tokens: int = 384
) -> list[TrainingExample]:
    """Chat-formatted examples that teach the reading: loss only on the action's JSON."""
    encoded = []
    for example in examples:
        messages = [
            *reading_messages(example.agent_text, example.caller_text),
            {"role": "assistant", "content": action_text(example.action)},
        ]
        if item := encode_chat(messages, tokenizer, max_tokens=max_tokens, example_id=READING + example.example_id):
            encoded.append(item)
    return encoded
