"""Intent accuracy on annotated dialogues: which of the caller's intents a reading finds in each turn (book, ask,
quote, confirm, deny, close, …), against the dialogue acts the sets annotate — SGD's `actions` and MultiWOZ's
`dialog_act`, read into `TurnAction`s by `tuning.data.actions` (the same reading the model is taught from).

Scored per intent over every caller turn: precision, recall and F1 of "this turn carries this intent", plus the
share of turns whose whole set of scored intents is right. Two readings are compared the same way: the rules
(`rules_intents`, what the dialogue manager acts on when no model reads) and a model's `TurnAction.intents`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.understanding.action import ActionIntent, TurnAction
from agent.understanding.intents import Intent, read_turn
from tuning.data.actions import ActionExample, multiwoz_action_examples, sgd_action_examples
from tuning.evaluate.understanding import dialogue_format, json_lines

# What the annotations say reliably: "other" and "transfer" are rare or absent there, modify/cancel too.
SGD_SCORED = (
    ActionIntent.BOOK,
    ActionIntent.ASK,
    ActionIntent.QUOTE,
    ActionIntent.CONFIRM,
    ActionIntent.DENY,
    ActionIntent.CLOSE,
)
# MultiWOZ's acts have no confirm, deny or price request: there only these three can be scored.
MULTIWOZ_SCORED = (ActionIntent.BOOK, ActionIntent.ASK, ActionIntent.CLOSE)
_RULES = {
    Intent.BOOK: ActionIntent.BOOK,
    Intent.AVAILABILITY: ActionIntent.BOOK,
    Intent.PRICE: ActionIntent.QUOTE,
    Intent.MODIFY: ActionIntent.MODIFY,
    Intent.CANCEL: ActionIntent.CANCEL,
    Intent.QUESTION: ActionIntent.ASK,
    Intent.GOODBYE: ActionIntent.CLOSE,
    Intent.THANKS: ActionIntent.CLOSE,
}

IntentReader = Callable[[str | None, str], frozenset[ActionIntent] | None]


def rules_intents(agent_text: str | None, caller_text: str) -> frozenset[ActionIntent]:
    """The intents the rules find in a turn (`read_turn`), named as the action schema names them."""
    meaning = read_turn(caller_text)
    intents = {_RULES[i] for i in meaning.intents if i in _RULES}
    if meaning.affirm is not None:
        intents.add(ActionIntent.CONFIRM if meaning.affirm else ActionIntent.DENY)
    if meaning.is_question and ActionIntent.QUOTE not in intents:
        intents.add(ActionIntent.ASK)
    return frozenset(intents)


def model_intents(read: Callable[[str | None, str], TurnAction | None]) -> IntentReader:
    """A model reader's intents (None where its reading failed: the turn is scored as finding nothing)."""

    def intents(agent_text: str | None, caller_text: str) -> frozenset[ActionIntent] | None:
        action = read(agent_text, caller_text)
        return None if action is None else frozenset(action.intents)

    return intents


def read_examples(paths: Iterable[Path]) -> tuple[list[ActionExample], tuple[ActionIntent, ...]]:
    """Every caller turn of the JSONL dialogue files with its annotated action (SGD or MultiWOZ, per dialogue),
    and the intents those annotations can score (MultiWOZ's three wherever a MultiWOZ dialogue is among them)."""
    examples: list[ActionExample] = []
    scored = SGD_SCORED
    for where, dialogue in json_lines(paths):
        multiwoz = dialogue_format(dialogue, where=where) == "multiwoz"
        scored = MULTIWOZ_SCORED if multiwoz else scored
        examples += (multiwoz_action_examples if multiwoz else sgd_action_examples)(dialogue)
    return examples, scored


@dataclass
class IntentCount:
    true_positive: int = 0
    false_positive: int = 0
    false_negative: int = 0

    @property
    def precision(self) -> float | None:
        found = self.true_positive + self.false_positive
        return self.true_positive / found if found else None

    @property
    def recall(self) -> float | None:
        said = self.true_positive + self.false_negative
        return self.true_positive / said if said else None

    @property
    def f1(self) -> float | None:
        p, r = self.precision, self.recall
        return None if p is None or r is None or p + r == 0 else 2 * p * r / (p + r)


@dataclass
class IntentScores:
    scored: tuple[ActionIntent, ...] = SGD_SCORED
    per_intent: dict[ActionIntent, IntentCount] = field(default_factory=dict)
    turns: int = 0
    exact: int = 0  # turns whose scored intents are exactly the annotated ones
    failed: int = 0  # turns the reader returned nothing for

    def __post_init__(self) -> None:
        self.per_intent = self.per_intent or {intent: IntentCount() for intent in self.scored}

    def add(self, gold: Iterable[ActionIntent], found: frozenset[ActionIntent] | None) -> None:
        self.turns += 1
        self.failed += found is None
        gold_set, found_set = set(gold) & set(self.scored), set(found or ()) & set(self.scored)
        self.exact += gold_set == found_set
        for intent, count in self.per_intent.items():
            count.true_positive += intent in gold_set and intent in found_set
            count.false_positive += intent in found_set and intent not in gold_set
            count.false_negative += intent in gold_set and intent not in found_set

    @property
    def exact_share(self) -> float:
        return self.exact / self.turns if self.turns else 0.0

    def as_dict(self) -> dict[str, Any]:
        per_intent = {
            intent.value: {
                "tp": c.true_positive,
                "fp": c.false_positive,
                "fn": c.false_negative,
                "precision": c.precision,
                "recall": c.recall,
                "f1": c.f1,
            }
            for intent, c in self.per_intent.items()
        }
        return {"turns": self.turns, "exact": self.exact_share, "failed": self.failed, "per_intent": per_intent}


def score_intents(
    examples: Iterable[ActionExample],
    read: IntentReader,
    scored: tuple[ActionIntent, ...] = SGD_SCORED,
    progress: Callable[[], None] | None = None,
) -> IntentScores:
    """Each example's annotated intents against what `read` finds in its words."""
    scores = IntentScores(scored)
    for example in examples:
        scores.add(example.action.intents, read(example.agent_text, example.caller_text))
        if progress is not None:
            progress()
    return scores
