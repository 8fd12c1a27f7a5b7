"""The language model reads a caller turn into a `TurnAction`, decoded under the action's JSON schema.

lm-format-enforcer constrains every decoding step to tokens that keep the output valid JSON for the schema
(pure Python and light to install; xgrammar and outlines are the faster alternatives to measure), so the output always
parses; what it says is still only a proposal — code validates each field before using it, and a turn whose
reading fails (a timeout, an exception, a field out of range) falls back to the rules for that turn.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from lmformatenforcer import JsonSchemaParser, TokenEnforcer, TokenEnforcerTokenizerData
from pydantic import ValidationError

from agent.reply.llm import Messages, TokenFilter
from agent.understanding.action import TurnAction, action_json_schema

log = logging.getLogger(__name__)

MAX_ACTION_TOKENS = 96
INSTRUCTIONS = (
    "You read one turn of a phone call to a hotel. Reply with JSON only: the caller's intents (book, modify, "
    "cancel, ask, quote, confirm, deny, close, transfer, other), the details they gave in this turn (check_in "
    "and check_out in the caller's own words, nights, adults, children, room_type, name, phone, email, "
    "confirmation_code; null when not said) and their questions."
)


def reading_messages(agent_text: str | None, caller_text: str) -> list[dict[str, str]]:
    """The chat the model reads a turn from: the same at serving time and in its training examples."""
    return [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": f"Agent: {agent_text or '(call starts)'}\nCaller: {caller_text}"},
    ]


def action_text(action: TurnAction) -> str:
    """An action as the model writes it: compact JSON, the slots not said left out."""
    return action.model_dump_json(exclude_defaults=True)


class CompletingModel(Protocol):
    """What reading needs from a model (ChatModel and Ct2ChatModel both offer it)."""

    version: str
    tokenizer: Any

    def complete(
        self,
        messages: Messages,
        *,
        max_new_tokens: int,
        allowed_tokens: TokenFilter | None = None,
        max_time: float | None = None,
    ) -> str: ...


class ModelReader:
    """Reads turns with one chat model; the schema's token filter is built once per model."""

    def __init__(
        self, chat: CompletingModel, *, max_new_tokens: int = MAX_ACTION_TOKENS, budget_s: float | None = None
    ) -> None:
        """`budget_s`: a reading still decoding after this long is abandoned (the rules read that turn)."""
        self.chat = chat
        self.max_new_tokens = max_new_tokens
        self.budget_s = budget_s
        self._allowed: Callable | None = None

    @property
    def version(self) -> str:
        return self.chat.version

    def read(self, agent_text: str | None, caller_text: str) -> TurnAction | None:
        """The model's reading of `caller_text` (after the agent said `agent_text`); None if it failed."""
        messages = reading_messages(agent_text, caller_text)
        try:
            raw = self.chat.complete(
                messages, max_new_tokens=self.max_new_tokens, allowed_tokens=self._filter(), max_time=self.budget_s
            )
            return TurnAction.model_validate(json.loads(raw))
        except (ValueError, ValidationError, RuntimeError) as exc:  # cut-off JSON, out-of-range values
            log.info("model reading failed, the rules read this turn: %s", exc)
            return None

    def _filter(self) -> Callable:
        if self._allowed is None:
            enforcer = TokenEnforcer(_tokenizer_data(self.chat.tokenizer), JsonSchemaParser(action_json_schema()))
            self._allowed = lambda ids: enforcer.get_allowed_tokens(ids).allowed_tokens
        return self._allowed


def _tokenizer_data(tokenizer: Any) -> TokenEnforcerTokenizerData:
    """Each token's text as it reads after another token (so a word-start token keeps its space).

    lm-format-enforcer's own transformers adapter imports a module transformers 5 no longer has; its core
    takes this table directly.
    """
    zero = tokenizer.encode("0")[-1]
    special = set(tokenizer.all_special_ids)
    tokens = []
    for token in range(len(tokenizer)):
        if token in special:
            continue
        after_zero = tokenizer.decode([zero, token])[1:]
        tokens.append((token, after_zero, len(after_zero) > len(tokenizer.decode([token]))))

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids).rstrip("\ufffd")  # a cut multi-byte character is not text yet

    return TokenEnforcerTokenizerData(tokens, decode, tokenizer.eos_token_id, False, len(tokenizer))
