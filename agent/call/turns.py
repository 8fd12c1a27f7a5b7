"""Which conversation turns are open right now: what a model loader waits for before it takes the cores."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator

TURN_BUSY_MAX_S = 60.0  # a turn open longer than this no longer holds a loader back (a consumer that never closed)


class TurnsInProgress:
    """Which conversation turns are being worked on now, from the caller's words to the reply's last chunk.

    A loader waits while any is open: in a text turn the model generates only for part of it (understanding,
    the database, the call log come first), and a loader running through those parts slowed each turn by
    ~60 ms here (`benchmarks/nightly.py --calls`). Thread-safe; a turn left open (a stream never closed)
    stops counting after `TURN_BUSY_MAX_S`, so it cannot hold a swap back for ever.
    """

    def __init__(self) -> None:
        self._open: dict[int, float] = {}
        self._lock = threading.Lock()
        self._next = itertools.count()

    @contextlib.contextmanager
    def during(self) -> Iterator[None]:
        key = next(self._next)
        with self._lock:
            self._open[key] = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._open.pop(key, None)

    def __bool__(self) -> bool:
        oldest = time.monotonic() - TURN_BUSY_MAX_S
        with self._lock:
            return any(started > oldest for started in self._open.values())
