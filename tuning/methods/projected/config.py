"""Every knob of projected fine-tuning in one validated object; the other methods take it too and read only the
shared knobs (`tuning.loop.TrainConfig`: targets, optimisation, stopping and logging)."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")

LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ProjectedConfig(BaseModel):
    """Calibration, neuron selection and training settings.

    Per-layer overrides map fnmatch patterns over module names (e.g. ``"*.layers.0.*"``, ``"*.down_proj"``)
    to values; the first matching pattern wins, unmatched modules use the global value.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # What is trained: nn.Linear modules inside the decoder whose attribute name is one of these.
    targets: tuple[str, ...] = LLAMA_LINEARS
    # fnmatch patterns of further parameters trained WITHOUT projection (e.g. "*norm*"): unprotected, opt-in.
    also_train: tuple[str, ...] = ()

    # Calibration: keep the top eigenvectors holding `eps` of the input second-moment trace.
    eps: float = Field(default=0.99, ge=0.0, le=1.0)
    layer_eps: dict[str, float] = Field(default_factory=dict)
    skip_first_position: bool = True
    # With a protected corpus given by source (text, chat, safety): each source's weight in the mixed second
    # moment, after averaging over its own tokens (unnamed sources weigh 1). Not used for a single pool.
    source_weights: dict[str, Annotated[float, Field(ge=0.0)]] = Field(default_factory=dict)

    # Neuron selection: which output rows may change.
    selection: Literal["grad_over_activation", "grad_over_wanda", "domain_specificity"] = "grad_over_activation"
    row_budget: float = Field(default=1.0, gt=0.0, le=1.0)
    layer_row_budget: dict[str, float] = Field(default_factory=dict)
    selection_delta: float = Field(default=1e-3, gt=0.0)
    frozen_rows: dict[str, list[int]] = Field(default_factory=dict)

    # 'right' projects the update out of the protected input space; 'both' also out of the output space.
    side: Literal["right", "both"] = "right"

    # Optimisation.
    lr: float = Field(default=1e-4, gt=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    # Decoupled decay for the baselines and `also_train`; projected weights never decay (see train.py).
    weight_decay: float = Field(default=0.0, ge=0.0)
    steps: int = Field(default=100, ge=1)
    # Most rows per forward pass: a larger supplied batch is run in chunks (bounding activation memory) whose
    # gradients add up to the batch's: one supplied batch is one micro-batch of an optimizer step.
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    grad_clip: float | None = Field(default=1.0, gt=0.0)
    # Largest per-step update ‖ΔW‖_F as a fraction of ‖W‖_F, applied after projection; None = no clip.
    update_clip: float | None = Field(default=None, gt=0.0)
    warmup_steps: int = Field(default=0, ge=0)
    min_lr_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    seed: int = 0

    # Stopping and logging.
    # Every `eval_every` steps eval_fn(model) is called; training stops once it is <= target_loss.
    eval_every: int = Field(default=0, ge=0)
    target_loss: float | None = None
    log_every: int = Field(default=1, ge=1)
    progress: bool = True
    # A JSON file rewritten after every optimizer step ({step, of, loss, at}): the dashboard follows a run.
    progress_file: str | None = None

    def eps_for(self, module: str) -> float:
        return _override(self.layer_eps, module, self.eps)

    def row_budget_for(self, module: str) -> float:
        return _override(self.layer_row_budget, module, self.row_budget)

    def frozen_rows_for(self, module: str) -> list[int]:
        return _override(self.frozen_rows, module, [])


def _override(overrides: dict[str, T], module: str, default: T) -> T:
    return next((value for pattern, value in overrides.items() if fnmatchcase(module, pattern)), default)
