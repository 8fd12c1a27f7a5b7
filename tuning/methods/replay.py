"""Rehearsal: every training batch also carries rows of the protected data, `ratio` of each mixed batch's rows —
with plain AdamW (`replay`, a baseline) or with the projected step (`projected_replay`: the projection keeps
protected inputs' outputs; the rehearsed rows keep what lives in the small energy directions the subspaces leave
free, measured: refusals).

What the rehearsed rows are trained toward is the `anchor`: "text" — their own next tokens, as any training text
— or "kl" — the start model's predictions on them (KL(start ‖ model) per token, a copy of the start model kept
frozen beside the one training). Text rehearsal pulls toward the protected corpus, which the start model never
matched exactly (general NLL falls below the start model's); the KL anchor pulls back toward the start model
itself, which is what retention measures.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Literal

import torch
from torch import Tensor, nn

from tuning.lm import IGNORE_INDEX, Batch, LossFn, lm_loss, with_labels
from tuning.loop import EvalFn, TrainConfig, TrainResult, fit
from tuning.methods.full import full_groups
from tuning.methods.projected import ProjectedConfig, ProtectedBases, train_projected

REPLAY_RATIO = 0.25  # protected share of each batch's rows for the methods that rehearse
Anchor = Literal["text", "kl"]


def train_replay(
    model: nn.Module,
    train_batches: Iterable[Batch],
    cfg: TrainConfig,
    *,
    protected_batches: Iterable[Batch],
    ratio: float = REPLAY_RATIO,
    anchor: Anchor = "text",
    anchor_weight: float = 1.0,
    all_params: bool = False,
    eval_fn: EvalFn | None = None,
    loss_fn: LossFn = lm_loss,
) -> TrainResult:
    """Full fine-tuning where every batch also carries protected rows: `ratio` of each mixed batch's rows.

    Mixed batches are larger than the domain batches alone (extra compute per step), so compare at equal
    optimizer steps, as the loop reports them.
    """
    mixed = Mixed(train_batches, protected_batches, ratio)
    groups = full_groups(model, cfg, all_params)
    loss_fn = anchored_loss(model, anchor, anchor_weight, loss_fn)
    return fit(model, mixed, cfg, groups, method="replay", eval_fn=eval_fn, loss_fn=loss_fn)


def train_projected_replay(
    model: nn.Module,
    train_batches: Iterable[Batch],
    cfg: ProjectedConfig,
    bases: ProtectedBases,
    masks: dict[str, Tensor] | None = None,
    *,
    protected_batches: Iterable[Batch],
    ratio: float = REPLAY_RATIO,
    anchor: Anchor = "text",
    anchor_weight: float = 1.0,
    eval_fn: EvalFn | None = None,
    loss_fn: LossFn = lm_loss,
) -> TrainResult:
    """Projected fine-tuning on mixed batches (its TrainResult is named 'projected': the step is the same)."""
    mixed = Mixed(train_batches, protected_batches, ratio)
    loss_fn = anchored_loss(model, anchor, anchor_weight, loss_fn)
    return train_projected(model, mixed, cfg, bases, masks, eval_fn=eval_fn, loss_fn=loss_fn)


def anchored_loss(model: nn.Module, anchor: Anchor, weight: float, domain_loss: LossFn) -> LossFn:
    """The loss for mixed batches: `domain_loss` on every row ("text"), or on the domain rows with the KL anchor
    to a frozen copy of `model` as it is now on the rehearsed rows ("kl")."""
    if anchor == "text":
        return domain_loss
    if anchor != "kl":
        raise ValueError(f"unknown rehearsal anchor {anchor!r}: 'text' or 'kl'")
    if weight <= 0:
        raise ValueError("anchor_weight must be positive")
    return KLAnchor(model, weight, domain_loss)


class KLAnchor:
    """`domain_loss` on the domain rows plus `weight` × the mean per-token KL(start ‖ model) on the rehearsed rows
    (a batch's `rehearsed` flags), each part counted by its share of the batch's rows."""

    def __init__(self, model: nn.Module, weight: float, domain_loss: LossFn = lm_loss) -> None:
        self.start = copy.deepcopy(model).eval().requires_grad_(False)
        self.weight, self.domain_loss = weight, domain_loss

    def __call__(self, model: nn.Module, batch: Batch) -> Tensor:
        rehearsed = batch.get("rehearsed")
        if rehearsed is None or not rehearsed.any():
            return self.domain_loss(model, batch)
        rows = len(rehearsed)
        loss = self.weight * self.kl(model, _select(batch, rehearsed)) * (int(rehearsed.sum()) / rows)
        if not rehearsed.all():
            domain = ~rehearsed
            loss = loss + self.domain_loss(model, _select(batch, domain)) * (int(domain.sum()) / rows)
        return loss

    def kl(self, model: nn.Module, batch: Batch) -> Tensor:
        """Mean over the rows' unpadded positions of KL(start ‖ model) between next-token distributions."""
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        with torch.no_grad():
            start = torch.log_softmax(self.start(**inputs).logits.float(), dim=-1)
        current = torch.log_softmax(model(**inputs).logits.float(), dim=-1)
        per_token = (start.exp() * (start - current)).sum(dim=-1)
        mask = batch["attention_mask"].to(per_token.dtype)
        return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


def _select(batch: Batch, rows: Tensor) -> Batch:
    return {key: value[rows] for key, value in batch.items()}


class Mixed:
    """Re-iterable domain batches, each extended with the next protected rows (cycling the protected batches)."""

    def __init__(self, domain: Iterable[Batch], protected: Iterable[Batch], ratio: float):
        if not 0.0 <= ratio < 1.0:
            raise ValueError("ratio is the protected share of each batch: 0 <= ratio < 1")
        self.domain, self.ratio = domain, ratio
        self.protected_rows = _rows(protected)

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.domain:
            batch = with_labels(batch)
            rows = len(batch["input_ids"])
            n = round(rows * self.ratio / (1 - self.ratio))
            mixed = _concat([batch, *(next(self.protected_rows) for _ in range(n))])
            # Which rows are rehearsed: the KL anchor trains those toward the start model, not their text.
            yield {**mixed, "rehearsed": torch.arange(rows + n) >= rows}


def _rows(batches: Iterable[Batch]) -> Iterator[Batch]:
    """Single rows with labels, cycling over the batches forever."""
    while True:
        empty = True
        for batch in batches:
            batch = with_labels(batch)
            for i in range(len(batch["input_ids"])):
                empty = False
                yield {key: batch[key][i : i + 1] for key in ("input_ids", "attention_mask", "labels")}
        if empty:
            raise ValueError("the protected batches are empty")


def _concat(batches: list[Batch]) -> Batch:
    """Stack batches row-wise, right-padding to the longest (masked out and ignored by the loss)."""
    length = max(b["input_ids"].shape[1] for b in batches)
    fill = {"input_ids": 0, "attention_mask": 0, "labels": IGNORE_INDEX}
    return {
        key: torch.cat([nn.functional.pad(b[key], (0, length - b[key].shape[1]), value=pad) for b in batches])
        for key, pad in fill.items()
    }
