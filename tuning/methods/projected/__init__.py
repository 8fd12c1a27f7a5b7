"""Projected fine-tuning: learn the domain only where the base model's behaviour on its original distribution
is not disturbed.

    bases = calibrate_bases(model, protected_batches, cfg, model_id=..., corpus=...)  # subspace.py
    masks = select_rows(model, bases, domain_batches, cfg)                            # rows.py (optional)
    result = train_projected(model, domain_batches, cfg, bases, masks)                # train.py

The math is in subspace.py (moments → eigh → energy rank) and projection.py (the projected step); bases.py
saves and verifies the bases. The other methods and the registry that picks one live in `tuning.methods`.
"""

from tuning.methods.projected.bases import CalibrationMismatch, LayerBasis, ProtectedBases, weights_fingerprint
from tuning.methods.projected.config import ProjectedConfig
from tuning.methods.projected.projection import Projector, project_update, projection_memory
from tuning.methods.projected.rows import load_masks, save_masks, select_rows
from tuning.methods.projected.subspace import accumulate_moments, basis_from_covariance, calibrate_bases, energy_rank
from tuning.methods.projected.train import projection_energy_report, train_projected

__all__ = [
    "CalibrationMismatch",
    "LayerBasis",
    "ProjectedConfig",
    "Projector",
    "ProtectedBases",
    "accumulate_moments",
    "basis_from_covariance",
    "calibrate_bases",
    "energy_rank",
    "load_masks",
    "project_update",
    "projection_energy_report",
    "projection_memory",
    "save_masks",
    "select_rows",
    "train_projected",
    "weights_fingerprint",
]
