"""Voice calls against a live server: real uvicorn, real websockets, the bundled Whisper, Piper and Silero.

The LLM is off (template wording): these tests are about the call loop, not the phrasing. Each test
places calls over the wire exactly as Twilio or a browser would, and checks the database afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
import threading
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import websockets
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from agent.call.voice_config import SpeechModels
from agent.dialogue.read_ahead import ReadAhead
from innkeeper.core.settings import Settings
from innkeeper.serve.app import create_app
from innkeeper.serve.runtime import AgentRuntime
from innkeeper.serve.speech import load_speech_models
from innkeeper.simulation.caller_lines import CallerLine, lines_from_text
from innkeeper.simulation.voice_caller import place_call
from telephony import plain_protocol
from telephony.codec import pcm16_to_bytes
from telephony.resample import resample
from telephony.twilio_protocol import stream_token

from .conftest import serving

pytestmark = pytest.mark.real_model

AUTH_TOKEN = "test-auth-token"
BOOKING = (
    "I'd like to book the Deluxe King for two nights starting December seventh for two adults.",
    "My name is John Smith.",
    "Six one seven, five five five, zero one two three.",
    "Yes, please book it.",
    "No, that's all, thanks.",
)


@dataclass
class LiveServer:
    http: str
    ws: str
    runtime: AgentRuntime
    app: object

    def services(self):
        return self.app.state.services


ADMIN_TOKEN = "call-records-token"


@pytest.fixture(scope="module")
def speech_models() -> SpeechModels:
    return load_speech_models(Settings(partial_transcripts_ms=None, endpoint_silence_ms=640))


@pytest.fixture(scope="module")
def live_server(tmp_path_factory, speech_models) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("voice-home")
    settings = Settings(
        home=home, today="2026-11-26", twilio_auth_token=AUTH_TOKEN, llm_model="none", admin_token=ADMIN_TOKEN
    )
    runtime = AgentRuntime.from_settings(settings, use_llm=False)
    app = create_app(settings, runtime=runtime, models=speech_models)
    with serving(app) as host:
        yield LiveServer(f"http://{host}", f"ws://{host}", runtime, app)


@pytest.fixture(scope="module")
def synthesizer(caller_voice):
    return caller_voice


def _get(url: str, token: str | None = ADMIN_TOKEN) -> dict:
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _record(server: LiveServer, call_id: str) -> dict:
    return _get(f"{server.http}/api/calls/{call_id}")


def _wait_idle(server: LiveServer, timeout: float = 20.0, max_tasks: int | None = None) -> dict:
    """Health once no call is active (and, if given, at most `max_tasks` tasks run), or at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        health = _get(f"{server.http}/healthz")
        settled = health["calls_active"] == 0 and (max_tasks is None or health["tasks"] <= max_tasks)
        if settled or time.monotonic() > deadline:
            return health
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------ a booking call


