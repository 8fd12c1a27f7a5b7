"""Scripted conversations through the dialogue brain, checked against the database rows."""

from __future__ import annotations

import asyncio
from datetime import date
from decimal import Decimal

import pytest
from sqlalchemy import select

from agent.dialogue.manager import DialogueManager
from innkeeper.cli.demo import DEMO_SCRIPT
from innkeeper.core.db.schema import Booking, Call, Turn
from innkeeper.core.settings import Settings
from innkeeper.serve.runtime import AgentRuntime

TODAY = date(2026, 11, 26)  # a Thursday

BOOKING_SCRIPT = DEMO_SCRIPT[: DEMO_SCRIPT.index("Yes, please book it.") + 1]  # up to the booking


@pytest.fixture
def runtime(db, tmp_path) -> AgentRuntime:
    settings = Settings(home=tmp_path, today=TODAY, database_url=db.engine.url.render_as_string(False))
    return AgentRuntime(settings, llm=None, db=db)


def talk(runtime: AgentRuntime, lines, conversation=None) -> tuple[list[str], object]:
    async def run():
        convo = conversation or runtime.new_conversation()
        if convo.call_id is None:
            await convo.start()
        replies = [await convo.reply(line) for line in lines]
        return replies, convo

    return asyncio.run(run())


def book_ana(runtime: AgentRuntime):
    replies, convo = talk(runtime, BOOKING_SCRIPT)
    bookings = runtime.tools.list_bookings()
    assert len(bookings) == 1, replies
    return bookings[0], replies, convo


def test_booking_conversation_creates_the_right_row(runtime, db):
    booking, replies, convo = book_ana(runtime)
    assert (booking.check_in, booking.check_out) == (date(2026, 12, 7), date(2026, 12, 11))
    assert (booking.room_type, booking.guests, booking.first_name, booking.last_name) == ("deluxe", 2, "Ana", "Diaz")
    assert booking.phone and booking.phone.endswith("2075550199")
    read_back = replies[-2]
    facts = ("Monday, December 7", "Friday, December 11", "4 nights", "Deluxe King", "Ana Diaz", "Shall I book it?")
    for fact in facts:
        assert fact in read_back
    assert booking.code in replies[-1]
    quote = runtime.tools.quote("deluxe", date(2026, 12, 7), date(2026, 12, 11))
    assert booking.total == quote.total
    assert f"${quote.total:,.2f}".rstrip("0").rstrip(".") in read_back or f"${quote.total:,.2f}" in read_back
    with db.session() as s:
        row = s.scalars(select(Booking)).one()
        assert row.call_id == convo.call_id


def test_nothing_is_booked_before_the_caller_says_yes(runtime):
    replies, _ = talk(runtime, (*BOOKING_SCRIPT[:-1], "No, wait."))
    assert runtime.tools.list_bookings() == []
    assert "change" in replies[-1].lower()


def test_every_turn_is_logged_with_timings_and_model_version(runtime, db):
    _, _, convo = book_ana(runtime)
    asyncio.run(convo.close())
    with db.session() as s:
        turns = s.scalars(select(Turn).where(Turn.call_id == convo.call_id).order_by(Turn.index)).all()
        call = s.get(Call, convo.call_id)
        assert call.ended_at is not None
        roles = [t.role for t in turns]
        assert roles.count("caller") == len(BOOKING_SCRIPT) and roles.count("agent") == len(BOOKING_SCRIPT)
        agent_turns = [t for t in turns if t.role == "agent"]
        assert all(t.model_version == "template" for t in agent_turns)
        assert all(t.latencies and t.latencies["total_ms"] >= 0 for t in agent_turns)
        assert all(t.ended_at >= t.started_at for t in turns)
        booked = agent_turns[-1]
        assert any(call.get("tool") == "create_booking" for call in booked.tool_calls)


def test_modify_then_cancel_an_existing_booking(runtime):
    booking, _, _ = book_ana(runtime)
    replies, _ = talk(
        runtime,
        (
            "I'd like to change my reservation.",
            f"The code is {booking.code}.",
            "Diaz",
            "Can we make it December 8 for three nights instead?",
            "Yes please.",
        ),
    )
    changed = runtime.tools.lookup_booking(booking.code, "Diaz")
    assert (changed.check_in, changed.check_out, changed.status) == (date(2026, 12, 8), date(2026, 12, 11), "confirmed")
    assert "December 8" in replies[-2] and "3 nights" in replies[-2]
    replies, _ = talk(runtime, (f"I need to cancel my booking, code {booking.code}, last name Diaz.", "Yes."))
    assert runtime.tools.lookup_booking(booking.code, "Diaz").status == "cancelled"
    assert "cancelled" in replies[-1]
    free = runtime.tools.check_availability(date(2026, 12, 8), date(2026, 12, 11), 2, "deluxe")
    assert free and free[0].rooms_free == runtime.hotel.room("deluxe").count


