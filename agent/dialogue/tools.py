"""Booking tools the dialogue brain calls: availability, quotes and bookings, decided and priced in code.

Every tool either returns a frozen view or raises a `ToolError` whose message can be said to the caller.
Inventory only moves through conditional atomic UPDATEs inside one transaction per tool call, so
concurrent calls can never overbook, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import partial
from zoneinfo import ZoneInfo

from sqlalchemy import exists, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from innkeeper.core.codes import new_confirmation_code
from innkeeper.core.db.database import Database
from innkeeper.core.db.schema import Booking, Guest, Inventory, Rate, RoomType
from innkeeper.core.hotel import HotelProfile

CENT = Decimal("0.01")
WEEKEND_NIGHTS = frozenset({4, 5})  # date.weekday() of Friday and Saturday nights
CODE_ATTEMPTS = 20
NAME_MAX, PHONE_MAX, EMAIL_MAX = 100, 32, 254
# One message for a wrong code and a wrong surname, so the tool cannot be used to probe for codes.
NOT_FOUND_MESSAGE = "I couldn't find a booking with that confirmation code and surname."

_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}

Night = tuple[int, date]  # (room type id, night)


class ToolError(Exception):
    """A request the tools refuse; the message is safe to say to the caller."""


class NoAvailability(ToolError):
    """Some night of the stay has no room of that type left; nothing was reserved."""


class BookingNotFound(ToolError):
    """No booking matches the confirmation code and surname together."""


class InvalidRequest(ToolError):
    """The request breaks a booking rule (dates, guests, room type, names); nothing was changed."""


@dataclass(frozen=True)
class RoomAvailability:
    room_type: str
    name: str
    capacity: int
    rooms_free: int
    nightly_rates: tuple[Decimal, ...]


@dataclass(frozen=True)
class Quote:
    room_type: str
    check_in: date
    check_out: date
    nights: int
    nightly_rates: tuple[Decimal, ...]
    subtotal: Decimal
    taxes: Decimal
    total: Decimal
    currency: str


@dataclass(frozen=True)
class BookingView:
    code: str
    first_name: str
    last_name: str
    phone: str | None
    email: str | None
    room_type: str
    check_in: date
    check_out: date
    guests: int
    status: str
    total: Decimal
    currency: str


class HotelTools:
    """The booking operations, bound to one database and hotel profile.

    `today` gives the hotel's current date (default: the date now in the hotel's timezone); tests pin it.
    """

    def __init__(self, db: Database, hotel: HotelProfile, today: Callable[[], date] | None = None) -> None:
        self._db = db
        self._hotel = hotel
        self._today = today or partial(_date_in, ZoneInfo(hotel.timezone))

    def check_availability(
        self, check_in: date, check_out: date, guests: int | None = None, room_type: str | None = None
    ) -> list[RoomAvailability]:
        """Room types that sleep `guests` and have at least one room free on every night of the stay."""
        self._validate_stay(check_in, check_out)
        if guests is not None:
            _validate_guest_count(guests)

        def work(session: Session) -> list[RoomAvailability]:
            rooms = [_room(session, room_type)] if room_type else _all_rooms(session)
            fitting = [room for room in rooms if guests is None or guests <= room.capacity]
            offers = [_availability(session, room, check_in, check_out) for room in fitting]
            return [offer for offer in offers if offer.rooms_free > 0]

        return self._db.transact(work, write=False)

    def quote(self, room_type: str, check_in: date, check_out: date) -> Quote:
        """The price of a stay: each night at its rate (weekend rate on Friday and Saturday), plus taxes."""
        self._validate_stay(check_in, check_out)
        return self._db.transact(
            lambda session: self._quote(session, _room(session, room_type), check_in, check_out),
            write=False,
        )

    def create_booking(
        self,
        *,
        room_type: str,
        check_in: date,
        check_out: date,
        guests: int,
        first_name: str,
        last_name: str,
        phone: str | None = None,
        email: str | None = None,
        call_id: str | None = None,
    ) -> BookingView:
        """Reserve every night and record the booking, or raise `NoAvailability` and change nothing."""
        self._validate_stay(check_in, check_out)
        _validate_guest_count(guests)
        contact = {
            "first_name": _required_text(first_name, NAME_MAX, "the guest's first name"),
            "last_name": _required_text(last_name, NAME_MAX, "the guest's last name"),
            "phone": _optional_text(phone, PHONE_MAX, "phone number"),
            "email": _optional_text(email, EMAIL_MAX, "email address"),
        }

        def work(session: Session) -> BookingView:
            room = _room(session, room_type)
            _check_capacity(room, guests)
            quote = self._quote(session, room, check_in, check_out)
            _move_inventory(session, set(), _nights_of(room, check_in, check_out), {room.id: room})
            booking = Booking(
                code=_unused_code(session),
                guest=Guest(**contact),
                room_type=room,
                check_in=check_in,
                check_out=check_out,
                guests=guests,
                status="confirmed",
                call_id=call_id,
            )
            _apply_quote(booking, quote)
            session.add(booking)
            session.flush()
            return _view(booking)

        return self._db.transact(work)

    def lookup_booking(self, code: str, last_name: str) -> BookingView:
        """The booking with this confirmation code, if the surname matches too (case and spaces ignored)."""
        return self._db.transact(lambda session: _view(_find_booking(session, code, last_name)), write=False)

    def modify_booking(
        self,
        code: str,
        last_name: str,
        *,
        check_in: date | None = None,
        check_out: date | None = None,
        room_type: str | None = None,
        guests: int | None = None,
    ) -> BookingView:
        """Change dates, room or guests atomically: old nights released, new ones reserved, re-priced."""
        if check_in is None and check_out is None and room_type is None and guests is None:
            raise InvalidRequest("What would you like to change: the dates, the room type or the number of guests?")

        def work(session: Session) -> BookingView:
            booking = _find_booking(session, code, last_name, for_update=True)
            self._check_changeable(booking)
            new_in, new_out = check_in or booking.check_in, check_out or booking.check_out
            new_guests = booking.guests if guests is None else guests
            self._validate_stay(new_in, new_out)
            _validate_guest_count(new_guests)
            room = _room(session, room_type) if room_type else booking.room_type
            _check_capacity(room, new_guests)
            quote = self._quote(session, room, new_in, new_out)
            old_room = booking.room_type
            _move_inventory(
                session,
                _nights_of(old_room, booking.check_in, booking.check_out),
                _nights_of(room, new_in, new_out),
                {old_room.id: old_room, room.id: room},
            )
            booking.room_type, booking.check_in, booking.check_out = room, new_in, new_out
            booking.guests = new_guests
            _apply_quote(booking, quote)
            session.flush()
            return _view(booking)

        return self._db.transact(work)

    def cancel_booking(self, code: str, last_name: str) -> BookingView:
        """Cancel the booking and give its nights back to inventory."""

        def work(session: Session) -> BookingView:
            booking = _find_booking(session, code, last_name, for_update=True)
            self._check_changeable(booking)
            room = booking.room_type
            _move_inventory(session, _nights_of(room, booking.check_in, booking.check_out), set(), {room.id: room})
            booking.status = "cancelled"
            session.flush()
            return _view(booking)

        return self._db.transact(work)

    def list_bookings(self) -> list[BookingView]:
        """Every booking, cancelled ones included, by arrival date (for the operator, not for callers)."""
        query = select(Booking).order_by(Booking.check_in, Booking.code)
        return self._db.transact(lambda session: [_view(b) for b in session.scalars(query)], write=False)

    def _validate_stay(self, check_in: date, check_out: date) -> None:
        today = self._today()
        if check_out <= check_in:
            raise InvalidRequest("The check-out date has to be after the check-in date.")
        if check_in < today:
            raise InvalidRequest("That check-in date is in the past.")
        if (check_out - check_in).days > self._hotel.max_nights:
            raise InvalidRequest(f"We can book at most {self._hotel.max_nights} nights at a time.")
        if check_in > today + timedelta(days=self._hotel.booking_horizon_days):
            raise InvalidRequest(f"We take bookings up to {self._hotel.booking_horizon_days} days ahead.")

    def _check_changeable(self, booking: Booking) -> None:
        if booking.status == "cancelled":
            raise InvalidRequest(f"Booking {booking.code} is already cancelled.")
        if booking.check_in < self._today():
            raise InvalidRequest("That stay has already started, so I can't change it by phone; the front desk can.")

    def _quote(self, session: Session, room: RoomType, check_in: date, check_out: date) -> Quote:
        rates = _nightly_rates(session, room, check_in, check_out)
        subtotal = sum(rates, Decimal("0"))
        taxes = (subtotal * self._hotel.tax_rate).quantize(CENT, rounding=ROUND_HALF_UP)
        return Quote(
            room_type=room.code,
            check_in=check_in,
            check_out=check_out,
            nights=len(rates),
            nightly_rates=rates,
            subtotal=subtotal,
            taxes=taxes,
            total=subtotal + taxes,
            currency=self._hotel.currency,
        )


def _room(session: Session, code: str) -> RoomType:
    room = session.scalar(select(RoomType).where(RoomType.code == code.strip().lower()))
    if room is None:
        names = ", ".join(r.name for r in _all_rooms(session))
        raise InvalidRequest(f"We don't have that room type. Our rooms are: {names}.")
    return room


def _availability(session: Session, room: RoomType, check_in: date, check_out: date) -> RoomAvailability:
    rows = session.execute(
        select(Inventory.night, Inventory.total - Inventory.booked).where(
            Inventory.room_type_id == room.id, Inventory.night >= check_in, Inventory.night < check_out
        )
    )
    free_by_night = {night: free for night, free in rows}
    rooms_free = min(free_by_night.get(night, room.count) for night in _stay(check_in, check_out))
    rates = _nightly_rates(session, room, check_in, check_out)
    return RoomAvailability(room.code, room.name, room.capacity, max(rooms_free, 0), rates)


def _date_in(zone: ZoneInfo) -> date:
    return datetime.now(zone).date()


def _stay(check_in: date, check_out: date) -> list[date]:
    return [check_in + timedelta(days=i) for i in range((check_out - check_in).days)]


def _nights_of(room: RoomType, check_in: date, check_out: date) -> set[Night]:
    return {(room.id, night) for night in _stay(check_in, check_out)}


def _all_rooms(session: Session) -> list[RoomType]:
    return list(session.scalars(select(RoomType).order_by(RoomType.capacity, RoomType.id)))


def _validate_guest_count(guests: int) -> None:
    if guests < 1:
        raise InvalidRequest("The booking needs at least one guest.")


def _check_capacity(room: RoomType, guests: int) -> None:
    if guests > room.capacity:
        raise InvalidRequest(f"The {room.name} sleeps at most {room.capacity} guests.")


def _required_text(value: str, limit: int, what: str) -> str:
    cleaned = value.strip()
    if not cleaned:
        raise InvalidRequest(f"I need {what} to make the booking.")
    if len(cleaned) > limit:
        raise InvalidRequest(f"That is too long for {what}.")
    return cleaned


def _optional_text(value: str | None, limit: int, what: str) -> str | None:
    cleaned = (value or "").strip()
    if len(cleaned) > limit:
        raise InvalidRequest(f"That {what} is too long.")
    return cleaned or None


def _nightly_rates(session: Session, room: RoomType, check_in: date, check_out: date) -> tuple[Decimal, ...]:
    candidates = session.scalars(
        select(Rate)
        .where(
            Rate.room_type_id == room.id,
            Rate.valid_from < check_out,
            or_(Rate.valid_to.is_(None), Rate.valid_to >= check_in),
        )
        .order_by(Rate.valid_from.desc())
    ).all()
    return tuple(_rate_for(candidates, night) for night in _stay(check_in, check_out))


def _rate_for(rates_newest_first: Iterable[Rate], night: date) -> Decimal:
    for rate in rates_newest_first:
        if rate.valid_from <= night and (rate.valid_to is None or night <= rate.valid_to):
            if rate.weekend_rate is not None and night.weekday() in WEEKEND_NIGHTS:
                return rate.weekend_rate
            return rate.nightly_rate
    raise ToolError("I don't have a price for those dates yet, so I can't offer that stay.")


def _apply_quote(booking: Booking, quote: Quote) -> None:
    booking.subtotal, booking.taxes, booking.total = quote.subtotal, quote.taxes, quote.total
    booking.currency = quote.currency


def _move_inventory(session: Session, old: set[Night], new: set[Night], rooms: Mapping[int, RoomType]) -> None:
    """Release the nights only in `old` and reserve those only in `new`; nights in both stay held.

    Rows are touched in one global order (room type, night) so concurrent PostgreSQL transactions
    cannot deadlock on each other's row locks.
    """
    reserve = new - old
    _create_missing_nights(session, reserve, rooms)
    for room_type_id, night in sorted(old ^ new):
        if (room_type_id, night) in reserve:
            _reserve_night(session, rooms[room_type_id], night)
        else:
            _release_night(session, room_type_id, night)


def _create_missing_nights(session: Session, nights: set[Night], rooms: Mapping[int, RoomType]) -> None:
    if not nights:
        return
    connection = session.connection()
    insert = _INSERTS[connection.dialect.name](Inventory).on_conflict_do_nothing(
        index_elements=["room_type_id", "night"]
    )
    rows = [{"room_type_id": rt, "night": night, "total": rooms[rt].count, "booked": 0} for rt, night in sorted(nights)]
    connection.execute(insert, rows)


def _reserve_night(session: Session, room: RoomType, night: date) -> None:
    # The WHERE clause is the overbooking guard: the row only changes if a room is still free, and the
    # database evaluates that atomically against concurrent writers.
    result = session.connection().execute(
        update(Inventory)
        .where(Inventory.room_type_id == room.id, Inventory.night == night, Inventory.booked < Inventory.total)
        .values(booked=Inventory.booked + 1)
    )
    if result.rowcount != 1:
        raise NoAvailability(f"Sorry, the {room.name} is fully booked on {night:%A, %B} {night.day}.")


def _release_night(session: Session, room_type_id: int, night: date) -> None:
    session.connection().execute(
        update(Inventory)
        .where(Inventory.room_type_id == room_type_id, Inventory.night == night)
        .values(booked=Inventory.booked - 1)
    )


def _unused_code(session: Session) -> str:
    for _ in range(CODE_ATTEMPTS):
        code = new_confirmation_code()
        if not session.scalar(select(exists().where(Booking.code == code))):
            return code
    raise RuntimeError(f"no unused confirmation code after {CODE_ATTEMPTS} attempts")


def _normalize_code(code: str) -> str:
    # Spoken codes arrive spaced or hyphenated ("A C D - 2 3 4").
    return re.sub(r"[\s\-]", "", code).upper()


def _surname_key(name: str) -> str:
    return "".join(name.split()).casefold()


def _find_booking(session: Session, code: str, last_name: str, *, for_update: bool = False) -> Booking:
    query = select(Booking).where(Booking.code == _normalize_code(code))
    if for_update:
        # Serializes a concurrent modify and cancel of the same booking on PostgreSQL (SQLite already
        # serializes writers); only the booking row is locked, not its room type or guest.
        query = query.with_for_update(of=Booking)
    booking = session.scalar(query)
    if booking is None or _surname_key(booking.guest.last_name) != _surname_key(last_name):
        raise BookingNotFound(NOT_FOUND_MESSAGE)
    return booking


def _view(booking: Booking) -> BookingView:
    return BookingView(
        code=booking.code,
        first_name=booking.guest.first_name,
        last_name=booking.guest.last_name,
        phone=booking.guest.phone,
        email=booking.guest.email,
        room_type=booking.room_type.code,
        check_in=booking.check_in,
        check_out=booking.check_out,
        guests=booking.guests,
        status=booking.status,
        total=booking.total,
        currency=booking.currency,
    )