def test_twilio_call_books_a_room_and_records_both_legs(live_server, synthesizer, tmp_path):
    lines = lines_from_text(BOOKING, synthesizer)
    codes_before = {b.code for b in live_server.runtime.tools.list_bookings()}
    report = asyncio.run(
        place_call(
            f"{live_server.ws}/twilio/stream",
            lines,
            protocol="twilio",
            record_dir=tmp_path,
            twilio_auth_token=AUTH_TOKEN,
        )
    )
    assert all(turn.answered for turn in report.turns), [(t.text, t.answered) for t in report.turns]
    record = _get(f"{live_server.http}/api/calls?call_sid={report.call_id}")
    transcript = "\n".join(f"{t['role']}: {t['text']} {t.get('latencies') or ''}" for t in record["turns"])
    transcript += "\ncaller's view: " + repr([(t.text, t.answered, t.v2v_ms) for t in report.turns])
    made = [b for b in live_server.runtime.tools.list_bookings() if b.code not in codes_before]
    assert len(made) == 1, f"bookings made: {made}\n{transcript}"
    booking = made[0]
    # Whisper may spell a surname it hears once in a sentence another way ("Smyth"); the caller hears it read back.
    assert booking.last_name.lower().startswith("sm"), f"{booking}\n{transcript}"
    assert (str(booking.check_in), str(booking.check_out), booking.room_type) == ("2026-12-07", "2026-12-09", "deluxe")

    call = record["call"]
    assert call["channel"] == "twilio" and call["end_reason"] in {"completed", "hangup"}
    for leg in ("caller_audio_path", "agent_audio_path"):
        with wave.open(call[leg]) as wav:
            assert wav.getnframes() / wav.getframerate() > 10.0  # the whole call, not a fragment
    agent_turns = [t for t in record["turns"] if t["role"] == "agent" and t["latencies"]]
    timed = [t["latencies"] for t in agent_turns if "v2v_server_ms" in t["latencies"]]
    assert len(timed) >= len(BOOKING) - 1
    for latencies in timed:
        for stage in ("endpoint_ms", "asr_wait_ms", "decide_ms", "tts_first_ms", "first_audio_sent_ms"):
            assert stage in latencies
        assert latencies["first_audio_sent_ms"] >= latencies["tts_first_ms"] >= latencies["endpoint_ms"]
    # The caller heard the code (said again if a barge-in cut the confirmation before it).
    heard = [t["text"] for t in record["turns"] if t["role"] == "agent" and booking.code in t["text"].replace("-", "")]
    assert heard, "\n".join(f"{r}: {t}" for r, t in transcript)


# ------------------------------------------------------------------------------------------ barge-in


def test_barge_in_clears_within_a_frame_and_logs_only_heard_words(live_server, synthesizer):
    # The reply to a vague first line is long (the room list); the caller talks over it after 1.5 s.
    lines = lines_from_text(["I need a room for two nights starting December seventh.", "Two adults."], synthesizer)
    interrupt = lines_from_text(["Sorry, what was the price of the suite again?"], synthesizer)[0]
    lines.append(CallerLine(interrupt.audio, interrupt.rate, interrupt.text, start_after_agent_audio_ms=1500))
    # A patient caller (3 s of quiet before the next line or hanging up): on a busy machine a reply can
    # stall between sentences, and the barge-in's answer can take seconds.
    call = place_call(
        f"{live_server.ws}/twilio/stream", lines, protocol="twilio", gap_after_reply_s=3.0, twilio_auth_token=AUTH_TOKEN
    )
    report = asyncio.run(call)
    assert report.clears, "no clear was sent"
    call_id = live_server.runtime.call_log.find_call("call_sid", report.call_id)
    record = _record(live_server, call_id)
    transcript = [(t["role"], t["text"]) for t in record["turns"]]
    events = [e for e in record["call"]["meta"]["voice_events"] if e["event"] == "barge_in"]
    assert events and all(e["clear_sent_at"] - e["decided_at"] <= 0.020 for e in events if e["clear_sent_at"] > 0)
    interrupted = [t for t in record["turns"] if t["role"] == "agent" and (t["latencies"] or {}).get("interrupted")]
    assert interrupted, transcript
    turn = interrupted[0]  # the room list the caller talked over; a later reply may be cut by the caller too
    heard, generated = len(turn["text"].split()), turn["latencies"]["generated_words"]
    assert 0 < heard < generated, (turn["text"], generated)
    # The caller's words after the barge-in became their own turn and got an answer.
    after = record["turns"][record["turns"].index(turn) + 1 :]
    asked = [t for t in after if t["role"] == "caller" and re.search(r"\b(price|suite)\b", t["text"].lower())]
    assert asked, transcript
    assert any(t["role"] == "agent" for t in after[after.index(asked[0]) :]), transcript


