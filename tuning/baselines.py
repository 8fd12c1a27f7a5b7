"""The methods projected fine-tuning is compared against — full fine-tuning, LoRA, replay — each run through
the same loop as the method (`tuning.projected.train.fit`: batching, schedule, stopping, logging), and one
`train(method, ...)` dispatcher over all four."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from torch import Tensor, nn

from tuning.projected.calibrate import IGNORE_INDEX, Batch, LossFn, ProtectedBases, lm_loss, target_linears, with_labels
from tuning.projected.config import ProjectedConfig
from tuning.projected.train import EvalFn, ParamGroups, TrainResult, fit, train_projected

METHODS = ("projected", "full", "lora", "replay", "projected_replay")
REPLAY_RATIO = 0.25  # protected share of each batch's rows for the methods that rehearse


def train_full(
    model: nn.Module,
    train_batches: Iterable[Batch],
    cfg: ProjectedConfig,
    *,
    all_params: bool = False,
    eval_fn: EvalFn | None = None,
    loss_fn: LossFn = lm_loss,
) -> TrainResult:
    """Plain AdamW on the projected method's target layers, or with `all_params` on everything but the
    embeddings and lm_head (norms included)."""
    groups = _full_groups(model, cfg, all_params)
    return fit(model, train_batches, cfg, groups, method="full", eval_fn=eval_fn, loss_fn=loss_fn)


def train_lora(
    model: nn.Module,
    train_batches: Iterable[Batch],
    cfg: ProjectedConfig,
    *,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    eval_fn: EvalFn | None = None,
    loss_fn: LossFn = lm_loss,
) -> TrainResult:
    """LoRA adapters on the same target modules, merged into the model's weights in place at the end.

    peft injects the adapters into `model` itself, so `loss_fn` and `eval_fn` see it with adapters active —
    the same function the merged weights compute.
    """
    flags = {p: p.requires_grad for p in model.parameters()}
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(cfg.targets), bias="none")
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        wrapped = get_peft_model(model, lora)
    adapters = [p for name, p in model.named_parameters() if "lora_" in name]
    groups = [{"params": adapters, "weight_decay": cfg.weight_decay}]
    try:
        return fit(model, train_batches, cfg, groups, method="lora", eval_fn=eval_fn, loss_fn=loss_fn)
    finally:
        wrapped.merge_and_unload()
        for p, flag in flags.items():
            p.requires_grad_(flag)


def train_replay(
    model: nn.Module,
    train_batches: Iterable[Batch],
    protected_batches: Iterable[Batch],
    cfg: ProjectedConfig,
    *,
    ratio: float = REPLAY_RATIO,
    all_params: bool = False,
    eval_fn: EvalFn | None = None,
    loss_fn: LossFn = lm_loss,
) -> TrainResult:
    """Full fine-tuning where every batch also carries protected rows: `ratio` of each mixed batch's rows.

    Mixed batches are larger than the domain batches alone (extra compute per step), so compare at equal
    optimizer steps, as the loop reports them.
    """
    mixed = _Mixed(train_batches, protected_batches, ratio)
    groups = _full_groups(model, cfg, all_params)
    return fit(model, mixed, cfg, groups, method="replay", eval_fn=eval_fn, loss_fn=loss_fn)


def train(
    method: str,
    model: nn.Module,
    train_batches: Iterable[Batch],
    cfg: ProjectedConfig,
    *,
    bases: ProtectedBases | None = None,
    masks: dict[str, Tensor] | None = None,
    protected_batches: Iterable[Batch] | None = None,
    eval_fn: EvalFn | None = None,
    loss_fn: LossFn = lm_loss,
    **options: Any,
) -> TrainResult:
    """Run one of METHODS; `options` go to that method (all_params, r/alpha/dropout, ratio)."""
    common = {"eval_fn": eval_fn, "loss_fn": loss_fn, **options}
    match method:
        case "projected":
            if bases is None:
                raise ValueError("method 'projected' needs calibrated bases")
            return train_projected(model, train_batches, cfg, bases, masks, **common)
        case "full":
            return train_full(model, train_batches, cfg, **common)
        case "lora":
            return train_lora(model, train_batches, cfg, **common)
        case "replay":
            if protected_batches is None:
                raise ValueError("method 'replay' needs protected batches")
            return train_replay(model, train_batches, protected_batches, cfg, **common)
        case "projected_replay":
            # The projection keeps protected inputs' outputs; the rehearsed rows keep what lives in the small
            # energy directions the subspaces leave free (measured: refusals).
            if bases is None or protected_batches is None:
                raise ValueError("method 'projected_replay' needs calibrated bases and protected batches")
            mixed = _Mixed(train_batches, protected_batches, common.pop("ratio", REPLAY_RATIO))
            return train_projected(model, mixed, cfg, bases, masks, **common)
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def _full_groups(model: nn.Module, cfg: ProjectedConfig, all_params: bool) -> ParamGroups:
    if not all_params:
        params = [layer.weight for layer in target_linears(model, cfg.targets).values()]
        return [{"params": params, "weight_decay": cfg.weight_decay}]
    embeddings = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) for p in m.parameters()}
    params = [p for p in model.parameters() if id(p) not in embeddings]
    return [{"params": params, "weight_decay": cfg.weight_decay}]


class _Mixed:
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
