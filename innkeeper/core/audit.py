"""The audit log: every state change staff or scripts make (who, when, what, to what), append-only.

Writers call `AuditLog.record`; the dashboard's audit page reads `recent`. There is deliberately no way
to edit or delete an entry from the code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from innkeeper.core.db.database import Database
from innkeeper.core.db.schema import AuditEntry


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


class AuditLog:
    """Appends and reads audit entries in the product database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def record(self, actor: str, action: str, target: str = "", **detail: Any) -> AuditRecord:
        def work(session: Session) -> AuditRecord:
            entry = AuditEntry(actor=actor, action=action, target=target[:200], detail=detail)
            session.add(entry)
            session.flush()
            return _record(entry)

        return self._db.transact(work)

    def recent(self, *, limit: int = 200, action: str | None = None) -> list[AuditRecord]:
        """The newest entries first; of one action when asked."""

        def work(session: Session) -> list[AuditRecord]:
            query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
            if action is not None:
                query = query.where(AuditEntry.action == action)
            return [_record(entry) for entry in session.scalars(query)]

        return self._db.transact(work, write=False)


def _record(entry: AuditEntry) -> AuditRecord:
    return AuditRecord(entry.id, entry.at, entry.actor, entry.action, entry.target, dict(entry.detail or {}))
