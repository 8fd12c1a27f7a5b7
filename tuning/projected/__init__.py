"""Projected fine-tuning: learn the domain only where the base model's behaviour on its original distribution
is not disturbed.

    bases = calibrate_bases(model, protected_batches, cfg, model_id=..., corpus=...)  # calibrate.py
    masks = select_rows(model, bases, domain_batches, cfg)                            # neurons.py (optional)
    result = train_projected(model, domain_batches, cfg, bases, masks)                # train.py

Baselines sharing the same loop live in `tuning.baselines`.
"""

from tuning.projected.calibrate import (
    CalibrationMismatch,
    LayerBasis,
    ProtectedBases,
    basis_from_covariance,
    calibrate_bases,
    energy_rank,
    lm_loss,
    projection_energy_report,
    target_linears,
)
from tuning.projected.config import ProjectedConfig
from tuning.projected.neurons import load_masks, save_masks, select_rows
from tuning.projected.train import TrainResult, fit, project_update, train_projected

__all__ = [
    "CalibrationMismatch",
    "LayerBasis",
    "ProjectedConfig",
    "ProtectedBases",
    "TrainResult",
    "basis_from_covariance",
    "calibrate_bases",
    "energy_rank",
    "fit",
    "lm_loss",
    "load_masks",
    "project_update",
    "projection_energy_report",
    "save_masks",
    "select_rows",
    "target_linears",
    "train_projected",
]
