"""Answers to bad requests: a status, a stable machine-readable ``error`` code and a message in English and Chinese.

Raised anywhere inside an endpoint; ``app`` turns it into JSON (or plain text for the unsubscribe pages). An
unexpected exception becomes a 500 with no detail: a traceback never reaches a client, it goes to the log.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, PlainTextResponse, Response

#: the unsubscribe page: a member reads its errors in a browser, so they are plain text there, not JSON
PAGE_PREFIX = "/u/"


class ApiError(Exception):
    def __init__(self, status: int, code: str, en: str, zh: str, *, headers: dict[str, str] | None = None):
        super().__init__(en)
        self.status = status
        self.code = code
        self.en = en
        self.zh = zh
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": {"en": self.en, "zh": self.zh}}

    def response(self, path: str = "") -> Response:
        """JSON, or plain text in both languages when ``path`` is the unsubscribe page's."""
        if is_page(path):
            return plain_text(self.status, self.zh, self.en, self.headers)
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def is_page(path: str) -> bool:
    return path.startswith(PAGE_PREFIX)


def plain_text(status: int, zh: str, en: str, headers: dict[str, str] | None = None) -> PlainTextResponse:
    return PlainTextResponse(
        f"{zh}\n{en}\n", status_code=status, headers={**(headers or {}), "X-Content-Type-Options": "nosniff"}
    )


def bad_request(en: str, zh: str, code: str = "bad_request") -> ApiError:
    return ApiError(400, code, en, zh)


def time_out_of_range(field: str, problem: Exception) -> ApiError:
    """A well-formed time outside the years the service accepts (``timeutil.check_reported_time``)."""
    return ApiError(422, "time_out_of_range", f"{field}: {problem}", f"{field} 超出可接受的时间范围（2000–2099 年）")
