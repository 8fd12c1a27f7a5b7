"""Sliding-window limits: at most N events per key (a user name, an address, a caller's number) in a window.

Used for failed sign-ins (`serve/auth.py`) and for call starts per source (`serve/calls.py`, the webhook).
In memory, per server process: a limit for one worker, not for a fleet.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque


class SlidingWindow:
    """At most `limit` events per key in the last `window_s` seconds; `limit` 0 means no limit."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._events: dict[str, deque[float]] = defaultdict(deque)

    def full(self, key: str) -> bool:
        """Whether `key` has used up its events for now."""
        if self.limit <= 0:
            return False
        events = self._events[key]
        cutoff = time.monotonic() - self.window_s
        while events and events[0] < cutoff:
            events.popleft()
        if not events:
            del self._events[key]  # keys come from the outside: keep none that have nothing to say
            return False
        return len(events) >= self.limit

    def add(self, key: str) -> None:
        if self.limit > 0:
            self._events[key].append(time.monotonic())

    def allow(self, key: str) -> bool:
        """Count one event for `key` if it has room; False (nothing counted) when it is full."""
        if self.full(key):
            return False
        self.add(key)
        return True

    def clear(self, key: str) -> None:
        self._events.pop(key, None)

    def retry_after_s(self, key: str) -> int:
        events = self._events.get(key)
        return int(events[0] + self.window_s - time.monotonic()) + 1 if events else 0
