"""Model-directory manifests: `MANIFEST.json` lists the sha256 and size of every file in a directory, so a
truncated, replaced or corrupted file is found before the directory is used.

Written and checked here for the bundled models (`innkeeper.core.provision`) and reused for tuned-model
artifacts (`innkeeper.models.artifacts`); `sha256_file` also serves the model registry and the tuning corpus.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only a type here; wheels.py imports this module at runtime
    from innkeeper.core.wheels import Wheel

MANIFEST = "MANIFEST.json"


def write_manifest(directory: Path, name: str, sources: Iterable[Wheel]) -> dict[str, Any]:
    """Hash every file under `directory` and write its `MANIFEST.json`; returns the manifest."""
    files = {
        f.relative_to(directory).as_posix(): {"sha256": sha256_file(f), "size": f.stat().st_size}
        for f in sorted(directory.rglob("*"))
        if f.is_file() and f.name != MANIFEST
    }
    manifest = {
        "name": name,
        "source": [{"wheel": w.name, "version": w.version, "sha256": w.sha256} for w in sources],
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": files,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_manifest(path: Path) -> dict[str, Any]:
    """The directory's manifest, checked for shape; FileNotFoundError or ValueError saying what is wrong."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: model directory is missing")
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{manifest_path}: missing (the directory was never completed)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{manifest_path}: unreadable ({exc})") from None
    if not (
        isinstance(manifest, dict)
        and isinstance(manifest.get("name"), str)
        and isinstance(manifest.get("files"), dict)
        and all(_valid_entry(rel, e) for rel, e in manifest["files"].items())
    ):
        raise ValueError(f"{manifest_path}: malformed manifest")
    return manifest


def _valid_entry(rel: str, entry: Any) -> bool:
    inside = not Path(rel).is_absolute() and ".." not in Path(rel).parts
    return (
        inside
        and isinstance(entry, dict)
        and isinstance(entry.get("sha256"), str)
        and isinstance(entry.get("size"), int)
    )


def check_file(path: Path, entry: dict[str, Any]) -> str | None:
    """What is wrong with `path` against its manifest entry ({sha256, size}), or None when it matches."""
    try:
        size = path.stat().st_size
        if size != entry["size"]:
            return f"{path}: size {size} bytes, manifest says {entry['size']} (truncated or replaced)"
        if sha256_file(path) != entry["sha256"]:
            return f"{path}: sha256 mismatch (corrupted)"
    except FileNotFoundError:
        return f"{path}: missing"
    except OSError as exc:
        return f"{path}: unreadable ({exc})"
    return None
