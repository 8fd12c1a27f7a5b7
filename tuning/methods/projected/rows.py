"""Choose, per target layer, the output rows (neurons) projected training may change, and save/load that choice.

The rule: a row is worth changing when the domain pulls on it hard and the protected distribution leans on it
little, so rows are ranked by

    score_i = ‖∂L_domain/∂W_i‖ / (importance_i + δ · mean(importance))

and the top `row_budget` fraction of each layer is kept; rows listed in `frozen_rows` are never kept.
`importance` is, by `selection`:
- "grad_over_activation": E_protected[y_i²], the row's output second moment on protected tokens;
- "grad_over_wanda": Σ_j |W_ij| · sqrt(E_protected[x_j²]), the Wanda weight-times-input-scale importance.
δ is relative to the layer's mean importance so that the rule does not depend on activation scale.

"domain_specificity" ranks rows by how specific their activation is to the domain instead, with no gradient:

    score_i = E_domain[y_i²] / (E_protected[y_i²] + δ · mean(E_protected[y²]))

the dense analogue of sparse memory fine-tuning's TF-IDF ranking (Lin et al. 2025: update the memory slots the
new data uses far more than the background data does): a row the domain drives hard and the protected corpus
hardly uses is where new knowledge can be written without overwriting old.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from tuning.lm import Batch, LossFn, linear_hooks, lm_loss, mean_gradients, mode, on_device, target_linears, token_mask
from tuning.methods.projected.bases import LayerBasis, ProtectedBases
from tuning.methods.projected.config import ProjectedConfig

MASKS_FILE = "masks.safetensors"


def row_scores(weight: Tensor, basis: LayerBasis, grad: Tensor, cfg: ProjectedConfig) -> Tensor:
    """How much each output row is worth changing (higher is better), by `cfg.selection`.

    For "domain_specificity" `grad` is the row's domain output energy E_domain[y_i²] (output_energy), not a gradient.
    """
    if cfg.selection == "domain_specificity":
        protected = basis.output_sq.to(grad.device).double()
        return grad.double() / (protected + cfg.selection_delta * protected.mean())
    if cfg.selection == "grad_over_activation":
        importance = basis.output_sq
    else:
        importance = weight.detach().double().abs() @ basis.input_sq.to(weight.device).sqrt()
    importance = importance.to(grad.device).double()
    return grad.double().norm(dim=1) / (importance + cfg.selection_delta * importance.mean())


def top_rows(scores: Tensor, budget: float, frozen: list[int]) -> Tensor:
    """Boolean row mask: the best-scoring `budget` fraction (at least one row), frozen rows excluded."""
    keep = max(1, round(budget * scores.numel()))
    scores = scores.clone()
    scores[frozen] = -torch.inf
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    mask[scores.topk(keep).indices] = True
    mask[frozen] = False
    return mask


def select_rows(
    model: nn.Module,
    bases: ProtectedBases,
    domain_batches: Iterable[Batch],
    cfg: ProjectedConfig,
    loss_fn: LossFn = lm_loss,
) -> dict[str, Tensor]:
    """Per target layer, which output rows may change (True) given the domain batches."""
    layers = target_linears(model, cfg.targets)
    if cfg.selection == "domain_specificity":
        signal = output_energy(model, layers, domain_batches, cfg.skip_first_position)
    else:
        signal = mean_gradients(model, layers, domain_batches, loss_fn)
    return {
        name: top_rows(
            row_scores(layer.weight, bases.layers[name], signal[name], cfg),
            cfg.row_budget_for(name),
            cfg.frozen_rows_for(name),
        ).cpu()
        for name, layer in layers.items()
    }


def output_energy(
    model: nn.Module, layers: dict[str, nn.Linear], batches: Iterable[Batch], skip_first_position: bool
) -> dict[str, Tensor]:
    """Per layer, each output row's mean square E[y_i²] over the batches' counted tokens (float64).

    Counted as calibration counts them (token_mask), so domain and protected energies compare like for like.
    """
    sums: dict[str, Tensor] = {}
    tokens = 0
    mask: Tensor | None = None

    def add(name: str, _x: Tensor, y: Tensor) -> None:
        energy = y[mask].double().square().sum(0)
        sums[name] = sums[name] + energy if name in sums else energy

    device = next(model.parameters()).device
    with linear_hooks(layers, add), mode(model, training=False), torch.no_grad():
        for batch in batches:
            batch = on_device(batch, device)
            mask = token_mask(batch["attention_mask"], skip_first_position)
            tokens += int(mask.sum())
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    if tokens == 0:
        raise ValueError("the domain batches held no counted tokens")
    return {name: total / tokens for name, total in sums.items()}


def save_masks(masks: dict[str, Tensor], directory: Path, cfg: ProjectedConfig) -> Path:
    """Write `masks.safetensors` next to the bases, with the rule that chose them in its metadata."""
    rule = cfg.model_dump(include={"selection", "row_budget", "layer_row_budget", "selection_delta", "frozen_rows"})
    path = Path(directory) / MASKS_FILE
    save_file({name: mask.contiguous() for name, mask in masks.items()}, path, metadata={"rule": json.dumps(rule)})
    return path


def load_masks(directory: Path, bases: ProtectedBases) -> dict[str, Tensor]:
    """Read saved masks, checking they cover exactly the bases' layers with one entry per output row."""
    masks = load_file(Path(directory) / MASKS_FILE)
    if masks.keys() != bases.layers.keys():
        raise ValueError("the saved masks do not cover the same layers as the bases")
    for name, mask in masks.items():
        if mask.dtype != torch.bool or mask.shape != bases.layers[name].output_sq.shape:
            raise ValueError(f"{name}: mask {mask.dtype} {tuple(mask.shape)} does not match the layer's rows")
    return masks
