"""``Authorization: Bearer <key>`` for the point-of-sale API: 401 without a valid key (missing, malformed,
unknown or revoked are not told apart), 403 for a key without the scope, then the key's own rate limit."""

from __future__ import annotations

from datetime import timedelta

from starlette.requests import Request

from orchestrator import api_keys
from orchestrator.api_keys import Caller
from orchestrator.timeutil import utcnow
from orchestrator.web.errors import ApiError
from orchestrator.web.ratelimit import limiter_of

TOUCH_EVERY = timedelta(minutes=1)  # last_used_at is a hint for revoking stale keys, not a write per request


def _unauthorised() -> ApiError:
    return ApiError(
        401,
        "unauthorized",
        "a valid API key is required: Authorization: Bearer <key>",
        "需要有效的 API 密钥（Authorization: Bearer <密钥>）",
        headers={"WWW-Authenticate": 'Bearer realm="orchestrator"'},
    )


def require(request: Request, scope: str) -> Caller:
    """The caller, allowed ``scope``; raises the 401 / 403 / 429 otherwise. Runs in the thread pool."""
    header = request.headers.get("authorization", "")
    kind, _, key = header.partition(" ")
    if kind.lower() != "bearer" or not key.strip():
        raise _unauthorised()
    engine = request.app.state.engine
    with engine.connect() as conn:
        found = api_keys.authenticate(conn, key.strip())
    if found is None:
        raise _unauthorised()
    caller, last_used = found
    if not caller.may(scope):
        raise ApiError(
            403,
            "forbidden",
            f"this API key may not do {scope}",
            f"此 API 密钥没有 {scope} 权限",
        )
    limiter_of(request).per_key(caller.name)
    now = utcnow()
    if last_used is None or now - last_used > TOUCH_EVERY:
        with engine.begin() as conn:
            api_keys.touch(conn, caller, now)
    return caller
