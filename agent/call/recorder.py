"""Call recording: both legs of a call as 16-bit mono WAV files on one clock.

The caller leg is written as it arrives (it is continuous); the agent leg is written when each frame is
sent and padded with silence up to that moment, so the two files line up when played side by side.

A recording is never worth a call: a leg that cannot be written (disk full, directory gone, permissions) stops
recording, its error is kept in `errors` (the call record says the recording is incomplete), and the call goes on.
"""

from __future__ import annotations

import contextlib
import logging
import time
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)


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
        self.call_id = call_id
        self.caller_path = directory / f"{call_id}-caller.wav"
        self.agent_path = directory / f"{call_id}-agent.wav"
        self._clock = clock
        self._t0 = clock()
        self.errors: dict[str, str] = {}  # leg → why it stopped recording
        self._legs: dict[str, tuple[wave.Wave_write | None, int]] = {
            "caller": (None, caller_rate),
            "agent": (None, agent_rate),
        }
        self._written = {"caller": 0, "agent": 0}
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            self._fail("caller", err)
            self._fail("agent", err)
            return
        for leg, path in (("caller", self.caller_path), ("agent", self.agent_path)):
            try:
                self._legs[leg] = (_open_wav(path, self._legs[leg][1]), self._legs[leg][1])
            except OSError as err:
                self._fail(leg, err)

    def caller(self, pcm16: npt.NDArray[np.int16]) -> None:
        self._write("caller", pcm16, align=False)  # the caller leg is continuous already

    def agent(self, pcm16: npt.NDArray[np.int16], at: float) -> None:
        self._write("agent", pcm16, align=True, at=at)

    def _write(self, leg: str, pcm16: npt.NDArray[np.int16], *, align: bool, at: float | None = None) -> None:
        handle, rate = self._legs[leg]
        if handle is None:
            return
        try:
            if align and at is not None:
                gap = int((at - self._t0) * rate) - self._written[leg]
                if gap > 0:
                    handle.writeframes(np.zeros(gap, dtype="<i2").tobytes())
                    self._written[leg] += gap
            handle.writeframes(np.asarray(pcm16, dtype="<i2").tobytes())
            self._written[leg] += len(pcm16)
        except OSError as err:
            self._fail(leg, err)

    def close(self) -> None:
        for leg, (handle, rate) in list(self._legs.items()):
            self._legs[leg] = (None, rate)
            if handle is not None:
                try:
                    handle.close()  # writes the header's final sizes: the last place a full disk shows
                except OSError as err:
                    self._fail(leg, err)

    @property
    def complete(self) -> bool:
        """Both legs recorded without an error so far."""
        return not self.errors

    def _fail(self, leg: str, err: OSError) -> None:
        """Stop recording this leg; the call goes on."""
        if leg in self.errors:
            return
        self.errors[leg] = f"{type(err).__name__}: {err.strerror or err}"
        log.error("call %s: %s leg no longer recorded: %s", self.call_id, leg, self.errors[leg])
        handle, rate = self._legs[leg]
        self._legs[leg] = (None, rate)
        if handle is not None:
            with contextlib.suppress(OSError):  # the same fault again: what was written stays
                handle.close()


def _open_wav(path: Path, rate: int) -> wave.Wave_write:
    handle = wave.open(str(path), "wb")  # noqa: SIM115 -- stays open for the whole call, closed by close()
    handle.setnchannels(1)
    handle.setsampwidth(2)
    handle.setframerate(rate)
    return handle
