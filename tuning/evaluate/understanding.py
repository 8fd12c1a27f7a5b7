"""Understanding accuracy on annotated dialogues: run an understanding turn by turn, the state carried across
turns, and score the stay it tracked (check-in, check-out, nights, adults) against the annotation.

Reads the shared sets' formats as they are: SGD (`turns[i].frames[].state.slot_values`, with each surface
value's canonical form taken from the dialogue's own `actions[].canonical_values`, e.g. "next Tuesday" →
"2019-03-05") and MultiWOZ (`belief_state.hotel.book` on the system turn that follows a user turn: the
weekday, people and nights). Gold values are never normalised by the understanding under test.

A prediction is one JSON line per user turn: `{"dialogue_id", "turn" (index into turns), "state": {...}}`
with `check_in_date` / `check_out_date` as ISO dates and `number_of_days` (nights) / `number_of_adults` as
integers, null where not known. A slot is scored on the user turns whose annotation holds it; a value is
right when it equals the annotated one (any of them, where SGD lists several).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Protocol

from agent.dialogue.tracker import Reader
from agent.understanding.numbers import parse_number
from innkeeper.core.hotel import HotelProfile

TRACKED = ("check_in_date", "check_out_date", "number_of_days", "number_of_adults")
# SGD's hotel services name the same things differently (Hotels_1 number_of_days, Hotels_4 stay_length).
SGD_SLOTS = {
    "check_in_date": "check_in_date",
    "check_out_date": "check_out_date",
    "number_of_days": "number_of_days",
    "stay_length": "number_of_days",
    "number_of_adults": "number_of_adults",
}
MULTIWOZ_SLOTS = {"day": "check_in_weekday", "people": "number_of_adults", "stay": "number_of_days"}
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

State = dict[str, Any]


class DialogueTracker(Protocol):
    """One dialogue's understanding: hears each caller turn (after the agent's last words) and keeps the state."""

    def hear(self, agent_text: str | None, caller_text: str) -> State: ...


TrackerFactory = Callable[[date], DialogueTracker]


@dataclass
class UserTurn:
    """A caller turn with what the annotation says the stay is after it (only the slots annotated)."""

    turn: int  # index into the dialogue's turns
    agent_text: str | None  # the agent's words just before it
    text: str
    gold: dict[str, set[Any]] = field(default_factory=dict)


@dataclass
class Dialogue:
    dialogue_id: str
    source: str  # "sgd" | "multiwoz"
    user_turns: list[UserTurn]


# ---------------------------------------------------------------------------------------------- reading


def read_dialogues(paths: Iterable[Path]) -> list[Dialogue]:
    """Every dialogue in the JSONL files, in file order; the format is recognised per dialogue."""
    return [parse_dialogue(raw, where=where) for where, raw in json_lines(paths)]


def json_lines(paths: Iterable[Path]) -> Iterator[tuple[str, Any]]:
    """(where: "file:line", the parsed line) for each non-blank line of the JSONL files; ValueError naming the
    line that is not JSON."""
    for path in paths:
        with Path(path).open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{number}", json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not a JSON line ({exc.msg})") from None


def dialogue_format(raw: Any, *, where: str = "") -> str:
    """ "sgd" (turns with frames) or "multiwoz"; ValueError for anything that is not an annotated dialogue."""
    turns = raw.get("turns") if isinstance(raw, dict) else None
    if not isinstance(turns, list) or "dialogue_id" not in raw:
        raise ValueError(f"{where}: not a dialogue (a dialogue needs 'dialogue_id' and a list of 'turns')")
    return "sgd" if any("frames" in t for t in turns) else "multiwoz"


def parse_dialogue(raw: dict[str, Any], *, where: str = "") -> Dialogue:
    if dialogue_format(raw, where=where) == "sgd":
        return Dialogue(str(raw["dialogue_id"]), "sgd", list(_sgd_turns(raw["turns"])))
    return Dialogue(str(raw["dialogue_id"]), "multiwoz", list(_multiwoz_turns(raw["turns"])))


def _sgd_turns(turns: list[dict[str, Any]]) -> Iterator[UserTurn]:
    canonical = _sgd_canonical_values(turns)
    agent_text = None
    for index, turn in enumerate(turns):
        if turn.get("speaker") != "USER":
            agent_text = turn.get("utterance")
            continue
        gold: dict[str, set[Any]] = {}
        for frame in turn.get("frames", []):
            if not str(frame.get("service", "Hotels")).startswith("Hotels"):
                continue
            for slot, values in frame.get("state", {}).get("slot_values", {}).items():
                if name := SGD_SLOTS.get(slot):
                    gold[name] = {_gold_value(name, canonical.get((slot, v), v)) for v in values} - {None}
        yield UserTurn(index, agent_text, turn.get("utterance", ""), {k: v for k, v in gold.items() if v})


def _sgd_canonical_values(turns: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(slot, surface value) → canonical value, from every action of the dialogue."""
    canonical = {}
    for turn in turns:
        for frame in turn.get("frames", []):
            for action in frame.get("actions", []):
                for value, canon in zip(action.get("values", []), action.get("canonical_values", []), strict=False):
                    canonical[(action.get("slot"), value)] = canon
    return canonical


