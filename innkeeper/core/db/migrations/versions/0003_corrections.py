"""Operator corrections of how the agent read a caller turn: training examples for the reading.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # op.f(): the names are final; the metadata naming convention must not template them again.
    op.create_table(
        "corrections",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("turn_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.JSON(), nullable=False),
        sa.Column("reply", sa.Text(), nullable=True),
        sa.Column("author", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_corrections")),
        sa.ForeignKeyConstraint(
            ["turn_id"], ["turns.id"], name=op.f("fk_corrections_turn_id_turns"), ondelete="CASCADE"
        ),
    )
    op.create_index(op.f("ix_corrections_turn_id"), "corrections", ["turn_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_corrections_turn_id"), table_name="corrections")
    op.drop_table("corrections")
