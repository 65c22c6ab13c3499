"""email waterfall: which step found a lead's email (``leads.email_source``: "website",
"pattern", "hunter", "cache" or empty) and what each waterfall step cost (``leads.cost_by_step``)

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("leads") as batch:
        batch.add_column(
            sa.Column("email_source", sa.String(16), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("cost_by_step", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("leads") as batch:
        batch.drop_column("cost_by_step")
        batch.drop_column("email_source")
