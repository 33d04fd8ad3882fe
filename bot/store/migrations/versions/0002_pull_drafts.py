"""Pull requests loopgate drafted.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 00:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pull_drafts",
        sa.Column("repo", sa.String(256), nullable=False),
        sa.Column("number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("drafted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("repo", "number", name="pk_pull_drafts"),
    )


def downgrade() -> None:
    op.drop_table("pull_drafts")
