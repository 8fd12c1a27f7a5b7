"""Tests for the hotel database and booking tools on SQLite and PostgreSQL, concurrency included."""

from __future__ import annotations

import multiprocessing
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Inspector, MetaData, inspect, select
from sqlalchemy.exc import OperationalError

from agent.call.calllog import CallLog
from agent.dialogue.tools import (
    BookingNotFound,
    BookingView,
    HotelTools,
    InvalidRequest,
    NoAvailability,
    ToolError,
)
from innkeeper.core.codes import CODE_PATTERN
from innkeeper.core.db.database import Database, DatabaseUnavailable
from innkeeper.core.db.schema import Base, Booking, Guest, Inventory, Rate, RoomType
from innkeeper.core.hotel import HotelProfile, load_hotel
from innkeeper.core.settings import Settings

TODAY = date(2030, 1, 7)  # a Monday


def day(offset: int) -> date:
    return TODAY + timedelta(days=offset)


def pinned_today() -> date:
    return TODAY


@pytest.fixture
def tools(db: Database, hotel: HotelProfile) -> HotelTools:
    return HotelTools(db, hotel, today=pinned_today)


def book(tools: HotelTools, room_type: str = "standard", start: int = 3, nights: int = 2, **extra) -> BookingView:
    details = {"guests": 2, "first_name": "Ada", "last_name": "Lovelace", **extra}
    return tools.create_booking(room_type=room_type, check_in=day(start), check_out=day(start + nights), **details)


def inventory(db: Database, room_type: str) -> dict[date, tuple[int, int]]:
    """night -> (total, booked) for the room type's inventory rows."""
    with db.session(write=False) as session:
        rows = session.execute(
            select(Inventory.night, Inventory.total, Inventory.booked)
            .join(RoomType, RoomType.id == Inventory.room_type_id)
            .where(RoomType.code == room_type)
        )
        return {night: (total, booked) for night, total, booked in rows}


def booked_nights(db: Database, room_type: str) -> dict[date, int]:
    return {night: booked for night, (_, booked) in inventory(db, room_type).items() if booked}


# --- availability and quotes -------------------------------------------------------------------


def test_availability_lists_room_types_that_fit(tools: HotelTools) -> None:
    offers = tools.check_availability(day(3), day(5), guests=3)
    assert [(o.room_type, o.capacity, o.rooms_free) for o in offers] == [("deluxe", 3, 8), ("suite", 4, 3)]
    assert offers[0].nightly_rates == (Decimal("219.00"), Decimal("259.00"))  # Thursday, Friday
    assert [o.room_type for o in tools.check_availability(day(3), day(5))] == ["standard", "deluxe", "suite"]
    assert tools.check_availability(day(3), day(5), guests=5) == []


def test_availability_counts_free_rooms_and_drops_sold_out_types(tools: HotelTools) -> None:
    book(tools, "standard")
    for _ in range(3):
        book(tools, "suite", start=4, nights=1)
    offers = {o.room_type: o.rooms_free for o in tools.check_availability(day(3), day(5))}
    assert offers == {"standard": 11, "deluxe": 8}
    assert tools.check_availability(day(3), day(5), room_type="suite") == []
    assert tools.check_availability(day(5), day(6), room_type="suite")[0].rooms_free == 3


def test_quote_mixes_weekday_and_weekend_rates_and_adds_taxes(tools: HotelTools) -> None:
    quote = tools.quote("standard", day(3), day(7))  # Thursday to Monday
    assert quote.nights == 4
    assert quote.nightly_rates == tuple(Decimal(x) for x in ("149.00", "179.00", "179.00", "149.00"))
    assert quote.subtotal == Decimal("656.00")
    assert quote.taxes == Decimal("59.04")
    assert quote.total == Decimal("715.04")
    assert quote.currency == "USD"


