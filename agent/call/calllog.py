"""The call log: every call and its turns with timings, the record the nightly tuning learns from.

The brain masks card numbers before it logs a turn; this module stores what it is given.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from innkeeper.core.db.database import Database
from innkeeper.core.db.schema import TURN_ROLES, Booking, Call, Turn, utcnow

if TYPE_CHECKING:
    from agent.call.backlog import UnsavedCall


class CallNotFound(LookupError):
    """No call with that id is in the log."""


@dataclass(frozen=True)
class TurnRecord:
    """One logged turn, as stored (timestamps in UTC)."""

    id: int
    call_id: str
    index: int
    role: str
    text: str
    started_at: datetime
    ended_at: datetime
    tool_calls: list[dict[str, Any]] | None
    latencies: dict[str, float] | None
    model_version: str | None
    flagged: bool


class CallLog:
    """Writes calls and turns to the database and reads transcripts back."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def start_call(
        self,
        *,
        channel: str,
        caller_number: str | None = None,
        model_version: str | None = None,
        metadata: dict[str, Any] | None = None,
        call_id: str | None = None,
    ) -> str:
        """Open a call record and return its id (`call_id` if given, else a new uuid4 string)."""
        call_id, started_at = call_id or str(uuid.uuid4()), utcnow()

        def work(session: Session) -> str:
            session.add(
                Call(
                    id=call_id,
                    channel=channel,
                    caller_number=caller_number,
                    started_at=started_at,
                    model_version=model_version,
                    meta=dict(metadata or {}),
                )
            )
            return call_id

        return self._db.transact(work)

    def log_turn(
        self,
        call_id: str,
        *,
        role: str,
        text: str,
        started_at: datetime,
        ended_at: datetime,
        model_version: str | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
        latencies: dict[str, float] | None = None,
    ) -> int:
        """Append a turn and return its 0-based index in the call.

        Timestamps must be timezone-aware; `latencies` maps stage name to milliseconds. A turn without
        a model version inherits the call's.
        """
        if role not in TURN_ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {TURN_ROLES}")
        if started_at.tzinfo is None or ended_at.tzinfo is None:
            raise ValueError("turn timestamps must be timezone-aware")

        def work(session: Session) -> int:
            # Locking the call row gives concurrent writers to one call distinct, gap-free indexes.
            call = _get_call(session, call_id, for_update=True)
            last = session.scalar(select(func.max(Turn.index)).where(Turn.call_id == call_id))
            turn = _turn_row(
                call,
                0 if last is None else last + 1,
                role=role,
                text=text,
                started_at=started_at,
                ended_at=ended_at,
                model_version=model_version,
                tool_calls=tool_calls,
                latencies=latencies,
            )
            session.add(turn)
            return turn.index

        return self._db.transact(work)

    def restore(self, call: UnsavedCall) -> int:
        """Write a call the database could not take in time (agent.call.backlog), in one transaction: its record
        if missing, its turns after those stored (a turn already stored — same role, text and start — is
        skipped, so a restore that ran before is harmless), and its end. Returns the turns added."""

        def work(session: Session) -> int:
            record = session.get(Call, call.call_id, with_for_update=True)
            if record is None:
                record = Call(
                    id=call.call_id,
                    channel=call.channel,
                    caller_number=call.caller_number,
                    started_at=call.started_at,
                    model_version=call.model_version,
                    meta=dict(call.meta),
                )
                session.add(record)
                session.flush()
            stored = session.execute(
                select(Turn.index, Turn.role, Turn.text, Turn.started_at).where(Turn.call_id == call.call_id)
            ).all()
            seen = {(role, text, _utc(started)) for _, role, text, started in stored}
            index = max((row[0] for row in stored), default=-1) + 1
            added = 0
            for turn in call.turns:
                if (turn.role, turn.text, _utc(turn.started_at)) in seen:
                    continue
                session.add(_turn_row(record, index, **asdict(turn)))
                index += 1
                added += 1
            if record.ended_at is None:
                record.ended_at, record.end_reason = call.ended_at, call.end_reason
            return added

        return self._db.transact(work)

    def end_call(self, call_id: str, *, reason: str) -> None:
        """Record when and why the call ended; the first end wins (a late hangup event changes nothing)."""

        def work(session: Session) -> None:
            call = _get_call(session, call_id, for_update=True)
            if call.ended_at is None:
                call.ended_at, call.end_reason = utcnow(), reason

        self._db.transact(work)

    def set_audio(self, call_id: str, *, caller_audio: str | None, agent_audio: str | None) -> None:
        """Reference the call's recorded audio legs (files written by the voice loop)."""

        def work(session: Session) -> None:
            call = _get_call(session, call_id, for_update=True)
            call.caller_audio_path, call.agent_audio_path = caller_audio, agent_audio

        self._db.transact(work)

    def update_meta(self, call_id: str, **values: Any) -> None:
        """Merge values into the call's metadata (transport ids, hand-offs, voice events)."""

        def work(session: Session) -> None:
            call = _get_call(session, call_id, for_update=True)
            call.meta = {**(call.meta or {}), **values}  # a new dict: JSON columns track assignment only

        self._db.transact(work)

    def call_summary(self, call_id: str) -> CallSummary:
        """The call row as a plain record."""

        def work(session: Session) -> CallSummary:
            return _summary(_get_call(session, call_id))

        return self._db.transact(work, write=False)

    def find_call(self, meta_key: str, value: str, *, recent: int = 1000) -> str | None:
        """The id of the most recent call whose metadata has `meta_key == value` (e.g. a Twilio callSid).

        Scans the latest `recent` calls in Python: the JSON column is not indexed the same way on
        SQLite and PostgreSQL, and this lookup is for operators and test callers, not the call path.
        """

        def work(session: Session) -> str | None:
            calls = session.scalars(select(Call).order_by(Call.started_at.desc()).limit(recent))
            return next((c.id for c in calls if (c.meta or {}).get(meta_key) == value), None)

        return self._db.transact(work, write=False)

    def search(
        self,
        *,
        text: str = "",
        since: datetime | None = None,
        end_reason: str | None = None,
        flagged: bool = False,
        booked: bool = False,
        limit: int = 100,
    ) -> list[CallSummary]:
        """The newest calls first (for the dashboard), each with the codes of the bookings it made: optionally
        only those whose caller number or any turn contains `text`, that started after `since`, ended for
        `end_reason`, have a flagged turn, or made a booking (`booked`)."""

        def work(session: Session) -> list[CallSummary]:
            query = select(Call).order_by(Call.started_at.desc()).limit(limit)
            if booked:
                query = query.where(Call.id.in_(select(Booking.call_id).where(Booking.call_id.is_not(None))))
            if text.strip():
                pattern = f"%{text.strip()}%"
                in_turns = select(Turn.call_id).where(Turn.text.ilike(pattern))
                query = query.where(or_(Call.caller_number.ilike(pattern), Call.id.in_(in_turns)))
            if since is not None:
                query = query.where(Call.started_at >= since)
            if end_reason:
                query = query.where(Call.end_reason == end_reason)
            if flagged:
                query = query.where(Call.id.in_(select(Turn.call_id).where(Turn.flagged)))
            calls = list(session.scalars(query))
            codes: dict[str, list[str]] = {}
            made = select(Booking.call_id, Booking.code).where(Booking.call_id.in_([c.id for c in calls]))
            for call_id, code in session.execute(made.order_by(Booking.id)):
                codes.setdefault(call_id, []).append(code)
            return [replace(_summary(call), booking_codes=tuple(codes.get(call.id, ()))) for call in calls]

        return self._db.transact(work, write=False)

    def latency_by_hour(self, since: datetime) -> list[HourlyLatency]:
        """Voice-to-voice latency at the server (end of caller speech → first reply audio), per hour since
        `since`: the turns measured and their p50 and p95. Hours without a voice turn are left out."""

        def work(session: Session) -> list[tuple[datetime, dict[str, Any] | None]]:
            query = select(Turn.started_at, Turn.latencies).where(Turn.role == "agent", Turn.started_at >= since)
            return [(row[0], row[1]) for row in session.execute(query)]

        by_hour: dict[datetime, list[float]] = {}
        for started, latencies in self._db.transact(work, write=False):
            value = (latencies or {}).get("v2v_server_ms")
            if value is not None:
                by_hour.setdefault(started.replace(minute=0, second=0, microsecond=0), []).append(float(value))
        return [
            HourlyLatency(hour, len(values), _percentile(values, 50), _percentile(values, 95))
            for hour, values in sorted(by_hour.items())
        ]

    def end_interrupted(self, server_id: str, *, started_before: datetime) -> list[str]:
        """Mark ended, as 'interrupted', the calls `server_id` took before `started_before` and never ended (the
        process died mid-call): each ends at its last logged turn. Returns their ids. Other servers' calls in
        progress are left alone."""

        def work(session: Session) -> list[str]:
            query = select(Call).where(Call.ended_at.is_(None), Call.started_at < started_before)
            ended = []
            for call in session.scalars(query):
                if (call.meta or {}).get("server") != server_id:
                    continue
                last = session.scalar(select(func.max(Turn.ended_at)).where(Turn.call_id == call.id))
                call.ended_at = last or call.started_at
                call.end_reason = "interrupted"
                ended.append(call.id)
            return ended

        return self._db.transact(work)

    def set_training(self, call_id: str, included: bool) -> None:
        """The operator's choice whether the nightly tuning may learn from this call."""

        def work(session: Session) -> None:
            _get_call(session, call_id).training = "included" if included else "excluded"

        self._db.transact(work)

    def transcript(self, call_id: str) -> list[TurnRecord]:
        """The call's turns in order."""

        def work(session: Session) -> list[TurnRecord]:
            _get_call(session, call_id)
            turns = session.scalars(select(Turn).where(Turn.call_id == call_id).order_by(Turn.index))
            return [_record(turn) for turn in turns]

        return self._db.transact(work, write=False)


