"""How fast a speech engine runs compared with the audio it handles: the real-time factor (compute seconds
per audio second; below 1 is faster than real time). Engines add to it; the dashboard and /metrics read it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class RealTimeFactor:
    """Running totals of audio and compute seconds, safe to update from the call threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.audio_s = 0.0
        self.compute_s = 0.0
        self.runs = 0

    def add(self, audio_s: float, compute_s: float) -> None:
        with self._lock:
            self.audio_s += audio_s
            self.compute_s += compute_s
            self.runs += 1

    @property
    def value(self) -> float | None:
        """Compute seconds per audio second so far; None before any audio."""
        with self._lock:
            return self.compute_s / self.audio_s if self.audio_s > 0 else None

    @contextmanager
    def timing(self) -> Iterator[list[float]]:
        """Time the block; the block appends the audio seconds it handled to the yielded list."""
        audio: list[float] = []
        started = time.perf_counter()
        yield audio
        self.add(sum(audio), time.perf_counter() - started)
