"""Token ids for what the measures score or prompt with: plain text, chat prompts and lm-eval-harness's
context/continuation split. One place, so that a base and a tuned run tokenize alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Messages = list[dict[str, str]]


def encode(tokenizer: Any, text: str) -> list[int]:
    """The text's token ids without special tokens (a piece of a sequence, not a whole document)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def context_and_continuations(
    tokenizer: Any, context: str, continuations: Sequence[str], max_tokens: int
) -> tuple[list[int], list[list[int]]]:
    """lm-eval-harness tokenization: a continuation's tokens are those of context + continuation after the
    context's own tokens (trailing context spaces move to the continuation); long contexts lose their start."""
    stripped = context.rstrip(" ")
    prefix = encode(tokenizer, stripped)
    tails = [encode(tokenizer, stripped + context[len(stripped) :] + c)[len(prefix) :] for c in continuations]
    keep = max_tokens - max(len(t) for t in tails)
    return prefix[-keep:], tails


def chat_ids(tokenizer: Any, messages: Messages) -> list[int]:
    """The chat rendered by the model's template, ending where the assistant's reply starts."""
    rendered = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)
    return list(rendered["input_ids"])


def user_chat(tokenizer: Any, prompt: str) -> list[int]:
    """A one-message user chat, ready for the assistant's reply."""
    return chat_ids(tokenizer, [{"role": "user", "content": prompt}])
