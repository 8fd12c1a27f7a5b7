"""Fuzzed input: whatever arrives, the parsers answer with a message or a `ProtocolError` (never another
exception), a live server keeps answering (a real call works after thousands of garbage frames on both call
websockets), and the dashboard's forms answer 4xx for nonsense, never 500.

Parsers are fuzzed with Hypothesis, both with arbitrary bytes and with well-formed JSON carrying each
protocol's real tags and random field values (so the fuzzing reaches the field validation, not only the
JSON decoder).
"""

from __future__ import annotations

import base64
import contextlib
import json
import random

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from telephony import plain_protocol, twilio_protocol
from tests.test_dashboard import dashboard, sign_in  # noqa: F401 — the dashboard fixture, used by name

JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40))
JSON_VALUES = st.recursive(
    JSON_LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
)
FIELD_NAMES = ["streamSid", "start", "media", "mark", "dtmf", "stop", "payload", "track", "chunk", "timestamp",
               "callSid", "customParameters", "name", "digit", "caller", "sample_rate", "played_ms"]  # fmt: skip


def tagged(tag: str, tags: list[str]) -> st.SearchStrategy[str]:
    """JSON objects with a known (or random) tag and random values under the protocols' own field names."""
    fields = st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), JSON_VALUES, max_size=6)
    return st.builds(
        lambda kind, body: json.dumps({**body, tag: kind}), st.sampled_from(tags) | st.text(max_size=8), fields
    )


TWILIO_INPUT = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300),
    tagged("event", ["connected", "start", "media", "mark", "dtmf", "stop"]),
)
PLAIN_INPUT = st.one_of(
    st.text(max_size=300), st.binary(max_size=300), tagged("type", ["start", "playback", "dtmf", "stop"])
)
FUZZ_SETTINGS = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ_SETTINGS
@given(TWILIO_INPUT)
def test_twilio_messages_parse_or_raise_a_protocol_error(text):
    try:
        message = twilio_protocol.parse_inbound(text)
    except twilio_protocol.ProtocolError:
        return
    assert message.event in ("connected", "start", "media", "mark", "dtmf", "stop")
    if message.event == "media":
        with contextlib.suppress(twilio_protocol.ProtocolError):
            twilio_protocol.media_payload_to_pcm16(message.media.payload)


@FUZZ_SETTINGS
@given(PLAIN_INPUT)
def test_plain_messages_parse_or_raise_a_protocol_error(text):
    try:
        message = plain_protocol.parse_client_message(text)
    except plain_protocol.ProtocolError:
        return
    assert message.type in ("start", "playback", "dtmf", "stop")


@FUZZ_SETTINGS
@given(st.binary(max_size=2000))
def test_audio_frames_decode_or_raise_a_protocol_error(data):
    try:
        pcm = plain_protocol.parse_client_audio(data)
    except plain_protocol.ProtocolError:
        assert len(data) % 2 == 1  # the only malformed small frame: half a sample
        return
    assert len(pcm) == len(data) // 2


@FUZZ_SETTINGS
@given(st.text(max_size=200) | st.binary(max_size=150).map(lambda b: base64.b64encode(b).decode()))
def test_twilio_media_payloads_decode_or_raise_a_protocol_error(payload):
    try:
        pcm = twilio_protocol.media_payload_to_pcm16(payload)
    except twilio_protocol.ProtocolError:
        return
    assert pcm.dtype.name == "int16"


# ---------------------------------------------------------------- a live server


def garbage_frames(rng: random.Random, n: int, tags: list[str], tag: str) -> list[str | bytes]:
    """A seeded mix of what a broken or hostile client sends: random text, JSON with real tags and junk fields,
    media before start, bad base64, odd-length and random binary."""
    frames: list[str | bytes] = []
    for _ in range(n):
        kind = rng.randrange(6)
        if kind == 0:
            frames.append("".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(1, 80))))
        elif kind == 1:
            frames.append(json.dumps({tag: rng.choice(tags), "x": rng.random(), "media": {"payload": "%%%"}}))
        elif kind == 2:
            frames.append(json.dumps({tag: rng.choice(tags), "mark": {"name": None}, "played_ms": -5}))
        elif kind == 3:
            frames.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))) + b"\x00")
        elif kind == 4:
            frames.append(json.dumps([1, 2, {tag: None}]))
        else:
            frames.append(bytes(rng.randrange(256) for _ in range(2 * rng.randrange(1, 40) + 1)))  # odd length
    return frames


