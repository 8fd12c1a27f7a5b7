"""The per-call voice loop: caller audio in, spoken replies out, interruptible, every turn timed.

Transport-agnostic: `innkeeper/serve/calls.py` adapts Twilio Media Streams and the plain websocket to a
`CallTransport`, feeds caller audio (16 kHz) into `VoiceCall.hear` and playback acknowledgements into
`VoiceCall.played`. The stages of one turn are listed, in order, in `TURN_STAGES` below; `VoiceCall` runs
them. Model work runs in worker threads; the event loop only moves frames, so other calls keep going.

Beside the pipeline: what the caller heard (`agent.call.playback`) and the call recording
(`agent.call.recorder`); what a call is built from (`agent.call.voice_config`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from agent.call.conversation import Conversation
from agent.call.playback import Playback, Segment, speakable_pieces
from agent.call.recorder import CallRecorder
from agent.call.voice_config import CallTransport, SpeechModels
from agent.speech.asr import Transcript
from agent.speech.turn_end import sounds_finished
from agent.speech.vad import Endpointer, Event, EventKind
from telephony.codec import float32_to_pcm16
from telephony.framing import frames_of
from telephony.resample import resample

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_WORD = re.compile(r"[a-z']+")
# A "yes" or "okay" said as the agent's last words play is an answer, not a backchannel: it is dropped only
# while more of the reply is to come or more than this much of its audio is still to play.
BACKCHANNEL_TAIL_S = 0.5
HANGUP_ASR_WAIT_S = 30.0  # how long a hang-up waits for the caller's last turns to be recognised
# Pieces synthesized ahead of the one playing: enough that a slow piece on a loaded CPU leaves no gap.
SYNTH_AHEAD = 2
TRANSFER_LINE = "Of course, I'm transferring you to the front desk now. Please hold."


# ------------------------------------------------------------------------------------------ the stages


class TurnStage(NamedTuple):
    """One stage of a caller turn: the `VoiceCall` method that runs it, and where its work happens."""

    name: str
    method: str  # the VoiceCall method that runs the stage
    runs_in: str  # "event loop" (cheap, must never block) or "worker thread" (model work)
    does: str


# One caller turn, in order (as a Pipecat pipeline is a visible list of processors); each stage's method hands
# its result to the next. transcribe starts on the caller's first pause, so the text is often ready when they
# stop; split → synthesize → play run at once, joined by queues, so no stage waits on one that could run ahead.
# `VoiceCall` defines the methods in this order (checked on import): the class reads as the turn runs.
TURN_STAGES: tuple[TurnStage, ...] = (
    TurnStage("hear", "hear", "event loop", "caller audio in (16 kHz): recorded, then pushed through the VAD"),
    TurnStage("endpoint", "_on_vad_event", "event loop", "Silero VAD: start, pause (ASR and reading start early), end"),
    TurnStage("transcribe", "_finish_utterance", "worker thread", "the text started on the pause, or ASR at the end"),
    TurnStage("respond", "_answer", "worker thread", "Conversation.respond: the reply, sentence by sentence"),
    TurnStage("split", "_collect", "event loop", "each sentence cut into clauses (speakable_pieces): early audio"),
    TurnStage("synthesize", "_synthesize", "worker thread", "Piper per clause, SYNTH_AHEAD ahead, at the wire rate"),
    TurnStage("play", "_play", "event loop", "20 ms frames paced lead_ms ahead of the caller, a mark per clause"),
)
# Beside the stages, not after them: caller speech over the reply that is not a backchannel cuts playback
# (`clear` goes out first), and the call log keeps only the words the caller heard.
BARGE_IN = TurnStage("barge-in", "_barge_in", "event loop", "stop the reply now: clear, cut the send clock")


# ------------------------------------------------------------------------------------------ the call


@dataclass
class _Utterance:
    """A caller turn being heard: its audio so far and the speculative recognition started on a pause."""

    started_at: float
    early: asyncio.Task[Transcript] | None = None
    partial_at_ms: float = 0.0
    overlap: bool = False  # began while the agent was busy (a possible barge-in)
    backchannel_checked_ms: float = 0.0


class VoiceCall:
    """One caller on one transport. Feed it with `hear`, `played` and `dtmf`; end it with `hang_up`.

    The methods that run the turn's stages (`TURN_STAGES`) come in stage order, each in its section below.
    """

    def __init__(
        self,
        conversation: Conversation,
        models: SpeechModels,
        transport: CallTransport,
        *,
        recorder: CallRecorder | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.conversation = conversation
        self.models = models
        self.config = models.config
        self.transport = transport
        self.recorder = recorder
        self.clock = clock
        self.endpointer = Endpointer(models.vad, self.config.endpoint)
        self.playback = Playback(transport.rate)
        self.events: list[dict[str, float | str]] = []  # barge-ins, hand-offs (for the call record and tests)
        self.done = asyncio.Event()
        self._utterance: _Utterance | None = None
        self._reply: asyncio.Task[None] | None = None
        self._reply_cut = asyncio.Event()
        self._cut_at = 0.0  # when the reply was cut (valid while _reply_cut is set)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._heard: set[asyncio.Task[Any]] = set()  # recognising finished caller turns: a hang-up waits for these
        self._marks = 0
        self._spoken: list[str] = []
        self._reply_first_segment = 0
        self._reply_all_sent = False
        self._closing = False
        self._transferring = False

    # ---------------------------------------------------------------- inputs from the transport (stage: hear)

    async def begin(self) -> None:
        """Greet the caller."""
        greeting = await self.conversation.greet()
        self._reply = self._spawn(self._speak_only([greeting]))

    def hear(self, audio_16k: npt.NDArray[np.float32]) -> None:
        """Caller audio, any chunk length, 16 kHz float32. Cheap: VAD only; model work goes to tasks."""
        if self._closing:
            return
        if self.recorder is not None:
            self.recorder.caller(float32_to_pcm16(audio_16k))
        for event in self.endpointer.push(audio_16k):
            self._on_vad_event(event)
        self._maybe_barge_in_or_partial()

    def played(self, mark: str, played_ms: float | None) -> None:
        """A playback report: Twilio's mark echo (None) or the plain client's `played_ms`."""
        self.playback.acknowledge(mark, played_ms, self.clock())

    async def dtmf(self, digit: str) -> None:
        """A key press; 0 hands the caller to a person."""
        self.events.append({"event": "dtmf", "digit": digit, "at": self.clock()})
        if digit == "0":
            self.hand_over(f"caller pressed {digit}")

    def hand_over(self, reason: str) -> bool:
        """Hand the caller to a person (a key press, or staff taking the call over); False if ending already."""
        if self._closing or self._transferring:
            return False
        self._transferring = True
        self._spawn(self._transfer(reason))  # speaking takes seconds: not in the receive loop
        return True

    async def hang_up(self, reason: str = "hangup") -> None:
        """The caller (or the transport) ended the call: log what is pending and leave nothing running."""
        if self._closing:
            return
        self._closing = True
        fragment = self._utterance is not None and self.endpointer.in_speech
        audio = self.endpointer.current_audio() if fragment else None
        now = self.clock()
        await self._stop_reply(now, reason="hangup")
        heard = set(self._heard)
        running = [task for task in self._tasks if task not in heard]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        # A reply cut by the hang-up is logged with the words that had played.
        await self.conversation.finish_reply(self.playback.heard_text(now, self._reply_first_segment), interrupted=True)
        # Turns the caller finished before hanging up are still being recognised (slow on a busy machine):
        # they are the caller's last words, so they are logged, after the reply they came after.
        if heard:
            _, late = await asyncio.wait(heard, timeout=HANGUP_ASR_WAIT_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if audio is not None and len(audio):
            # An utterance cut by the hang-up is still a turn the caller said.
            transcript = await asyncio.to_thread(self.models.recognizer.transcribe, audio)
            if transcript.text:
                await self._log_last_words(transcript.text)
        await self.conversation.close("transfer" if self._transferring else reason)
        if self.recorder is not None:
            self.recorder.close()
        self.done.set()

    # ---------------------------------------------------------------- turn taking (stages: endpoint, transcribe)

    def _on_vad_event(self, event: Event) -> None:
        now = self.clock()
        if event.kind is EventKind.SPEECH_START:
            self._utterance = _Utterance(started_at=now, overlap=self._agent_busy())
        elif event.kind is EventKind.EARLY_END and self._utterance is not None:
            self._utterance.early = self._spawn(self._transcribe_ahead(event.audio))
        elif event.kind is EventKind.RESUMED and self._utterance is not None:
            self._discard(self._utterance.early)
            self._utterance.early = None
        elif event.kind is EventKind.END:
            utterance, self._utterance = self._utterance or _Utterance(started_at=now), None
            speech_end = now - event.silence_ms / 1000.0
            task = self._spawn(self._finish_utterance(utterance, event.audio, speech_end, now, event.speech_ms))
            self._heard.update(t for t in (task, utterance.early) if t is not None)

    async def _finish_utterance(
        self, utterance: _Utterance, audio: npt.NDArray[np.float32], speech_end: float, ended: float, speech_ms: float
    ) -> None:
        t_asr = self.clock()
        early = utterance.early
        transcript = await early if early is not None else await self._transcribe(audio)
        asr_done = self.clock()
        if not transcript.text:
            return  # noise, or a hallucination dropped by the recogniser
        if self._closing:
            await self._log_last_words(transcript.text)
            return
        if self._is_backchannel(transcript.text) and self._talking_on():
            return  # "mhm" while the agent talks: the caller is listening, not taking the turn
        if self._agent_busy():
            await self._barge_in("caller turn ended over the reply")
        await self.transport.transcript("caller", transcript.text, True)
        timings = {
            "endpoint_ms": _ms(ended - speech_end),
            "asr_wait_ms": _ms(asr_done - t_asr),
            "speech_ms": round(speech_ms, 1),
            "asr_avg_logprob": round(transcript.avg_logprob, 3),
            "asr_early": 1.0 if early is not None else 0.0,
        }
        previous = self._reply
        if previous is not None and not previous.done():
            await asyncio.gather(previous, return_exceptions=True)  # a reply being cut finishes first
        if self._closing:  # the caller hung up while the previous reply was being cut
            await self._log_last_words(transcript.text)
            return
        self._reply = self._spawn(self._answer(transcript.text, speech_end, timings))

    async def _transcribe_ahead(self, audio: npt.NDArray[np.float32]) -> Transcript:
        """Speculative recognition at the caller's first pause; the model (where it reads turns) starts reading
        these words at once, so its reading is ready, or nearly, when the silence ends the turn."""
        transcript = await self._transcribe(audio)
        if transcript.text and self.config.read_ahead and not self._agent_busy():
            self.conversation.anticipate(transcript.text)
        # Words that are a whole turn end it now rather than after the rest of the endpoint silence.
        if self._ends_on_these_words(transcript.text) and (end := self.endpointer.end_now()) is not None:
            self._on_vad_event(end)
        return transcript

    def _ends_on_these_words(self, text: str) -> bool:
        """The pause's words sound finished, nothing was said since (no Resumed), and the agent is quiet."""
        utterance = self._utterance
        return (
            self.config.end_on_finished_words
            and utterance is not None
            and utterance.early is asyncio.current_task()
            and not self._agent_busy()
            and sounds_finished(text)
        )

    async def _log_last_words(self, text: str) -> None:
        """Caller words the hang-up left without a reply: a turn of the call all the same."""
        await self.conversation.log_caller_fragment(text, {"cut_by_hangup": 1.0})

    def _maybe_barge_in_or_partial(self) -> None:
        utterance = self._utterance
        if utterance is None or not self.endpointer.in_speech:
            return
        speech_ms = self.endpointer.speech_ms_so_far
        if self._agent_busy():
            checked = utterance.backchannel_checked_ms
            if (
                speech_ms >= self.config.barge_in_min_speech_ms
                and speech_ms - checked >= self.config.barge_in_min_speech_ms
            ):
                utterance.backchannel_checked_ms = speech_ms
                self._spawn(self._check_barge_in(self.endpointer.current_audio()))
        elif self._partial_due(utterance, speech_ms):
            utterance.partial_at_ms = speech_ms
            self._spawn(self._partial(self.endpointer.current_audio()))

    def _partial_due(self, utterance: _Utterance, speech_ms: float) -> bool:
        every = self.config.partial_every_ms
        # Partials only on an idle recogniser: they must never delay a final transcript.
        return bool(every) and speech_ms - utterance.partial_at_ms >= every and not self.models.recognizer.busy

    async def _check_barge_in(self, audio: npt.NDArray[np.float32]) -> None:
        transcript = await self._transcribe(audio)
        if transcript.text and not self._is_backchannel(transcript.text) and self._agent_busy():
            await self._barge_in(f"caller said {transcript.text!r}")

    async def _partial(self, audio: npt.NDArray[np.float32]) -> None:
        transcript = await self._transcribe(audio)
        if transcript.text and self.endpointer.in_speech:
            await self.transport.transcript("caller", transcript.text, False)

    def _is_backchannel(self, text: str) -> bool:
        words = _WORD.findall(text.lower())
        return bool(words) and all(word in self.config.backchannels for word in words)

    def _talking_on(self) -> bool:
        """The agent has more to say than the last moment of its reply (its audio is not all out yet)."""
        replying = self._reply is not None and not self._reply.done() and not self._reply_all_sent
        return replying or self.playback.ahead_s(self.clock()) > BACKCHANNEL_TAIL_S

    def _agent_busy(self) -> bool:
        return (self._reply is not None and not self._reply.done()) or self.playback.playing(self.clock())

    # ---------------------------------------------------------------- speaking (respond, split, synthesize, play)

    async def _answer(self, caller_text: str, speech_end: float, timings: dict[str, float]) -> None:
        clock: dict[str, float] = {}
        heard_timings = {k: v for k, v in timings.items() if k in ("speech_ms", "asr_avg_logprob", "asr_wait_ms")}
        chunks = self.conversation.respond(caller_text, defer_log=True, heard=heard_timings)
        cut_at = await self._speak(chunks, clock)
        timings |= {f"{name}_ms": _ms(at - speech_end) for name, at in clock.items()}
        if "first_audio_sent_ms" in timings:
            timings["v2v_server_ms"] = timings["first_audio_sent_ms"]
        first = self._reply_first_segment
        heard = None if cut_at is None else self.playback.heard_text(cut_at, first)
        if cut_at is not None and self.transport_reports_playback:
            await self._await_reports(cut_at)
            heard = self.playback.heard_text(cut_at, first)
        await self.conversation.finish_reply(heard, interrupted=cut_at is not None, latencies=timings)
        await self.transport.transcript("agent", heard if heard is not None else self._last_text(), True)
        if self.conversation.ended and not self._closing:
            transfer = self.conversation.last_turn is not None and self.conversation.last_turn.plan.transfer
            if transfer:
                self._transferring = True
                await self.conversation.log_handoff("caller asked for a person")
            await self._end_after_playback(transfer=transfer, reason="caller asked for a person")

    async def _speak_only(self, sentences: list[str]) -> None:
        async def lines() -> AsyncIterator[str]:
            for sentence in sentences:
                yield sentence

        await self._speak(lines(), {})

    async def _speak(self, chunks: AsyncIterator[str], clock: dict[str, float]) -> float | None:
        """Speak the chunks as they come; returns the time of a barge-in, or None.

        Three stages run at once so the caller never waits on a stage that could have run ahead: the reply
        text (LLM or template) cut into clauses, synthesis (ahead of playback) and paced sending; they are
        `split`, `synthesize` and `play` in `TURN_STAGES`.
        """
        self._reply_cut.clear()
        self._reply_all_sent = False
        self._spoken = []
        self._reply_first_segment = len(self.playback.segments)
        texts: asyncio.Queue[str | None] = asyncio.Queue()
        audio: asyncio.Queue[tuple[str, npt.NDArray[np.int16]] | None] = asyncio.Queue(maxsize=SYNTH_AHEAD)
        stages = [self._spawn(self._collect(chunks, texts)), self._spawn(self._synthesize(texts, audio, clock))]
        try:
            while (item := await self._until_cut(audio.get())) is not None:
                await self._play(*item, clock)
                if self._reply_cut.is_set():
                    break
            self._reply_all_sent = True
        finally:
            for stage in stages:
                stage.cancel()
            await asyncio.gather(*stages, return_exceptions=True)
            await _aclose(chunks)
        while self.playback.playing(self.clock()) and not self._reply_cut.is_set():
            await self._until_cut(asyncio.sleep(min(0.05, self.playback.ahead_s(self.clock()))))
        return self._cut_at if self._reply_cut.is_set() else None

    async def _collect(self, chunks: AsyncIterator[str], out: asyncio.Queue[str | None]) -> None:
        """Reply chunks, cut into speakable pieces (a long sentence at its commas, so the first audio is early)."""
        try:
            first = True
            async for chunk in chunks:
                for piece in speakable_pieces(chunk, first=first):
                    await out.put(piece)
                first = False
        finally:
            await out.put(None)

    async def _synthesize(
        self,
        texts: asyncio.Queue[str | None],
        out: asyncio.Queue[tuple[str, npt.NDArray[np.int16]] | None],
        clock: dict[str, float],
    ) -> None:
        """Piper in a worker thread, SYNTH_AHEAD pieces ahead of what is playing; resampled to the wire rate."""
        while (text := await texts.get()) is not None:
            audio = await asyncio.to_thread(self._render, text)
            clock.setdefault("tts_first", self.clock())
            await out.put((text, audio))
        await out.put(None)  # not in a `finally`: after a cut nobody reads the (bounded) queue any more

    def _render(self, text: str) -> npt.NDArray[np.int16]:
        audio, rate = self.models.synthesizer.synthesize(text)
        return resample(audio, rate, self.transport.rate)

    async def _play(self, text: str, audio: npt.NDArray[np.int16], clock: dict[str, float]) -> None:
        """One piece as a segment: 20 ms frames sent at the pace of playback, then its mark."""
        self._marks += 1
        mark = f"a{self._marks}"
        segment = self.playback.begin(mark, text)
        self._spoken.append(text)
        await self.transport.start_segment(mark, text)
        await self._send_frames(segment, frames_of(audio, self.transport.rate), clock)
        if not self._reply_cut.is_set():
            segment.sent_all = True
            await self.transport.end_segment(mark)

    async def _send_frames(
        self, segment: Segment, frames: Iterable[npt.NDArray[np.int16]], clock: dict[str, float]
    ) -> None:
        lead = self.config.lead_ms / 1000.0
        for frame in frames:
            if self._reply_cut.is_set():
                return
            ahead = self.playback.ahead_s(self.clock())
            if ahead > lead:  # pace: keep only `lead` of audio queued at the caller
                await self._until_cut(asyncio.sleep(ahead - lead))
                if self._reply_cut.is_set():
                    return
            now = self.clock()
            await self.transport.send_audio(frame)
            clock.setdefault("first_audio_sent", now)
            self.playback.sent(segment, len(frame), now)
            if self.recorder is not None:
                self.recorder.agent(frame, now)

    async def _until_cut(self, awaitable: Awaitable[_T]) -> _T | None:
        """Await something unless a barge-in comes first (then None)."""
        task = asyncio.ensure_future(awaitable)
        cut = asyncio.ensure_future(self._reply_cut.wait())
        try:
            await asyncio.wait({task, cut}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cut.cancel()
            if not task.done():
                task.cancel()  # cut, or this coroutine itself cancelled (hang-up): leave nothing waiting
        return task.result() if task.done() and not task.cancelled() else None

    async def _barge_in(self, why: str) -> None:
        """Stop the agent now: `clear` goes out before anything else is awaited."""
        if self._reply_cut.is_set() or not self._agent_busy():
            return
        decided = self.clock()
        await self._stop_reply(decided, reason=why)

    async def _stop_reply(self, at: float, *, reason: str) -> None:
        if not self._agent_busy():
            return
        self._cut_at = at
        self._reply_cut.set()
        playing = self.playback.playing(at)
        if playing and not self._closing:
            await self.transport.clear()
        cleared = self.clock()
        self.playback.cut(at)
        self.events.append(
            {"event": "barge_in", "reason": reason, "decided_at": at, "clear_sent_at": cleared if playing else -1.0}
        )
        log.info("call %s: barge-in (%s)", self.conversation.call_id, reason)

    async def _await_reports(self, cut_at: float) -> None:
        """The plain client reports how much of each segment played; give it a moment to do so."""
        deadline = self.clock() + self.config.ack_wait_ms / 1000.0
        while self.clock() < deadline:
            pending = [
                s
                for s in self.playback.segments
                if s.played_ms is None and s.starts_at is not None and s.starts_at < cut_at
            ]
            if not pending:
                return
            await asyncio.sleep(0.02)

    @property
    def transport_reports_playback(self) -> bool:
        return getattr(self.transport, "reports_playback", False)

    def _last_text(self) -> str:
        return " ".join(self._spoken)

    async def _transfer(self, reason: str) -> None:
        await self._stop_reply(self.clock(), reason="transfer")
        if self._reply is not None:
            await asyncio.gather(self._reply, return_exceptions=True)
        self.events.append({"event": "transfer", "reason": reason, "at": self.clock()})
        await self.conversation.log_handoff(reason)
        self._reply = self._spawn(self._speak_only([TRANSFER_LINE]))
        await asyncio.gather(self._reply, return_exceptions=True)
        await self._end_after_playback(transfer=True, reason=reason)

    async def _end_after_playback(self, *, transfer: bool, reason: str = "goodbye") -> None:
        while self.playback.playing(self.clock()):
            await asyncio.sleep(min(0.05, self.playback.ahead_s(self.clock())))
        if transfer:
            await self.transport.transfer(reason)
        await self.transport.hang_up()

    # ---------------------------------------------------------------- helpers

    async def _transcribe(self, audio: npt.NDArray[np.float32]) -> Transcript:
        return await asyncio.to_thread(self.models.recognizer.transcribe, audio)

    def _spawn(self, coroutine: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._heard.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("call %s: voice task failed", self.conversation.call_id, exc_info=task.exception())

    @staticmethod
    def _discard(task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            task.cancel()


async def _aclose(stream: AsyncIterator[str]) -> None:
    closer = getattr(stream, "aclose", None)
    if closer is not None:
        with contextlib.suppress(Exception):
            await closer()


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)
