"""``/u/{token}``: the unsubscribe page and its one-click POST (RFC 8058).

- ``GET`` shows a short page, in Chinese and English, asking to confirm, with a second form to choose channels.
  It changes nothing: mail scanners follow links, and an unsubscribe must be the member's act.
- ``POST`` with the body ``List-Unsubscribe=One-Click`` (a mailbox provider's one-click, form-encoded or multipart)
  applies it at once and answers 200 with a short text, no redirect.
- ``POST`` from the page applies it to the token's channel, or to the channels ticked (``all``: every channel),
  and shows the confirmation.

A token that is forged, truncated, tampered with or expired gets 400 with a plain message and nothing changes;
the same token again is harmless (a suppression is stored once). The token is decided by
``suppressions.genuine_token``, exactly as ``suppress unsubscribe`` decides it. The page is a Jinja2 template
(``serve.unsubscribe_template`` replaces the built-in one), autoescaped, with no script and a
Content-Security-Policy that lets it load nothing.
"""

from __future__ import annotations

import re
from email.parser import BytesParser
from email.policy import HTTP
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, select_autoescape
from jinja2.sandbox import SandboxedEnvironment
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from orchestrator import suppressions
from orchestrator.config import Settings
from orchestrator.errors import InputError
from orchestrator.web.bodies import content_type, form_fields
from orchestrator.web.errors import ApiError

BUILT_IN = Path(__file__).parent / "templates" / "unsubscribe.html"
PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
LABELS = {
    "email": ("邮件", "e-mail"),
    "sms": ("短信", "text messages"),
    "wechat": ("微信消息", "WeChat messages"),
    "call_list": ("电话", "phone calls"),
    "webhook": ("推送", "notifications"),
}
ALL = ("全部渠道", "all channels")
_TOKEN = re.compile(r"[A-Za-z0-9_.-]{1,512}")


def _label(channel: str | None) -> tuple[str, str]:
    return ALL if channel is None else LABELS.get(channel, (channel, channel))


@lru_cache(maxsize=4)
def _template(path: str):
    folder = Path(path).parent
    env = SandboxedEnvironment(loader=FileSystemLoader(str(folder)), autoescape=select_autoescape(default=True))
    return env.get_template(Path(path).name)


def _page(settings: Settings, context: dict[str, Any]) -> HTMLResponse:
    configured = settings.serve.unsubscribe_template
    path = str(settings.resolve_path(configured)) if configured else str(BUILT_IN)
    html = _template(path).render(**context)
    return HTMLResponse(html, headers=_headers())


def _headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": PAGE_POLICY,
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    }


def _bad_token(message: str) -> Response:
    text = f"此退订链接无效。\nThis unsubscribe link cannot be used: {message}\n"
    return PlainTextResponse(text, status_code=400, headers=_headers())


def _token(request: Request, settings: Settings):
    text = request.path_params["token"]
    if not _TOKEN.fullmatch(text):
        raise InputError("the unsubscribe token is not genuine (forged, truncated or signed with another key)")
    return suppressions.genuine_token(settings, text)


def _message_channels(request: Request) -> list[str]:
    return request.app.state.message_channels


async def page(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    try:
        token = _token(request, settings)
        channel = suppressions.token_channel(token)
    except InputError as exc:
        return _bad_token(exc.message)
    zh, en = _label(channel)
    options = [
        {"name": name, "zh": _label(name)[0], "en": _label(name)[1], "checked": name == channel}
        for name in _message_channels(request)
    ]
    context = {"state": "confirm", "channel_zh": zh, "channel_en": en, "action": request.url.path, "options": options}
    return _page(settings, context)


def _is_one_click(request: Request, raw: bytes) -> bool:
    kind = content_type(request)
    if kind == "multipart/form-data":
        head = f"Content-Type: {request.headers.get('content-type')}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(head + raw)
        if not message.is_multipart():
            return False
        for part in message.iter_parts():
            if part.get_param("name", header="content-disposition") == "List-Unsubscribe":
                return (part.get_payload(decode=True) or b"").strip() == b"One-Click"
        return False
    return form_fields(raw).get("List-Unsubscribe") == ["One-Click"]


def _chosen(raw: bytes, request: Request, token_channel: str | None) -> list[str | None]:
    """The channels a page POST names: the token's channel when none is ticked; ``all`` for every channel."""
    picked = form_fields(raw).get("channel", []) if content_type(request) != "multipart/form-data" else []
    if not picked:
        return [token_channel]
    if "all" in picked:
        return [None]
    known = set(_message_channels(request))
    unknown = [p for p in picked if p not in known]
    if unknown:
        raise ApiError(400, "unknown_channel", f"unknown channel {unknown[0]!r}", "未知的渠道")
    return list(dict.fromkeys(picked))


def _apply(request: Request, settings: Settings, channels: list[str | None], token) -> int:
    added = 0
    with request.app.state.engine.begin() as conn:
        target = suppressions.token_target(conn, token)
        for channel in channels:
            result = suppressions.add(
                conn, target, channel=channel, reason="unsubscribed", source=suppressions.UNSUBSCRIBE_SOURCE
            )
            added += result.added
    return added


async def apply(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    raw = await request.body()
    try:
        token = _token(request, settings)
        channel = suppressions.token_channel(token)
        one_click = _is_one_click(request, raw)
        channels = [channel] if one_click else _chosen(raw, request, channel)
        await run_in_threadpool(_apply, request, settings, channels, token)
    except InputError as exc:
        return _bad_token(exc.message)
    if one_click:
        return PlainTextResponse("已退订。Unsubscribed.\n", headers=_headers())
    labels = [_label(c) for c in channels]
    context = {
        "state": "done",
        "channels_done_zh": "、".join(zh for zh, _ in labels),
        "channels_done_en": ", ".join(en for _, en in labels),
    }
    return _page(settings, context)


routes = [Route("/u/{token}", page, methods=["GET"]), Route("/u/{token}", apply, methods=["POST"])]
