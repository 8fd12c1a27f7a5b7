"""What every training method needs from a causal LM, and nothing method-specific: batches and their labels and
token masks, the loss, the target linear layers, forward hooks on them, mean weight gradients, and context
managers that set the model's mode and which parameters take gradients (restoring both afterwards)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

Batch = dict[str, Tensor]
LossFn = Callable[[nn.Module, Batch], Tensor]

IGNORE_INDEX = -100


def target_linears(model: nn.Module, targets: Iterable[str]) -> dict[str, nn.Linear]:
    """The nn.Linear modules named like a target (q_proj, …); never the output embedding (lm_head)."""
    wanted = set(targets)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in wanted and module is not output
    }


def on_device(batch: Batch, device: torch.device) -> Batch:
    """The batch with every tensor moved to `device`."""
    return {key: value.to(device) for key, value in batch.items()}


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


@contextmanager
def linear_hooks(layers: Mapping[str, nn.Module], fn: Callable[[str, Tensor, Tensor], None]) -> Iterator[None]:
    """While inside, every forward pass through a layer calls fn(its name, its input, its output)."""
    handles = [
        layer.register_forward_hook(lambda module, args, output, name=name: fn(name, args[0], output))
        for name, layer in layers.items()
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def mean_gradients(
    model: nn.Module, layers: dict[str, nn.Linear], batches: Iterable[Batch], loss_fn: LossFn = lm_loss
) -> dict[str, Tensor]:
    """Each layer's weight gradient of the mean loss over the batches (left out of `.grad`)."""
    weights = [layer.weight for layer in layers.values()]
    totals = [torch.zeros_like(w) for w in weights]
    device = weights[0].device
    count = 0
    with mode(model, training=False), grad_only_for(model, weights):
        for batch in batches:
            loss = loss_fn(model, on_device(batch, device))
            for total, grad in zip(totals, torch.autograd.grad(loss, weights), strict=True):
                total += grad
            count += 1
    if count == 0:
        raise ValueError("no domain batches")
    return {name: total / count for name, total in zip(layers, totals, strict=True)}


@contextmanager
def mode(model: nn.Module, *, training: bool) -> Iterator[None]:
    """The model in training (dropout on) or eval mode inside; its own mode is restored afterwards."""
    was_training = model.training
    model.train(training)
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
