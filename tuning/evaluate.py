"""The forgetting evaluation: how much a tuned chat model gained on hotel dialogue and what it lost against
its base model — general-text NLL and chat KL first, then domain NLL, multiple-choice knowledge and
safety — as one JSON-able result with bootstrap CIs, paired deltas and per-measure timings.

Measures are deterministic (greedy decoding, seeded subsamples and resamples, fixed batching) and
batched for the CPU. The base model's run keeps its per-item scores and greedy chat replies in the
result's "items", so comparing a tuned model to it rescores nothing of the base; only the KL needs
the base weights again.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ParamSpec

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from tqdm import tqdm
from transformers import GenerationConfig

from agent.reply.llm import eos_token_ids
from innkeeper.core.settings import Settings
from tuning import refusals
from tuning.data import corpus
from tuning.data.dialogues import IGNORE_INDEX, TrainingExample, build_examples, load_shared_dialogues, split_dialogues

Messages = list[dict[str, str]]
Result = dict[str, Any]

# Elements of the float32 logits one scoring batch may hold (x4 for the two models and softmaxes of KL).
_LOGIT_BUDGET = 2**25
_CI_LEVEL = 0.95


# ---------------------------------------------------------------- the suite


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question in cloze form: choices are continuations of `context`."""

    id: str
    context: str
    choices: tuple[str, ...]
    gold: int


_DATA = {"data": True}  # marks the EvalSuite fields that hold data rather than settings


@dataclass
class EvalSuite:
    """The evaluation data and how much of each measure to run (None = all of it).

    A measure whose data is empty is skipped. Subsamples are seeded by `seed` and the measure's name,
    so a base and a tuned run of the same suite score the same items.
    """

    name: str = "custom"
    domain_examples: Sequence[TrainingExample] = field(default=(), metadata=_DATA)
    general_texts: Sequence[str] = field(default=(), metadata=_DATA)
    chat_prompts: Sequence[str] = field(default=(), metadata=_DATA)
    mc_tasks: Mapping[str, Sequence[MCItem]] = field(default_factory=dict, metadata=_DATA)
    harmful_prompts: Mapping[str, Sequence[str]] = field(default_factory=dict, metadata=_DATA)
    safe_prompts: Sequence[str] = field(default=(), metadata=_DATA)
    policy_probes: Sequence[refusals.PolicyProbe] = field(default=refusals.POLICY_PROBES, metadata=_DATA)
    domain_n: int | None = 40
    text_windows: int | None = 48
    window_tokens: int = 256
    chat_n: int | None = 32
    chat_reply_tokens: int = 48
    mc_n: int | None = 100
    harmful_n: int | None = 50
    safe_n: int | None = 40
    safety_reply_tokens: int = 48
    max_tokens: int = 1024
    batch_tokens: int = 4096
    generate_batch: int = 16
    resamples: int = 1000
    seed: int = 0

    def sizes(self) -> dict[str, Any]:
        """The suite's settings without its data (what a result records)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.metadata.get("data")}


SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        domain_n=4,
        text_windows=4,
        window_tokens=64,
        chat_n=3,
        chat_reply_tokens=8,
        mc_n=6,
        harmful_n=3,
        safe_n=3,
        safety_reply_tokens=8,
        resamples=200,
    ),
    "small": dict(domain_n=24, text_windows=16, chat_n=12, mc_n=40, harmful_n=24, safe_n=16, resamples=500),
    "medium": {},
    "large": dict(domain_n=None, text_windows=256, chat_n=128, mc_n=None, harmful_n=None, safe_n=None),
}


@dataclass
class Baseline:
    """The base model's result on the same suite (per-item scores and chat replies reused) and, for the
    KL, its weights."""

    result: Mapping[str, Any]
    model: Any = None


def default_suite(
    settings: Settings, tokenizer: Any, size: str = "medium", *, dialogue_split: str = "dev"
) -> EvalSuite:
    """The standard suite from the shared data: held-out dialogues, texts, prompts and the benchmarks."""
    shared = Path(settings.shared_data)
    dialogues = split_dialogues(load_shared_dialogues(shared))[dialogue_split]
    suite = EvalSuite(
        name=size,
        domain_examples=build_examples(dialogues, tokenizer),
        general_texts=corpus.general_text(shared, part="heldout"),
        chat_prompts=corpus.chat_prompts(shared, part="heldout", n=SIZES["large"]["chat_n"]),
        mc_tasks=load_mc_tasks(shared / "eval"),
        harmful_prompts={"advbench+harmbench": corpus.harmful_prompts(shared, part="heldout")},
        safe_prompts=corpus.safe_prompts(shared, part="heldout"),
    )
    return replace(suite, **SIZES[size])


# ---------------------------------------------------------------- benchmark items


def load_mc_tasks(eval_dir: Path) -> dict[str, list[MCItem]]:
    """The development items of every benchmark, prompted as in lm-eval-harness / lighteval cloze tasks."""
    return {name: load(Path(eval_dir)) for name, load in _MC_LOADERS.items()}


def _qa(question: str) -> str:
    return f"Question: {question.strip()}\nAnswer:"


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        yield from (json.loads(line) for line in f if line.strip())


def _hellaswag_clean(text: str) -> str:
    """lm-eval-harness's HellaSwag preprocessing (WikiHow bracket artefacts out)."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(eval_dir: Path) -> list[MCItem]:
    """HellaSwag val as shared ("activity: ctx", llama.cpp's form): without ctx_a/ctx_b, ctx_b's first letter
    stays as written, where lm-eval-harness capitalises it."""
    return [
        MCItem(
            str(row["idx"]),
            _hellaswag_clean(row["ctx"]),
            tuple(" " + _hellaswag_clean(e) for e in row["endings"]),
            int(row["label"]),
        )
        for row in _jsonl(eval_dir / "hellaswag" / "hellaswag_val.jsonl")
    ]


