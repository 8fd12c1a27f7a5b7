"""Measure the base model on its protected distribution: accumulate each target linear layer's input second
moments, keep the eigenvectors holding an energy fraction ε as that layer's protected basis, save and load the
bases with provenance, and report how much of a domain gradient the projection would remove.

Why uncentered second moments: a layer's output change on input x is ΔW x, so ‖ΔW x‖² summed over the protected
tokens is tr(ΔW C ΔWᵀ) with C = Σ x xᵀ — the mean is part of the signal, not noise to subtract.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from tuning.projected.config import ProjectedConfig

Batch = dict[str, Tensor]
LossFn = Callable[[nn.Module, Batch], Tensor]

BASES_FILE = "bases.safetensors"
PROVENANCE_FILE = "calibration.json"
IGNORE_INDEX = -100


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


def target_linears(model: nn.Module, targets: Iterable[str]) -> dict[str, nn.Linear]:
    """The nn.Linear modules named like a target (q_proj, …); never the output embedding (lm_head)."""
    wanted = set(targets)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in wanted and module is not output
    }


def with_labels(batch: Batch) -> Batch:
    """The batch with next-token labels: input ids, padding ignored (unless the caller supplied labels)."""
    if "labels" in batch:
        return batch
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
    return {**batch, "labels": labels}


def lm_loss(model: nn.Module, batch: Batch) -> Tensor:
    """Mean next-token cross-entropy over the batch's unpadded tokens."""
    batch = with_labels(batch)
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


def token_mask(attention_mask: Tensor, skip_first_position: bool) -> Tensor:
    """Which positions count as calibration tokens: unpadded ones, minus each row's first real token if asked.

    The first token (BOS / attention sink) carries activations orders of magnitude larger than any other
    position, along a few fixed channels. Counted, those few directions swallow most of the trace, so an
    energy fraction ε would be spent on them and the subspace of ordinary tokens left under-protected. The
    cost: the sink token's own inputs are protected only as far as they overlap ordinary tokens' subspace.
    The cumulative sum finds the first real token under left padding as well as right padding.
    """
    real = attention_mask.bool()
    return real & (attention_mask.cumsum(dim=1) > 1) if skip_first_position else real


