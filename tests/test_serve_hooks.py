"""Inbound SMS replies and e-mail delivery events through a real uvicorn server, on SQLite and PostgreSQL: good
and bad signatures, stale timestamps, shared secrets, field mappings, the generic event JSON and Mailgun's format;
opt-outs, hard bounces and complaints suppress and the next run skips the member; plus /healthz and /metrics."""

from __future__ import annotations

import email
import hashlib
import hmac
import json
import re
import secrets
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, select

from orchestrator.config import load_settings
from orchestrator.db.engine import create_db_engine
from orchestrator.db.models import Customer, Delivery, Suppression
from orchestrator.ledger import delivery_key
from orchestrator.web.signatures import sign
from tests import dataset
from tests.clitools import Cli
from tests.dataset import AT
from tests.webserver import running

SMS_SECRET = "sms-hook-secret-0123456789"
MAILGUN_KEY = "mailgun-signing-key-0123456789"
EMAIL_SECRET = "email-hook-secret-0123456789"
CAMPAIGN = """\
name: hooks
segment: {frequency: {gte: 1}}
message:
  email:
    subject: "Hi"
    text: "Hello {{ customer.name }}"
"""


@pytest.fixture
def shop(engine: Engine, db_url: str, tmp_path: Path, monkeypatch):
    dataset.load(engine)
    config = tmp_path / "orchestrator.yaml"
    config.write_text(
        "timezone: Asia/Shanghai\ntemplates: []\nchannels:\n"
        f"  email:\n    from: Shop <shop@example.com>\n    outbox: {tmp_path / 'outbox'}\n"
        "serve:\n  limits: {per_ip: {per_second: 1000, burst: 1000}}\n  sms_hooks:\n"
        f"    gw: {{secret: {SMS_SECRET}, phone_field: mobile, text_field: content, received_at_field: time}}\n"
        f"    plain: {{secret: {SMS_SECRET}, verify: shared_secret}}\n"
        "  email_hooks:\n"
        f"    generic: {{secret: {EMAIL_SECRET}}}\n"
        f"    mg: {{format: mailgun, secret: {MAILGUN_KEY}}}\n",
        encoding="utf-8",
    )
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(CAMPAIGN, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    cli = Cli(db_url, config=str(config))
    with running(load_settings(config), engine) as url:
        yield {"url": url, "engine": engine, "cli": cli, "campaign": campaign, "outbox": tmp_path / "outbox"}


def suppressions(engine: Engine) -> list[tuple]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                select(Suppression.address, Suppression.channel, Suppression.reason, Suppression.source).order_by(
                    Suppression.id
                )
            )
        ]


