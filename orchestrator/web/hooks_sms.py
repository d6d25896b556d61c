"""``POST /hooks/sms/{provider}``: inbound SMS replies from a gateway (``serve.sms_hooks.<provider>``).

The request is verified first (HMAC of timestamp and body, or a shared secret; see ``signatures``), then its
fields are read by the configured names from a form or JSON body: the sender's number, the text and, optionally,
when it was received. An opt-out keyword ("T", "退订", "STOP", …) suppresses the number on sms through the SMS
plugin's ``handle_inbound_sms`` hook: the same decision and suppression as ``import sms-replies``. The answer is
``{"result": "suppressed" | "unchanged" | "ignored"}``; a gateway that retries a delivered reply changes nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from orchestrator.config import Settings, SmsHookConfig
from orchestrator.errors import InputError
from orchestrator.timeutil import TimeOutOfRange, parse_reported_time, utcnow
from orchestrator.web import metrics
from orchestrator.web.bodies import content_type, form_fields, json_object
from orchestrator.web.errors import ApiError, bad_request, time_out_of_range
from orchestrator.web.signatures import verify_hmac, verify_shared_secret

MAX_TEXT = 1600


def _not_found(provider: str) -> ApiError:
    return ApiError(404, "unknown_provider", f"no SMS hook named {provider!r}", "未配置此短信回调")


def _fields(request: Request, raw: bytes) -> dict[str, Any]:
    if content_type(request) == "application/json":
        return json_object(raw)
    return {name: values[-1] for name, values in form_fields(raw).items()}


def _text_field(fields: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = fields.get(name)
    if value is None or value == "":
        if required:
            raise bad_request(f"the field {name!r} is missing", f"缺少字段 {name}", "missing_field")
        return None
    if not isinstance(value, str | int):
        raise bad_request(f"the field {name!r} must be text", f"字段 {name} 必须是文本", "invalid_field")
    return str(value)


def _decide(request: Request, hook: SmsHookConfig, raw: bytes) -> str:
    settings: Settings = request.app.state.settings
    fields = _fields(request, raw)
    phone = _text_field(fields, hook.phone_field)
    text = _text_field(fields, hook.text_field)
    if len(text) > MAX_TEXT:
        raise bad_request("the text is too long", "短信内容过长", "invalid_field")
    received: datetime = utcnow()
    if hook.received_at_field and (value := _text_field(fields, hook.received_at_field, required=False)):
        try:
            received = parse_reported_time(value, settings.tz)
        except TimeOutOfRange as exc:
            raise time_out_of_range(hook.received_at_field, exc) from None
        except ValueError as exc:
            raise bad_request(f"{hook.received_at_field}: {exc}", "接收时间格式无效", "invalid_field") from None
    pm = request.app.state.plugins
    try:
        with request.app.state.engine.begin() as conn:
            outcome = pm.hook.handle_inbound_sms(
                conn=conn, settings=settings, phone=phone, text=text, received_at=received
            )
    except InputError as exc:
        raise bad_request(exc.message.removeprefix("--phone: "), "手机号码无效", "invalid_phone") from None
    if outcome is None:
        raise ApiError(503, "no_sms_plugin", "no plugin handles inbound SMS", "没有处理短信回复的插件")
    return outcome


async def receive(request: Request) -> JSONResponse:
    settings: Settings = request.app.state.settings
    provider = request.path_params["provider"]
    hook = settings.serve.sms_hooks.get(provider)
    if hook is None:
        raise _not_found(provider)
    raw = await request.body()
    if hook.verify == "hmac":
        verify_hmac(
            hook.secret,
            request.headers.get(hook.timestamp_header),
            request.headers.get(hook.signature_header),
            raw,
            settings.serve.timestamp_tolerance_seconds,
        )
    else:
        verify_shared_secret(hook.secret, request.headers.get(hook.secret_header))
    outcome = await run_in_threadpool(_decide, request, hook, raw)
    metrics.HOOK_EVENTS.labels("sms", outcome).inc()
    return JSONResponse({"result": outcome})


routes = [Route("/hooks/sms/{provider}", receive, methods=["POST"])]