@dataclass(frozen=True)
class CallSummary:
    """One call row, as stored."""

    id: str
    channel: str
    caller_number: str | None
    started_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    model_version: str | None
    training: str
    caller_audio_path: str | None
    agent_audio_path: str | None
    meta: dict[str, Any]
    booking_codes: tuple[str, ...] = ()  # filled by `search`: the bookings this call made


@dataclass(frozen=True)
class HourlyLatency:
    hour: datetime
    turns: int
    p50_ms: float
    p95_ms: float


def _utc(moment: datetime) -> datetime:
    """Timestamps compared across backends: SQLite gives naive UTC back, PostgreSQL aware ones."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: every reported figure is a latency a caller had)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def split_meta(tool_calls: list[dict[str, Any]] | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An agent turn's tool calls as stored: the conversation's `{"meta": ...}` entry (act, who read and worded
    the turn, disagreements) and the real tool calls."""
    meta: dict[str, Any] = {}
    tools = []
    for entry in tool_calls or []:
        if isinstance(entry, dict) and "meta" in entry:
            meta = dict(entry["meta"])
        else:
            tools.append(entry)
    return meta, tools


def _summary(call: Call) -> CallSummary:
    return CallSummary(
        id=call.id,
        channel=call.channel,
        caller_number=call.caller_number,
        started_at=call.started_at,
        ended_at=call.ended_at,
        end_reason=call.end_reason,
        model_version=call.model_version,
        training=call.training,
        caller_audio_path=call.caller_audio_path,
        agent_audio_path=call.agent_audio_path,
        meta=dict(call.meta or {}),
    )


def _get_call(session: Session, call_id: str, *, for_update: bool = False) -> Call:
    call = session.get(Call, call_id, with_for_update=for_update)
    if call is None:
        raise CallNotFound(f"no call with id {call_id!r}")
    return call


def _turn_row(
    call: Call,
    index: int,
    *,
    role: str,
    text: str,
    started_at: datetime,
    ended_at: datetime,
    model_version: str | None,
    tool_calls: list[dict[str, Any]] | None,
    latencies: dict[str, float] | None,
) -> Turn:
    """A new turn of `call` at `index`; without a model version of its own it has the call's."""
    return Turn(
        call_id=call.id,
        index=index,
        role=role,
        text=text,
        started_at=started_at,
        ended_at=ended_at,
        tool_calls=tool_calls,
        latencies=latencies,
        model_version=model_version or call.model_version,
    )


def _record(turn: Turn) -> TurnRecord:
    return TurnRecord(
        id=turn.id,
        call_id=turn.call_id,
        index=turn.index,
        role=turn.role,
        text=turn.text,
        started_at=turn.started_at,
        ended_at=turn.ended_at,
        tool_calls=turn.tool_calls,
        latencies=turn.latencies,
        model_version=turn.model_version,
        flagged=turn.flagged,
    )