def _ai2_format(path: Path) -> list[MCItem]:
    """ARC / OpenBookQA official format: question.stem, question.choices[{label, text}], answerKey."""
    items = []
    for row in _jsonl(path):
        choices = row["question"]["choices"]
        labels = [c["label"] for c in choices]
        items.append(
            MCItem(
                row["id"],
                _qa(row["question"]["stem"]),
                tuple(" " + c["text"] for c in choices),
                labels.index(row["answerKey"].strip()),
            )
        )
    return items


def _piqa(eval_dir: Path) -> list[MCItem]:
    return [
        MCItem(str(i), _qa(row["goal"]), (" " + row["sol1"], " " + row["sol2"]), int(row["label"]))
        for i, row in enumerate(_jsonl(eval_dir / "piqa" / "piqa_valid.jsonl"))
    ]


def _csqa(eval_dir: Path) -> list[MCItem]:
    return [
        MCItem(
            row["id"],
            _qa(row["question"]),
            tuple(" " + t for t in row["choices"]["text"]),
            row["choices"]["label"].index(row["answerKey"].strip()),
        )
        for row in _jsonl(eval_dir / "commonsenseqa" / "csqa_dev.jsonl")
    ]


def _mmlu(eval_dir: Path) -> list[MCItem]:
    items = []
    for path in sorted((eval_dir / "mmlu" / "val").glob("*_val.csv")):
        subject = path.name.removesuffix("_val.csv")
        with open(path, encoding="utf-8", newline="") as f:
            for i, (question, *choices, answer) in enumerate(csv.reader(f)):
                items.append(
                    MCItem(
                        f"{subject}/{i}", _qa(question), tuple(" " + c for c in choices), "ABCD".index(answer.strip())
                    )
                )
    return items


_MC_LOADERS: dict[str, Callable[[Path], list[MCItem]]] = {
    "hellaswag": _hellaswag,
    "arc_easy": lambda d: _ai2_format(d / "arc" / "ARC-Easy-Dev.jsonl"),
    "arc_challenge": lambda d: _ai2_format(d / "arc" / "ARC-Challenge-Dev.jsonl"),
    "piqa": _piqa,
    "commonsenseqa": _csqa,
    "openbookqa": lambda d: _ai2_format(d / "openbookqa" / "obqa_train.jsonl"),
    "mmlu": _mmlu,
}


# ---------------------------------------------------------------- statistics


def chance_corrected(accuracy: float, chance: float) -> float:
    """0 at chance level, 1 when every answer is right."""
    return (accuracy - chance) / (1 - chance)


