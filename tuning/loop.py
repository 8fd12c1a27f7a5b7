"""The one training loop every method runs, so that batching, schedule, clipping, stopping and logging are
identical across methods: AdamW over the method's parameter groups, linear warmup then cosine decay, gradient
accumulation over micro-batches, gradient clipping, evaluation every `eval_every` steps with an early stop at
`target_loss`, and a per-step record of loss, time and memory.

A method changes what is trained (its parameter groups) and, optionally, each step itself through a `StepHook`
that sees the weights before AdamW writes them and may rewrite the step afterwards (the projection does).

Under `accelerate launch` the same loop runs data-parallel (`tuning.distributed`): each rank runs its share of a
step's micro-batches, the gradients are averaged across ranks before clipping, and every rank then takes the same
step, projection included. Only the main rank shows progress.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from tuning import distributed
from tuning.lm import Batch, LossFn, grad_only_for, lm_loss, mode, on_device

EvalFn = Callable[[nn.Module], float]
ParamGroups = list[dict]


class TrainConfig(Protocol):
    """The knobs the loop and the methods read (ProjectedConfig documents and validates each of them)."""

    targets: tuple[str, ...]
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    steps: int
    batch_size: int
    grad_accum: int
    grad_clip: float | None
    warmup_steps: int
    min_lr_ratio: float
    seed: int
    eval_every: int
    target_loss: float | None
    log_every: int
    progress: bool
    progress_file: str | None


class StepHook(Protocol):
    """A method's say in each optimizer step: called just before AdamW writes the weights and just after."""

    def before_step(self) -> None: ...

    def after_step(self) -> dict[str, float]:
        """Rewrite the step if the method must; return per-layer fractions to log (TrainResult.kept_fraction)."""
        ...


@dataclass
class TrainResult:
    """What a run did: losses per optimizer step, evaluations, step-hook diagnostics, time and memory."""

    method: str
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)
    steps_to_target: int | None = None
    # Per layer, the fraction the step hook reported at `logged_steps` (the projection: ‖ΔW after projection and
    # row mask‖² / ‖ΔW as AdamW proposed it‖²); empty without a hook.
    kept_fraction: dict[str, list[float]] = field(default_factory=dict)
    logged_steps: list[int] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0

    def record(self, step: int, loss: float, seconds: float, kept: dict[str, float], log_every: int) -> None:
        """One optimizer step's loss, time, memory and (every `log_every` steps) the hook's fractions."""
        self.steps = step
        self.losses.append(loss)
        self.step_seconds.append(seconds)
        self.rss_mb.append(_rss_mb())
        if kept and step % log_every == 0:
            self.logged_steps.append(step)
            for name, fraction in kept.items():
                self.kept_fraction.setdefault(name, []).append(fraction)


def fit(
    model: nn.Module,
    train_batches: Iterable[Batch],
    cfg: TrainConfig,
    groups: ParamGroups,
    *,
    method: str,
    hook: StepHook | None = None,
    eval_fn: EvalFn | None = None,
    loss_fn: LossFn = lm_loss,
) -> TrainResult:
    """Train `groups` in place for `cfg.steps` optimizer steps (fewer if `cfg.target_loss` is reached)."""
    params = [p for group in groups for p in group["params"]]
    _require_float32(params)
    result = TrainResult(method)
    optimizer = AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    schedule = LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
    distributed.broadcast_parameters(params)
    micro_batches = distributed.my_micro_batches(_micro_batches(train_batches, cfg.batch_size, params[0].device))
    my_micro_steps = distributed.local_share(cfg.grad_accum)
    show_progress = cfg.progress and distributed.is_main()
    with torch.random.fork_rng(), grad_only_for(model, params), mode(model, training=True):
        torch.manual_seed(cfg.seed)
        for step in tqdm(range(1, cfg.steps + 1), desc=method, unit="step", disable=not show_progress):
            started = time.perf_counter()
            loss = _backward(model, micro_batches, my_micro_steps, loss_fn)
            distributed.average_gradients(params)
            loss = distributed.average(loss)
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            if hook is not None:
                hook.before_step()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            kept = hook.after_step() if hook is not None else {}
            result.record(step, loss, time.perf_counter() - started, kept, cfg.log_every)
            if getattr(cfg, "progress_file", None) and distributed.is_main():
                _report_progress(Path(cfg.progress_file), step, cfg.steps, loss)
            if _evaluate(model, eval_fn, step, cfg, result):
                break
    # ru_maxrss is in KiB on Linux and covers the whole process, not only this run.
    result.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _report_progress(path: Path, step: int, of: int, loss: float) -> None:
    """Replace the progress file atomically, so a reader never sees half of it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"step": step, "of": of, "loss": round(float(loss), 5), "at": time.time()}))
    tmp.replace(path)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier after `step` optimizer steps: linear warmup, then cosine down to min_lr_ratio."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _backward(model: nn.Module, micro_batches: Iterator[list[Batch]], grad_accum: int, loss_fn: LossFn) -> float:
    """Accumulate the gradient of one optimizer step over `grad_accum` micro-batches; return its mean loss.

    A micro-batch larger than the forward-pass limit comes in chunks: each chunk's loss counts by its share of
    the rows, so the step's gradient is the whole micro-batch's (up to token weighting inside each chunk).
    """
    loss = 0.0
    for _ in range(grad_accum):
        chunks = next(micro_batches)
        rows = sum(_rows(chunk) for chunk in chunks)
        for chunk in chunks:
            chunk_loss = loss_fn(model, chunk) * (_rows(chunk) / rows / grad_accum)
            chunk_loss.backward()
            loss += chunk_loss.item()
    return loss


def _rows(batch: Batch) -> int:
    return len(next(iter(batch.values())))


def _evaluate(model: nn.Module, eval_fn: EvalFn | None, step: int, cfg: TrainConfig, result: TrainResult) -> bool:
    """Every `cfg.eval_every` steps, record eval_fn(model); True once it reaches `cfg.target_loss` (stop)."""
    if eval_fn is None or not cfg.eval_every or step % cfg.eval_every != 0:
        return False
    with mode(model, training=False), torch.no_grad():
        value = float(eval_fn(model))
    result.evals.append((step, value))
    if cfg.target_loss is not None and value <= cfg.target_loss:
        result.steps_to_target = step
        return True
    return False


def _micro_batches(batches: Iterable[Batch], size: int, device: torch.device) -> Iterator[list[Batch]]:
    """Endless stream of micro-batches, one per supplied batch, re-iterating `batches` each epoch; a batch of more
    than `size` rows comes as chunks of at most `size` rows (the forward-pass limit), still one micro-batch.

    One supplied batch is never more than one micro-batch: rehearsal's mixed batches (domain rows plus the
    protected rows added to them) must train in one step, not as a domain step and a protected-only step.
    """
    while True:
        empty = True
        for batch in batches:
            if not _rows(batch):
                continue
            empty = False
            yield [
                on_device({key: value[start : start + size] for key, value in batch.items()}, device)
                for start in range(0, _rows(batch), size)
            ]
        if empty:
            raise ValueError("the training batches ran out (pass a re-iterable, e.g. a list)")


def _require_float32(params: list[Tensor]) -> None:
    # Master weights must be float32: bf16 cannot represent small updates, and a step hook that rewrites the
    # step (the projection) relies on W_old + ΔW landing exactly where intended.
    if not params:
        raise ValueError("nothing to train")
    if wrong := {p.dtype for p in params} - {torch.float32}:
        raise ValueError(f"trainable weights must be float32 (load the model in float32), found {wrong}")


def _rss_mb() -> float:
    """Resident memory of this process now, in MiB (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
