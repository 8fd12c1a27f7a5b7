"""A seeded, reactive simulated caller for text calls through the real brain, and a runner that places them.

Bookings with varied dates, stays, guest counts, rooms, names and phone formats; questions (check-out,
parking, breakfast, pets, Wi-Fi, cancellation policy, ...); cancellations, look-ups and changes of
bookings made earlier in the run, by code + surname; short hang-ups; a small share of calls read out a
card number (typed digits, spoken words, or split over two turns). The caller answers whatever the agent
asked (its dialogue act), so a script works whatever words the agent chose. Used by the nightly benchmark
(calls to learn from) and by the tuning evaluation (scripted bookings worded by the model under test).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from innkeeper.core.settings import Settings

TODAY = date(2026, 11, 26)  # pinned, so "tomorrow" and "December 7" mean the same stay on every run
CARD_SHARE = 0.02
MAX_CALLER_TURNS = 16

FIRST_NAMES = (
    "Ana Maria Oliver Priya Tomasz Keiko Fatima Lucas Ingrid Mateo Chloe Darius Nadia Rafael Soren Amara "
    "Yusuf Elena Dmitri Beatriz Kwame Sienna Henrik Leilani Tariq Marisol Anders Zofia Emeka Greta Ravi "
    "Yara Colm Aiko Lorenzo Wanjiru Bastian Imogen Tenzin Ottilie"
).split()
SURNAMES = (
    "Diaz Lopez Kowalski Nakamura Haddad Okafor Lindqvist Moreau Castellanos Petrov Rahman Fitzgerald "
    "Abernathy Sato Gallagher Oyelaran Novak Quintero Varga Mbeki Henriksen Delacroix Takahashi Ivanova "
    "Brennan Albrecht Szabo Kaminski Ferreira Ngata Castillo Yilmaz Lindgren Moreno Dubois Kapoor "
    "Whitfield Ostrowski Achebe Marchetti"
).split()
ROOMS = {  # code: (capacity, ways a caller names it)
    "standard": (2, ("the standard queen", "a standard queen", "the standard room", "the queen room")),
    "deluxe": (3, ("the deluxe king", "a deluxe king", "the deluxe room", "the king room")),
    "suite": (4, ("the harbor suite", "the suite", "a suite")),
}
ROOM_TITLES = {"standard": "Standard Queen", "deluxe": "Deluxe King", "suite": "Harbor Suite"}
NUMBER_WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()
QUESTIONS = {
    "checkout": ("What time is check-out?", "When do I have to check out?", "How late is check-out?"),
    "checkin": ("What time is check-in?", "When can we check in?"),
    "parking": ("Do you have parking?", "How much is parking?", "Is there valet parking?"),
    "breakfast": ("Is breakfast included?", "What time is breakfast?", "Do you serve breakfast?"),
    "pets": ("Can I bring my dog?", "Do you allow pets?", "Are dogs allowed?"),
    "wifi": ("Do you have Wi-Fi?", "Is the Wi-Fi free?"),
    "pool": ("Is there a pool?", "When is the pool open?"),
    "cancellation": ("What's your cancellation policy?", "Can I cancel for free?"),
    "shuttle": ("Is there an airport shuttle?", "How far is the airport?"),
    "restaurant": ("Do you have a restaurant?", "When does the restaurant open for dinner?"),
}
CLOSERS = ("Thanks, bye.", "Great, that's all. Goodbye.", "Perfect, thank you. Bye.", "No, that's all, bye.")
# How a caller opens (varied, so that calls are not all duplicates of each other after redaction).
OPENERS = ("", "Hi, ", "Hello, ", "Hey, ", "Good morning, ", "Good afternoon, ", "Hi there, quick question: ")
# A short call: one line, then the caller hangs up whatever the agent says.
HANGUPS = (
    "is this the hotel?",
    "sorry, wrong number.",
    "I'd like to book a room.",
    "um, I was calling about",
    "what time is check-out?",
    "do you have parking?",
    "is breakfast included?",
    "can I bring my dog?",
    "do you have any rooms this weekend?",
)
AGENCY_SHARE = 0.03  # one caller number (a travel agency) places this share of calls: the per-caller cap applies
# kind: share of calls (cancel/lookup/modify fall back to a question call until a booking exists)
KINDS = {"booking": 0.40, "question": 0.27, "cancel": 0.09, "lookup": 0.05, "modify": 0.04, "hangup": 0.13}


@dataclass
class Persona:
    first: str
    last: str
    number: str  # 10 digits: the caller id, and the number they give


@dataclass
class CallScript:
    """One planned call: the kind, who calls, what they want (a booking, questions) and whether a card is read."""

    index: int
    kind: str
    persona: Persona
    seed: int
    card: str | None = None  # "typed" | "spoken" | "split"


@dataclass
class PlacedCall:
    """A call as placed, with the personal data it contained (for the leak audit)."""

    call_id: str
    kind: str
    card: str | None
    turns: int
    end: str  # completed | hangup | stuck
    acts: list[str]
    secrets: dict[str, list[str]] = field(default_factory=dict)  # kind of data -> values said in the call
    booked_code: str | None = None
    asked: dict[str, Any] = field(default_factory=dict)  # the stay the caller finally asked for (booking calls)
    # reply chunks by who worded them: llm / template, and template_only for acts no model may word
    wording: dict[str, int] = field(default_factory=dict)


def plan_calls(n: int, seed: int) -> list[CallScript]:
    """N call scripts: kinds by KINDS, about CARD_SHARE with a card read out, a third from repeat callers."""
    rng = random.Random(seed)
    repeaters = [persona(rng) for _ in range(max(3, n // 25))]
    agency = persona(rng)
    kinds = rng.choices(list(KINDS), weights=list(KINDS.values()), k=n)
    card_calls = sorted(rng.sample(range(n), max(1, round(n * CARD_SHARE))))
    card_modes = {i: ("typed", "spoken", "split")[k % 3] for k, i in enumerate(card_calls)}
    scripts = []
    for i, kind in enumerate(kinds):
        draw = rng.random()
        if draw < AGENCY_SHARE:  # a different guest's name each time, the agency's number
            who = Persona(rng.choice(FIRST_NAMES), rng.choice(SURNAMES), agency.number)
        else:
            who = rng.choice(repeaters) if draw < 0.33 else persona(rng)
        card = card_modes.get(i)
        if card:
            kind = "booking"
        scripts.append(CallScript(i, kind, who, seed=rng.randrange(2**31), card=card))
    return scripts


def persona(rng: random.Random) -> Persona:
    area = rng.choice(("207", "617", "212", "415", "503", "312", "646", "802", "603", "978"))
    return Persona(rng.choice(FIRST_NAMES), rng.choice(SURNAMES), f"{area}555{rng.randrange(10000):04d}")


def luhn_card(rng: random.Random) -> str:
    """A random card number that passes the Luhn check (Visa/Mastercard 16 digits, Amex 15)."""
    prefix, length = rng.choice((("4", 16), ("51", 16), ("55", 16), ("37", 15)))
    body = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return body + str((10 - total % 10) % 10)


def spoken_digits(digits: str) -> str:
    return " ".join(NUMBER_WORDS[int(d)] for d in digits)


def _opening(lead: str, line: str) -> str:
    """`lead` + `line`, capitalised as a sentence ("Hi, " + "Do you ..." → "Hi, do you ...")."""
    if not lead:
        return line[0].upper() + line[1:]
    return lead + (line if line.startswith("I ") or line.startswith("I'") else line[0].lower() + line[1:])


class Caller:
    """A reactive caller: answers whatever the agent asked (its dialogue act), following its script."""

    def __init__(self, script: CallScript, booking: tuple[str, str, str] | None, today: date):
        self.s = script
        self.rng = random.Random(script.seed)
        self.p = script.persona
        self.booking = booking  # (code, surname, number) of an earlier booking, for cancel/lookup/modify
        self.hung_up = False
        self.secrets: dict[str, set[str]] = defaultdict(set)
        self._lines: list[str] = []
        self._clarified = 0
        self._card_said = False
        self._split_rest: str | None = None
        self.reply = ""  # the agent's last words
        self.today = today
        self._plan_stay(today)
        self._plan_questions()

    # ---- the plan
    def _plan_stay(self, today: date) -> None:
        rng = self.rng
        self.guests = rng.choices((1, 2, 3, 4), weights=(3, 5, 2, 1))[0]
        fits = [code for code, (cap, _) in ROOMS.items() if cap >= self.guests]
        self.room = rng.choice(fits)
        self.nights = rng.choices((1, 2, 3, 4, 5, 7), weights=(4, 5, 3, 2, 1, 1))[0]
        self.check_in = today + timedelta(days=rng.randrange(1, 330))
        if rng.random() < 0.08:
            self.check_in, self.nights, self.guests = today + timedelta(days=1), 1, 1
            self.room = "standard"

    def stay(self) -> dict[str, Any]:
        """The stay as the caller now wants it (a sold-out room may have been swapped for one offered)."""
        return {
            "check_in": self.check_in.isoformat(),
            "nights": self.nights,
            "room": self.room,
            "guests": self.guests,
            "surname": self.p.last,
        }

    def _plan_questions(self) -> None:
        topics = self.rng.sample(list(QUESTIONS), k=self.rng.choice((1, 1, 2, 2, 3)))
        self.questions = [self.rng.choice(QUESTIONS[t]) for t in topics]

    # ---- phrasing
    def _date(self, day: date) -> str:
        month, n = day.strftime("%B"), day.day
        ordinal = f"{n}{'th' if 11 <= n % 100 <= 13 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"
        return self.rng.choice((f"{month} {n}", f"{month} {ordinal}", f"the {ordinal} of {month}"))

    def _nights(self) -> str:
        n = self.nights
        word = NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)
        return "one night" if n == 1 else self.rng.choice((f"{word} nights", f"{n} nights"))

    def _guests(self) -> str:
        g = self.guests
        if g == 1:
            return self.rng.choice(("Just me.", "Only me.", "One adult."))
        word = NUMBER_WORDS[g]
        return self.rng.choice((f"{word.capitalize()} adults.", f"{word.capitalize()} of us.", f"{g} people."))

    def _room_name(self) -> str:
        return self.rng.choice(ROOMS[self.room][1])

    def _phone(self) -> str:
        d = self.p.number
        self.secrets["phone"].add(d)
        style = self.rng.randrange(4)
        if style == 0:
            return f"{d[:3]} {d[3:6]} {d[6:]}."
        if style == 1:
            return f"It's ({d[:3]}) {d[3:6]}-{d[6:]}."
        if style == 2:
            return f"{spoken_digits(d[:3])}, {spoken_digits(d[3:6])}, {spoken_digits(d[6:])}."
        return f"Sure, {d[:3]}-{d[3:6]}-{d[6:]}."

    def _name(self) -> str:
        self.secrets["name"].update((self.p.first, self.p.last))
        full = f"{self.p.first} {self.p.last}"
        return self.rng.choice((f"{full}.", f"My name is {full}.", f"It's {full}.", f"{full}, thanks."))

    def _card_line(self) -> str:
        card = luhn_card(self.rng)
        self.secrets["card"].add(card)
        groups = [card[i : i + 4] for i in range(0, len(card), 4)]
        if self.s.card == "typed":
            return f"Can I just pay now? My card number is {' '.join(groups)}."
        if self.s.card == "spoken":
            return f"Could I give you my card? It's {', '.join(spoken_digits(g) for g in groups)}."
        half = len(groups) // 2
        self._split_rest = f"And then {' '.join(groups[half:])}."
        return f"I'd like to pay by card, the number is {' '.join(groups[:half])}"

    # ---- the conversation
    def first_line(self) -> str:
        kind, rng = self.s.kind, self.rng
        if kind == "hangup":
            return _opening(rng.choice(OPENERS), rng.choice(HANGUPS)) if rng.random() < 0.9 else "Hello?"
        if kind == "question":
            return _opening(rng.choice(OPENERS), self._ask())
        if kind in ("cancel", "lookup", "modify"):
            return self._existing_opener()
        room, when, nights = self._room_name(), self._date(self.check_in), self._nights()
        if self.check_in == self.today + timedelta(days=1) and self.nights == 1 and self.guests == 1:
            return rng.choice(("I need a room for tomorrow night, just me.", "Do you have a room tomorrow night?"))
        return rng.choice(
            (
                f"Hi, I'd like a room for {nights} from {when}.",
                f"Do you have {room} available from {when} for {nights}?",
                "I'd like to book a room, please.",
                f"Hello, I want to book {room}, arriving {when}, for {nights}.",
                f"Hi there. We're looking for a room from {when}.",
            )
        )

    def _existing_opener(self) -> str:
        code, surname, _ = self.booking  # type: ignore[misc]
        self.secrets["code"].add(code)
        self.secrets["name"].add(surname)
        said = code if self.rng.random() < 0.7 else "-".join(code)
        verb = {"cancel": "cancel", "lookup": "check", "modify": "change"}[self.s.kind]
        if self.rng.random() < 0.3:  # the agent asks for the code, then the surname
            self._lines = [f"It's {said}.", f"{surname}."]
            return f"I'd like to {verb} my reservation."
        return self.rng.choice(
            (
                f"I need to {verb} my booking, code {said}, last name {surname}.",
                f"Hi, I want to {verb} my reservation. The confirmation code is {said} and the surname is {surname}.",
            )
        )

    def _ask(self) -> str:
        if self.questions:
            return self.questions.pop(0)
        return self.rng.choice(CLOSERS)

    def next_line(self, act: str, reply: str) -> str | None:
        """The caller's answer to the agent's last act (and words), or None: they hang up."""
        self.reply = reply
        if self._split_rest is not None:
            rest, self._split_rest = self._split_rest, None
            return rest
        if self.s.kind == "hangup":
            self.hung_up = True
            return None
        handler = getattr(self, f"_on_{act}", None)
        if handler is not None:
            return handler()
        return self._stuck()

    def _stuck(self) -> str | None:
        self._clarified += 1
        if self._clarified > 2:
            self.hung_up = True
            return None
        if self._lines:
            return self._lines.pop(0)
        return self.rng.choice(("Sorry, I'll call back later. Bye.", "Never mind, goodbye."))

    # answers, by the act the agent ended on
    def _on_ask_check_in(self) -> str:
        return f"{self._date(self.check_in)}."

    def _on_ask_nights(self) -> str:
        return f"{self._nights().capitalize()}."

    def _on_ask_guests(self) -> str:
        return self._guests()

    def _on_too_many_guests(self) -> str:
        self.guests = min(self.guests, 2)
        return self._guests()

    def _on_offer_rooms(self) -> str | None:
        listing = self.reply.rpartition("we have")[2]  # not "the Standard Queen is sold out" before it
        offered = [code for code, title in ROOM_TITLES.items() if title in listing]
        if offered and self.room not in offered:  # sold out: take one that is offered, or give up
            if self.rng.random() < 0.2:
                self.hung_up = True
                return None
            self.room = self.rng.choice(offered)
        return self.rng.choice((f"{self._room_name().capitalize()}, please.", f"I'll take {self._room_name()}."))

    def _on_ask_name(self) -> str:
        return self._name()

    def _on_ask_phone(self) -> str:
        if self.s.card and not self._card_said:
            self._card_said = True
            return self._card_line()
        return self._phone()

    def _on_card_warning(self) -> str:
        return self._phone()

    def _on_read_back(self) -> str:
        return self.rng.choice(("Yes, book it.", "Yes please.", "That's right, go ahead.", "Yes."))

    def _on_confirm_again(self) -> str:
        return "Yes."

    def _on_booked(self) -> str:
        return self._ask() if self.rng.random() < 0.3 else self.rng.choice(CLOSERS)

    def _on_answer_question(self) -> str:
        return self._ask()

    def _on_no_availability(self) -> str | None:
        if self.rng.random() < 0.5:
            self.hung_up = True
            return None
        self.check_in += timedelta(days=self.rng.randrange(7, 60))
        return f"How about {self._date(self.check_in)}?"

    def _on_invalid_dates(self) -> str:
        self.check_in = self.today + timedelta(days=self.rng.randrange(5, 200))
        return f"{self._date(self.check_in)}."

    def _on_ask_code(self) -> str | None:
        return self._lines.pop(0) if self._lines else self._stuck()

    def _on_ask_surname(self) -> str | None:
        return self._lines.pop(0) if self._lines else self._stuck()

    def _on_confirm_cancel(self) -> str:
        return self.rng.choice(("Yes, please cancel it.", "Yes.", "Yes, cancel it."))

    def _on_cancelled(self) -> str:
        return self.rng.choice(CLOSERS)

    def _on_lookup(self) -> str:
        return self.rng.choice(("Great, thanks. Bye.", "Perfect, that's all. Goodbye."))

    def _on_ask_change(self) -> str:
        self.guests = 1 if self.guests > 1 else 2
        return f"Can we change it to {NUMBER_WORDS[self.guests]} guests?"

    def _on_confirm_modify(self) -> str:
        return "Yes, please."

    def _on_modified(self) -> str:
        return self.rng.choice(CLOSERS)

    def _on_greet(self) -> str:
        return self.first_line() if not self._lines else self._lines.pop(0)

    _on_keep_booking = _on_cancelled
    _on_rates = _on_answer_question


async def place_calls(
    settings: Settings,
    scripts: list[CallScript],
    *,
    workers: int,
    llm: Any = None,
    today: date = TODAY,
    caller: type[Caller] | None = None,
    channel: str = "text",
    on_call: Callable[[PlacedCall], None] | None = None,
) -> tuple[list[PlacedCall], dict[str, Any]]:
    """Place every scripted call through the real brain, `workers` at a time; returns the calls and timings.

    `llm` words the replies (behind the brain's grounding check) and, with `settings.model_understanding`,
    reads each turn; None: the exact templates and the rules. `caller`: the kind of caller (default
    `Caller`); `channel`: as the brain sees the call (a voice channel keeps the templates speaking unless
    `settings.voice_llm`). `on_call` hears of each call as it ends (progress).
    """
    from agent.reply.wording import TEMPLATE_ONLY_ACTS
    from innkeeper.core.codes import CODE_PATTERN
    from innkeeper.core.db.database import Database
    from innkeeper.core.hotel import load_hotel
    from innkeeper.serve.runtime import AgentRuntime

    db = Database.from_settings(settings)
    db.migrate()
    db.seed(load_hotel(settings.hotel_file))
    runtime = AgentRuntime(settings, llm=llm, db=db)
    bookings: list[tuple[str, str, str]] = []  # (code, surname, number) of bookings made so far
    gate = asyncio.Semaphore(workers)
    pick = random.Random(len(scripts))

    async def one(script: CallScript) -> PlacedCall:
        async with gate:
            booking = None
            if script.kind in ("cancel", "lookup", "modify") and bookings:
                # a cancelled booking is not asked about again; look-ups and changes may repeat
                index = pick.randrange(len(bookings))
                booking = bookings.pop(index) if script.kind == "cancel" else bookings[index]
            if script.kind in ("cancel", "lookup", "modify"):
                if booking is None:
                    script.kind = "question"  # nothing booked yet to ask about
                elif pick.random() < 0.7:  # usually the guest who booked calls again
                    script.persona = Persona(script.persona.first, booking[1], booking[2])
            person = (caller or Caller)(script, booking, today)
            convo = runtime.new_conversation(channel=channel, caller_number=f"+1{script.persona.number}")
            await convo.start()
            await convo.greet()
            acts, code, wording = [], None, Counter()
            line: str | None = person.first_line()
            while line is not None and not convo.ended and len(acts) < MAX_CALLER_TURNS:
                reply = await convo.reply(line)
                act = convo.last_turn.plan.act
                acts.append(act)
                # acts the brain always speaks from its template (read-backs, confirmations) are counted apart
                if act in TEMPLATE_ONLY_ACTS:
                    wording["template_only"] += len(convo.last_turn.sources)
                else:
                    wording.update(convo.last_turn.sources)
                if act == "booked" and (m := CODE_PATTERN.search(reply)):
                    code = m[0]
                    person.secrets["code"].add(code)
                    bookings.append((code, person.p.last, person.p.number))
                line = person.next_line(act, reply)
            end = "completed" if convo.ended else ("hangup" if person.hung_up else "stuck")
            await convo.close("completed" if end == "completed" else "hangup")
            placed = PlacedCall(
                call_id=convo.call_id or "",
                kind="card" if script.card else script.kind,
                card=script.card,
                turns=len(acts),
                end=end,
                acts=acts,
                secrets={k: sorted(v) for k, v in person.secrets.items()},
                booked_code=code,
                asked=person.stay() if script.kind == "booking" else {},
                wording=dict(wording),
            )
            if on_call is not None:
                on_call(placed)
            return placed

    started = time.perf_counter()
    # Scripts start in order (the semaphore is fair), so a cancellation usually finds earlier bookings.
    calls = await asyncio.gather(*(one(s) for s in scripts))
    seconds = time.perf_counter() - started
    db.close()
    turns = sum(c.turns for c in calls)
    return list(calls), {
        "seconds": round(seconds, 2),
        "calls": len(calls),
        "caller_turns": turns,
        "ms_per_call": round(1000 * seconds / max(len(calls), 1), 1),
        "workers": workers,
        "kinds": dict(Counter(c.kind for c in calls)),
        "ends": dict(Counter(c.end for c in calls)),
        "booked": sum(c.booked_code is not None for c in calls),
        "distinct_callers": len({s.persona.number for s in scripts}),
    }


@dataclass(frozen=True)
class FixedCall:
    call_id: str
    replies: list[str]


async def say_lines(
    runtime: Any, lines: list[str] | tuple[str, ...], *, caller_number: str = "+12075550199"
) -> FixedCall:
    """A text call that says fixed `lines` in order (stopping if the agent ends the call) through the runtime."""
    convo = runtime.new_conversation(caller_number=caller_number)
    await convo.start()
    replies = []
    for line in lines:
        if convo.ended:
            break
        replies.append(await convo.reply(line))
    await convo.close()
    return FixedCall(convo.call_id, replies)
