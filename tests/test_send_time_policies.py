"""Consent and suppression are checked again when a message is sent, not only when it was planned.

A message may wait between planning and sending: deferred by quiet hours, planned with ``run --plan-only``, or
pending a retry after a transient failure. If in between the member unsubscribes (a signed token), is suppressed
(``suppress add``) or withdraws consent (re-imported with ``email_opt_in`` false), ``orchestrator dispatch`` must
not send it: the row ends ``skipped`` with the planner's reason, and the coupon it carried is voided and its
budget given back. Each of the three ways × each of the three waiting states, on SQLite and PostgreSQL, through
the CLI against a real HTTP provider on loopback (the webhook channel, with e-mail consent required).
"""

from __future__ import annotations

import csv
import json
import threading
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from orchestrator.data.records import CUSTOMER_COLUMNS
from orchestrator.db.models import Coupon, Customer, Delivery, DeliveryPayload, OfferBudget
from orchestrator.unsubscribe import load_keys, sign
from tests.clitools import Cli
from tests.httpserver import Request, Response, serve

AT = "2026-11-02T10:00:00+08:00"
AFTER_QUIET = "2026-11-02T11:00:00+08:00"  # the quiet window 09:00-11:00 has ended
MEMBERS = ("M00001", "M00002", "M00003")
OPTED_OUT = "M00001"

CAMPAIGN = """\
name: send-time-check
segment: {consent_email: true}
offer:
  coupon: {kind: amount_off, value: 20, valid_days: 14, budget: {max_issued: 10}}
message:
  webhook:
    event: hello
    payload: {name: "{{ customer.name }}", code: "{{ offer.code }}"}
dispatch: {batch_size: 50%s}
"""


class Provider:
    """Accepts, or answers 503 while ``down``; records the member named in every request."""

    def __init__(self, down: bool):
        self.down = down
        self.lock = threading.Lock()
        self.calls: list[tuple[str, int]] = []  # (customer_id, status)

    def __call__(self, request: Request) -> Response:
        body = json.loads(request.body)
        with self.lock:
            status = 503 if self.down else 200
            self.calls.append((body["customer_id"], status))
        if status == 503:
            return Response(503, "busy")
        return Response.json({"id": "p-" + request.headers["idempotency-key"]})


def write_customers(path: Path, opted_out: str | None = None) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, CUSTOMER_COLUMNS, restval="")
        writer.writeheader()
        for i, customer_id in enumerate(MEMBERS, start=1):
            writer.writerow(
                {
                    "customer_id": customer_id,
                    "name": f"Member {i}",
                    "email": f"m{i}@example.com",
                    "phone": f"+8613800000{i:03d}",
                    "signup_at": "2024-01-01T00:00:00+08:00",
                    "email_opt_in": "false" if customer_id == opted_out else "true",
                    "sms_opt_in": "true",
                }
            )
    return path


def opt_out(way: str, cli: Cli, folder: Path) -> str:
    """Opt the member out in one of the three ways; the skip reason dispatch must record."""
    if way == "unsubscribe_token":
        token = sign(load_keys(folder).current, OPTED_OUT, "webhook")
        result = cli("suppress", "unsubscribe", token)
        assert result.exit_code == 0, result.output
        return "suppressed"
    if way == "suppress_add":
        result = cli("suppress", "add", "--customer", OPTED_OUT)
        assert result.exit_code == 0, result.output
        return "suppressed"
    result = cli("import", "customers", write_customers(folder / "withdrawn.csv", opted_out=OPTED_OUT))
    assert result.exit_code == 0, result.output
    return "no_consent"


