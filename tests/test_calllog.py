"""Tests for the call log: calls and turns round-trip with their timings, and the training flag."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from agent.call.calllog import CallLog, CallNotFound, TurnRecord
from innkeeper.core.db.database import Database
from innkeeper.core.db.schema import Call

EASTERN = timezone(timedelta(hours=-5))
T0 = datetime(2030, 1, 7, 9, 30, tzinfo=EASTERN)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def stored_call(db: Database, call_id: str) -> Call:
    with db.session(write=False) as session:
        call = session.get(Call, call_id)
        assert call is not None
        return call


def test_call_and_turns_round_trip_with_timings(db: Database) -> None:
    log = CallLog(db)
    call_id = log.start_call(channel="twilio", caller_number="+12075550199", model_version="m1", metadata={"a": 1})
    tool_calls = [{"name": "check_availability", "args": {"guests": 2}, "result": "2 room types"}]
    latencies = {"asr": 212.5, "llm": 640.0, "tts_first_audio": 180.25}
    assert log.log_turn(call_id, role="caller", text="A room for Friday?", started_at=at(0), ended_at=at(2)) == 0
    assert (
        log.log_turn(
            call_id,
            role="agent",
            text="We have two options.",
            started_at=at(2.5),
            ended_at=at(4),
            model_version="m2",
            tool_calls=tool_calls,
            latencies=latencies,
        )
        == 1
    )

    first, second = log.transcript(call_id)
    assert first == TurnRecord(
        id=first.id,
        call_id=call_id,
        index=0,
        role="caller",
        text="A room for Friday?",
        started_at=at(0),
        ended_at=at(2),
        tool_calls=None,
        latencies=None,
        model_version="m1",  # inherited from the call
        flagged=False,
    )
    assert (second.index, second.model_version, second.tool_calls, second.latencies) == (
        1,
        "m2",
        tool_calls,
        latencies,
    )
    assert second.started_at.tzinfo == UTC and second.started_at == at(2.5)

    log.end_call(call_id, reason="completed")
    log.end_call(call_id, reason="hangup")
    call = stored_call(db, call_id)
    assert (call.channel, call.caller_number, call.meta, call.end_reason) == (
        "twilio",
        "+12075550199",
        {"a": 1},
        "completed",
    )
    assert call.ended_at is not None and call.ended_at.tzinfo == UTC
    assert call.started_at <= call.ended_at


def test_calls_are_included_in_training_until_the_operator_excludes_them(db: Database) -> None:
    log = CallLog(db)
    call_id = log.start_call(channel="text")
    assert stored_call(db, call_id).training == "included"
    log.set_training(call_id, included=False)
    assert stored_call(db, call_id).training == "excluded"
    log.set_training(call_id, included=True)
    assert stored_call(db, call_id).training == "included"


def test_bad_turns_and_unknown_calls_are_rejected(db: Database) -> None:
    log = CallLog(db)
    call_id = log.start_call(channel="ws")
    with pytest.raises(ValueError, match="role"):
        log.log_turn(call_id, role="narrator", text="x", started_at=at(0), ended_at=at(1))
    with pytest.raises(ValueError, match="timezone-aware"):
        log.log_turn(call_id, role="caller", text="x", started_at=datetime(2030, 1, 7), ended_at=at(1))
    with pytest.raises(CallNotFound):
        log.log_turn("no-such-call", role="caller", text="x", started_at=at(0), ended_at=at(1))
    with pytest.raises(CallNotFound):
        log.set_training("no-such-call", included=False)
    with pytest.raises(CallNotFound):
        log.transcript("no-such-call")
    assert log.transcript(call_id) == []
