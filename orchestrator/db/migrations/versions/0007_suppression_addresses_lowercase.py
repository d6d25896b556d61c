"""e-mail addresses in the suppression list are stored lower-cased

The policies now compare e-mail addresses case-insensitively (a suppression of ``alice@example.com`` stops the
member imported as ``Alice@example.com``) by lower-casing both sides; entries stored before kept the case they
were typed in. Lower-casing them can make two entries of one target and channel: the oldest is kept (as adding
does: the first entry stands), the others are deleted first, so the unique index of 0005 holds throughout.

Lower-casing is Python's ``str.lower``, as at run time (SQL ``lower()`` leaves non-ASCII letters alone on
SQLite). Phones and WeChat openids (no ``@``) are left as they are. The downgrade keeps the addresses lower-cased:
the earlier code matches them just as well.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 10:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 500


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(
        sa.text(
            "SELECT id, customer_pk, address, channel FROM suppressions WHERE address LIKE '%@%' "
            "ORDER BY created_at, id"
        )
    ).all()
    kept: dict[tuple, tuple[int, str]] = {}  # (customer, lower-cased address, channel) -> the oldest entry
    doomed: list[int] = []
    for pk, customer_pk, address, channel in rows:
        key = (customer_pk or 0, address.lower(), channel or "")
        if key in kept:
            doomed.append(pk)
        else:
            kept[key] = (pk, address)
    renamed = [{"id": pk, "address": address.lower()} for pk, address in kept.values() if address != address.lower()]
    for start in range(0, len(doomed), BATCH):
        conn.execute(
            sa.text("DELETE FROM suppressions WHERE id IN :ids").bindparams(sa.bindparam("ids", expanding=True)),
            {"ids": doomed[start : start + BATCH]},
        )
    if renamed:
        conn.execute(sa.text("UPDATE suppressions SET address = :address WHERE id = :id"), renamed)


def downgrade() -> None:
    pass  # the lower-cased addresses are as good as before to the earlier code; the merged duplicates are gone
