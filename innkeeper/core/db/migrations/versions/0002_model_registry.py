"""Model registry: tuned model versions and what happened to them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    # op.f(): the names are final; the metadata naming convention must not template them again.
    op.create_table(
        "model_versions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("promoted_at", Timestamp, nullable=True),
        sa.Column("base_id", sa.String(200), nullable=False),
        sa.Column("base_sha256", sa.String(64), nullable=False),
        sa.Column("artifact_uri", sa.Text(), nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("lineage", sa.JSON(), nullable=False),
        sa.Column("gate", sa.JSON(), nullable=False),
        sa.Column("run_id", sa.String(128), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("run_id", name=op.f("uq_model_versions_run_id")),
        sa.CheckConstraint(
            "status IN ('candidate', 'promoted', 'rejected', 'rolled_back', 'failed')",
            name=op.f("ck_model_versions_status_known"),
        ),
    )
    op.create_table(
        "model_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.String(64), nullable=False),
        sa.Column("at", Timestamp, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_events")),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["model_versions.id"],
            name=op.f("fk_model_events_version_id_model_versions"),
            ondelete="CASCADE",
        ),
    )
    op.create_index(op.f("ix_model_events_version_id"), "model_events", ["version_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_model_events_version_id"), table_name="model_events")
    op.drop_table("model_events")
    op.drop_table("model_versions")
