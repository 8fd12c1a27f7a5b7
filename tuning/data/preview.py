"""What the nightly run would learn from one call — the curation (`tuning.data.curate`) applied to that call
alone, for the operator's call page: whether the call is selected (and why not), its turns as redaction leaves
them, which agent turns the policy filter cuts and why, and the reading examples its caller turns give.

Only what depends on the call itself is judged here: the per-caller cap and deduplication compare calls
with each other, so they are the nightly run's to apply. The serving layer cannot import tuning (the layers
in `.importlinter`), so `innkeeper serve` hands this function to the web app.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from innkeeper.core.db.database import Database
from innkeeper.core.db.schema import utcnow
from innkeeper.core.hotel import load_hotel
from innkeeper.core.settings import Settings
from tuning.data.actions import action_text
from tuning.data.curate import agent_turn_verdicts, call_readings, filter_for_training, hotel_terms
from tuning.data.redact import Dropped, redact_dialogue
from tuning.data.selection import select_calls

LEARNED, NOT_LEARNED = "learned", "not learned"


@dataclass(frozen=True)
class TurnPreview:
    """One spoken turn as training would see it."""

    turn_id: int
    role: str
    text: str  # after redaction
    status: str  # "learned" (an agent turn trained on), "context" (caller words read), or why it is left out
    reading: str | None = None  # the reading example this caller turn gives (compact JSON), if any


@dataclass(frozen=True)
class CallPreview:
    call_id: str
    verdict: str  # "learned", or "skipped: <reason>" / "dropped: <reason>" (then no turns are shown)
    turns: list[TurnPreview] = field(default_factory=list)
    replaced: dict[str, int] = field(default_factory=dict)  # placeholder → how many redaction put in

    @property
    def learned(self) -> bool:
        return self.verdict == LEARNED


def preview_call(db: Database, settings: Settings, call_id: str, *, now: datetime | None = None) -> CallPreview:
    """The curation's verdict on one call, turn by turn (a call not in the database is 'skipped: not found')."""
    selection = select_calls(
        db, since=None, require_consent=settings.nightly_require_consent, now=now or utcnow(), call_ids=[call_id]
    )
    if not selection.dialogues:
        reason = next((r for r, n in selection.skipped.items() if n), "not found")
        return CallPreview(call_id, f"skipped: {reason.replace('_', ' ')}")
    hotel = load_hotel(settings.hotel_file)
    keep_words, keep_numbers = hotel_terms(hotel)
    redacted = redact_dialogue(selection.dialogues[0], keep_words=keep_words, keep_numbers=keep_numbers)
    if isinstance(redacted, Dropped):
        return CallPreview(call_id, f"dropped: {redacted.reason.replace('_', ' ')}")
    filtered = filter_for_training([redacted], max_calls_per_caller=1)
    kept = {t.id for d in filtered.dialogues for t in d.turns}
    corrected, confirmed = call_readings(db, settings, hotel, filtered.dialogues)
    readings = {int(e.example_id.rsplit("#", 1)[1]): action_text(e.action) for e in [*corrected, *confirmed]}
    verdicts = dict(agent_turn_verdicts(redacted, set()))
    first_bad = min((i for i, reason in verdicts.items() if reason), default=None)
    turns = []
    for i, turn in enumerate(redacted.turns):
        if turn.id in kept:
            status = LEARNED if turn.role == "agent" else "context"
        elif verdicts.get(i):
            status = f"cut: {verdicts[i].replace('_', ' ')}"
        elif first_bad is not None and i > first_bad:
            status = "cut: after a cut turn"
        elif first_bad is not None and all(t.role == "caller" for t in redacted.turns[i:first_bad]):
            status = "not learned: its reply is cut"
        else:
            status = "not learned: no reply follows"
        turns.append(TurnPreview(turn.id, turn.role, turn.text, status, readings.get(turn.id)))
    verdict = LEARNED if filtered.dialogues else f"{NOT_LEARNED}: nothing left to learn"
    return CallPreview(call_id, verdict, turns, dict(redacted.replaced))
