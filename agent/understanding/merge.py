"""The model's reading of a turn's intents combined with the rules': what the dialogue routes on.

Code stays the authority and the rules the second opinion; each part of the model's reading is taken where it
was measured to be the better reader (`innkeeper eval intents` on SGD's held-out dialogues: the taught reader's
F1 for book 90%, ask 98%, confirm 95%, deny 91%, close 98% against the rules' 41 / 48 / 78 / 77 / 88%):

- a yes or a no: the rules' answer stands where they found one (their precision is high); where they found
  none, the model's confirm or deny answers;
- booking, a price and a question: the model's add to the rules' (the rules miss many ways of asking);
- a goodbye: the model's close counts only when it is all the model read (thanks mid-task is not leaving).

Nothing the rules found is taken away, and a turn where the two differ on a yes or a no is noted.
"""

from __future__ import annotations

from dataclasses import replace

from agent.understanding.action import ActionIntent, TurnAction
from agent.understanding.intents import Intent, TurnMeaning

_ADDED = {ActionIntent.BOOK: Intent.BOOK, ActionIntent.QUOTE: Intent.PRICE, ActionIntent.ASK: Intent.QUESTION}


def with_model_intents(meaning: TurnMeaning, action: TurnAction) -> tuple[TurnMeaning, list[str]]:
    """The rules' `meaning` with the model's intents merged in, and what the two disagreed on."""
    read = set(action.intents)
    model_affirm = _affirm(read)
    disagreements = []
    affirm = meaning.affirm
    if affirm is None:
        affirm = model_affirm
    elif model_affirm is not None and model_affirm != affirm:
        disagreements.append("affirm")
    intents = set(meaning.intents) | {_ADDED[i] for i in read if i in _ADDED}
    if read == {ActionIntent.CLOSE}:
        intents.add(Intent.GOODBYE)
    is_question = meaning.is_question or ActionIntent.ASK in read
    merged = replace(meaning, intents=frozenset(intents), affirm=affirm, is_question=is_question)
    return merged, disagreements


def _affirm(read: set[ActionIntent]) -> bool | None:
    confirm, deny = ActionIntent.CONFIRM in read, ActionIntent.DENY in read
    return True if confirm and not deny else False if deny and not confirm else None
