"""dispatch: claims, retry times, outcomes, payloads, provider quotas

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 23:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from orchestrator.db.types import UTCDateTime

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("next_attempt_at", UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("claim_expires", UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("outcome", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("outcome_at", UTCDateTime(), nullable=True))
    op.create_table(
        "delivery_payloads",
        sa.Column("delivery_pk", sa.Integer(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_pk"],
            ["deliveries.id"],
            name=op.f("fk_delivery_payloads_delivery_pk_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("delivery_pk", name=op.f("pk_delivery_payloads")),
    )
    op.create_table(
        "provider_quotas",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("tat", UTCDateTime(), nullable=True),
        sa.Column("day", sa.Date(), nullable=True),
        sa.Column("day_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_provider_quotas")),
    )


def downgrade() -> None:
    op.drop_table("provider_quotas")
    op.drop_table("delivery_payloads")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        for column in ("outcome_at", "outcome", "claim_expires", "claimed_by", "next_attempt_at"):
            batch_op.drop_column(column)
