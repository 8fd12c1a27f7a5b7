"""The model registry: tuned model versions (status, metrics, lineage, gate, events) in the database, and
their delta artifacts in a store — a directory, or an S3-compatible bucket through fsspec.

The nightly tuning run registers each verified artifact; an operator (or the gate) promotes one and may
roll it back; a server that cannot load a version marks it failed. Which version serves is never stored
as a flag: it is the promoted version with the latest `promoted_at` (none: the base model serves), so
promotions and rollbacks from several processes always leave one well-defined answer.
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import get_protocol
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from innkeeper.core.db.database import Database
from innkeeper.core.db.schema import ModelEventRecord, ModelVersionRecord, utcnow
from innkeeper.core.provision import sha256_file
from innkeeper.models.artifacts import MANIFEST_FILE, read_manifest, verify_artifact

if TYPE_CHECKING:
    from innkeeper.core.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

# Written last into a stored artifact (holding the manifest's sha256): an object store has no atomic
# directory rename, so an artifact without it is an upload that never finished.
COMPLETE_MARKER = "COMPLETE"
# Attempts when another process changed a version (or took a version id) between our read and our write.
CONFLICT_ATTEMPTS = 5
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_VERSION_NUMBER = re.compile(r"v?0*(\d+)")
_FIELD_LIMIT = 32  # model_events.action and .actor


class VersionStatus(StrEnum):
    CANDIDATE = "candidate"
    PROMOTED = "promoted"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


class RegistryError(RuntimeError):
    """A request the registry cannot honour (unknown version, nothing to roll back to, a broken artifact)."""


class _Conflict(Exception):
    """Another process changed the version between this transaction's read and its write: run it again."""


