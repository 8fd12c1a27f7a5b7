"""Audio plumbing and wire protocols of `telephony/`: codec, resampling, framing, Twilio and plain websocket."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from twilio.request_validator import RequestValidator

from telephony import plain_protocol as plain
from telephony import twilio_protocol as tw
from telephony.codec import (
    MULAW_CLIP,
    float32_to_pcm16,
    mulaw_decode,
    mulaw_encode,
    pcm16_from_bytes,
    pcm16_to_bytes,
    pcm16_to_float32,
)
from telephony.framing import Framer, frame_samples, frames_of
from telephony.resample import StreamResampler, resample

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
ALL_CODES = np.arange(256, dtype=np.uint8)


def tone(freq: float, rate: int, seconds: float = 0.5, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio.astype(np.float64) * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[np.argmax(spectrum)])


# --- codec ----------------------------------------------------------------------------------------------


def mulaw_step(codes: np.ndarray) -> np.ndarray:
    """Width of the quantisation interval of each code: 2 ** (exponent + 3)."""
    exponent = ((~codes.astype(np.int32) & 0xFF) >> 4) & 0x07
    return 2 ** (exponent + 3)


def test_mulaw_error_within_half_a_step_for_every_int16():
    codes = mulaw_encode(ALL_INT16)
    error = np.abs(mulaw_decode(codes).astype(np.int32) - ALL_INT16)
    inside = np.abs(ALL_INT16.astype(np.int32)) <= MULAW_CLIP
    # The decoder returns the middle of the interval: half a step inside the range, under a step when clipped.
    assert np.all(error[inside] <= mulaw_step(codes[inside]) // 2)
    assert np.all(error <= mulaw_step(codes))


def test_mulaw_reference_values():
    assert mulaw_encode(np.array([0, 1, -1, 32767, -32768], np.int16)).tolist() == [0xFF, 0xFF, 0x7F, 0x80, 0x00]
    assert mulaw_decode(bytes([0xFF, 0x7F, 0x80, 0x00, 0xFE, 0x7E])).tolist() == [0, 0, 32124, -32124, 8, -8]


def test_mulaw_decode_then_encode_is_exact_for_every_code():
    again = mulaw_encode(mulaw_decode(ALL_CODES))
    # 0x7F is "negative zero": it decodes to 0, which G.711 encodes as positive zero 0xFF.
    assert again[0x7F] == 0xFF
    others = ALL_CODES != 0x7F
    assert np.array_equal(again[others], ALL_CODES[others])


def test_mulaw_is_monotonic_and_symmetric():
    decoded = mulaw_decode(mulaw_encode(ALL_INT16)).astype(np.int32)
    assert np.all(np.diff(decoded) >= 0)
    positive = np.arange(1, 32768, dtype=np.int16)
    assert np.array_equal(mulaw_decode(mulaw_encode(-positive)), -mulaw_decode(mulaw_encode(positive)))


def test_codec_input_types():
    assert mulaw_encode(np.array([40000, -40000], np.int32)).tolist() == [0x80, 0x00]  # clipped, not wrapped
    with pytest.raises(TypeError):
        mulaw_encode(np.zeros(4, np.float32))
    with pytest.raises(TypeError):
        mulaw_decode(np.zeros(4, np.int16))


def test_pcm16_float32_and_bytes():
    assert np.array_equal(float32_to_pcm16(pcm16_to_float32(ALL_INT16)), ALL_INT16)
    assert float32_to_pcm16(np.array([1.5, -1.5, 1.0, -1.0], np.float32)).tolist() == [32767, -32768, 32767, -32768]
    assert pcm16_to_float32(np.array([-32768], np.int16)).dtype == np.float32
    assert pcm16_to_bytes(np.array([1, -2], np.int16)) == b"\x01\x00\xfe\xff"  # little-endian
    assert pcm16_from_bytes(b"\x01\x00\xfe\xff").tolist() == [1, -2]
    with pytest.raises(ValueError, match="even"):
        pcm16_from_bytes(b"\x01\x00\x02")


# --- resampling -----------------------------------------------------------------------------------------


def stream_in_chunks(resampler: StreamResampler, audio: np.ndarray, chunk_ms: int = 20) -> np.ndarray:
    step = resampler.in_rate * chunk_ms // 1000
    out = [resampler.process(audio[i : i + step]) for i in range(0, len(audio), step)]
    out.append(resampler.flush(audio.dtype.type))
    return np.concatenate(out)


@pytest.mark.parametrize(("in_rate", "out_rate"), [(22050, 8000), (8000, 16000), (16000, 8000), (22050, 16000)])
def test_streaming_matches_one_shot(in_rate, out_rate):
    audio = float32_to_pcm16(tone(440, in_rate, 0.37) + tone(1900, in_rate, 0.37, 0.2))
    streamed = stream_in_chunks(StreamResampler(in_rate, out_rate), audio)
    whole = resample(audio, in_rate, out_rate)
    assert streamed.dtype == whole.dtype == np.int16
    assert len(streamed) == len(whole) == round(len(audio) * out_rate / in_rate)
    assert np.abs(streamed.astype(np.int32) - whole).max() <= 2


def test_low_latency_stream_upsamples_in_step_with_input():
    audio = tone(1000, 8000, 0.5)
    resampler = StreamResampler(8000, 16000, low_latency=True)
    outputs = [resampler.process(audio[i : i + 160]) for i in range(0, len(audio), 160)]
    # After warm-up every 20 ms chunk yields exactly 20 ms: no bursts, constant delay.
    assert {len(out) for out in outputs[3:]} == {320}
    streamed = np.concatenate([*outputs, resampler.flush(np.float32)])
    whole = resample(audio, 8000, 16000)
    assert len(streamed) == len(whole)
    # A different filter from the HQ one-shot, but the same signal to 1 % of the tone's amplitude (0.5).
    assert np.abs(streamed - whole).max() < 5e-3


def test_tone_keeps_its_frequency_through_the_phone_chain():
    piper = tone(1000, 22050, 0.5)
    phone = resample(piper, 22050, 8000)
    asr = resample(phone, 8000, 16000)
    assert (len(phone), len(asr)) == (4000, 8000)
    for audio, rate in [(phone, 8000), (asr, 16000)]:
        assert abs(peak_hz(audio, rate) - 1000) <= 2.0
    # The level survives too (the 1 kHz tone is deep in every passband).
    assert np.sqrt(np.mean(asr[800:-800] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_resampler_reuse_reset_and_passthrough():
    audio = float32_to_pcm16(tone(700, 22050, 0.2))
    resampler = StreamResampler(22050, 8000)
    first = stream_in_chunks(resampler, audio)
    assert np.array_equal(stream_in_chunks(resampler, audio), first)  # flush readied it for the next utterance
    resampler.process(audio[:3000])
    resampler.reset()  # barge-in: the half-fed utterance leaves nothing behind
    assert np.array_equal(stream_in_chunks(resampler, audio), first)
    same = StreamResampler(16000, 16000)
    assert np.array_equal(same.process(audio), audio)
    assert resample(audio.astype(np.float32), 8000, 8000).dtype == np.float32


def test_resample_rejects_bad_input():
    with pytest.raises(ValueError, match="mono"):
        resample(np.zeros((10, 2), np.float32), 8000, 16000)
    with pytest.raises(TypeError):
        StreamResampler(8000, 16000).process(np.zeros(10, np.int32))
    with pytest.raises(ValueError):
        StreamResampler(0, 16000)


# --- framing --------------------------------------------------------------------------------------------


def test_framer_cuts_arbitrary_chunks_into_exact_frames():
    audio = np.arange(1000, dtype=np.int16)
    framer = Framer(8000)
    frames = []
    for size in [1, 159, 7, 300, 33, 500]:  # 1000 samples in awkward pieces
        start = sum(len(f) for f in frames) + framer.pending_samples
        frames += framer.push(audio[start : start + size])
    assert all(len(f) == 160 and f.dtype == np.int16 for f in frames)
    assert len(frames) == 6 and framer.pending_samples == 40
    tail = framer.flush()
    assert tail is not None and len(tail) == 160
    assert np.array_equal(np.concatenate([*frames, tail])[:1000], audio)
    assert not tail[40:].any()  # padded with silence
    assert framer.flush() is None


def test_frame_sizes_and_frames_of():
    assert (frame_samples(8000), frame_samples(16000), frame_samples(22050, 20)) == (160, 320, 441)
    with pytest.raises(ValueError):
        frame_samples(22050, 10)  # 220.5 samples
    frames = frames_of(np.ones(640, np.float32), 16000)
    assert [len(f) for f in frames] == [320, 320] and frames[0].dtype == np.float32
    assert len(frames_of(np.ones(641, np.int16), 16000)) == 3
    assert frames_of(np.zeros(0, np.int16), 8000) == []
    framer = Framer(16000)
    framer.push(np.ones(100, np.int16))
    with pytest.raises(TypeError):
        framer.push(np.ones(100, np.float32))
    framer.reset()
    assert framer.flush() is None


# --- Twilio Media Streams -------------------------------------------------------------------------------

STREAM_SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
CALL_SID = "CA0123456789abcdef0123456789abcdef"
ACCOUNT_SID = "AC0123456789abcdef0123456789abcdef"

START = {
    "event": "start",
    "sequenceNumber": "1",
    "start": {
        "accountSid": ACCOUNT_SID,
        "streamSid": STREAM_SID,
        "callSid": CALL_SID,
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"hotel": "harbour-view"},
    },
    "streamSid": STREAM_SID,
}


def media_json(payload: str, **media) -> str:
    body = {"track": "inbound", "chunk": "2", "timestamp": "5", "payload": payload, **media}
    return json.dumps({"event": "media", "sequenceNumber": "3", "media": body, "streamSid": STREAM_SID})


def test_parse_twilio_session():
    connected = tw.parse_inbound('{"event": "connected", "protocol": "Call", "version": "1.0.0"}')
    assert isinstance(connected, tw.ConnectedMessage) and connected.version == "1.0.0"

    start = tw.parse_inbound(json.dumps(START))
    assert isinstance(start, tw.StartMessage)
    assert (start.stream_sid, start.start.call_sid, start.start.account_sid) == (STREAM_SID, CALL_SID, ACCOUNT_SID)
    assert start.start.media_format.sample_rate == 8000 and start.start.tracks == ["inbound"]
    assert start.start.custom_parameters == {"hotel": "harbour-view"} and start.sequence_number == 1

    pcm = float32_to_pcm16(tone(1000, 8000, 0.02))
    payload = base64.b64encode(mulaw_encode(pcm).tobytes()).decode()
    media = tw.parse_inbound(media_json(payload))
    assert isinstance(media, tw.MediaMessage)
    assert (media.media.chunk, media.media.timestamp, media.media.track) == (2, 5, "inbound")
    decoded = media.pcm16()
    assert decoded.dtype == np.int16 and len(decoded) == 160
    assert np.array_equal(decoded, tw.media_payload_to_pcm16(payload))
    assert np.abs(decoded.astype(np.int32) - pcm).max() < 600

    mark = tw.parse_inbound(json.dumps({"event": "mark", "streamSid": STREAM_SID, "mark": {"name": "a7"}}))
    assert isinstance(mark, tw.MarkMessage) and mark.mark.name == "a7"
    dtmf = tw.parse_inbound(
        json.dumps({"event": "dtmf", "streamSid": STREAM_SID, "dtmf": {"track": "inbound_track", "digit": "#"}})
    )
    assert isinstance(dtmf, tw.DtmfMessage) and dtmf.dtmf.digit == "#"
    stop = tw.parse_inbound(
        json.dumps({"event": "stop", "streamSid": STREAM_SID, "stop": {"accountSid": ACCOUNT_SID, "callSid": CALL_SID}})
    )
    assert isinstance(stop, tw.StopMessage) and stop.stop.call_sid == CALL_SID


def test_parse_twilio_ignores_extra_fields():
    message = dict(START, somethingNew={"x": 1})
    assert isinstance(tw.parse_inbound(json.dumps(message)), tw.StartMessage)


def without(mapping: dict, *path: str) -> dict:
    copy = json.loads(json.dumps(mapping))
    target = copy
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return copy


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"streamSid": "MZ1"}', "missing or non-string 'event'"),
        (json.dumps(without(START, "start", "callSid")), "start.callSid: Field required"),
        (json.dumps(without(START, "streamSid")), "streamSid: Field required"),
        (json.dumps(dict(START, start=dict(START["start"], mediaFormat={"encoding": "audio/L16"}))), "mediaFormat"),
        (media_json("!!!not base64!!!"), "payload is not valid base64"),
        (media_json("AAAA", chunk="two"), "media.chunk"),
        ('{"event": "dtmf", "streamSid": "MZ1", "dtmf": {"digit": "12"}}', "dtmf.digit"),
        ('{"event": "media", "media": {"payload": "' + "A" * 70000 + '"}}', "exceeds"),
    ],
)
def test_parse_twilio_rejects_bad_messages(text, reason):
    with pytest.raises(tw.ProtocolError) as caught:
        tw.parse_inbound(text)
    assert not isinstance(caught.value, tw.UnknownEvent)
    assert reason in caught.value.reason


def test_parse_twilio_unknown_event_is_distinct():
    with pytest.raises(tw.UnknownEvent) as caught:
        tw.parse_inbound('{"event": "transcription", "streamSid": "MZ1"}')
    assert caught.value.event == "transcription"
    assert isinstance(caught.value, tw.ProtocolError)


def test_media_payload_to_pcm16_rejects_bad_base64():
    with pytest.raises(tw.ProtocolError, match="base64"):
        tw.media_payload_to_pcm16("abc")  # not a multiple of four


def test_twilio_outbound_messages():
    pcm = float32_to_pcm16(tone(500, 8000, 0.02))
    media = json.loads(tw.outbound_media(STREAM_SID, pcm))
    assert media["event"] == "media" and media["streamSid"] == STREAM_SID and set(media["media"]) == {"payload"}
    assert base64.b64decode(media["media"]["payload"]) == mulaw_encode(pcm).tobytes()
    assert json.loads(tw.outbound_media_mulaw(STREAM_SID, b"\xff\xff"))["media"]["payload"] == "//8="
    assert json.loads(tw.outbound_mark(STREAM_SID, "a7")) == {
        "event": "mark",
        "streamSid": STREAM_SID,
        "mark": {"name": "a7"},
    }
    assert json.loads(tw.outbound_clear(STREAM_SID)) == {"event": "clear", "streamSid": STREAM_SID}


def test_twiml_connect_stream():
    xml = tw.twiml_connect_stream("wss://inn.example/twilio/stream", {"hotel": "a&b", "lang": "en"})
    root = ET.fromstring(xml)
    assert root.tag == "Response"
    stream = root.find("./Connect/Stream")
    assert stream is not None and stream.get("url") == "wss://inn.example/twilio/stream"
    assert {p.get("name"): p.get("value") for p in stream.findall("Parameter")} == {"hotel": "a&b", "lang": "en"}
    assert ET.fromstring(tw.twiml_connect_stream("wss://x.example/s")).find("./Connect/Stream/Parameter") is None
    with pytest.raises(ValueError, match="wss://"):
        tw.twiml_connect_stream("http://inn.example/stream", {})


def test_validate_signature():
    token = "12345"
    url = "https://inn.example/twilio/voice?hotel=1"
    params = {"CallSid": CALL_SID, "From": "+14155550100", "To": "+14155550199", "AccountSid": ACCOUNT_SID}
    signature = RequestValidator(token).compute_signature(url, params)
    assert tw.validate_signature(token, url, params, signature)
    assert not tw.validate_signature(token, url, dict(params, From="+14155550101"), signature)
    assert not tw.validate_signature(token, url.replace("hotel=1", "hotel=2"), params, signature)
    assert not tw.validate_signature("other-token", url, params, signature)
    assert not tw.validate_signature(token, url, params, None)
    assert not tw.validate_signature(token, url, params, "")


# --- plain websocket protocol ---------------------------------------------------------------------------


def test_parse_client_messages():
    start = plain.parse_client_message('{"type": "start", "caller": "+14155550100", "sample_rate": 16000}')
    assert isinstance(start, plain.ClientStart) and start.caller == "+14155550100"
    bare = plain.parse_client_message('{"type": "start"}')
    assert isinstance(bare, plain.ClientStart) and bare.caller is None and bare.sample_rate == 16000
    playback = plain.parse_client_message('{"type": "playback", "mark": "a3", "played_ms": 1240}')
    assert isinstance(playback, plain.ClientPlayback) and playback.played_ms == 1240
    dtmf = plain.parse_client_message('{"type": "dtmf", "digit": "0"}')
    assert isinstance(dtmf, plain.ClientDtmf) and dtmf.digit == "0"
    assert isinstance(plain.parse_client_message('{"type": "stop", "reason": "hangup"}'), plain.ClientStop)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "invalid JSON"),
        ('"start"', "expected a JSON object"),
        ('{"caller": "x"}', "missing or non-string 'type'"),
        ('{"type": 3}', "missing or non-string 'type'"),
        ('{"type": "start", "sample_rate": 8000}', "sample_rate"),
        ('{"type": "playback", "mark": "a1"}', "played_ms: Field required"),
        ('{"type": "playback", "mark": "a1", "played_ms": -5}', "played_ms"),
        ('{"type": "playback", "played_ms": 5}', "mark: Field required"),
        ('{"type": "dtmf", "digit": "x"}', "digit"),
        ('{"type": "start", "caller": "' + "9" * (plain.MAX_TEXT_MESSAGE_BYTES + 1) + '"}', "exceeds"),
    ],
)
def test_parse_client_rejects_bad_messages(text, reason):
    with pytest.raises(plain.ProtocolError) as caught:
        plain.parse_client_message(text)
    assert not isinstance(caught.value, plain.UnknownEvent)
    assert reason in caught.value.reason


def test_parse_client_unknown_type_is_distinct():
    with pytest.raises(plain.UnknownEvent) as caught:
        plain.parse_client_message('{"type": "video"}')
    assert caught.value.event == "video"


def test_client_audio_frames():
    pcm = np.array([0, 1, -1, 32767, -32768], np.int16)
    assert np.array_equal(plain.parse_client_audio(pcm16_to_bytes(pcm)), pcm)
    with pytest.raises(plain.ProtocolError, match="even"):
        plain.parse_client_audio(b"\x00\x01\x02")
    with pytest.raises(plain.ProtocolError, match="exceeds"):
        plain.parse_client_audio(bytes(plain.MAX_BINARY_MESSAGE_BYTES + 2))


def test_server_messages_round_trip():
    messages = [
        plain.ServerReady(call_id="c1"),
        plain.ServerTranscript(role="caller", text="a room for two", final=False),
        plain.ServerAgentAudioStart(mark="a1", text="We have a double room."),
        plain.ServerAgentAudioEnd(mark="a1"),
        plain.ServerClear(),
        plain.ServerTransfer(reason="caller asked for a person"),
        plain.ServerError(message="send start first"),
    ]
    for message in messages:
        text = plain.dump_message(message)
        assert json.loads(text)["type"] == message.type
        assert plain.parse_server_message(text) == message
    assert json.loads(plain.dump_message(plain.ServerReady(call_id="c1"))) == {
        "type": "ready",
        "call_id": "c1",
        "sample_rate": 16000,
    }
