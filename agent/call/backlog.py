"""Call records the database could not take by the time the call ended, kept on local disk until it can.

A call in progress keeps unsaved turns in memory while the database is down (`Conversation._flush`); when the
call ends with turns still unsaved, or its end unrecorded, they come here: one JSON file per call, written
atomically under `INNKEEPER_HOME/backlog`, so neither the end of the call nor a restart of the server loses
them. `drain()` writes each file's call in one transaction (`CallLog.restore`, which skips turns already
stored) and then deletes the file; the server drains at start-up and every `INNKEEPER_BACKLOG_RETRY_S`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.call.calllog import CallLog

log = logging.getLogger(__name__)


@dataclass
class UnsavedTurn:
    role: str
    text: str
    started_at: datetime
    ended_at: datetime
    model_version: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    latencies: dict[str, float] | None = None


@dataclass
class UnsavedCall:
    """What a call could not store: its record (if never opened), its unsaved turns, and how it ended."""

    call_id: str
    channel: str
    caller_number: str | None
    model_version: str | None
    meta: dict[str, Any]
    started_at: datetime
    ended_at: datetime
    end_reason: str
    turns: list[UnsavedTurn] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=_iso)

    @classmethod
    def from_json(cls, text: str) -> UnsavedCall:
        data = json.loads(text)
        for key in ("started_at", "ended_at"):
            data[key] = datetime.fromisoformat(data[key])
        turns = [UnsavedTurn(**t) for t in data.pop("turns")]
        for turn in turns:
            turn.started_at = datetime.fromisoformat(str(turn.started_at))
            turn.ended_at = datetime.fromisoformat(str(turn.ended_at))
        return cls(**data, turns=turns)


class CallBacklog:
    """The unsaved calls of this server, as files; written to the database when it answers again."""

    def __init__(self, directory: Path, call_log: CallLog) -> None:
        self.directory = Path(directory)
        self.call_log = call_log

    def keep(self, call: UnsavedCall) -> Path:
        """Store one call's unsaved part on disk (atomically: a crash leaves the old file or the new one)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{call.call_id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(call.to_json())
        tmp.replace(path)
        log.warning("call %s: %d turn(s) kept in %s until the database answers", call.call_id, len(call.turns), path)
        return path

    def pending(self) -> list[Path]:
        return sorted(self.directory.glob("*.json")) if self.directory.is_dir() else []

    def drain(self) -> int:
        """Write every kept call to the database, oldest file first; stop at the first database error (the rest
        wait for the next try). A file that cannot be parsed is moved aside (`.bad`), never retried forever.
        Returns how many calls were written."""
        written = 0
        for path in self.pending():
            try:
                call = UnsavedCall.from_json(path.read_text())
            except (OSError, ValueError, TypeError, KeyError) as err:
                log.error("backlog file %s is unreadable (%s); moved aside", path, err)
                path.replace(path.with_suffix(".bad"))
                continue
            try:
                self.call_log.restore(call)
            except Exception as err:  # the database is still away: keep the file, try again later
                log.warning("backlog: database still unavailable (%s); %d call(s) waiting", err, len(self.pending()))
                break
            path.unlink(missing_ok=True)
            written += 1
        if written:
            log.info("backlog: %d call(s) written to the database", written)
        return written

    async def keep_draining(self, every_s: float) -> None:
        """Drain now and then every `every_s` seconds, off the event loop (the server's background task)."""
        while True:
            if self.pending():
                await asyncio.to_thread(self.drain)
            await asyncio.sleep(every_s)


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
