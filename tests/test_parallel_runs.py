"""Several processes running the same campaign at the same ``--at`` share one run, and a coupon exists only with
its delivery: the process that loses a member to another issues nothing and spends no budget.

Three real ``orchestrator run FILE --at T`` processes are started together against one database. Whatever the
interleaving, the run ends with exactly ``min(audience, max_issued)`` coupons, each carried by a delivery, no
member holding two, and the budget counting exactly those. (PostgreSQL runs them truly concurrently; SQLite
serialises their write transactions, which must hold just as well.)
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from sqlalchemy import Engine, func, select

from orchestrator.config import Settings
from orchestrator.data.importing import import_customers
from orchestrator.data.records import CUSTOMER_COLUMNS
from orchestrator.db.models import Coupon, Delivery, OfferBudget

AT = "2026-11-02T10:00:00+08:00"
PROCESSES = 3
MEMBERS = 900
MAX_ISSUED = 600

CAMPAIGN = f"""\
name: parallel-coupons
segment: {{consent_email: true}}
offer:
  coupon: {{kind: amount_off, value: 5, valid_days: 7, budget: {{max_issued: {MAX_ISSUED}}}}}
message:
  coupon: {{}}
dispatch: {{batch_size: 50}}
"""


def write_members(folder: Path, engine: Engine) -> None:
    path = folder / "customers.csv"
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, CUSTOMER_COLUMNS, restval="")
        writer.writeheader()
        for i in range(1, MEMBERS + 1):
            writer.writerow(
                {
                    "customer_id": f"M{i:05d}",
                    "name": f"Member {i}",
                    "email": f"m{i:05d}@example.com",
                    "signup_at": "2024-01-01T00:00:00+08:00",
                    "email_opt_in": "true",
                }
            )
    import_customers(engine, Settings(base_dir=str(folder)), path)


def test_parallel_runs_of_one_campaign_issue_each_coupon_once_with_its_delivery(
    engine: Engine, db_url: str, tmp_path: Path
):
    write_members(tmp_path, engine)
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(CAMPAIGN, encoding="utf-8")
    config = tmp_path / "orchestrator.yaml"
    config.write_text("timezone: Asia/Shanghai\ntemplates: []\n", encoding="utf-8")
    command = [sys.executable, "-c", "from orchestrator.cli import main; main()", "--config", str(config)]
    command += ["--db", db_url, "run", str(campaign), "--at", AT, "--json"]
    env = {k: v for k, v in os.environ.items() if k != "ORCHESTRATOR_CONFIG"}
    # the suite's key (conftest), passed on to the child processes
    runs = [
        subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(PROCESSES)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0] * PROCESSES, [err[-2000:] for _, err in outputs]
    run_ids = {json.loads(out)["run_id"] for out, _ in outputs}
    assert len(run_ids) == 1  # one run, shared
    with engine.connect() as conn:
        coupons = conn.execute(select(Coupon.id, Coupon.customer_pk, Coupon.state)).all()
        deliveries = conn.execute(
            select(Delivery.customer_pk, Delivery.state, Delivery.reason, Delivery.coupon_pk)
        ).all()
        budget = conn.execute(select(OfferBudget.issued)).scalar_one()
        carried = conn.execute(select(func.count(func.distinct(Delivery.coupon_pk)))).scalar_one()
    orphans = {c.id for c in coupons} - {d.coupon_pk for d in deliveries}
    holders = Counter(c.customer_pk for c in coupons)
    issued = min(MEMBERS, MAX_ISSUED)
    print(
        f"\n[{db_url.split(':')[0]}] processes={PROCESSES} members={MEMBERS} coupons={len(coupons)}"
        f" carried={carried} orphans={len(orphans)} budget={budget}"
        f" skipped={Counter(d.reason for d in deliveries if d.state == 'skipped')}"
    )
    assert len(deliveries) == MEMBERS and len({d.customer_pk for d in deliveries}) == MEMBERS
    assert not orphans  # no coupon without its delivery
    assert max(holders.values()) == 1  # no member with two
    assert len(coupons) == carried == budget == issued
    assert Counter(d.state for d in deliveries) == {"sent": issued, "skipped": MEMBERS - issued}
    assert {d.reason for d in deliveries if d.state == "skipped"} == {"offer_budget"}
    assert {c.state for c in coupons} == {"issued"}
