"""Admission control: beyond `INNKEEPER_MAX_CALLS`, or `INNKEEPER_CALLS_PER_SOURCE_PER_MINUTE` from one caller
number or address, a new call gets a clear, polite answer — never a stalled line — and the calls in progress
go on; a freed line takes the next call.

Plain protocol: an `error` that says the lines are busy, then close code 1013 (try again later). Twilio: the
webhook answers with TwiML that says so and dials the front desk (or hangs up when none is configured).
"""

from __future__ import annotations

import json
import time
import urllib.request
from urllib.parse import urlencode

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from innkeeper.core.settings import Settings
from innkeeper.serve.app import create_app
from innkeeper.serve.runtime import AgentRuntime
from tests.conftest import serving

pytestmark = pytest.mark.real_model
FRONT_DESK = "+12075550100"


@pytest.fixture(scope="module")
def speech_models():
    from innkeeper.serve.speech import load_speech_models

    return load_speech_models(Settings(partial_transcripts_ms=None))


@pytest.fixture
def one_line_server(tmp_path, sqlite_db, speech_models):
    settings = Settings(home=tmp_path, today="2026-11-26", database_url=sqlite_db.engine.url.render_as_string(False),
                        llm_model="none", max_calls=1, front_desk_number=FRONT_DESK)  # fmt: skip
    app = create_app(settings, runtime=AgentRuntime(settings, llm=None, db=sqlite_db), models=speech_models)
    with serving(app) as host:
        yield host, app


def start(ws) -> dict:
    ws.send(json.dumps({"type": "start", "caller": "test"}))
    while True:  # the greeting's audio may come first: skip binary frames
        message = ws.recv(timeout=30)
        if isinstance(message, str):
            return json.loads(message)


def webhook(host: str, caller: str = "+14155550100") -> str:
    body = urlencode({"From": caller, "To": "+12075550000", "CallSid": "CA1"}).encode()
    request = urllib.request.Request(f"http://{host}/twilio/voice", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def test_a_call_beyond_the_limit_is_told_the_lines_are_busy_and_the_call_in_progress_goes_on(one_line_server):
    host, app = one_line_server
    services = app.state.services
    with connect(f"ws://{host}/ws/call", open_timeout=10) as first:
        assert start(first)["type"] == "ready"
        with connect(f"ws://{host}/ws/call", open_timeout=10) as second:
            refused = start(second)
            assert refused["type"] == "error" and "lines are busy" in refused["message"]
            with pytest.raises(ConnectionClosed):
                second.recv(timeout=10)
            assert second.close_code == 1013
        # a phone call now: said politely, then handed to the front desk
        busy = webhook(host)
        assert "<Say>All our lines are busy" in busy and f"<Dial>{FRONT_DESK}</Dial>" in busy
        assert "<Connect>" not in busy
        assert len(services.active) == 1  # the call in progress was never touched
        first.send(json.dumps({"type": "stop"}))
    deadline = time.monotonic() + 20
    while services.active and time.monotonic() < deadline:
        time.sleep(0.1)
    # the line is free again: the next call is taken, and its TwiML hands a transfer to the front desk
    answer = webhook(host)
    assert "<Connect><Stream" in answer and answer.index("</Connect>") < answer.index(f"<Dial>{FRONT_DESK}</Dial>")
    with connect(f"ws://{host}/ws/call", open_timeout=10) as third:
        assert start(third)["type"] == "ready"
        third.send(json.dumps({"type": "stop"}))
    metrics = urllib.request.urlopen(f"http://{host}/metrics", timeout=10).read().decode()
    assert 'innkeeper_calls_refused_total{reason="busy"} 2.0' in metrics


def test_without_a_front_desk_a_busy_phone_call_hears_why_and_is_hung_up():
    from telephony.twilio_protocol import twiml_busy

    twiml = twiml_busy("All our lines are busy.")
    assert "<Say>All our lines are busy.</Say><Hangup />" in twiml and "<Dial" not in twiml


@pytest.fixture
def rate_limited_server(tmp_path, sqlite_db, speech_models):
    settings = Settings(home=tmp_path, today="2026-11-26", database_url=sqlite_db.engine.url.render_as_string(False),
                        llm_model="none", max_calls=0, calls_per_source_per_minute=2)  # fmt: skip
    app = create_app(settings, runtime=AgentRuntime(settings, llm=None, db=sqlite_db), models=speech_models)
    with serving(app) as host:
        yield host


def test_more_calls_a_minute_from_one_source_are_refused_politely(rate_limited_server):
    host = rate_limited_server
    for _ in range(2):
        with connect(f"ws://{host}/ws/call", open_timeout=10) as ws:
            assert start(ws)["type"] == "ready"
            ws.send(json.dumps({"type": "stop"}))
    with connect(f"ws://{host}/ws/call", open_timeout=10) as ws:
        refused = start(ws)
        assert refused["type"] == "error" and "many calls from you" in refused["message"]
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == 1013
    # phone calls count per caller number: the third from one number is refused, another number is not
    answers = [webhook(host) for _ in range(3)]
    assert ["<Connect>" in a for a in answers] == [True, True, False] and "many calls from you" in answers[2]
    assert "<Connect>" in webhook(host, caller="+14155550111")


def test_a_sliding_window_counts_per_key_and_forgets_old_events():
    from innkeeper.serve.limits import SlidingWindow

    window = SlidingWindow(2, window_s=0.2)
    assert window.allow("a") and window.allow("a") and not window.allow("a") and window.allow("b")
    assert window.retry_after_s("a") >= 1
    time.sleep(0.25)
    assert window.allow("a")  # the old ones left the window
    unlimited = SlidingWindow(0, window_s=60)
    assert all(unlimited.allow("a") for _ in range(1000))
