"""Verifying webhook requests: an HMAC-SHA256 of ``<timestamp>.<body>`` in a header, or a shared secret, compared
in constant time; a timestamp outside ``serve.timestamp_tolerance_seconds`` of now is refused, so a captured
request cannot be replayed later. Every failure is the same 401: the caller learns nothing about which part was
wrong."""

from __future__ import annotations

import hashlib
import hmac
import time

from orchestrator.web.errors import ApiError


def unauthorised() -> ApiError:
    return ApiError(401, "bad_signature", "the request's signature does not verify", "请求签名校验失败")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The hex HMAC-SHA256 a sender puts in the signature header (documented for providers and used by tests)."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def fresh(timestamp: str | None, tolerance: int, now: float | None = None) -> bool:
    if not timestamp or not timestamp.isdigit() or len(timestamp) > 12:
        return False
    return abs((now if now is not None else time.time()) - int(timestamp)) <= tolerance


def verify_hmac(secret: str, timestamp: str | None, signature: str | None, body: bytes, tolerance: int) -> None:
    if not fresh(timestamp, tolerance) or not signature:
        raise unauthorised()
    expected = sign(secret, timestamp, body)
    if not hmac.compare_digest(expected.encode(), signature.strip().lower().encode()):
        raise unauthorised()


def verify_shared_secret(secret: str, presented: str | None) -> None:
    if presented is None or not hmac.compare_digest(secret.encode(), presented.encode()):
        raise unauthorised()
