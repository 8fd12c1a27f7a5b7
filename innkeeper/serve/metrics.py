"""Prometheus metrics of the serving process (`GET /metrics`): calls, turns, voice-to-voice latency, errors,
and which model answers.

Each app has its own `CollectorRegistry` (several apps in one test process must not share counters).
A call's turns are counted when it ends, from its call record, so the call path carries no metrics code.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from agent.call.calllog import TurnRecord

# Voice-to-voice at the server: end of the caller's speech → first reply audio sent (seconds).
LATENCY_BUCKETS = (0.25, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0)


class ServerMetrics:
    """The counters one serving process exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter(
            "innkeeper_calls", "Calls ended, by channel and end reason", ["channel", "reason"], registry=self.registry
        )
        self.calls_refused = Counter(
            "innkeeper_calls_refused",
            "Calls not taken, by reason (busy: every line taken)",
            ["reason"],
            registry=self.registry,
        )
        self.calls_active = Gauge("innkeeper_calls_active", "Calls in progress", registry=self.registry)
        self.turns = Counter(
            "innkeeper_turns", "Agent turns, by who spoke (model or template)", ["worded_by"], registry=self.registry
        )
        self.voice_to_voice = Histogram(
            "innkeeper_voice_to_voice_seconds",
            "End of caller speech to first reply audio sent, per agent turn",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.barge_ins = Counter("innkeeper_barge_ins", "Replies the caller talked over", registry=self.registry)
        self.rejected_messages = Counter(
            "innkeeper_rejected_messages", "Malformed, unknown or misplaced call messages", registry=self.registry
        )
        self.errors = Counter(
            "innkeeper_errors", "Server errors, by where they happened", ["where"], registry=self.registry
        )
        self.real_time_factor = Gauge(
            "innkeeper_speech_real_time_factor",
            "Compute seconds per audio second since start-up",
            ["engine"],
            registry=self.registry,
        )
        self.model = Info("innkeeper_model", "The model version answering callers", registry=self.registry)

    def call_ended(self, channel: str, reason: str | None, turns: Iterable[TurnRecord], barge_ins: int) -> None:
        self.calls.labels(channel, reason or "unknown").inc()
        self.barge_ins.inc(barge_ins)
        for turn in turns:
            if turn.role != "agent":
                continue
            self.turns.labels("template" if turn.model_version == "template" else "model").inc()
            v2v_ms = (turn.latencies or {}).get("v2v_server_ms")
            if v2v_ms is not None:
                self.voice_to_voice.observe(float(v2v_ms) / 1000)

    def watch_speech(self, models: object) -> None:
        """Export the speech engines' real-time factors (compute seconds per audio second, since start-up)."""
        for engine, name in (
            (getattr(models, "recognizer", None), "asr"),
            (getattr(models, "synthesizer", None), "tts"),
        ):
            speed = getattr(engine, "speed", None)
            if speed is not None:
                self.real_time_factor.labels(name).set_function(lambda speed=speed: speed.value or 0.0)

    def snapshot(self) -> dict[str, float]:
        """The counters' totals, for the dashboard's health page."""
        totals: dict[str, float] = {}
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        return totals

    def exposition(self, model_version: str) -> bytes:
        self.model.info({"version": model_version})
        return generate_latest(self.registry)
