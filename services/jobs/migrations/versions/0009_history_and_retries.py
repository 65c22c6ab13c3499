"""history and retries: a job's timeline (``job_events``, ListJobEvents; removed with the
job) and the links between a job and its retry (``jobs.retry_of``, ``jobs.retried_by``)

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_events",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_events")),
    )
    op.create_index("ix_job_events_job_seq", "job_events", ["job_id", "seq"])
    op.add_column("jobs", sa.Column("retry_of", sa.String(40), nullable=True))
    op.add_column("jobs", sa.Column("retried_by", sa.String(40), nullable=True))
    op.create_index("uq_jobs_retry_of", "jobs", ["retry_of"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_jobs_retry_of", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("retried_by")
        batch.drop_column("retry_of")
    op.drop_index("ix_job_events_job_seq", table_name="job_events")
    op.drop_table("job_events")