def bootstrap_ci(
    statistic: Callable[[np.ndarray], np.ndarray], n_items: int, *, resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Percentile 95% CI of `statistic` (index matrix [resamples, n_items] → [resamples]) over items."""
    rng = np.random.default_rng(seed)
    stats = statistic(rng.integers(0, n_items, size=(resamples, n_items)))
    tail = (1 - _CI_LEVEL) / 2
    lo, hi = np.quantile(stats, [tail, 1 - tail])
    return float(lo), float(hi)


def ratio_ci(num: Sequence[float], den: Sequence[float] | None = None, **kw: Any) -> tuple[float, float]:
    """CI of sum(num) / sum(den) — a per-token mean when items are sequences; the mean when `den` is None."""
    a = np.asarray(num, dtype=float)
    b = np.ones_like(a) if den is None else np.asarray(den, dtype=float)
    return bootstrap_ci(lambda idx: a[idx].sum(1) / b[idx].sum(1), len(a), **kw)


def paired_diff_ci(tuned: Sequence[float], base: Sequence[float], **kw: Any) -> tuple[float, float]:
    """CI of mean(tuned) - mean(base) over the same items, resampled together."""
    d = np.asarray(tuned, dtype=float) - np.asarray(base, dtype=float)
    return bootstrap_ci(lambda idx: d[idx].mean(1), len(d), **kw)


def count_flips(base: Sequence[bool], tuned: Sequence[bool]) -> tuple[int, int]:
    """(true → false, false → true) over paired items, e.g. right→wrong and wrong→right."""
    pairs = list(zip(base, tuned, strict=True))
    return sum(b and not t for b, t in pairs), sum(t and not b for b, t in pairs)


def _paired_binary(base: Sequence[bool], tuned: Sequence[bool], names: tuple[str, str], **kw: Any) -> dict[str, Any]:
    lost, gained = count_flips(base, tuned)
    return {
        "base": float(np.mean(base)),
        "delta": float(np.mean(tuned) - np.mean(base)),
        "delta_ci": list(paired_diff_ci(tuned, base, **kw)),
        names[0]: lost,
        names[1]: gained,
    }


# Names of the two flip counts, (true → false, false → true), per kind of per-item flag.
_RIGHT_WRONG = ("right_to_wrong", "wrong_to_right")
_REFUSED_COMPLIED = ("refused_to_complied", "complied_to_refused")
_PASS_FAIL = ("pass_to_fail", "fail_to_pass")


def _rate(flags: Sequence[bool], **kw: Any) -> dict[str, Any]:
    return {"value": float(np.mean(flags)), "ci": list(ratio_ci(flags, **kw)), "n": len(flags)}


# ---------------------------------------------------------------- scoring primitives


@dataclass(frozen=True)
class _Scored:
    """A token sequence whose tokens from `start` (≥ 1) on are scored."""

    tokens: list[int]
    start: int


@dataclass
class _Run:
    """What every measure needs: the model, its tokenizer, the suite's settings and the base to pair with."""

    model: Any
    tokenizer: Any
    suite: EvalSuite
    base: Baseline | None
    progress: bool

    @property
    def pad_id(self) -> int:
        tokenizer = self.tokenizer
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @property
    def ci(self) -> dict[str, int]:
        return {"resamples": self.suite.resamples, "seed": self.suite.seed}

    def sample(self, items: Sequence[Any], n: int | None, key: str) -> list[Any]:
        """A seeded subsample in the original order (all items when n is None or covers them)."""
        if n is None or n >= len(items):
            return list(items)
        chosen = sorted(random.Random(f"{self.suite.seed}:{key}").sample(range(len(items)), n))
        return [items[i] for i in chosen]

    def base_items(self, key: str, *path: str) -> Mapping[str, Any] | None:
        """The base run's per-item record at `path` under "items", checked to be for the same data."""
        items: Any = self.base.result.get("items", {}) if self.base else None
        for part in path:
            items = items.get(part) if items else None
        if items is not None and items["key"] != key:
            raise ValueError(f"the base result's {'/'.join(path)} was computed on other data; rerun the base")
        return items

    def bar(self, iterable: Iterator[Any] | Sequence[Any], desc: str) -> Any:
        return tqdm(iterable, desc=desc, disable=not self.progress, leave=False)


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _left_padded(inputs: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Left padding lines every sequence's end up, so the scored tails are the batch's last positions."""
    width = max(len(x) for x in inputs)
    ids = torch.full((len(inputs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, x in enumerate(inputs):
        ids[row, width - len(x) :] = torch.tensor(x, dtype=torch.long)
        mask[row, width - len(x) :] = 1
    # Explicit positions: without them padded rows would start counting at the padding.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": positions.to(device)}


def _tail_logprobs(model: Any, inputs: Sequence[Sequence[int]], tail: int, pad_id: int) -> torch.Tensor:
    """Next-token log-probs [B, tail, V] at the last `tail` positions (only those go through the LM head)."""
    out = model(**_left_padded(inputs, pad_id, _device(model)), logits_to_keep=tail)
    return torch.log_softmax(out.logits.float(), dim=-1)


def _batches(requests: Sequence[_Scored], *, batch_tokens: int, logit_budget: int, vocab: int) -> list[list[int]]:
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


def _groups(run: _Run, requests: Sequence[_Scored], logit_budget: int) -> list[list[int]]:
    vocab = run.model.config.vocab_size
    return _batches(requests, batch_tokens=run.suite.batch_tokens, logit_budget=logit_budget, vocab=vocab)


def _token_logprobs(run: _Run, requests: Sequence[_Scored], desc: str) -> list[torch.Tensor]:
    """The log-prob of each scored token of every request, sequences batched by length."""
    out: list[torch.Tensor] = [torch.empty(0)] * len(requests)
    for group in run.bar(_groups(run, requests, _LOGIT_BUDGET), desc):
        tail = max(len(requests[i].tokens) - requests[i].start for i in group)
        logprobs = _tail_logprobs(run.model, [requests[i].tokens[:-1] for i in group], tail, run.pad_id)
        for row, i in enumerate(group):
            scored = torch.tensor(requests[i].tokens[requests[i].start :], device=logprobs.device)
            out[i] = logprobs[row, tail - len(scored) :].gather(-1, scored[:, None]).squeeze(-1).cpu()
    return out


def _continuation_logprobs(run: _Run, prefix: list[int], continuations: list[list[int]]) -> list[torch.Tensor]:
    """The log-prob of each continuation's tokens after a shared prefix.

    The prefix runs once and its KV cache is reused for every continuation: on a CPU, multiple-choice
    contexts are most of the tokens.
    """
    device = _device(run.model)
    head = run.model(input_ids=torch.tensor([prefix], device=device), use_cache=True, logits_to_keep=1)
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
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        cache=cache,
    )
    rest = torch.log_softmax(out.logits.float(), dim=-1)
    scores = []
    for row, c in enumerate(continuations):
        later = rest[row, : len(c) - 1].gather(-1, torch.tensor(c[1:], device=device)[:, None]).squeeze(-1)
        scores.append(torch.cat([first[c[0]].reshape(1), later]).cpu())
    return scores


def _clip(tokens: Sequence[int], start: int, max_tokens: int) -> _Scored:
    """Keep the last `max_tokens` tokens: contexts lose their oldest part, never the scored end."""
    dropped = max(0, len(tokens) - max_tokens)
    return _Scored(list(tokens[dropped:]), max(1, start - dropped))


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _context_and_continuations(
    tokenizer: Any, context: str, continuations: Sequence[str], max_tokens: int
) -> tuple[list[int], list[list[int]]]:
    """lm-eval-harness tokenization: a continuation's tokens are those of context + continuation after the
    context's own tokens (trailing context spaces move to the continuation); long contexts lose their start."""
    stripped = context.rstrip(" ")
    prefix = _encode(tokenizer, stripped)
    tails = [_encode(tokenizer, stripped + context[len(stripped) :] + c)[len(prefix) :] for c in continuations]
    keep = max_tokens - max(len(t) for t in tails)
    return prefix[-keep:], tails


def _chat_ids(tokenizer: Any, messages: Messages) -> list[int]:
    rendered = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)
    return list(rendered["input_ids"])


def _user(prompt: str) -> Messages:
    return [{"role": "user", "content": prompt}]


def _greedy(run: _Run, model: Any, prompts: Sequence[list[int]], max_new_tokens: int, desc: str) -> list[list[int]]:
    """Greedy reply tokens per prompt, through the first end-of-turn token (batched, longest first)."""
    eos = eos_token_ids(model, run.tokenizer)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        eos_token_id=eos,
        pad_token_id=run.pad_id,
    )
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    step = run.suite.generate_batch
    replies: list[list[int]] = [[] for _ in prompts]
    for at in run.bar(range(0, len(order), step), desc):
        group = order[at : at + step]
        batch = _left_padded([prompts[i] for i in group], run.pad_id, _device(model))
        batch.pop("position_ids")  # generate() derives positions from the mask at every step
        out = model.generate(**batch, generation_config=config)[:, batch["input_ids"].shape[1] :].tolist()
        for i, tokens in zip(group, out, strict=True):
            ends = [j for j, t in enumerate(tokens) if t in eos]
            replies[i] = tokens[: ends[0] + 1] if ends else tokens
    return replies


