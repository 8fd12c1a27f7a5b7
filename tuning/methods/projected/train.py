"""The projected method as a whole: which weights train under the projection (the target layers, without weight
decay) and which without it (`also_train`), run through the shared loop with the `Projector` as its step hook; and,
before any training, how much of a domain gradient the projection would remove.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from torch import Tensor, nn

from tuning.lm import Batch, LossFn, lm_loss, mean_gradients, target_linears
from tuning.loop import EvalFn, ParamGroups, TrainResult, fit
from tuning.methods.projected.bases import ProtectedBases
from tuning.methods.projected.config import ProjectedConfig
from tuning.methods.projected.projection import Projector


def train_projected(
    model: nn.Module,
    train_batches: Iterable[Batch],
    cfg: ProjectedConfig,
    bases: ProtectedBases,
    masks: dict[str, Tensor] | None = None,
    *,
    eval_fn: EvalFn | None = None,
    loss_fn: LossFn = lm_loss,
) -> TrainResult:
    """Fine-tune the target linear layers in place so that no step changes their outputs on protected inputs.

    Only target weights train (plus `cfg.also_train`, unprotected); embeddings, lm_head and norms stay frozen.
    `masks` (from rows.select_rows) limit which output rows may change; None lets every row change.
    """
    layers = target_linears(model, cfg.targets)
    if missing := layers.keys() - bases.layers.keys():
        raise ValueError(f"no protected basis for {sorted(missing)}; calibrate with the same targets")
    projected = [layer.weight for layer in layers.values()]
    # No decoupled weight decay on projected weights: decay pulls W toward zero in every direction with no data
    # behind it, and projection strips only its protected part, leaving a data-free drift in exactly the
    # directions the domain update is meant to own.
    groups = [{"params": projected, "weight_decay": 0.0}, *_also_trained(model, cfg, exclude=projected)]
    hook = Projector(layers, bases, masks, cfg)
    return fit(model, train_batches, cfg, groups, method="projected", hook=hook, eval_fn=eval_fn, loss_fn=loss_fn)


def _also_trained(model: nn.Module, cfg: ProjectedConfig, exclude: list[Tensor]) -> ParamGroups:
    """The param group of `cfg.also_train` parameters (plain AdamW with weight decay), if any match."""
    excluded = {id(p) for p in exclude}
    extra = [
        p
        for name, p in model.named_parameters()
        if id(p) not in excluded and any(fnmatchcase(name, pattern) for pattern in cfg.also_train)
    ]
    return [{"params": extra, "weight_decay": cfg.weight_decay}] if extra else []


def projection_energy_report(
    model: nn.Module, bases: ProtectedBases, domain_batches: Iterable[Batch], loss_fn: LossFn = lm_loss
) -> dict[str, dict[str, float]]:
    """Per layer: k, d, k/d and the fraction of the domain gradient's energy that projection removes.

    A removed fraction near 1 means the domain signal lives inside the protected subspace: that layer
    cannot learn the domain without disturbing the protected behaviour, whatever the learning rate.
    """
    layers = target_linears(model, bases.provenance["targets"])
    report = {}
    for name, grad in mean_gradients(model, layers, domain_batches, loss_fn).items():
        basis = bases.layers[name]
        g = grad.double()
        inside = (g @ basis.U.to(g)).square().sum()
        report[name] = {
            "k": basis.k,
            "d": basis.d,
            "k_over_d": basis.k / basis.d,
            "removed": float(inside / g.square().sum().clamp_min(1e-300)),
        }
    return report