@pytest.mark.real_model
def test_a_live_server_survives_thousands_of_garbage_frames_and_then_takes_a_real_call(tmp_path, sqlite_db):
    from innkeeper.core.settings import Settings
    from innkeeper.serve.app import create_app
    from innkeeper.serve.runtime import AgentRuntime
    from innkeeper.serve.speech import load_speech_models
    from tests.conftest import serving

    settings = Settings(home=tmp_path, today="2026-11-26", database_url=sqlite_db.engine.url.render_as_string(False),
                        llm_model="none", partial_transcripts_ms=None)  # fmt: skip
    app = create_app(
        settings, runtime=AgentRuntime(settings, llm=None, db=sqlite_db), models=load_speech_models(settings)
    )
    rng = random.Random(7)
    with serving(app) as host:
        # (a start or stop with junk fields is a valid message by design: unknown fields are ignored)
        plain_garbage = garbage_frames(rng, 2000, ["playback", "dtmf", "hello"], "type")
        with connect(f"ws://{host}/ws/call", open_timeout=10) as ws:
            for frame in plain_garbage:
                ws.send(frame)
            ws.send(json.dumps({"type": "start", "caller": "after the fuzz"}))
            replies = [json.loads(m) for m in _text_until_ready(ws, limit=len(plain_garbage) + 10)]
        twilio_garbage = garbage_frames(rng, 2000, ["connected", "media", "mark", "dtmf", "start"], "event")
        with connect(f"ws://{host}/twilio/stream", open_timeout=10) as ws:
            for frame in twilio_garbage:
                ws.send(frame)
        health = requests.get(f"http://{host}/healthz", timeout=10).json()
    # every bad frame was answered with an error (an unknown type is only logged: newer clients may send
    # types this server does not know), and the same socket then started a call
    unknown = sum(isinstance(f, str) and f.startswith('{"type": "hello"') for f in plain_garbage)
    assert replies[-1]["type"] == "ready" and unknown > 0
    assert sum(r["type"] == "error" for r in replies) == len(plain_garbage) - unknown
    assert health["status"] == "ok" and health["rejected_messages"] >= 2 * len(plain_garbage)


def _text_until_ready(ws, *, limit: int) -> list[str]:
    texts = []
    while len(texts) < limit:
        message = ws.recv(timeout=30)
        if isinstance(message, str):
            texts.append(message)
            if json.loads(message).get("type") == "ready":
                break
    return texts


# ---------------------------------------------------------------- the dashboard's forms


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    form=st.dictionaries(
        st.sampled_from(["intents", "slot_nights", "slot_adults", "slot_check_in", "questions", "reply", "note"])
        | st.text(max_size=12),
        st.text(max_size=120) | st.sampled_from(["-1", "0", "99999", "book", "' OR 1=1 --", "<script>x</script>"]),
        max_size=6,
    ),
    turn=st.integers(min_value=-3, max_value=40),
)
def test_nonsense_in_the_correction_form_is_refused_never_a_server_error(dashboard, form, turn):  # noqa: F811
    session, csrf = _operator(dashboard)
    answer = session.post(
        f"{dashboard.url}/calls/{dashboard.call}/turns/{turn}/correction",
        data={**form, "csrf_token": csrf},
        allow_redirects=False,
    )
    assert answer.status_code in (303, 404, 422), (answer.status_code, answer.text[:200])
    assert "Traceback" not in answer.text and "/work/" not in answer.text


_SESSIONS: dict[str, tuple[requests.Session, str]] = {}


def _operator(server) -> tuple[requests.Session, str]:
    """One sign-in per server (the fuzzed test runs many examples against the same one)."""
    if server.url not in _SESSIONS:
        _SESSIONS[server.url] = sign_in(server, "oscar")
    return _SESSIONS[server.url]