def signed(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return {"X-Timestamp": stamp, "X-Signature": sign(secret, stamp, body)}


# --- SMS ---------------------------------------------------------------------------------------------------------


def sms(url: str, fields: dict, secret: str = SMS_SECRET, timestamp: int | None = None) -> httpx.Response:
    body = httpx.QueryParams(fields).__str__().encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", **signed(secret, body, timestamp)}
    return httpx.post(f"{url}/hooks/sms/gw", content=body, headers=headers)


def test_sms_opt_out_with_a_good_signature_suppresses_like_the_import(shop):
    url, engine = shop["url"], shop["engine"]
    answer = sms(url, {"mobile": "13800000001", "content": " 退订。", "time": "2025-06-30T09:00:00+08:00"})
    assert answer.status_code == 200 and answer.json() == {"result": "suppressed"}
    assert suppressions(engine) == [("+8613800000001", "sms", "unsubscribed", "sms_reply")]
    assert sms(url, {"mobile": "+86 138 0000 0001", "content": "T"}).json() == {"result": "unchanged"}
    assert sms(url, {"mobile": "13800000001", "content": "不要退订"}).json() == {"result": "ignored"}
    assert len(suppressions(engine)) == 1


def test_sms_bad_signatures_stale_times_and_bad_fields_change_nothing(shop):
    url, engine = shop["url"], shop["engine"]
    fields = {"mobile": "13800000001", "content": "T"}
    assert sms(url, fields, secret="another-secret-0123456789").status_code == 401
    assert sms(url, fields, timestamp=int(time.time()) - 3600).status_code == 401
    body = b"mobile=13800000001&content=T"
    tampered = signed(SMS_SECRET, body)
    answer = httpx.post(f"{url}/hooks/sms/gw", content=body + b"D", headers=tampered)
    assert answer.status_code == 401 and answer.json()["error"] == "bad_signature"
    assert httpx.post(f"{url}/hooks/sms/gw", content=body).status_code == 401  # unsigned
    assert sms(url, {"mobile": "not a phone", "content": "T"}).status_code == 400
    assert sms(url, {"content": "T"}).status_code == 400
    assert sms(url, {**fields, "time": "soon"}).status_code == 400
    assert httpx.post(f"{url}/hooks/sms/nope", content=body, headers=signed(SMS_SECRET, body)).status_code == 404
    assert suppressions(engine) == []


def test_times_outside_the_supported_years_are_a_422_on_every_hook(shop):
    url, engine = shop["url"], shop["engine"]
    for at in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        answer = sms(url, {"mobile": "13800000001", "content": "T", "time": at})
        assert answer.status_code == 422 and answer.json()["error"] == "time_out_of_range", answer.text
        event = {"type": "bounce", "recipient": "someone@example.com", "occurred_at": at}
        answer = generic(url, [event])
        assert answer.status_code == 422 and answer.json()["error"] == "time_out_of_range", answer.text
    for stamp in (1e20, -1e20, 0):
        answer = mailgun(
            url, {"event": "failed", "severity": "permanent", "recipient": "a@example.com", "timestamp": stamp}
        )
        assert answer.status_code == 422 and answer.json()["error"] == "time_out_of_range", answer.text
    assert suppressions(engine) == []


def test_sms_shared_secret_and_json(shop):
    url, engine = shop["url"], shop["engine"]
    body = {"phone": "+8613800000002", "text": "STOP"}
    assert httpx.post(f"{url}/hooks/sms/plain", json=body, headers={"X-Hook-Secret": "wrong"}).status_code == 401
    answer = httpx.post(f"{url}/hooks/sms/plain", json=body, headers={"X-Hook-Secret": SMS_SECRET})
    assert answer.status_code == 200 and answer.json() == {"result": "suppressed"}
    assert suppressions(engine) == [("+8613800000002", "sms", "unsubscribed", "sms_reply")]


# --- e-mail --------------------------------------------------------------------------------------------------------


def sent_email(shop, customer_id: str) -> tuple[int, int, str, str]:
    """(run id, delivery id, address, Message-ID) of the member's e-mail from a real run."""
    result = shop["cli"]("run", str(shop["campaign"]), "--at", AT.isoformat())
    assert result.exit_code == 0, result.output
    with shop["engine"].connect() as conn:
        run_pk, delivery_pk, contact = conn.execute(
            select(Delivery.run_pk, Delivery.id, Delivery.contact)
            .join(Customer, Customer.id == Delivery.customer_pk)
            .where(Customer.customer_id == customer_id, Delivery.state == "sent")
        ).one()
    wanted = hashlib.sha256(delivery_key(run_pk, delivery_pk).encode()).hexdigest()[:32]
    ids = [email.message_from_bytes(p.read_bytes())["Message-ID"] for p in shop["outbox"].rglob("*.eml")]
    [message_id] = [m for m in ids if wanted in m]
    return run_pk, delivery_pk, contact, message_id


def outcome(engine: Engine, delivery_pk: int) -> str | None:
    with engine.connect() as conn:
        return conn.execute(select(Delivery.outcome).where(Delivery.id == delivery_pk)).scalar()


def generic(url: str, events: list[dict], secret: str = EMAIL_SECRET) -> httpx.Response:
    body = json.dumps({"events": events}).encode()
    return httpx.post(
        f"{url}/hooks/email/generic", content=body, headers={"Content-Type": "application/json", **signed(secret, body)}
    )


def test_a_hard_bounce_by_delivery_key_suppresses_and_the_next_run_skips(shop):
    url, engine = shop["url"], shop["engine"]
    run_pk, delivery_pk, contact, _ = sent_email(shop, "C01")
    event = {
        "type": "bounce",
        "bounce_type": "hard",
        "recipient": contact.upper(),
        "delivery_key": delivery_key(run_pk, delivery_pk),
    }
    assert generic(url, [event], secret="wrong-secret-0123456789").status_code == 401
    assert outcome(engine, delivery_pk) is None
    answer = generic(url, [event])
    assert answer.status_code == 200 and answer.json() == {"events": 1, "matched": 1, "suppressed": 1}
    assert outcome(engine, delivery_pk) == "bounced"
    assert suppressions(engine) == [(contact.lower(), "email", "bounced", "email_event")]
    assert generic(url, [event]).json()["suppressed"] == 0  # retried by the provider: harmless

    result = shop["cli"]("run", str(shop["campaign"]), "--at", AT.replace(day=2).isoformat())
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        states = conn.execute(
            select(Delivery.state, Delivery.reason)
            .join(Customer, Customer.id == Delivery.customer_pk)
            .where(Customer.customer_id == "C01", Delivery.run_pk != run_pk)
        ).all()
    assert [tuple(s) for s in states] == [("skipped", "suppressed")]


def test_a_delivery_key_of_a_delivery_to_another_address_matches_nothing(shop):
    url, engine = shop["url"], shop["engine"]
    run_pk, delivery_pk, contact, _ = sent_email(shop, "C01")
    with engine.connect() as conn:
        other_pk, other_contact = conn.execute(
            select(Delivery.id, Delivery.contact)
            .join(Customer, Customer.id == Delivery.customer_pk)
            .where(Customer.customer_id == "C03", Delivery.run_pk == run_pk)
        ).one()
    assert other_contact.lower() != contact.lower()
    event = {"type": "bounce", "recipient": contact, "delivery_key": delivery_key(run_pk, other_pk)}
    answer = generic(url, [event])
    assert answer.status_code == 200 and answer.json() == {"events": 1, "matched": 0, "suppressed": 1}
    assert outcome(engine, other_pk) is None and outcome(engine, delivery_pk) is None
    assert suppressions(engine) == [(contact.lower(), "email", "bounced", "email_event")]  # the recipient only
    # the recipient as the provider may spell it (case, spaces) still names its own delivery
    own = {"type": "delivered", "recipient": f" {contact.upper()} ", "delivery_key": delivery_key(run_pk, delivery_pk)}
    assert generic(url, [own]).json()["matched"] == 1 and outcome(engine, delivery_pk) == "delivered"


def test_complaints_by_message_id_soft_bounces_and_bad_events(shop):
    url, engine = shop["url"], shop["engine"]
    _, delivery_pk, contact, message_id = sent_email(shop, "C03")
    soft = {
        "type": "bounce",
        "bounce_type": "soft",
        "recipient": contact,
        "message_id": message_id,
        "occurred_at": "2025-07-01T11:00:00+08:00",
    }
    assert generic(url, [soft]).json() == {"events": 1, "matched": 1, "suppressed": 0}
    assert outcome(engine, delivery_pk) == "soft_bounced" and suppressions(engine) == []
    complaint = {**soft, "type": "complaint", "occurred_at": "2025-07-01T12:00:00+08:00"}
    assert generic(url, [complaint]).json() == {"events": 1, "matched": 1, "suppressed": 1}
    assert outcome(engine, delivery_pk) == "complained"
    older = {**soft, "type": "delivered", "occurred_at": "2025-07-01T10:30:00+08:00"}
    generic(url, [older])
    assert outcome(engine, delivery_pk) == "complained"  # a late, older event does not overwrite a newer one
    for bad in (
        [{"type": "opened", "recipient": contact}],
        [{"type": "bounce"}],
        [],
        ["x"],
        [{"type": "bounce", "recipient": contact, "bounce_type": "medium"}],
    ):
        answer = generic(url, bad)
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_event", answer.text
    for field in ("delivery_key", "message_id"):
        answer = generic(url, [{**soft, field: "run1-d1\u202e"}])
        assert answer.status_code == 422 and answer.json()["error"] == "invalid_identifier", answer.text


def mailgun(
    url: str, data: dict, key: str = MAILGUN_KEY, timestamp: int | None = None, token: str | None = None
) -> httpx.Response:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    token = token or secrets.token_hex(25)  # Mailgun's token is new for every request
    signature = hmac.new(key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
    body = {"signature": {"timestamp": stamp, "token": token, "signature": signature}, "event-data": data}
    return httpx.post(f"{url}/hooks/email/mg", json=body)


def test_mailgun_permanent_failures_are_verified_and_suppress(shop):
    url, engine = shop["url"], shop["engine"]
    _, delivery_pk, contact, message_id = sent_email(shop, "C06")
    data = {
        "event": "failed",
        "severity": "permanent",
        "recipient": contact,
        "timestamp": time.time(),
        "message": {"headers": {"message-id": message_id.strip("<>")}},
    }
    assert mailgun(url, data, key="another-key-0123456789").status_code == 401
    assert mailgun(url, data, timestamp=int(time.time()) - 3600).status_code == 401
    assert suppressions(engine) == []
    answer = mailgun(url, data)
    assert answer.status_code == 200 and answer.json() == {"events": 1, "matched": 1, "suppressed": 1}
    assert outcome(engine, delivery_pk) == "bounced"
    assert mailgun(url, {**data, "event": "opened"}).json() == {"events": 0, "matched": 0, "suppressed": 0}


def test_a_replayed_mailgun_request_is_refused(shop):
    url, engine = shop["url"], shop["engine"]
    data = {"event": "failed", "severity": "permanent", "recipient": "replay@example.com", "timestamp": time.time()}
    stamp, token = int(time.time()), "b" * 50
    first = mailgun(url, data, timestamp=stamp, token=token)
    assert first.status_code == 200 and first.json()["suppressed"] == 1
    with engine.begin() as conn:  # the address is let back in; a replay must not suppress it again
        conn.execute(Suppression.__table__.delete())
    again = mailgun(url, data, timestamp=stamp, token=token)
    assert again.status_code == 401 and again.json()["error"] == "bad_signature"
    assert suppressions(engine) == []
    assert mailgun(url, {**data, "event": "opened"}, timestamp=stamp, token=token).status_code == 401
    assert mailgun(url, data).status_code == 200  # a new token: a new request


def test_json_with_a_repeated_key_is_refused(shop):
    url, engine = shop["url"], shop["engine"]
    body = b'{"events": [{"type": "delivered", "recipient": "a@example.com", "type": "bounce"}]}'
    answer = httpx.post(
        f"{url}/hooks/email/generic",
        content=body,
        headers={"Content-Type": "application/json", **signed(EMAIL_SECRET, body)},
    )
    assert answer.status_code == 400 and answer.json()["error"] == "malformed_body", answer.text
    assert "'type' appears twice" in answer.json()["message"]["en"]
    assert suppressions(engine) == []


# --- health and metrics --------------------------------------------------------------------------------------------


def test_healthz_and_metrics(shop, tmp_path: Path):
    url = shop["url"]
    health = httpx.get(f"{url}/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok", "database": "current"}
    sent_email(shop, "C01")
    httpx.get(f"{url}/u/not-a-token")
    metrics = httpx.get(f"{url}/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'orchestrator_deliveries{channel="email",state="sent"}' in text
    assert 'orchestrator_runs{state="done"} 1.0' in text
    assert 'orchestrator_http_request_seconds_count{endpoint="unsubscribe",method="GET",status="400"}' in text
    assert "not-a-token" not in text
    # docs/serve.md's table names each counter as it is scraped (<name>_total)
    table = (Path(__file__).parents[1] / "docs" / "serve.md").read_text(encoding="utf-8")
    documented = re.findall(r"^\| `(orchestrator_\w+)", table.split("## Health and metrics")[1], re.MULTILINE)
    counters = set(re.findall(r"^# TYPE (\w+) counter$", text, re.MULTILINE))
    assert {"orchestrator_coupon_answers_total", "orchestrator_hook_events_total"} <= counters
    assert counters <= set(documented)

    empty = create_db_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with running(load_settings(None), empty) as bare:
        answer = httpx.get(f"{bare}/healthz")
    empty.dispose()
    assert answer.status_code == 503 and answer.json() == {"status": "unavailable", "database": "out_of_date"}


def test_an_unexpected_failure_is_a_bare_500_and_a_masked_log_line(tmp_path: Path, caplog):
    """A database without the tables: every lookup fails inside the endpoint. The client learns nothing; the log has
    the error without the statement's parameters (which could be a member's contact)."""
    broken = create_db_engine(f"sqlite:///{tmp_path / 'broken.db'}")
    with running(load_settings(None), broken) as url, caplog.at_level("ERROR", logger="orchestrator.serve"):
        answer = httpx.post(
            f"{url}/api/coupons/ABCD/check",
            json={"order_id": "x"},
            headers={"Authorization": "Bearer ok_AAAAAAAA_" + "a" * 43},
        )
    broken.dispose()
    assert answer.status_code == 500 and answer.json()["error"] == "internal"
    assert "Traceback" not in answer.text and "sqlite" not in answer.text.lower()
    [record] = [r for r in caplog.records if r.getMessage() == "request failed"]
    assert "no such table" in record.fields["error"] and "parameters" not in record.fields["error"]
    assert "127.0.0.1" not in record.fields["error"]  # the rate-limit key, a bound parameter


def test_metrics_show_the_scheduler_lag_where_a_scheduler_runs(shop):
    from datetime import timedelta

    from orchestrator.db.models import SchedulerLease
    from orchestrator.timeutil import utcnow

    now = utcnow()
    with shop["engine"].begin() as conn:
        conn.execute(
            SchedulerLease.__table__.insert().values(
                name="scheduler",
                holder="h",
                acquired_at=now,
                renewed_at=now - timedelta(seconds=12),
                expires_at=now + timedelta(seconds=20),
            )
        )
    text = httpx.get(f"{shop['url']}/metrics").text
    [line] = [x for x in text.splitlines() if x.startswith("orchestrator_scheduler_lag_seconds ")]
    assert 11 <= float(line.split()[1]) < 60
