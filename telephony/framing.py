"""Cut a stream of arbitrary-size audio chunks into fixed 20 ms frames.

VAD, the Twilio uplink and the pacing of outbound audio all work in whole frames (160 samples at
8 kHz, 320 at 16 kHz), while websockets, resamplers and TTS hand over chunks of any length.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FRAME_MS = 20


def frame_samples(sample_rate: int, frame_ms: int = FRAME_MS) -> int:
    """Samples in one frame; the rate and length must give a whole number (8000 Hz x 20 ms = 160)."""
    samples, remainder = divmod(sample_rate * frame_ms, 1000)
    if samples <= 0 or remainder:
        raise ValueError(f"{frame_ms} ms at {sample_rate} Hz is not a whole number of samples")
    return samples


class Framer:
    """Accumulates chunks and hands out exact frames; the dtype of the first chunk is kept throughout."""

    def __init__(self, sample_rate: int, frame_ms: int = FRAME_MS) -> None:
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.frame_samples = frame_samples(sample_rate, frame_ms)
        self._pending: np.ndarray | None = None  # fewer than frame_samples samples, or None

    @property
    def pending_samples(self) -> int:
        """Samples waiting for the rest of their frame."""
        return 0 if self._pending is None else len(self._pending)

    def push(self, chunk: npt.ArrayLike) -> list[np.ndarray]:
        """Add a chunk; returns the frames it completed (each a new array of `frame_samples`)."""
        samples = np.asarray(chunk)
        if samples.ndim != 1:
            raise ValueError(f"expected mono 1-D audio, got shape {samples.shape}")
        if self._pending is not None:
            if samples.dtype != self._pending.dtype:
                # A silent cast would turn float audio in [-1, 1] into int16 zeros; refuse instead.
                raise TypeError(f"this framer holds {self._pending.dtype} audio, got {samples.dtype}")
            samples = np.concatenate([self._pending, samples])
        whole = len(samples) - len(samples) % self.frame_samples
        frames = [samples[i : i + self.frame_samples].copy() for i in range(0, whole, self.frame_samples)]
        # Keep even an empty tail: it carries the dtype for the next push and for flush().
        self._pending = samples[whole:].copy()
        return frames

    def flush(self) -> np.ndarray | None:
        """The incomplete last frame padded with silence, or None when nothing is pending."""
        if not self.pending_samples:
            return None
        frame = np.zeros(self.frame_samples, dtype=self._pending.dtype)
        frame[: self.pending_samples] = self._pending
        self._pending = self._pending[:0]
        return frame

    def reset(self) -> None:
        """Drop the pending partial frame (barge-in: the rest of the utterance is not sent)."""
        if self._pending is not None:
            self._pending = self._pending[:0]


def frames_of(audio: npt.ArrayLike, sample_rate: int, frame_ms: int = FRAME_MS) -> list[np.ndarray]:
    """A whole buffer as frames, the last one padded with silence."""
    framer = Framer(sample_rate, frame_ms)
    frames = framer.push(audio)
    tail = framer.flush()
    return [*frames, tail] if tail is not None else frames
