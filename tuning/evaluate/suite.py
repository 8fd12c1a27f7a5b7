"""What an evaluation runs on: the suite (data and how much of each measure to run), the named sizes, the
standard suite from the shared data, and the base a tuned model is compared with."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from innkeeper.core.settings import Settings
from tuning import refusals
from tuning.data import corpus
from tuning.data.dialogues import TrainingExample, build_examples, load_shared_dialogues, split_dialogues
from tuning.evaluate.mc_items import MCItem, load_mc_tasks

Result = dict[str, Any]

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
