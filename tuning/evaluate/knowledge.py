"""The knowledge measure: log-likelihood multiple choice on the public benchmarks, scored as
lm-eval-harness scores them (acc and acc_norm), chance-corrected so that tasks with 2 and 5 choices
compare, and paired with the base item by item (flips)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tuning.evaluate.compare import RIGHT_WRONG, fingerprint, paired_change
from tuning.evaluate.context import Measured, Run, measure
from tuning.evaluate.mc_items import MCItem
from tuning.evaluate.scoring import continuation_logprobs
from tuning.evaluate.stats import chance_corrected, rate
from tuning.evaluate.tokens import context_and_continuations


@measure
def multiple_choice(run: Run, tasks: Mapping[str, Sequence[MCItem]]) -> Measured:
    """Log-likelihood multiple choice per task: acc (summed log-probs) and acc_norm (log-prob per character),
    chance-corrected, with CIs and, against the base, flips and the paired difference."""
    summaries, items = {}, {}
    for task, all_items in tasks.items():
        if chosen := run.sample(all_items, run.suite.mc_n, f"mc:{task}"):
            summaries[task], items[task] = _mc_task(run, task, chosen)
    return summaries, items


def _mc_predictions(run: Run, items: Sequence[MCItem], desc: str) -> dict[str, list[int]]:
    """The chosen answer per item under each metric, as lm-eval-harness scores them."""
    picks: dict[str, list[int]] = {"acc": [], "acc_norm": []}
    for it in run.bar(items, desc):
        prefix, tails = context_and_continuations(run.tokenizer, it.context, it.choices, run.suite.max_tokens)
        ll = np.array([float(lp.sum()) for lp in continuation_logprobs(run, prefix, tails)])
        chars = np.array([len(c) for c in it.choices], dtype=float)
        picks["acc"].append(int(np.argmax(ll)))
        picks["acc_norm"].append(int(np.argmax(ll / chars)))
    return picks


def _mc_task(run: Run, task: str, items: list[MCItem]) -> Measured:
    """One task's accuracies (each with its chance correction and, against the base, its change)."""
    picks = _mc_predictions(run, items, task)
    correct = {metric: [p == it.gold for p, it in zip(chosen, items, strict=True)] for metric, chosen in picks.items()}
    chance = float(np.mean([1 / len(it.choices) for it in items]))
    key = fingerprint([(it.id, it.context, it.choices) for it in items])
    base = run.base_items(key, "mc", task)
    summary: dict[str, Any] = {"n": len(items), "chance": chance}
    for metric, flags in correct.items():
        summary[metric] = accuracy = rate(flags, **run.ci)
        accuracy["chance_corrected"] = chance_corrected(accuracy["value"], chance)
        accuracy["chance_corrected_ci"] = [chance_corrected(v, chance) for v in accuracy["ci"]]
        if base is not None:
            accuracy["vs_base"] = paired_change(base[metric], flags, RIGHT_WRONG, **run.ci)
    return summary, {"key": key, **correct}
