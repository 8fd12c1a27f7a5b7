"""LoRA (peft) on the target modules, trained through the shared loop and merged into the model's weights at the
end, so that it is compared with the other methods as the same kind of model."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from tuning.lm import Batch, LossFn, lm_loss
from tuning.loop import EvalFn, TrainConfig, TrainResult, fit


def train_lora(
    model: nn.Module,
    train_batches: Iterable[Batch],
    cfg: TrainConfig,
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
