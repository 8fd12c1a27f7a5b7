"""The simulated caller (innkeeper/simulation/voice_caller.py) against scripted fake servers on a real websocket.

The fake servers are test doubles for the *peer*: they play a scripted agent, parse everything the caller
sends with the project's own parsers, and time it. Audio is synthetic (tones) except in the one
`real_model` test of `lines_from_text`.
"""

from __future__ import annotations

import asyncio
import contextlib
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve

from innkeeper.simulation.call_report import CallError, ConnectFailed, call_url, http_base, latency_table
from innkeeper.simulation.caller_lines import CallerLine, lines_from_text, lines_from_wavs, read_wav
from innkeeper.simulation.voice_caller import place_call
from telephony import plain_protocol as plain
from telephony import twilio_protocol as tw
from telephony.codec import mulaw_decode, mulaw_encode, pcm16_from_bytes, pcm16_to_bytes
from telephony.framing import frames_of

GAP_S = 0.3  # the caller's pause after a reply, shorter than the default to keep the tests fast
TOLERANCE_S = 0.06


def tone(seconds: float, rate: int, freq: float = 440.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.round(amplitude * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def is_speech(pcm: np.ndarray) -> bool:
    return pcm.size > 0 and float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64)))) > 100.0


def now() -> float:
    return asyncio.get_running_loop().time()


@contextlib.asynccontextmanager
async def fake_server(handler: Callable[[ServerConnection], Awaitable[None]]) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
        host, port = server.sockets[0].getsockname()[:2]
        yield f"ws://{host}:{port}"


@dataclass
class Log:
    """What a fake server saw, timed on the shared event-loop clock."""

    start: tw.StartMessage | None = None
    media: list[tuple[float, tw.MediaMessage]] = field(default_factory=list)
    sequence: list[int] = field(default_factory=list)
    sent: dict[str, float] = field(default_factory=dict)  # what -> when the server sent it
    echoed: dict[str, float] = field(default_factory=dict)  # mark name -> when it came back
    playback: dict[str, tuple[int, float]] = field(default_factory=dict)  # plain mark -> (played_ms, when)
    speech_start: float | None = None
    speech_end: float | None = None
    frame_sizes: set[int] = field(default_factory=set)


async def send_twilio_audio(ws: ServerConnection, sid: str, seconds: float, mark: str, log: Log) -> None:
    """A burst of 20 ms media messages then a mark, as the real server queues audio on Twilio."""
    log.sent[mark] = now()
    for frame in frames_of(tone(seconds, 8000, 300.0), 8000):
        await ws.send(tw.outbound_media(sid, frame))
    await ws.send(tw.outbound_mark(sid, mark))


async def twilio_media_loop(ws: ServerConnection, log: Log, on_speech_end: Callable[[], Awaitable[None]]) -> None:
    """Read the caller's messages until `stop`, noting speech by frame energy and mark echoes."""
    async for raw in ws:
        message = tw.parse_inbound(raw)
        if message.sequence_number is not None:
            log.sequence.append(message.sequence_number)
        if isinstance(message, tw.MediaMessage):
            log.media.append((now(), message))
            if is_speech(message.pcm16()):
                log.speech_start = log.speech_start or now()
                log.speech_end = now()
            elif log.speech_end is not None and "speech end" not in log.sent:
                log.sent["speech end"] = log.speech_end
                asyncio.get_running_loop().create_task(on_speech_end())
        elif isinstance(message, tw.MarkMessage):
            log.echoed[message.mark.name] = now()
        elif isinstance(message, tw.StopMessage):
            return


async def twilio_handshake(ws: ServerConnection, log: Log) -> str:
    assert isinstance(tw.parse_inbound(await ws.recv()), tw.ConnectedMessage)
    log.start = tw.parse_inbound(await ws.recv())
    assert isinstance(log.start, tw.StartMessage)
    log.sequence.append(log.start.sequence_number)
    return log.start.stream_sid


# ---------------------------------------------------------------- Twilio


