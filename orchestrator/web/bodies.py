"""Request bodies, bounded: a body larger than ``serve.limits.max_body_bytes`` is refused with 413 before it is
read whole (by its Content-Length, or while it streams in when there is none), and JSON and form bodies are
parsed strictly with a clear 400 when they are not what they claim to be."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.data.records import identifier
from orchestrator.web.errors import ApiError, bad_request

MAX_JSON_DEPTH = 20


def too_large(limit: int) -> ApiError:
    return ApiError(
        413, "body_too_large", f"the request body is larger than {limit} bytes", f"请求内容超过 {limit} 字节"
    )


class BodyLimit:
    """ASGI middleware: a request whose body exceeds ``limit`` bytes gets 413 and is not passed on."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                if not value.isdigit():
                    await bad_request("Content-Length is not a number", "Content-Length 不是数字").response(
                        scope["path"]
                    )(scope, receive, send)
                    return
                if int(value) > self.limit:
                    await too_large(self.limit).response(scope["path"])(scope, receive, send)
                    return
        # no (or a truthful-looking) length: count what actually arrives, and stop reading past the limit
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await too_large(self.limit).response(scope["path"])(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 saying what is wrong with it."""
    try:
        value = json.loads(
            raw.decode("utf-8"), parse_float=Decimal, parse_constant=_no_constant, object_pairs_hook=_no_duplicates
        )
    except UnicodeDecodeError:
        raise bad_request("the body is not UTF-8", "请求内容不是 UTF-8 编码", "malformed_body") from None
    except (json.JSONDecodeError, ValueError) as exc:
        raise bad_request(f"the body is not JSON: {exc}", "请求内容不是合法的 JSON", "malformed_body") from None
    except RecursionError:
        raise bad_request("the body nests too deeply", "请求内容嵌套过深", "malformed_body") from None
    if not isinstance(value, dict):
        raise bad_request("the body must be a JSON object", "请求内容必须是 JSON 对象", "malformed_body")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object, refused when a key repeats: parsers disagree on which value wins, so a signed body could be read
    one way by us and another way by whoever checked it."""
    value: dict[str, Any] = {}
    for key, item in pairs:
        if key in value:
            raise ValueError(f"the key {key!r} appears twice in one object")
        value[key] = item
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def form_fields(raw: bytes) -> dict[str, list[str]]:
    """An ``application/x-www-form-urlencoded`` body (strict: bad percent-encoding or UTF-8 is a 400)."""
    try:
        text = raw.decode("ascii")
        return parse_qs(text, keep_blank_values=True, strict_parsing=bool(text), errors="strict", max_num_fields=100)
    except (UnicodeDecodeError, ValueError):
        raise bad_request("the body is not a valid form", "表单内容无效", "malformed_body") from None


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def checked_identifier(value: str, name: str, limit: int = 64) -> str:
    """An id a caller sends (a coupon code in the path, a delivery key, a Message-ID), held to the rule
    ``import orders`` applies (``records.identifier``: no control, format or bidi characters), else a 422."""
    try:
        return identifier(limit)(value)
    except ValueError as exc:
        raise ApiError(422, "invalid_identifier", f"{name} {exc}", f"{name} 含有控制字符或过长") from None
