"""The hotel's facts as staff edit them: versioned, validated, and what the agent answers from on its next turn.

`data/hotel.yaml` is version 0. The dashboard may change the parts callers ask about — address, phone,
check-in and check-out times, facts and policies (topic → answer) — each save a new version with its author.
Rooms, rates and booking limits stay in the file: they shape inventory and prices in the database.
The serving process keeps the newest version in memory (`current()` costs nothing on the call path); a save
through this process updates it at once, and `load()` re-reads the database (at start-up, and to pick up
an edit made by another process).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from innkeeper.core.db.database import Database
from innkeeper.core.db.schema import HotelEdit
from innkeeper.core.hotel import HotelProfile

EDITABLE = ("address", "phone", "check_in_time", "check_out_time", "facts", "policies")
TOPIC = re.compile(r"[a-z][a-z0-9_]{1,39}")
MAX_ANSWER_CHARS = 600
_TIME = re.compile(r"\d{1,2}(:\d{2})?\s*(AM|PM|am|pm)?|noon|midnight")


class HotelEditError(ValueError):
    """An edit that would leave the agent with a broken or unspeakable profile."""


@dataclass(frozen=True)
class HotelVersion:
    version: int  # 0 = the hotel file as shipped
    author: str
    created_at: datetime | None
    note: str
    profile: HotelProfile


class HotelFacts:
    """The newest hotel profile, and its history, in the product database."""

    def __init__(self, db: Database, base: HotelProfile) -> None:
        self._db = db
        self._base = base
        self._lock = threading.Lock()
        self._current = HotelVersion(0, "hotel file", None, "", base)

    def current(self) -> HotelProfile:
        return self._current.profile

    @property
    def version(self) -> HotelVersion:
        return self._current

    def load(self) -> HotelVersion:
        """Re-read the newest version from the database."""

        def work(session: Session) -> HotelEdit | None:
            row = session.scalars(select(HotelEdit).order_by(HotelEdit.id.desc()).limit(1)).first()
            return None if row is None else _detached(row)

        row = self._db.transact(work, write=False)
        if row is not None:
            self._set(self._version(row))
        return self._current

    def save(self, edits: dict[str, Any], *, author: str, note: str = "") -> HotelVersion:
        """Validate `edits` (any of EDITABLE) on top of the current profile and store them as a new version."""
        unknown = set(edits) - set(EDITABLE)
        if unknown:
            raise HotelEditError(f"not editable here: {', '.join(sorted(unknown))} (rooms and rates live in the file)")
        content = {key: self.current().model_dump(mode="json")[key] for key in EDITABLE} | edits
        profile = self._validated(content)

        def work(session: Session) -> HotelEdit:
            row = HotelEdit(author=author, note=note, content=content)
            session.add(row)
            session.flush()
            return _detached(row)

        version = self._version(self._db.transact(work), profile)
        self._set(version)
        return version

    def history(self, limit: int = 50) -> list[HotelVersion]:
        """Saved versions, newest first (each with its whole profile)."""

        def work(session: Session) -> list[HotelEdit]:
            query = select(HotelEdit).order_by(HotelEdit.id.desc()).limit(limit)
            return [_detached(row) for row in session.scalars(query)]

        return [self._version(row) for row in self._db.transact(work, write=False)]

    # ------------------------------------------------------------------ internals
    def _set(self, version: HotelVersion) -> None:
        with self._lock:
            if version.version >= self._current.version:
                self._current = version

    def _version(self, row: HotelEdit, profile: HotelProfile | None = None) -> HotelVersion:
        return HotelVersion(row.id, row.author, row.created_at, row.note, profile or self._validated(row.content))

    def _validated(self, content: dict[str, Any]) -> HotelProfile:
        for field in ("facts", "policies"):
            for topic, answer in (content.get(field) or {}).items():
                if not TOPIC.fullmatch(str(topic)):
                    raise HotelEditError(f"{field}: topic {topic!r} must be 2-40 of a-z, 0-9 or _")
                if not str(answer).strip() or len(str(answer)) > MAX_ANSWER_CHARS:
                    raise HotelEditError(f"{field}: the answer for {topic!r} must be 1-{MAX_ANSWER_CHARS} characters")
        for field in ("check_in_time", "check_out_time"):
            if not _TIME.fullmatch(str(content.get(field, "")).strip()):
                raise HotelEditError(f"{field}: say a time as a caller would hear it, e.g. '3 PM' or '11:30 AM'")
        for field in ("address", "phone"):
            if not str(content.get(field, "")).strip():
                raise HotelEditError(f"{field} cannot be empty")
        try:
            return HotelProfile.model_validate(self._base.model_dump() | content)
        except ValidationError as err:
            raise HotelEditError(str(err)) from None


def _detached(row: HotelEdit) -> HotelEdit:
    """A plain copy that outlives its session."""
    return HotelEdit(id=row.id, created_at=row.created_at, author=row.author, note=row.note, content=dict(row.content))
