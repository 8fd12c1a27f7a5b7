"""The model registry: tuned model versions (status, metrics, lineage, gate, events) in the database, and
their delta artifacts in a store — a directory, or an S3-compatible bucket through fsspec
(`innkeeper.models.store`).

The nightly tuning run registers each verified artifact; an operator (or the gate) promotes one and may
roll it back; a server that cannot load a version marks it failed. Which version serves is never stored
as a flag: it is the promoted version with the latest `promoted_at` (none: the base model serves), so
promotions and rollbacks from several processes always leave one well-defined answer
(`innkeeper.models.versions`).
"""

from __future__ import annotations

import builtins
import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from innkeeper.core.db.database import Database, notify_on_commit
from innkeeper.core.db.schema import ModelEventRecord, ModelVersionRecord, utcnow
from innkeeper.core.manifest import sha256_file
from innkeeper.models.artifacts import MANIFEST_FILE, read_manifest, verify_artifact
from innkeeper.models.store import ArtifactStore, RegistryError
from innkeeper.models.versions import (
    Conflict,
    ModelVersion,
    VersionStatus,
    add_event,
    event_dict,
    insert_version,
    next_version_id,
    serving_row,
    snapshot,
    snapshot_or_none,
    transition,
)

if TYPE_CHECKING:
    from innkeeper.core.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

