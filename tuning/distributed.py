"""Training past one process: data-parallel training for every method, started with `accelerate launch`.

    accelerate launch --cpu --num_processes 2 -m innkeeper.cli tune run --method projected   # gloo, 2 CPU ranks
    accelerate launch --num_processes 8 -m innkeeper.cli tune run --method projected         # NCCL, 8 GPUs

Every rank holds the whole model and the same batches (built with the same seed) and takes its share of the
micro-batches: of each optimizer step's `grad_accum` micro-batches, rank r reads numbers r, r + W, r + 2W, …
After the backward passes the gradients are averaged across ranks (one all-reduce per parameter), so every rank
takes the identical AdamW step — and the projection, applied after that step, is identical on every rank too.
The result equals one process running all `grad_accum` micro-batches, up to floating-point summation order.

What must be computed once (the protected bases, the row masks) is computed on the main rank and broadcast
(`from_main`); what must be written once (the artifact, the run log) is written by the main rank (`is_main`).
Outside a launched job every function here is a no-op, so single-process code pays nothing.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")


def start() -> None:
    """Join the process group `accelerate launch` (or torchrun) described in the environment, if any.

    Gloo on CPU, NCCL on GPUs: accelerate picks the backend and binds each rank to its device.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())
        # Leave the group before the interpreter tears down: a rank that exits with gloo's threads still
        # joinable dies in std::terminate (SIGABRT), and the launcher then kills the ranks that finished.
        atexit.register(finish)


def finish() -> None:
    """Leave the process group (a no-op outside a launched job, or once left).

    No barrier here: at exit after an error the other ranks may sit in a collective, and a barrier would hang
    the job instead of letting the launcher see the failure. Code that needs the ranks in step calls `barrier`.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """True inside a launched job with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Whether this process writes files, logs and progress (rank 0, or the only process)."""
    return rank() == 0


def local_share(grad_accum: int) -> int:
    """How many of an optimizer step's `grad_accum` micro-batches this rank runs."""
    size = world_size()
    if grad_accum % size:
        raise ValueError(f"grad_accum={grad_accum} must be a multiple of the {size} processes")
    return grad_accum // size


def my_micro_batches(stream: Iterator[T]) -> Iterator[T]:
    """This rank's share of a micro-batch stream every rank builds identically: items r, r + W, r + 2W, …"""
    size, me = world_size(), rank()
    for index, item in enumerate(stream):
        if index % size == me:
            yield item


def average_gradients(params: list[Tensor]) -> None:
    """Replace each parameter's gradient with its mean over the ranks (a missing gradient counts as zero)."""
    if not active():
        return
    size = world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(size)


def average(value: float) -> float:
    """A float's mean over the ranks (e.g. the step loss, so every rank logs and stops on the same number)."""
    if not active():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item()) / world_size()


def broadcast_parameters(params: list[Tensor]) -> None:
    """Copy the main rank's values into every rank's parameters, so all ranks start from the same weights."""
    if not active():
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def from_main(compute: Callable[[], T]) -> T:
    """`compute()` on the main rank only, its result sent to every rank (other ranks wait for it).

    For what is expensive or must be one answer: the protected bases, the row masks. The result travels
    pickled, so it should be tensors and plain data on the CPU.
    """
    if not active():
        return compute()
    box: list[object] = [compute() if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


def barrier() -> None:
    if active():
        dist.barrier()


def _device() -> torch.device:
    # NCCL reduces only CUDA tensors; gloo only CPU ones.
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