def test_backchannel_does_not_interrupt(live_server, synthesizer):
    lines = lines_from_text(["I need a room for two nights starting December seventh.", "Two adults."], synthesizer)
    murmur = lines_from_text(["Okay."], synthesizer)[0]  # Piper spells "mhm" out as letters
    lines.append(CallerLine(murmur.audio, murmur.rate, murmur.text, start_after_agent_audio_ms=1500))
    report = asyncio.run(
        place_call(f"{live_server.ws}/twilio/stream", lines, protocol="twilio", twilio_auth_token=AUTH_TOKEN)
    )
    call_id = live_server.runtime.call_log.find_call("call_sid", report.call_id)
    record = _record(live_server, call_id)
    turns = record["turns"]
    assert not report.clears, (record["call"]["meta"].get("voice_events"), [(t["role"], t["text"]) for t in turns])
    assert not any((t["latencies"] or {}).get("interrupted") for t in turns if t["role"] == "agent")
    # Not asserted: whether the murmur is also logged as a caller turn of its own. Under CI load it sometimes
    # is (seen once in a fresh-clone run, not reproduced; the agent was not interrupted) — an open question
    # about the backchannel filter, noted in the issue, not something this test can settle by timing.


def test_dtmf_zero_hands_the_call_to_a_person(live_server):
    async def call() -> tuple[str, list[dict]]:
        async with connect(f"{live_server.ws}/ws/call") as ws:
            await ws.send(json.dumps({"type": "start", "caller": "dtmf-test"}))
            ready = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "dtmf", "digit": "0"}))
            messages = []
            async for message in ws:  # the server closes the call after the hand-off line
                if isinstance(message, str):
                    messages.append(json.loads(message))
                    if messages[-1]["type"] == "agent_audio_end":
                        mark = messages[-1]["mark"]
                        await ws.send(json.dumps({"type": "playback", "mark": mark, "played_ms": 0}))
            return ready["call_id"], messages

    call_id, messages = asyncio.run(asyncio.wait_for(call(), 60))
    assert any(m["type"] == "transfer" for m in messages)
    record = _record(live_server, call_id)
    assert record["call"]["end_reason"] == "transfer"
    assert "pressed 0" in record["call"]["meta"]["handoff"]["reason"]


# ------------------------------------------------------------------------------------------ bad input


def _twilio_start(stream_sid: str = "MZtest", call_sid: str = "CAbad") -> str:
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": stream_sid,
            "start": {
                "streamSid": stream_sid,
                "accountSid": "ACtest",
                "callSid": call_sid,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                # the token this server's signed webhook gives the call (AUTH_TOKEN is configured)
                "customParameters": {"caller": "+15555550199", "token": stream_token(AUTH_TOKEN, call_sid)},
            },
        }
    )


def _media(stream_sid: str, payload: str, chunk: int = 1) -> str:
    media = {"track": "inbound", "chunk": str(chunk), "timestamp": str(chunk * 20), "payload": payload}
    return json.dumps({"event": "media", "sequenceNumber": str(chunk + 1), "streamSid": stream_sid, "media": media})


async def _twilio_survives_bad_messages(server: LiveServer) -> int:
    """Bad messages first, then a proper start: the greeting must still come back as media."""
    silence = base64.b64encode(bytes([0xFF]) * 160).decode()
    async with connect(f"{server.ws}/twilio/stream") as ws:
        await ws.send(_media("MZx", silence))  # media before start
        await ws.send("{not json")
        await ws.send(json.dumps({"event": "teleport", "streamSid": "MZx"}))  # unknown event
        await ws.send(b"\x00\x01binary")  # binary frame on the Twilio route
        await ws.send(_twilio_start("MZx", "CAsurvivor"))
        await ws.send(_media("MZx", "%%%not-base64%%%", 2))
        await ws.send(json.dumps({"event": "media", "streamSid": "MZx"}))  # missing media
        media = 0
        deadline = time.monotonic() + 20
        while media < 10 and time.monotonic() < deadline:
            message = json.loads(await asyncio.wait_for(ws.recv(), 20))
            media += message["event"] == "media"
        await ws.send(json.dumps({"event": "stop", "streamSid": "MZx", "stop": {"accountSid": "AC", "callSid": "CA"}}))
        return media


