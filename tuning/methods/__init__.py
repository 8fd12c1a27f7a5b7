"""The training methods, chosen by name from one registry (as PEFT maps each PeftType to its model class):

    result = train("projected", model, domain_batches, cfg, bases=bases, masks=masks)
    if get_method(name).needs_bases: ...  # calibrate first

Every method runs the same loop (`tuning.loop.fit`); a method only chooses what trains and, for the projection,
how each step is rewritten. `projected` lives in its own package (`tuning.methods.projected`); `full`, `lora` and
`replay` are the baselines it is compared with; `projected_replay` is the projection plus rehearsal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from tuning.lm import Batch, LossFn, lm_loss
from tuning.loop import EvalFn, TrainResult
from tuning.methods.full import train_full
from tuning.methods.lora import train_lora
from tuning.methods.projected import ProjectedConfig, ProtectedBases, train_projected
from tuning.methods.replay import train_projected_replay, train_replay


@dataclass(frozen=True)
class Method:
    """A registered method: its train function and what it needs beyond the model, batches and config."""

    train: Callable[..., TrainResult]
    needs_bases: bool = False  # calibrated bases, passed as `bases=` (with the optional row `masks=`)
    needs_protected: bool = False  # protected batches to rehearse, passed as `protected_batches=`

    def inputs(
        self,
        name: str,
        bases: ProtectedBases | None,
        masks: dict[str, Tensor] | None,
        protected: Iterable[Batch] | None,
    ) -> dict[str, Any]:
        """The keyword inputs this method takes; refuses a call without one it needs."""
        needs = {"calibrated bases": self.needs_bases, "protected batches": self.needs_protected}
        if (self.needs_bases and bases is None) or (self.needs_protected and protected is None):
            raise ValueError(f"method {name!r} needs {' and '.join(what for what, needed in needs.items() if needed)}")
        given = {"bases": bases, "masks": masks} if self.needs_bases else {}
        return given | ({"protected_batches": protected} if self.needs_protected else {})


METHODS: dict[str, Method] = {
    "projected": Method(train_projected, needs_bases=True),
    "full": Method(train_full),
    "lora": Method(train_lora),
    "replay": Method(train_replay, needs_protected=True),
    "projected_replay": Method(train_projected_replay, needs_bases=True, needs_protected=True),
}


def get_method(name: str) -> Method:
    """The registered method called `name`; a clear error listing the known ones otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def train(
    method: str,
    model: nn.Module,
    train_batches: Iterable[Batch],
    cfg: ProjectedConfig,
    *,
    bases: ProtectedBases | None = None,
    masks: dict[str, Tensor] | None = None,
    protected_batches: Iterable[Batch] | None = None,
    eval_fn: EvalFn | None = None,
    loss_fn: LossFn = lm_loss,
    **options: Any,
) -> TrainResult:
    """Run one of METHODS; `options` go to that method (all_params, r/alpha/dropout, ratio)."""
    chosen = get_method(method)
    inputs = chosen.inputs(method, bases, masks, protected_batches)
    return chosen.train(model, train_batches, cfg, **inputs, eval_fn=eval_fn, loss_fn=loss_fn, **options)
