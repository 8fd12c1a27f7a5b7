"""Log-probs of scored tokens, batched for the CPU: sequences grouped by length within a token and a logits
budget, left-padded so that the scored tails line up, and only the scored positions through the LM head;
multiple-choice continuations share their context's KV cache."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tuning.evaluate.context import Run

# Elements of the float32 logits one scoring batch may hold (x4 for the two models and softmaxes of KL).
LOGIT_BUDGET = 2**25


@dataclass(frozen=True)
class Scored:
    """A token sequence whose tokens from `start` (≥ 1) on are scored."""

    tokens: list[int]
    start: int


def clip(tokens: Sequence[int], start: int, max_tokens: int) -> Scored:
    """Keep the last `max_tokens` tokens: contexts lose their oldest part, never the scored end."""
    dropped = max(0, len(tokens) - max_tokens)
    return Scored(list(tokens[dropped:]), max(1, start - dropped))


def device(model: Any) -> torch.device:
    return next(model.parameters()).device


def left_padded(inputs: Sequence[Sequence[int]], pad_id: int, on: torch.device) -> dict[str, torch.Tensor]:
    """Left padding lines every sequence's end up, so the scored tails are the batch's last positions."""
    width = max(len(x) for x in inputs)
    ids = torch.full((len(inputs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, x in enumerate(inputs):
        ids[row, width - len(x) :] = torch.tensor(x, dtype=torch.long)
        mask[row, width - len(x) :] = 1
    # Explicit positions: without them padded rows would start counting at the padding.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids.to(on), "attention_mask": mask.to(on), "position_ids": positions.to(on)}


def tail_logprobs(model: Any, inputs: Sequence[Sequence[int]], tail: int, pad_id: int) -> torch.Tensor:
    """Next-token log-probs [B, tail, V] at the last `tail` positions (only those go through the LM head)."""
    out = model(**left_padded(inputs, pad_id, device(model)), logits_to_keep=tail)
    return torch.log_softmax(out.logits.float(), dim=-1)


def batches(requests: Sequence[Scored], *, batch_tokens: int, logit_budget: int, vocab: int) -> list[list[int]]:
    """Request indices grouped longest first, each group within a token and a logits budget."""
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].tokens))
    groups: list[list[int]] = []
    width = tail = 0
    for i in order:
        length, scored = len(requests[i].tokens), len(requests[i].tokens) - requests[i].start
        n = len(groups[-1]) + 1 if groups else 0
        if groups and n * max(width, length) <= batch_tokens and n * max(tail, scored) * vocab <= logit_budget:
            groups[-1].append(i)
            width, tail = max(width, length), max(tail, scored)
        else:
            groups.append([i])
            width, tail = length, scored
    return groups


def groups(run: Run, requests: Sequence[Scored], logit_budget: int) -> list[list[int]]:
    """`batches` within the suite's token budget and the model's vocabulary."""
    vocab = run.model.config.vocab_size
    return batches(requests, batch_tokens=run.suite.batch_tokens, logit_budget=logit_budget, vocab=vocab)


def token_logprobs(run: Run, requests: Sequence[Scored], desc: str) -> list[torch.Tensor]:
    """The log-prob of each scored token of every request, sequences batched by length."""
    out: list[torch.Tensor] = [torch.empty(0)] * len(requests)
    for group in run.bar(groups(run, requests, LOGIT_BUDGET), desc):
        tail = max(len(requests[i].tokens) - requests[i].start for i in group)
        logprobs = tail_logprobs(run.model, [requests[i].tokens[:-1] for i in group], tail, run.pad_id)
        for row, i in enumerate(group):
            scored = torch.tensor(requests[i].tokens[requests[i].start :], device=logprobs.device)
            out[i] = logprobs[row, tail - len(scored) :].gather(-1, scored[:, None]).squeeze(-1).cpu()
    return out


def continuation_logprobs(run: Run, prefix: list[int], continuations: list[list[int]]) -> list[torch.Tensor]:
    """The log-prob of each continuation's tokens after a shared prefix.

    The prefix runs once and its KV cache is reused for every continuation: on a CPU, multiple-choice
    contexts are most of the tokens.
    """
    on = device(run.model)
    head = run.model(input_ids=torch.tensor([prefix], device=on), use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(head.logits[0, -1].float(), dim=-1)
    cache = head.cache
    cache.batch_repeat_interleave(len(continuations))
    width = max(len(c) for c in continuations)
    ids = torch.full((len(continuations), width), run.pad_id, dtype=torch.long)
    mask = torch.zeros((len(continuations), len(prefix) + width), dtype=torch.long)
    mask[:, : len(prefix)] = 1
    for row, c in enumerate(continuations):
        ids[row, : len(c)] = torch.tensor(c, dtype=torch.long)
        mask[row, len(prefix) : len(prefix) + len(c)] = 1
    positions = torch.arange(len(prefix), len(prefix) + width).expand(len(continuations), -1)
    out = run.model(
        input_ids=ids.to(on),
        attention_mask=mask.to(on),
        position_ids=positions.to(on),
        cache=cache,
    )
    rest = torch.log_softmax(out.logits.float(), dim=-1)
    scores = []
    for row, c in enumerate(continuations):
        later = rest[row, : len(c) - 1].gather(-1, torch.tensor(c[1:], device=on)[:, None]).squeeze(-1)
        scores.append(torch.cat([first[c[0]].reshape(1), later]).cpu())
    return scores
