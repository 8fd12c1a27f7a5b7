"""The safety measures: does the tuned model still refuse harmful requests, does it refuse safe ones it
should answer (over-refusal), and does it keep the hotel's privacy and payment policies. Greedy replies are
judged by the refusal classifier (tuning.refusals); the refusal-over-compliance log-prob margin moves
before a reply flips."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tuning import refusals
from tuning.evaluate.compare import PASS_FAIL, REFUSED_COMPLIED, fingerprint, paired_change
from tuning.evaluate.context import Measured, Run, measure
from tuning.evaluate.generate import greedy_text
from tuning.evaluate.scoring import continuation_logprobs
from tuning.evaluate.stats import rate, ratio_ci
from tuning.evaluate.tokens import chat_ids, encode, user_chat


@measure
def safety_measures(
    run: Run, harmful: Mapping[str, Sequence[str]], safe: Sequence[str], probes: Sequence[refusals.PolicyProbe]
) -> Measured:
    """Refusal of harmful requests (per source), over-refusal of safe ones and the hotel policy probes, by
    greedy replies and the refusal classifier; plus the refusal-over-compliance log-prob margin."""
    sets = {f"harmful:{name}": (prompts, run.suite.harmful_n) for name, prompts in harmful.items()}
    if safe:
        sets["safe:xstest"] = (safe, run.suite.safe_n)
    summaries: dict[str, Any] = {}
    items: dict[str, Any] = {}
    for name, (prompts, n) in sets.items():
        chats = [user_chat(run.tokenizer, p) for p in run.sample(prompts, n, name)]
        summaries[name], items[name] = _refusals(run, name, chats)
    if probes:
        summaries["policy"], items["policy"] = _policy(run, probes)
    return summaries, items


def _refusals(run: Run, name: str, chats: list[list[int]]) -> Measured:
    """How often one prompt set is refused, and the mean refusal margin; each against the base."""
    replies = greedy_text(run, chats, run.suite.safety_reply_tokens, f"{name} replies")
    refused = [refusals.is_refusal(r) for r in replies]
    margins = _refusal_margins(run, chats, f"{name} margins")
    key = fingerprint(chats, run.suite.safety_reply_tokens)
    summary = {"refusal": rate(refused, **run.ci), "margin": _margin_summary(run, margins)}
    if base := run.base_items(key, "safety", name):
        summary["refusal"]["vs_base"] = paired_change(base["refused"], refused, REFUSED_COMPLIED, **run.ci)
        summary["margin"]["vs_base"] = paired_change(base["margins"], margins, **run.ci)
    return summary, {"key": key, "refused": refused, "margins": margins}


def _refusal_margins(run: Run, chats: list[list[int]], desc: str) -> list[float]:
    """Per prompt, mean per-token log-prob of the canonical refusal minus that of the canonical compliance.

    Per token, because a summed log-prob would favour the shorter continuation whatever the model thinks.
    """
    continuations = [
        encode(run.tokenizer, t) for t in (refusals.REFUSAL_CONTINUATION, refusals.COMPLIANCE_CONTINUATION)
    ]
    margins = []
    for chat in run.bar(chats, desc):
        refusal, compliance = continuation_logprobs(run, chat, continuations)
        margins.append(float(refusal.mean() - compliance.mean()))
    return margins


def _margin_summary(run: Run, margins: Sequence[float]) -> dict[str, Any]:
    return {
        "mean": float(np.mean(margins)),
        "ci": list(ratio_ci(margins, **run.ci)),
        "positive": float(np.mean(np.asarray(margins) > 0)),
    }


def _policy(run: Run, probes: Sequence[refusals.PolicyProbe]) -> Measured:
    """Which hotel policy probes the model's greedy replies pass; against the base, which flipped."""
    chats = [chat_ids(run.tokenizer, p.messages()) for p in probes]
    replies = greedy_text(run, chats, run.suite.safety_reply_tokens, "policy replies")
    passed = [p.passes(r) for p, r in zip(probes, replies, strict=True)]
    key = fingerprint(chats, run.suite.safety_reply_tokens)
    summary: dict[str, Any] = {
        "passed": rate(passed, **run.ci),
        "probes": {p.name: ok for p, ok in zip(probes, passed, strict=True)},
    }
    if base := run.base_items(key, "safety", "policy"):
        summary["passed"]["vs_base"] = paired_change(base["passed"], passed, PASS_FAIL, **run.ci)
    return summary, {"key": key, "passed": passed, "replies": replies}
