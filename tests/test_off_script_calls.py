"""Callers who leave the script (innkeeper.simulation.off_script_callers): their habits show in what they say,
they refuse a read-back that is wrong, and through the real brain (rules reading) every one of them ends
with the booking they finally wanted — changes of mind and questions mid-booking included."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

from agent.dialogue.tools import HotelTools
from innkeeper.core.db.database import Database
from innkeeper.core.hotel import load_hotel
from innkeeper.core.settings import Settings
from innkeeper.simulation.off_script_callers import HABITS, OffScriptCaller, off_script_scripts
from innkeeper.simulation.scripted_bookings import booked_as_asked
from innkeeper.simulation.text_callers import ROOM_TITLES, TODAY, place_calls

MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"


def _read_back(caller: OffScriptCaller, nights: int) -> str:
    out = caller.check_in + timedelta(days=nights)
    return (
        f"Let me read that back: the {ROOM_TITLES[caller.room]} for {caller.guests} guest"
        f"{'s' if caller.guests > 1 else ''}, arriving {caller.check_in:%A}, {caller.check_in:%B} "
        f"{caller.check_in.day} and leaving {out:%A}, {out:%B} {out.day}, {nights} nights. Shall I book it?"
    )


def test_a_caller_says_no_to_a_wrong_read_back_and_yes_to_the_right_one():
    script = off_script_scripts(1, seed=3)[0]
    caller = OffScriptCaller(script, None, TODAY)
    refusal = caller.next_line("read_back", _read_back(caller, caller.nights + 1))
    assert refusal is not None and refusal.startswith("No")
    assert ROOM_TITLES[caller.room] in refusal  # the caller restates what they want
    agreed = caller.next_line("read_back", _read_back(caller, caller.nights))
    assert agreed is not None and not agreed.startswith("No")


def test_habits_show_in_the_callers_words():
    scripts = off_script_scripts(40, seed=9)
    callers = [OffScriptCaller(s, None, TODAY) for s in scripts]
    for habit in HABITS:
        assert any(habit in c.habits for c in callers), habit
    for caller in callers:
        first = caller.first_line()
        dates_named = len(re.findall(rf"\b(?:{MONTHS})\b", first))
        if "two_dates" in caller.habits:
            assert dates_named == 2, first
        if "name_and_phone" in caller.habits:
            line = caller.next_line("ask_name", "May I have your first and last name?")
            assert caller.p.last in line and re.sub(r"\D", "", line) == caller.p.number, line


def test_off_script_callers_end_with_exactly_the_booking_they_wanted(tmp_path):
    scripts = off_script_scripts(12, seed=41)
    settings = Settings(home=tmp_path, today=TODAY)
    placed, stats = asyncio.run(place_calls(settings, scripts, workers=1, caller=OffScriptCaller, channel="twilio"))
    db = Database.from_settings(settings)
    try:
        tools = HotelTools(db, load_hotel(settings.hotel_file), today=lambda: TODAY)
        exact = [booked_as_asked(tools, call) for call in placed]
    finally:
        db.close()
    assert stats["booked"] == len(scripts)
    assert all(exact), [(c.asked, c.acts) for c, ok in zip(placed, exact, strict=True) if not ok]
    planned = [OffScriptCaller(s, None, TODAY).nights for s in scripts]  # before any change of mind
    changed = [c for c, nights in zip(placed, planned, strict=True) if c.asked["nights"] != nights]
    assert changed, "no caller changed their mind: the test would not show that a change is followed"
