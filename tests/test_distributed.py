"""Data-parallel training (tuning.distributed): two CPU processes under `accelerate launch` (gloo) train a tiny
model to the same weights as one process, for the projection and for full fine-tuning, and every rank ends
with the same weights; `innkeeper tune run` under the launcher writes one verified artifact."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from innkeeper.core.db.database import Database
from innkeeper.core.settings import PROJECT_ROOT, Settings
from innkeeper.models.artifacts import read_manifest, verify_artifact
from tuning.data.dialogues import import_dialogues, load_shared_dialogues

WORKER = PROJECT_ROOT / "tests" / "workers" / "train_tiny.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(processes: int) -> list[str]:
    """`accelerate launch` for `processes` local ranks: --multi_gpu is its torchrun launcher, and without GPUs
    every rank joins a gloo group on the CPU (its --cpu flag would start a single process)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1"]
    command += ["--num_processes", str(processes), "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*command, "--main_process_port", str(_free_port())]


def _run(model_dir: Path, method: str, out: Path, processes: int) -> Path:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(WORKER)] if processes == 1 else [*_launch(processes), str(WORKER)]
    done = subprocess.run([*command, str(model_dir), method, str(out)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.parametrize("method", ["projected", "full"])
def test_two_processes_train_to_the_weights_one_process_reaches(tiny_model_dir: Path, tmp_path: Path, method: str):
    one = _run(tiny_model_dir, method, tmp_path / "one", processes=1)
    two = _run(tiny_model_dir, method, tmp_path / "two", processes=2)
    assert (one / "world.txt").read_text() == "1 none"
    assert (two / "world.txt").read_text() == "2 gloo"
    assert (two / "rank0.sha256").read_text() == (two / "rank1.sha256").read_text()

    base = load_file(tiny_model_dir / "model.safetensors")
    single, parallel = load_file(one / "weights.safetensors"), load_file(two / "weights.safetensors")
    moved = [name for name in single if not torch.equal(single[name], base[name])]
    assert moved, "the single-process run did not train"
    for name in single:
        step_one, step_two = single[name] - base[name], parallel[name] - base[name]
        # Equal up to summation order: the difference is tiny next to the update itself.
        assert (step_one - step_two).abs().max() <= 1e-4 * max(step_one.abs().max().item(), 1e-6), name

    losses_one = [float(x) for x in (one / "losses.txt").read_text().split()]
    losses_two = [float(x) for x in (two / "losses.txt").read_text().split()]
    assert losses_one == pytest.approx(losses_two, rel=1e-5)


def test_tune_run_under_the_launcher_writes_one_verified_artifact(tiny_model_dir: Path, tmp_path: Path):
    settings = Settings(home=tmp_path / "home", llm_model=str(tiny_model_dir))
    if not (settings.shared_data / "dialogues").is_dir():
        pytest.skip(f"shared data not found at {settings.shared_data}")
    db = Database.from_settings(settings)
    db.migrate()
    import_dialogues(db, load_shared_dialogues(settings.shared_data, ("star_hotel",))[:40])
    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT_ROOT),
        "OMP_NUM_THREADS": "1",
        "INNKEEPER_HOME": str(settings.home),
        "INNKEEPER_LLM_MODEL": str(tiny_model_dir),
        "INNKEEPER_TUNE_READING_EXAMPLES": "4",
    }
    command = [*_launch(2), "-m", "innkeeper.cli", "tune", "run", "--steps", "2", "--grad-accum", "2"]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    artifacts = list((settings.home / "tuning" / "runs").glob("*/artifact"))
    assert len(artifacts) == 1, artifacts  # one run directory, written once, not once per rank
    assert verify_artifact(artifacts[0]) == []
    manifest = read_manifest(artifacts[0])
    assert manifest["metrics"]["processes"] == 2 and manifest["metrics"]["steps"] == 2
    assert manifest["config"]["grad_accum"] == 2
    assert done.stdout.count('"artifact"') == 1  # the summary printed by the main rank only
