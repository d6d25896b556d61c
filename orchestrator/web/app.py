"""The ASGI application: every endpoint group's routes, behind three layers (outermost first):

1. ``RequestLog``: one JSON line per request (``orchestrator.logs``, masked; the unsubscribe token is never
   logged), the latency histogram, and the last line of defence: an unexpected exception becomes a bare 500 and
   a log line with the exception's type and masked message, never a traceback to the client;
2. ``PerAddressLimit``: the per-address rate limit (429);
3. ``BodyLimit``: bodies over ``serve.limits.max_body_bytes`` get 413.

``create_app`` builds it for a settings object and an engine: ``orchestrator serve`` calls it once, or once in
each worker process (``cli/serve.py``), and the tests call it for a server in a thread.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.config import Settings
from orchestrator.masking import describe_unexpected
from orchestrator.plugin_manager import build_registry, manager
from orchestrator.web import coupons_api, health, hooks_email, hooks_sms, unsubscribe
from orchestrator.web.bodies import BodyLimit
from orchestrator.web.errors import ApiError
from orchestrator.web.metrics import LATENCY
from orchestrator.web.ratelimit import PerAddressLimit, RateLimiter, client_address

log = logging.getLogger("orchestrator.serve")


def endpoint_group(path: str) -> str:
    """A bounded label for a path (metrics and logs never carry tokens, codes or provider names)."""
    if path.startswith("/u/"):
        return "unsubscribe"
    if path.startswith("/api/coupons/"):
        return "coupons_" + path.rsplit("/", 1)[-1] if path.endswith(("/check", "/redeem")) else "coupons_other"
    if path.startswith("/hooks/sms/"):
        return "hooks_sms"
    if path.startswith("/hooks/email/"):
        return "hooks_email"
    if path in ("/healthz", "/metrics"):
        return path[1:]
    return "other"


class RequestLog:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_started = False

        async def recording_send(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
            await send(message)

        group = endpoint_group(scope["path"])
        try:
            await self.app(scope, receive, recording_send)
        except Exception as exc:  # nothing of it reaches the client; the log has its type and masked message
            status = 500
            log.error(
                "request failed",
                # a database error is described without its parameters (members' data), as the command line does
                extra={"fields": {"endpoint": group, "error": describe_unexpected(exc)}},
            )
            if not response_started:
                error = ApiError(500, "internal", "internal error", "服务器内部错误")
                await error.response(scope["path"])(scope, receive, send)
        finally:
            elapsed = time.perf_counter() - started
            LATENCY.labels(group, scope["method"], str(status)).observe(elapsed)
            log.info(
                "request",
                extra={
                    "fields": {
                        "method": scope["method"],
                        "endpoint": group,
                        "status": status,
                        "ms": round(elapsed * 1000, 1),
                        "client": client_address(scope),
                    }
                },
            )


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response(request.url.path)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    zh = {404: "未找到", 405: "不支持此请求方法"}.get(exc.status_code, "请求无效")
    error = ApiError(exc.status_code, code, str(exc.detail), zh, headers=getattr(exc, "headers", None))
    return error.response(request.url.path)


def create_app(settings: Settings, engine: Engine) -> Starlette:
    settings.require_serve_secrets()  # a hook whose secret is unset must not start (each worker checks too)
    plugins = manager()
    registry = build_registry(plugins)
    app = Starlette(
        routes=[*unsubscribe.routes, *coupons_api.routes, *hooks_sms.routes, *hooks_email.routes, *health.routes],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.plugins = plugins
    app.state.limiter = RateLimiter(engine, settings)
    app.state.message_channels = sorted(
        name for name, channel in registry.channels.items() if getattr(channel, "is_message", False)
    )
    app.add_middleware(BodyLimit, limit=settings.serve.limits.max_body_bytes)
    app.add_middleware(PerAddressLimit, limiter=app.state.limiter)
    app.add_middleware(RequestLog)
    return app