def test_quote_uses_the_latest_rate_covering_each_night(db: Database, tools: HotelTools) -> None:
    with db.session() as session:
        suite_id = session.scalar(select(RoomType.id).where(RoomType.code == "suite"))
        session.add(Rate(room_type_id=suite_id, valid_from=day(1), valid_to=day(1), nightly_rate=Decimal("400.05")))
    quote = tools.quote("suite", day(0), day(3))
    assert quote.nightly_rates == (Decimal("389.00"), Decimal("400.05"), Decimal("389.00"))
    assert (quote.subtotal, quote.taxes, quote.total) == (
        Decimal("1178.05"),
        Decimal("106.02"),
        Decimal("1284.07"),
    )


# --- bookings ------------------------------------------------------------------------------------


def test_create_booking_writes_booking_guest_and_inventory(db: Database, tools: HotelTools) -> None:
    call_id = CallLog(db).start_call(channel="text")
    view = book(tools, "deluxe", start=3, nights=2, guests=3, phone=" +1 555 0100 ", call_id=call_id)
    assert CODE_PATTERN.fullmatch(view.code)
    assert (view.room_type, view.guests, view.status, view.phone) == ("deluxe", 3, "confirmed", "+1 555 0100")
    assert view.total == Decimal("521.02")  # (219 + 259) * 1.09
    with db.session(write=False) as session:
        booking = session.scalar(select(Booking).where(Booking.code == view.code))
        assert booking is not None
        assert (booking.subtotal, booking.taxes, booking.call_id) == (
            Decimal("478.00"),
            Decimal("43.02"),
            call_id,
        )
        assert booking.created_at.tzinfo is not None
        assert session.scalar(select(Guest.last_name).where(Guest.id == booking.guest_id)) == "Lovelace"
    assert inventory(db, "deluxe") == {day(3): (8, 1), day(4): (8, 1)}


def test_lookup_needs_code_and_surname(tools: HotelTools) -> None:
    view = book(tools, last_name="Van der Berg")
    spaced_code = " ".join(view.code.lower())
    assert tools.lookup_booking(spaced_code, " VANDER berg ") == view
    with pytest.raises(BookingNotFound) as wrong_surname:
        tools.lookup_booking(view.code, "Lovelace")
    with pytest.raises(BookingNotFound) as wrong_code:
        tools.lookup_booking("AAAAAA" if view.code != "AAAAAA" else "CCCCCC", "Van der Berg")
    assert str(wrong_surname.value) == str(wrong_code.value)


def test_modify_dates_releases_old_nights_and_reserves_new_ones(db: Database, tools: HotelTools) -> None:
    view = book(tools, "standard", start=3, nights=2)  # Thursday, Friday
    changed = tools.modify_booking(view.code, "lovelace", check_in=day(4), check_out=day(7))
    assert (changed.check_in, changed.check_out, changed.code) == (day(4), day(7), view.code)
    assert changed.total == Decimal("552.63")  # (179 + 179 + 149) * 1.09
    assert booked_nights(db, "standard") == {day(4): 1, day(5): 1, day(6): 1}
    assert tools.lookup_booking(view.code, "Lovelace") == changed


def test_modify_room_type_and_guests_moves_inventory_between_types(db: Database, tools: HotelTools) -> None:
    view = book(tools, "standard")
    with pytest.raises(InvalidRequest, match="sleeps at most 2"):
        tools.modify_booking(view.code, "Lovelace", guests=4)
    changed = tools.modify_booking(view.code, "Lovelace", room_type="suite", guests=4)
    assert (changed.room_type, changed.guests) == ("suite", 4)
    assert booked_nights(db, "standard") == {}
    assert booked_nights(db, "suite") == {day(3): 1, day(4): 1}


def test_modify_into_a_full_night_changes_nothing(db: Database, tools: HotelTools) -> None:
    view = book(tools, "suite", start=3, nights=1)
    for _ in range(3):
        book(tools, "suite", start=5, nights=1)
    before = inventory(db, "suite")
    with pytest.raises(NoAvailability):
        tools.modify_booking(view.code, "Lovelace", check_out=day(6))
    assert inventory(db, "suite") == before
    assert tools.lookup_booking(view.code, "Lovelace") == view


