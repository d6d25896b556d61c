"""``make demo``'s last step: start ``orchestrator serve`` for a moment and use it as a till and a mailbox
provider would, through real HTTP on 127.0.0.1: check and redeem a coupon a demo run issued, then unsubscribe a
member with the one-click POST of their link. Prints what each answer was; exits non-zero if one was wrong.

    python -m orchestrator.demo.serve_walkthrough --config config/orchestrator.yaml --db sqlite:///demo/orchestrator.db
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import select

from orchestrator import api_keys
from orchestrator.config import database_url, load_settings
from orchestrator.coupons import codes
from orchestrator.db.engine import create_db_engine
from orchestrator.db.models import Coupon, Customer, CustomerConsent
from orchestrator.unsubscribe import load_keys, sign


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _plain_coupon(engine):
    """An issued coupon without daypart or weekday limits, its owner, and a till order that satisfies it."""
    query = (
        select(Coupon.code, Coupon.min_spend, Coupon.valid_from, Coupon.terms, Customer.customer_id)
        .join(Customer, Customer.id == Coupon.customer_pk)
        .where(Coupon.state == "issued")
        .order_by(Coupon.id)
        .limit(500)
    )
    with engine.connect() as conn:
        for row in conn.execute(query):
            terms = row.terms or {}
            if not terms.get("dayparts") and not terms.get("weekdays") and terms.get("stacking") != "bundled":
                return row
    raise SystemExit("serve demo: no plain issued coupon in the database (run the demo campaigns first)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--db", required=True)
    args = parser.parse_args()
    settings = load_settings(args.config)
    engine = create_db_engine(database_url(settings, args.db))
    coupon = _plain_coupon(engine)
    with engine.begin() as conn:
        key = api_keys.create(conn, f"demo-till-{os.getpid()}", ["coupons:redeem"])
        member = conn.execute(
            select(Customer.customer_id)
            .join(CustomerConsent, CustomerConsent.customer_pk == Customer.id)
            .where(CustomerConsent.channel == "email", CustomerConsent.opted_in.is_(True))
            .order_by(Customer.id)
            .limit(1)
        ).scalar_one()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    program = shutil.which("orchestrator", path=str(Path(sys.executable).parent)) or "orchestrator"
    command = [program, "--config", args.config, "--db", args.db, "serve"]
    log = Path(args.db.removeprefix("sqlite:///")).with_name("serve.log") if args.db.startswith("sqlite") else None
    command += ["--port", str(port)] + (["--log-file", str(log)] if log else [])
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"serve demo: the server did not start: {server.stderr.read()}") from None
                time.sleep(0.1)
        order = {
            "order_id": f"DEMO-TILL-{os.getpid()}",
            "customer_id": coupon.customer_id,
            "amount": str((coupon.min_spend or 0) + 50),
            "ordered_at": (coupon.valid_from + timedelta(hours=1)).isoformat(),
        }
        headers = {"Authorization": f"Bearer {key}"}
        shown = codes.display(coupon.code)
        checked = httpx.post(f"{base}/api/coupons/{shown}/check", json=order, headers=headers).json()
        redeemed = httpx.post(f"{base}/api/coupons/{shown}/redeem", json=order, headers=headers).json()
        print(f"serve demo: check {shown} for order {order['order_id']}: {checked['status']}")
        print(f"serve demo: redeem: {redeemed['status']} ({redeemed['coupon']['description']})")
        token = sign(load_keys(settings.base_dir).current, member, "email")
        page = httpx.get(f"{base}/u/{token}")
        one_click = httpx.post(f"{base}/u/{token}", data={"List-Unsubscribe": "One-Click"})
        print(f"serve demo: unsubscribe page {page.status_code}, one-click POST {one_click.status_code} ({member})")
        if checked.get("status") != "valid" or redeemed.get("status") != "redeemed" or one_click.status_code != 200:
            raise SystemExit("serve demo: an answer was not the expected one")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        engine.dispose()


if __name__ == "__main__":
    main()
