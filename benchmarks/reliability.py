"""Faults on the call path, with figures: what a caller hears and what the call log keeps when the database
fails under a call.

Each scenario places the same short text calls through the real brain (`AgentRuntime`, template wording,
SQLite in a fresh home) while a fault is injected for real, and reports per scenario: the turns answered,
the time to each reply's first words (p50 / max, seconds: what the caller waits for), the turns stored in
the database once it is back, and what reached it only through the on-disk backlog (`agent/call/backlog.py`).

- `healthy`: no fault (the reference).
- `database refused`: the call log's database refuses every connection for the whole call (a PostgreSQL
  URL on a port where nothing listens); the call is written from the backlog afterwards.
- `database locked N s`: another process holds SQLite's write lock (BEGIN EXCLUSIVE) for N seconds from the
  caller's second line on; the busy timeout makes writers wait, so replies wait too.

    .venv/bin/python benchmarks/reliability.py            # prints the table, writes results/reliability.json
    .venv/bin/python benchmarks/reliability.py --lock-s 3 --calls 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from agent.call.calllog import CallLog
from innkeeper.core.db.database import Database
from innkeeper.core.settings import Settings
from innkeeper.serve.runtime import AgentRuntime

RESULTS = Path(__file__).resolve().parent / "results"
REFUSED = "postgresql+psycopg://innkeeper@127.0.0.1:1/innkeeper"
LINES = ("Do you have parking?", "Is breakfast included?", "What time is check-out?", "Thanks, that's all.")


@dataclass
class Row:
    scenario: str
    calls: int
    turns: int
    answered: int
    reply_p50_s: float
    reply_max_s: float
    stored_at_once: int
    stored_after_backlog: int
    turns_expected: int


async def _one_call(runtime: AgentRuntime, call_log: CallLog | None, on_line: list) -> tuple[str, list[float], int]:
    convo = runtime.new_conversation(caller_number="+12075550142")
    if call_log is not None:
        convo.call_log = call_log
    await convo.greet()
    seconds, answered = [], 0
    for index, line in enumerate(LINES):
        for hook in on_line:
            hook(index)
        started, first = time.perf_counter(), None
        async for chunk in convo.respond(line):
            if first is None and chunk.strip():
                first = time.perf_counter() - started  # what the caller waits for: the reply's first words
        seconds.append(first if first is not None else time.perf_counter() - started)
        answered += first is not None
    await convo.close()
    return convo.planned_call_id, seconds, answered


def _stored(runtime: AgentRuntime, call_ids: list[str]) -> int:
    stored = {c.id for c in runtime.call_log.search(limit=10_000)}
    return sum(len(runtime.call_log.transcript(call_id)) for call_id in call_ids if call_id in stored)


def run_scenario(name: str, calls: int, *, refused: bool = False, lock_s: float = 0.0) -> Row:
    home = Path(tempfile.mkdtemp(prefix="innkeeper-reliability-"))
    settings = Settings(home=home, llm_model="none", today="2026-11-26", registry_poll_s=0)
    runtime = AgentRuntime.from_settings(settings, use_llm=False)
    call_log = CallLog(Database(REFUSED)) if refused else None
    hooks = [_locker(settings, lock_s)] if lock_s else []
    call_ids, seconds, answered = [], [], 0
    for _ in range(calls):
        call_id, times, ok = asyncio.run(_one_call(runtime, call_log, hooks))
        call_ids.append(call_id)
        seconds += times
        answered += ok
    time.sleep(lock_s + 0.5 if lock_s else 0)  # the lock is gone; the database answers again
    at_once = _stored(runtime, call_ids)
    runtime.backlog.drain()
    return Row(
        scenario=name,
        calls=calls,
        turns=len(seconds),
        answered=answered,
        reply_p50_s=statistics.median(seconds),
        reply_max_s=max(seconds),
        stored_at_once=at_once,
        stored_after_backlog=_stored(runtime, call_ids),
        turns_expected=calls * (2 * len(LINES) + 1),
    )


def _locker(settings: Settings, hold_s: float):
    """A hook that, at each call's second line, has another connection hold the write lock for `hold_s`."""
    path = str(Database.from_settings(settings).url.database)

    def hold() -> None:
        connection = sqlite3.connect(path, timeout=30)
        connection.execute("BEGIN EXCLUSIVE")
        time.sleep(hold_s)
        connection.rollback()
        connection.close()

    def on_line(index: int) -> None:
        if index == 1:
            threading.Thread(target=hold, daemon=True).start()
            time.sleep(0.1)  # the lock is taken before the line is said

    return on_line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--lock-s", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "reliability.json")
    args = parser.parse_args()
    rows = [
        run_scenario("healthy", args.calls),
        run_scenario("database refused", args.calls, refused=True),
        run_scenario(f"database locked {args.lock_s:g} s", args.calls, lock_s=args.lock_s),
    ]
    table = Table(title="faults under text calls (template wording, SQLite)")
    for column in ("scenario", "answered", "first words p50/max s", "stored at once", "after backlog"):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    for r in rows:
        table.add_row(
            r.scenario,
            f"{r.answered}/{r.turns}",
            f"{r.reply_p50_s:.2f} / {r.reply_max_s:.2f}",
            f"{r.stored_at_once}/{r.turns_expected}",
            f"{r.stored_after_backlog}/{r.turns_expected}",
        )
    Console(width=80).print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([r.__dict__ for r in rows], indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