def test_cancel_restores_inventory_and_cannot_happen_twice(db: Database, tools: HotelTools) -> None:
    view = book(tools, "suite")
    cancelled = tools.cancel_booking(view.code, "Lovelace")
    assert cancelled.status == "cancelled"
    assert booked_nights(db, "suite") == {}
    with pytest.raises(ToolError, match="already cancelled"):
        tools.cancel_booking(view.code, "Lovelace")
    with pytest.raises(ToolError, match="already cancelled"):
        tools.modify_booking(view.code, "Lovelace", guests=1)
    assert [b.status for b in tools.list_bookings()] == ["cancelled"]


def test_stays_that_have_started_cannot_be_changed(db: Database, hotel: HotelProfile) -> None:
    view = book(HotelTools(db, hotel, today=pinned_today), start=0)
    tomorrow = HotelTools(db, hotel, today=lambda: day(1))
    with pytest.raises(InvalidRequest, match="already started"):
        tomorrow.cancel_booking(view.code, "Lovelace")


def test_booking_without_a_free_night_changes_nothing(db: Database, tools: HotelTools) -> None:
    for _ in range(3):
        book(tools, "suite", start=4, nights=1)
    before = inventory(db, "suite")
    with pytest.raises(NoAvailability, match="Harbor Suite"):
        book(tools, "suite", start=3, nights=3)
    assert inventory(db, "suite") == before
    assert len(tools.list_bookings()) == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"check_in": day(5), "check_out": day(5)}, "after the check-in"),
        ({"check_in": day(-1), "check_out": day(1)}, "in the past"),
        ({"check_in": day(3), "check_out": day(34)}, "at most 30 nights"),
        ({"check_in": day(366), "check_out": day(367)}, "365 days ahead"),
        ({"guests": 0}, "at least one guest"),
        ({"guests": 3}, "sleeps at most 2"),
        ({"room_type": "penthouse"}, "Standard Queen, Deluxe King, Harbor Suite"),
        ({"last_name": "  "}, "last name"),
    ],
)
def test_invalid_requests_are_refused_with_a_caller_safe_message(tools: HotelTools, change: dict, message: str) -> None:
    request = {
        "room_type": "standard",
        "check_in": day(3),
        "check_out": day(5),
        "guests": 2,
        "first_name": "Ada",
        "last_name": "Lovelace",
        **change,
    }
    with pytest.raises(InvalidRequest, match=message):
        tools.create_booking(**request)
    assert tools.list_bookings() == []


# --- concurrency ---------------------------------------------------------------------------------


