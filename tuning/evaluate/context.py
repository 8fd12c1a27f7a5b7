"""What every measure shares: the run context (model, tokenizer, suite, base, progress bars) and the
decorator that runs a measure in eval mode without autograd, so that its numbers are deterministic and
a model in training is handed back as it was."""

from __future__ import annotations

import functools
import inspect
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from tqdm import tqdm

from tuning.evaluate.compare import base_record
from tuning.evaluate.suite import Baseline, EvalSuite

Measured = tuple[dict[str, Any], dict[str, Any]]  # (summary, per-item record that a later run pairs with)
DEFAULT_SUITE = EvalSuite()


@dataclass
class Run:
    """What every measure needs: the model, its tokenizer, the suite's settings and the base to pair with."""

    model: Any
    tokenizer: Any
    suite: EvalSuite
    base: Baseline | None
    progress: bool

    @property
    def pad_id(self) -> int:
        tokenizer = self.tokenizer
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @property
    def ci(self) -> dict[str, int]:
        """The bootstrap settings, as keyword arguments of the CI functions."""
        return {"resamples": self.suite.resamples, "seed": self.suite.seed}

    def sample(self, items: Sequence[Any], n: int | None, key: str) -> list[Any]:
        """A seeded subsample in the original order (all items when n is None or covers them)."""
        if n is None or n >= len(items):
            return list(items)
        chosen = sorted(random.Random(f"{self.suite.seed}:{key}").sample(range(len(items)), n))
        return [items[i] for i in chosen]

    def base_items(self, key: str, *path: str) -> Mapping[str, Any] | None:
        """The base run's per-item record at `path` under "items", checked to be for the same data."""
        return base_record(self.base.result if self.base else None, key, *path)

    def bar(self, iterable: Iterator[Any] | Sequence[Any], desc: str) -> Any:
        return tqdm(iterable, desc=desc, disable=not self.progress, leave=False)


class MeasureFn(Protocol):
    """A measure as callers call it: a model and its tokenizer, the measure's data, then the suite's settings
    and the base to pair with."""

    def __call__(
        self,
        model: Any,
        tokenizer: Any,
        *data: Any,
        suite: EvalSuite = ...,
        base: Baseline | None = ...,
        progress: bool = ...,
    ) -> Measured: ...


def measure(fn: Callable[..., Measured]) -> MeasureFn:
    """Make `fn(run, *data)` a measure called as `fn(model, tokenizer, *data, suite=, base=, progress=)`.

    One signature and one run context for every measure; it runs without autograd, with the model (and the
    base's weights) in eval mode.
    """

    @functools.wraps(fn)
    def measured(
        model: Any,
        tokenizer: Any,
        *data: Any,
        suite: EvalSuite = DEFAULT_SUITE,
        base: Baseline | None = None,
        progress: bool = False,
        **named_data: Any,
    ) -> Measured:
        with _evaluating([model, getattr(base, "model", None)]), torch.inference_mode():
            return fn(Run(model, tokenizer, suite, base, progress), *data, **named_data)

    measured.__signature__ = _called_as(fn, measured)  # type: ignore[attr-defined]
    return measured


def _called_as(fn: Callable[..., Measured], measured: Callable[..., Measured]) -> inspect.Signature:
    """The measure's signature as callers see it (help(), IDEs): model, tokenizer, fn's data, the options."""
    outer = inspect.signature(measured, follow_wrapped=False).parameters
    data = list(inspect.signature(fn).parameters.values())[1:]
    options = [outer[name] for name in ("suite", "base", "progress")]
    return inspect.signature(fn).replace(parameters=[outer["model"], outer["tokenizer"], *data, *options])


@contextmanager
def _evaluating(models: Sequence[Any]) -> Iterator[None]:
    """Eval mode (no dropout) for the run; a model in training goes back to training afterwards."""
    present = [m for m in models if m is not None]
    modes = [m.training for m in present]
    for m in present:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(present, modes, strict=True):
            m.train(mode)
