"""Text to speech: the bundled Piper voice turned into int16 audio, whole or one sentence at a time.

One `Synthesizer` per process, shared by all calls: Piper's voice object holds one onnxruntime session
and eSpeak's phonemizer, which keeps global state, so each sentence is synthesised under a lock.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime
from piper import PiperConfig, PiperVoice, SynthesisConfig

from agent.speech.speed import RealTimeFactor


class Synthesizer:
    """A Piper voice: `synthesize(text)` for a whole reply, `stream(text)` to speak sentence by sentence."""

    def __init__(self, onnx_path: Path | str, *, threads: int = 1, volume: float = 0.9, variation: bool = True) -> None:
        """`variation=False` turns off the voice's random prosody so that the same text always gives the same
        samples (tests, benchmarks); callers hear the natural, slightly varying voice."""
        self.voice = _load_voice(Path(onnx_path), threads)
        self.sample_rate: int = self.voice.config.sample_rate
        # The prosody noise is drawn inside the ONNX graph and ignores onnxruntime.set_seed: zero is the only seed.
        noise = {} if variation else {"noise_scale": 0.0, "noise_w_scale": 0.0}
        # Piper scales every sentence to peak 1.0; a little headroom keeps resampling overshoot from clipping.
        self._config = SynthesisConfig(normalize_audio=True, volume=volume, **noise)
        self._lock = threading.Lock()
        self.speed = RealTimeFactor()  # synthesis time per second of speech made

    def stream(self, text: str) -> Iterator[npt.NDArray[np.int16]]:
        """One int16 array per sentence, each ready as soon as it is synthesised (say the first one early)."""
        chunks = iter(self.voice.synthesize(text, self._config))
        while True:
            # Lock per sentence, not per reply: a slow consumer must not block the other calls.
            with self._lock, self.speed.timing() as made:
                chunk = next(chunks, None)
                if chunk is not None:
                    made.append(len(chunk.audio_int16_array) / self.sample_rate)
            if chunk is None:
                return
            yield chunk.audio_int16_array

    @property
    def busy(self) -> bool:
        """Whether a synthesis is running now."""
        return self._lock.locked()

    def synthesize(self, text: str) -> tuple[npt.NDArray[np.int16], int]:
        """The whole text as one int16 array, and its sample rate (22050 for the bundled voice)."""
        sentences = list(self.stream(text))
        audio = np.concatenate(sentences) if sentences else np.zeros(0, dtype=np.int16)
        return audio.astype(np.int16, copy=False), self.sample_rate


def _load_voice(onnx_path: Path, threads: int) -> PiperVoice:
    """`PiperVoice.load`, but with a thread-limited onnxruntime session (the CPU is shared with ASR and LLM)."""
    config = PiperConfig.from_dict(json.loads(Path(f"{onnx_path}.json").read_text(encoding="utf-8")))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    return PiperVoice(session=session, config=config)
