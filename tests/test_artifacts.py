"""Tests for tuned-model artifacts: a delta round-trips exactly, damage and foreign bases are refused, and an
export loads as a plain Hugging Face model and as the agent's ChatModel."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agent.reply.llm import ChatModel
from innkeeper.models.artifacts import (
    DELTA_FILE,
    MANIFEST_FILE,
    ArtifactError,
    apply_delta,
    export_hf,
    load_delta,
    read_manifest,
    save_delta,
    verify_artifact,
    weights_sha256,
)

CHANGED = ("model.layers.0.mlp.down_proj.weight", "model.embed_tokens.weight")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


def load(model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tuned(base_dir: Path) -> torch.nn.Module:
    model = load(base_dir)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in CHANGED:
            param = model.get_parameter(name)
            param.add_(0.01 * torch.randn(param.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def artifact(base_dir: Path, tuned: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base_state = {name: t.clone() for name, t in load(base_dir).state_dict().items()}
    return save_delta(
        base_state,
        tuned,
        tmp_path_factory.mktemp("runs") / "run-1",
        base_id="tiny-chat",
        base_sha256=weights_sha256(base_dir),
        lineage={"dialogue_ids": ["test:1", "test:2"]},
        config={"lr": 1e-4},
        metrics={"domain_nll": 1.5},
    )


def damaged_copy(artifact: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    return copy


def assert_same_weights(model: torch.nn.Module, expected: torch.nn.Module) -> None:
    for name, tensor in expected.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, atol=1e-6, rtol=0)


def test_delta_holds_only_changed_tensors_and_round_trips(
    base_dir: Path, tuned: torch.nn.Module, artifact: Path
) -> None:
    manifest = read_manifest(artifact)
    # The embedding is tied to lm_head: stored once, under one name.
    assert manifest["tensors"] == sorted(CHANGED) and manifest["tensor_count"] == 2
    assert manifest["base_sha256"] == weights_sha256(base_dir)
    assert manifest["lineage"] == {"dialogue_ids": ["test:1", "test:2"]}
    assert verify_artifact(artifact) == []
    assert not [p for p in artifact.parent.iterdir() if p.name.startswith(".tmp")]

    model = load(base_dir)
    delta = load_delta(artifact)
    assert all(t.dtype == torch.float32 for t in delta.values())
    apply_delta(model, delta, expected_base_sha256=manifest["base_sha256"], base_sha256=weights_sha256(base_dir))
    assert_same_weights(model, tuned)


def test_existing_artifact_is_never_overwritten(base_dir: Path, tuned: torch.nn.Module, artifact: Path) -> None:
    with pytest.raises(FileExistsError):
        save_delta(tuned.state_dict(), tuned, artifact, base_id="x", base_sha256="0", lineage={}, config={}, metrics={})


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete_delta", "garble_manifest", "delete_manifest"])
def test_damaged_artifact_is_reported_and_refused(artifact: Path, tmp_path: Path, damage: str) -> None:
    copy = damaged_copy(artifact, tmp_path)
    delta_file, manifest_file = copy / DELTA_FILE, copy / MANIFEST_FILE
    data = delta_file.read_bytes()
    if damage == "flip_byte":
        delta_file.write_bytes(data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:])
    elif damage == "truncate":
        delta_file.write_bytes(data[: len(data) // 2])
    elif damage == "delete_delta":
        delta_file.unlink()
    elif damage == "garble_manifest":
        manifest_file.write_text(manifest_file.read_text()[:40])
    else:
        manifest_file.unlink()
    problems = verify_artifact(copy)
    assert problems
    with pytest.raises(ArtifactError, match="not usable"):
        load_delta(copy)


def test_manifest_edited_to_match_a_forged_file_is_caught(artifact: Path, tmp_path: Path) -> None:
    copy = damaged_copy(artifact, tmp_path)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["tensors"] = ["lm_head.weight"]
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert verify_artifact(copy) == [f"{copy / DELTA_FILE}: tensors differ from the manifest's list"]


def test_delta_for_another_base_is_refused(
    base_dir: Path, tuned: torch.nn.Module, artifact: Path, tmp_path: Path
) -> None:
    model = load(base_dir)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    with pytest.raises(ArtifactError, match="made for base weights"):
        apply_delta(model, load_delta(artifact), expected_base_sha256="a" * 64, base_sha256=weights_sha256(base_dir))
    assert all(torch.equal(t, before[name]) for name, t in model.state_dict().items())

    other_base = tmp_path / "other-base"
    tuned.save_pretrained(other_base)
    with pytest.raises(ArtifactError, match="made for base weights"):
        export_hf(other_base, artifact, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_export_loads_as_plain_model_and_chat_model(
    base_dir: Path, tuned: torch.nn.Module, artifact: Path, tmp_path: Path
) -> None:
    out = export_hf(base_dir, artifact, tmp_path / "tuned-1")
    assert_same_weights(load(out), tuned)
    chat = ChatModel(out)
    assert chat.version == f"tuned-1@{weights_sha256(out)[:8]}"
    assert chat.tokenizer.chat_template == AutoTokenizer.from_pretrained(base_dir).chat_template
