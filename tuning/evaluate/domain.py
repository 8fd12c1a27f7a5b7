"""The domain measure: how well the model predicts the agent's turns in held-out hotel dialogues, the
gain that tuning is for."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tuning.data.dialogues import IGNORE_INDEX, TrainingExample
from tuning.evaluate.compare import fingerprint
from tuning.evaluate.context import Measured, Run, measure
from tuning.evaluate.nll import nll_record, nll_summary, nll_sums
from tuning.evaluate.scoring import Scored, clip


@measure
def domain_nll(run: Run, examples: Sequence[TrainingExample]) -> Measured:
    """Mean NLL per supervised (agent-turn) token on held-out hotel dialogues."""
    requests, masks = [], []
    for ex in run.sample(examples, run.suite.domain_n, "domain"):
        request, mask = _agent_turns(ex, run.suite.max_tokens)
        requests.append(request)
        masks.append(mask)
    key = fingerprint([r.tokens for r in requests], [m.tolist() for m in masks])
    sums, counts = nll_sums(run, requests, masks, "domain NLL")
    return nll_summary(run, sums, counts, run.base_items(key, "domain")), nll_record(key, sums, counts)


def _agent_turns(example: TrainingExample, max_tokens: int) -> tuple[Scored, torch.Tensor]:
    """The example clipped to `max_tokens`, scored from its first supervised token, and which of the scored
    tokens are supervised (agent turns; the caller's turns between them are context only)."""
    first = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX and i > 0)
    request = clip(example.input_ids, first, max_tokens)
    labels = example.labels[len(example.input_ids) - len(request.tokens) :]
    return request, torch.tensor([label != IGNORE_INDEX for label in labels[request.start :]])
