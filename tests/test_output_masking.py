"""Personal data never reaches the terminal where output promises masking, through the real command line on
SQLite and PostgreSQL: provider replies in ``deliveries``, database errors, ``--db`` URLs and dry-run samples."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text, update

from orchestrator.db.models import Customer, Delivery
from orchestrator.masking import mask_text
from tests import dataset
from tests.clitools import Cli, email_outbox_config
from tests.dataset import AT

CAMPAIGN = """\
name: masking-check
segment: {frequency: {gte: 1}}
message:
  email:
    subject: "Hi {{ customer.name }}"
    text: "Hello {{ customer.name }}, your e-mail {{ customer.email }}, your phone {{ customer.phone or 13812345678 }}"
"""


@pytest.fixture
def cli(engine: Engine, db_url: str, tmp_path: Path, monkeypatch) -> Cli:
    dataset.load(engine)
    config = email_outbox_config(tmp_path)
    (tmp_path / "campaign.yaml").write_text(CAMPAIGN, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    monkeypatch.delenv("ORCHESTRATOR_DEBUG", raising=False)
    return Cli(db_url, config=str(config))


def output(result) -> str:
    return result.output + (result.stderr if result.stderr_bytes is not None else "")


def test_mask_text_masks_addresses_and_phone_numbers_and_keeps_the_rest():
    reply = (
        "550 5.1.1 <Alice.Wong@mail.example.com>: Recipient address rejected; "
        "sms to +8613812345678 / 138 1234 5678 / 138-1234-5678 failed at 2026-03-01T10:00:00+08:00, code 40001"
    )
    masked = mask_text(reply)
    for secret in ("Alice.Wong@", "13812345678", "138 1234 5678", "138-1234-5678", "1234"):
        assert secret not in masked
    assert "550 5.1.1" in masked and "A***@mail.example.com" in masked and "+86 138****5678" in masked
    assert "2026-03-01T10:00:00+08:00" in masked and "40001" in masked
    assert mask_text(None) is None and mask_text("timeout") == "timeout"


def test_failed_deliveries_mask_the_provider_reply(cli: Cli, engine: Engine):
    assert cli("run", "campaign.yaml", "--at", AT.isoformat()).exit_code == 0
    with engine.begin() as conn:
        victim, email = conn.execute(
            select(Delivery.id, Customer.email)
            .join(Customer, Customer.id == Delivery.customer_pk)
            .where(Delivery.state == "sent")
            .limit(1)
        ).one()
        reply = f"550 5.1.1 <{email}>: Recipient address rejected (reply to +8613812345678)"
        conn.execute(update(Delivery).where(Delivery.id == victim).values(state="failed", last_error=reply))
    listing = cli("deliveries", "--state", "failed")
    data = json.loads(cli("deliveries", "--state", "failed", "--json").stdout)
    assert data[0]["last_error"].startswith("550 5.1.1 <") and "***@" in data[0]["last_error"]
    for shown in (listing.output, json.dumps(data)):
        assert email not in shown and "13812345678" not in shown
        assert "Recipient address rejected" in shown


def test_a_database_error_does_not_print_statement_parameters(cli: Cli, engine: Engine):
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE suppressions RENAME TO suppressions_away"))
    try:
        result = cli("suppress", "add", "--email", "Secret.Person@example.com", "--channel", "email")
    finally:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE suppressions_away RENAME TO suppressions"))
    shown = output(result)
    assert result.exit_code == 1, shown
    assert "suppressions" in shown  # still says what went wrong
    assert "secret.person@example.com" not in shown.lower() and "[parameters" not in shown
    assert "ORCHESTRATOR_DEBUG" in shown


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://shop:s3cretpw@db.example.com:notaport/shop",
        "shop:s3cretpw@db.example.com/shop",
        "nosuchdb://shop:s3cretpw@db.example.com/shop",
    ],
)
def test_a_malformed_database_url_is_not_echoed_with_its_password(tmp_path: Path, monkeypatch, url: str):
    monkeypatch.chdir(tmp_path)
    result = Cli(url)("init")
    shown = output(result)
    assert result.exit_code == 2, shown
    assert "s3cretpw" not in shown and "database URL" in shown


@pytest.mark.parametrize(
    ("url", "command", "exit_code"),
    [
        # a password in the query: echoed whole in "cannot open the database …"
        ("postgresql://127.0.0.1:5432/orch_no_such_db?user=postgres&password=s3cretpw", "analyze", 1),
        # an unencoded @ in the password: the rest of it was shown as the host the driver could not resolve
        ("postgresql://postgres:p@s3cretpw@127.0.0.1:5432/orch_no_such_db", "init", 2),
    ],
)
def test_a_password_in_a_query_or_holding_an_at_is_not_shown(tmp_path: Path, monkeypatch, url, command, exit_code):
    monkeypatch.chdir(tmp_path)
    result = Cli(url)(command)
    shown = output(result)
    assert result.exit_code == exit_code, shown
    assert "s3cretpw" not in shown and "Traceback" not in shown


def test_dry_run_samples_are_masked(cli: Cli, engine: Engine):
    with engine.connect() as conn:
        emails = {e for (e,) in conn.execute(select(Customer.email)) if e}
    shown = cli("dry-run", "campaign.yaml", "--at", AT.isoformat(), "--sample", "5").output
    data = json.loads(cli("dry-run", "campaign.yaml", "--at", AT.isoformat(), "--sample", "5", "--json").stdout)
    assert len(data["samples"]) == 5 and all("***@" in s["to"] for s in data["samples"])
    for text_ in (shown, json.dumps(data, ensure_ascii=False)):
        assert not any(e in text_ for e in emails)  # in the recipient and in the message body
        assert re.search(r"1\d{10}", text_) is None  # no whole mobile number anywhere
