"""shared_values: provider access tokens (and other small values) shared by every process through the database

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 20:20:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from orchestrator.db.types import UTCDateTime

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "shared_values",
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("value", sa.Text(), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_shared_values")),
    )


def downgrade() -> None:
    op.drop_table("shared_values")