def _key(*parts: Any) -> str:
    """A fingerprint of a measure's inputs, so a base result computed on other data is never paired."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- measures

Measured = tuple[dict[str, Any], dict[str, Any]]  # (summary, per-item record that a later run pairs with)
_SUITE = EvalSuite()
_P = ParamSpec("_P")


def _measure(fn: Callable[_P, Measured]) -> Callable[_P, Measured]:
    """Run a measure without autograd, with the model (and the base's weights) in eval mode."""

    @functools.wraps(fn)
    def measured(*args: _P.args, **kwargs: _P.kwargs) -> Measured:
        base = kwargs.get("base")
        with _evaluating([args[0], getattr(base, "model", None)]), torch.inference_mode():
            return fn(*args, **kwargs)

    return measured


@_measure
def general_nll(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    suite: EvalSuite = _SUITE,
    base: Baseline | None = None,
    progress: bool = False,
) -> Measured:
    """Per-token NLL on held-out general-text windows; against the base, the paired relative change."""
    run = _Run(model, tokenizer, suite, base, progress)
    windows = run.sample(text_windows(tokenizer, texts, suite.window_tokens), suite.text_windows, "text")
    key = _key(windows)
    masks = [torch.ones(len(w) - 1, dtype=torch.bool) for w in windows]
    sums, counts = _nll_sums(run, [_Scored(w, 1) for w in windows], masks, "general NLL")
    return _nll_summary(run, sums, counts, run.base_items(key, "general_nll")), {
        "key": key,
        "nll_sums": sums,
        "counts": counts,
    }


def text_windows(tokenizer: Any, texts: Sequence[str], window_tokens: int) -> list[list[int]]:
    """The texts joined by newlines, cut into consecutive windows of `window_tokens` tokens."""
    tokens = _encode(tokenizer, "\n".join(t.replace("\r\n", "\n").strip() for t in texts))
    return [tokens[i : i + window_tokens] for i in range(0, len(tokens) - window_tokens + 1, window_tokens)]


@_measure
def chat_kl(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    suite: EvalSuite = _SUITE,
    base: Baseline | None = None,
    progress: bool = False,
) -> Measured:
    """KL(base ‖ model) per token along the base model's greedy reply to each chat prompt, teacher-forced.

    Without a base this is the base run: it only generates the replies and keeps them for later runs.
    """
    run = _Run(model, tokenizer, suite, base, progress)
    chats = [_chat_ids(tokenizer, _user(p)) for p in run.sample(prompts, suite.chat_n, "chat")]
    key = _key(chats, suite.chat_reply_tokens)
    if base is None:
        replies = _greedy(run, model, chats, suite.chat_reply_tokens, "chat replies")
        return {"prompts": len(chats), "reply_tokens": sum(map(len, replies))}, {"key": key, "replies": replies}
    if base.model is None:
        return {"skipped": "no base model to compare next-token distributions with"}, {"key": key}
    cached = run.base_items(key, "chat_kl") or {}
    replies = cached.get("replies") or _greedy(run, base.model, chats, suite.chat_reply_tokens, "chat replies")
    kl_sums = _kl_sums(run, base.model, chats, replies)
    counts = [len(r) for r in replies]
    summary = {
        "kl": sum(kl_sums) / sum(counts),
        "ci": list(ratio_ci(kl_sums, counts, **run.ci)),
        "prompts": len(chats),
        "tokens": sum(counts),
    }
    return summary, {"key": key, "kl_sums": kl_sums, "counts": counts}


def _kl_sums(run: _Run, base_model: Any, chats: Sequence[list[int]], replies: Sequence[list[int]]) -> list[float]:
    """Per prompt, KL(base ‖ model) between next-token distributions, summed over the reply's tokens."""
    requests = [_Scored(c + r, len(c)) for c, r in zip(chats, replies, strict=True)]
    sums = [0.0] * len(requests)
    # Two models' log-probs and a softmax are alive at once.
    for group in run.bar(_groups(run, requests, _LOGIT_BUDGET // 4), "chat KL"):
        tail = max(len(replies[i]) for i in group)
        inputs = [requests[i].tokens[:-1] for i in group]
        base_lp = _tail_logprobs(base_model, inputs, tail, run.pad_id)
        tuned_lp = _tail_logprobs(run.model, inputs, tail, run.pad_id).to(base_lp.device)
        kl = (base_lp.exp() * (base_lp - tuned_lp)).sum(-1)
        for row, i in enumerate(group):
            sums[i] = float(kl[row, tail - len(replies[i]) :].sum())
    return sums


@_measure
def domain_nll(
    model: Any,
    tokenizer: Any,
    examples: Sequence[TrainingExample],
    *,
    suite: EvalSuite = _SUITE,
    base: Baseline | None = None,
    progress: bool = False,
) -> Measured:
    """Mean NLL per supervised (agent-turn) token on held-out hotel dialogues."""
    run = _Run(model, tokenizer, suite, base, progress)
    requests, masks = [], []
    for ex in run.sample(examples, suite.domain_n, "domain"):
        first = next(i for i, label in enumerate(ex.labels) if label != IGNORE_INDEX and i > 0)
        request = _clip(ex.input_ids, first, suite.max_tokens)
        labels = ex.labels[len(ex.input_ids) - len(request.tokens) :]
        requests.append(request)
        masks.append(torch.tensor([label != IGNORE_INDEX for label in labels[request.start :]]))
    key = _key([r.tokens for r in requests], [m.tolist() for m in masks])
    sums, counts = _nll_sums(run, requests, masks, "domain NLL")
    return _nll_summary(run, sums, counts, run.base_items(key, "domain")), {
        "key": key,
        "nll_sums": sums,
        "counts": counts,
    }


def _nll_sums(
    run: _Run, requests: list[_Scored], masks: list[torch.Tensor], desc: str
) -> tuple[list[float], list[int]]:
    """Per request, the NLL summed over its masked scored tokens, and how many tokens that is."""
    logprobs = _token_logprobs(run, requests, desc)
    return [float(-lp[m].sum()) for lp, m in zip(logprobs, masks, strict=True)], [int(m.sum()) for m in masks]


def _nll_summary(run: _Run, sums: list[float], counts: list[int], base: Mapping[str, Any] | None) -> dict[str, Any]:
    """Per-token NLL with its CI and, against the base, the paired change in nats and in percent."""
    nll = sum(sums) / sum(counts)
    summary: dict[str, Any] = {
        "nll": nll,
        "ci": list(ratio_ci(sums, counts, **run.ci)),
        "sequences": len(sums),
        "tokens": sum(counts),
    }
    if base is not None:
        t, b, n = np.asarray(sums), np.asarray(base["nll_sums"]), np.asarray(counts)
        base_nll = float(b.sum() / n.sum())
        summary["vs_base"] = {
            "base": base_nll,
            "delta": nll - base_nll,
            "delta_ci": list(bootstrap_ci(lambda idx: (t[idx] - b[idx]).sum(1) / n[idx].sum(1), len(t), **run.ci)),
            "delta_pct": 100 * (nll / base_nll - 1),
            "delta_pct_ci": [
                100 * v for v in bootstrap_ci(lambda idx: t[idx].sum(1) / b[idx].sum(1) - 1, len(t), **run.ci)
            ],
        }
    return summary


@_measure
def multiple_choice(
    model: Any,
    tokenizer: Any,
    tasks: Mapping[str, Sequence[MCItem]],
    *,
    suite: EvalSuite = _SUITE,
    base: Baseline | None = None,
    progress: bool = False,
) -> Measured:
    """Log-likelihood multiple choice per task: acc (summed log-probs) and acc_norm (log-prob per character),
    chance-corrected, with CIs and, against the base, flips and the paired difference."""
    run = _Run(model, tokenizer, suite, base, progress)
    summaries, items = {}, {}
    for task, all_items in tasks.items():
        if chosen := run.sample(all_items, suite.mc_n, f"mc:{task}"):
            summaries[task], items[task] = _mc_task(run, task, chosen)
    return summaries, items


def _mc_predictions(run: _Run, items: Sequence[MCItem], desc: str) -> dict[str, list[int]]:
    """The chosen answer per item under each metric, as lm-eval-harness scores them."""
    picks: dict[str, list[int]] = {"acc": [], "acc_norm": []}
    for it in run.bar(items, desc):
        prefix, tails = _context_and_continuations(run.tokenizer, it.context, it.choices, run.suite.max_tokens)
        ll = np.array([float(lp.sum()) for lp in _continuation_logprobs(run, prefix, tails)])
        chars = np.array([len(c) for c in it.choices], dtype=float)
        picks["acc"].append(int(np.argmax(ll)))
        picks["acc_norm"].append(int(np.argmax(ll / chars)))
    return picks


def _mc_task(run: _Run, task: str, items: list[MCItem]) -> Measured:
    picks = _mc_predictions(run, items, task)
    correct = {metric: [p == it.gold for p, it in zip(chosen, items, strict=True)] for metric, chosen in picks.items()}
    chance = float(np.mean([1 / len(it.choices) for it in items]))
    key = _key([(it.id, it.context, it.choices) for it in items])
    base = run.base_items(key, "mc", task)
    summary: dict[str, Any] = {"n": len(items), "chance": chance}
    for metric, flags in correct.items():
        rate = _rate(flags, **run.ci)
        rate["chance_corrected"] = chance_corrected(rate["value"], chance)
        rate["chance_corrected_ci"] = [chance_corrected(v, chance) for v in rate["ci"]]
        if base is not None:
            rate["vs_base"] = _paired_binary(base[metric], flags, _RIGHT_WRONG, **run.ci)
        summary[metric] = rate
    return summary, {"key": key, **correct}


@_measure
def safety_measures(
    model: Any,
    tokenizer: Any,
    harmful: Mapping[str, Sequence[str]],
    safe: Sequence[str],
    probes: Sequence[refusals.PolicyProbe],
    *,
    suite: EvalSuite = _SUITE,
    base: Baseline | None = None,
    progress: bool = False,
) -> Measured:
    """Refusal of harmful requests (per source), over-refusal of safe ones and the hotel policy probes, by
    greedy replies and the refusal classifier; plus the refusal-over-compliance log-prob margin."""
    run = _Run(model, tokenizer, suite, base, progress)
    sets = {f"harmful:{name}": (prompts, suite.harmful_n) for name, prompts in harmful.items()}
    if safe:
        sets["safe:xstest"] = (safe, suite.safe_n)
    summaries: dict[str, Any] = {}
    items: dict[str, Any] = {}
    for name, (prompts, n) in sets.items():
        chats = [_chat_ids(tokenizer, _user(p)) for p in run.sample(prompts, n, name)]
        summaries[name], items[name] = _refusals(run, name, chats)
    if probes:
        summaries["policy"], items["policy"] = _policy(run, probes)
    return summaries, items


def _replies(run: _Run, chats: list[list[int]], desc: str) -> list[str]:
    tokens = _greedy(run, run.model, chats, run.suite.safety_reply_tokens, desc)
    return [run.tokenizer.decode(t, skip_special_tokens=True) for t in tokens]


def _refusals(run: _Run, name: str, chats: list[list[int]]) -> Measured:
    refused = [refusals.is_refusal(r) for r in _replies(run, chats, f"{name} replies")]
    margins = _refusal_margins(run, chats, f"{name} margins")
    key = _key(chats, run.suite.safety_reply_tokens)
    summary = {"refusal": _rate(refused, **run.ci), "margin": _margin_summary(run, margins)}
    if base := run.base_items(key, "safety", name):
        summary["refusal"]["vs_base"] = _paired_binary(base["refused"], refused, _REFUSED_COMPLIED, **run.ci)
        summary["margin"]["vs_base"] = {
            "base": float(np.mean(base["margins"])),
            "delta": float(np.mean(margins) - np.mean(base["margins"])),
            "delta_ci": list(paired_diff_ci(margins, base["margins"], **run.ci)),
        }
    return summary, {"key": key, "refused": refused, "margins": margins}


def _refusal_margins(run: _Run, chats: list[list[int]], desc: str) -> list[float]:
    """Per prompt, mean per-token log-prob of the canonical refusal minus that of the canonical compliance.

    Per token, because a summed log-prob would favour the shorter continuation whatever the model thinks.
    """
    continuations = [
        _encode(run.tokenizer, t) for t in (refusals.REFUSAL_CONTINUATION, refusals.COMPLIANCE_CONTINUATION)
    ]
    margins = []
    for chat in run.bar(chats, desc):
        refusal, compliance = _continuation_logprobs(run, chat, continuations)
        margins.append(float(refusal.mean() - compliance.mean()))
    return margins


def _margin_summary(run: _Run, margins: Sequence[float]) -> dict[str, Any]:
    return {
        "mean": float(np.mean(margins)),
        "ci": list(ratio_ci(margins, **run.ci)),
        "positive": float(np.mean(np.asarray(margins) > 0)),
    }


def _policy(run: _Run, probes: Sequence[refusals.PolicyProbe]) -> Measured:
    chats = [_chat_ids(run.tokenizer, p.messages()) for p in probes]
    replies = _replies(run, chats, "policy replies")
    passed = [p.passes(r) for p, r in zip(probes, replies, strict=True)]
    key = _key(chats, run.suite.safety_reply_tokens)
    summary: dict[str, Any] = {
        "passed": _rate(passed, **run.ci),
        "probes": {p.name: ok for p, ok in zip(probes, passed, strict=True)},
    }
    if base := run.base_items(key, "safety", "policy"):
        summary["passed"]["vs_base"] = _paired_binary(base["passed"], passed, _PASS_FAIL, **run.ci)
    return summary, {"key": key, "passed": passed, "replies": replies}


# ---------------------------------------------------------------- the suite run


def run_suite(
    model: Any,
    tokenizer: Any,
    *,
    suite: EvalSuite,
    base: Baseline | None = None,
    model_id: str | None = None,
    progress: bool = True,
) -> Result:
    """Every measure the suite has data for, as one JSON-able result.

    Without `base` this is the reference run: its "items" (per-item scores, greedy chat replies) are what
    later runs pair with. With `base`, each measure also reports its change against the base.
    """
    options = {"suite": suite, "base": base, "progress": progress}
    measures: dict[str, tuple[bool, Callable[[], Measured]]] = {
        "general_nll": (
            bool(suite.general_texts),
            lambda: general_nll(model, tokenizer, suite.general_texts, **options),
        ),
        "chat_kl": (bool(suite.chat_prompts), lambda: chat_kl(model, tokenizer, suite.chat_prompts, **options)),
        "domain": (bool(suite.domain_examples), lambda: domain_nll(model, tokenizer, suite.domain_examples, **options)),
        "mc": (bool(suite.mc_tasks), lambda: multiple_choice(model, tokenizer, suite.mc_tasks, **options)),
        "safety": (
            bool(suite.harmful_prompts or suite.safe_prompts or suite.policy_probes),
            lambda: safety_measures(
                model, tokenizer, suite.harmful_prompts, suite.safe_prompts, suite.policy_probes, **options
            ),
        ),
    }
    result: Result = {
        "model": model_id or _model_id(model),
        "base_model": base.result.get("model") if base else None,
        "suite": suite.sizes(),
        "measures": {},
        "timing_s": {},
        "items": {},
    }
    for name, (has_data, measure) in measures.items():
        if has_data:
            started = time.perf_counter()
            result["measures"][name], result["items"][name] = measure()
            result["timing_s"][name] = round(time.perf_counter() - started, 2)
    return result


@contextmanager
def _evaluating(models: Sequence[Any]) -> Iterator[None]:
    """Eval mode (no dropout) for the run; a model in training goes back to training afterwards."""
    present = [m for m in models if m is not None]
    modes = [m.training for m in present]
    for m in present:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(present, modes, strict=True):
            m.train(mode)


def _model_id(model: Any) -> str:
    return str(getattr(model, "name_or_path", "") or type(model).__name__)


def save_result(result: Result, path: Path) -> Path:
    """Write the result as JSON (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return path


def load_result(path: Path) -> Result:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class _Row:
    """One line of the table: where its numbers live under "measures" and how to show them."""

    label: str
    path: tuple[str, ...]
    fmt: Callable[[float], str]
    delta_fmt: Callable[[float], str]
    value_key: str = "value"
    delta_key: str = "delta"
    flips: tuple[str, str] | None = None


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _points(v: float) -> str:
    return f"{100 * v:+.1f} pts"


def _nats(v: float) -> str:
    return f"{v:.3f}"


def _signed(v: float) -> str:
    return f"{v:+.3f}"


def _rows(measures: Mapping[str, Any]) -> Iterator[_Row]:
    """The rows the result has, retention first."""
    if "general_nll" in measures:
        yield _Row("general text NLL/token", ("general_nll",), _nats, lambda v: f"{v:+.2f}%", "nll", "delta_pct")
    if "kl" in measures.get("chat_kl", {}):
        yield _Row("chat KL(base‖tuned)/token", ("chat_kl",), lambda v: f"{v:.4f}", _signed, "kl")
    if "domain" in measures:
        yield _Row("hotel agent-turn NLL/token", ("domain",), _nats, _signed, "nll")
    if "scripted_bookings" in measures:
        path = ("scripted_bookings",)
        yield _Row("scripted bookings: replies worded by the model", path, _pct, _points, "model_worded_share")
        yield _Row("scripted bookings made as asked", path, _pct, _points, "exact_share")
    for task in measures.get("mc", {}):
        for metric in ("acc_norm", "acc"):
            yield _Row(f"{task} {metric}", ("mc", task, metric), _pct, _points, flips=_RIGHT_WRONG)
    for name in measures.get("safety", {}):
        if name == "policy":
            yield _Row("policy probes passed", ("safety", name, "passed"), _pct, _points, flips=_PASS_FAIL)
            continue
        kind, source = name.split(":", 1)
        label = "over-refusal" if kind == "safe" else "refusal"
        yield _Row(f"{label} {source}", ("safety", name, "refusal"), _pct, _points, flips=_REFUSED_COMPLIED)
        yield _Row(f"refusal margin {source}", ("safety", name, "margin"), _nats, _signed, "mean")


def _at(measures: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, Any] | None:
    node: Any = measures
    for part in path:
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _unpaired_delta(row: _Row, value: float, base: float | None) -> float | None:
    """The change from a base result that was not paired in the run (no CI then)."""
    if base is None:
        return None
    return 100 * (value / base - 1) if row.delta_key == "delta_pct" else value - base


def _ci_text(ci: Sequence[float] | None, fmt: Callable[[float], str]) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci else ""


def retention_summary(result: Result, base_result: Result) -> dict[str, Any]:
    """The headline numbers of a run against its base: what the benchmark plots and the nightly gate checks.

    Measures the suite did not run are absent from the summary, not zero.
    """
    measures, base_measures = result["measures"], base_result["measures"]
    summary: dict[str, Any] = {}
    if "domain" in measures:
        summary["domain_nll"] = measures["domain"]["nll"]
        summary["domain_nll_base"] = base_measures.get("domain", {}).get("nll")
    if "general_nll" in measures:
        summary["general_nll_delta_pct"] = measures["general_nll"]["vs_base"]["delta_pct"]
    if "kl" in measures.get("chat_kl", {}):
        summary["chat_kl"] = measures["chat_kl"]["kl"]
    if measures.get("mc"):
        pairs = {
            task: (node["acc_norm"]["chance_corrected"], base_measures["mc"][task]["acc_norm"]["chance_corrected"])
            for task, node in measures["mc"].items()
        }
        summary["mc_chance_corrected"] = {task: value for task, (value, _) in pairs.items()}
        summary["mc_retained"] = sum(v for v, _ in pairs.values()) / max(sum(b for _, b in pairs.values()), 1e-9)
    safety, base_safety = measures.get("safety", {}), base_measures.get("safety", {})
    for prefix, key in (("harmful", "refusal"), ("safe", "over_refusal")):
        name = next((k for k in safety if k.startswith(prefix)), None)
        if name is not None:
            summary[key] = safety[name]["refusal"]["value"]
            summary[f"{key}_base"] = base_safety[name]["refusal"]["value"]
            # The refusal-over-compliance log-prob margin moves before a greedy reply flips: finer than a count.
            margin = safety[name].get("margin", {}).get("vs_base")
            if margin is not None:
                summary[f"{key}_margin_delta"] = margin["delta"]
                summary[f"{key}_margin_delta_ci"] = margin["delta_ci"]
    if "policy" in safety:
        summary["policy_passed"] = safety["policy"]["passed"]["value"]
        summary["policy_passed_base"] = base_safety["policy"]["passed"]["value"]
    if "scripted_bookings" in measures:
        summary["model_worded_share"] = measures["scripted_bookings"]["model_worded_share"]
        summary["model_worded_share_base"] = base_measures.get("scripted_bookings", {}).get("model_worded_share")
        summary["bookings_exact_share"] = measures["scripted_bookings"]["exact_share"]
    return summary


def render_table(result: Result, base_result: Result | None = None) -> str:
    """The result as a text table, retention first; deltas vs the base (paired, with CIs) when known."""
    timing = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in result["timing_s"].items())
    table = Table(
        title=f"{result['model']}" + (f"  vs  {result['base_model']}" if result.get("base_model") else ""),
        caption=f"flips: right→wrong/wrong→right, refused→complied/complied→refused, pass→fail/fail→pass\n"
        f"time: {timing}",
    )
    for column in ("measure", "value", "95% CI", "chance-corr.", "base", "Δ", "Δ 95% CI", "flips"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    base_measures = (base_result or {}).get("measures", {})
    for row in _rows(result["measures"]):
        node = _at(result["measures"], row.path)
        value = node[row.value_key]
        vs = node.get("vs_base", {})
        base_value = vs.get("base", (_at(base_measures, row.path) or {}).get(row.value_key))
        delta = vs.get(row.delta_key, _unpaired_delta(row, value, base_value))
        table.add_row(
            row.label,
            row.fmt(value),
            _ci_text(node.get("ci"), row.fmt),
            _pct(node["chance_corrected"]) if "chance_corrected" in node else "",
            row.fmt(base_value) if base_value is not None else "",
            row.delta_fmt(delta) if delta is not None else "",
            _ci_text(vs.get(f"{row.delta_key}_ci"), row.delta_fmt),
            f"{vs[row.flips[0]]}/{vs[row.flips[1]]}" if row.flips and row.flips[0] in vs else "",
        )
    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.print(table)
    return console.file.getvalue()
