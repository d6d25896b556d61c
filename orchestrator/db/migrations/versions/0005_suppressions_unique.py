"""one suppression entry per target and channel

Concurrent ``suppress add`` could store the same entry twice. Existing duplicates are merged first, keeping the
oldest entry of each target and channel (as adding does: the first entry stands); entries stored with the text
channel ``all`` (from unsubscribe links for every channel, which no policy matched) become the all-channel entry
(NULL) before the merge. Then a unique index on the COALESCE-d key, since a plain unique index treats NULLs as
distinct on both SQLite and PostgreSQL.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 20:20:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = ("COALESCE({t}.customer_pk, 0)", "COALESCE({t}.address, '')", "COALESCE({t}.channel, '')")


def upgrade() -> None:
    op.execute("UPDATE suppressions SET channel = NULL WHERE channel = 'all'")
    same_key = " AND ".join(f"{k.format(t='older')} = {k.format(t='suppressions')}" for k in KEY)
    op.execute(
        "DELETE FROM suppressions WHERE EXISTS (SELECT 1 FROM suppressions AS older WHERE "
        f"{same_key} AND (older.created_at < suppressions.created_at "
        "OR (older.created_at = suppressions.created_at AND older.id < suppressions.id)))"
    )
    op.create_index(
        "uq_suppressions_target",
        "suppressions",
        [sa.text(k.format(t="suppressions").replace("suppressions.", "")) for k in KEY],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_suppressions_target", table_name="suppressions")
