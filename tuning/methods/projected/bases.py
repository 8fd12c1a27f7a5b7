"""The protected bases as data and as files: each layer's basis and statistics, the provenance of a calibration,
and saving/loading them with checks that they belong to exactly these weights and were not changed since."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from tuning.lm import target_linears
from tuning.methods.projected.config import ProjectedConfig

BASES_FILE = "bases.safetensors"
PROVENANCE_FILE = "calibration.json"


class CalibrationMismatch(ValueError):
    """Saved bases do not belong to this model, or their files were changed after calibration."""


@dataclass
class LayerBasis:
    """One linear layer's protected input subspace, plus the protected statistics neuron selection uses."""

    U: Tensor  # (d_in, k) float32, orthonormal columns: the protected input directions
    eigenvalues: Tensor  # (d_in,) float64, descending: spectrum of the mean input second moment E[x xᵀ]
    input_sq: Tensor  # (d_in,) float64: E[x_j²]
    output_sq: Tensor  # (d_out,) float64: E[y_i²]
    eps: float
    V: Tensor | None = None  # (d_out, k_out) protected output directions, only for side='both'

    @property
    def k(self) -> int:
        return self.U.shape[1]

    @property
    def d(self) -> int:
        return self.U.shape[0]


@dataclass
class ProtectedBases:
    """Bases for every target layer of one model, with where they came from."""

    layers: dict[str, LayerBasis]
    provenance: dict[str, Any]

    def k_over_d(self) -> dict[str, float]:
        return {name: b.k / b.d for name, b in self.layers.items()}

    def save(self, directory: Path) -> Path:
        """Write `bases.safetensors` (tensors shared between layers stored once) and `calibration.json`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors, index = _flatten(self.layers)
        save_file(tensors, directory / BASES_FILE)
        provenance = {**self.provenance, "bases_sha256": _file_sha256(directory / BASES_FILE), "layers": index}
        (directory / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2))
        return directory

    @classmethod
    def load(cls, directory: Path, model: nn.Module | None = None) -> ProtectedBases:
        """Read saved bases, checking the file hash and, given the model, that its weights are the calibrated ones."""
        directory = Path(directory)
        provenance = json.loads((directory / PROVENANCE_FILE).read_text())
        if _file_sha256(directory / BASES_FILE) != provenance["bases_sha256"]:
            raise CalibrationMismatch(f"{directory / BASES_FILE} changed since calibration")
        tensors = load_file(directory / BASES_FILE)
        index = provenance.pop("layers")
        layers = {name: _layer_from(tensors, entry) for name, entry in index.items()}
        if model is not None:
            _check_model(model, layers, provenance)
        return cls(layers, provenance)


def calibration_provenance(
    model: nn.Module,
    bases: dict[str, LayerBasis],
    cfg: ProjectedConfig,
    model_id: str,
    corpus: Any,
    sources: dict[str, dict[str, Any]],
    started: float,
) -> dict[str, Any]:
    """Where freshly calibrated bases came from: weights, protected data (per source: tokens, weight), settings."""
    return {
        "model_id": model_id,
        "weights_sha256": weights_fingerprint(model, cfg.targets),
        "corpus": corpus,
        "tokens": sum(source["tokens"] for source in sources.values()),
        "sources": sources,
        "eps": cfg.eps,
        "layer_eps": cfg.layer_eps,
        "targets": list(cfg.targets),
        "skip_first_position": cfg.skip_first_position,
        "side": cfg.side,
        "mean_k_over_d": sum(b.k / b.d for b in bases.values()) / len(bases),
        "seconds": round(time.perf_counter() - started, 2),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def weights_fingerprint(model: nn.Module, targets: Iterable[str]) -> str:
    """sha256 over the target layers' names and weight bytes: bases are only valid for exactly these weights."""
    digest = hashlib.sha256()
    for name, layer in target_linears(model, targets).items():
        digest.update(name.encode())
        digest.update(layer.weight.detach().cpu().contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()


def _flatten(layers: dict[str, LayerBasis]) -> tuple[dict[str, Tensor], dict[str, dict[str, Any]]]:
    """Tensors keyed for safetensors, each shared tensor once, and the per-layer index pointing at them."""
    tensors: dict[str, Tensor] = {}
    keys: dict[int, str] = {}
    index = {}
    for name, basis in layers.items():
        entry: dict[str, Any] = {"eps": basis.eps, "k": basis.k, "d": basis.d}
        for field in ("U", "eigenvalues", "input_sq", "output_sq", "V"):
            tensor = getattr(basis, field)
            if tensor is None:
                continue
            key = keys.setdefault(id(tensor), f"{name}.{field}")
            tensors.setdefault(key, tensor.contiguous())
            entry[field] = key
        index[name] = entry
    return tensors, index


def _layer_from(tensors: dict[str, Tensor], entry: dict[str, Any]) -> LayerBasis:
    V = tensors[entry["V"]] if "V" in entry else None
    fields = ("U", "eigenvalues", "input_sq", "output_sq")
    return LayerBasis(*(tensors[entry[f]] for f in fields), eps=entry["eps"], V=V)


def _check_model(model: nn.Module, layers: dict[str, LayerBasis], provenance: dict[str, Any]) -> None:
    found = target_linears(model, provenance["targets"])
    if found.keys() != layers.keys():
        raise CalibrationMismatch("the model's target layers are not the calibrated ones")
    for name, layer in found.items():
        if layer.weight.shape != (layers[name].output_sq.numel(), layers[name].d):
            raise CalibrationMismatch(f"{name}: weight {tuple(layer.weight.shape)} does not match its basis")
    if weights_fingerprint(model, provenance["targets"]) != provenance["weights_sha256"]:
        raise CalibrationMismatch(f"bases were calibrated on other weights ({provenance['model_id']})")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
