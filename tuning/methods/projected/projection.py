"""The projected step: AdamW whose every step is projected out of the protected subspace before it is written
to the weights, so that no step changes a target layer's outputs on protected inputs.

Why the final step and not the gradient: Adam divides each coordinate by its own running RMS, a diagonal
preconditioner that rotates a projected gradient back into the protected subspace. Only projecting the
update ΔW = W_new − W_old itself guarantees ΔW U = 0, i.e. ΔW x = 0 for every protected input x ∈ span(U).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tuning.methods.projected.bases import ProtectedBases
from tuning.methods.projected.config import ProjectedConfig


def project_update(delta: Tensor, U: Tensor, V: Tensor | None = None, rows: Tensor | None = None) -> Tensor:
    """The part of an update that leaves protected inputs (and with V, protected outputs) untouched.

    Right side ΔW − (ΔW U) Uᵀ removes what ΔW does to inputs in span(U); left side (I − V Vᵀ) ΔW removes
    what it writes into span(V); `rows` then zeroes the output rows that may not change. Masking acts row by
    row, so it keeps the right-side guarantee; the left-side one holds exactly only without a row mask.
    """
    delta = delta - (delta @ U) @ U.T
    if V is not None:
        delta = delta - V @ (V.T @ delta)
    if rows is not None:
        delta = delta * rows[:, None]
    return delta


class Projector:
    """The loop's step hook: remembers the projected weights before each optimizer step and rewrites the step
    as its projection (clipped to `update_clip` of ‖W‖ if set).

    The snapshot is one extra float32 copy of the target weights: the price of projecting the true step.
    """

    def __init__(
        self, layers: dict[str, nn.Linear], bases: ProtectedBases, masks: dict[str, Tensor] | None, cfg: ProjectedConfig
    ):
        self.weights = {name: layer.weight for name, layer in layers.items()}
        self.before = {name: w.detach().clone() for name, w in self.weights.items()}
        self.update_clip = cfg.update_clip
        self.right: dict[str, Tensor] = {}
        self.left: dict[str, Tensor | None] = {}
        self.rows: dict[str, Tensor | None] = {}
        for name, w in self.weights.items():
            basis = bases.layers[name]
            if cfg.side == "both" and basis.V is None:
                raise ValueError(f"side='both' needs output bases: calibrate {name} with side='both'")
            self.right[name] = basis.U.to(w)
            self.left[name] = basis.V.to(w) if cfg.side == "both" else None
            self.rows[name] = masks[name].to(w.device) if masks is not None else None

    def before_step(self) -> None:
        with torch.no_grad():
            for name, w in self.weights.items():
                self.before[name].copy_(w)

    def after_step(self) -> dict[str, float]:
        """Project each layer's step since `before_step`, clip it, write it; return the kept energy fractions."""
        kept = {}
        with torch.no_grad():
            for name, w in self.weights.items():
                old = self.before[name]
                raw = w - old
                delta = project_update(raw, self.right[name], self.left[name], self.rows[name])
                raw_energy, energy = raw.square().sum(), delta.square().sum()
                # An empty step loses nothing: count it as fully kept.
                kept[name] = float(energy / raw_energy) if raw_energy > 0 else 1.0
                if self.update_clip is not None:
                    limit = self.update_clip * old.norm()
                    delta *= torch.clamp(limit / energy.sqrt().clamp_min(1e-30), max=1.0)
                w.copy_(old + delta)
        return kept


def projection_memory(layers: dict[str, nn.Linear], bases: ProtectedBases, side: str = "right") -> dict[str, dict]:
    """Per target layer, the memory the projection holds beside the model and its optimizer, in MiB: the basis
    (U, and V for side='both'; a basis shared by layers fed the same input is counted at its first layer) and
    the float32 snapshot of the weight the Projector keeps to rewrite each step."""
    seen: set[int] = set()
    report = {}
    for name, layer in layers.items():
        basis = bases.layers[name]
        tensors = [basis.U, basis.V] if side == "both" and basis.V is not None else [basis.U]
        fresh = [t for t in tensors if id(t) not in seen]
        seen.update(id(t) for t in fresh)
        report[name] = {
            "k": basis.k,
            "d": basis.d,
            "basis_mb": sum(t.numel() * 4 for t in fresh) / 2**20,  # held as float32 beside the weight
            "snapshot_mb": layer.weight.numel() * 4 / 2**20,
        }
    return report
