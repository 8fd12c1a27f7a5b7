"""Faults a hotel's line must survive. A server killed mid-call: when it starts again, the calls it had open
are recorded as ended ('interrupted', at their last logged turn) — nothing is left half-open — while calls
another server is still taking are left alone, and every booking stays as it was. A database down for a
whole call: the caller is answered, the call's turns wait on disk (agent.call.backlog) and reach the database
once it answers — at the next drain or the next start-up — each turn once. A disk that fills while a call is
recorded: the recording stops, the call does not.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from agent.call.backlog import CallBacklog, UnsavedCall, UnsavedTurn
from agent.call.calllog import CallLog
from agent.call.recorder import CallRecorder
from innkeeper.core.db.database import Database
from innkeeper.core.settings import Settings
from innkeeper.serve.app import create_app
from innkeeper.serve.runtime import AgentRuntime
from innkeeper.simulation.text_callers import say_lines
from tests.conftest import serving
from tests.test_dashboard import BOOKING_CALL, StubSpeech


def open_call(call_log: CallLog, server: str, *, turns: int) -> str:
    call_id = call_log.start_call(channel="twilio", metadata={"server": server})
    started = datetime.now(UTC)
    for index in range(turns):
        at = started + timedelta(seconds=index)
        call_log.log_turn(call_id, role="caller" if index % 2 else "agent", text="…", started_at=at, ended_at=at)
    return call_id


def test_a_restarted_server_closes_the_calls_it_left_open_and_no_others(tmp_path, db):
    settings = Settings(home=tmp_path, today="2026-11-26", database_url=db.engine.url.render_as_string(False),
                        llm_model="none", registry_poll_s=0, server_id="front-1")  # fmt: skip
    runtime = AgentRuntime(settings, llm=None, db=db)
    booked = asyncio.run(say_lines(runtime, BOOKING_CALL)).call_id  # a finished call that booked a room
    bookings_before = runtime.tools.list_bookings()
    killed_mid_call = open_call(runtime.call_log, "front-1", turns=3)
    no_turn_yet = open_call(runtime.call_log, "front-1", turns=0)
    elsewhere = open_call(runtime.call_log, "front-2", turns=2)  # another worker's call, still going on

    with serving(create_app(settings, runtime=runtime, models=StubSpeech())):
        pass  # start-up is what matters

    summary = runtime.call_log.call_summary
    last_turn = runtime.call_log.transcript(killed_mid_call)[-1].ended_at
    assert (summary(killed_mid_call).end_reason, summary(killed_mid_call).ended_at) == ("interrupted", last_turn)
    assert summary(no_turn_yet).end_reason == "interrupted"
    assert summary(no_turn_yet).ended_at == summary(no_turn_yet).started_at
    assert summary(elsewhere).ended_at is None and summary(elsewhere).end_reason is None
    assert summary(booked).end_reason == "completed"
    assert runtime.tools.list_bookings() == bookings_before
    # the agent's own calls carry the server's name, so the next restart can find them
    assert summary(booked).meta["server"] == "front-1"


# Nothing listens on port 1: every connection is refused at once, as with a database server that is down.
DOWN = "postgresql+psycopg://innkeeper@127.0.0.1:1/innkeeper"


def test_a_call_while_the_database_is_down_is_answered_and_written_when_it_is_back(tmp_path, db):
    settings = Settings(home=tmp_path, today="2026-11-26", database_url=db.engine.url.render_as_string(False),
                        llm_model="none", registry_poll_s=0)  # fmt: skip
    runtime = AgentRuntime(settings, llm=None, db=db)
    down = CallLog(Database(DOWN))

    async def call() -> tuple[str, list[str]]:
        convo = runtime.new_conversation(caller_number="+12075550100")
        convo.call_log = down  # the call log's database goes away before the call starts
        replies = [await convo.greet()]
        for line in ("Do you have parking?", "Thanks, that's all."):
            replies.append(await convo.reply(line))
        await convo.close()
        return convo.planned_call_id, replies

    call_id, replies = asyncio.run(call())

    assert all(replies) and "parking" in replies[1].lower()  # the caller was answered throughout
    [kept] = runtime.backlog.pending()
    assert kept.name == f"{call_id}.json"
    assert runtime.call_log.search(text="parking") == []  # nothing reached the database

    assert runtime.backlog.drain() == 1  # the database answers again
    assert runtime.backlog.pending() == []
    turns = runtime.call_log.transcript(call_id)
    assert [t.role for t in turns] == ["agent", "caller", "agent", "caller", "agent"]
    assert [t.text for t in turns if t.role == "agent"] == replies
    summary = runtime.call_log.call_summary(call_id)
    assert summary.end_reason == "completed" and summary.caller_number == "+12075550100"
    assert summary.meta["server"] == settings.server_id


def test_a_backlog_restore_adds_only_missing_turns_and_survives_a_restart(tmp_path, db):
    settings = Settings(home=tmp_path, today="2026-11-26", database_url=db.engine.url.render_as_string(False),
                        llm_model="none", registry_poll_s=0)  # fmt: skip
    runtime = AgentRuntime(settings, llm=None, db=db)
    # the database took the call's first two turns, then went away until after the call ended
    call_id = open_call(runtime.call_log, settings.server_id, turns=2)
    stored = runtime.call_log.transcript(call_id)
    now = datetime.now(UTC)
    later = [("caller", "A room for two nights, please.", now), ("agent", "For which dates?", now)]
    unsaved = UnsavedCall(call_id=call_id, channel="twilio", caller_number=None, model_version="template",
                          meta={}, started_at=stored[0].started_at, ended_at=now, end_reason="hangup",
                          turns=[])  # fmt: skip
    overlap = [UnsavedTurn(t.role, t.text, t.started_at, t.ended_at) for t in stored[1:]]
    unsaved.turns = overlap + [UnsavedTurn(role, text, at, at) for role, text, at in later]
    CallBacklog(settings.home / "backlog", runtime.call_log).keep(unsaved)
    (settings.home / "backlog" / "garbled.json").write_text("{not json")

    with serving(create_app(settings, runtime=runtime, models=StubSpeech())):
        pass  # start-up writes the backlog, before it marks its open calls interrupted

    turns = runtime.call_log.transcript(call_id)
    assert [t.text for t in turns] == [t.text for t in stored] + [text for _, text, _ in later]
    assert [t.index for t in turns] == [0, 1, 2, 3]
    assert runtime.call_log.call_summary(call_id).end_reason == "hangup"  # how it really ended, not 'interrupted'
    assert runtime.backlog.pending() == [] and (settings.home / "backlog" / "garbled.bad").exists()
    assert runtime.call_log.restore(unsaved) == 0  # a second restore (a crash before the file was deleted) adds nothing


# ------------------------------------------------------------------------------------------ recording faults


def full_disk_recorder(directory: Path, call_id: str = "full", **rates: int) -> CallRecorder:
    """A recorder whose two leg files are /dev/full: every write that reaches the disk fails with ENOSPC."""
    directory.mkdir(parents=True, exist_ok=True)
    for leg in ("caller", "agent"):
        path = directory / f"{call_id}-{leg}.wav"
        path.unlink(missing_ok=True)
        path.symlink_to("/dev/full")
    return CallRecorder(directory, call_id, **rates)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to fill the disk for real")
def test_a_full_disk_stops_the_recording_not_the_call(tmp_path):
    recorder = full_disk_recorder(tmp_path, caller_rate=8000, agent_rate=8000)
    second = np.zeros(8000, dtype=np.int16)
    for at in range(5):  # five seconds of each leg: far past the file buffer, so the disk is reached
        recorder.caller(second)
        recorder.agent(second, at=float(at))
    recorder.close()
    assert set(recorder.errors) == {"caller", "agent"} and not recorder.complete
    assert all("No space left" in why for why in recorder.errors.values()), recorder.errors


def test_a_recording_directory_that_cannot_be_made_records_nothing_and_raises_nothing(tmp_path):
    in_the_way = tmp_path / "calls"
    in_the_way.write_text("a file where the directory should be")
    recorder = CallRecorder(in_the_way, "c1", caller_rate=8000, agent_rate=8000)
    recorder.caller(np.zeros(160, dtype=np.int16))
    recorder.agent(np.zeros(160, dtype=np.int16), at=0.5)
    recorder.close()
    assert set(recorder.errors) == {"caller", "agent"} and in_the_way.read_text().startswith("a file")