def eigendecompose(cov: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (descending) and eigenvectors (columns) of a symmetric PSD matrix, in float64."""
    values, vectors = torch.linalg.eigh(cov.double())
    # eigh returns ascending order; tiny negative eigenvalues are rounding noise of a PSD matrix.
    return values.flip(0).clamp_min(0.0), vectors.flip(1)


def basis_from_covariance(cov: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """The top eigenvectors of a symmetric PSD matrix holding `eps` of its trace, and all its eigenvalues."""
    values, vectors = eigendecompose(cov)
    return vectors[:, : energy_rank(values, eps)], values


def energy_rank(eigenvalues: Tensor, eps: float) -> int:
    """The smallest k whose top-k eigenvalues (descending) hold at least `eps` of their sum."""
    total = eigenvalues.sum()
    if eps <= 0.0 or total <= 0.0:
        return 0
    cumulative = eigenvalues.cumsum(0) / total
    # The tolerance lets an ε that equals a cumulative fraction (or 1.0) count as reached despite rounding.
    threshold = torch.tensor([eps - 1e-12], dtype=cumulative.dtype)
    return min(int(torch.searchsorted(cumulative, threshold).item()) + 1, eigenvalues.numel())


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
    provenance = {
        "model_id": model_id,
        "weights_sha256": weights_fingerprint(model, cfg.targets),
        "corpus": corpus,
        "tokens": sum(tokens.values()),
        "sources": {source: {"tokens": tokens[source], "weight": weights[source]} for source in pools},
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
    return ProtectedBases(bases, provenance)


@dataclass
class MeanMoments:
    """Per layer, the mean input second moment E[x xᵀ] (layers fed the same tensor share one) and the output's."""

    inputs: dict[str, Tensor]
    outputs: dict[str, Tensor]


class Moments:
    """Forward hooks adding each target layer's per-token input and output second moments, in float64.

    Layers fed the very same tensor (q/k/v, gate/up) share one input accumulator: the products are identical,
    so computing them once saves most of the calibration time and memory.
    """

    def __init__(self, layers: dict[str, nn.Linear], output_covariance: bool):
        self.inputs: dict[str, Tensor] = {}  # Σ x xᵀ
        self.outputs: dict[str, Tensor] = {}  # Σ y yᵀ with output_covariance, else Σ y²
        self.tokens = 0
        self.mask: Tensor | None = None
        self._output_covariance = output_covariance
        self._shared: set[str] = set()
        self._last: tuple[Tensor | None, str] = (None, "")
        self._handles = [layer.register_forward_hook(self._hook(name)) for name, layer in layers.items()]

    def add_batch(self, model: nn.Module, batch: Batch, skip_first_position: bool) -> None:
        self.mask = token_mask(batch["attention_mask"], skip_first_position)
        self.tokens += int(self.mask.sum())
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        # Dropping the reference lets the tensor be freed, and no later batch can be mistaken for it.
        self._last = (None, "")

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

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

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            x = args[0]
            if x.shape[:-1] != self.mask.shape:
                raise ValueError(f"{name} input {tuple(x.shape)} is not (batch, positions, features)")
            self._add_input(name, x)
            y = output[self.mask].double()
            if self._output_covariance:
                _add(self.outputs, name, y.T @ y)
            else:
                _add(self.outputs, name, y.square().sum(0))

        return hook

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


def accumulate_moments(
    model: nn.Module, layers: dict[str, nn.Linear], batches: Iterable[Batch], cfg: ProjectedConfig
) -> Moments:
    """One pass over the protected batches with the moment hooks attached; the model is left as it was."""
    moments = Moments(layers, output_covariance=cfg.side == "both")
    device = next(model.parameters()).device
    try:
        with eval_mode(model), torch.no_grad():
            for batch in tqdm(batches, desc="calibrate", unit="batch", disable=not cfg.progress):
                moments.add_batch(model, {k: v.to(device) for k, v in batch.items()}, cfg.skip_first_position)
    finally:
        moments.remove()
    if moments.tokens == 0:
        raise ValueError("the protected batches held no calibration tokens")
    return moments


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


def domain_gradients(
    model: nn.Module, layers: dict[str, nn.Linear], batches: Iterable[Batch], loss_fn: LossFn = lm_loss
) -> dict[str, Tensor]:
    """Each layer's weight gradient of the mean domain loss over the batches (left out of `.grad`)."""
    weights = [layer.weight for layer in layers.values()]
    totals = [torch.zeros_like(w) for w in weights]
    device = weights[0].device
    count = 0
    with eval_mode(model), grad_only_for(model, weights):
        for batch in batches:
            loss = loss_fn(model, {k: v.to(device) for k, v in batch.items()})
            for total, grad in zip(totals, torch.autograd.grad(loss, weights), strict=True):
                total += grad
            count += 1
    if count == 0:
        raise ValueError("no domain batches")
    return {name: total / count for name, total in zip(layers, totals, strict=True)}


def projection_energy_report(
    model: nn.Module, bases: ProtectedBases, domain_batches: Iterable[Batch], loss_fn: LossFn = lm_loss
) -> dict[str, dict[str, float]]:
    """Per layer: k, d, k/d and the fraction of the domain gradient's energy that projection removes.

    A removed fraction near 1 means the domain signal lives inside the protected subspace: that layer
    cannot learn the domain without disturbing the protected behaviour, whatever the learning rate.
    """
    layers = target_linears(model, bases.provenance["targets"])
    grads = domain_gradients(model, layers, domain_batches, loss_fn)
    report = {}
    for name, grad in grads.items():
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


def weights_fingerprint(model: nn.Module, targets: Iterable[str]) -> str:
    """sha256 over the target layers' names and weight bytes: bases are only valid for exactly these weights."""
    digest = hashlib.sha256()
    for name, layer in target_linears(model, targets).items():
        digest.update(name.encode())
        digest.update(layer.weight.detach().cpu().contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()


def _add(sums: dict[str, Tensor], name: str, value: Tensor) -> None:
    if name in sums:
        sums[name] += value
    else:
        sums[name] = value


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


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextmanager
def grad_only_for(model: nn.Module, params: list[Tensor]) -> Iterator[None]:
    """Gradients flow to `params` only (no graph is kept for the rest); every flag is restored afterwards."""
    flags = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in flags:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
