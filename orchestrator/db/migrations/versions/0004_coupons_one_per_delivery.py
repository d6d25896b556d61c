"""a coupon exists only with its delivery (placeholder, filled by the safety work)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 20:20:00

"""

from collections.abc import Sequence

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