async def _oversized_closes_with_1009(url: str, payload: str | bytes) -> int | None:
    async with connect(url, max_size=None) as ws:
        if url.endswith("/ws/call"):
            await ws.send(json.dumps({"type": "start"}))
        await ws.send(payload)
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 20)
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None


async def _plain_errors(server: LiveServer) -> list[str]:
    async with connect(f"{server.ws}/ws/call") as ws:
        await ws.send(json.dumps({"type": "playback", "mark": "a1", "played_ms": 5}))  # before start
        await ws.send(json.dumps({"type": "start"}))
        await ws.send("[1, 2")  # invalid JSON
        await ws.send(b"\x01\x02\x03")  # odd-length audio
        await ws.send(json.dumps({"type": "playback", "mark": "a1", "played_ms": -3}))  # invalid field
        await ws.send(json.dumps({"type": "hologram"}))  # unknown type: ignored, no error
        errors: list[str] = []
        deadline = time.monotonic() + 10
        while len(errors) < 4 and time.monotonic() < deadline:
            message = await asyncio.wait_for(ws.recv(), 10)
            if isinstance(message, str) and json.loads(message)["type"] == "error":
                errors.append(json.loads(message)["message"])
        await ws.send(json.dumps({"type": "stop"}))
        return errors


async def _plain_call_past_the_greeting(url: str, caller: str):
    """A plain-websocket call that has heard the greeting out (so the caller's words are a turn, not a barge-in)."""
    ws = await connect(url)
    await ws.send(json.dumps({"type": "start", "caller": caller}))
    ready = json.loads(await ws.recv())
    while True:
        message = await asyncio.wait_for(ws.recv(), 20)
        if isinstance(message, str) and json.loads(message)["type"] == "agent_audio_end":
            await ws.send(json.dumps({"type": "playback", "mark": json.loads(message)["mark"], "played_ms": 1}))
            return ws, ready["call_id"]


async def _stream_in_real_time(ws, audio16k: np.ndarray) -> None:
    start = time.monotonic()
    for i, offset in enumerate(range(0, len(audio16k), 320)):
        await ws.send(pcm16_to_bytes(audio16k[offset : offset + 320]))
        await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - time.monotonic()))


