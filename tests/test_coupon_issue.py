"""Issuing a coupon is one INSERT that writes nothing on any conflict: a drawn code already taken is drawn again,
and a member whose coupon for the run and step exists keeps that one (on SQLite and PostgreSQL)."""

from __future__ import annotations

import itertools
from pathlib import Path

from sqlalchemy import Engine, func, select

from orchestrator.coupons import codes
from orchestrator.db.models import Coupon, OfferBudget
from tests import dataset
from tests.dataset import AT
from tests.test_audience_facts import _orchestrator

CAMPAIGN = """\
name: coupon-issue
segment: {frequency: {gte: 1}}
recontact: always  # the second run is for the same members
offer: {coupon: {kind: amount_off, value: 10, valid_days: 7, per_customer: 5, budget: {max_issued: 1000}}}
message:
  email:
    subject: "{{ offer.code }}"
    text: "Hello"
"""


def test_a_taken_code_is_drawn_again_and_a_rerun_issues_nothing_twice(engine: Engine, tmp_path: Path, monkeypatch):
    dataset.load(engine)
    orch = _orchestrator(tmp_path, engine)
    path = tmp_path / "coupon.yaml"
    path.write_text(CAMPAIGN, encoding="utf-8")
    plan = orch.load(path)
    first = orch.runner(plan).execute(AT, dry_run=False, sample=0, send=False)
    with engine.connect() as conn:
        taken = conn.scalar(select(Coupon.code).where(Coupon.run_pk == first.run_id).order_by(Coupon.id))
        issued = conn.scalar(select(func.count()).where(Coupon.run_pk == first.run_id))
    assert first.messages == issued > 1

    fresh = codes.new_code
    draws = itertools.chain([taken, taken], iter(fresh, None))  # the next run's first member draws a taken code
    monkeypatch.setattr(codes, "new_code", lambda: next(draws))
    later = AT.replace(day=AT.day + 1)
    second = orch.runner(orch.load(path)).execute(later, dry_run=False, sample=0, send=False)
    assert second.messages == issued
    # the same run again: every member already holds this run's coupon, nothing new is issued or counted
    again = orch.runner(orch.load(path)).execute(later, dry_run=False, sample=0, send=False)
    assert again.messages == issued
    with engine.connect() as conn:
        codes_issued = conn.scalars(select(Coupon.code).where(Coupon.run_pk.in_([first.run_id, second.run_id]))).all()
        budget = conn.scalar(select(OfferBudget.issued))
    assert len(codes_issued) == len(set(codes_issued)) == 2 * issued
    assert budget == 2 * issued