def _multiwoz_turns(turns: list[dict[str, Any]]) -> Iterator[UserTurn]:
    agent_text = None
    for index, turn in enumerate(turns):
        if turn.get("speaker") != "USER":
            agent_text = turn.get("utterance")
            continue
        after = turns[index + 1] if index + 1 < len(turns) else {}
        book = after.get("belief_state", {}).get("hotel", {}).get("book", {})
        gold = {}
        for slot, name in MULTIWOZ_SLOTS.items():
            value = _gold_value(name, book.get(slot, ""))
            if value is not None:
                gold[name] = {value}
        yield UserTurn(index, agent_text, turn.get("utterance", ""), gold)


def _gold_value(name: str, value: Any) -> Any:
    text = str(value).strip().lower()
    if text in ("", "not mentioned", "none", "dontcare"):
        return None
    if name in ("number_of_days", "number_of_adults"):
        return int(text) if text.isdigit() else parse_number(text)
    if name == "check_in_weekday":
        return text if text in WEEKDAYS else None
    return text  # SGD canonical dates are ISO already


# ---------------------------------------------------------------------------------------------- running


@dataclass
class Prediction:
    dialogue_id: str
    turn: int
    state: State

    def as_json(self) -> str:
        return json.dumps({"dialogue_id": self.dialogue_id, "turn": self.turn, "state": self.state})


def predict(
    dialogues: Iterable[Dialogue],
    tracker_for: TrackerFactory,
    today: date,
    *,
    progress: Callable[[], None] | None = None,
) -> Iterator[tuple[Dialogue, UserTurn, Prediction]]:
    """Run a fresh tracker over each dialogue's caller turns in order; one prediction per caller turn."""
    for dialogue in dialogues:
        tracker = tracker_for(today)
        for user_turn in dialogue.user_turns:
            heard = tracker.hear(user_turn.agent_text, user_turn.text)
            state = {key: heard.get(key) for key in TRACKED}
            yield dialogue, user_turn, Prediction(dialogue.dialogue_id, user_turn.turn, state)
        if progress is not None:
            progress()


# ---------------------------------------------------------------------------------------------- scoring


@dataclass
class SlotScore:
    right: int = 0
    scored: int = 0

    @property
    def accuracy(self) -> float | None:
        return self.right / self.scored if self.scored else None


@dataclass
class Scores:
    """Per-slot accuracy over the turns whose annotation holds the slot; MultiWOZ joint accuracy too."""

    slots: dict[str, SlotScore] = field(default_factory=lambda: {k: SlotScore() for k in (*TRACKED, "joint")})
    turns: int = 0

    def add(self, dialogue: Dialogue, user_turn: UserTurn, prediction: Prediction) -> None:
        self.turns += 1
        predicted = _comparable(prediction.state)
        verdicts = judge(user_turn, prediction)
        for slot, right in verdicts.items():
            score = self.slots["check_in_date" if slot == "check_in_weekday" else slot]
            score.scored += 1
            score.right += right
        all_right = all(verdicts.values())
        if dialogue.source == "multiwoz":
            # joint: every booking slot right, including the ones not yet said (both empty)
            said = {name for name in MULTIWOZ_SLOTS.values() if name in user_turn.gold}
            spurious = any(predicted.get(name) is not None for name in set(MULTIWOZ_SLOTS.values()) - said)
            self.slots["joint"].scored += 1
            self.slots["joint"].right += all_right and not spurious

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {k: {"right": s.right, "scored": s.scored, "accuracy": s.accuracy} for k, s in self.slots.items()}


def judge(user_turn: UserTurn, prediction: Prediction) -> dict[str, bool]:
    """Whether each slot the annotation holds after this turn was predicted right."""
    predicted = _comparable(prediction.state)
    return {slot: predicted.get(slot) in gold for slot, gold in user_turn.gold.items()}


def _comparable(state: State) -> State:
    out = dict(state)
    check_in = state.get("check_in_date")
    out["check_in_weekday"] = WEEKDAYS[date.fromisoformat(check_in).weekday()] if check_in else None
    return out


def score(results: Iterable[tuple[Dialogue, UserTurn, Prediction]]) -> Scores:
    scores = Scores()
    for dialogue, user_turn, prediction in results:
        scores.add(dialogue, user_turn, prediction)
    return scores


# ---------------------------------------------------------------------------------------------- the gate's measure

SGD_DEV = "dialogues/sgd_hotels/dev_hotels_only.jsonl"  # under Settings.shared_data; never trained on
SGD_TODAY = date(2019, 3, 1)  # the SGD dialogues' "today"


def gate_dialogues(shared_data: Path, count: int) -> list[Dialogue]:
    """The fixed dev split the nightly gate measures the reading on: the first `count` SGD dev dialogues."""
    path = shared_data / SGD_DEV
    return read_dialogues([path])[:count] if count > 0 and path.is_file() else []


def reading_accuracy(read: Reader | None, hotel: HotelProfile, dialogues: Iterable[Dialogue], today: date) -> float:
    """Share of the tracked values right (check-in, check-out, nights, adults) over every scored caller turn,
    with the agent's own understanding: the model's reading by `read` first, the rules second (as on a call)."""
    from agent.dialogue.tracker import StayTracker

    scores = score(predict(dialogues, lambda day: StayTracker(hotel, day, read), today))
    right = sum(scores.slots[slot].right for slot in TRACKED)
    scored = sum(scores.slots[slot].scored for slot in TRACKED)
    return right / scored if scored else 0.0
