"""The point-of-sale coupon API of ``orchestrator serve`` (``POST /api/coupons/{code}/check`` and ``/redeem``)
through a real uvicorn server and httpx, on SQLite and PostgreSQL: the same checks as ``coupons redeem`` with
machine-readable reasons, the till's order recorded with the redemption and matched (not duplicated) by a later
orders import, idempotency by order id, two tills redeeming one code at once, API keys (missing, wrong, revoked,
wrong scope), malformed and oversize bodies, and the per-key and per-address rate limits."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from orchestrator import api_keys
from orchestrator.config import Settings
from orchestrator.coupons import codes
from orchestrator.data.importing import import_orders
from orchestrator.db.models import CouponRedemption, Order
from tests.test_coupons_redeem import Shop
from tests.webserver import running

GENEROUS = {"per_ip": {"per_second": 1000, "burst": 1000}, "per_key": {"per_second": 1000, "burst": 1000}}
LUNCH = "2025-07-02T12:30:00+08:00"  # a Wednesday; the coupon is valid 2025-07-01 10:00 to 2025-07-15 00:00


def settings_for(tmp_path: Path, **serve: Any) -> Settings:
    return Settings(base_dir=str(tmp_path), templates=[], serve={"limits": GENEROUS, **serve})


@pytest.fixture
def shop(engine: Engine, tmp_path: Path, monkeypatch) -> Shop:
    monkeypatch.chdir(tmp_path)
    shop = Shop(engine)
    shop.customers("C1", "C2")
    return shop


@pytest.fixture
def keys(engine: Engine) -> dict[str, str]:
    with engine.begin() as conn:
        return {
            "till": api_keys.create(conn, "till-1", ["coupons:redeem"]),
            "kiosk": api_keys.create(conn, "kiosk", ["coupons:check"]),
        }


@pytest.fixture
def base(shop: Shop, engine: Engine, tmp_path: Path):
    with running(settings_for(tmp_path), engine) as url:
        yield url


def order(order_id: str = "T-1", customer_id: str = "C1", amount: str = "128.50", at: str = LUNCH) -> dict:
    return {"order_id": order_id, "customer_id": customer_id, "amount": amount, "ordered_at": at}


def post(base: str, code: str, action: str, body: Any, key: str | None, **kwargs) -> httpx.Response:
    headers = {**({"Authorization": f"Bearer {key}"} if key else {}), **kwargs.pop("headers", {})}
    if isinstance(body, bytes):
        return httpx.post(f"{base}/api/coupons/{code}/{action}", content=body, headers=headers, **kwargs)
    return httpx.post(f"{base}/api/coupons/{code}/{action}", json=body, headers=headers, **kwargs)


def counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (
            conn.execute(select(func.count()).select_from(Order)).scalar(),
            conn.execute(select(func.count()).select_from(CouponRedemption)).scalar(),
        )


def test_check_writes_nothing_redeem_records_the_till_order_and_the_import_matches_it(
    shop: Shop, engine: Engine, keys, base: str, tmp_path: Path
):
    code = shop.coupon("C1")
    checked = post(base, code, "check", order(), keys["kiosk"])
    assert checked.status_code == 200, checked.text
    body = checked.json()
    assert body["ok"] is True and body["status"] == "valid" and body["coupon"]["kind"] == "amount_off"
    assert counts(engine) == (0, 0)  # a check leaves no trace, not even the order

    redeemed = post(base, codes.display(code).lower(), "redeem", order(), keys["till"])
    assert redeemed.status_code == 200, redeemed.text
    assert redeemed.json()["status"] == "redeemed" and redeemed.json()["amount"] == "128.50"
    with engine.connect() as conn:
        [till_order] = conn.execute(select(Order.order_id, Order.channel, Order.status, Order.amount)).all()
        source = conn.execute(select(CouponRedemption.source)).scalar()
    assert tuple(till_order)[:3] == ("T-1", "pos", "paid") and source == "pos"

    again = post(base, code, "redeem", order(), keys["till"])  # the till retries after a timeout
    assert again.status_code == 200 and again.json()["status"] == "already_redeemed"
    assert counts(engine) == (1, 1)

    # the shop's nightly export brings the same order, with the coupon on it: matched, not duplicated
    export = tmp_path / "orders.csv"
    export.write_text(
        "order_id,customer_id,ordered_at,amount,status,coupon_code\n"
        f"T-1,C1,{LUNCH},128.50,paid,{codes.display(code)}\nT-2,C1,{LUNCH},80.00,paid,\n",
        encoding="utf-8",
    )
    result = import_orders(engine, Settings(base_dir=str(tmp_path)), export)
    assert result.rejected == 0
    assert counts(engine) == (2, 1)


@pytest.mark.parametrize(
    ("terms", "body", "reason"),
    [
        ({}, order(customer_id="C2"), "wrong_customer"),
        ({}, order(amount="99.99"), "min_spend"),
        ({"dayparts": ["lunch"]}, order(at="2025-07-02T16:00:00+08:00"), "daypart"),
        ({}, order(at="2025-07-15T00:00:00+08:00"), "expired"),
        ({}, order(at="2025-07-01T09:59:59+08:00"), "not_yet_valid"),
        ({}, order(customer_id="NOBODY"), "unknown_customer"),
    ],
)
def test_refusals_carry_a_stable_reason_and_two_languages(shop: Shop, engine: Engine, keys, base, terms, body, reason):
    code = shop.coupon("C1", **terms)
    checked = post(base, code, "check", body, keys["till"])
    assert checked.status_code == 200 and checked.json()["ok"] is False and checked.json()["reason"] == reason
    refused = post(base, code, "redeem", body, keys["till"])
    assert refused.status_code == 409, refused.text
    answer = refused.json()
    assert answer["reason"] == reason and answer["message"]["en"] and answer["message"]["zh"]
    assert counts(engine) == (0, 0)  # a refused redemption records no order either


def test_codes_that_are_mistyped_or_unknown_and_an_order_of_another_member(shop: Shop, keys, base):
    code = shop.coupon("C1")
    mistyped = code[:-1] + ("2" if code[-1] != "2" else "3")
    assert post(base, mistyped, "redeem", order(), keys["till"]).json()["reason"] == "mistyped"
    assert post(base, codes.new_code(), "redeem", order(), keys["till"]).json()["reason"] == "unknown_code"
    shop.order("SHOP-9", "C2")
    answer = post(base, code, "redeem", order(order_id="SHOP-9"), keys["till"])
    assert answer.status_code == 409 and answer.json()["reason"] == "order_mismatch"


def test_two_tills_redeeming_one_code_at_once_exactly_one_succeeds(shop: Shop, engine: Engine, keys, base):
    for attempt in range(4):
        code = shop.coupon("C1")
        barrier = threading.Barrier(2)
        answers: dict[str, httpx.Response] = {}

        def till(order_id: str, code=code, barrier=barrier, answers=answers) -> None:
            barrier.wait()
            answers[order_id] = post(base, code, "redeem", order(order_id=order_id), keys["till"], timeout=60)

        threads = [threading.Thread(target=till, args=(f"A{attempt}-{n}",)) for n in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        statuses = sorted((a.status_code, a.json().get("status") or a.json().get("reason")) for a in answers.values())
        assert statuses == [(200, "redeemed"), (409, "already_redeemed")], statuses
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(CouponRedemption)).scalar() == 4


def test_keys_missing_wrong_revoked_and_without_the_scope(shop: Shop, engine: Engine, keys, base):
    code = shop.coupon("C1")
    for key in (None, "nonsense", keys["till"][:-2] + "xx", "ok_AAAAAAAA_" + "a" * 43):
        answer = post(base, code, "check", order(), key)
        assert answer.status_code == 401 and answer.json()["error"] == "unauthorized"
        assert answer.headers["www-authenticate"].startswith("Bearer")
    basic = httpx.post(f"{base}/api/coupons/{code}/check", json=order(), headers={"Authorization": "Basic eDp5"})
    assert basic.status_code == 401
    forbidden = post(base, code, "redeem", order(), keys["kiosk"])
    assert forbidden.status_code == 403 and forbidden.json()["error"] == "forbidden"
    assert post(base, code, "check", order(), keys["kiosk"]).status_code == 200
    with engine.begin() as conn:
        api_keys.revoke(conn, "kiosk")
    assert post(base, code, "check", order(), keys["kiosk"]).status_code == 401
    assert counts(engine) == (0, 0)


@pytest.mark.parametrize(
    ("body", "status", "error", "mentions"),
    [
        (b"{not json", 400, "malformed_body", "not JSON"),
        (b"[1, 2]", 400, "malformed_body", "object"),
        (b"\xff\xfe", 400, "malformed_body", "UTF-8"),
        (b"[" * 5000 + b"]" * 5000, 400, "malformed_body", ""),
        (json.dumps({**order(), "amount": "12.345"}).encode(), 422, "invalid_order", "two decimals"),
        (json.dumps({**order(), "amount": True}).encode(), 422, "invalid_order", "decimal"),
        (json.dumps({**order(), "amount": 12.345}).encode(), 422, "invalid_order", "two decimals"),
        (json.dumps({**order(), "amount": "-5"}).encode(), 422, "invalid_order", "more than 0"),
        (json.dumps({**order(), "amount": "NaN"}).encode(), 422, "invalid_order", "amount"),
        (json.dumps({**order(), "ordered_at": "yesterday"}).encode(), 422, "invalid_order", "ordered_at"),
        (json.dumps({"order_id": "T-1"}).encode(), 422, "invalid_order", "customer_id"),
        (json.dumps({**order(), "discount": 5}).encode(), 422, "invalid_order", "discount"),
        (json.dumps({**order(), "order_id": "x" * 65}).encode(), 422, "invalid_order", "order_id"),
        (b"x" * (70 * 1024), 413, "body_too_large", "larger"),
    ],
)
def test_bad_bodies_get_a_clear_4xx(shop: Shop, engine: Engine, keys, base, body, status, error, mentions):
    code = shop.coupon("C1")
    answer = post(base, code, "redeem", body, keys["till"], headers={"Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == error and mentions in answer.json()["message"]["en"]
    assert "Traceback" not in answer.text and 'File "' not in answer.text
    assert counts(engine) == (0, 0)


@pytest.mark.parametrize("at", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "1999-12-31T23:00:00Z"])
def test_an_order_time_outside_the_supported_years_is_a_422_and_writes_nothing(
    shop: Shop, engine: Engine, keys, base, at
):
    code = shop.coupon("C1")
    for action in ("check", "redeem"):
        answer = post(base, code, action, order(at=at), keys["till"])
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"] == "time_out_of_range" and "ordered_at" in answer.json()["message"]["en"]
    assert counts(engine) == (0, 0)


@pytest.mark.parametrize("bad", ["\u202e", "\x00", "\u200b", "\n", "\x1b"])
def test_ids_with_control_or_bidi_characters_are_refused_as_the_orders_import_refuses_them(
    shop: Shop, engine: Engine, keys, base, bad
):
    code = shop.coupon("C1")
    for body in (order(order_id=f"T-{bad}1"), order(customer_id=f"C{bad}1")):
        answer = post(base, code, "redeem", body, keys["till"])
        assert answer.status_code == 422 and answer.json()["error"] == "invalid_order", answer.text
        assert "control character" in answer.json()["message"]["en"]
    for escaped in ("%E2%80%AE", "%00", "%1B"):
        answer = post(base, f"{code}{escaped}", "redeem", order(), keys["till"])
        assert answer.status_code == 422 and answer.json()["error"] == "invalid_identifier", answer.text
    assert counts(engine) == (0, 0)


def test_an_oversize_body_without_content_length_is_cut_off(shop: Shop, keys, base):
    code = shop.coupon("C1")

    def chunks():
        for _ in range(100):
            yield b"x" * 1024

    answer = httpx.post(
        f"{base}/api/coupons/{code}/redeem", content=chunks(), headers={"Authorization": f"Bearer {keys['till']}"}
    )
    assert answer.status_code == 413


def test_rate_limits_per_key_and_per_address_answer_429(shop: Shop, engine: Engine, keys, tmp_path: Path):
    code = shop.coupon("C1")
    per_key = {"per_ip": GENEROUS["per_ip"], "per_key": {"per_second": 0.5, "burst": 2}}
    with running(Settings(base_dir=str(tmp_path), serve={"limits": per_key}), engine) as url:
        answers = [post(url, code, "check", order(), keys["till"]).status_code for _ in range(5)]
        assert answers[:2] == [200, 200] and answers[-1] == 429
        limited = post(url, code, "check", order(), keys["till"])
        assert int(limited.headers["retry-after"]) >= 1 and limited.json()["error"] == "rate_limited"
        # another key has its own allowance
        assert post(url, code, "check", order(), keys["kiosk"]).status_code == 200
    per_ip = {"per_ip": {"per_second": 0.5, "burst": 3}, "per_key": GENEROUS["per_key"]}
    with running(Settings(base_dir=str(tmp_path), serve={"limits": per_ip}), engine) as url:
        answers = [httpx.get(f"{url}/u/whatever").status_code for _ in range(6)]
        assert answers[0] == 400 and answers[-1] == 429
        assert httpx.get(f"{url}/healthz").status_code == 200  # monitoring is not counted
