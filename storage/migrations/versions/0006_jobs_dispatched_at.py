"""jobs.dispatched_at: the outbox marker, and the partial index the sweep reads

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 23:55:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import storage.tables

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNDISPATCHED = "status = 'queued' AND dispatched_at IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("dispatched_at", storage.tables.UTCDateTime(timezone=True), nullable=True)
        )
    # Jobs submitted before this column existed were published at submit: marking them
    # keeps the first sweep from re-publishing a whole backlog.
    op.execute("UPDATE jobs SET dispatched_at = created_at")
    op.create_index(
        "ix_jobs_undispatched",
        "jobs",
        ["created_at"],
        unique=False,
        postgresql_where=sa.text(UNDISPATCHED),
        sqlite_where=sa.text(UNDISPATCHED),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_undispatched", table_name="jobs")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("dispatched_at")
