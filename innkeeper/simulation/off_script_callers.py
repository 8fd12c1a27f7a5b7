"""Callers who leave the script: the seeded booking callers of `text_callers`, speaking as people do.

Each call draws a few of the habits that got scripted agents stuck: the stay named by two dates in one
sentence ("from December 9 to December 12") or as "N days from <date>"; the party as "for four", "just for
1", "for one person"; the name and the phone number in one breath; a question asked in the middle of the
booking, in the same turn as the answer to the agent's question; a change of mind about the length of the
stay; "thanks, that's all for now". Unlike the scripted caller, this one checks the read-back against what
it wants and says no (and restates the stay) when it is wrong, as a real caller would.

What counts is the booking row: booked exactly as the caller finally wanted, booked wrong, or not booked.
`benchmarks/off_script_calls.py` places these calls with the rules alone and with the model reading each turn.
"""

from __future__ import annotations

import random
from datetime import date, timedelta

from innkeeper.simulation.text_callers import NUMBER_WORDS, ROOM_TITLES, Caller, CallScript, persona

HABITS = ("two_dates", "days_from", "party_words", "name_and_phone", "question_mid_booking", "change_of_mind")
CLOSINGS = ("Thanks, that's all for now.", "OK great, that's everything. Thank you!", "Perfect, thanks so much, bye.")


def draw_habits(rng: random.Random) -> frozenset[str]:
    """Which habits one call shows: each with probability one half, at least one."""
    habits = {h for h in HABITS if rng.random() < 0.5}
    return frozenset(habits or {rng.choice(HABITS)})


def off_script_scripts(n: int, seed: int = 23) -> list[CallScript]:
    """`n` booking calls for off-script callers (the habits are drawn from each script's own seed)."""
    rng = random.Random(seed)
    return [CallScript(i, "booking", persona(rng), seed=rng.randrange(2**31)) for i in range(n)]


class OffScriptCaller(Caller):
    """A booking caller with off-script habits who checks the read-back before saying yes."""

    def __init__(self, script: CallScript, booking: tuple[str, str, str] | None, today: date):
        super().__init__(script, booking, today)
        self.habits = draw_habits(random.Random(script.seed ^ 0x5EED))
        self._mind_changed = "change_of_mind" not in self.habits
        self._asides = 1 if "question_mid_booking" in self.habits else 0
        self.refusals = 0  # read-backs the caller said no to

    # ---- phrasing
    def _guests(self) -> str:
        if "party_words" not in self.habits:
            return super()._guests()
        g = self.guests
        if g == 1:
            return self.rng.choice(("Just for 1.", "For one person.", "Only one person."))
        return self.rng.choice((f"For {NUMBER_WORDS[g]}.", f"There'll be {g} of us.", f"We're {NUMBER_WORDS[g]}."))

    def _stay_words(self) -> str:
        """The dates and length in one phrase, in this caller's habit."""
        start, end = self._date(self.check_in), self._date(self.check_in + timedelta(days=self.nights))
        if "two_dates" in self.habits:
            return self.rng.choice((f"from {start} to {end}", f"checking in {start} and checking out {end}"))
        if "days_from" in self.habits and self.nights > 1:
            return f"{self.nights} days from {start}"
        return f"for {self._nights()} from {start}"

    def first_line(self) -> str:
        room, party = self._room_name(), self._guests().rstrip(".").lower()
        return self.rng.choice(
            (
                f"Hi, I need a room {self._stay_words()}, {party}.",
                f"Hello, do you have {room} {self._stay_words()}?",
                f"Hi there, we're looking for a room {self._stay_words()}.",
            )
        )

    def _with_aside(self, answer: str) -> str:
        """An answer with a question about the hotel in the same breath (once a call, for those who do it)."""
        if self._asides and self.questions:
            self._asides -= 1
            question = self.questions.pop(0)
            return f"{answer} Oh, and {question[0].lower()}{question[1:]}"
        return answer

    def _with_change(self, answer: str) -> str:
        """Once, after the length was given: the caller changes their mind about it."""
        if not self._mind_changed:
            self._mind_changed = True
            self.nights = self.nights + 1 if self.nights < 5 else self.nights - 2
            return f"{answer} Actually, can we make it {self._nights()} instead?"
        return answer

    # ---- answers
    def _on_ask_check_in(self) -> str:
        return self._with_aside(f"{self._stay_words().capitalize()}.")

    def _on_ask_nights(self) -> str:
        return self._with_aside(f"{self._nights().capitalize()}.")

    def _on_ask_guests(self) -> str:
        return self._with_change(self._with_aside(self._guests()))

    def _on_offer_rooms(self) -> str | None:
        line = super()._on_offer_rooms()
        return None if line is None else self._with_change(line)

    def _on_ask_name(self) -> str:
        if "name_and_phone" in self.habits:
            full, d = f"{self.p.first} {self.p.last}", self.p.number
            self.secrets["name"].update((self.p.first, self.p.last))
            self.secrets["phone"].add(d)
            return self.rng.choice((f"{full}, {d[:3]} {d[3:6]} {d[6:]}.", f"It's {full}, my number is {d}."))
        return self._with_change(super()._on_ask_name())

    def _on_read_back(self) -> str | None:
        if self._read_back_is_right():
            return super()._on_read_back()
        self.refusals += 1
        if self.refusals > 2:
            self.hung_up = True
            return None
        room = ROOM_TITLES[self.room]
        return f"No, that's not right. I want the {room} {self._stay_words()}, {self._guests().rstrip('.').lower()}."

    def _on_change_what(self) -> str:
        room = ROOM_TITLES[self.room]
        return f"The {room}, {self._stay_words()}, {self._guests().rstrip('.').lower()}."

    def _on_booked(self) -> str:
        return self.rng.choice(CLOSINGS)

    def _on_answer_question(self) -> str:
        return self._ask() if self.questions else self.rng.choice(CLOSINGS)

    def _read_back_is_right(self) -> bool:
        """Whether the agent's read-back names this caller's room, party, arrival and departure."""
        said = self.reply
        out = self.check_in + timedelta(days=self.nights)
        wanted = (
            ROOM_TITLES[self.room],
            f"for {self.guests} guest",
            f"arriving {self.check_in.strftime('%A')}, {self.check_in.strftime('%B')} {self.check_in.day} ",
            f"leaving {out.strftime('%A')}, {out.strftime('%B')} {out.day},",
        )
        return all(part in said for part in wanted)
