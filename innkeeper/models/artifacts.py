"""Tuned models as deltas against their base: save, verify, load and apply a delta, and export a plain model.

An artifact directory holds `delta.safetensors` (tuned − base in float32, for the tensors that changed)
and `manifest.json` (the base it applies to, file hashes, lineage, config, metrics). It is written in a
temporary sibling and renamed into place, so a directory with that name is always complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from innkeeper.core.manifest import check_file, sha256_file, write_manifest

FORMAT_VERSION = 1
DELTA_FILE = "delta.safetensors"
MANIFEST_FILE = "manifest.json"


class ArtifactError(RuntimeError):
    """A delta artifact is missing, damaged, or made for another base model."""


def weights_sha256(model_dir: Path) -> str:
    """The identity of a model directory's weights: the sha256 of `model.safetensors` (as in a provisioning
    manifest), or for a sharded model the sha256 of its shards' names and hashes."""
    shards = sorted(Path(model_dir).glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights")
    if len(shards) == 1:
        return sha256_file(shards[0])
    listing = "".join(f"{shard.name} {sha256_file(shard)}\n" for shard in shards)
    return hashlib.sha256(listing.encode()).hexdigest()


# ---------------------------------------------------------------- saving


def save_delta(
    base_state: dict[str, Tensor],
    tuned_model: nn.Module,
    out_dir: Path,
    *,
    base_id: str,
    base_sha256: str,
    lineage: dict[str, Any],
    config: dict[str, Any],
    metrics: dict[str, Any],
) -> Path:
    """Write the tensors where `tuned_model` differs from `base_state` as an artifact in `out_dir` (new).

    `tuned_model` must have the base's tensor names: merge adapters into it first.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; artifacts are never overwritten")
    delta = _delta(base_state, tuned_model)
    with _atomic_dir(out_dir) as tmp:
        save_file(delta, tmp / DELTA_FILE)
        manifest = {
            "format_version": FORMAT_VERSION,
            "base_id": base_id,
            "base_sha256": base_sha256,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "files": {DELTA_FILE: {"sha256": sha256_file(tmp / DELTA_FILE), "size": (tmp / DELTA_FILE).stat().st_size}},
            "tensors": sorted(delta),
            "tensor_count": len(delta),
            "lineage": lineage,
            "config": config,
            "metrics": metrics,
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir


def _delta(base_state: dict[str, Tensor], tuned_model: nn.Module) -> dict[str, Tensor]:
    """tuned − base in float32 for each changed floating-point tensor, once per shared (tied) tensor."""
    delta: dict[str, Tensor] = {}
    seen: set[tuple[int, torch.Size]] = set()
    for name, tuned in tuned_model.state_dict().items():
        if name not in base_state:
            raise ValueError(f"tuned model has {name!r}, which the base lacks (merge adapters before saving)")
        base = base_state[name]
        if base.shape != tuned.shape:
            raise ValueError(f"{name}: shape {tuple(tuned.shape)} differs from the base's {tuple(base.shape)}")
        memory = (tuned.data_ptr(), tuned.shape)
        # Tied weights appear under several names; applying their delta once per name would add it twice.
        if memory in seen or not tuned.is_floating_point():
            continue
        seen.add(memory)
        if not torch.equal(tuned, base.to(tuned.device)):
            delta[name] = (tuned.detach().float().cpu() - base.float().cpu()).contiguous()
    return delta


@contextmanager
def _atomic_dir(target: Path) -> Iterator[Path]:
    """A temporary sibling of `target`, renamed to it when the block succeeds and removed if it fails."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it private; the artifact is not
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------- reading


def read_manifest(artifact_dir: Path) -> dict[str, Any]:
    """The artifact's manifest; ArtifactError when it is missing, unreadable or malformed."""
    path = Path(artifact_dir) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing (not an artifact, or never completed)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: unreadable ({exc})") from None
    if not _well_formed(manifest):
        raise ArtifactError(f"{path}: malformed manifest")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ArtifactError(f"{path}: format version {manifest['format_version']}, expected {FORMAT_VERSION}")
    return manifest


def _well_formed(manifest: Any) -> bool:
    return (
        isinstance(manifest, dict)
        and isinstance(manifest.get("base_sha256"), str)
        and isinstance(manifest.get("tensors"), list)
        and isinstance(manifest.get("files"), dict)
        and DELTA_FILE in manifest["files"]
        and all(
            isinstance(e, dict) and isinstance(e.get("sha256"), str) and isinstance(e.get("size"), int)
            for e in manifest["files"].values()
        )
    )


def verify_artifact(artifact_dir: Path) -> list[str]:
    """Every problem found with the artifact (empty when it is intact); never raises."""
    try:
        manifest = read_manifest(artifact_dir)
    except ArtifactError as exc:
        return [str(exc)]
    directory = Path(artifact_dir)
    problems = [p for name, entry in manifest["files"].items() if (p := check_file(directory / name, entry))]
    return problems or _check_tensors(directory / DELTA_FILE, manifest["tensors"])


def _check_tensors(path: Path, expected: list[str]) -> list[str]:
    try:
        with safe_open(path, framework="pt") as f:
            names = set(f.keys())
    except (SafetensorError, OSError) as exc:
        return [f"{path}: not a readable safetensors file ({exc})"]
    return [] if names == set(expected) else [f"{path}: tensors differ from the manifest's list"]


def load_delta(artifact_dir: Path) -> dict[str, Tensor]:
    """The artifact's delta tensors, after verifying it; ArtifactError (saying what is wrong) otherwise."""
    if problems := verify_artifact(artifact_dir):
        raise ArtifactError(f"artifact {artifact_dir} is not usable: {'; '.join(problems)}")
    try:
        return load_file(Path(artifact_dir) / DELTA_FILE)
    except (SafetensorError, OSError) as exc:  # changed since it was verified
        raise ArtifactError(f"artifact {artifact_dir}: {DELTA_FILE} unreadable ({exc})") from None


# ---------------------------------------------------------------- applying


def apply_delta(model: nn.Module, delta: dict[str, Tensor], *, expected_base_sha256: str, base_sha256: str) -> None:
    """Add `delta` to `model`'s weights in place; refuses, leaving the model untouched, a delta made for
    another base or one that does not fit the model."""
    if expected_base_sha256 != base_sha256:
        raise ArtifactError(
            f"the delta was made for base weights {expected_base_sha256[:12]}…, not for these ({base_sha256[:12]}…)"
        )
    state = model.state_dict()
    misfits = [name for name, d in delta.items() if name not in state or state[name].shape != d.shape]
    if misfits:
        raise ArtifactError(f"delta tensors missing from the model or of another shape: {', '.join(misfits[:5])}")
    with torch.no_grad():
        for name, d in delta.items():
            target = state[name]
            target.copy_((target.float() + d.to(target.device)).to(target.dtype))


def export_hf(base_dir: Path, delta_dir: Path, out_dir: Path) -> Path:
    """Write base + delta as a plain Hugging Face model directory (float32 weights, the base's tokenizer and
    chat template, and a MANIFEST.json so ChatModel names the version by its weights)."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists")
    manifest = read_manifest(delta_dir)
    delta = load_delta(delta_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    apply_delta(model, delta, expected_base_sha256=manifest["base_sha256"], base_sha256=weights_sha256(base_dir))
    with _atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(base_dir).save_pretrained(tmp)
        write_manifest(tmp, out_dir.name, sources=[])
    return out_dir
