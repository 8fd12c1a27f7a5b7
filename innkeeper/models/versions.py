"""The model registry's tables: `model_versions` rows as `ModelVersion` snapshots, their events, and the
guarded status change that keeps concurrent promotions, rollbacks and failures from overwriting each other.

Which version serves is never stored as a flag: it is the promoted version with the latest `promoted_at`
(`serving_row`; none: the base model serves), so promotions and rollbacks from several processes always
leave one well-defined answer. Functions here run inside a caller's transaction (`innkeeper.models.registry`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from innkeeper.core.db.schema import ModelEventRecord, ModelVersionRecord, utcnow


class VersionStatus(StrEnum):
    """Where a version stands; only `promoted` ones can serve."""

    CANDIDATE = "candidate"
    PROMOTED = "promoted"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


class Conflict(Exception):
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


def next_version_id(session: Session, now: datetime) -> str:
    """The next free id, "v0007-20261126-0312": a number one past the highest, then the time."""
    numbers = [
        int(m.group(1)) for i in session.scalars(select(ModelVersionRecord.id)) if (m := re.match(r"v(\d+)-", i))
    ]
    return f"v{max(numbers, default=0) + 1:04d}-{now:%Y%m%d-%H%M}"


def insert_version(
    session: Session, version_id: str, uri: str, now: datetime, status: VersionStatus, record: dict, actor: str
) -> ModelVersion:
    """Add the version's row with its "registered" event (and "promoted", when registered as promoted)."""
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
    add_event(session, version_id, "registered", actor, record["note"] or "", at=now)
    if promoted:
        add_event(session, version_id, "promoted", actor, "promoted at registration", at=now)
    return snapshot(row)


def serving_row(session: Session) -> ModelVersionRecord | None:
    """The promoted row with the latest promoted_at; None when the base model serves."""
    query = (
        select(ModelVersionRecord)
        .where(ModelVersionRecord.status == VersionStatus.PROMOTED.value)
        .order_by(ModelVersionRecord.promoted_at.desc(), ModelVersionRecord.id.desc())
        .limit(1)
    )
    return session.scalars(query).first()


def transition(session: Session, row: ModelVersionRecord, status: VersionStatus, **values: Any) -> ModelVersion:
    """Set the status only if the row is still as read (status and promoted_at): Conflict otherwise, since
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
        raise Conflict(row.id)
    return dataclasses.replace(snapshot(row), status=status, **values)


def add_event(
    session: Session, version_id: str, action: str, actor: str, detail: str, *, at: datetime | None = None
) -> None:
    """Add an event to the version's history (flushed, so a failing insert fails here)."""
    session.add(ModelEventRecord(version_id=version_id, at=at or utcnow(), action=action, actor=actor, detail=detail))
    session.flush()


def snapshot(row: ModelVersionRecord) -> ModelVersion:
    """The row as a plain `ModelVersion`, usable after its session has closed."""
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


def snapshot_or_none(row: ModelVersionRecord | None) -> ModelVersion | None:
    return None if row is None else snapshot(row)


def event_dict(event: ModelEventRecord) -> dict[str, Any]:
    """An event row as {id, version_id, at, action, actor, detail}."""
    return {
        "id": event.id,
        "version_id": event.version_id,
        "at": event.at,
        "action": event.action,
        "actor": event.actor,
        "detail": event.detail,
    }
