"""schedules: campaigns that run themselves. ``schedules``, one row per fire time that
started a job (``schedule_fires``: its primary key makes a fire happen once, whatever the
number of jobs replicas), the places each schedule already delivered (``schedule_places``,
for only_new_leads), and a job's schedule (``jobs.schedule_id``)

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("only_new_leads", sa.Boolean(), nullable=False),
        sa.Column("notify_url", sa.Text(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("next_fire_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("fire_count", sa.BigInteger(), nullable=False),
        sa.Column("last_job_id", sa.String(40), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedules")),
        sa.UniqueConstraint("user_id", "idempotency_key", name="uq_schedules_user_idempotency"),
    )
    op.create_index("ix_schedules_user_created", "schedules", ["user_id", "created_at"])
    op.create_index("ix_schedules_next_fire_at", "schedules", ["next_fire_at"])
    op.create_table(
        "schedule_fires",
        sa.Column("schedule_id", sa.String(40), nullable=False),
        sa.Column("fire_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("manual", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("schedule_id", "fire_at", name=op.f("pk_schedule_fires")),
    )
    op.create_table(
        "schedule_places",
        sa.Column("schedule_id", sa.String(40), nullable=False),
        sa.Column("place_id", sa.String(300), nullable=False),
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("schedule_id", "place_id", name=op.f("pk_schedule_places")),
    )
    op.add_column("jobs", sa.Column("schedule_id", sa.String(40), nullable=True))
    op.create_index("ix_jobs_schedule_created", "jobs", ["schedule_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_schedule_created", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("schedule_id")
    op.drop_table("schedule_places")
    op.drop_table("schedule_fires")
    op.drop_index("ix_schedules_next_fire_at", table_name="schedules")
    op.drop_index("ix_schedules_user_created", table_name="schedules")
    op.drop_table("schedules")
