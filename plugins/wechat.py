"""The built-in ``wechat`` channel: official-account template messages (模板消息) over the WeChat HTTP API.

The address is the member's ``wechat_openid`` for the official account. There is no marketing consent to check:
following the account is the consent, and a member who unfollowed shows up as error 43004, which suppresses them
on this channel. Configuration (``channels.wechat`` in the config file; the secret only through ``${ENV}``)::

    wechat:
      app_id: wx1234567890abcdef
      app_secret: ${WECHAT_SECRET}
      base_url: https://api.weixin.qq.com    # default; tests point it at a local server
      timeout: 10                            # seconds, for connecting and for every answer

A campaign step names an approved template and fills its fields; every string is a Jinja template rendered per
customer (``url`` and ``miniprogram.pagepath`` too)::

    message:
      wechat:
        template_id: ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY
        url: "https://shop.example.com/coupons?c={{ offer.code }}"      # optional: where a tap leads
        miniprogram: {appid: wxminiapp123, pagepath: "pages/coupon?code={{ offer.code }}"}   # optional
        data:
          first: "{{ customer.name }}，送您一张优惠券"
          keyword1: "{{ offer.value|money }}"
          remark: {value: "点击查看", color: "#173177"}

Render produces ``parts["body"]``: the JSON body of ``POST /cgi-bin/message/template/send`` without ``touser``,
which is set from the contact at send time (with ``client_msg_id`` derived from the delivery's idempotency key,
so WeChat drops a retried duplicate within its dedup window).

Access token: fetched with ``GET /cgi-bin/token?grant_type=client_credential`` and used until five minutes before
it expires. Fetching a token invalidates the account's previous one, so every process sending through one database
shares one token per app_id, stored with its expiry in the database (``Channel.shared_values``): a process reuses
the stored token, and only when it is missing or about to expire does one process fetch a new one, with the row
locked, while the others wait and then reuse it. When the API says the token is invalid or expired (40001, 40014,
42001) the channel takes a newer token from the database or, if there is none, fetches one, and retries that
message once. A failed token fetch makes the message transient with WeChat's errmsg, and the rest of that batch
transient without fetching again. A channel built without a database (a test) keeps its token to itself.

Results: errcode 0 is sent with ``msgid`` as the provider id; -1 (system busy), 45009 (API frequency limit) and
45047 are transient; 43004 (not following) and 43101 (the member refused messages) are permanent and suppress
the member (``unsubscribed``); 40003 (invalid openid) is permanent and suppresses the address
(``do_not_contact``); any other errcode (e.g. 40037 invalid template id, 47003 template data invalid) is
permanent with ``errcode N: errmsg``; HTTP 5xx, 429 and timeouts are transient.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator.api import (
    Channel,
    CompiledMessage,
    HttpUrl,
    KeptAliveClient,
    MessageOptions,
    OutgoingMessage,
    RenderedMessage,
    SendResult,
    TemplateLoader,
    hookimpl,
    http_result,
    load_channel_config,
    outbox,
    utcnow,
)

DEFAULT_BASE_URL = "https://api.weixin.qq.com"
TOKEN_PATH = "/cgi-bin/token"
SEND_PATH = "/cgi-bin/message/template/send"
TOKEN_MARGIN = 300  # seconds before expiry at which a cached token is no longer used
TOKEN_ERRORS = frozenset({40001, 40014, 42001})  # invalid credential / invalid token / token expired
TRANSIENT_ERRORS = frozenset({-1, 45009, 45047})  # system busy, API frequency limit, send-count limit
UNSUBSCRIBED_ERRORS = frozenset({43004, 43101})  # not following; the member refused messages
INVALID_OPENID = 40003
MAX_PROVIDER_ID = 256
MAX_REASON = 200
OPENID = re.compile(r"^[A-Za-z0-9_-]{6,64}$")
CONFIG_HINT = "wechat: {app_id: wx…, app_secret: ${WECHAT_SECRET}, base_url: https://api.weixin.qq.com, timeout: 10}"


class WeChatConfig(BaseModel):
    """``channels.wechat``."""

    model_config = ConfigDict(extra="forbid")

    app_id: str | None = Field(default=None, min_length=1)  # none: messages go to the file outbox
    app_secret: str | None = Field(default=None, min_length=1)
    outbox: str = "outbox/wechat"
    base_url: HttpUrl = DEFAULT_BASE_URL
    timeout: float = Field(default=10, gt=0)

    @field_validator("app_secret")
    @classmethod
    def _secret_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("the secret is empty (is the environment variable set?)")
        return value

    @model_validator(mode="after")
    def _account_complete(self) -> WeChatConfig:
        if bool(self.app_id) != bool(self.app_secret):
            raise ValueError("give both app_id and app_secret (or neither, to write messages to the outbox)")
        return self

    @field_validator("base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")


def load_config(raw: Any, settings: Any) -> WeChatConfig:
    return load_channel_config(WeChatConfig, raw, settings, ("channels", "wechat"), CONFIG_HINT)


class DataItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: str
    color: str | None = Field(default=None, pattern=r"^#[0-9A-Fa-f]{6}$")


class MiniProgram(BaseModel):
    model_config = ConfigDict(extra="forbid")

    appid: str = Field(min_length=1)
    pagepath: str = ""


class WeChatOptions(MessageOptions):
    """``message: {wechat: {...}}``: the template id, its data fields, where a tap leads."""

    model_config = ConfigDict(extra="forbid")

    template_id: str = Field(min_length=1)
    url: str | None = None
    data: dict[str, str | DataItem] = Field(min_length=1)
    miniprogram: MiniProgram | None = None

    @model_validator(mode="after")
    def _no_text(self) -> WeChatOptions:
        if self.template or self.text:
            raise ValueError("a WeChat template message takes `template_id` and `data:` fields, not template/text")
        return self


class _TokenError(Exception):
    pass


class WeChatChannel(Channel):
    name = "wechat"
    contact_field = "wechat_openid"
    consent = None  # following the account is the consent; unfollowing comes back as 43004
    facts_through_templates = True  # render reads facts only through its templates
    options_model = WeChatOptions

    def __init__(self, config: Mapping[str, Any], settings: Any):
        super().__init__(config, settings)
        self.cfg = load_config(config, settings)
        self.idempotent_by_key = not self.cfg.app_id  # the outbox file is named by key; the API does not dedupe
        self._http = KeptAliveClient(self.cfg.timeout)
        self._token: str | None = None
        self._token_valid_until = 0.0  # time.monotonic(): immune to wall-clock jumps

    def validate_contact(self, value: str) -> str | None:
        value = str(value).strip()
        return value if OPENID.match(value) else None

    def compile(self, options: MessageOptions, templates: TemplateLoader) -> CompiledMessage:
        opts = options if isinstance(options, WeChatOptions) else WeChatOptions.model_validate(options)
        compiled: dict[str, Any] = {}
        for key, item in opts.data.items():
            text = item if isinstance(item, str) else item.value
            compiled[f"data.{key}"] = templates.from_string(text, label=f"wechat data.{key}")
        if opts.url:
            compiled["url"] = templates.from_string(opts.url, label="wechat url")
        if opts.miniprogram and opts.miniprogram.pagepath:
            compiled["pagepath"] = templates.from_string(opts.miniprogram.pagepath, label="wechat miniprogram.pagepath")
        return CompiledMessage(channel=self.name, options=opts, templates=compiled)

    def render(self, compiled: CompiledMessage, context: Mapping[str, Any]) -> RenderedMessage:
        opts = compiled.options
        assert isinstance(opts, WeChatOptions)
        data: dict[str, dict[str, str]] = {}
        for key, item in opts.data.items():
            field = {"value": compiled.templates[f"data.{key}"].render(context)}
            if isinstance(item, DataItem) and item.color:
                field["color"] = item.color
            data[key] = field
        body: dict[str, Any] = {"template_id": opts.template_id}
        if "url" in compiled.templates and (url := compiled.templates["url"].render(context).strip()):
            body["url"] = url
        if opts.miniprogram:
            pagepath = (
                compiled.templates["pagepath"].render(context).strip() if "pagepath" in compiled.templates else ""
            )
            body["miniprogram"] = {"appid": opts.miniprogram.appid, **({"pagepath": pagepath} if pagepath else {})}
        body["data"] = data
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        return RenderedMessage(
            channel=self.name,
            parts={"body": text},
            measures={"data_chars": sum(len(field["value"]) for field in data.values())},
        )

    def send(self, messages: Sequence[OutgoingMessage]) -> Iterator[SendResult]:
        if not self.cfg.app_id:  # no account configured: the request bodies go to the file outbox
            folder = self.settings.resolve_path(self.cfg.outbox)
            for message in messages:
                try:
                    body = build_body(message)
                except (KeyError, ValueError, TypeError) as exc:
                    yield SendResult.permanent(f"cannot build the request body: {exc}")
                else:
                    yield outbox.deliver(folder, message, ".json", body + b"\n")
            return
        token_failure: str | None = None
        for message in messages:
            try:
                body = build_body(message)
            except (KeyError, ValueError, TypeError) as exc:
                yield SendResult.permanent(f"cannot build the request body: {exc}")
                continue
            if token_failure is not None:  # one failed fetch per batch: do not hammer the token API
                yield SendResult.transient(token_failure)
                continue
            try:
                yield self._deliver(body)
            except _TokenError as exc:
                token_failure = self._scrub(str(exc))
                yield SendResult.transient(token_failure)

    def close(self) -> None:
        self._http.close()

    @property
    def client(self) -> httpx.Client:
        return self._http.client

    # --- the access token -------------------------------------------------------------------------------

    def access_token(self, *, refused: str | None = None) -> str:
        """A token to use: the one in hand, else the shared one, else a new one; ``refused`` names a token the API
        turned down, which is never returned again. ``_TokenError`` (with WeChat's errmsg) when none can be had."""
        if refused is None and self._token and time.monotonic() < self._token_valid_until:
            return self._token
        self._token = None
        if self.shared_values is None:
            token, expires_at = self._fetch_token()
        else:
            shared = self.shared_values.get_or_refresh(
                f"wechat.access_token:{self.cfg.app_id}",
                self._fetch_token,
                margin=timedelta(seconds=TOKEN_MARGIN),
                refused=refused,
            )
            token, expires_at = shared.value, shared.expires_at
        left = (expires_at - utcnow()).total_seconds() if expires_at else 0.0
        self._token = token
        self._token_valid_until = time.monotonic() + left - TOKEN_MARGIN
        return token

    def _fetch_token(self) -> tuple[str, datetime]:
        """A new token from ``/cgi-bin/token`` and when it expires."""
        params = {"grant_type": "client_credential", "appid": self.cfg.app_id, "secret": self.cfg.app_secret}
        try:
            response = self.client.get(f"{self.cfg.base_url}{TOKEN_PATH}", params=params)
        except httpx.HTTPError as exc:
            raise _TokenError(f"access token: {_describe(exc)}") from None
        if response.status_code != 200:
            raise _TokenError(f"access token: HTTP {response.status_code}: {_reason(response)}")
        answer = _json(response)
        token = answer.get("access_token") if answer else None
        if not isinstance(token, str) or not token:
            if answer and answer.get("errcode"):
                raise _TokenError(f"access token: errcode {answer.get('errcode')}: {answer.get('errmsg', '')}")
            raise _TokenError(f"access token: unexpected answer: {_reason(response)}")
        try:
            expires_in = float(answer.get("expires_in", 7200))
        except (TypeError, ValueError):
            expires_in = 7200.0
        return token, utcnow() + timedelta(seconds=expires_in)

    def _scrub(self, text: str) -> str:
        """Secrets never reach an error message (errors are stored in the ledger and printed)."""
        for secret in (self.cfg.app_secret, self._token):
            if secret:
                text = text.replace(secret, "***")
        return text

    # --- one message ----------------------------------------------------------------------------------------

    def _deliver(self, body: bytes) -> SendResult:
        token = self.access_token()
        result, errcode = self._post(token, body)
        if errcode in TOKEN_ERRORS:  # revoked or expired early: a newer shared token or a new one, once more
            result, errcode = self._post(self.access_token(refused=token), body)
            if errcode in TOKEN_ERRORS:
                self._token = None
                return SendResult.transient(f"access token refused twice: {result.error}")
        return result

    def _post(self, token: str, body: bytes) -> tuple[SendResult, int | None]:
        """The message's result and WeChat's errcode (None when there was no readable answer)."""
        try:
            response = self.client.post(
                f"{self.cfg.base_url}{SEND_PATH}",
                params={"access_token": token},
                content=body,
                headers={"Content-Type": "application/json; charset=utf-8"},
            )
        except httpx.TimeoutException as exc:
            return SendResult.transient(f"timed out after {self.cfg.timeout:g}s ({type(exc).__name__})"), None
        except httpx.HTTPError as exc:
            return SendResult.transient(self._scrub(_describe(exc))), None
        if response.status_code != 200:
            return http_result(response.status_code, _reason(response)), None
        answer = _json(response)
        if answer is None:  # the message may or may not be queued; a retry carries the same client_msg_id
            return SendResult.transient(f"unreadable answer: {_reason(response)}"), None
        try:
            errcode = int(answer.get("errcode", 0))
        except (TypeError, ValueError):
            return SendResult.transient(f"unreadable answer: {_reason(response)}"), None
        return classify(errcode, str(answer.get("errmsg", "")), answer.get("msgid")), errcode


def classify(errcode: int, errmsg: str, msgid: Any = None) -> SendResult:
    """WeChat's errcode for one template message as a result."""
    if errcode == 0:
        return SendResult.sent(str(msgid)[:MAX_PROVIDER_ID] if msgid is not None else None)
    error = f"errcode {errcode}: {errmsg}".strip()
    if errcode in TRANSIENT_ERRORS or errcode in TOKEN_ERRORS:
        return SendResult.transient(error)
    if errcode in UNSUBSCRIBED_ERRORS:
        return SendResult.permanent(error, suppress="unsubscribed")
    if errcode == INVALID_OPENID:
        return SendResult.permanent(error, suppress="do_not_contact")
    return SendResult.permanent(error)


def build_body(message: OutgoingMessage) -> bytes:
    """The stored body with the addressee (and a dedup id stable across retries) added; UTF-8, not escaped."""
    stored = json.loads(message.message.parts["body"])
    if not isinstance(stored, dict):
        raise ValueError("the stored body is not a JSON object")
    body = {"touser": message.contact, **stored}
    if message.idempotency_key:
        body["client_msg_id"] = hashlib.sha256(message.idempotency_key.encode("utf-8")).hexdigest()[:32]
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _json(response: httpx.Response) -> dict[str, Any] | None:
    try:
        answer = json.loads(response.content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return answer if isinstance(answer, dict) else None


def _reason(response: httpx.Response) -> str:
    return " ".join(response.text[:MAX_REASON].split()) or response.reason_phrase


def _describe(exc: BaseException) -> str:
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


@hookimpl
def register_channels() -> list[type[Channel]]:
    return [WeChatChannel]
