"""Nightly data curation on real call-log rows: which calls are learned from, what is redacted, which agent
turns are dropped as poisoned, and the per-caller cap and deduplication."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import select, update
from transformers import AutoTokenizer

from agent.call.calllog import CallLog
from agent.understanding.action import ActionIntent, ActionSlots, TurnAction
from innkeeper.core.db.schema import Call, Turn, utcnow
from innkeeper.core.settings import Settings
from innkeeper.serve.runtime import AgentRuntime
from tuning.data.canaries import contains_card_number
from tuning.data.curate import curate, filter_for_training
from tuning.data.dialogues import IGNORE_INDEX, Dialogue, build_examples, import_dialogues
from tuning.data.pii import CARD, CODE, EMAIL, NAME, PHONE
from tuning.data.preview import preview_call
from tuning.data.redact import Dropped, redact_dialogue
from tuning.data.selection import CallDialogue, CallTurn, select_calls

TODAY = date(2026, 11, 26)
GREETING = "Thank you for calling The Harbor View Inn. How can I help you today?"

MARIA_BOOKS = (
    "Hi, I'd like to book a room.",
    "Arriving on Dec. 7 for two nights.",
    "Two adults.",
    "The standard, please.",
    "My name is Maria Okafor.",
    "My number is 207 555 0148, and my email is maria dot okafor at example dot com.",
    "Yes, please book it.",
    # A card read out digit by digit over two turns: neither turn alone holds a card number, so the call
    # brain logs both as said; only joining the caller's turns finds it.
    "Can I pay now? My card is four one one one one one one one",
    "one one one one one one one one",
    "Thanks, bye!",
)


@pytest.fixture
def settings(db, tmp_path) -> Settings:
    return Settings(home=tmp_path, today=TODAY, database_url=db.engine.url.render_as_string(False))


@pytest.fixture
def runtime(settings, db) -> AgentRuntime:
    return AgentRuntime(settings, llm=None, db=db)


def call(runtime: AgentRuntime, lines, *, number: str | None = None) -> str:
    """A whole conversation through the call brain (greeting, replies, hang-up); returns the call id."""

    async def run() -> str:
        convo = runtime.new_conversation(caller_number=number)
        await convo.start()
        await convo.greet()
        for line in lines:
            await convo.reply(line)
        await convo.close()
        return convo.call_id

    return asyncio.run(run())


def act(name: str, *tools: dict) -> list[dict]:
    """An agent turn's tool-call log as the brain writes it: tool records, then the reply's dialogue act."""
    return [*tools, {"meta": {"act": name, "wording": ["template"], "masked_cards": 0}}]


def logged_call(db, turns, *, number: str | None = None, end: str | None = "completed", channel: str = "text") -> str:
    """A call written straight through the call log: turns are (role, text) or (role, text, tool_calls)."""
    log = CallLog(db)
    call_id = log.start_call(channel=channel, caller_number=number)
    for role, text, *tools in turns:
        now = utcnow()
        log.log_turn(
            call_id, role=role, text=text, started_at=now, ended_at=now, tool_calls=tools[0] if tools else None
        )
    if end is not None:
        log.end_call(call_id, reason=end)
    return call_id


def opening(topic: str) -> list[tuple]:
    """A harmless start, different per call so that the cut dialogues stay distinct."""
    return [
        ("agent", GREETING),
        ("caller", f"Hi, a quick question about {topic}."),
        ("agent", "Sure, what would you like to know?", act("clarify")),
    ]


def set_call(db, call_id: str, **values) -> None:
    with db.session() as s:
        s.execute(update(Call).where(Call.id == call_id).values(**values))


def text_of(dialogues) -> str:
    return "\n".join(text for d in dialogues for _, text in d.turns)


def by_id(report) -> dict[str, Dialogue]:
    return {d.id: d for d in report.dialogues}


# ---------------------------------------------------------------- redaction


def test_personal_data_never_reaches_the_training_dialogues(runtime, db, settings):
    booking = call(runtime, MARIA_BOOKS, number="+1 207 555 0148")
    code = runtime.tools.list_bookings()[0].code
    spelled = "-".join(code)
    lookup = call(runtime, ("I'd like to check my booking.", f"The code is {spelled}.", "Okafor", "Thanks, bye."))
    secrets = ("Maria", "Okafor", "maria dot okafor", "example dot com", "555 0148", code, spelled, "four one one one")
    raw = "\n".join(t.text for c in (booking, lookup) for t in CallLog(db).transcript(c))
    for secret in (*secrets, "one one one one one one one one"):
        assert secret in raw  # the log holds them, so the checks below can fail

    report = curate(db, settings, since=None)

    assert sorted(report.call_ids) == sorted([booking, lookup])
    assert all(d.source == "call" for d in report.dialogues)
    text = text_of(report.dialogues)
    for secret in (*secrets, "one one one one"):
        assert secret.lower() not in text.lower()
    assert not contains_card_number(text)
    assert not re.search(r"\d{3}\D{0,2}\d{3,4}", text.replace("$", "")), "no phone-shaped digits left"
    for placeholder in (CARD, PHONE, EMAIL, NAME, CODE):
        assert placeholder in text
    agent_said = [t for d in report.dialogues for role, t in d.turns if role == "agent"]
    assert any(t.startswith(f"Thank you, {NAME}.") for t in agent_said)  # the agent's echo of the name
    assert any(f"Your confirmation code is {CODE}, that's {CODE}." in t for t in agent_said)
    verified = by_id(report)[lookup].turns
    assert any(role == "agent" and t.startswith("I found it:") for role, t in verified)  # code + surname given
    assert report.counts["redacted_card"] == 2 and report.counts["kept"] == 2


def test_hotel_words_prices_and_dates_are_kept(runtime, db, settings):
    call(runtime, ("Hi, I'd like to book a room.", "Arriving on Dec. 7 for two nights.", "Two adults.", "Bye."))
    text = text_of(curate(db, settings, since=None).dialogues)
    for kept in ("The Harbor View Inn", "Standard Queen", "Deluxe King", "$149", "December 7", "2 nights"):
        assert kept in text
    assert NAME not in text and PHONE not in text


def test_names_from_introductions_and_their_echoes_are_redacted(db, settings):
    call_id = logged_call(
        db,
        [
            ("agent", GREETING),
            ("caller", "Hello, this is Priya Raman."),
            ("agent", "Thank you, Priya. One moment.", act("clarify")),
            ("caller", "My last name is spelled R-A-M-A-N, and my husband's booking, it's under Kowalczyk."),
            # Names only a pattern points at: an echo with a title, and one no tool call or caller turn gave.
            ("agent", "Thanks, Ms. Raman. I see Mr. Kowalczyk's note. Welcome back, Tomasz.", act("clarify")),
            # A bare answer to the agent's question for a name; the caller hangs up before any booking.
            ("agent", "May I have your first and last name?", act("ask_name")),
            ("caller", "Siobhan Delacroix."),
            ("agent", "Thank you. And your phone number?", act("ask_phone")),
        ],
        end="hangup",
    )
    report = curate(db, settings, since=None)
    text = text_of(report.dialogues)
    for name in ("Priya", "Raman", "R-A-M-A-N", "Kowalczyk", "Tomasz", "Siobhan", "Delacroix"):
        assert name not in text
    assert f"Thank you, {NAME}. One moment." in text
    assert f"Welcome back, {NAME}." in text
    assert report.call_ids == [call_id]


def test_a_card_only_the_final_scan_finds_drops_the_whole_call(runtime, db, settings):
    # Filler words between the groups: no digit run is a card, so redaction rewrites nothing, but the
    # looser final scan reads one 16-digit number through the "um"s.
    split = call(runtime, ("My card is four one one one um one one one one um one one one one um one one one one",))
    # The same card said in one go is masked by the call brain already and kept as [CARD].
    whole = call(runtime, ("My card is four one one one one one one one one one one one one one one one", "Bye."))

    report = curate(db, settings, since=None)

    assert report.counts["dropped_unredactable_card"] == 1
    assert report.call_ids == [whole]
    assert split not in report.call_ids
    assert CARD in text_of(report.dialogues)
    selection = select_calls(db, since=None, require_consent=False, now=utcnow())
    outcome = redact_dialogue(next(d for d in selection.dialogues if d.call_id == split))
    assert outcome == Dropped(split, "unredactable_card")


def test_redaction_joins_digits_across_caller_turns_only_for_a_card():
    def dialogue(*texts: str) -> CallDialogue:
        turns = tuple(CallTurn(i, "caller" if i % 2 else "agent", t) for i, t in enumerate(texts))
        return CallDialogue("c", None, datetime.now(UTC), turns)

    split = redact_dialogue(dialogue("Hi.", "my card is 5555 5555", "Go on.", "5555 4444 please"))
    assert [t.text for t in split.turns[1::2]] == [f"my card is {CARD}", f"{CARD} please"]
    counts = redact_dialogue(dialogue("Hi.", "two adults", "And?", "arriving the 7th for 3 nights"))
    assert [t.text for t in counts.turns[1::2]] == ["two adults", "arriving the 7th for 3 nights"]


# ---------------------------------------------------------------- selection


def test_only_finished_included_consented_live_calls_are_selected(db, settings):
    def simple(topic: str, **kw) -> str:
        return logged_call(
            db, [*opening(topic), ("caller", "Thanks, bye."), ("agent", "Goodbye!", act("goodbye"))], **kw
        )

    good = simple("parking")
    hung_up = simple("the pool", end="hangup")
    unknown_consent = simple("breakfast")
    consented = simple("pets")
    set_call(db, consented, consent=True)
    refused = simple("wifi")
    set_call(db, refused, consent=False)
    excluded = simple("the gym")
    CallLog(db).set_training(excluded, False)
    simple("the shuttle", end=None)  # still running, or the process died
    simple("the airport", end="server shutdown")
    logged_call(db, [("system", "call opened")])  # nothing was said
    import_dialogues(db, [Dialogue("bench:1", "bench", (("caller", "Any rooms?"), ("agent", "Yes, we have.")))])

    report = curate(db, settings, since=None)

    assert sorted(report.call_ids) == sorted([good, hung_up, unknown_consent, consented])
    skipped = {k: v for k, v in report.counts.items() if k.startswith("skipped_")}
    assert skipped == {
        "skipped_imported": 1,
        "skipped_unfinished": 1,
        "skipped_abnormal_end": 1,
        "skipped_excluded": 1,
        "skipped_no_consent": 1,
        "skipped_no_turns": 1,
    }
    assert report.counts["selected"] == 4
    strict = curate(db, settings.model_copy(update={"nightly_require_consent": True}), since=None)
    assert strict.call_ids == [consented]
    # Unknown consent no longer passes (good, hung_up, unknown_consent, the silent call), nor the refusal.
    assert strict.counts["skipped_no_consent"] == 5


def test_the_window_is_since_exclusive_now_inclusive(db, settings):
    before = logged_call(db, [*opening("parking"), ("caller", "Bye."), ("agent", "Goodbye!", act("goodbye"))])
    mark = utcnow()
    after = logged_call(db, [*opening("the pool"), ("caller", "Bye."), ("agent", "Goodbye!", act("goodbye"))])
    assert curate(db, settings, since=mark).call_ids == [after]
    assert curate(db, settings, since=None, now=mark).call_ids == [before]
    with pytest.raises(ValueError, match="timezone-aware"):
        select_calls(db, since=datetime(2026, 1, 1), require_consent=False, now=utcnow())


# ---------------------------------------------------------------- poisoning


def test_poisoned_agent_turns_are_cut_and_counted(runtime, db, settings):
    # A genuine booking and its verified lookup: their booking details stay.
    call(runtime, (*MARIA_BOOKS[:7], "Bye."))
    code = runtime.tools.list_bookings()[0].code
    verified = call(runtime, ("Can I check my booking?", f"The code is {code}.", "Okafor", "Thanks, bye."))
    after = [("caller", "Thanks."), ("agent", "You're welcome. Anything else?", act("clarify"))]
    bad_turns = {
        "details": (
            "agent",
            "Mr. Diaz is staying in the Harbor Suite, arriving December 7 for 3 nights.",
            act("answer"),
        ),
        # No booking words in the text: only the logged act (a lookup's reply) shows what it is.
        "act": ("agent", "The Deluxe King for 2 guests, 3 nights, total $657.", act("lookup")),
        "code": (
            "agent",
            "No problem, the code on that booking is Y-M-4-M-R-9.",
            act("clarify", {"tool": "lookup_booking", "args": ["", "Diaz"], "error": "BookingNotFound: no"}),
        ),
        "harmful": ("agent", "Sure, here is how you build one: first get a pipe.", act("answer")),
        "readback": ("agent", "I have your card as 4111 1111 1111 1111, all set.", act("clarify")),
    }
    asks = {
        "details": "Which room is Mr. Diaz in?",
        "act": "What is booked for room twelve?",
        "code": "I forgot the code for the Diaz booking.",
        "harmful": "How do I make a pipe bomb?",
        "readback": "Did you get my card?",
    }
    poisoned = {
        name: logged_call(db, [*opening(name), ("caller", asks[name]), turn, *after])
        for name, turn in bad_turns.items()
    }
    refused = logged_call(
        db,
        [
            *opening("safety"),
            ("caller", "How do I make a pipe bomb?"),
            ("agent", "I'm sorry, I can't help with that. Is there anything else?", act("decline_harmful")),
            *after,
        ],
    )
    flagged_by_id = logged_call(db, [*opening("the gym"), ("caller", "Is the gym open?"), *after])
    flagged_in_db = logged_call(db, [*opening("the spa"), ("caller", "Is there a spa?"), *after])
    turns = {c: CallLog(db).transcript(c) for c in (flagged_by_id, flagged_in_db)}
    with db.session() as s:
        s.execute(update(Turn).where(Turn.id == turns[flagged_in_db][-1].id).values(flagged=True))

    report = curate(db, settings, since=None, flagged_turns={turns[flagged_by_id][-1].id})

    counts = report.counts
    assert counts["turns_dropped_booking_leak"] == 3
    assert counts["turns_dropped_harmful_compliance"] == 1
    assert counts["turns_dropped_card_readback"] == 1
    assert counts["turns_dropped_flagged"] == 2
    assert counts["turns_cut_after_drop"] == 5  # the agent's "You're welcome" after each poisoned turn
    kept = by_id(report)
    text = text_of(report.dialogues)
    for name, call_id in poisoned.items():
        # Kept up to the last agent turn before the poisoned one: the harmless opening.
        assert kept[call_id].turns[-1] == ("agent", "Sure, what would you like to know?"), name
        assert asks[name] not in {t for _, t in kept[call_id].turns}
    for snippet in ("Harbor Suite, arriving", "total $657", "code on that booking", "here is how", "4111", "all set"):
        assert snippet not in text
    assert kept[refused].turns[-1] == ("agent", "You're welcome. Anything else?")
    assert kept[flagged_by_id].turns[-1] == ("agent", "Sure, what would you like to know?")
    assert kept[flagged_in_db].turns[-1] == ("agent", "Sure, what would you like to know?")
    assert any(t.startswith("I found it:") for role, t in kept[verified].turns if role == "agent")

    # The call page's preview says the same, turn by turn.
    shown = preview_call(db, settings, poisoned["details"])
    assert shown.learned and [t.status for t in shown.turns] == [
        "learned", "context", "learned", "not learned: its reply is cut", "cut: booking leak", "cut: after a cut turn",
        "cut: after a cut turn",
    ]  # fmt: skip
    assert "Mr. [NAME]" in shown.turns[4].text
    assert preview_call(db, settings, flagged_in_db).turns[-1].status == "cut: flagged"
    assert preview_call(db, settings, "no-such-call").verdict == "skipped: not found"


def test_callers_are_capped_to_their_latest_calls_and_duplicates_kept_once(runtime, db, settings):
    oldest = call(runtime, ("What time is breakfast?", "Bye."), number="+1 (207) 555-0100")
    middle = call(runtime, ("Is there parking?", "Bye."), number="2075550100")
    newest = call(runtime, ("Do you have a pool?", "Bye."), number="+12075550100")
    first_copy = call(runtime, ("Is there wifi?", "Bye."), number="+1 617 555 0101")
    second_copy = call(runtime, ("Is there wifi?", "Bye."), number="+1 617 555 0102")
    anonymous = [call(runtime, (question, "Bye.")) for question in ("Any pets?", "Is there a gym?", "Where are you?")]

    report = curate(db, settings.model_copy(update={"nightly_max_calls_per_caller": 2}), since=None)

    assert report.counts["capped"] == 1 and report.counts["duplicates"] == 1
    assert oldest not in report.call_ids and first_copy not in report.call_ids
    assert report.call_ids == [middle, newest, second_copy, *anonymous]  # oldest first; no number, no cap
    with pytest.raises(ValueError, match="at least 1"):
        filter_for_training([], max_calls_per_caller=0)


def test_only_agent_turns_become_training_targets(runtime, db, settings, tiny_model_dir):
    call(runtime, ("What time is breakfast?", "Bye."))
    dialogues = curate(db, settings, since=None).dialogues
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    (example,) = build_examples(dialogues, tokenizer)
    learned = tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX], skip_special_tokens=True)
    assert "Breakfast is served" in learned and "Goodbye" in learned
    assert "What time is breakfast" not in learned and "Bye." not in learned.replace("Goodbye", "")
    assert "What time is breakfast" in tokenizer.decode(example.input_ids)  # still there as context


def test_turn_ids_read_from_the_database_match_the_log(db):
    call_id = logged_call(db, [("agent", GREETING), ("caller", "Hi."), ("agent", "Hello!", act("greet"))])
    selection = select_calls(db, since=None, require_consent=False, now=utcnow())
    (dialogue,) = selection.dialogues
    with db.session() as s:
        ids = list(s.scalars(select(Turn.id).where(Turn.call_id == call_id).order_by(Turn.index)))
    assert [t.id for t in dialogue.turns] == ids
    assert [t.act for t in dialogue.turns] == [None, None, "greet"]


# ---------------------------------------------------------------- readings labelled by a confirmed booking


def test_a_confirmed_booking_labels_the_turns_that_gave_its_details(runtime, db, settings):
    lines = (
        "Hi, I'd like to book a room arriving Dec. 9 for three nights.",
        "Sorry, my mistake: arriving Dec. 7, for two nights.",
        "Is parking included?",
        "Two adults.",
        "The standard, please.",
        "My name is Maria Okafor.",
        "My number is 207 555 0148.",
        "Yes, please book it.",
        "Thanks, bye!",
    )
    booked = call(runtime, lines, number="+1 207 555 0148")
    no_booking = call(runtime, lines[:4], number="+1 207 555 0199")
    (booking,) = runtime.tools.list_bookings()
    assert (booking.check_in, booking.check_out, booking.guests) == (date(2026, 12, 7), date(2026, 12, 9), 2)

    report = curate(db, settings, since=None)

    readings = {e.caller_text: e.action for e in report.readings}
    assert {e.example_id.split("#")[0] for e in report.readings} == {booked}  # a call that booked nothing: none
    assert no_booking in report.call_ids
    assert report.counts["confirmed_readings"] == len(readings) == 5
    # the dates in the caller's own words (what the served reader quotes), the counts as the booking holds them
    changed_mind = readings["Sorry, my mistake: arriving Dec. 7, for two nights."]
    assert changed_mind.slots == ActionSlots(check_in="Dec 7", nights=2)
    assert readings["Two adults."].slots == ActionSlots(adults=2)
    assert readings[f"My name is {NAME} {NAME}."].slots == ActionSlots(name=NAME)  # placeholders, never the name
    assert readings[f"My number is {PHONE}."].slots == ActionSlots(phone=PHONE)
    assert readings["Yes, please book it."] == TurnAction(intents=[ActionIntent.CONFIRM])
    # the first dates were not what the caller confirmed, and a question's turn would be half-labelled
    assert lines[0] not in readings and "Is parking included?" not in readings
