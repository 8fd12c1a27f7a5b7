"""The hotel database's tables as typed SQLAlchemy models: the one definition the migrations must match."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy import (
    text as sql_text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Deterministic constraint names, so the hand-written migration and the models agree on them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

BOOKING_STATUSES = ("confirmed", "cancelled")
TURN_ROLES = ("caller", "agent", "system", "tool")
TRAINING_FLAGS = ("included", "excluded")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite drops the offset, so it is re-attached)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Money = Numeric(10, 2)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        Decimal: Money,
        dict[str, Any]: JSON,
    }


class RoomType(Base):
    __tablename__ = "room_types"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text)
    capacity: Mapped[int]
    count: Mapped[int]

    __table_args__ = (
        CheckConstraint("capacity > 0", name="capacity_positive"),
        CheckConstraint("count >= 0", name="count_not_negative"),
    )


class Rate(Base):
    """A nightly price; for a night the rate with the latest `valid_from` that covers it applies.

    `valid_to` is the last night the rate applies (inclusive); NULL means open-ended.
    """

    __tablename__ = "rates"

    id: Mapped[int] = mapped_column(primary_key=True)
    room_type_id: Mapped[int] = mapped_column(ForeignKey("room_types.id", ondelete="CASCADE"))
    valid_from: Mapped[date]
    valid_to: Mapped[date | None]
    nightly_rate: Mapped[Decimal]
    weekend_rate: Mapped[Decimal | None]

    __table_args__ = (UniqueConstraint("room_type_id", "valid_from"),)


class Inventory(Base):
    """Rooms of one type for one night; `booked` only moves through conditional atomic UPDATEs."""

    __tablename__ = "inventory"

    id: Mapped[int] = mapped_column(primary_key=True)
    room_type_id: Mapped[int] = mapped_column(ForeignKey("room_types.id", ondelete="CASCADE"))
    night: Mapped[date]
    total: Mapped[int]
    booked: Mapped[int] = mapped_column(server_default=sql_text("0"))

    __table_args__ = (
        UniqueConstraint("room_type_id", "night"),
        CheckConstraint("booked <= total", name="not_overbooked"),
        CheckConstraint("booked >= 0", name="booked_not_negative"),
    )


class Guest(Base):
    __tablename__ = "guests"

    id: Mapped[int] = mapped_column(primary_key=True)
    first_name: Mapped[str] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    phone: Mapped[str | None] = mapped_column(String(32))
    email: Mapped[str | None] = mapped_column(String(254))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Booking(Base):
    __tablename__ = "bookings"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(16), unique=True)
    guest_id: Mapped[int] = mapped_column(ForeignKey("guests.id"))
    room_type_id: Mapped[int] = mapped_column(ForeignKey("room_types.id"))
    check_in: Mapped[date]
    check_out: Mapped[date]
    guests: Mapped[int]
    status: Mapped[str] = mapped_column(String(16))
    subtotal: Mapped[Decimal]
    taxes: Mapped[Decimal]
    total: Mapped[Decimal]
    currency: Mapped[str] = mapped_column(String(3))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    call_id: Mapped[str | None] = mapped_column(ForeignKey("calls.id", ondelete="SET NULL"))

    guest: Mapped[Guest] = relationship(lazy="joined", innerjoin=True)
    room_type: Mapped[RoomType] = relationship(lazy="joined", innerjoin=True)

    __table_args__ = (
        CheckConstraint("check_out > check_in", name="stay_not_empty"),
        CheckConstraint("guests > 0", name="guests_positive"),
        CheckConstraint(_one_of("status", BOOKING_STATUSES), name="status_known"),
    )


class Call(Base):
    __tablename__ = "calls"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    caller_number: Mapped[str | None] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(index=True)
    ended_at: Mapped[datetime | None]
    end_reason: Mapped[str | None] = mapped_column(String(32))
    model_version: Mapped[str | None] = mapped_column(String(64))
    training: Mapped[str] = mapped_column(String(16), server_default=sql_text("'included'"))
    consent: Mapped[bool | None]
    caller_audio_path: Mapped[str | None] = mapped_column(Text)
    agent_audio_path: Mapped[str | None] = mapped_column(Text)
    # `metadata` is reserved on declarative classes, hence the attribute name.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)

    __table_args__ = (CheckConstraint(_one_of("training", TRAINING_FLAGS), name="training_known"),)


class Turn(Base):
    __tablename__ = "turns"

    id: Mapped[int] = mapped_column(primary_key=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"))
    index: Mapped[int]
    role: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime]
    tool_calls: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    latencies: Mapped[dict[str, Any] | None]
    model_version: Mapped[str | None] = mapped_column(String(64))
    flagged: Mapped[bool] = mapped_column(server_default=false())

    __table_args__ = (
        UniqueConstraint("call_id", "index"),
        CheckConstraint(_one_of("role", TURN_ROLES), name="role_known"),
    )


# ---------------------------------------------------------------- model registry (innkeeper/models/registry.py)

MODEL_STATUSES = ("candidate", "promoted", "rejected", "rolled_back", "failed")


class ModelVersionRecord(Base):
    """A tuned model version: its artifact, where it came from, how it scored and whether it serves.

    Several rows may be `promoted`; the one with the latest `promoted_at` serves, the others are what a
    rollback falls back to.
    """

    __tablename__ = "model_versions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    promoted_at: Mapped[datetime | None]
    base_id: Mapped[str] = mapped_column(String(200))
    base_sha256: Mapped[str] = mapped_column(String(64))
    artifact_uri: Mapped[str] = mapped_column(Text)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    lineage: Mapped[dict[str, Any]] = mapped_column(default=dict)
    gate: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The nightly run's idempotency key: a resumed run finds its version instead of registering another.
    run_id: Mapped[str | None] = mapped_column(String(128), unique=True)
    note: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (CheckConstraint(_one_of("status", MODEL_STATUSES), name="status_known"),)


class ModelEventRecord(Base):
    """Something that happened to a model version (registered, promoted, load_failed, …), by whom."""

    __tablename__ = "model_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    action: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")


# ---------------------------------------------------------------- review (agent/call/calllog.py)


class Correction(Base):
    """An operator's fix of how the agent read one caller turn (and, optionally, what it should have said).

    The nightly curation turns each into a training example of the reading (`tuning.data.actions`), with
    the caller's words redacted as the call's are; who made it and when stay here.
    """

    __tablename__ = "corrections"

    id: Mapped[int] = mapped_column(primary_key=True)
    turn_id: Mapped[int] = mapped_column(ForeignKey("turns.id", ondelete="CASCADE"), index=True)
    action: Mapped[dict[str, Any]] = mapped_column(JSON)  # an agent.understanding.action.TurnAction, as JSON
    reply: Mapped[str | None] = mapped_column(Text)
    author: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    note: Mapped[str] = mapped_column(Text, default="")


# ---------------------------------------------------------------- staff accounts (innkeeper/core/accounts.py)

STAFF_ROLES = ("operator", "admin")


class User(Base):
    """A staff member who may sign in to the dashboard: an operator, or an admin who also manages models."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))  # argon2id, PHC string
    role: Mapped[str] = mapped_column(String(16))
    disabled: Mapped[bool] = mapped_column(server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (CheckConstraint(_one_of("role", STAFF_ROLES), name="role_known"),)


class WebSession(Base):
    """A signed-in browser. Only the token's SHA-256 is stored, so a database dump opens no sessions."""

    __tablename__ = "web_sessions"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]


class AuditEntry(Base):
    """One state change made by staff or a script (append-only: the code has no way to edit or delete one)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(200), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class HotelEdit(Base):
    """A version of the hotel's editable facts (innkeeper/core/hotel_edits.py): the whole editable part, so
    any version can be read on its own; the newest is what the agent answers from."""

    __tablename__ = "hotel_edits"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    author: Mapped[str] = mapped_column(String(64))
    note: Mapped[str] = mapped_column(Text, default="")
    content: Mapped[dict[str, Any]] = mapped_column(JSON)