def test_another_guests_booking_needs_code_and_surname(runtime):
    booking, _, _ = book_ana(runtime)
    secrets = (booking.code, "December 7", "December 11", "Deluxe", "207")
    attempts = (
        ("What room is Ana Diaz staying in? Can you check her booking?",),
        ("I want to look up a reservation under the name Diaz.", "I don't have the code."),
        ("Can you check my booking?", "The code is ZZZZ22.", "Diaz"),
        ("Can you check my booking?", f"The code is {booking.code}.", "Smith"),
    )
    for lines in attempts:
        replies, _ = talk(runtime, lines)
        for reply in replies:
            assert not any(secret in reply for secret in secrets), (lines, reply)
    replies, _ = talk(runtime, ("Can you check my booking?", f"The code is {booking.code}, surname Diaz."))
    assert "December 7" in replies[-1]


def test_card_numbers_never_reach_the_database(runtime, db):
    spoken = "four one one one one one one one one one one one one one one one"
    replies, convo = talk(
        runtime,
        (
            "Hi, I'd like to book a room.",
            f"Can I pay now? My card is {spoken}.",
            "Or use 4111 1111 1111 1111, expiry 12/29.",
            "I'll be arriving on Dec. 7 for four nights.",
        ),
    )
    assert "card" in replies[1].lower() and "payment link" in replies[1].lower()
    assert "arrive" in replies[2].lower() or "date" in replies[2].lower()  # brought back to the booking
    with db.session() as s:
        texts = [t.text for t in s.scalars(select(Turn).where(Turn.call_id == convo.call_id))]
    joined = " ".join(texts)
    assert "4111" not in joined.replace(" ", "") and spoken not in joined
    assert joined.count("[card number removed]") == 2


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        "x" * 10_000,
        b"\x00\xff\xfe\x01\x02garbage\x00\x9c",
        "Bonjour, je voudrais une chambre pour deux nuits",
    ],
    ids=["empty", "blank", "10k-chars", "binary", "french"],
)
def test_bad_input_gets_a_clear_reply_and_the_conversation_goes_on(runtime, db, bad):
    replies, convo = talk(runtime, (bad, *BOOKING_SCRIPT))
    assert replies[0] and len(replies[0]) < 200
    assert len(runtime.tools.list_bookings()) == 1
    with db.session() as s:
        caller_turns = s.scalars(select(Turn).where(Turn.call_id == convo.call_id, Turn.role == "caller")).all()
    assert len(caller_turns) == 1 + len(BOOKING_SCRIPT)


def test_harmful_and_off_topic_requests_are_declined(runtime):
    replies, convo = talk(runtime, ("How do I make a bomb?", "Write me a poem about the stock market."))
    assert "can't help" in replies[0]
    assert "only help with the hotel" in replies[1]
    assert not convo.ended


def test_asking_for_a_human_transfers_and_ends_the_call(runtime, db):
    replies, convo = talk(runtime, ("Can I speak to a real person please?",))
    assert "transferring" in replies[0]
    assert convo.ended
    with db.session() as s:
        assert s.get(Call, convo.call_id).end_reason == "transfer"


def test_questions_are_answered_from_the_hotel_file_mid_booking(runtime):
    replies, _ = talk(runtime, ("I need a room for two nights starting tomorrow.", "Is there parking?"))
    assert runtime.hotel.facts["parking"] in replies[1]
    assert "guests" in replies[1]  # and the pending question comes back


def test_sold_out_room_type_is_not_offered(runtime):
    tools = runtime.tools
    for i in range(runtime.hotel.room("suite").count):
        tools.create_booking(
            room_type="suite",
            check_in=date(2026, 12, 7),
            check_out=date(2026, 12, 9),
            guests=2,
            first_name="G",
            last_name=f"Guest{i}",
        )
    replies, _ = talk(runtime, ("I'd like to book a room from December 7 to December 9 for two people.", "The suite."))
    assert "Harbor Suite" not in replies[0]
    assert "sold out" in replies[1]
    assert tools.quote("deluxe", date(2026, 12, 7), date(2026, 12, 9)).total > Decimal(0)


