"""Sample-rate conversion between the rates a call uses: 8000 (phone), 16000 (ASR), 22050 (Piper TTS).

`StreamResampler` is one stateful soxr stream per call and direction, fed chunk by chunk; `resample`
converts a whole buffer at once. Both take int16 or float32 and return the dtype they were given
(soxr works in float32 inside, so int16 is rounded and clipped exactly once, on the way out).

Latency (measured with 20 ms input chunks, soxr 1.1): the default HQ filter releases its output in
bursts, so the audio it has emitted trails the input by 12-115 ms for 8000->16000 and 13-80 ms for
22050->8000. `low_latency=True` uses soxr's variable-rate engine instead, which emits every chunk at
once with a constant delay (30 ms for 8000->16000, 15 ms for 16000->8000, 27 ms for 22050->8000) and
the same passband and >100 dB alias rejection; soxr calls that engine experimental, and when
downsampling it shifts the signal by a few output samples relative to `resample`. Use it where
reaction time matters (caller audio into VAD/ASR), keep HQ where whole utterances are converted.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr

from telephony.codec import float32_to_pcm16, pcm16_to_float32

PHONE_RATE = 8000
ASR_RATE = 16000
PIPER_RATE = 22050

Audio = npt.NDArray[np.int16] | npt.NDArray[np.float32]


def _to_float32(audio: npt.ArrayLike) -> tuple[npt.NDArray[np.float32], bool]:
    """Mono audio as float32, and whether it came in as int16 (so the output goes back to int16)."""
    array = np.asarray(audio)
    if array.ndim != 1:
        raise ValueError(f"expected mono 1-D audio, got shape {array.shape}")
    if array.dtype == np.int16:
        return pcm16_to_float32(array), True
    if array.dtype in (np.float32, np.float64):
        return array.astype(np.float32, copy=False), False
    raise TypeError(f"expected int16 or float32 audio, got {array.dtype}")


def _from_float32(audio: npt.NDArray[np.float32], as_pcm16: bool) -> Audio:
    return float32_to_pcm16(audio) if as_pcm16 else audio


def _check_rates(in_rate: int, out_rate: int) -> None:
    if in_rate <= 0 or out_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")


def resample(audio: npt.ArrayLike, in_rate: int, out_rate: int, quality: str = "HQ") -> Audio:
    """One-shot conversion of a whole buffer; the output has round(len * out_rate / in_rate) samples."""
    _check_rates(in_rate, out_rate)
    samples, as_pcm16 = _to_float32(audio)
    if in_rate == out_rate:
        return _from_float32(samples.copy(), as_pcm16)
    return _from_float32(soxr.resample(samples, in_rate, out_rate, quality=quality), as_pcm16)


class StreamResampler:
    """Chunk-by-chunk conversion for one audio stream (one per call and direction: it keeps filter state).

    `process(chunk)` returns whatever output is ready (possibly nothing yet); `process(chunk, last=True)`
    or `flush()` drains the filter at the end of an utterance and makes the resampler ready for the next
    one; `reset()` drops pending audio without emitting it (barge-in).
    """

    def __init__(self, in_rate: int, out_rate: int, quality: str = "HQ", low_latency: bool = False) -> None:
        _check_rates(in_rate, out_rate)
        self.in_rate = in_rate
        self.out_rate = out_rate
        # soxr's variable-rate engine ignores `quality`; it is the low-latency option (see module doc).
        self._stream = None
        if in_rate != out_rate:
            self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=quality, vr=low_latency)

    def process(self, chunk: npt.ArrayLike, last: bool = False) -> Audio:
        """Feed one chunk (int16 or float32); returns the output ready so far, in the chunk's dtype."""
        samples, as_pcm16 = _to_float32(chunk)
        if self._stream is None:
            return _from_float32(samples.copy(), as_pcm16)
        out = self._stream.resample_chunk(samples, last=last)
        if last:
            # soxr refuses input after `last`; clearing makes the same object reusable for the next utterance.
            self._stream.clear()
        return _from_float32(out, as_pcm16)

    def flush(self, dtype: type[np.int16] | type[np.float32] = np.int16) -> Audio:
        """Emit the audio still inside the filter (end of utterance), in `dtype`."""
        return self.process(np.zeros(0, dtype=dtype), last=True)

    def reset(self) -> None:
        """Forget pending input without emitting it (the caller barged in; the rest is never played)."""
        if self._stream is not None:
            self._stream.clear()
