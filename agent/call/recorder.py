"""Call recording: both legs of a call as 16-bit mono WAV files on one clock.

The caller leg is written as it arrives (it is continuous); the agent leg is written when each frame is
sent and padded with silence up to that moment, so the two files line up when played side by side.
"""

from __future__ import annotations

import time
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt


class CallRecorder:
    """Both legs of a call as 16-bit WAV files, aligned on the call's clock (silence where a leg is quiet)."""

    def __init__(
        self,
        directory: Path,
        call_id: str,
        *,
        caller_rate: int,
        agent_rate: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.caller_path = directory / f"{call_id}-caller.wav"
        self.agent_path = directory / f"{call_id}-agent.wav"
        self._clock = clock
        self._t0 = clock()
        self._legs: dict[str, tuple[wave.Wave_write | None, int]] = {
            "caller": (_open_wav(self.caller_path, caller_rate), caller_rate),
            "agent": (_open_wav(self.agent_path, agent_rate), agent_rate),
        }
        self._written = {"caller": 0, "agent": 0}

    def caller(self, pcm16: npt.NDArray[np.int16]) -> None:
        self._write("caller", pcm16, align=False)  # the caller leg is continuous already

    def agent(self, pcm16: npt.NDArray[np.int16], at: float) -> None:
        self._write("agent", pcm16, align=True, at=at)

    def _write(self, leg: str, pcm16: npt.NDArray[np.int16], *, align: bool, at: float | None = None) -> None:
        handle, rate = self._legs[leg]
        if handle is None:
            return
        if align and at is not None:
            gap = int((at - self._t0) * rate) - self._written[leg]
            if gap > 0:
                handle.writeframes(np.zeros(gap, dtype="<i2").tobytes())
                self._written[leg] += gap
        handle.writeframes(np.asarray(pcm16, dtype="<i2").tobytes())
        self._written[leg] += len(pcm16)

    def close(self) -> None:
        for leg, (handle, rate) in list(self._legs.items()):
            if handle is not None:
                handle.close()
            self._legs[leg] = (None, rate)


def _open_wav(path: Path, rate: int) -> wave.Wave_write:
    handle = wave.open(str(path), "wb")  # noqa: SIM115 -- stays open for the whole call, closed by close()
    handle.setnchannels(1)
    handle.setsampwidth(2)
    handle.setframerate(rate)
    return handle