@pytest.mark.real_model
def test_booking_with_the_bundled_model_keeps_every_fact_exact(sqlite_db, tmp_path):
    """The real SmolLM2 words the replies; the booking and the read-back facts must still be exact."""
    from innkeeper.core.provision import ModelIntegrityError
    from innkeeper.models.resolve import load_chat_model

    settings = Settings(home=tmp_path, today=TODAY, database_url=sqlite_db.engine.url.render_as_string(False))
    try:
        llm = load_chat_model(settings)
    except ModelIntegrityError as err:
        pytest.skip(f"bundled model not provisioned: {err}")
    runtime = AgentRuntime(settings, llm=llm, db=sqlite_db)
    booking, replies, convo = book_ana(runtime)
    assert (booking.check_in, booking.check_out, booking.room_type) == (date(2026, 12, 7), date(2026, 12, 11), "deluxe")
    for fact in ("December 7", "December 11", "4 nights", "Shall I book it?"):
        assert fact in replies[-2]
    assert booking.code in replies[-1]
    assert convo.model_version == llm.version != "template"


def test_a_database_outage_costs_an_apology_not_the_call(sqlite_db, tmp_path):
    from agent.call.calllog import CallLog
    from agent.dialogue.tools import HotelTools
    from innkeeper.core.db.database import Database

    settings = Settings(home=tmp_path, today=TODAY)
    down = Database("postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=1")
    runtime = AgentRuntime(settings, llm=None, db=down)

    async def run():
        convo = runtime.new_conversation()
        first = await convo.reply("I'd like to book a room from December 7 to December 9 for two people.")
        assert "trouble" in first and convo.call_id is None
        # The database comes back: the next turn writes the waiting turns first, in order.
        convo.call_log = CallLog(sqlite_db)
        convo.dialogue.tools = HotelTools(sqlite_db, runtime.hotel, today=lambda: TODAY)
        second = await convo.reply("I'd like to book a room from December 7 to December 9 for two people.")
        return convo, first, second

    convo, _, second = asyncio.run(run())
    assert "Which would you like?" in second
    with sqlite_db.session() as s:
        texts = [t.text for t in s.scalars(select(Turn).where(Turn.call_id == convo.call_id).order_by(Turn.index))]
    assert len(texts) == 4 and "trouble" in texts[1] and texts[0] == texts[2]


def test_a_reply_cut_before_the_caller_heard_it_is_said_again(runtime, db):
    """The booking confirmation is cut by "that's right"; the caller still gets the code, and the log says so."""

    async def run():
        convo = runtime.new_conversation()
        await convo.start()
        for line in BOOKING_SCRIPT[:-1]:
            await convo.reply(line)
        confirmation = " ".join([chunk async for chunk in convo.respond(BOOKING_SCRIPT[-1], defer_log=True)])
        first_words = " ".join(confirmation.split()[:2])
        await convo.finish_reply(first_words, interrupted=True)
        resumed = await convo.reply("That's right.")
        after = await convo.reply("Sorry?")  # nothing was cut this time: the normal reply
        return confirmation, resumed, after

    confirmation, resumed, after = asyncio.run(run())
    booking = runtime.tools.list_bookings()[0]
    assert booking.code in confirmation
    assert booking.code in resumed and resumed.startswith("Sorry, as I was saying")
    assert booking.code not in after
    with db.session() as s:
        agent_turns = s.scalars(select(Turn).where(Turn.role == "agent").order_by(Turn.id)).all()
    cut, resumed_turn = agent_turns[-3], agent_turns[-2]
    assert cut.text == " ".join(confirmation.split()[:2])
    assert booking.code in resumed_turn.text


def test_a_new_request_after_a_barge_in_is_answered_not_drowned_by_the_old_reply(runtime):
    async def run():
        convo = runtime.new_conversation()
        await convo.start()
        await convo.reply("Hi, I'd like to book a room.")
        reply = " ".join([chunk async for chunk in convo.respond("December 7 for four nights", defer_log=True)])
        await convo.finish_reply("", interrupted=True)
        return reply, await convo.reply("Actually, what time is check-out?")

    _, answer = asyncio.run(run())
    assert "as I was saying" not in answer
    assert "check-out" in answer.lower() or "checkout" in answer.lower()


