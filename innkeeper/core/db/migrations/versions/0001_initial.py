"""Initial hotel schema: room types, rates, inventory, guests, bookings, calls and turns.

Revision ID: 0001
Revises:
Create Date: 2025-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)
Money = sa.Numeric(10, 2)


def upgrade() -> None:
    # op.f(): the names are final; the metadata naming convention must not template them again.
    op.create_table(
        "room_types",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_room_types")),
        sa.UniqueConstraint("code", name=op.f("uq_room_types_code")),
        sa.CheckConstraint("capacity > 0", name=op.f("ck_room_types_capacity_positive")),
        sa.CheckConstraint("count >= 0", name=op.f("ck_room_types_count_not_negative")),
    )
    op.create_table(
        "rates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("room_type_id", sa.Integer(), nullable=False),
        sa.Column("valid_from", sa.Date(), nullable=False),
        sa.Column("valid_to", sa.Date(), nullable=True),
        sa.Column("nightly_rate", Money, nullable=False),
        sa.Column("weekend_rate", Money, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rates")),
        sa.ForeignKeyConstraint(
            ["room_type_id"],
            ["room_types.id"],
            name=op.f("fk_rates_room_type_id_room_types"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("room_type_id", "valid_from", name=op.f("uq_rates_room_type_id_valid_from")),
    )
    op.create_table(
        "inventory",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("room_type_id", sa.Integer(), nullable=False),
        sa.Column("night", sa.Date(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("booked", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inventory")),
        sa.ForeignKeyConstraint(
            ["room_type_id"],
            ["room_types.id"],
            name=op.f("fk_inventory_room_type_id_room_types"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("room_type_id", "night", name=op.f("uq_inventory_room_type_id_night")),
        sa.CheckConstraint("booked <= total", name=op.f("ck_inventory_not_overbooked")),
        sa.CheckConstraint("booked >= 0", name=op.f("ck_inventory_booked_not_negative")),
    )
    op.create_table(
        "guests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("first_name", sa.String(100), nullable=False),
        sa.Column("last_name", sa.String(100), nullable=False),
        sa.Column("phone", sa.String(32), nullable=True),
        sa.Column("email", sa.String(254), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_guests")),
    )
    op.create_table(
        "calls",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("caller_number", sa.String(32), nullable=True),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.Column("ended_at", Timestamp, nullable=True),
        sa.Column("end_reason", sa.String(32), nullable=True),
        sa.Column("model_version", sa.String(64), nullable=True),
        sa.Column("training", sa.String(16), server_default=sa.text("'included'"), nullable=False),
        sa.Column("consent", sa.Boolean(), nullable=True),
        sa.Column("caller_audio_path", sa.Text(), nullable=True),
        sa.Column("agent_audio_path", sa.Text(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calls")),
        sa.CheckConstraint("training IN ('included', 'excluded')", name=op.f("ck_calls_training_known")),
    )
    op.create_index(op.f("ix_calls_started_at"), "calls", ["started_at"])
    op.create_table(
        "bookings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(16), nullable=False),
        sa.Column("guest_id", sa.Integer(), nullable=False),
        sa.Column("room_type_id", sa.Integer(), nullable=False),
        sa.Column("check_in", sa.Date(), nullable=False),
        sa.Column("check_out", sa.Date(), nullable=False),
        sa.Column("guests", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("subtotal", Money, nullable=False),
        sa.Column("taxes", Money, nullable=False),
        sa.Column("total", Money, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("call_id", sa.String(36), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bookings")),
        sa.UniqueConstraint("code", name=op.f("uq_bookings_code")),
        sa.ForeignKeyConstraint(["guest_id"], ["guests.id"], name=op.f("fk_bookings_guest_id_guests")),
        sa.ForeignKeyConstraint(["room_type_id"], ["room_types.id"], name=op.f("fk_bookings_room_type_id_room_types")),
        sa.ForeignKeyConstraint(["call_id"], ["calls.id"], name=op.f("fk_bookings_call_id_calls"), ondelete="SET NULL"),
        sa.CheckConstraint("check_out > check_in", name=op.f("ck_bookings_stay_not_empty")),
        sa.CheckConstraint("guests > 0", name=op.f("ck_bookings_guests_positive")),
        sa.CheckConstraint("status IN ('confirmed', 'cancelled')", name=op.f("ck_bookings_status_known")),
    )
    op.create_table(
        "turns",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("call_id", sa.String(36), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.Column("ended_at", Timestamp, nullable=False),
        sa.Column("tool_calls", sa.JSON(), nullable=True),
        sa.Column("latencies", sa.JSON(), nullable=True),
        sa.Column("model_version", sa.String(64), nullable=True),
        sa.Column("flagged", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_turns")),
        sa.ForeignKeyConstraint(["call_id"], ["calls.id"], name=op.f("fk_turns_call_id_calls"), ondelete="CASCADE"),
        sa.UniqueConstraint("call_id", "index", name=op.f("uq_turns_call_id_index")),
        sa.CheckConstraint("role IN ('caller', 'agent', 'system', 'tool')", name=op.f("ck_turns_role_known")),
    )


def downgrade() -> None:
    op.drop_table("turns")
    op.drop_table("bookings")
    op.drop_index(op.f("ix_calls_started_at"), table_name=op.f("calls"))
    op.drop_table("calls")
    op.drop_table("guests")
    op.drop_table("inventory")
    op.drop_table("rates")
    op.drop_table("room_types")
