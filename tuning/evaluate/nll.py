"""Per-token NLL, shared by the domain measure (agent turns of hotel dialogues) and the retention measure
(general text): summed per sequence so that a CI resamples sequences and a base pairs sequence by sequence."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from tuning.evaluate.compare import paired_per_token_change
from tuning.evaluate.context import Run
from tuning.evaluate.scoring import Scored, token_logprobs
from tuning.evaluate.stats import per_token, ratio_ci


def nll_sums(run: Run, requests: list[Scored], masks: list[torch.Tensor], desc: str) -> tuple[list[float], list[int]]:
    """Per request, the NLL summed over its masked scored tokens, and how many tokens that is."""
    logprobs = token_logprobs(run, requests, desc)
    return [float(-lp[m].sum()) for lp, m in zip(logprobs, masks, strict=True)], [int(m.sum()) for m in masks]


def nll_summary(run: Run, sums: list[float], counts: list[int], base: Mapping[str, Any] | None) -> dict[str, Any]:
    """Per-token NLL with its CI and, against the base, the paired change in nats and in percent."""
    summary: dict[str, Any] = {
        "nll": per_token(sums, counts),
        "ci": list(ratio_ci(sums, counts, **run.ci)),
        "sequences": len(sums),
        "tokens": sum(counts),
    }
    if base is not None:
        summary["vs_base"] = paired_per_token_change(sums, base["nll_sums"], counts, **run.ci)
    return summary


def nll_record(key: str, sums: list[float], counts: list[int]) -> dict[str, Any]:
    """The per-item record a later run pairs its NLL with."""
    return {"key": key, "nll_sums": sums, "counts": counts}