@dataclass(frozen=True)
class ModelVersion:
    """A plain snapshot of one `model_versions` row."""

    id: str
    status: VersionStatus
    created_at: datetime
    promoted_at: datetime | None
    base_id: str
    base_sha256: str
    artifact_uri: str
    manifest_sha256: str
    metrics: dict
    lineage: dict
    gate: dict
    run_id: str | None
    note: str | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO 8601 strings, the status as its value."""
        data = dataclasses.asdict(self)
        data["status"] = self.status.value
        data["created_at"] = self.created_at.isoformat()
        data["promoted_at"] = self.promoted_at.isoformat() if self.promoted_at else None
        return data


# ---------------------------------------------------------------- artifact store


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
        target = Path(cache_dir) / f"{path.rstrip('/').rsplit('/', 1)[-1]}-{_short_hash(uri)}"
        remote_manifest = hashlib.sha256(fs.cat_file(f"{path}/{MANIFEST_FILE}")).hexdigest()
        cached_manifest = target / MANIFEST_FILE
        if cached_manifest.is_file() and sha256_file(cached_manifest) == remote_manifest:
            return target
        return self._download(fs, path, target)

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


# ---------------------------------------------------------------- registry


class ModelRegistry:
    """Model versions in the database, their artifacts in an `ArtifactStore`, local copies in `cache_dir`."""

    def __init__(self, db: Database, store: ArtifactStore, cache_dir: Path) -> None:
        self.db = db
        self.store = store
        self.cache_dir = Path(cache_dir)

    @classmethod
    def from_settings(cls, settings: Settings, db: Database | None = None) -> ModelRegistry:
        url = settings.registry_url or f"file://{(settings.home / 'registry').resolve()}"
        store = ArtifactStore(url, **settings.registry_storage_options)
        cache_dir = settings.registry_cache or settings.home / "registry-cache"
        return cls(db or Database.from_settings(settings), store, cache_dir)

    # ---------------------------------------------------------------- registering

    def register(
        self,
        artifact_dir: Path,
        *,
        status: VersionStatus = VersionStatus.CANDIDATE,
        metrics: dict,
        lineage: dict,
        gate: dict | None = None,
        run_id: str | None = None,
        note: str | None = None,
        actor: str = "nightly",
    ) -> ModelVersion:
        """Verify the artifact, copy it into the store and record it (with a "registered" event).

        With a `run_id` already registered, that version is returned unchanged: a resumed run never
        registers twice. If recording fails, the copy is removed again.
        """
        status = _status(status)
        if status not in (VersionStatus.CANDIDATE, VersionStatus.REJECTED, VersionStatus.PROMOTED):
            raise RegistryError(f"a version is registered as candidate, rejected or promoted, not {status.value}")
        fields = _checked_fields(metrics=metrics, lineage=lineage, gate=gate or {})
        _check_label("actor", actor)
        if run_id is not None and (existing := self._by_run_id(run_id)):
            return existing
        artifact_dir = Path(artifact_dir)
        if problems := verify_artifact(artifact_dir):
            raise RegistryError(f"refusing to register {artifact_dir}: {'; '.join(problems)}")
        manifest = read_manifest(artifact_dir)
        record = {
            **fields,
            "base_id": str(manifest.get("base_id") or "unknown"),
            "base_sha256": manifest["base_sha256"],
            "manifest_sha256": sha256_file(artifact_dir / MANIFEST_FILE),
            "run_id": run_id,
            "note": note,
        }
        for _ in range(CONFLICT_ATTEMPTS):
            now = utcnow()
            version_id = self.db.transact(lambda s, now=now: _next_version_id(s, now), write=False)
            try:
                uri = self.store.put(artifact_dir, version_id)
            except FileExistsError:
                continue  # a concurrent registration took this id a moment ago
            try:
                return self.db.transact(
                    lambda s, vid=version_id, uri=uri, now=now: _insert(s, vid, uri, now, status, record, actor)
                )
            except IntegrityError:
                self._remove_quietly(uri)
                if run_id is not None and (existing := self._by_run_id(run_id)):
                    return existing  # the same run registered concurrently and won
            except BaseException:
                self._remove_quietly(uri)  # no half-registered version: no row, no stored copy
                raise
        raise RegistryError(f"could not register {artifact_dir}: version ids kept colliding with other registrations")

    # ---------------------------------------------------------------- reading

    def get(self, version_id: str) -> ModelVersion:
        """The version with this id (or number: "v7", "7"); RegistryError if there is none."""
        return self.db.transact(lambda s: _snapshot(_resolve(s, version_id)), write=False)

    def list(self, *, limit: int | None = None) -> builtins.list[ModelVersion]:
        """Versions, newest first."""
        query = select(ModelVersionRecord).order_by(ModelVersionRecord.created_at.desc(), ModelVersionRecord.id.desc())
        if limit is not None:
            query = query.limit(limit)
        return self.db.transact(lambda s: [_snapshot(row) for row in s.scalars(query)], write=False)

    def serving(self) -> ModelVersion | None:
        """The promoted version with the latest promoted_at; None when the base model serves."""
        return self.db.transact(lambda s: _snapshot_or_none(_serving_row(s)), write=False)

    def events(self, version_id: str | None = None, *, limit: int = 50) -> builtins.list[dict]:
        """Events, newest first: {id, version_id, at, action, actor, detail}; all versions' when id is None."""

        def work(session: Session) -> builtins.list[dict]:
            query = select(ModelEventRecord).order_by(ModelEventRecord.at.desc(), ModelEventRecord.id.desc())
            if version_id is not None:
                query = query.where(ModelEventRecord.version_id == _resolve(session, version_id).id)
            return [_event_dict(e) for e in session.scalars(query.limit(limit))]

        return self.db.transact(work, write=False)

    def versions_trained_on(self, call_id: str) -> builtins.list[ModelVersion]:
        """Versions whose lineage lists `call_id`, newest first (to rebuild without a removed call)."""
        # Filtered here, not in SQL: JSON containment differs between SQLite and PostgreSQL, and the
        # registry holds one version a night.
        return [v for v in self.list() if call_id in (v.lineage.get("call_ids") or [])]

    # ---------------------------------------------------------------- status changes

    def promote(self, version_id: str, *, actor: str = "cli", reason: str = "") -> ModelVersion:
        """Make the version serve (promoted_at = now); any status but failed, a rejection being overridden."""
        _check_label("actor", actor)

        def work(session: Session) -> ModelVersion:
            row = _resolve(session, version_id)
            if row.status == VersionStatus.FAILED:
                raise RegistryError(
                    f"{row.id} failed to load or verify; it cannot be promoted (register a fixed artifact instead)"
                )
            detail = reason
            if row.status == VersionStatus.REJECTED:
                why = "; ".join(str(r) for r in row.gate.get("reasons") or []) or "no reasons recorded"
                detail = _join_detail(f"overrides the rejection ({why})", reason)
            now = utcnow()
            changed = _transition(session, row, VersionStatus.PROMOTED, promoted_at=now)
            _add_event(session, row.id, "promoted", actor, detail, at=now)
            return changed

        return self._retrying(work)

    def rollback(self, *, actor: str = "cli", reason: str = "") -> ModelVersion | None:
        """Roll the serving version back; returns the version serving now (None: the base model).

        RegistryError when nothing is promoted.
        """
        _check_label("actor", actor)

        def work(session: Session) -> ModelVersion | None:
            current = _serving_row(session)
            if current is None:
                raise RegistryError("nothing to roll back: no version is promoted (the base model serves)")
            _transition(session, current, VersionStatus.ROLLED_BACK)
            now_serving = _serving_row(session)
            detail = _join_detail(f"now serving: {now_serving.id if now_serving else 'the base model'}", reason)
            _add_event(session, current.id, "rolled_back", actor, detail)
            return _snapshot_or_none(now_serving)

        return self._retrying(work)

    def reject(self, version_id: str, reasons: builtins.list[str], *, actor: str = "nightly") -> ModelVersion:
        """Mark the version rejected, with the reasons in its gate record; a failed version stays failed."""
        _check_label("actor", actor)
        reasons = [str(r) for r in reasons]

        def work(session: Session) -> ModelVersion:
            row = _resolve(session, version_id)
            if row.status == VersionStatus.FAILED:
                raise RegistryError(f"{row.id} has failed already; it stays failed")
            gate = {**(row.gate or {}), "decision": "rejected", "reasons": reasons}
            changed = _transition(session, row, VersionStatus.REJECTED, gate=gate)
            _add_event(session, row.id, "rejected", actor, "; ".join(reasons))
            return changed

        return self._retrying(work)

    def mark_failed(self, version_id: str, error: str, *, actor: str = "server") -> None:
        """A server could not load or verify the version: it fails (and, if it served, the previous promoted
        version serves again)."""
        _check_label("actor", actor)

        def work(session: Session) -> None:
            row = _resolve(session, version_id)
            if row.status != VersionStatus.FAILED:
                _transition(session, row, VersionStatus.FAILED)
            _add_event(session, row.id, "load_failed", actor, error)

        self._retrying(work)

    def record_event(self, version_id: str, action: str, *, actor: str, detail: str = "") -> None:
        """Add an event (e.g. a server's "loaded") to a version's history."""
        _check_label("action", action)
        _check_label("actor", actor)
        self.db.transact(lambda s: _add_event(s, _resolve(s, version_id).id, action, actor, detail))

    # ---------------------------------------------------------------- artifacts

    def local_artifact(self, version: ModelVersion) -> Path:
        """A verified local directory with the version's artifact; RegistryError naming the problems."""
        path = self._fetch(version)
        problems = _artifact_problems(version, path)
        if problems and path.is_relative_to(self.cache_dir):
            # A damaged cached copy: download it again before blaming the stored one.
            shutil.rmtree(path, ignore_errors=True)
            path = self._fetch(version)
            problems = _artifact_problems(version, path)
        if problems:
            raise RegistryError(
                f"{version.id}: the artifact at {version.artifact_uri} does not verify: {'; '.join(problems)}"
            )
        return path

    def _fetch(self, version: ModelVersion) -> Path:
        try:
            return self.store.fetch(version.artifact_uri, self.cache_dir)
        except RegistryError as exc:
            raise RegistryError(f"{version.id}: {exc}") from None
        except Exception as exc:  # a store's errors (network, permissions) are many; the caller needs one type
            raise RegistryError(f"{version.id}: cannot fetch {version.artifact_uri}: {exc}") from exc

    # ---------------------------------------------------------------- helpers

    def _by_run_id(self, run_id: str) -> ModelVersion | None:
        query = select(ModelVersionRecord).where(ModelVersionRecord.run_id == run_id)
        return self.db.transact(lambda s: _snapshot_or_none(s.scalar(query)), write=False)

    def _remove_quietly(self, uri: str) -> None:
        try:
            self.store.remove(uri)
        except Exception as exc:  # cleanup must not hide the error that caused it
            log.warning("could not remove %s from the artifact store: %s", uri, exc)

    def _retrying(self, work: Callable[[Session], T]) -> T:
        for _ in range(CONFLICT_ATTEMPTS - 1):
            try:
                return self.db.transact(work)
            except _Conflict:
                continue
        try:
            return self.db.transact(work)
        except _Conflict:
            raise RegistryError("the version kept changing under this request; try again") from None


