"""The workers' PostgreSQL channels: each worker's call events go out on a channel (NOTIFY) and every other
worker's feed takes them in (LISTEN), so a dashboard page served by any worker shows every live call; staff
take over a call another worker holds over the same channel; and a change of the registry's serving version,
announced by whichever process made it (`innkeeper.models.registry.SERVING_CHANGED`), reaches every worker
at once instead of at its next registry poll.

Only where the database is PostgreSQL (several workers share it); an SQLite deployment is one process. The
bridge never touches the call path: `LiveFeed.publish` hands it the event without waiting, a full outbox drops
the event (counted), and a database that is down is retried in the background while calls go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from innkeeper.models.registry import SERVING_CHANGED
from innkeeper.serve.live import LiveFeed

log = logging.getLogger(__name__)

CHANNEL = "innkeeper_live"
TAKE_OVER = "take_over"  # a command between workers, not an event for the pages
OUTBOX = 1000
MAX_PAYLOAD = 7900  # NOTIFY payloads stop at 8000 bytes: a longer line is cut, never the event
RETRY_S = 5.0


def conninfo(database_url: str) -> str | None:
    """The libpq connection string for a PostgreSQL SQLAlchemy URL; None for any other database."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        return None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class LiveBridge:
    """Relays one worker's live events to the others through PostgreSQL, and theirs into its feed."""

    def __init__(
        self,
        feed: LiveFeed,
        conninfo: str,
        origin: str,
        take_over: Callable[[str, str], bool] | None = None,
        serving_changed: Callable[[str], None] | None = None,
    ) -> None:
        """`take_over(call_id, reason)`: hand a call this worker holds to staff (asked by another worker's page);
        `serving_changed(version_id)`: the registry serves another version now ("" = the base model)."""
        self.feed, self.conninfo, self.origin = feed, conninfo, origin
        self.take_over = take_over
        self.serving_changed = serving_changed
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(OUTBOX)
        self._tasks: list[asyncio.Task[None]] = []
        self.dropped = 0  # events not relayed: the outbox was full
        self.received = 0
        self.listening = asyncio.Event()  # set while the LISTEN connection is open

    def start(self) -> None:
        self.feed.relay = self._relay
        self._tasks = [
            asyncio.create_task(self._keep(self._listen), name="live-bridge-listen"),
            asyncio.create_task(self._keep(self._send), name="live-bridge-send"),
        ]

    async def stop(self) -> None:
        self.feed.relay = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _relay(self, event: dict[str, Any]) -> None:
        try:
            self._outbox.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1

    async def _keep(self, work) -> None:
        """Run `work` for as long as the bridge lives: a lost connection is opened again after RETRY_S."""
        while True:
            try:
                await work()
            except (psycopg.Error, OSError) as err:
                self.listening.clear()
                log.warning("live bridge: %s; retrying in %.0f s", err, RETRY_S)
            await asyncio.sleep(RETRY_S)

    async def _listen(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            await conn.execute(f"LISTEN {SERVING_CHANGED}")
            self.listening.set()
            async for notice in conn.notifies():
                if notice.channel == SERVING_CHANGED:
                    if self.serving_changed is not None:
                        self.serving_changed(notice.payload)
                    continue
                with contextlib.suppress(ValueError, TypeError):
                    event = json.loads(notice.payload)
                    if event.pop("origin", None) == self.origin:
                        continue
                    if event.get("type") == TAKE_OVER:
                        if self.take_over is not None:
                            self.take_over(str(event["call_id"]), str(event.get("reason", "taken over")))
                        continue
                    self.received += 1
                    self.feed.receive(event)

    def ask_to_take_over(self, call_id: str, reason: str) -> bool:
        """Ask the worker holding `call_id` (a call live elsewhere) to hand it to staff; False if it is unknown."""
        if call_id not in self.feed.remote_calls:
            return False
        self._relay({"call_id": call_id, "type": TAKE_OVER, "reason": reason})
        return True

    async def _send(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
            while True:
                event = await self._outbox.get()
                await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, _payload(event, self.origin)))


def _payload(event: dict[str, Any], origin: str) -> str:
    payload = json.dumps({**event, "origin": origin})
    if len(payload.encode()) <= MAX_PAYLOAD:
        return payload
    text = str(event.get("text", "")).encode()
    keep = max(0, len(text) - (len(payload.encode()) - MAX_PAYLOAD) - 8)
    return json.dumps({**event, "text": text[:keep].decode(errors="ignore") + "…", "origin": origin})