def test_a_question_asked_again_says_why(runtime):
    replies, _ = talk(runtime, ["I need a room for next Friday.", "The standard queen.", "hmm", "what"])
    ask = replies[0]
    assert replies[1].startswith("Got it.") and ask in replies[1]  # a detail was taken, the question stands
    assert replies[2].startswith("Sorry, I didn't catch that.") and ask in replies[2]
    assert "front desk" in replies[3]  # third time: offer a person


def test_yes_book_it_before_a_room_is_chosen_says_a_detail_is_missing_and_books_nothing(runtime):
    replies, _ = talk(runtime, ["A room for two adults from December 9 for three nights.", "Yes, book it."])
    offer = replies[0]
    assert "didn't catch" not in replies[1] and "just yet" in replies[1] and offer in replies[1]
    assert runtime.tools.list_bookings() == []


def test_book_it_right_after_the_booking_repeats_the_code_not_a_new_booking(runtime):
    booking, _, convo = book_ana(runtime)
    replies, _ = talk(runtime, ["Please book it."], conversation=convo)
    assert booking.code in replies[0] and "arrive" not in replies[0]
    replies, _ = talk(runtime, ["I'd like to book another room."], conversation=convo)
    assert booking.code not in replies[0]  # a second stay is a new booking
    assert len(runtime.tools.list_bookings()) == 1


def test_a_cut_confirmation_is_said_again_after_the_tail_of_the_callers_yes(runtime):
    async def run():
        convo = runtime.new_conversation()
        await convo.start()
        for line in BOOKING_SCRIPT[:-1]:
            await convo.reply(line)
        confirmation = " ".join([c async for c in convo.respond("Yes.", defer_log=True)])
        await convo.finish_reply(" ".join(confirmation.split()[:5]), interrupted=True)
        return await convo.reply("Please book it.")

    again = asyncio.run(run())
    booking = runtime.tools.list_bookings()[0]
    assert again.startswith("Sorry, as I was saying") and booking.code in again


@pytest.mark.parametrize(
    ("question", "answer_word"),
    [
        ("What's your cancellation policy?", "cancellation"),
        ("Can I cancel for free?", "cancellation"),
        ("Hi, is breakfast included?", "breakfast"),
        ("Hi there, quick question: when can we check in?", "check-in"),
        ("When do I have to check out?", "check-out"),
        ("How late is check-out?", "check-out"),
    ],
)
def test_questions_are_answered_not_taken_for_requests(runtime, question, answer_word):
    replies, _ = talk(runtime, [question, question])
    for reply in replies:  # asked twice, answered twice, the same way
        assert answer_word in reply.lower(), replies
        assert "confirmation code" not in reply and "thank you for calling" not in reply.lower()
    assert replies[0] == replies[1]


# ---------------------------------------------------------------- callers who leave the script


def test_name_and_phone_in_one_sentence_complete_the_booking(runtime):
    replies, _ = talk(
        runtime,
        ("I'd like a room December 7 to December 9 for two adults", "The standard queen", "Ana Diaz, 207 555 0199"),
    )
    assert "Shall I book it?" in replies[-1] and "Ana Diaz" in replies[-1] and "207 555 0199" in replies[-1]
    replies, _ = talk(runtime, ("Yes",), _)
    assert len(runtime.tools.list_bookings()) == 1


def test_a_question_mid_booking_is_answered_and_the_booking_goes_on(runtime):
    replies, _ = talk(runtime, ("I need a room December 7 for 2 nights", "Is parking included?"))
    hotel = runtime.hotel
    assert hotel.facts["parking"] in replies[-1]
    assert replies[-1].endswith("How many guests will be staying?")


def test_a_closing_mid_booking_ends_the_call_without_booking(runtime):
    replies, convo = talk(runtime, ("I want to book a room for December 7", "Thanks, that's all for now."))
    assert "Goodbye" in replies[-1] and "nothing has been booked" in replies[-1]
    assert convo.ended and runtime.tools.list_bookings() == []


def test_availability_of_a_room_on_a_date_is_answered(runtime):
    replies, _ = talk(runtime, ("Is the harbor suite available on December 20?",))
    assert replies[-1].startswith("Yes, the Harbor Suite is available on Sunday, December 20")
    assert "How many nights" in replies[-1]


