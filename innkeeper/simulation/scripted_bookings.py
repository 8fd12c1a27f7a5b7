"""Domain proficiency by generation: scripted booking calls through the real brain, worded by the model under test.

The brain's code decides every step (which question to ask, which tool to call, what to read back); the
model words each reply, and a sentence is spoken only if every fact and content word in it comes from the
plan (agent/reply/wording.py), else the template is. So the measure that moves with the model is how much of
the agent's speech it could word correctly — the share of reply chunks the model worded that passed the
grounding check (questions are always the template's, so a perfect model reaches about half) — while
the bookings themselves (made, with the caller's exact dates, room, guests and name) show that nothing
the model did could break a call. The callers are the seeded, reactive simulated
callers of `innkeeper.simulation.text_callers`, each placed in a fresh SQLite database.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from agent.dialogue.tools import HotelTools, ToolError
from innkeeper.core.db.database import Database
from innkeeper.core.hotel import load_hotel
from innkeeper.core.settings import Settings
from innkeeper.simulation.text_callers import TODAY, CallScript, PlacedCall, persona, place_calls


@dataclass
class ScriptedBookings:
    """How `n` scripted booking calls went with one model wording the replies."""

    calls: int
    booked: int  # a booking was made
    exact: int  # ... with the caller's dates, room, guest count and surname
    model_worded: int  # reply chunks the model worded that passed the grounding check
    template: int  # reply chunks the model could have worded but the template spoke (none passed, or too late)
    template_only: int  # reply chunks of acts always spoken from the template (read-backs, confirmations)
    seconds: float

    @property
    def model_worded_share(self) -> float:
        return self.model_worded / max(self.model_worded + self.template, 1)

    def summary(self) -> dict[str, Any]:
        """The counts and shares, as stored under an evaluation result's measures["scripted_bookings"]."""
        shares = {"model_worded_share": self.model_worded_share, "exact_share": self.exact / max(self.calls, 1)}
        return {**asdict(self), **{name: round(value, 4) for name, value in shares.items()}}


def booking_scripts(n: int, seed: int = 11) -> list[CallScript]:
    """`n` booking calls with seeded personas and stays (no card numbers: those end in a policy reply)."""
    rng = random.Random(seed)
    return [CallScript(i, "booking", persona(rng), seed=rng.randrange(2**31)) for i in range(n)]


def scripted_bookings(model: Any, settings: Settings, *, n: int = 8, seed: int = 11) -> ScriptedBookings:
    """Place `n` scripted booking calls with `model` wording the replies; each booking checked in the database.

    `model` is a ChatModel (or anything with `astream` and `version`); `settings` gives the hotel profile
    and the first-sentence budget. Blocking (runs its own event loop): call it from a worker thread.
    """
    scripts = booking_scripts(n, seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="innkeeper-scripted-") as home:
        local = settings.model_copy(update={"home": Path(home), "database_url": None, "today": TODAY})
        calls, _ = asyncio.run(place_calls(local, scripts, workers=1, llm=model))
        db = Database.from_settings(local)
        try:
            tools = HotelTools(db, load_hotel(local.hotel_file), today=lambda: TODAY)
            exact = sum(booked_as_asked(tools, call) for call in calls)
        finally:
            db.close()
    return ScriptedBookings(
        calls=len(calls),
        booked=sum(call.booked_code is not None for call in calls),
        exact=exact,
        model_worded=sum(call.wording.get("llm", 0) for call in calls),
        template=sum(call.wording.get("template", 0) for call in calls),
        template_only=sum(call.wording.get("template_only", 0) for call in calls),
        seconds=round(time.perf_counter() - started, 1),
    )


def measure_into(result: dict[str, Any], model: Any, settings: Settings, n: int) -> bool:
    """Add `n` scripted booking calls to an evaluation `result` (measures["scripted_bookings"]).

    Nothing to do when `n` is 0 or the result already holds a measure of `n` calls (a cached base result);
    returns whether it measured, so a caller knows to save a cached result again.
    """
    measures = result["measures"]
    if not n or measures.get("scripted_bookings", {}).get("calls") == n:
        return False
    measures["scripted_bookings"] = scripted_bookings(model, settings, n=n).summary()
    return True


def booked_as_asked(tools: HotelTools, call: PlacedCall) -> bool:
    """The call's booking row holds the stay the caller asked for: dates, room, guest count, surname."""
    asked = call.asked
    if call.booked_code is None or not asked:
        return False
    try:
        row = tools.lookup_booking(call.booked_code, asked["surname"])
    except ToolError:
        return False
    check_in = date.fromisoformat(asked["check_in"])
    return (
        row.check_in == check_in
        and row.check_out == check_in + timedelta(days=asked["nights"])
        and row.room_type == asked["room"]
        and row.guests == asked["guests"]
    )
