"""Baseline warm-ups: a baseline started when the default branch moves, before a run asks for it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 00:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _when() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "warmups",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("repo", sa.String(256), nullable=False),
        sa.Column("branch", sa.String(256), nullable=False),
        sa.Column("head_sha", sa.String(64), nullable=False),
        sa.Column("clone_url", sa.String(1024), nullable=False),
        sa.Column("installation_id", sa.BigInteger(), nullable=True),
        sa.Column("delivery_id", sa.String(64), nullable=True),
        sa.Column("pushes", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("warmed_sha", sa.String(64), nullable=True),
        sa.Column("claimed_by", sa.String(128), nullable=True),
        sa.Column("claimed_at", _when(), nullable=True),
        sa.Column("heartbeat_at", _when(), nullable=True),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("updated_at", _when(), nullable=False),
        sa.Column("finished_at", _when(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_warmups"),
    )
    op.create_index("ix_warmups_status_created_at", "warmups", ["status", "created_at"])
    for status in ("queued", "running"):
        where = sa.text(f"status = '{status}'")
        op.create_index(
            f"uq_warmups_one_{status}_per_repo",
            "warmups",
            ["repo"],
            unique=True,
            sqlite_where=where,
            postgresql_where=where,
        )


def downgrade() -> None:
    op.drop_index("uq_warmups_one_running_per_repo", table_name="warmups")
    op.drop_index("uq_warmups_one_queued_per_repo", table_name="warmups")
    op.drop_index("ix_warmups_status_created_at", table_name="warmups")
    op.drop_table("warmups")
