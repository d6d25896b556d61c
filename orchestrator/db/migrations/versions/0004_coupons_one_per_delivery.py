"""a coupon exists only with its delivery: one coupon per (run, customer, step)

Processes running one campaign at the same time used to each issue a member's coupon; only one process's
delivery row was kept, so the others' coupons were orphans that used up the budget. The unique key makes that
impossible. Existing duplicates are resolved first, per (run, customer, step): the coupon to keep is the one
redeemed, else the one a delivery carries, else the oldest. Every other one that no delivery carries and nobody
redeemed is deleted and, unless void, given back to its offer's budget; one that is carried or redeemed (two
channels of one member could each carry a different coupon) is kept but detached from the run (``run_pk``
NULL), as a coupon of its campaign and member.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 20:20:00

"""

from collections.abc import Sequence
from decimal import Decimal

import sqlalchemy as sa
from alembic import op

from orchestrator.db.types import Money

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUPON_OFFER = "coupon"  # the offer kind whose budgets count coupons (orchestrator.coupons.offer)

coupons = sa.table(
    "coupons",
    sa.column("id", sa.Integer),
    sa.column("campaign_pk", sa.Integer),
    sa.column("run_pk", sa.Integer),
    sa.column("customer_pk", sa.Integer),
    sa.column("step", sa.String),
    sa.column("state", sa.String),
    sa.column("terms", sa.JSON),
)
deliveries = sa.table("deliveries", sa.column("coupon_pk", sa.Integer))
redemptions = sa.table("coupon_redemptions", sa.column("coupon_pk", sa.Integer))
budgets = sa.table(
    "offer_budgets",
    sa.column("campaign_pk", sa.Integer),
    sa.column("step", sa.String),
    sa.column("offer_kind", sa.String),
    sa.column("issued", sa.Integer),
    sa.column("face_value", Money()),
)


def upgrade() -> None:
    resolve_duplicates(op.get_bind())
    with op.batch_alter_table("coupons", schema=None) as batch_op:
        batch_op.create_unique_constraint(
            batch_op.f("uq_coupons_run_pk_customer_pk_step"), ["run_pk", "customer_pk", "step"]
        )


def downgrade() -> None:
    with op.batch_alter_table("coupons", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_coupons_run_pk_customer_pk_step"), type_="unique")


def resolve_duplicates(conn) -> None:
    key = (coupons.c.run_pk, coupons.c.customer_pk, coupons.c.step)
    duplicated = conn.execute(
        sa.select(*key)
        .where(coupons.c.run_pk.is_not(None), coupons.c.step.is_not(None))
        .group_by(*key)
        .having(sa.func.count() > 1)
    ).all()
    carried = sa.exists().where(deliveries.c.coupon_pk == coupons.c.id)
    redeemed = sa.or_(coupons.c.state == "redeemed", sa.exists().where(redemptions.c.coupon_pk == coupons.c.id))
    for run_pk, customer_pk, step in duplicated:
        rows = conn.execute(
            sa.select(
                coupons.c.id,
                coupons.c.campaign_pk,
                coupons.c.state,
                coupons.c.terms,
                carried.label("carried"),
                redeemed.label("redeemed"),
            ).where(coupons.c.run_pk == run_pk, coupons.c.customer_pk == customer_pk, coupons.c.step == step)
        ).all()
        rows.sort(key=lambda r: (not r.redeemed, not r.carried, r.id))
        for row in rows[1:]:
            if row.carried or row.redeemed:
                conn.execute(sa.update(coupons).where(coupons.c.id == row.id).values(run_pk=None))
                continue
            conn.execute(sa.delete(coupons).where(coupons.c.id == row.id))
            if row.state != "void" and row.campaign_pk is not None:
                face = Decimal(str((row.terms or {}).get("face_value") or 0))
                conn.execute(
                    sa.update(budgets)
                    .where(
                        budgets.c.campaign_pk == row.campaign_pk,
                        budgets.c.step == step,
                        budgets.c.offer_kind == COUPON_OFFER,
                        budgets.c.issued > 0,
                    )
                    .values(issued=budgets.c.issued - 1, face_value=budgets.c.face_value - sa.literal(face, Money()))
                )
