"""deliveries.follow_up, deliveries.due_at: a follow-up's decisions live in the run they follow, one per (run,
customer, channel, follow-up), with the time the follow-up was due; the run's own messages keep '' there

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 00:30:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from orchestrator.db.types import UTCDateTime

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode: SQLite changes a unique key by copying the table
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("follow_up", sa.String(length=128), nullable=False, server_default=""))
        batch.add_column(sa.Column("due_at", UTCDateTime(), nullable=True))
        batch.drop_constraint("uq_deliveries_run_pk_customer_pk_channel", type_="unique")
        batch.create_unique_constraint(
            "uq_deliveries_run_pk_customer_pk_channel_follow_up", ["run_pk", "customer_pk", "channel", "follow_up"]
        )


def downgrade() -> None:
    # a follow-up's rows cannot live under the old key: they are removed with the column
    op.execute("DELETE FROM deliveries WHERE follow_up <> ''")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_constraint("uq_deliveries_run_pk_customer_pk_channel_follow_up", type_="unique")
        batch.create_unique_constraint("uq_deliveries_run_pk_customer_pk_channel", ["run_pk", "customer_pk", "channel"])
        batch.drop_column("due_at")
        batch.drop_column("follow_up")
