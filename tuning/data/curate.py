"""What the nightly tuning may learn from: logged calls → redacted, policy-clean training dialogues.

The whole path, in the order `curate` runs it:

1. **Select** (`tuning.data.selection.select_calls`): calls in the window that ended normally, that the
   operator left `included`, whose caller did not refuse consent (and did give it, where consent is
   required). Imported dialogues are the tuning benchmark's, never nightly data. Every other call is
   skipped and counted under its first failing reason.
2. **Redact** (`tuning.data.redact.redact_dialogue`, with the finders in `tuning.data.pii`): card numbers,
   phone numbers, e-mail addresses, names and booking codes become `[CARD]`, `[PHONE]`, `[EMAIL]`, `[NAME]`,
   `[CODE]` in caller *and* agent turns. A call in which a looser scan still finds any of them afterwards is
   dropped whole: redaction rewrites only what it can delimit exactly, and what it cannot is not kept.
3. **Filter** (`filter_for_training`, here): only agent turns are ever learned (`tuning.data.dialogues.build_examples`
   labels assistant messages only; caller text is context). An agent turn that breaks a policy — states
   booking details or a code the call never created or verified with code + surname, complies with a
   harmful request, reads back a card number, or was flagged by an operator — is dropped together with
   everything after it: the dialogue is kept up to the turn before it. Cutting rather than removing the
   one turn keeps the rest coherent: later agent turns answer a context that contained the bad turn, and
   would teach the model to carry on from a leak as if nothing happened. Then identical dialogues
   (normalised text) are kept once and each caller number keeps only its most recent calls.
4. **Readings** of the caller turns that survived the steps above, in the redacted words: each operator
   correction becomes an example (`tuning.data.actions.correction_examples`), and the turns of a call that made
   a booking are labelled by that booking, which the caller confirmed at the read-back
   (`tuning.data.confirmed`); an operator's correction of the same turn wins.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from functools import partial
from zoneinfo import ZoneInfo

from agent.call.review import Corrections
from agent.dialogue import policy
from innkeeper.core.db.database import Database
from innkeeper.core.db.schema import utcnow
from innkeeper.core.hotel import HotelProfile, load_hotel
from innkeeper.core.settings import Settings
from tuning.data.actions import ActionExample, correction_examples
from tuning.data.confirmed import confirmed_readings
from tuning.data.dialogues import Dialogue
from tuning.data.pii import CARD, CODE, PLACEHOLDERS
from tuning.data.redact import DROP_REASONS, Dropped, RedactedDialogue, RedactedTurn, redact_dialogue
from tuning.data.selection import select_calls
from tuning.refusals import is_refusal

TURN_REASONS = ("flagged", "card_readback", "booking_leak", "harmful_compliance")

# Dialogue acts that talk about an existing booking: the dialogue only reaches them after a lookup by code
# and surname succeeded (agent/dialogue/existing_booking.py), so logged without one they are a leak.
EXISTING_BOOKING_ACTS = frozenset(
    {"lookup", "confirm_cancel", "ask_change", "confirm_modify", "modified", "invalid_change", "modify_failed"}
    | {"cancelled", "cancel_failed", "keep_booking"}
)
# Acts that read back the caller's own new booking (the details they just gave).
OWN_BOOKING_ACTS = frozenset({"read_back", "booked"})
# Tool calls whose success shows the call may talk about that booking: it made it, or verified it.
_AUTHORISING_TOOLS = frozenset({"create_booking", "lookup_booking", "modify_booking", "cancel_booking"})


@dataclass(frozen=True)
class FilterResult:
    """The dialogues kept (oldest first) and how many turns and dialogues each rule left out."""

    dialogues: list[RedactedDialogue]
    counts: dict[str, int]


@dataclass(frozen=True)
class CurationReport:
    """The training dialogues of one curation, the calls they came from, and what was left out and why."""

    dialogues: list[Dialogue]
    call_ids: list[str]
    counts: dict[str, int]
    readings: list[ActionExample] = field(default_factory=list)  # operator-corrected readings of these calls


# ---------------------------------------------------------------- filtering


_BOOKING_TALK = re.compile(
    r"\b(?:I found (?:it|the|your|her|his|their)|(?:booking|reservation)s? (?:is |are )?(?:under|for)"
    r"|(?:is|are) (?:staying|booked|checked in)|(?:her|his|their) (?:booking|reservation|room|stay)|room number)\b",
    re.I,
)
_STAY_FACT = re.compile(
    r"\b(?:January|February|March|April|May|June|July|August|September|October|November|December)\s+\d{1,2}\b"
    r"|\$\s?\d|\b\d+ nights?\b|\b(?:arriving|leaving|checking (?:in|out))\b|\[CODE\]",
    re.I,
)


def filter_for_training(
    dialogues: Sequence[RedactedDialogue], *, max_calls_per_caller: int, flagged_turns: Collection[int] = frozenset()
) -> FilterResult:
    """Dialogues cut before their first policy-breaking agent turn, deduplicated, capped per caller."""
    if max_calls_per_caller < 1:
        raise ValueError(f"max_calls_per_caller must be at least 1, got {max_calls_per_caller}")
    counts = dict.fromkeys([f"turns_dropped_{r}" for r in TURN_REASONS], 0)
    counts |= {"turns_cut_after_drop": 0, "no_target": 0, "duplicates": 0, "capped": 0}
    kept: list[RedactedDialogue] = []
    for dialogue in dialogues:
        cut = _cut(dialogue, set(flagged_turns), counts)
        if cut is None:
            counts["no_target"] += 1
        else:
            kept.append(cut)
    newest_first = sorted(kept, key=lambda d: (d.started_at, d.call_id), reverse=True)
    unique, seen = [], set()
    for d in newest_first:
        key = _dedup_key(d)
        if key in seen:
            counts["duplicates"] += 1
        else:
            seen.add(key)
            unique.append(d)
    per_caller: Counter[str] = Counter()
    result = []
    for d in unique:
        number = caller_key(d.caller_number)
        if number is not None:
            per_caller[number] += 1
            if per_caller[number] > max_calls_per_caller:
                counts["capped"] += 1
                continue
        result.append(d)
    return FilterResult(result[::-1], counts)


def _cut(dialogue: RedactedDialogue, flagged: set[int], counts: dict[str, int]) -> RedactedDialogue | None:
    """The dialogue up to its first bad agent turn (every bad turn counted), or None with nothing to learn."""
    first_bad: int | None = None
    agent_after = 0
    for i, reason in agent_turn_verdicts(dialogue, flagged):
        if reason is not None:
            counts[f"turns_dropped_{reason}"] += 1
            first_bad = i if first_bad is None else first_bad
        elif first_bad is not None:
            agent_after += 1
    counts["turns_cut_after_drop"] += agent_after
    turns = list(dialogue.turns if first_bad is None else dialogue.turns[:first_bad])
    while turns and turns[-1].role != "agent":
        turns.pop()  # nothing to learn from a caller's last words
    # Trailing caller turns are gone, so a caller turn means an agent reply after it: something to learn.
    return replace(dialogue, turns=tuple(turns)) if any(t.role == "caller" for t in turns) else None


def agent_turn_verdicts(dialogue: RedactedDialogue, flagged: set[int]) -> Iterator[tuple[int, str | None]]:
    """(index, reason or None) for each agent turn; reasons as in TURN_REASONS."""
    authorised: set[str] = set()
    verified = False
    caller_said: list[str] = []
    for i, turn in enumerate(dialogue.turns):
        if turn.role == "caller":
            caller_said.append(turn.text)
            continue
        for event in turn.events:
            if event.ok and event.tool in _AUTHORISING_TOOLS and event.code_ref:
                authorised.add(event.code_ref)
            verified |= event.ok and event.tool == "lookup_booking"
        yield i, _bad_turn(turn, caller_said, authorised, verified, flagged)
        caller_said = []


def _bad_turn(
    turn: RedactedTurn, caller_said: list[str], authorised: set[str], verified: bool, flagged: set[int]
) -> str | None:
    if turn.flagged or turn.id in flagged:
        return "flagged"
    if CARD in turn.found:
        return "card_readback"
    if _leaks_booking(turn, authorised, verified):
        return "booking_leak"
    if any(policy.is_harmful(text) for text in caller_said) and not is_refusal(turn.text):
        return "harmful_compliance"
    return None


def _leaks_booking(turn: RedactedTurn, authorised: set[str], verified: bool) -> bool:
    """Booking details or a code the call had not earned: not made in this call, not verified by code and
    surname. A code said that no tool call of the call stands behind is always a leak."""
    if CODE in turn.found and not turn.code_refs <= authorised:
        return True
    if CODE in turn.found and not turn.code_refs:
        return True
    if verified:
        return False
    if turn.act in EXISTING_BOOKING_ACTS:
        return True
    talks = bool(_BOOKING_TALK.search(turn.text) and _STAY_FACT.search(turn.text))
    return talks and turn.act not in OWN_BOOKING_ACTS


def _dedup_key(dialogue: RedactedDialogue) -> tuple[tuple[str, str], ...]:
    return tuple((t.role, " ".join(re.findall(r"\[[A-Z]+\]|\w+", t.text.lower()))) for t in dialogue.turns)


def caller_key(number: str | None) -> str | None:
    """A caller number compared by its digits ("+1 (207) 555-0142" = "2075550142"); None when unknown."""
    digits = re.sub(r"\D", "", number or "")
    if len(digits) == 11 and digits.startswith("1"):
        digits = digits[1:]
    return digits or None


# ---------------------------------------------------------------- the whole path


def curate(
    db: Database,
    settings: Settings,
    *,
    since: datetime | None,
    flagged_turns: Collection[int] = frozenset(),
    now: datetime | None = None,
) -> CurationReport:
    """Select, redact and filter the calls of (since, now]; counts say what was left out and why."""
    now = now or utcnow()
    selection = select_calls(db, since=since, require_consent=settings.nightly_require_consent, now=now)
    hotel = load_hotel(settings.hotel_file)
    keep_words, keep_numbers = hotel_terms(hotel)
    counts = {"selected": len(selection.dialogues), **{f"skipped_{r}": n for r, n in selection.skipped.items()}}
    counts |= {f"dropped_{r}": 0 for r in DROP_REASONS}
    redacted: list[RedactedDialogue] = []
    replaced: Counter[str] = Counter()
    for dialogue in selection.dialogues:
        outcome = redact_dialogue(dialogue, keep_words=keep_words, keep_numbers=keep_numbers)
        if isinstance(outcome, Dropped):
            counts[f"dropped_{outcome.reason}"] += 1
        else:
            redacted.append(outcome)
            replaced.update(outcome.replaced)
    counts |= {f"redacted_{p.strip('[]').lower()}": replaced[p] for p in PLACEHOLDERS}
    filtered = filter_for_training(
        redacted, max_calls_per_caller=settings.nightly_max_calls_per_caller, flagged_turns=flagged_turns
    )
    counts |= filtered.counts
    counts["kept"] = len(filtered.dialogues)
    readings, confirmed = call_readings(db, settings, hotel, filtered.dialogues)
    counts["corrected_readings"], counts["confirmed_readings"] = len(readings), len(confirmed)
    readings += confirmed
    return CurationReport(
        dialogues=[d.to_dialogue() for d in filtered.dialogues],
        call_ids=[d.call_id for d in filtered.dialogues],
        counts=counts,
        readings=readings,
    )


def call_readings(
    db: Database, settings: Settings, hotel: HotelProfile, dialogues: Sequence[RedactedDialogue]
) -> tuple[list[ActionExample], list[ActionExample]]:
    """The reading examples of these (filtered) calls: operator corrections, and turns labelled by a booking
    the caller confirmed (less those an operator corrected: the operator wins)."""
    caller_turns = [t.id for d in dialogues for t in d.turns if t.role == "caller"]
    corrected = {c.turn_id: c.action for c in Corrections(db).list(turn_ids=caller_turns)}  # the latest wins
    readings = correction_examples(dialogues, corrected)
    confirmed = confirmed_readings(db, dialogues, hotel, partial(_call_day, settings, hotel))
    taken = {r.example_id for r in readings}
    return readings, [e for e in confirmed if e.example_id not in taken]


def _call_day(settings: Settings, hotel: HotelProfile, dialogue: RedactedDialogue) -> date:
    """The date the call understood its caller's words against: pinned by settings, else the hotel's day."""
    started = dialogue.started_at
    started = started if started.tzinfo else started.replace(tzinfo=UTC)  # SQLite hands back naive UTC
    return settings.today or started.astimezone(ZoneInfo(settings.timezone or hotel.timezone)).date()


def hotel_terms(hotel: HotelProfile) -> tuple[frozenset[str], frozenset[str]]:
    """The hotel's own words (its name, room names) and phone number, which are never personal data."""
    words = {w.lower() for text in (hotel.name, *(r.name for r in hotel.room_types)) for w in text.split()}
    return frozenset(words), frozenset({re.sub(r"\D", "", hotel.phone)})
