"""The serving language model behind one reference, and how a new version gets there safely.

`load_version` builds a ready model (verified delta on its base, warmed up); `load_version_beside_calls`
does the same for a process that is serving calls, with the heavy part (hashing, loading, applying the
delta, the warm-up generation) in a low-priority child process, so that live turns keep the cores.
`ModelSlot.swap_to` runs such a loader in a worker thread and, only when it succeeded, replaces the
reference in one assignment. A conversation reads the reference once at the start of each turn
(`agent.call.conversation.Conversation.respond`), so a turn in progress finishes on the weights it started with and
the next turn gets the new ones.

Memory: the slot keeps at most one previous model for an instant rollback, and drops it before loading
any other version, so at most two models stay resident even while one loads (SmolLM2-135M in float32 is
about 0.5 GB each). A model that an unfinished turn still streams from lives until that turn ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.call.turns import TurnsInProgress
from agent.reply.wording import TextStreamer

if TYPE_CHECKING:
    from agent.reply.ct2 import Ct2ChatModel
    from agent.reply.llm import ChatModel

log = logging.getLogger(__name__)

WARMUP_MESSAGES = [{"role": "user", "content": "Hello, do you have a room tonight?"}]
WARMUP_TOKENS = 4
LOADER_NICENESS = 19  # the loader process yields the cores to the serving process whenever it wants them
LOAD_REFUSED = 3  # the loader process's exit status for a version that does not verify or load
LOADER_POLL_S = 0.01  # how often the loader checks whether a turn has started (or ended)
SHARED_MEMORY = Path("/dev/shm")


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
    from agent.reply.llm import ChatModel  # torch: only where a model is loaded
    from innkeeper.models.artifacts import ArtifactError, read_manifest, verify_artifact

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


def load_version_beside_calls(
    base_dir: Path,
    artifact_dir: Path | None,
    *,
    version: str | None,
    tokenizer_from: ChatModel | Ct2ChatModel | None = None,
    scratch: Path | None = None,
    busy: Callable[[], bool] | None = None,
    ctranslate2: str | None = None,
) -> ChatModel | Ct2ChatModel:
    """`load_version` for a process that is serving calls; the same checks, errors and result.

    Loading in the serving process itself took ~2.6 s of CPU (hashing the artifact and the base, applying
    the delta, the warm-up generation) on the cores live turns decode on, and slowed the turns during the
    load by up to ~1 s. Here a child process does all of that (`main`): lowest CPU priority, one thread,
    and stopped (SIGSTOP) whenever `busy()` says a turn is being worked on, so it only ever runs in the
    gaps between turns; it writes the finished weights to `scratch` (/dev/shm when it has room: RAM, not
    disk). This process then maps them (transformers loads safetensors by mmap: ~0.1 s, no copy), in a gap
    too, reusing `tokenizer_from`'s tokenizer when given. The child's warm-up generation ran on the same
    weights, and a second one here measured as slow as any later generation, so there is none here.
    `ctranslate2` (a weight type, e.g. "int8"): the child also exports the weights to CTranslate2's format
    and the version is served by `Ct2ChatModel`. Blocking: run it in a thread.
    """
    from agent.reply.llm import ChatModel, model_version

    try:
        version = version or model_version(base_dir)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"base model {base_dir} could not be loaded: {exc}") from exc
    idle = busy or (lambda: False)
    with tempfile.TemporaryDirectory(prefix="innkeeper-load-", dir=_scratch_dir(scratch)) as tmp:
        _run_in_loader_process(base_dir, artifact_dir, version, Path(tmp), idle, ctranslate2)
        tokenizer = tokenizer_from.tokenizer if tokenizer_from is not None else None
        _wait_for_a_gap(idle)
        try:
            if ctranslate2:
                from agent.reply.ct2 import Ct2ChatModel

                # CTranslate2 reads the weights into memory: the directory can go.
                ct2_dir = Path(tmp) / "ct2"
                model = Ct2ChatModel(ct2_dir, tmp, version=version, tokenizer=tokenizer, compute_type=ctranslate2)
            else:
                model = ChatModel(tmp, version=version, tokenizer=tokenizer)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"the loaded weights of {version} could not be mapped: {exc}") from exc
    # The mapping outlives the directory: the weights' memory is freed with the model.
    model.path = Path(base_dir)
    torch_pair = isinstance(model, ChatModel) and isinstance(tokenizer_from, ChatModel)
    if torch_pair and _shapes(model) != _shapes(tokenizer_from):
        raise ModelLoadError(f"the loaded weights of {version} do not match the serving model's architecture")
    return model


def _shapes(model: ChatModel) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in model.model.state_dict().items()}


def _wait_for_a_gap(busy: Callable[[], bool]) -> None:
    while busy():
        time.sleep(LOADER_POLL_S)


def _scratch_dir(scratch: Path | None, need_bytes: int = 2 * 1024**3) -> str | None:
    """/dev/shm when it has room for a model (small in many containers), else `scratch`, else the temp dir."""
    if SHARED_MEMORY.is_dir() and shutil.disk_usage(SHARED_MEMORY).free >= need_bytes:
        return str(SHARED_MEMORY)
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
        return str(scratch)
    return None


def _run_in_loader_process(
    base_dir: Path,
    artifact_dir: Path | None,
    version: str,
    out_dir: Path,
    busy: Callable[[], bool],
    ctranslate2: str | None = None,
) -> None:
    """`python -m innkeeper.models.slot` (see `main`): a fresh interpreter, not a fork of this threaded one.

    Stopped while `busy()`, continued in the gaps (checked every `LOADER_POLL_S`).
    """
    command = [sys.executable, "-m", "innkeeper.models.slot", str(base_dir), str(out_dir), "--version", version]
    if artifact_dir is not None:
        command += ["--artifact", str(artifact_dir)]
    if ctranslate2:
        command += ["--ctranslate2", ctranslate2]
    log_path = out_dir / "loader.log"
    with open(log_path, "w+", encoding="utf-8") as log_file:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log_file)
        try:
            _pause_while_busy(process, busy)
        finally:
            if process.poll() is None:  # this thread was interrupted: leave no stopped orphan behind
                _signal(process, "SIGCONT")
                process.kill()
                process.wait()
        log_file.seek(0)
        errors = log_file.read().strip()
    if process.returncode == LOAD_REFUSED:
        raise ModelLoadError(errors.splitlines()[-1] if errors else "refused")
    if process.returncode != 0:
        raise ModelLoadError(
            f"the loader process for {version} failed: {errors[-2000:] or f'exit status {process.returncode}'}"
        )


def _pause_while_busy(process: subprocess.Popen, busy: Callable[[], bool]) -> None:
    stopped = False
    while process.poll() is None:
        if busy() != stopped:
            stopped = not stopped
            _signal(process, "SIGSTOP" if stopped else "SIGCONT")
        time.sleep(LOADER_POLL_S)


def _signal(process: subprocess.Popen, name: str) -> None:
    number = getattr(signal, name, None)  # POSIX only; elsewhere the loader just runs at low priority
    if number is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, number)


def main(argv: list[str] | None = None) -> int:
    """The loader process: `load_version` at the lowest CPU priority on one thread, saved as an HF directory."""
    import argparse

    os.nice(LOADER_NICENESS)
    parser = argparse.ArgumentParser(prog="python -m innkeeper.models.slot", description=main.__doc__)
    parser.add_argument("base_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--version", required=True)
    parser.add_argument("--artifact", type=Path)
    parser.add_argument("--ctranslate2", metavar="WEIGHT_TYPE", help="also export to CTranslate2 (out_dir/ct2)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    try:
        model = load_version(args.base_dir, args.artifact, version=args.version)
        model.model.save_pretrained(args.out_dir)
        model.tokenizer.save_pretrained(args.out_dir)  # for a serving process that has none to lend
        if args.ctranslate2:
            from agent.reply.ct2 import export

            export(args.out_dir, args.out_dir / "ct2", quantization=args.ctranslate2)
    except (ModelLoadError, OSError) as exc:
        print(f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError) else str(exc), file=sys.stderr)
        return LOAD_REFUSED
    return 0


def _read_delta(artifact_dir: Path) -> dict:
    """The delta tensors of an artifact that just verified (hashing it again, as load_delta does, costs seconds)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from innkeeper.models.artifacts import DELTA_FILE

    try:
        return load_file(Path(artifact_dir) / DELTA_FILE)
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(f"artifact {artifact_dir}: {DELTA_FILE} unreadable ({exc})") from exc


def _apply(model: ChatModel, delta: dict, expected_base_sha256: str, base_dir: Path) -> None:
    from innkeeper.models.artifacts import ArtifactError, apply_delta, weights_sha256

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
        self.turns = TurnsInProgress()  # conversations reading this slot mark their turns here

    @property
    def version(self) -> str:
        return self.current.version if self.current is not None else "template"

    @property
    def swapping(self) -> str | None:
        return self._swapping

    def busy(self) -> bool:
        """A turn is being worked on or a model in the slot is generating (a loader waits for the gap)."""
        return bool(self.turns) or any(getattr(model, "generating", False) for model in (self.current, self.previous))

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


if __name__ == "__main__":
    sys.exit(main())