def test_twilio_frames_marks_and_voice_to_voice_latency(tmp_path: Path) -> None:
    greeting_s, reply_s, reply_delay_s = 0.3, 0.4, 0.25
    log = Log()

    async def agent(ws: ServerConnection) -> None:
        sid = await twilio_handshake(ws, log)
        await send_twilio_audio(ws, sid, greeting_s, "greeting", log)

        async def reply() -> None:
            await asyncio.sleep(log.speech_end + reply_delay_s - now())
            await send_twilio_audio(ws, sid, reply_s, "reply", log)

        await twilio_media_loop(ws, log, reply)

    async def main():
        async with fake_server(agent) as url:
            line = CallerLine(tone(0.5, 8000), 8000, "hello")
            return await place_call(
                call_url(url, "twilio"), [line], protocol="twilio", gap_after_reply_s=GAP_S, record_dir=tmp_path
            )

    report = asyncio.run(main())

    start = log.start.start
    assert start.call_sid == report.call_id and start.call_sid.startswith("CA")
    assert log.start.stream_sid.startswith("MZ") and start.custom_parameters == {"caller": "+15555550100"}
    # Continuous 20 ms frames of 160 mu-law bytes, numbered like Twilio, paced without drift.
    times = np.array([t for t, _ in log.media])
    assert {len(m.pcm16()) for _, m in log.media} == {160}
    assert [m.media.chunk for _, m in log.media] == list(range(1, len(log.media) + 1))
    assert log.sequence == sorted(set(log.sequence)) and log.sequence[0] == 1
    elapsed = times[-1] - times[0]
    assert abs(len(times) - (elapsed / 0.02 + 1)) <= 3, (len(times), elapsed)
    assert np.max(np.abs(times - times[0] - 0.02 * np.arange(len(times)))) < TOLERANCE_S
    # Marks come back once their audio has played, not when it arrived.
    for mark, seconds in (("greeting", greeting_s), ("reply", reply_s)):
        played = log.echoed[mark] - log.sent[mark]
        assert seconds - 0.005 <= played <= seconds + 0.1, (mark, played)
    # The caller spoke only after the greeting had played and the pause had passed.
    assert log.speech_start - log.sent["greeting"] >= greeting_s + GAP_S - 0.005
    (turn,) = report.turns
    assert turn.answered and turn.text == "hello"
    assert abs(turn.v2v_ms - reply_delay_s * 1000) <= TOLERANCE_S * 1000, turn.v2v_ms
    assert abs(turn.reply_audio_s - reply_s) < 0.021 and abs(report.greeting_audio_s - greeting_s) < 0.021
    assert len(turn.agent_audio) == pytest.approx(reply_s * 8000, abs=160)
    assert report.ended_by == "caller" and report.close_code == 1000 and not report.bad_messages
    agent_wav, rate = read_wav(report.recordings["agent"])
    caller_wav, _ = read_wav(report.recordings["caller"])
    assert rate == 8000 and abs(len(agent_wav) - len(caller_wav)) <= 160
    assert np.count_nonzero(caller_wav) >= 0.45 * 8000  # the line is in the caller's recording
    assert latency_table(report).row_count == 1


def test_twilio_barge_in_clear_returns_pending_marks_at_once() -> None:
    barge_after_ms, reply_delay_s = 400, 0.2
    log = Log()

    async def agent(ws: ServerConnection) -> None:
        sid = await twilio_handshake(ws, log)
        await send_twilio_audio(ws, sid, 3.0, "g1", log)
        await send_twilio_audio(ws, sid, 0.5, "g2", log)
        log.sent["greeting"] = log.sent["g1"]

        async def reply() -> None:
            await asyncio.sleep(log.speech_end + reply_delay_s - now())
            await send_twilio_audio(ws, sid, 0.3, "r1", log)

        async def clear_on_speech() -> None:
            while log.speech_start is None:
                await asyncio.sleep(0.005)
            log.sent["clear"] = now()
            await ws.send(tw.outbound_clear(sid))

        clearing = asyncio.create_task(clear_on_speech())
        await twilio_media_loop(ws, log, reply)
        await clearing

    async def main():
        async with fake_server(agent) as url:
            line = CallerLine(tone(0.4, 8000), 8000, "wait", start_after_agent_audio_ms=barge_after_ms)
            return await place_call(call_url(url, "twilio"), [line], protocol="twilio", gap_after_reply_s=GAP_S)

    report = asyncio.run(main())

    # The caller started talking over the greeting, 400 ms into it.
    assert abs(log.speech_start - log.sent["greeting"] - barge_after_ms / 1000) < TOLERANCE_S
    # On clear both pending marks came back at once, long before their audio could have played.
    for mark in ("g1", "g2"):
        assert 0 <= log.echoed[mark] - log.sent["clear"] < TOLERANCE_S, mark
    assert log.echoed["r1"] - log.sent["r1"] >= 0.3 - 0.005
    (turn,) = report.turns
    assert turn.clear_ms is not None and 0 <= turn.clear_ms < 100
    assert len(report.clears) == 1
    assert abs(turn.v2v_ms - reply_delay_s * 1000) <= TOLERANCE_S * 1000
    # What was played of the greeting stops at the clear: about 0.4 s of it, not 3.5 s.
    assert np.count_nonzero(report.agent_audio) < (barge_after_ms / 1000 + 0.3 + 0.2) * 8000