@pytest.mark.parametrize("way", ["unsubscribe_token", "suppress_add", "consent_withdrawn"])
@pytest.mark.parametrize("waiting", ["quiet_hours", "plan_only", "retry"])
def test_a_member_who_opts_out_before_the_send_is_not_contacted(
    engine: Engine, db_url: str, tmp_path: Path, way: str, waiting: str
):
    provider = Provider(down=waiting == "retry")
    quiet = ', quiet_hours: "09:00-11:00"' if waiting == "quiet_hours" else ""
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(CAMPAIGN % quiet, encoding="utf-8")
    with serve(provider) as server:
        config = tmp_path / "orchestrator.yaml"
        config.write_text(
            "timezone: Asia/Shanghai\ntemplates: []\n"
            f"channels:\n  webhook: {{url: '{server.url}/hook', timeout: 5, consent: email}}\n"
            "dispatch:\n  linger_seconds: 0\n"
            "  retry: {first_delay_seconds: 0.5, max_delay_seconds: 0.5, max_attempts: 5}\n"
            "  breaker: {min_calls: 1000}\n",
            encoding="utf-8",
        )
        cli = Cli(db_url, str(config))
        assert cli("import", "customers", write_customers(tmp_path / "customers.csv")).exit_code == 0
        run = cli("run", campaign, "--at", AT, "--json", *(["--plan-only"] if waiting == "plan_only" else []))
        planned = json.loads(run.stdout)
        expected_open = "deferred" if waiting == "quiet_hours" else "pending"
        assert planned["state"] == "waiting", planned
        with engine.connect() as conn:
            assert conn.execute(select(Delivery.state)).scalars().all() == [expected_open] * 3
        assert all(status == 503 for _, status in provider.calls)  # nothing accepted yet
        reason = opt_out(way, cli, tmp_path)
        provider.down = False
        before = len(provider.calls)
        at = ["--at", AFTER_QUIET] if waiting == "quiet_hours" else []
        result = cli("dispatch", "--run", planned["run_id"], *at, "--linger", "5", "--json")
    assert result.exit_code == 0, result.output
    [report] = json.loads(result.stdout)["runs"]
    assert report["state"] == "done", report
    contacted = [customer for customer, status in provider.calls[before:]]
    assert OPTED_OUT not in contacted, provider.calls  # never contacted after opting out
    assert sorted(contacted) == ["M00002", "M00003"]
    with engine.connect() as conn:
        rows = {
            row.customer_id: row
            for row in conn.execute(
                select(Customer.customer_id, Delivery.id, Delivery.state, Delivery.reason, Delivery.coupon_pk).join(
                    Customer, Customer.id == Delivery.customer_pk
                )
            )
        }
        coupons = dict(conn.execute(select(Coupon.id, Coupon.state)).all())
        budget = conn.execute(select(OfferBudget.issued, OfferBudget.face_value)).one()
        payloads = conn.execute(select(DeliveryPayload.delivery_pk)).scalars().all()
    skipped = rows[OPTED_OUT]
    assert (skipped.state, skipped.reason) == ("skipped", reason)
    assert {rows[m].state for m in ("M00002", "M00003")} == {"sent"}
    assert coupons[skipped.coupon_pk] == "void"  # the coupon sent with nothing is void ...
    assert sorted(state for pk, state in coupons.items() if pk != skipped.coupon_pk) == ["issued", "issued"]
    assert (budget.issued, budget.face_value) == (2, Decimal(40))  # ... and back in the budget
    assert payloads == []
    assert report["outcomes"].get("skipped") == 1 and report["outcomes"].get("sent") == 2, report


WALLET = """\
name: wallet-check
segment: {consent_email: true}
offer:
  coupon: {kind: amount_off, value: 20, valid_days: 14}
message:
  coupon: {}
"""


def test_the_wallet_channel_needs_no_consent_but_honours_a_suppression(engine: Engine, db_url: str, tmp_path: Path):
    """The ``coupon`` channel has no consent: withdrawing e-mail consent does not stop it, a suppression does."""
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(WALLET, encoding="utf-8")
    config = tmp_path / "orchestrator.yaml"
    config.write_text("timezone: Asia/Shanghai\ntemplates: []\n", encoding="utf-8")
    cli = Cli(db_url, str(config))
    assert cli("import", "customers", write_customers(tmp_path / "customers.csv")).exit_code == 0
    planned = json.loads(cli("run", campaign, "--at", AT, "--plan-only", "--json").stdout)
    assert cli("suppress", "add", "--customer", OPTED_OUT, "--channel", "coupon").exit_code == 0
    assert cli("import", "customers", write_customers(tmp_path / "withdrawn.csv", opted_out="M00002")).exit_code == 0
    result = cli("dispatch", "--run", planned["run_id"], "--json")
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        rows = dict(
            conn.execute(
                select(Customer.customer_id, Delivery.reason).join(Customer, Customer.id == Delivery.customer_pk)
            ).all()
        )
        states = dict(
            conn.execute(
                select(Customer.customer_id, Coupon.state).join(Customer, Customer.id == Coupon.customer_pk)
            ).all()
        )
    assert rows == {"M00001": "suppressed", "M00002": None, "M00003": None}
    assert states == {"M00001": "void", "M00002": "issued", "M00003": "issued"}
