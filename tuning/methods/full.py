"""Full fine-tuning, the reference the other methods are measured against: plain AdamW through the shared loop on
the target layers, or with `all_params` on everything but the embeddings and lm_head (norms included)."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from tuning.lm import Batch, LossFn, lm_loss, target_linears
from tuning.loop import EvalFn, ParamGroups, TrainConfig, TrainResult, fit


def train_full(
    model: nn.Module,
    train_batches: Iterable[Batch],
    cfg: TrainConfig,
    *,
    all_params: bool = False,
    eval_fn: EvalFn | None = None,
    loss_fn: LossFn = lm_loss,
) -> TrainResult:
    """Plain AdamW on the target layers (`cfg.targets`), or with `all_params` on all but the embeddings."""
    groups = full_groups(model, cfg, all_params)
    return fit(model, train_batches, cfg, groups, method="full", eval_fn=eval_fn, loss_fn=loss_fn)


def full_groups(model: nn.Module, cfg: TrainConfig, all_params: bool) -> ParamGroups:
    """One param group with `cfg.weight_decay`: the target layers' weights, or every non-embedding parameter."""
    if not all_params:
        params = [layer.weight for layer in target_linears(model, cfg.targets).values()]
        return [{"params": params, "weight_decay": cfg.weight_decay}]
    embeddings = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) for p in m.parameters()}
    params = [p for p in model.parameters() if id(p) not in embeddings]
    return [{"params": params, "weight_decay": cfg.weight_decay}]
