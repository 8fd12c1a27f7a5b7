"""The protected subspaces, top to bottom: run the base model over its protected distribution and accumulate
each target linear layer's input second moments (moments), eigendecompose them (eigh), and keep the eigenvectors
holding an energy fraction ε (energy rank) as that layer's protected basis U.

Why uncentered second moments: a layer's output change on input x is ΔW x, so ‖ΔW x‖² summed over the protected
tokens is tr(ΔW C ΔWᵀ) with C = Σ x xᵀ — the mean is part of the signal, not noise to subtract. An update with
ΔW U = 0 (projection.py) then reaches only the discarded eigendirections, which hold at most (1 − ε) of tr(C).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from tuning.lm import Batch, linear_hooks, mode, on_device, target_linears, token_mask
from tuning.methods.projected.bases import LayerBasis, ProtectedBases, calibration_provenance
from tuning.methods.projected.config import ProjectedConfig

# --------------------------------------------------------------------------------------------------- moments


@dataclass
class MeanMoments:
    """Per layer, the mean input second moment E[x xᵀ] (layers fed the same tensor share one) and the output's."""

    inputs: dict[str, Tensor]
    outputs: dict[str, Tensor]


class Moments:
    """Sums of each target layer's per-token input and output second moments, in float64, fed by forward hooks.

    Layers fed the very same tensor (q/k/v, gate/up) share one input accumulator: the products are identical,
    so computing them once saves most of the calibration time and memory.
    """

    def __init__(self, output_covariance: bool):
        self.inputs: dict[str, Tensor] = {}  # Σ x xᵀ
        self.outputs: dict[str, Tensor] = {}  # Σ y yᵀ with output_covariance, else Σ y²
        self.tokens = 0
        self.mask: Tensor | None = None
        self._output_covariance = output_covariance
        self._shared: set[str] = set()
        self._last: tuple[Tensor | None, str] = (None, "")

    def add_batch(self, model: nn.Module, batch: Batch, skip_first_position: bool) -> None:
        self.mask = token_mask(batch["attention_mask"], skip_first_position)
        self.tokens += int(self.mask.sum())
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        # Dropping the reference lets the tensor be freed, and no later batch can be mistaken for it.
        self._last = (None, "")

    def add(self, name: str, x: Tensor, output: Tensor) -> None:
        """The forward hook: one layer's input x and output y on the current batch's counted tokens."""
        if x.shape[:-1] != self.mask.shape:
            raise ValueError(f"{name} input {tuple(x.shape)} is not (batch, positions, features)")
        self._add_input(name, x)
        y = output[self.mask].double()
        _add(self.outputs, name, y.T @ y if self._output_covariance else y.square().sum(0))

    def fold_into(self, means: MeanMoments | None, scale: float) -> MeanMoments:
        """`means` plus `scale` × these sums (in place; these sums are spent), keeping shared inputs shared."""
        scaled: set[int] = set()
        for tensor in [*self.inputs.values(), *self.outputs.values()]:
            if id(tensor) not in scaled:  # a shared input accumulator is scaled once
                tensor.mul_(scale)
                scaled.add(id(tensor))
        if means is None:
            return MeanMoments(dict(self.inputs), dict(self.outputs))
        added: set[int] = set()
        for name, tensor in self.inputs.items():
            if id(means.inputs[name]) not in added:
                means.inputs[name] += tensor
                added.add(id(means.inputs[name]))
        for name, tensor in self.outputs.items():
            means.outputs[name] += tensor
        return means

    def _add_input(self, name: str, x: Tensor) -> None:
        last_x, last_name = self._last
        self._last = (x, name)
        if x is last_x:
            self.inputs.setdefault(name, self.inputs[last_name])
            self._shared.add(name)
            return
        if name in self._shared:
            raise RuntimeError(f"{name} stopped sharing its input with the previous layer between batches")
        x = x[self.mask].double()
        _add(self.inputs, name, x.T @ x)


def _add(sums: dict[str, Tensor], name: str, value: Tensor) -> None:
    if name in sums:
        sums[name] += value
    else:
        sums[name] = value


def accumulate_moments(
    model: nn.Module, layers: dict[str, nn.Linear], batches: Iterable[Batch], cfg: ProjectedConfig
) -> Moments:
    """One pass over the protected batches with the moment hooks attached; the model is left as it was."""
    moments = Moments(output_covariance=cfg.side == "both")
    device = next(model.parameters()).device
    with linear_hooks(layers, moments.add), mode(model, training=False), torch.no_grad():
        for batch in tqdm(batches, desc="calibrate", unit="batch", disable=not cfg.progress):
            moments.add_batch(model, on_device(batch, device), cfg.skip_first_position)
    if moments.tokens == 0:
        raise ValueError("the protected batches held no calibration tokens")
    return moments


