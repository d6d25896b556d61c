"""The least-privilege PostgreSQL role of ``deploy/orchestrator-serve-role.sql`` is enough for every endpoint of
``orchestrator serve`` and no more: the service runs as that role (``SET ROLE`` through the connection's options)
and answers an unsubscribe, an SMS opt-out, a bounce on a real delivery, a coupon redemption with its till order,
healthz and metrics; the role cannot delete suppressions, read rendered messages or create API keys."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from orchestrator.config import load_settings
from orchestrator.db.engine import create_db_engine
from orchestrator.db.models import Customer, Delivery
from orchestrator.ledger import delivery_key
from orchestrator.unsubscribe import sign
from orchestrator.web.signatures import sign as sign_hook
from tests import dataset
from tests.clitools import Cli
from tests.dataset import AT
from tests.test_coupons_redeem import Shop
from tests.webserver import running

ROLE_FILE = Path(__file__).resolve().parent.parent / "deploy" / "orchestrator-serve-role.sql"
ROLE = "orchestrator_serve"
KEY = ("test-signing-key-" + "0123456789" * 3).encode()
SECRET = "hook-secret-0123456789abcdef"


@pytest.fixture
def service_engine(engine: Engine, db_url: str):
    if engine.dialect.name != "postgresql":
        pytest.skip("roles are PostgreSQL's")
    with engine.begin() as conn:
        conn.exec_driver_sql(ROLE_FILE.read_text(encoding="utf-8"))
    url = make_url(db_url).update_query_dict({"options": f"-c role={ROLE}"})
    limited = create_db_engine(url.render_as_string(hide_password=False))
    with limited.connect() as conn:
        assert conn.execute(text("SELECT current_user")).scalar() == ROLE
    yield limited
    limited.dispose()
    with engine.begin() as conn:
        conn.execute(text(f"DROP OWNED BY {ROLE}"))  # this database's grants; the role itself is cluster-wide


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_the_service_role_is_enough_and_no_more(
    engine: Engine, service_engine: Engine, db_url: str, tmp_path, monkeypatch
):
    dataset.load(engine)
    shop = Shop(engine)
    shop.customers("T1")
    code = shop.coupon("T1")
    config = tmp_path / "orchestrator.yaml"
    config.write_text(
        "timezone: Asia/Shanghai\ntemplates: []\nchannels:\n"
        f"  email:\n    from: Shop <shop@example.com>\n    outbox: {tmp_path / 'outbox'}\n"
        "serve:\n"
        f"  sms_hooks: {{gw: {{secret: {SECRET}}}}}\n  email_hooks: {{generic: {{secret: {SECRET}}}}}\n",
        encoding="utf-8",
    )
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(
        "name: role\nsegment: {frequency: {gte: 1}}\nmessage:\n  email: {subject: Hi, text: Hello}\n", encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    owner = Cli(db_url, config=str(config))  # the owner runs campaigns and creates keys
    assert owner("run", str(campaign), "--at", AT.isoformat()).exit_code == 0
    key = owner("api-keys", "create", "till", "--scope", "coupons:redeem").stdout.strip()
    with engine.connect() as conn:
        run_pk, delivery_pk, contact = conn.execute(
            select(Delivery.run_pk, Delivery.id, Delivery.contact)
            .join(Customer, Customer.id == Delivery.customer_pk)
            .where(Customer.customer_id == "C01")
        ).one()

    with running(load_settings(config), service_engine) as base:
        assert httpx.get(f"{base}/healthz").json()["database"] == "current"
        order = {"order_id": "R-1", "customer_id": "T1", "amount": "150", "ordered_at": "2025-07-02T12:30:00+08:00"}
        redeemed = httpx.post(
            f"{base}/api/coupons/{code}/redeem", json=order, headers={"Authorization": f"Bearer {key}"}
        )
        assert redeemed.status_code == 200 and redeemed.json()["status"] == "redeemed", redeemed.text
        one_click = httpx.post(f"{base}/u/{sign(KEY, 'C02', 'email')}", data={"List-Unsubscribe": "One-Click"})
        assert one_click.status_code == 200, one_click.text
        body = b"phone=%2B8613800000009&text=TD"
        stamp = str(int(time.time()))
        sms = httpx.post(
            f"{base}/hooks/sms/gw",
            content=body,
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Timestamp": stamp,
                "X-Signature": sign_hook(SECRET, stamp, body),
            },
        )
        assert sms.json() == {"result": "suppressed"}, sms.text
        event = json.dumps(
            {"events": [{"type": "bounce", "recipient": contact, "delivery_key": delivery_key(run_pk, delivery_pk)}]}
        ).encode()
        bounce = httpx.post(
            f"{base}/hooks/email/generic",
            content=event,
            headers={"X-Timestamp": stamp, "X-Signature": sign_hook(SECRET, stamp, event)},
        )
        assert bounce.json() == {"events": 1, "matched": 1, "suppressed": 1}, bounce.text
        metrics = httpx.get(f"{base}/metrics")
        assert metrics.status_code == 200 and "orchestrator_runs" in metrics.text

    with service_engine.connect() as conn:
        for statement in (
            "DELETE FROM suppressions",
            "SELECT body FROM delivery_payloads",
            "INSERT INTO api_keys (name, prefix, key_hash, scopes, created_at) VALUES ('x', 'x', 'x', '[]', now())",
            "UPDATE coupons SET value = 0",
            "DROP TABLE orders",
        ):
            with pytest.raises(ProgrammingError, match=r"permission denied|must be owner"):
                conn.execute(text(statement))
            conn.rollback()
