"""The retention measures: what the tuned model kept of its base. General-text NLL (paired relative change)
and the chat KL from the base along the base's own greedy replies, which sees drift before any benchmark
answer flips."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tuning.evaluate.compare import fingerprint
from tuning.evaluate.context import Measured, Run, measure
from tuning.evaluate.generate import greedy
from tuning.evaluate.nll import nll_record, nll_summary, nll_sums
from tuning.evaluate.scoring import LOGIT_BUDGET, Scored, groups, tail_logprobs
from tuning.evaluate.stats import per_token, ratio_ci
from tuning.evaluate.tokens import encode, user_chat


@measure
def general_nll(run: Run, texts: Sequence[str]) -> Measured:
    """Per-token NLL on held-out general-text windows; against the base, the paired relative change."""
    suite = run.suite
    windows = run.sample(text_windows(run.tokenizer, texts, suite.window_tokens), suite.text_windows, "text")
    key = fingerprint(windows)
    masks = [torch.ones(len(w) - 1, dtype=torch.bool) for w in windows]
    sums, counts = nll_sums(run, [Scored(w, 1) for w in windows], masks, "general NLL")
    return nll_summary(run, sums, counts, run.base_items(key, "general_nll")), nll_record(key, sums, counts)


def text_windows(tokenizer: Any, texts: Sequence[str], window_tokens: int) -> list[list[int]]:
    """The texts joined by newlines, cut into consecutive windows of `window_tokens` tokens."""
    tokens = encode(tokenizer, "\n".join(t.replace("\r\n", "\n").strip() for t in texts))
    return [tokens[i : i + window_tokens] for i in range(0, len(tokens) - window_tokens + 1, window_tokens)]


@measure
def chat_kl(run: Run, prompts: Sequence[str]) -> Measured:
    """KL(base ‖ model) per token along the base model's greedy reply to each chat prompt, teacher-forced.

    Without a base this is the base run: it only generates the replies and keeps them for later runs.
    """
    suite, base = run.suite, run.base
    chats = [user_chat(run.tokenizer, p) for p in run.sample(prompts, suite.chat_n, "chat")]
    key = fingerprint(chats, suite.chat_reply_tokens)
    if base is None:
        replies = greedy(run, chats, suite.chat_reply_tokens, "chat replies")
        return {"prompts": len(chats), "reply_tokens": sum(map(len, replies))}, {"key": key, "replies": replies}
    if base.model is None:
        return {"skipped": "no base model to compare next-token distributions with"}, {"key": key}
    cached = run.base_items(key, "chat_kl") or {}
    replies = cached.get("replies") or greedy(run, chats, suite.chat_reply_tokens, "chat replies", model=base.model)
    kl_sums = _kl_sums(run, base.model, chats, replies)
    counts = [len(r) for r in replies]
    summary = {
        "kl": per_token(kl_sums, counts),
        "ci": list(ratio_ci(kl_sums, counts, **run.ci)),
        "prompts": len(chats),
        "tokens": sum(counts),
    }
    return summary, {"key": key, "kl_sums": kl_sums, "counts": counts}


def _kl_sums(run: Run, base_model: Any, chats: Sequence[list[int]], replies: Sequence[list[int]]) -> list[float]:
    """Per prompt, KL(base ‖ model) between next-token distributions, summed over the reply's tokens."""
    requests = [Scored(c + r, len(c)) for c, r in zip(chats, replies, strict=True)]
    sums = [0.0] * len(requests)
    # Two models' log-probs and a softmax are alive at once.
    for group in run.bar(groups(run, requests, LOGIT_BUDGET // 4), "chat KL"):
        tail = max(len(replies[i]) for i in group)
        inputs = [requests[i].tokens[:-1] for i in group]
        base_lp = tail_logprobs(base_model, inputs, tail, run.pad_id)
        tuned_lp = tail_logprobs(run.model, inputs, tail, run.pad_id).to(base_lp.device)
        kl = (base_lp.exp() * (base_lp - tuned_lp)).sum(-1)
        for row, i in enumerate(group):
            sums[i] = float(kl[row, tail - len(replies[i]) :].sum())
    return sums