async def _disconnect_mid_utterance(server: LiveServer, audio16k: np.ndarray) -> str:
    ws, call_id = await _plain_call_past_the_greeting(f"{server.ws}/ws/call", "abrupt")
    await _stream_in_real_time(ws, audio16k[: len(audio16k) * 2 // 3])  # the caller is cut off mid-sentence
    ws.transport.abort()  # no close frame: the line just drops
    return call_id


class _SlowRecognizer:
    """The bundled recogniser on a machine so busy that each transcription takes `delay_s` longer."""

    def __init__(self, recognizer, delay_s: float) -> None:
        self._recognizer, self._delay_s = recognizer, delay_s

    def transcribe(self, audio):
        time.sleep(self._delay_s)
        return self._recognizer.transcribe(audio)

    def __getattr__(self, name):
        return getattr(self._recognizer, name)


async def _say_then_hang_up(url: str, audio16k: np.ndarray, silence_s: float) -> str:
    ws, call_id = await _plain_call_past_the_greeting(url, "quick-goodbye")
    await _stream_in_real_time(ws, np.concatenate([audio16k, np.zeros(int(silence_s * 16000), np.int16)]))
    await ws.close()
    return call_id


def test_a_turn_still_being_recognised_at_hang_up_is_logged(tmp_path, speech_models, synthesizer):
    # The caller finishes a sentence, the endpoint fires, and they hang up while recognition is still
    # running (slow here on purpose): their last words are a turn of the call, not lost with the line.
    spoken, rate = synthesizer.synthesize("Please send me the price list by email.")
    slow = dataclasses.replace(speech_models, recognizer=_SlowRecognizer(speech_models.recognizer, 1.5))
    settings = Settings(home=tmp_path, today="2026-11-26", llm_model="none", admin_token=ADMIN_TOKEN)
    runtime = AgentRuntime.from_settings(settings, use_llm=False)
    app = create_app(settings, runtime=runtime, models=slow)
    with serving(app) as host:
        server = LiveServer(f"http://{host}", f"ws://{host}", runtime, app)
        call_id = asyncio.run(_say_then_hang_up(f"{server.ws}/ws/call", resample(spoken, rate, 16000), silence_s=1.0))
        _wait_idle(server)
        record = _record(server, call_id)
    said = [t for t in record["turns"] if t["role"] == "caller"]
    assert len(said) == 1 and re.search(r"\be-?mail\b", said[0]["text"].lower()), record["turns"]
    assert said[0]["latencies"] == {"cut_by_hangup": 1.0}
    assert record["call"]["end_reason"] == "hangup"


def test_the_model_starts_reading_a_turn_at_the_callers_first_pause(tmp_path, speech_models, synthesizer, monkeypatch):
    # With the model reading turns, its reading starts on the speculative transcript of the first pause — in
    # its own thread, before the silence ends the turn — and the dialogue takes that reading: one per turn.
    readings: list[tuple[str, str, float]] = []

    def reader(self, agent_text, caller_text):
        readings.append((threading.current_thread().name, caller_text, time.monotonic()))
        return None  # the rules read the turn

    monkeypatch.setattr(AgentRuntime, "_read_with_serving_model", reader)
    taken_ahead: list[bool] = []  # per final turn: was its reading the one started at the pause?
    final_reading = ReadAhead.__call__

    def counting(self, agent_text, caller_text):
        hits = self.hits
        action = final_reading(self, agent_text, caller_text)
        taken_ahead.append(self.hits > hits)
        return action

    monkeypatch.setattr(ReadAhead, "__call__", counting)
    settings = Settings(home=tmp_path, today="2026-11-26", llm_model="none", model_understanding=True)
    runtime = AgentRuntime.from_settings(settings, use_llm=False)
    app = create_app(settings, runtime=runtime, models=speech_models)
    lines = lines_from_text(["Do you have parking?", "Thanks, that's all."], synthesizer)
    with serving(app) as host:
        report = asyncio.run(place_call(f"ws://{host}/ws/call", lines, protocol="plain"))
    assert all(turn.answered for turn in report.turns), report.turns
    # every reading ran in the server's model queue, each final turn's reading was the one started at its
    # pause, and each final turn was read once (a pause mid-sentence, "Thanks, ...", adds a guess for the
    # words so far, dropped when they go on)
    assert all(thread.startswith("model-work") for thread, _, _ in readings), readings
    assert taken_ahead and all(taken_ahead), taken_ahead
    [call] = runtime.call_log.search()
    heard = [t.text for t in runtime.call_log.transcript(call.id) if t.role == "caller"]
    assert len(heard) == len(lines) and all([text for _, text, _ in readings].count(h) == 1 for h in heard), (
        heard,
        readings,
    )
    assert "parking" in heard[0].lower()


def test_bad_input_on_a_live_server_leaves_other_calls_unaffected(live_server, synthesizer):
    baseline = _wait_idle(live_server)
    spoken, rate = synthesizer.synthesize("I'd like to book a room for two nights starting December seventh.")
    audio16k = resample(spoken, rate, 16000)

    async def scenario():
        good_lines = lines_from_text(BOOKING[:2], synthesizer)
        good = asyncio.create_task(place_call(f"{live_server.ws}/ws/call", good_lines, protocol="plain"))
        await asyncio.sleep(1.0)
        media = await _twilio_survives_bad_messages(live_server)
        too_big_twilio = await _oversized_closes_with_1009(f"{live_server.ws}/twilio/stream", "x" * 70_000)
        too_big_plain = await _oversized_closes_with_1009(
            f"{live_server.ws}/ws/call", b"\x00" * (plain_protocol.MAX_BINARY_MESSAGE_BYTES + 2)
        )
        too_big_text = await _oversized_closes_with_1009(f"{live_server.ws}/ws/call", " " * 70_000)
        errors = await _plain_errors(live_server)
        cut_call = await _disconnect_mid_utterance(live_server, audio16k)
        return await good, media, (too_big_twilio, too_big_plain, too_big_text), errors, cut_call

    good, media, closes, errors, cut_call = asyncio.run(asyncio.wait_for(scenario(), 240))
    assert media >= 10, "the Twilio call did not survive the bad messages"
    assert closes == (1009, 1009, 1009)
    assert len(errors) == 4 and any("start" in e for e in errors)
    assert all(turn.answered for turn in good.turns) and not good.server_errors

    health = _wait_idle(live_server, max_tasks=baseline["tasks"])
    assert health["calls_active"] == 0
    assert health["tasks"] <= baseline["tasks"], (health["task_names"], baseline["task_names"])
    record = _record(live_server, cut_call)
    assert record["call"]["end_reason"] == "hangup"
    fragment = [t for t in record["turns"] if t["role"] == "caller"]
    assert fragment and "room" in fragment[-1]["text"].lower()  # the half-said turn was heard and logged


def test_webhook_signature_is_checked(live_server):
    import urllib.error
    import urllib.parse
    import urllib.request

    url = f"{live_server.http}/twilio/voice"
    form = {"CallSid": "CAsig", "From": "+15555550100", "To": "+15555550111"}
    body = urllib.parse.urlencode(form).encode()

    def post(signature: str | None) -> tuple[int, str]:
        request = urllib.request.Request(url, data=body, method="POST")
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
        if signature:
            request.add_header("X-Twilio-Signature", signature)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, ""

    assert post(None)[0] == 403
    assert post("bm90LWEtc2lnbmF0dXJl")[0] == 403
    status, twiml = post(RequestValidator(AUTH_TOKEN).compute_signature(url, form))
    assert status == 200
    assert "<Connect><Stream" in twiml and "/twilio/stream" in twiml and 'value="+15555550100"' in twiml
    # the stream is bound to this signed webhook: its TwiML carries the call's token
    assert f'name="token" value="{stream_token(AUTH_TOKEN, "CAsig")}"' in twiml


def test_a_media_stream_our_webhook_did_not_open_is_closed_before_any_call(live_server):
    """A stream start without the token (or with another call's) is someone dialling the websocket directly."""
    from websockets.sync.client import connect

    calls_before = len(live_server.runtime.call_log.search(limit=1000))
    for token in (None, "0" * 32, stream_token(AUTH_TOKEN, "CAother")):
        parameters = {"caller": "+15555550100"} | ({"token": token} if token else {})
        start = {"event": "start", "sequenceNumber": "1", "streamSid": "MZx", "start": {
            "accountSid": "ACx", "streamSid": "MZx", "callSid": "CAmine", "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": parameters}}  # fmt: skip
        with connect(f"{live_server.ws}/twilio/stream", open_timeout=10) as ws:
            ws.send(json.dumps(start))
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
            assert ws.close_code == 1008
    assert len(live_server.runtime.call_log.search(limit=1000)) == calls_before


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to fill the disk for real")
def test_a_call_whose_recording_hits_a_full_disk_is_answered_and_its_record_says_so(
    live_server, synthesizer, tmp_path, monkeypatch
):
    from innkeeper.serve import calls
    from tests.test_reliability import full_disk_recorder

    monkeypatch.setattr(
        calls, "CallRecorder", lambda directory, call_id, **rates: full_disk_recorder(tmp_path, **rates)
    )
    lines = lines_from_text(["Do you have parking?", "Thanks, that's all."], synthesizer)
    report = asyncio.run(place_call(f"{live_server.ws}/ws/call", lines, protocol="plain"))
    assert all(turn.answered for turn in report.turns), [(t.text, t.answered) for t in report.turns]
    _wait_idle(live_server)
    call = _record(live_server, report.call_id)["call"]
    assert set(call["meta"]["recording_error"]) == {"caller", "agent"}, call["meta"]
    assert "No space left" in call["meta"]["recording_error"]["caller"]
