"""Live calls for the dashboard: every call's transcript lines, barge-ins and hand-offs as they happen.

`WatchedTransport` wraps a call's transport (Twilio or plain) and tells the `LiveFeed` what the voice loop
sends through it; the feed fans events out to each subscribed page (server-sent events, `/live/events`).
A slow page loses events rather than slowing a call: each subscriber has a bounded queue. With several
workers, `innkeeper.serve.live_bridge` relays each worker's events to the others' feeds (`relay`, `receive`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.call.voice_config import CallTransport

SUBSCRIBER_QUEUE = 500
RECENT_EVENTS = 2000  # replayed to a page that opens mid-call, so it sees the call from its start


class LiveFeed:
    """Publish live call events; subscribers each get their own bounded queue."""

    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self.dropped = 0  # events a slow page did not get
        self.relay: Callable[[dict[str, Any]], None] | None = None  # to the other workers (never blocks)
        self.remote_calls: set[str] = set()  # calls live on other workers, as their events tell

    def publish(self, call_id: str, kind: str, **fields: Any) -> None:
        """An event of a call on this worker: to this worker's pages, and relayed to the other workers."""
        event = {"call_id": call_id, "type": kind, "at": time.time(), **fields}
        self._fan_out(event)
        if self.relay is not None:
            self.relay(event)

    def receive(self, event: dict[str, Any]) -> None:
        """An event of a call on another worker (from the bridge): to this worker's pages only."""
        if not isinstance(event.get("call_id"), str) or not isinstance(event.get("type"), str):
            return
        if event["type"] == "call_started":
            self.remote_calls.add(event["call_id"])
        self._fan_out(event)
        if event["type"] == "call_ended":
            self.remote_calls.discard(event["call_id"])
            self.forget(event["call_id"])

    def _fan_out(self, event: dict[str, Any]) -> None:
        self._recent.append(event)
        for queue in self._subscribers:
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self.dropped += 1

    def forget(self, call_id: str) -> None:
        """Drop an ended call's replay history."""
        kept = [event for event in self._recent if event["call_id"] != call_id]
        self._recent.clear()
        self._recent.extend(kept)

    @asynccontextmanager
    async def subscribe(self, live_calls: set[str]) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        """A queue that starts with the recent events of the calls still live, then follows new ones."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(SUBSCRIBER_QUEUE)
        live_calls = live_calls | self.remote_calls
        for event in self._recent:
            if event["call_id"] in live_calls and not queue.full():
                queue.put_nowait(event)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)


class WatchedTransport:
    """A call transport that reports to the live feed what passes through it (and otherwise just forwards)."""

    def __init__(self, inner: CallTransport, feed: LiveFeed, call_id: str) -> None:
        self.inner = inner
        self.feed = feed
        self.call_id = call_id
        self.rate = inner.rate
        self.reports_playback = getattr(inner, "reports_playback", False)

    async def send_audio(self, frame: npt.NDArray[np.int16]) -> None:
        await self.inner.send_audio(frame)

    async def start_segment(self, mark: str, text: str) -> None:
        await self.inner.start_segment(mark, text)

    async def end_segment(self, mark: str) -> None:
        await self.inner.end_segment(mark)

    async def clear(self) -> None:
        self.feed.publish(self.call_id, "barge_in")
        await self.inner.clear()

    async def transcript(self, role: str, text: str, final: bool) -> None:
        self.feed.publish(self.call_id, "transcript", role=role, text=text, final=final)
        await self.inner.transcript(role, text, final)

    async def transfer(self, reason: str) -> None:
        self.feed.publish(self.call_id, "transfer", reason=reason)
        await self.inner.transfer(reason)

    async def hang_up(self) -> None:
        await self.inner.hang_up()

    def __getattr__(self, name: str) -> Any:  # protocol extras (ready, error, stream_sid) pass through
        return getattr(self.inner, name)