# Attempts when another process changed a version (or took a version id) between our read and our write.
CONFLICT_ATTEMPTS = 5
_VERSION_NUMBER = re.compile(r"v?0*(\d+)")
_FIELD_LIMIT = 32  # model_events.action and .actor
# On PostgreSQL every change of the serving version is announced here when it commits, whoever makes it (a
# worker's admin page, `innkeeper models promote`, the nightly job): the serving workers LISTEN and swap at
# once instead of at their next poll (`innkeeper.serve.live_bridge`).
SERVING_CHANGED = "innkeeper_serving"


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
            version_id = self.db.transact(lambda s, now=now: next_version_id(s, now), write=False)
            try:
                uri = self.store.put(artifact_dir, version_id)
            except FileExistsError:
                continue  # a concurrent registration took this id a moment ago
            except Exception as exc:  # the store is down or refuses: nothing is recorded, the run can retry
                raise RegistryError(f"cannot store {artifact_dir} in {self.store.url}: {exc}") from exc
            try:
                return self.db.transact(
                    lambda s, vid=version_id, uri=uri, now=now: insert_version(s, vid, uri, now, status, record, actor)
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
        return self.db.transact(lambda s: snapshot(_resolve(s, version_id)), write=False)

    def list(self, *, limit: int | None = None) -> builtins.list[ModelVersion]:
        """Versions, newest first."""
        query = select(ModelVersionRecord).order_by(ModelVersionRecord.created_at.desc(), ModelVersionRecord.id.desc())
        if limit is not None:
            query = query.limit(limit)
        return self.db.transact(lambda s: [snapshot(row) for row in s.scalars(query)], write=False)

    def serving(self) -> ModelVersion | None:
        """The promoted version with the latest promoted_at; None when the base model serves."""
        return self.db.transact(lambda s: snapshot_or_none(serving_row(s)), write=False)

    def events(self, version_id: str | None = None, *, limit: int = 50) -> builtins.list[dict]:
        """Events, newest first: {id, version_id, at, action, actor, detail}; all versions' when id is None."""

        def work(session: Session) -> builtins.list[dict]:
            query = select(ModelEventRecord).order_by(ModelEventRecord.at.desc(), ModelEventRecord.id.desc())
            if version_id is not None:
                query = query.where(ModelEventRecord.version_id == _resolve(session, version_id).id)
            return [event_dict(e) for e in session.scalars(query.limit(limit))]

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
            changed = transition(session, row, VersionStatus.PROMOTED, promoted_at=now)
            add_event(session, row.id, "promoted", actor, detail, at=now)
            notify_on_commit(session, SERVING_CHANGED, row.id)
            return changed

        return self._retrying(work)

    def rollback(self, *, actor: str = "cli", reason: str = "") -> ModelVersion | None:
        """Roll the serving version back; returns the version serving now (None: the base model).

        RegistryError when nothing is promoted.
        """
        _check_label("actor", actor)

        def work(session: Session) -> ModelVersion | None:
            current = serving_row(session)
            if current is None:
                raise RegistryError("nothing to roll back: no version is promoted (the base model serves)")
            transition(session, current, VersionStatus.ROLLED_BACK)
            now_serving = serving_row(session)
            detail = _join_detail(f"now serving: {now_serving.id if now_serving else 'the base model'}", reason)
            add_event(session, current.id, "rolled_back", actor, detail)
            notify_on_commit(session, SERVING_CHANGED, now_serving.id if now_serving else "")
            return snapshot_or_none(now_serving)

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
            changed = transition(session, row, VersionStatus.REJECTED, gate=gate)
            add_event(session, row.id, "rejected", actor, "; ".join(reasons))
            return changed

        return self._retrying(work)

    def mark_failed(self, version_id: str, error: str, *, actor: str = "server") -> None:
        """A server could not load or verify the version: it fails (and, if it served, the previous promoted
        version serves again)."""
        _check_label("actor", actor)

        def work(session: Session) -> None:
            row = _resolve(session, version_id)
            if row.status != VersionStatus.FAILED:
                transition(session, row, VersionStatus.FAILED)
            add_event(session, row.id, "load_failed", actor, error)

        self._retrying(work)

    def record_event(self, version_id: str, action: str, *, actor: str, detail: str = "") -> None:
        """Add an event (e.g. a server's "loaded") to a version's history."""
        _check_label("action", action)
        _check_label("actor", actor)
        self.db.transact(lambda s: add_event(s, _resolve(s, version_id).id, action, actor, detail))

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
            # The store is down, but a copy fetched before whose manifest is the one registered is the same
            # artifact (local_artifact still verifies every file): a rollback or a restart needs no network.
            if (cached := self._verified_cache(version)) is not None:
                log.warning("%s: artifact store unreachable (%s); using the cached copy %s", version.id, exc, cached)
                return cached
            raise RegistryError(f"{version.id}: cannot fetch {version.artifact_uri}: {exc}") from exc

    def _verified_cache(self, version: ModelVersion) -> Path | None:
        try:
            cached = self.store.cached_copy(version.artifact_uri, self.cache_dir)
        except Exception:  # the URI itself is unusable: there is no cache to look in
            return None
        manifest = cached / MANIFEST_FILE if cached is not None else None
        if manifest is None or not manifest.is_file() or sha256_file(manifest) != version.manifest_sha256:
            return None
        return cached

    # ---------------------------------------------------------------- helpers

    def _by_run_id(self, run_id: str) -> ModelVersion | None:
        query = select(ModelVersionRecord).where(ModelVersionRecord.run_id == run_id)
        return self.db.transact(lambda s: snapshot_or_none(s.scalar(query)), write=False)

    def _remove_quietly(self, uri: str) -> None:
        try:
            self.store.remove(uri)
        except Exception as exc:  # cleanup must not hide the error that caused it
            log.warning("could not remove %s from the artifact store: %s", uri, exc)

    def _retrying(self, work: Callable[[Session], T]) -> T:
        for _ in range(CONFLICT_ATTEMPTS - 1):
            try:
                return self.db.transact(work)
            except Conflict:
                continue
        try:
            return self.db.transact(work)
        except Conflict:
            raise RegistryError("the version kept changing under this request; try again") from None


# ---------------------------------------------------------------- checks and lookups


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


def _artifact_problems(version: ModelVersion, path: Path) -> list[str]:
    problems = verify_artifact(path)
    if not problems and sha256_file(path / MANIFEST_FILE) != version.manifest_sha256:
        problems.append(f"{path / MANIFEST_FILE}: not the manifest registered for {version.id} (sha256 differs)")
    return problems