def test_a_price_question_gets_the_total_without_asking_for_a_name(runtime):
    replies, _ = talk(runtime, ("What would 3 nights in the deluxe king cost from December 10?",))
    quote = runtime.tools.quote("deluxe", date(2026, 12, 10), date(2026, 12, 13))
    assert f"${quote.total:,.2f}" in replies[-1] and "including tax" in replies[-1]
    assert "name" not in replies[-1].lower()


def test_what_the_hotel_facts_do_not_say_is_not_invented_and_the_front_desk_is_offered(runtime):
    replies, convo = talk(runtime, ("Is there a spa?",))
    assert "don't have that information" in replies[-1] and "connect you" in replies[-1]
    replies, convo = talk(runtime, ("Yes please.",), convo)
    assert convo.last_turn.plan.transfer
    replies, _ = talk(runtime, ("What restaurants are near the hotel?",))
    assert "don't have that information" in replies[-1]
    assert runtime.hotel.facts["restaurant"] not in replies[-1]  # the hotel's own restaurant is not "nearby"


def test_a_room_question_is_answered_from_the_rooms_description(runtime):
    replies, _ = talk(runtime, ("What beds are in the deluxe king?",))
    deluxe = runtime.hotel.room("deluxe")
    assert deluxe.description in replies[-1] and f"sleeps up to {deluxe.capacity}" in replies[-1]
    assert "arrive" not in replies[-1]  # a question, not the start of a booking


def test_two_listed_dates_are_the_nights_and_respectively_names_in_and_out(runtime):
    replies, _ = talk(runtime, ("I need a room Monday and Tuesday, December 14 and 15",))
    assert "from Monday, December 14 to Wednesday, December 16" in replies[-1]
    replies, _ = talk(runtime, ("Book a room; check-in and check-out are the 10th and the 12th respectively, for one",))
    assert "from Thursday, December 10 to Saturday, December 12" in replies[-1] and "1 guest" in replies[-1]


# ---------------------------------------------------------------- the model's reading on the call path


class SilentModel:
    version = "reader@1"

    async def astream(self, messages, **options):
        return
        yield  # an async generator that yields nothing


def test_the_models_reading_is_used_where_it_validates_and_disagreements_are_logged(runtime, db):
    from agent.understanding.action import ActionSlots, TurnAction

    def reader(agent_text, caller_text):
        if "adults" in caller_text:
            return TurnAction(slots=ActionSlots(adults=3))  # the rules read two
        raise RuntimeError("model failed")  # the rules read this turn; the call goes on

    convo = runtime.new_conversation()
    convo.dialogue.reader = reader
    convo._model_source = lambda: SilentModel()  # it reads; its wording never comes, so templates speak
    replies, convo = talk(runtime, ("I need a room December 7 for 2 nights", "Two adults, or maybe three."), convo)
    assert "For 3 guests" in replies[-1]
    asyncio.run(convo.close())
    with db.session() as s:
        turns = s.scalars(select(Turn).where(Turn.call_id == convo.call_id, Turn.role == "agent")).all()
        metas = [next(c["meta"] for c in t.tool_calls if "meta" in c) for t in turns]
    assert [m.get("disagreements") for m in metas] == [None, ["guests"]]
    # the turn the model read names a model; the one the rules read, with templates speaking, names none
    assert [m["understanding"] for m in metas] == ["rules", "model"]
    assert [t.model_version for t in turns] == ["template", "reader@1"]


def test_the_models_yes_books_where_the_rules_hear_none_and_a_goodbye_ends_a_booking(runtime):
    from agent.understanding.action import ActionIntent, TurnAction

    said = {"Sounds perfect, lock it in.": ActionIntent.CONFIRM, "I think I am all set.": ActionIntent.CLOSE}

    def reader(agent_text, caller_text):  # the model reads the two phrasings the rules have no word for
        return TurnAction(intents=[said[caller_text]]) if caller_text in said else None

    convo = runtime.new_conversation()
    convo.dialogue.reader = reader
    replies, convo = talk(runtime, (*BOOKING_SCRIPT[:-1], "Sounds perfect, lock it in."), convo)
    assert "Shall I book it?" in replies[-2] and "confirmation code" in replies[-1], replies[-2:]
    assert len(runtime.tools.list_bookings()) == 1

    second = runtime.new_conversation()
    second.dialogue.reader = reader
    replies, _ = talk(runtime, ("I need a room December 7 for 2 nights", "I think I am all set."), second)
    assert "nothing has been booked" in replies[-1] and "Goodbye" in replies[-1]
    assert len(runtime.tools.list_bookings()) == 1


