"""Rehearsal: every training batch also carries rows of the protected data, `ratio` of each mixed batch's rows —
with plain AdamW (`replay`, a baseline) or with the projected step (`projected_replay`: the projection keeps
protected inputs' outputs; the rehearsed rows keep what lives in the small energy directions the subspaces leave
free, measured: refusals)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from tuning.lm import IGNORE_INDEX, Batch, LossFn, lm_loss, with_labels
from tuning.loop import EvalFn, TrainConfig, TrainResult, fit
from tuning.methods.full import full_groups
from tuning.methods.projected import ProjectedConfig, ProtectedBases, train_projected

REPLAY_RATIO = 0.25  # protected share of each batch's rows for the methods that rehearse


def train_replay(
    model: nn.Module,
    train_batches: Iterable[Batch],
    cfg: TrainConfig,
    *,
    protected_batches: Iterable[Batch],
    ratio: float = REPLAY_RATIO,
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
    eval_fn: EvalFn | None = None,
    loss_fn: LossFn = lm_loss,
) -> TrainResult:
    """Projected fine-tuning on mixed batches (its TrainResult is named 'projected': the step is the same)."""
    mixed = Mixed(train_batches, protected_batches, ratio)
    return train_projected(model, mixed, cfg, bases, masks, eval_fn=eval_fn, loss_fn=loss_fn)


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
            n = round(len(batch["input_ids"]) * self.ratio / (1 - self.ratio))
            yield _concat([batch, *(next(self.protected_rows) for _ in range(n))])


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
