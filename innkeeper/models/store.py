"""The artifact store of the model registry: tuned-model artifact directories under one fsspec URL — a local
directory, an S3-compatible bucket, or memory (tests) — put in whole or not at all, and fetched as a local
directory.

An artifact is complete only once its completion marker is written, last: an object store has no atomic
directory rename, so an artifact without the marker is an upload that never finished, and is never served.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import get_protocol

from innkeeper.core.manifest import sha256_file
from innkeeper.models.artifacts import MANIFEST_FILE

log = logging.getLogger(__name__)

# Written last into a stored artifact (holding the manifest's sha256): an object store has no atomic
# directory rename, so an artifact without it is an upload that never finished.
COMPLETE_MARKER = "COMPLETE"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


# The registry's error type is defined with the store, which raises it too: registry.py imports this module.
class RegistryError(RuntimeError):
    """A request the registry cannot honour (unknown version, nothing to roll back to, a broken artifact,
    an unusable store)."""


class ArtifactStore:
    """Artifact directories under one fsspec URL: "/dir" or "file:///dir" (local), "s3://bucket/prefix"
    (needs s3fs; options such as endpoint_url go in `storage_options`), "memory://x" (tests)."""

    def __init__(self, url: str, **storage_options: Any) -> None:
        try:
            self.fs, root = url_to_fs(url, **storage_options)
        except (ImportError, ValueError) as exc:  # e.g. s3:// without s3fs installed
            raise RegistryError(f"artifact store {url!r}: {exc}") from None
        self.url = url
        self.storage_options = storage_options
        self.root = root.rstrip("/") or "/"
        self.local = isinstance(self.fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    def put(self, local_dir: Path, name: str) -> str:
        """Copy `local_dir` in as `name` and return its URI; it appears complete or not at all.

        FileExistsError if `name` is taken: stored artifacts are never overwritten.
        """
        if not _NAME.fullmatch(name):
            raise ValueError(f"artifact name {name!r}: use letters, digits, '.', '_' and '-'")
        local_dir = Path(local_dir)
        target = self._join(name)
        self.fs.invalidate_cache(target)
        if self.fs.exists(target):
            raise FileExistsError(f"{self.fs.unstrip_protocol(target)} already exists")
        marker = sha256_file(local_dir / MANIFEST_FILE).encode()
        if not self.local:
            # An object store has no rename (s3fs's mv is a copy per key, and failed on a prefix against a real
            # S3 server): the files go straight to their names and the marker, written last, completes them.
            try:
                self._upload(local_dir, target)
                self.fs.pipe_file(f"{target}/{COMPLETE_MARKER}", marker)
            except BaseException:
                self._discard(target)
                raise
            return self.fs.unstrip_protocol(target)
        tmp = self._join(f".tmp-{name}-{uuid.uuid4().hex[:8]}")
        try:
            self._upload(local_dir, tmp)
            self.fs.pipe_file(f"{tmp}/{COMPLETE_MARKER}", marker)
            os.rename(tmp, target)  # atomic on one filesystem; refuses a non-empty target
        except BaseException:
            self._discard(tmp)
            raise
        return self.fs.unstrip_protocol(target)

    def fetch(self, uri: str, cache_dir: Path) -> Path:
        """A local directory holding the artifact: the stored one itself on a local store, else a copy in
        `cache_dir` (downloaded again unless the cached manifest matches the stored one)."""
        fs, path = self._locate(uri)
        fs.invalidate_cache(path)  # object-store clients cache listings; another process may have written since
        if not fs.exists(f"{path}/{COMPLETE_MARKER}"):
            raise RegistryError(f"{uri}: missing or incomplete (no {COMPLETE_MARKER} marker)")
        if isinstance(fs, LocalFileSystem):
            return Path(path)
        target = self._cache_target(path, uri, cache_dir)
        remote_manifest = hashlib.sha256(fs.cat_file(f"{path}/{MANIFEST_FILE}")).hexdigest()
        cached_manifest = target / MANIFEST_FILE
        if cached_manifest.is_file() and sha256_file(cached_manifest) == remote_manifest:
            return target
        return self._download(fs, path, target)

    def cached_copy(self, uri: str, cache_dir: Path) -> Path | None:
        """Where `fetch` keeps its local copy of a stored artifact (None for a local store, which needs none);
        the directory may be absent or stale: verify it before use."""
        fs, path = self._locate(uri)
        return None if isinstance(fs, LocalFileSystem) else self._cache_target(path, uri, cache_dir)

    @staticmethod
    def _cache_target(path: str, uri: str, cache_dir: Path) -> Path:
        return Path(cache_dir) / f"{path.rstrip('/').rsplit('/', 1)[-1]}-{_short_hash(uri)}"

    def remove(self, uri: str) -> None:
        """Delete a stored artifact (nothing happens if it is gone already)."""
        fs, path = self._locate(uri)
        if not fs.exists(path):
            return
        # The marker goes first, so a removal cut short leaves an incomplete artifact, never a "complete" one.
        if fs.exists(f"{path}/{COMPLETE_MARKER}"):
            fs.rm_file(f"{path}/{COMPLETE_MARKER}")
        fs.rm(path, recursive=True)

    def _join(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def _upload(self, local_dir: Path, remote_dir: str) -> None:
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            remote = f"{remote_dir}/{path.relative_to(local_dir).as_posix()}"
            if self.local:
                self.fs.makedirs(self.fs._parent(remote), exist_ok=True)
            self.fs.put_file(str(path), remote)

    def _download(self, fs: Any, path: str, target: Path) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
        try:
            prefix = path.rstrip("/") + "/"
            for remote in fs.find(path):
                local = tmp / remote.removeprefix(prefix)
                local.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(remote, str(local))
            shutil.rmtree(target, ignore_errors=True)  # a stale copy of an earlier upload under this name
            try:
                os.rename(tmp, target)
            except OSError:
                if not (target / MANIFEST_FILE).is_file():
                    raise
                shutil.rmtree(tmp)  # another process downloaded it at the same moment; its copy is verified later
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    def _locate(self, uri: str) -> tuple[Any, str]:
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        # A URI from an earlier store configuration still resolves, with that scheme's default options.
        options = self.storage_options if get_protocol(uri) in protocols else {}
        fs, path = url_to_fs(uri, **options)
        return fs, path

    def _discard(self, path: str) -> None:
        try:
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
        except Exception as exc:  # cleanup must not hide the error that caused it
            log.warning("could not remove %s from the artifact store: %s", path, exc)


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]