def test_server_closing_early_ends_the_call_with_a_report() -> None:
    async def agent(ws: ServerConnection) -> None:
        sid = await twilio_handshake(ws, Log())
        await send_twilio_audio(ws, sid, 0.2, "greeting", Log())
        await ws.send("{not json")
        await ws.send('{"event": "media", "streamSid": "x"}')
        await ws.send('{"event": "dance", "streamSid": "x"}')
        media = 0
        async for raw in ws:
            message = tw.parse_inbound(raw)
            media += isinstance(message, tw.MediaMessage) and is_speech(message.pcm16())
            if media == 10:  # mid-sentence: the agent hangs up on the caller
                await ws.close(1011, "agent failed")
                return

    async def main():
        async with fake_server(agent) as url:
            lines = [CallerLine(tone(1.0, 8000), 8000, f"line {i}") for i in range(3)]
            started = now()
            report = await place_call(call_url(url, "twilio"), lines, protocol="twilio", gap_after_reply_s=GAP_S)
            return report, now() - started

    report, seconds = asyncio.run(main())

    assert seconds < 3.0
    assert report.ended_by == "server" and report.close_code == 1011
    assert [t.answered for t in report.turns] == [False] and report.lines_unsaid == 2
    assert len(report.bad_messages) == 3, report.bad_messages
    assert report.unanswered == 1


# ---------------------------------------------------------------- plain protocol


def test_plain_playback_acks_and_clear() -> None:
    log = Log()

    async def send_segment(ws: ServerConnection, mark: str, seconds: float, end: bool = True) -> None:
        log.sent[mark] = now()
        await ws.send(plain.dump_message(plain.ServerAgentAudioStart(mark=mark, text=mark)))
        await ws.send(pcm16_to_bytes(tone(seconds, 16000, 300.0)))  # one message; a real server sends 20 ms frames
        if end:
            await ws.send(plain.dump_message(plain.ServerAgentAudioEnd(mark=mark)))

    async def agent(ws: ServerConnection) -> None:
        async def reply() -> None:
            await send_segment(ws, "a2", 2.0)
            await send_segment(ws, "a3", 0.5, end=False)  # still being sent when the caller interrupts
            await asyncio.sleep(0.5)
            log.sent["clear"] = now()
            await ws.send(plain.dump_message(plain.ServerClear()))
            await ws.send(plain.dump_message(plain.ServerAgentAudioEnd(mark="a3")))  # late: already answered
            await ws.send(plain.dump_message(plain.ServerTranscript(role="caller", text="hello", final=True)))
            await send_segment(ws, "a4", 0.2)

        start = plain.parse_client_message(await ws.recv())
        assert isinstance(start, plain.ClientStart) and start.caller == "+15555550100"
        await ws.send(plain.dump_message(plain.ServerReady(call_id="c-test")))
        await send_segment(ws, "a1", 0.4)
        replying = None
        async for raw in ws:
            if isinstance(raw, bytes):
                log.frame_sizes.add(len(raw))
                if is_speech(pcm16_from_bytes(raw)):
                    log.speech_end = now()
                elif log.speech_end is not None and replying is None:
                    replying = asyncio.create_task(reply())
                continue
            message = plain.parse_client_message(raw)
            if isinstance(message, plain.ClientPlayback):
                assert message.mark not in log.playback, f"{message.mark} acknowledged twice"
                log.playback[message.mark] = (message.played_ms, now())
            elif isinstance(message, plain.ClientStop):
                await replying
                return

    async def main():
        async with fake_server(agent) as url:
            line = CallerLine(tone(0.3, 16000), 16000, "hello")
            return await place_call(call_url(url, "plain"), [line], protocol="plain", gap_after_reply_s=GAP_S)

    report = asyncio.run(main())

    assert report.call_id == "c-test" and log.frame_sizes == {640}
    played_ms, acked = log.playback["a1"]
    assert abs(played_ms - 400) <= 25 and acked - log.sent["a1"] >= 0.4 - 0.005
    # Cut by the clear: the playing segment reports what was heard, the queued one 0, both at once.
    played_ms, acked = log.playback["a2"]
    assert 500 - 60 <= played_ms <= 500 + 60 < 2000, played_ms
    assert log.playback["a3"][0] == 0
    for mark in ("a2", "a3"):
        assert 0 <= log.playback[mark][1] - log.sent["clear"] < TOLERANCE_S
    assert abs(log.playback["a4"][0] - 200) <= 25
    (turn,) = report.turns
    assert turn.answered and turn.transcripts == [("caller", "hello")]
    assert report.transcript == [("caller", "hello")] and report.clears and report.close_code == 1000
    assert not report.bad_messages