def race(attempts: int, attempt: Callable[[], object]) -> list[str]:
    """Run `attempt` in that many threads released at the same moment; 'booked' or 'full' per thread."""
    barrier = threading.Barrier(attempts)
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait(timeout=30)
        try:
            attempt()
            outcomes.append("booked")
        except NoAvailability:
            outcomes.append("full")
        except BaseException as exc:  # surfaced below: any other error fails the test
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(attempts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return sorted(outcomes)


def test_two_threads_racing_for_the_last_room_book_it_once(db: Database, tools: HotelTools) -> None:
    for _ in range(2):
        book(tools, "suite")
    assert race(2, lambda: book(tools, "suite")) == ["booked", "full"]
    assert inventory(db, "suite") == {day(3): (3, 3), day(4): (3, 3)}


def test_many_threads_never_overbook(db: Database, tools: HotelTools) -> None:
    outcomes = race(8, lambda: book(tools, "suite", start=10, nights=3))
    assert outcomes == ["booked"] * 3 + ["full"] * 5
    assert set(inventory(db, "suite").values()) == {(3, 3)}
    assert len(tools.list_bookings()) == 3


def _book_suite_in_own_process(url: str, hotel_file: Path, barrier, outcomes) -> None:
    database = Database(url)
    tools = HotelTools(database, load_hotel(hotel_file), today=pinned_today)
    barrier.wait(timeout=60)
    try:
        book(tools, "suite")
        outcomes.put("booked")
    except NoAvailability:
        outcomes.put("full")
    finally:
        database.close()


def test_two_processes_racing_for_the_last_room_book_it_once(db: Database, tools: HotelTools) -> None:
    for _ in range(2):
        book(tools, "suite")
    context = multiprocessing.get_context("spawn")
    barrier, outcomes = context.Barrier(2), context.Queue()
    url = db.url.render_as_string(hide_password=False)
    args = (url, Settings().hotel_file, barrier, outcomes)
    processes = [context.Process(target=_book_suite_in_own_process, args=args) for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    assert [p.exitcode for p in processes] == [0, 0]
    assert sorted(outcomes.get(timeout=5) for _ in processes) == ["booked", "full"]
    assert inventory(db, "suite") == {day(3): (3, 3), day(4): (3, 3)}


def test_transactions_are_retried_after_lock_timeouts(db: Database) -> None:
    class Busy(Exception):
        sqlite_errorcode = 5  # SQLITE_BUSY

    calls: list[int] = []

    def flaky(_session) -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("BEGIN IMMEDIATE", {}, Busy("database is locked"))
        return "done"

    assert db.transact(flaky) == "done"
    assert len(calls) == 3


# --- schema, migrations, seeding, outages ------------------------------------------------------


def test_migrations_produce_exactly_the_model_schema(db: Database) -> None:
    db.migrate()  # a second run is a no-op
    with db.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
        assert compare_metadata(context, Base.metadata) == []
        assert _constraint_names(inspect(connection)) == _constraint_names(Base.metadata)


def _constraint_names(source: Inspector | MetaData) -> dict[str, set[str | None]]:
    """Names of every table's primary key, unique, foreign key and check constraints.

    Autogenerate ignores CHECK constraints and some renames, so the names are compared directly.
    """
    if isinstance(source, MetaData):
        return {t.name: {c.name for c in t.constraints} for t in source.sorted_tables}
    names: dict[str, set[str | None]] = {}
    for table in Base.metadata.tables:
        reflected = [
            source.get_pk_constraint(table),
            *source.get_unique_constraints(table),
            *source.get_foreign_keys(table),
            *source.get_check_constraints(table),
        ]
        names[table] = {c["name"] for c in reflected}
    return names


def test_seed_is_idempotent_and_follows_hotel_file_edits(db: Database, hotel: HotelProfile) -> None:
    tools = HotelTools(db, hotel, today=pinned_today)
    book(tools, "suite")
    db.seed(hotel)
    edited = hotel.model_copy(deep=True)
    edited.room(code="suite").count = 5
    edited.room(code="suite").nightly_rate = Decimal("399.00")
    db.seed(edited)
    with db.session(write=False) as session:
        assert session.scalars(select(RoomType.code).order_by(RoomType.id)).all() == hotel.room_codes
        assert len(session.scalars(select(Rate)).all()) == len(hotel.room_types)
    assert inventory(db, "suite") == {day(3): (5, 1), day(4): (5, 1)}
    assert HotelTools(db, edited, today=pinned_today).quote("suite", day(0), day(1)).subtotal == Decimal("399.00")


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers, like a hung database server."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_stopped_postgres_server_is_reported_not_waited_for(hotel: HotelProfile) -> None:
    db = Database(f"postgresql+psycopg://innkeeper:secret@127.0.0.1:{closed_port()}/innkeeper")
    with pytest.raises(DatabaseUnavailable, match="cannot connect") as error:
        db.ping()
    assert "secret" not in str(error.value)
    with pytest.raises(DatabaseUnavailable):
        HotelTools(db, hotel, today=pinned_today).quote("standard", day(3), day(4))


def test_hung_postgres_server_times_out(silent_server: int) -> None:
    db = Database(f"postgresql+psycopg://u:p@127.0.0.1:{silent_server}/innkeeper?connect_timeout=2")
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable):
        db.ping()
    assert time.monotonic() - started < 10


def test_unopenable_sqlite_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("")
    with pytest.raises(DatabaseUnavailable):
        Database(f"sqlite:///{tmp_path / 'not-a-dir' / 'innkeeper.db'}").ping()
