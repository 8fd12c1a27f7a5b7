"""Faults a hotel's line must survive. A server killed mid-call: when it starts again, the calls it had open
are recorded as ended ('interrupted', at their last logged turn) — nothing is left half-open — while calls
another server is still taking are left alone, and every booking stays as it was.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from agent.call.calllog import CallLog
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
