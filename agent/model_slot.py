"""The serving language model behind one reference, and how a new version gets there safely.

`load_version` builds a ready model (verified delta on its base, warmed up); `ModelSlot.swap_to` runs such a
loader in a worker thread and, only when it succeeded, replaces the reference in one assignment. A
conversation reads the reference once at the start of each turn (`agent.brain.Conversation.respond`), so a
turn in progress finishes on the weights it started with and the next turn gets the new ones.

Memory: the slot keeps at most one previous model for an instant rollback, and drops it before loading
any other version, so at most two models stay resident even while one loads (SmolLM2-135M in float32 is
about 0.5 GB each). A model that an unfinished turn still streams from lives until that turn ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.wording import TextStreamer

if TYPE_CHECKING:
    from agent.llm import ChatModel

log = logging.getLogger(__name__)

WARMUP_MESSAGES = [{"role": "user", "content": "Hello, do you have a room tonight?"}]
WARMUP_TOKENS = 4


class ModelLoadError(RuntimeError):
    """A model version could not be verified or loaded; the message says why."""


class SwapInProgress(RuntimeError):
    """Another swap is loading; one swap at a time."""


@dataclass(frozen=True)
class SwapResult:
    """A finished swap: what serves now, what served before, and what it cost."""

    version: str
    previous: str
    load_s: float  # the loader, in its worker thread; calls went on meanwhile
    pause_ms: float  # the reference swap itself: the only moment the serving path could notice
    reused: bool = False  # the kept previous model came back (no load)


def load_version(
    base_dir: Path, artifact_dir: Path | None, *, version: str | None, threads: int | None = None
) -> ChatModel:
    """The base model with the artifact's delta applied (`artifact_dir=None`: the base itself), warmed up.

    The artifact's manifest hashes are checked first, and apply_delta refuses a delta made for another base.
    `version` names the model in every logged turn (None: the base's own label). Blocking: run it in a thread.
    Raises `ModelLoadError` saying what is wrong.
    """
    from agent.llm import ChatModel  # torch: only where a model is loaded
    from tuning.artifacts import ArtifactError, read_manifest, verify_artifact

    delta = None
    if artifact_dir is not None:
        if problems := verify_artifact(artifact_dir):
            raise ModelLoadError(f"artifact {artifact_dir} does not verify: {'; '.join(problems)}")
        try:
            manifest = read_manifest(artifact_dir)
            delta = _read_delta(artifact_dir)
        except ArtifactError as exc:
            raise ModelLoadError(str(exc)) from exc
    try:
        model = ChatModel(base_dir, threads=threads, version=version)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"base model {base_dir} could not be loaded: {exc}") from exc
    if delta is not None:
        _apply(model, delta, manifest["base_sha256"], Path(base_dir))
    _warm_up(model)
    return model


def _read_delta(artifact_dir: Path) -> dict:
    """The delta tensors of an artifact that just verified (hashing it again, as load_delta does, costs seconds)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from tuning.artifacts import DELTA_FILE

    try:
        return load_file(Path(artifact_dir) / DELTA_FILE)
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(f"artifact {artifact_dir}: {DELTA_FILE} unreadable ({exc})") from exc


def _apply(model: ChatModel, delta: dict, expected_base_sha256: str, base_dir: Path) -> None:
    from tuning.artifacts import ArtifactError, apply_delta, weights_sha256

    try:
        apply_delta(model.model, delta, expected_base_sha256=expected_base_sha256, base_sha256=weights_sha256(base_dir))
    except (ArtifactError, OSError) as exc:
        raise ModelLoadError(f"delta does not apply to {base_dir}: {exc}") from exc


def _warm_up(model: ChatModel) -> None:
    """One short greedy generation, so the first caller does not pay for lazy initialisation."""
    try:
        for _ in model.stream(WARMUP_MESSAGES, max_new_tokens=WARMUP_TOKENS):
            pass
    except RuntimeError as exc:
        raise ModelLoadError(f"model {model.version} failed its warm-up generation: {exc}") from exc


class ModelSlot:
    """The one reference to the serving model. Readers take `current`; `swap_to` replaces it between turns."""

    def __init__(self, current: TextStreamer | None = None, *, keep_previous: bool = True):
        self.current = current
        self.keep_previous = keep_previous
        self.previous: TextStreamer | None = None
        self._swapping: str | None = None  # the version being loaded

    @property
    def version(self) -> str:
        return self.current.version if self.current is not None else "template"

    @property
    def swapping(self) -> str | None:
        return self._swapping

    def kept(self, version: str) -> TextStreamer | None:
        """The kept previous model if it is `version` (a rollback then needs no load)."""
        previous = self.previous
        return previous if previous is not None and previous.version == version else None

    async def swap_to(self, version: str, loader: Callable[[], TextStreamer]) -> SwapResult:
        """Load with `loader` in a worker thread and serve its model from the next turn on.

        A failure raises `ModelLoadError` (any loader exception becomes one) and leaves the current model
        serving; a second call while one loads raises `SwapInProgress`.
        """
        if self._swapping is not None:
            raise SwapInProgress(f"a swap to {self._swapping!r} is still loading; try again when it has finished")
        self._swapping = version
        try:
            reused = self.kept(version)
            if reused is None:
                self.previous = None  # at most two models resident, even while the new one loads
            t0 = time.perf_counter()
            model = reused if reused is not None else await asyncio.to_thread(_run_loader, version, loader)
            load_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            old, self.current = self.current, model  # the swap: one assignment, between two turns' reads
            pause_ms = (time.perf_counter() - t1) * 1000
            self.previous = old if self.keep_previous and old is not model else None
        finally:
            self._swapping = None
        result = SwapResult(
            version=model.version,
            previous=old.version if old is not None else "template",
            load_s=round(load_s, 3),
            pause_ms=round(pause_ms, 4),
            reused=reused is not None,
        )
        log.info("model swap %s -> %s (load %.2f s, pause %.4f ms)", result.previous, result.version, load_s, pause_ms)
        return result


def _run_loader(version: str, loader: Callable[[], TextStreamer]) -> TextStreamer:
    try:
        model = loader()
    except ModelLoadError:
        raise
    except Exception as exc:  # whatever a loader hits, the serving process only needs the reason
        raise ModelLoadError(f"loading {version!r} failed: {type(exc).__name__}: {exc}") from exc
    if model is None:
        raise ModelLoadError(f"loading {version!r} produced no model")
    return model
