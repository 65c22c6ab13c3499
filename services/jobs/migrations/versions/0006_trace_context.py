"""jobs and outbox: trace_context, the W3C traceparent a campaign's trace continues from
(the job's: its SubmitCampaign span; an outbox row's: the span that queued the message)

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("trace_context", sa.String(64), nullable=True))
    op.add_column("outbox", sa.Column("trace_context", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("trace_context")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("trace_context")