def test_plain_server_that_refuses_the_call_raises() -> None:
    async def agent(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(plain.dump_message(plain.ServerError(message="hotel closed")))
        await ws.close()

    async def main() -> None:
        async with fake_server(agent) as url:
            await place_call(call_url(url, "plain"), [], protocol="plain")

    with pytest.raises(CallError, match="hotel closed"):
        asyncio.run(main())


def test_no_server_is_a_clear_connect_error() -> None:
    with pytest.raises(ConnectFailed, match=r"could not connect to ws://127\.0\.0\.1:9/ws/call"):
        asyncio.run(place_call("ws://127.0.0.1:9/ws/call", [], protocol="plain"))


def test_addresses() -> None:
    assert call_url("ws://127.0.0.1:8080", "twilio") == "ws://127.0.0.1:8080/twilio/stream"
    assert call_url("ws://h:1/", "plain") == "ws://h:1/ws/call"
    assert call_url("wss://h/custom", "plain") == "wss://h/custom"
    assert http_base("wss://h:8443/ws/call") == "https://h:8443"


# ---------------------------------------------------------------- building lines


def write_wav(path: Path, data: bytes, channels: int, width: int, rate: int) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(data)
    return path


def test_lines_from_wavs_reads_mono_16_bit_and_rejects_the_rest(tmp_path: Path) -> None:
    audio = tone(0.2, 11025)
    (line,) = lines_from_wavs([write_wav(tmp_path / "ok.wav", pcm16_to_bytes(audio), 1, 2, 11025)])
    assert line.rate == 11025 and np.array_equal(line.audio, audio) and line.text is None
    stereo = write_wav(tmp_path / "stereo.wav", pcm16_to_bytes(np.repeat(audio, 2)), 2, 2, 11025)
    with pytest.raises(ValueError, match=r"stereo\.wav: 2 channels; the caller needs a mono file"):
        lines_from_wavs([stereo])
    eight_bit = write_wav(tmp_path / "8bit.wav", bytes(100), 1, 1, 8000)
    with pytest.raises(ValueError, match=r"8bit\.wav: 8-bit samples; the caller needs 16-bit PCM"):
        lines_from_wavs([eight_bit])


@pytest.mark.real_model
def test_lines_from_text_is_phone_line_audio() -> None:
    from innkeeper.core.provision import ModelIntegrityError
    from innkeeper.core.settings import Settings
    from innkeeper.serve.speech import load_synthesizer

    try:
        synthesizer = load_synthesizer(Settings(tts_threads=1), variation=False)
    except ModelIntegrityError as exc:
        pytest.skip(f"bundled Piper voice not provisioned (run `innkeeper models`): {exc}")
    (line,) = lines_from_text(["Two adults, please."], synthesizer)
    assert line.rate == 8000 and line.audio.dtype == np.int16 and line.text == "Two adults, please."
    assert 0.6 < len(line.audio) / 8000 < 3.0
    # Every sample is a mu-law level: the audio has been through the phone codec.
    assert np.array_equal(mulaw_decode(mulaw_encode(line.audio)), line.audio)
    assert is_speech(line.audio)
