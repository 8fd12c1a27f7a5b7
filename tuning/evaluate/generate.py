"""Greedy generation, the one way the evaluation generates: the chat replies the KL is measured along and
the replies the refusal classifier and the policy probes judge. Greedy and batched longest first, so a
base and a tuned run of the same suite reply deterministically."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import GenerationConfig

from agent.reply.llm import eos_token_ids
from tuning.evaluate.context import Run
from tuning.evaluate.scoring import device, left_padded


def greedy(
    run: Run, prompts: Sequence[list[int]], max_new_tokens: int, desc: str, *, model: Any = None
) -> list[list[int]]:
    """Greedy reply tokens per prompt, through the first end-of-turn token (batched, longest first).

    `model` defaults to the run's model; the KL passes the base's, whose replies it is measured along.
    """
    model = run.model if model is None else model
    eos = eos_token_ids(model, run.tokenizer)
    config = _greedy_config(max_new_tokens, eos, run.pad_id)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    step = run.suite.generate_batch
    replies: list[list[int]] = [[] for _ in prompts]
    for at in run.bar(range(0, len(order), step), desc):
        group = order[at : at + step]
        batch = left_padded([prompts[i] for i in group], run.pad_id, device(model))
        batch.pop("position_ids")  # generate() derives positions from the mask at every step
        out = model.generate(**batch, generation_config=config)[:, batch["input_ids"].shape[1] :].tolist()
        for i, tokens in zip(group, out, strict=True):
            replies[i] = _through_first(tokens, eos)
    return replies


def greedy_text(run: Run, prompts: Sequence[list[int]], max_new_tokens: int, desc: str) -> list[str]:
    """The run's model's greedy replies as text, special tokens left out (what a classifier reads)."""
    tokens = greedy(run, prompts, max_new_tokens, desc)
    return [run.tokenizer.decode(t, skip_special_tokens=True) for t in tokens]


def _greedy_config(max_new_tokens: int, eos: list[int], pad_id: int) -> GenerationConfig:
    """Greedy decoding; the sampling settings are cleared so a model's own defaults cannot warn or apply."""
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        eos_token_id=eos,
        pad_token_id=pad_id,
    )


def _through_first(tokens: list[int], eos: Sequence[int]) -> list[int]:
    """The tokens up to and including the first end-of-turn token (rows finished early are padded after it)."""
    ends = [j for j, t in enumerate(tokens) if t in eos]
    return tokens[: ends[0] + 1] if ends else tokens
