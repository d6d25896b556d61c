"""api_keys.name unique among live keys only: a revoked key keeps its row, and its name may be reused

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 01:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE = sa.text("revoked_at IS NULL")


def upgrade() -> None:
    # batch mode: SQLite drops a unique constraint by copying the table
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint("uq_api_keys_name", type_="unique")
    op.create_index(
        "uq_api_keys_live_name", "api_keys", ["name"], unique=True, sqlite_where=LIVE, postgresql_where=LIVE
    )


def downgrade() -> None:
    # the old key wants every name once: a revoked key that shares its name with another row keeps its record
    # under '<name>~<id>'
    op.execute(
        "UPDATE api_keys SET name = substr(name, 1, 50) || '~' || CAST(id AS VARCHAR(12)) "
        "WHERE revoked_at IS NOT NULL AND EXISTS "
        "(SELECT 1 FROM api_keys AS other WHERE other.name = api_keys.name AND other.id <> api_keys.id)"
    )
    op.drop_index("uq_api_keys_live_name", table_name="api_keys")
    with op.batch_alter_table("api_keys") as batch:
        batch.create_unique_constraint("uq_api_keys_name", ["name"])