# ---------------------------------------------------------------- rows


def _status(value: VersionStatus | str) -> VersionStatus:
    try:
        return VersionStatus(value)
    except ValueError:
        known = ", ".join(s.value for s in VersionStatus)
        raise RegistryError(f"unknown status {value!r} (one of: {known})") from None


def _checked_fields(*, metrics: dict, lineage: dict, gate: dict) -> dict[str, dict]:
    fields = {"metrics": metrics, "lineage": lineage, "gate": gate}
    for name, value in fields.items():
        if not isinstance(value, dict):
            raise RegistryError(f"{name} must be a dict, not {type(value).__name__}")
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise RegistryError(f"{name} is not JSON-serialisable: {exc}") from None
    call_ids = lineage.get("call_ids")
    if not isinstance(call_ids, list) or not all(isinstance(c, str) for c in call_ids):
        raise RegistryError("lineage must hold call_ids: the list of call ids the version learned from")
    return fields


def _check_label(name: str, value: str) -> None:
    if not isinstance(value, str) or not value or len(value) > _FIELD_LIMIT:
        raise RegistryError(f"{name} must be a non-empty string of at most {_FIELD_LIMIT} characters: {value!r}")


def _join_detail(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _next_version_id(session: Session, now: datetime) -> str:
    numbers = [
        int(m.group(1)) for i in session.scalars(select(ModelVersionRecord.id)) if (m := re.match(r"v(\d+)-", i))
    ]
    return f"v{max(numbers, default=0) + 1:04d}-{now:%Y%m%d-%H%M}"


def _insert(
    session: Session, version_id: str, uri: str, now: datetime, status: VersionStatus, record: dict, actor: str
) -> ModelVersion:
    promoted = status == VersionStatus.PROMOTED
    row = ModelVersionRecord(
        id=version_id,
        status=status.value,
        created_at=now,
        promoted_at=now if promoted else None,
        artifact_uri=uri,
        **record,
    )
    session.add(row)
    session.flush()  # the row first: the events reference it
    _add_event(session, version_id, "registered", actor, record["note"] or "", at=now)
    if promoted:
        _add_event(session, version_id, "promoted", actor, "promoted at registration", at=now)
    return _snapshot(row)


def _resolve(session: Session, version_id: str) -> ModelVersionRecord:
    """The row for an exact id, or for a version number ("v7", "v0007", "7")."""
    row = session.get(ModelVersionRecord, version_id)
    if row is None and (number := _VERSION_NUMBER.fullmatch(str(version_id).strip())):
        prefix = f"v{int(number.group(1)):04d}-"
        query = select(ModelVersionRecord).where(ModelVersionRecord.id.startswith(prefix, autoescape=True))
        row = session.scalars(query).first()
    if row is None:
        raise RegistryError(f"no model version {version_id!r} (`innkeeper models list` shows them)")
    return row


def _serving_row(session: Session) -> ModelVersionRecord | None:
    query = (
        select(ModelVersionRecord)
        .where(ModelVersionRecord.status == VersionStatus.PROMOTED.value)
        .order_by(ModelVersionRecord.promoted_at.desc(), ModelVersionRecord.id.desc())
        .limit(1)
    )
    return session.scalars(query).first()


def _transition(session: Session, row: ModelVersionRecord, status: VersionStatus, **values: Any) -> ModelVersion:
    """Set the status only if the row is still as read (status and promoted_at): _Conflict otherwise, since
    a concurrent promote, rollback or failure changed it and this request must be decided again."""
    statement = (
        update(ModelVersionRecord)
        .where(
            ModelVersionRecord.id == row.id,
            ModelVersionRecord.status == row.status,
            ModelVersionRecord.promoted_at.is_(None)
            if row.promoted_at is None
            else ModelVersionRecord.promoted_at == row.promoted_at,
        )
        .values(status=status.value, **values)
        .execution_options(synchronize_session=False)
    )
    if session.execute(statement).rowcount != 1:
        raise _Conflict(row.id)
    return dataclasses.replace(_snapshot(row), status=status, **values)


def _add_event(session: Session, version_id: str, action: str, actor: str, detail: str, *, at: datetime | None = None):
    session.add(ModelEventRecord(version_id=version_id, at=at or utcnow(), action=action, actor=actor, detail=detail))
    session.flush()


def _snapshot(row: ModelVersionRecord) -> ModelVersion:
    return ModelVersion(
        id=row.id,
        status=VersionStatus(row.status),
        created_at=row.created_at,
        promoted_at=row.promoted_at,
        base_id=row.base_id,
        base_sha256=row.base_sha256,
        artifact_uri=row.artifact_uri,
        manifest_sha256=row.manifest_sha256,
        metrics=dict(row.metrics or {}),
        lineage=dict(row.lineage or {}),
        gate=dict(row.gate or {}),
        run_id=row.run_id,
        note=row.note,
    )


def _snapshot_or_none(row: ModelVersionRecord | None) -> ModelVersion | None:
    return None if row is None else _snapshot(row)


def _event_dict(event: ModelEventRecord) -> dict[str, Any]:
    return {
        "id": event.id,
        "version_id": event.version_id,
        "at": event.at,
        "action": event.action,
        "actor": event.actor,
        "detail": event.detail,
    }


def _artifact_problems(version: ModelVersion, path: Path) -> list[str]:
    problems = verify_artifact(path)
    if not problems and sha256_file(path / MANIFEST_FILE) != version.manifest_sha256:
        problems.append(f"{path / MANIFEST_FILE}: not the manifest registered for {version.id} (sha256 differs)")
    return problems
