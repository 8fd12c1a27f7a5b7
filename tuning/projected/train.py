"""Projected fine-tuning: AdamW whose every step is projected out of the protected subspace before it is
written to the weights — and the one training loop (`fit`) that the baselines share, so that batching,
schedule, stopping and logging are identical across methods.

Why the final step and not the gradient: Adam divides each coordinate by its own running RMS, a diagonal
preconditioner that rotates a projected gradient back into the protected subspace. Only projecting the
update ΔW = W_new − W_old itself guarantees ΔW U = 0, i.e. ΔW x = 0 for every protected input x ∈ span(U).
"""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from tuning.projected.calibrate import (
    Batch,
    LossFn,
    ProtectedBases,
    eval_mode,
    grad_only_for,
    lm_loss,
    target_linears,
)
from tuning.projected.config import ProjectedConfig

EvalFn = Callable[[nn.Module], float]
ParamGroups = list[dict]


@dataclass
class TrainResult:
    """What a run did: losses per optimizer step, evaluations, projection diagnostics, time and memory."""

    method: str
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)
    steps_to_target: int | None = None
    # Per projected layer, ‖ΔW after projection and row mask‖² / ‖ΔW as AdamW proposed it‖², at `logged_steps`.
    kept_fraction: dict[str, list[float]] = field(default_factory=dict)
    logged_steps: list[int] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0


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
    `masks` (from neurons.select_rows) limit which output rows may change; None lets every row change.
    """
    layers = target_linears(model, cfg.targets)
    if missing := layers.keys() - bases.layers.keys():
        raise ValueError(f"no protected basis for {sorted(missing)}; calibrate with the same targets")
    projected = [layer.weight for layer in layers.values()]
    # No decoupled weight decay on projected weights: decay pulls W toward zero in every direction with no data
    # behind it, and projection strips only its protected part, leaving a data-free drift in exactly the
    # directions the domain update is meant to own.
    groups = [{"params": projected, "weight_decay": 0.0}]
    groups += _also_trained(model, cfg, exclude=projected)
    projector = Projector(layers, bases, masks, cfg)
    return fit(
        model, train_batches, cfg, groups, method="projected", projector=projector, eval_fn=eval_fn, loss_fn=loss_fn
    )


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
    """Remembers the projected weights before each optimizer step and rewrites the step as its projection.

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

    def snapshot(self) -> None:
        with torch.no_grad():
            for name, w in self.weights.items():
                self.before[name].copy_(w)

    def apply(self) -> dict[str, float]:
        """Project each layer's step since `snapshot`, clip it, write it; return the kept energy fractions."""
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


def fit(
    model: nn.Module,
    train_batches: Iterable[Batch],
    cfg: ProjectedConfig,
    groups: ParamGroups,
    *,
    method: str,
    projector: Projector | None = None,
    eval_fn: EvalFn | None = None,
    loss_fn: LossFn = lm_loss,
) -> TrainResult:
    """The training loop every method runs: AdamW over `groups`, warmup + cosine, accumulation, clipping,
    optional projection of each step, evaluation every `cfg.eval_every` steps and early stop at `target_loss`."""
    params = [p for group in groups for p in group["params"]]
    _require_float32(params)
    result = TrainResult(method)
    optimizer = AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    schedule = LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
    micro_batches = _micro_batches(train_batches, cfg.batch_size, params[0].device)
    with torch.random.fork_rng(), grad_only_for(model, params), _train_mode(model):
        torch.manual_seed(cfg.seed)
        for step in tqdm(range(1, cfg.steps + 1), desc=method, unit="step", disable=not cfg.progress):
            started = time.perf_counter()
            loss = 0.0
            for _ in range(cfg.grad_accum):
                micro_loss = loss_fn(model, next(micro_batches)) / cfg.grad_accum
                micro_loss.backward()
                loss += micro_loss.item()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            if projector is not None:
                projector.snapshot()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            kept = projector.apply() if projector is not None else {}

            result.steps = step
            result.losses.append(loss)
            result.step_seconds.append(time.perf_counter() - started)
            result.rss_mb.append(_rss_mb())
            if kept and step % cfg.log_every == 0:
                result.logged_steps.append(step)
                for name, fraction in kept.items():
                    result.kept_fraction.setdefault(name, []).append(fraction)
            if eval_fn is not None and cfg.eval_every and step % cfg.eval_every == 0:
                with eval_mode(model), torch.no_grad():
                    value = float(eval_fn(model))
                result.evals.append((step, value))
                if cfg.target_loss is not None and value <= cfg.target_loss:
                    result.steps_to_target = step
                    break
    # ru_maxrss is in KiB on Linux and covers the whole process, not only this run.
    result.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def lr_factor(step: int, cfg: ProjectedConfig) -> float:
    """Learning-rate multiplier after `step` optimizer steps: linear warmup, then cosine down to min_lr_ratio."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _also_trained(model: nn.Module, cfg: ProjectedConfig, exclude: list[Tensor]) -> ParamGroups:
    """The param group of `cfg.also_train` parameters (plain AdamW with weight decay), if any match."""
    excluded = {id(p) for p in exclude}
    extra = [
        p
        for name, p in model.named_parameters()
        if id(p) not in excluded and any(fnmatchcase(name, pattern) for pattern in cfg.also_train)
    ]
    return [{"params": extra, "weight_decay": cfg.weight_decay}] if extra else []


def _micro_batches(batches: Iterable[Batch], size: int, device: torch.device) -> Iterator[Batch]:
    """Endless stream of at most `size`-row batches: re-iterates `batches` each epoch, splitting big ones."""
    while True:
        empty = True
        for batch in batches:
            rows = len(next(iter(batch.values())))
            for start in range(0, rows, size):
                empty = False
                yield {key: value[start : start + size].to(device) for key, value in batch.items()}
        if empty:
            raise ValueError("the training batches ran out (pass a re-iterable, e.g. a list)")


def _require_float32(params: list[Tensor]) -> None:
    # Master weights must be float32: bf16 cannot represent small updates, and the projection would be lost
    # in rounding (it relies on W_old + ΔW landing exactly where intended).
    if not params:
        raise ValueError("nothing to train")
    if wrong := {p.dtype for p in params} - {torch.float32}:
        raise ValueError(f"trainable weights must be float32 (load the model in float32), found {wrong}")


def _rss_mb() -> float:
    """Resident memory of this process now, in MiB (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@contextmanager
def _train_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.train()
    try:
        yield
    finally:
        model.train(was_training)
