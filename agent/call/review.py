"""Operator corrections: how the agent should have read a caller turn, stored with who made them and when.

A correction names one logged caller turn and the `TurnAction` it should have been read as (and, if the
reply was wrong too, what the agent should have said). The nightly curation turns each correction on a
call it may learn from into a training example of the reading (`tuning.data.actions.correction_examples`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.understanding.action import TurnAction
from innkeeper.core.db.database import Database
from innkeeper.core.db.schema import Correction, Turn


class NotACallerTurn(LookupError):
    """The correction names no caller turn of the log (no such call or turn, or an agent turn)."""


@dataclass(frozen=True)
class CorrectionRecord:
    id: int
    turn_id: int
    call_id: str
    turn_index: int
    action: TurnAction
    reply: str | None
    author: str
    created_at: datetime
    note: str


class Corrections:
    """Adds and reads operator corrections (one database, shared with the call log)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add(
        self,
        call_id: str,
        turn_index: int,
        action: TurnAction,
        *,
        author: str,
        reply: str | None = None,
        note: str = "",
    ) -> CorrectionRecord:
        """Store how turn `turn_index` of call `call_id` should have been read; raises NotACallerTurn."""
        if not author.strip():
            raise ValueError("a correction needs its author")

        def work(session: Session) -> CorrectionRecord:
            turn = session.scalars(select(Turn).where(Turn.call_id == call_id, Turn.index == turn_index)).first()
            if turn is None or turn.role != "caller":
                what = "no such turn" if turn is None else f"turn {turn_index} is the {turn.role}'s"
                raise NotACallerTurn(f"call {call_id!r}: {what}; a correction names a caller turn")
            row = Correction(
                turn_id=turn.id, action=action.model_dump(mode="json"), reply=reply, author=author, note=note
            )
            session.add(row)
            session.flush()
            return _record(row, turn)

        return self._db.transact(work)

    def list(self, *, call_id: str | None = None, turn_ids: Collection[int] | None = None) -> list[CorrectionRecord]:
        """Corrections, oldest first; of one call, or of the given turns, when asked."""

        def work(session: Session) -> list[CorrectionRecord]:
            query = select(Correction, Turn).join(Turn, Turn.id == Correction.turn_id).order_by(Correction.id)
            if call_id is not None:
                query = query.where(Turn.call_id == call_id)
            if turn_ids is not None:
                query = query.where(Correction.turn_id.in_(list(turn_ids)))
            return [_record(row, turn) for row, turn in session.execute(query)]

        return self._db.transact(work, write=False)


def _record(row: Correction, turn: Turn) -> CorrectionRecord:
    action: dict[str, Any] = row.action
    return CorrectionRecord(
        id=row.id,
        turn_id=row.turn_id,
        call_id=turn.call_id,
        turn_index=turn.index,
        action=TurnAction.model_validate(action),
        reply=row.reply,
        author=row.author,
        created_at=row.created_at,
        note=row.note,
    )
