"""leads: cost per provider and whether enrichment came from the cache

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("leads") as batch_op:
        batch_op.add_column(
            sa.Column("cost_by_provider", sa.JSON(), nullable=False, server_default="{}")
        )
        batch_op.add_column(
            sa.Column("from_cache", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("leads") as batch_op:
        batch_op.drop_column("from_cache")
        batch_op.drop_column("cost_by_provider")
