"""The connection to the hotel database: engine setup, transactions with retries, migrations and seeding.

The same code runs on a SQLite file (the default) and on PostgreSQL (`postgresql+psycopg://...`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, select, text, update
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from innkeeper.core.db.schema import Inventory, Rate, RoomType

if TYPE_CHECKING:
    from innkeeper.core.hotel import HotelProfile, RoomTypeSpec
    from innkeeper.core.settings import Settings

T = TypeVar("T")

ALEMBIC_INI = Path(__file__).resolve().with_name("alembic.ini")

# The hotel file's prices are stored as the rate in force since this date; an operator can add
# seasonal rates with later `valid_from` dates, which take precedence over it.
STANDING_RATE_FROM = date(2000, 1, 1)

SQLITE_BUSY_TIMEOUT_MS = 15_000
PG_CONNECT_TIMEOUT_S = 5
RETRY_ATTEMPTS = 4
RETRY_BACKOFF_S = 0.05
# PostgreSQL serialization_failure and deadlock_detected: the transaction may simply be run again.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
SQLITE_BUSY, SQLITE_LOCKED = 5, 6
# Any fixed key works; it only has to be the same for every process migrating this database.
MIGRATION_LOCK_KEY = 0x1AAE_E9E5

# Execution option that marks a connection as a writer; on SQLite it turns BEGIN into BEGIN IMMEDIATE.
_WRITE_OPTION = "innkeeper_write"


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached or opened; the message names the URL (without its password)."""


class Database:
    """One database: an engine plus transactions, migrations, seeding and a health check."""

    def __init__(self, url: str) -> None:
        self.url: URL = make_url(url)
        self.engine: Engine = _create_engine(self.url)
        self._writer = self.engine.execution_options(**{_WRITE_OPTION: True})

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(settings.db_url)

    def __repr__(self) -> str:
        return f"Database({self._display_url!r})"

    @property
    def _display_url(self) -> str:
        return self.url.render_as_string(hide_password=True)

    @contextmanager
    def connect(self, *, write: bool = True) -> Iterator[Connection]:
        """A pooled connection; failing to connect raises `DatabaseUnavailable` instead of a driver error."""
        try:
            connection = (self._writer if write else self.engine).connect()
        except (OperationalError, InterfaceError) as exc:
            raise DatabaseUnavailable(
                f"cannot connect to the database at {self._display_url}: {_first_line(exc.orig)}"
            ) from exc
        with connection:
            yield connection

    @contextmanager
    def session(self, *, write: bool = True) -> Iterator[Session]:
        """A session in one transaction: committed when the block ends, rolled back if it raises.

        Pass `write=False` for read-only work so that, on SQLite, it does not queue behind writers.
        """
        with (
            self.connect(write=write) as connection,
            Session(bind=connection, expire_on_commit=False) as session,
            session.begin(),
        ):
            yield session

    def transact(self, work: Callable[[Session], T], *, write: bool = True) -> T:
        """Run `work` in one transaction, re-running it on lock timeouts, serialization failures, deadlocks.

        `work` may therefore run more than once: it must not have side effects outside the session.
        """
        attempt = 1
        while True:
            try:
                with self.session(write=write) as session:
                    return work(session)
            except DBAPIError as exc:
                if attempt >= RETRY_ATTEMPTS or not _is_retryable(exc):
                    raise
            # Jitter, so that the transactions that collided do not collide again in lockstep.
            time.sleep(RETRY_BACKOFF_S * attempt * (1 + random.random()))
            attempt += 1

    def ping(self) -> None:
        """Raise `DatabaseUnavailable` unless a trivial query succeeds (bounded by the connect timeout)."""
        try:
            with self.connect(write=False) as connection:
                connection.exec_driver_sql("SELECT 1")
        except OperationalError as exc:
            raise DatabaseUnavailable(
                f"the database at {self._display_url} is not answering: {_first_line(exc.orig)}"
            ) from exc

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (a no-op when it is already there)."""
        config = Config(str(ALEMBIC_INI))
        with self.connect() as connection, connection.begin():
            if connection.dialect.name == "postgresql":
                # Two services starting at once must not both create the tables.
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def seed(self, hotel: HotelProfile) -> None:
        """Upsert the hotel file's room types and standing rates; safe to run again after edits."""
        self.transact(lambda session: _seed(session, hotel))

    def close(self) -> None:
        """Close pooled connections (at shutdown, or before dropping a test database)."""
        self.engine.dispose()


def notify_on_commit(session: Session, channel: str, payload: str = "") -> None:
    """PostgreSQL: a NOTIFY on `channel` that every listening process receives when this transaction commits
    (never, if it rolls back). SQLite: nothing — one process serves, and it knows what it changed."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": channel, "payload": payload})


def _create_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        return _create_sqlite_engine(url)
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
    # pre_ping: connections left over from before a server restart are replaced, not handed out broken.
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def _create_sqlite_engine(url: URL) -> Engine:
    if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        try:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseUnavailable(f"cannot create the directory for {url.database}: {exc}") from exc
    engine = create_engine(url)
    event.listen(engine, "connect", _configure_sqlite_connection)
    event.listen(engine, "begin", _begin_sqlite_transaction)
    return engine


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite would otherwise issue its own deferred BEGIN; the "begin" hook issues the right one.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def _begin_sqlite_transaction(connection: Connection) -> None:
    # IMMEDIATE takes the write lock up front (waiting up to busy_timeout), so concurrent writers queue
    # instead of failing with "database is locked" when a deferred reader tries to upgrade to a writer.
    mode = "IMMEDIATE" if connection.get_execution_options().get(_WRITE_OPTION) else "DEFERRED"
    connection.exec_driver_sql(f"BEGIN {mode}")


def _is_retryable(exc: DBAPIError) -> bool:
    if getattr(exc.orig, "sqlstate", None) in RETRYABLE_SQLSTATES:
        return True
    sqlite_code = getattr(exc.orig, "sqlite_errorcode", None)
    return sqlite_code is not None and sqlite_code & 0xFF in (SQLITE_BUSY, SQLITE_LOCKED)


def _first_line(error: BaseException | None) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _seed(session: Session, hotel: HotelProfile) -> None:
    existing = {room.code: room for room in session.scalars(select(RoomType))}
    for spec in hotel.room_types:
        room = existing.get(spec.code) or RoomType(code=spec.code)
        room.name, room.description = spec.name, spec.description
        room.capacity, room.count = spec.capacity, spec.count
        session.add(room)
        session.flush()
        _upsert_standing_rate(session, room.id, spec)
        _resize_inventory(session, room.id, spec.count)


def _upsert_standing_rate(session: Session, room_type_id: int, spec: RoomTypeSpec) -> None:
    rate = session.scalar(
        select(Rate).where(Rate.room_type_id == room_type_id, Rate.valid_from == STANDING_RATE_FROM)
    ) or Rate(room_type_id=room_type_id, valid_from=STANDING_RATE_FROM)
    rate.valid_to = None
    rate.nightly_rate, rate.weekend_rate = spec.nightly_rate, spec.weekend_rate
    session.add(rate)


def _resize_inventory(session: Session, room_type_id: int, count: int) -> None:
    # Nights created before the room count changed follow the new count, unless more rooms are
    # already booked than the new count allows; those keep their old total until bookings move.
    session.execute(
        update(Inventory)
        .where(Inventory.room_type_id == room_type_id, Inventory.total != count, Inventory.booked <= count)
        .values(total=count)
        .execution_options(synchronize_session=False)
    )