# ------------------------------------------------------------------------------------------------ eigh → rank


def eigendecompose(cov: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (descending) and eigenvectors (columns) of a symmetric PSD matrix, in float64."""
    values, vectors = torch.linalg.eigh(cov.double())
    # eigh returns ascending order; tiny negative eigenvalues are rounding noise of a PSD matrix.
    return values.flip(0).clamp_min(0.0), vectors.flip(1)


def energy_rank(eigenvalues: Tensor, eps: float) -> int:
    """The smallest k whose top-k eigenvalues (descending) hold at least `eps` of their sum."""
    total = eigenvalues.sum()
    if eps <= 0.0 or total <= 0.0:
        return 0
    cumulative = eigenvalues.cumsum(0) / total
    # The tolerance lets an ε that equals a cumulative fraction (or 1.0) count as reached despite rounding.
    threshold = torch.tensor([eps - 1e-12], dtype=cumulative.dtype)
    return min(int(torch.searchsorted(cumulative, threshold).item()) + 1, eigenvalues.numel())


def basis_from_covariance(cov: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """The top eigenvectors of a symmetric PSD matrix holding `eps` of its trace, and all its eigenvalues."""
    values, vectors = eigendecompose(cov)
    return vectors[:, : energy_rank(values, eps)], values


# ----------------------------------------------------------------------------------------------------- bases


def calibrate_bases(
    model: nn.Module,
    protected_batches: Iterable[Batch] | Mapping[str, Iterable[Batch]],
    cfg: ProjectedConfig,
    *,
    model_id: str,
    corpus: Any,
) -> ProtectedBases:
    """Run the base model over protected batches and build every target layer's protected basis.

    `protected_batches` is one pool (every token weighs the same) or a mapping source → batches: then each
    source's second moment is averaged over its own tokens and the sources are mixed with
    `cfg.source_weights` (1 for a source not named), so a few hundred tokens of refusals count as much as
    ten thousand of encyclopaedia text instead of vanishing below the energy cut. `model_id` names the
    weights (e.g. ChatModel.version); `corpus` is the caller's provenance of the protected data (source,
    split, selection), stored verbatim in calibration.json.
    """
    started = time.perf_counter()
    layers = target_linears(model, cfg.targets)
    if not layers:
        raise ValueError(f"no nn.Linear named {cfg.targets} in the model")
    pools = protected_batches if isinstance(protected_batches, Mapping) else {"all": protected_batches}
    weights = {source: cfg.source_weights.get(source, 1.0) for source in pools}
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"source weights {weights} sum to {total}; at least one must be positive")
    means: MeanMoments | None = None
    tokens = {}
    for source, batches in pools.items():  # one source's sums at a time: memory stays that of one pass
        moments = accumulate_moments(model, layers, batches, cfg)
        tokens[source] = moments.tokens
        means = moments.fold_into(means, weights[source] / (moments.tokens * total))
    bases = _layer_bases(layers, means, cfg)
    sources = {source: {"tokens": tokens[source], "weight": weights[source]} for source in pools}
    return ProtectedBases(bases, calibration_provenance(model, bases, cfg, model_id, corpus, sources, started))


def _layer_bases(names: Iterable[str], means: MeanMoments, cfg: ProjectedConfig) -> dict[str, LayerBasis]:
    """Bases from the mean moments; layers sharing an input share its eigendecomposition and tensors."""
    bases = {}
    current = None
    for name in names:
        second_moment = means.inputs[name]
        if second_moment is not current:
            # Layers sharing an input are hooked one after another, so only the latest spectrum is kept.
            current = second_moment
            eigenvalues, vectors = eigendecompose(second_moment)
            input_sq, by_rank = second_moment.diagonal().clone(), {}
        eps = cfg.eps_for(name)
        k = energy_rank(eigenvalues, eps)
        if k not in by_rank:
            by_rank[k] = vectors[:, :k].float()
        outputs = means.outputs[name]
        V, output_sq = None, outputs
        if cfg.side == "both":
            V, output_sq = basis_from_covariance(outputs, eps)[0].float(), outputs.diagonal().clone()
        bases[name] = LayerBasis(by_rank[k], eigenvalues, input_sq, output_sq, eps, V)
    return bases
