"""The outbox of check conclusions and sticky comments, and each PR's sticky comment id.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-13 00:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _when() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "pull_comments",
        sa.Column("repo", sa.String(256), nullable=False),
        sa.Column("number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("comment_id", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", _when(), nullable=False),
        sa.PrimaryKeyConstraint("repo", "number", name="pk_pull_comments"),
    )
    op.create_table(
        "reports",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("repo", sa.String(256), nullable=False),
        sa.Column("installation_id", sa.BigInteger(), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("target", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _when(), nullable=False),
        sa.Column("delivered_at", _when(), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", _when(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_reports"),
    )
    op.create_index("ix_reports_delivered_at_next_attempt_at", "reports", ["delivered_at", "next_attempt_at"])
    op.create_index("ix_reports_repo_kind_target", "reports", ["repo", "kind", "target"])


def downgrade() -> None:
    op.drop_index("ix_reports_repo_kind_target", table_name="reports")
    op.drop_index("ix_reports_delivered_at_next_attempt_at", table_name="reports")
    op.drop_table("reports")
    op.drop_table("pull_comments")
