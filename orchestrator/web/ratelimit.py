"""Per-client-address and per-API-key request rates, shared by every server process through the database.

The same GCRA quota rows that pace providers (``orchestrator.dispatch.quotas``) pace callers here, under keys
``serve:ip:<address>`` and ``serve:key:<name>``: one short transaction per request, so two processes behind a
proxy cannot both let through the request that exceeds the rate. A refused request gets 429 with Retry-After.
The client address is the connection's peer, or the proxy's X-Forwarded-For when the peer is one of
``serve.forwarded_allow_ips`` (uvicorn applies that before the app sees the request).
"""

from __future__ import annotations

import math

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator.config import RateLimitConfig, Settings
from orchestrator.dispatch.quotas import Quota
from orchestrator.web.errors import ApiError

UNLIMITED_PATHS = ("/healthz", "/metrics")  # for the monitoring, which the proxy keeps to the inside


def _refusal(wait: float) -> ApiError:
    seconds = max(1, math.ceil(wait))
    return ApiError(
        429,
        "rate_limited",
        f"too many requests; try again in {seconds} s",
        f"请求过于频繁，请 {seconds} 秒后再试",
        headers={"Retry-After": str(seconds)},
    )


class RateLimiter:
    def __init__(self, engine: Engine, settings: Settings):
        self.engine = engine
        self.settings = settings

    def _take(self, key: str, config: RateLimitConfig) -> None:
        granted, wait = Quota(self.engine, key[:128], config, self.settings.tz, durable=False).acquire(1)
        if not granted:
            raise _refusal(wait)

    def per_ip(self, address: str) -> None:
        self._take(f"serve:ip:{address}", self.settings.serve.limits.per_ip)

    def per_key(self, name: str) -> None:
        self._take(f"serve:key:{name}", self.settings.serve.limits.per_key)


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


class PerAddressLimit:
    """ASGI middleware: every request except the monitoring endpoints counts against its client address."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter):
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in UNLIMITED_PATHS:
            try:
                await run_in_threadpool(self.limiter.per_ip, client_address(scope))
            except ApiError as refused:
                await refused.response(scope["path"])(scope, receive, send)
                return
        await self.app(scope, receive, send)


def limiter_of(request: Request) -> RateLimiter:
    return request.app.state.limiter
