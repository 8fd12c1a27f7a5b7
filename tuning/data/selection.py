"""Step 1 of the nightly curation (`tuning.data.curate`): which logged calls the nightly tuning may learn from.

A call qualifies when it started in the window (after `since`, at or before `now`), ended normally
(`NORMAL_END_REASONS`), was left `included` by the operator, and its caller did not refuse consent (and did
give it, where consent is required). Imported dialogues are the tuning benchmark's, never nightly data. Every
other call is skipped and counted under its first failing reason (`SKIP_REASONS`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from innkeeper.core.db.database import Database
from innkeeper.core.db.schema import Call, Turn
from tuning.data.dialogues import IMPORT_CHANNEL

# How a call may end and still be learned from; None (still running, or the process died) and anything
# else (e.g. "server shutdown") is an interrupted call.
NORMAL_END_REASONS = frozenset({"completed", "transfer", "hangup"})
SPOKEN_ROLES = ("caller", "agent")
SKIP_REASONS = ("imported", "unfinished", "abnormal_end", "excluded", "no_consent", "no_turns")


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class CallTurn:
    """A spoken turn as logged: `tools` are the agent's tool-call records (raw, with personal data)."""

    id: int
    role: str
    text: str
    act: str | None = None
    tools: tuple[dict[str, Any], ...] = ()
    flagged: bool = False


@dataclass(frozen=True)
class CallDialogue:
    """A selected call, oldest turn first."""

    call_id: str
    caller_number: str | None
    started_at: datetime
    turns: tuple[CallTurn, ...]


@dataclass(frozen=True)
class Selection:
    """What `select_calls` found: the calls to learn from, and how many were skipped for which reason."""

    dialogues: list[CallDialogue]
    skipped: dict[str, int]  # reason → calls, every reason in SKIP_REASONS present


def select_calls(
    db: Database,
    *,
    since: datetime | None,
    require_consent: bool,
    now: datetime,
    call_ids: Collection[str] | None = None,
) -> Selection:
    """Calls started in (since, now] that the nightly job may learn from, with their spoken turns (only
    `call_ids` among them, when given)."""
    for name, moment in (("since", since), ("now", now)):
        if moment is not None and moment.tzinfo is None:
            raise ValueError(f"{name}={moment!r} is naive: pass a timezone-aware datetime")
    window = [Call.started_at <= now, *([Call.started_at > since] if since is not None else [])]
    if call_ids is not None:
        window.append(Call.id.in_(list(call_ids)))

    def work(session: Session) -> Selection:
        skipped = dict.fromkeys(SKIP_REASONS, 0)
        wanted: dict[str, Call] = {}
        for call in session.scalars(select(Call).where(*window).order_by(Call.started_at, Call.id)):
            reason = _skip_reason(call, require_consent)
            if reason:
                skipped[reason] += 1
            else:
                wanted[call.id] = call
        turns: dict[str, list[CallTurn]] = {call_id: [] for call_id in wanted}
        rows = session.scalars(
            select(Turn)
            .join(Call, Turn.call_id == Call.id)
            .where(*window, Call.channel != IMPORT_CHANNEL, Turn.role.in_(SPOKEN_ROLES))
            .order_by(Turn.call_id, Turn.index)
        )
        for row in rows:
            if row.call_id in turns and row.text.strip():
                turns[row.call_id].append(_call_turn(row))
        dialogues = []
        for call_id, call in wanted.items():
            if turns[call_id]:
                dialogues.append(CallDialogue(call_id, call.caller_number, call.started_at, tuple(turns[call_id])))
            else:
                skipped["no_turns"] += 1
        return Selection(dialogues, skipped)

    return db.transact(work, write=False)


def _skip_reason(call: Call, require_consent: bool) -> str | None:
    """Why a call is not nightly data (the first reason that applies), or None."""
    if call.channel == IMPORT_CHANNEL:
        return "imported"
    if call.end_reason is None:
        return "unfinished"
    if call.end_reason not in NORMAL_END_REASONS:
        return "abnormal_end"
    if call.training != "included":
        return "excluded"
    # A caller who said no is never learned from; an unknown answer only counts when consent is required.
    if call.consent is False or (require_consent and call.consent is not True):
        return "no_consent"
    return None


def _call_turn(row: Turn) -> CallTurn:
    records = [r for r in row.tool_calls or [] if isinstance(r, dict)]
    act = next((r["meta"].get("act") for r in records if isinstance(r.get("meta"), dict)), None)
    tools = tuple(r for r in records if "tool" in r)
    return CallTurn(row.id, row.role, row.text.strip(), act, tools, bool(row.flagged))