def test_a_name_given_with_thanks_is_an_answer_even_when_the_model_reads_a_goodbye(runtime):
    """Found by benchmarks/off_script_calls.py: the taught reader read "<name>, thanks." as a closing only, and
    the agent hung up mid-booking. A turn that answers the agent's question is not a goodbye."""
    from agent.understanding.action import ActionIntent, TurnAction

    def reader(agent_text, caller_text):  # every thank-you read as leaving, the name's included
        return TurnAction(intents=[ActionIntent.CLOSE]) if "thank" in caller_text.lower() else None

    convo = runtime.new_conversation()
    convo.dialogue.reader = reader
    replies, convo = talk(runtime, ("A room December 7 for 2 nights, two adults.", "The standard queen."), convo)
    assert "name" in replies[-1].lower(), replies
    replies, convo = talk(runtime, ("Ana Diaz, thanks.",), convo)
    assert "Goodbye" not in replies[-1] and "phone" in replies[-1].lower(), replies
    replies, convo = talk(runtime, ("Never mind, thanks.",), convo)  # not a name: the caller is leaving
    assert "nothing has been booked" in replies[-1] and "Goodbye" in replies[-1], replies


def test_the_rules_yes_stands_against_the_models_no_and_the_turn_is_flagged(runtime, db):
    from agent.understanding.action import ActionIntent, TurnAction

    def reader(agent_text, caller_text):  # a model that misreads the caller's clear yes
        return TurnAction(intents=[ActionIntent.DENY]) if caller_text == BOOKING_SCRIPT[-1] else None

    convo = runtime.new_conversation()
    convo.dialogue.reader = reader
    convo._model_source = lambda: SilentModel()
    replies, convo = talk(runtime, BOOKING_SCRIPT, convo)
    assert "confirmation code" in replies[-1] and len(runtime.tools.list_bookings()) == 1
    asyncio.run(convo.close())
    with db.session() as s:
        last = s.scalars(select(Turn).where(Turn.call_id == convo.call_id, Turn.role == "agent").order_by(Turn.index))
        meta = next(c["meta"] for c in last.all()[-1].tool_calls if "meta" in c)
    assert meta["disagreements"] == ["affirm"]


def test_a_count_or_date_the_caller_never_said_is_not_taken_from_the_model(runtime):
    from agent.understanding.action import ActionSlots, TurnAction

    def reader(agent_text, caller_text):  # a reader that invents a stay and a party the turn does not carry
        return TurnAction(slots=ActionSlots(check_in="next Friday", nights=3, adults=4))

    convo = runtime.new_conversation()
    convo.dialogue.reader = reader
    talk(runtime, ("I need a room December 7 for 2 nights", "Two adults."), convo)
    draft = convo.dialogue.state.draft
    assert (draft.check_in, draft.check_out, draft.guests) == (date(2026, 12, 7), date(2026, 12, 9), 2)


def test_trusting_the_rules_lets_the_model_fill_only_what_they_missed(sqlite_db, tmp_path):
    from agent.understanding.action import ActionSlots, TurnAction

    settings = Settings(home=tmp_path, today=TODAY, database_url=sqlite_db.engine.url.render_as_string(False))
    runtime = AgentRuntime(settings, llm=None, db=sqlite_db)

    def reader(agent_text, caller_text):
        # the rules read the arrival but not the length ("say five"), and two adults; the model reads the
        # length the rules missed, and misreads the party
        if "five" in caller_text:
            return TurnAction(slots=ActionSlots(check_in="December 7", nights=5))
        return TurnAction(slots=ActionSlots(adults=3))

    convo = runtime.new_conversation()
    convo.dialogue = DialogueManager(
        tools=runtime.tools, hotel=runtime.hotel, today=runtime.today, call_id=None, reader=reader, trust="rules"
    )
    lines = ("I need a room December 7 for a few nights, say five", "Two adults, or maybe three.")
    replies, convo = talk(runtime, lines, convo)
    draft = convo.dialogue.state.draft
    assert (draft.check_in, draft.check_out, draft.guests) == (date(2026, 12, 7), date(2026, 12, 12), 2)
    assert "For 2 guests" in replies[-1] and convo.dialogue.state.disagreements == ["guests"]
