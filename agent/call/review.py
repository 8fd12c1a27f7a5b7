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

from agent.call.calllog import split_meta
from agent.understanding.action import TurnAction
from innkeeper.core.db.database import Database
from innkeeper.core.db.schema import Correction, Turn

# Whisper's average log-probability below this: the words heard may not be the words said.
LOW_ASR_CONFIDENCE = -0.8


@dataclass(frozen=True)
class ReviewItem:
    """A caller turn worth an operator's look, and why."""

    call_id: str
    turn_index: int
    caller_text: str
    agent_text: str
    reasons: tuple[str, ...]
    at: datetime


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


def review_queue(db: Database, *, recent_turns: int = 4000, limit: int = 100) -> list[ReviewItem]:
    """Uncorrected caller turns, newest first, where the agent may have misread the caller: the model's reading
    and the rules disagreed, the turn or its reply was flagged, the words were heard with low confidence, or
    the reply handed the call to a person. Looks at the latest `recent_turns` turns (the queue is for today's
    work, not an archive)."""

    def work(session: Session) -> list[ReviewItem]:
        corrected = set(session.scalars(select(Correction.turn_id)))
        turns = list(session.scalars(select(Turn).order_by(Turn.id.desc()).limit(recent_turns)))
        by_position = {(t.call_id, t.index): t for t in turns}
        items = []
        for turn in turns:
            if turn.role != "caller" or turn.id in corrected:
                continue
            reply = by_position.get((turn.call_id, turn.index + 1))
            reasons = _review_reasons(turn, reply if reply is not None and reply.role == "agent" else None)
            if reasons:
                agent_text = reply.text if reply is not None else ""
                items.append(ReviewItem(turn.call_id, turn.index, turn.text, agent_text, reasons, turn.started_at))
            if len(items) >= limit:
                break
        return items

    return db.transact(work, write=False)


def _review_reasons(caller: Turn, reply: Turn | None) -> tuple[str, ...]:
    reasons = []
    logprob = (caller.latencies or {}).get("asr_avg_logprob")
    if logprob is not None and logprob < LOW_ASR_CONFIDENCE:
        reasons.append(f"heard with low confidence ({logprob:.2f})")
    if caller.flagged or (reply is not None and reply.flagged):
        reasons.append("flagged")
    meta, _ = split_meta(reply.tool_calls if reply is not None else None)
    if meta.get("disagreements"):
        reasons.append("model and rules disagreed: " + ", ".join(meta["disagreements"]))
    if meta.get("act") == "transfer":
        reasons.append("handed to a person")
    elif meta.get("act") == "no_information":
        reasons.append("the hotel's facts had no answer")
    if reply is not None and "didn't catch that" in reply.text:
        reasons.append("the agent asked again")
    return tuple(reasons)


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
