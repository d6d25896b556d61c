"""The wechat channel against a local server speaking the official-account API (tests.httpserver; no mocks).

``WeChatServer`` issues access tokens at ``/cgi-bin/token`` (counting them), accepts template messages at
``/cgi-bin/message/template/send`` only with a valid token, can expire a token mid-run (answering 42001 for it
from then on), invalidates the previous token whenever it issues a new one (40001 for it, as WeChat does), and
answers each openid as the test configures. Covered: the body as configured (Chinese text intact in UTF-8 JSON),
token caching across messages and batches and its five-minute margin, exactly one refetch when a token expires
mid-run, one token shared through the database by channels in several processes, every errcode mapping, HTTP
errors and timeouts, token fetch failures, configuration and options validation.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from orchestrator_plugins.wechat import WeChatChannel, WeChatOptions
from pydantic import ValidationError

from orchestrator.api import OutgoingMessage, SendStatus
from orchestrator.config import Settings
from orchestrator.errors import InputError
from orchestrator.rendering import TemplateLoader, synthetic_context
from orchestrator.service import Orchestrator
from tests.httpserver import Request, Response, serve

APP_ID = "wx1234567890abcdef"
APP_SECRET = "s3cr3t-app-secret-value"
OPTIONS = {
    "template_id": "TPL-coupon-1",
    "url": "https://shop.example.com/coupons?code={{ offer.code }}",
    "miniprogram": {"appid": "wxmini", "pagepath": "pages/coupon?code={{ offer.code }}"},
    "data": {
        "first": "{{ customer.name }}，送您一张优惠券",
        "keyword1": "{{ offer.value|money }}",
        "remark": {"value": "满{{ offer.min_spend|money(0) }}可用，点击查看", "color": "#173177"},
    },
}


class WeChatServer:
    """The official-account API in miniature. ``answers`` maps an openid to an errcode (with its errmsg) or to
    ``("http", status)`` or ``"stall"``; ``expire_after`` expires the current token after that many delivered
    messages."""

    def __init__(
        self,
        expires_in: int = 7200,
        token_answer: dict | None = None,
        expire_after: int | None = None,
        usable_tokens: bool = True,
        token_delay: float = 0,
    ):
        self.expires_in = expires_in
        self.token_delay = token_delay  # seconds before a token is issued: lets concurrent fetches overlap
        self.usable_tokens = usable_tokens  # False: tokens are issued that the send endpoint then refuses
        self.token_answer = token_answer
        self.expire_after = expire_after
        self.answers: dict[str, Any] = {}
        self.token_requests: list[Request] = []
        self.send_requests: list[Request] = []
        self.delivered: list[dict] = []
        self.valid: set[str] = set()
        self.expired: set[str] = set()
        self.stall: Any = None
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    def __call__(self, request: Request) -> Response:
        if request.body and self.answers.get(request.json().get("touser")) == "stall":
            self.stall(5)  # outside the lock: other requests are answered meanwhile
            return Response.json({"errcode": -1, "errmsg": "too late"})
        if request.path == "/cgi-bin/token" and self.token_delay:
            self.stall(self.token_delay)
        with self._lock:
            if request.path == "/cgi-bin/token":
                return self._token(request)
            if request.path == "/cgi-bin/message/template/send" and request.method == "POST":
                return self._send(request)
            return Response(404, "not found")

    def _token(self, request: Request) -> Response:
        self.token_requests.append(request)
        if self.token_answer is not None:
            return Response.json(self.token_answer)
        ok = request.query == {"grant_type": "client_credential", "appid": APP_ID, "secret": APP_SECRET}
        if not ok:
            return Response.json({"errcode": 40125, "errmsg": "invalid appsecret"})
        token = f"TOKEN-{len(self.token_requests)}"
        self.valid.clear()  # as WeChat does: a new token invalidates the account's previous one
        if self.usable_tokens:
            self.valid.add(token)
        return Response.json({"access_token": token, "expires_in": self.expires_in})

    def _send(self, request: Request) -> Response:
        self.send_requests.append(request)
        token = request.query.get("access_token")
        if token in self.expired:
            return Response.json({"errcode": 42001, "errmsg": "access_token expired"})
        if token not in self.valid:
            return Response.json({"errcode": 40001, "errmsg": "invalid credential, access_token is invalid"})
        body = request.json()
        answer = self.answers.get(body["touser"])
        if isinstance(answer, tuple):
            return Response(answer[1], "upstream error")
        if answer is not None:
            return Response.json({"errcode": answer, "errmsg": ERRMSG.get(answer, "error")})
        self.delivered.append(body)
        if self.expire_after is not None and len(self.delivered) == self.expire_after:
            self.valid.discard(token)
            self.expired.add(token)
        return Response.json({"errcode": 0, "errmsg": "ok", "msgid": 200000 + next(self._numbers)})


ERRMSG = {
    -1: "system error",
    40003: "invalid openid",
    40037: "invalid template_id",
    43004: "require subscribe",
    43101: "user refuse to accept the msg",
    45009: "reach max api daily quota limit",
    45047: "out of response count limit",
    47003: "argument invalid! data.keyword1.value invalid",
}


@pytest.fixture
def templates(tmp_path: Path) -> TemplateLoader:
    return TemplateLoader([tmp_path]).for_campaign(tmp_path / "campaigns" / "winback.yaml")


def make_settings(tmp_path: Path, **wechat) -> Settings:
    return Settings(base_dir=str(tmp_path), source=str(tmp_path / "config.yaml"), channels={"wechat": wechat})


def channel_for(tmp_path: Path, base_url: str, **config) -> WeChatChannel:
    settings = make_settings(tmp_path, app_id=APP_ID, app_secret=APP_SECRET, base_url=base_url, **config)
    return WeChatChannel(settings.channels["wechat"], settings)


def outgoing(channel: WeChatChannel, templates: TemplateLoader, openid: str, options=OPTIONS) -> OutgoingMessage:
    compiled = channel.compile(WeChatOptions.model_validate(options), templates)
    rendered = channel.render(compiled, synthetic_context(True, campaign_name="winback"))
    return OutgoingMessage(
        delivery_id=1,
        customer_id=f"C-{openid}",
        contact=openid,
        message=rendered,
        idempotency_key=f"run-1:{openid}:wechat",
        run_id=1,
        campaign="winback",
    )


def send(channel: WeChatChannel, templates: TemplateLoader, *openids: str):
    return list(channel.send([outgoing(channel, templates, openid) for openid in openids]))


def test_template_message_arrives_as_configured(tmp_path, templates):
    server_state = WeChatServer()
    with serve(server_state) as server:
        channel = channel_for(tmp_path, server.url + "/")
        results = send(channel, templates, "oUser000001", "oUser000002")
        channel.close()
    assert [r.status for r in results] == [SendStatus.SENT, SendStatus.SENT]
    assert [r.provider_id for r in results] == ["200001", "200002"]
    [token_request] = server_state.token_requests  # one token for the batch
    assert token_request.method == "GET"
    assert token_request.query == {"grant_type": "client_credential", "appid": APP_ID, "secret": APP_SECRET}
    first = server_state.send_requests[0]
    assert first.query == {"access_token": "TOKEN-1"}
    assert first.headers["content-type"] == "application/json; charset=utf-8"
    assert "张伟，送您一张优惠券".encode() in first.body and b"\\u" not in first.body  # UTF-8, not escaped
    body = first.json()
    client_msg_id = body.pop("client_msg_id")
    assert body == {
        "touser": "oUser000001",
        "template_id": "TPL-coupon-1",
        "url": "https://shop.example.com/coupons?code=SYN7-Q2KX-8ZD4",
        "miniprogram": {"appid": "wxmini", "pagepath": "pages/coupon?code=SYN7-Q2KX-8ZD4"},
        "data": {
            "first": {"value": "张伟，送您一张优惠券"},
            "keyword1": {"value": "¥20.00"},
            "remark": {"value": "满¥100可用，点击查看", "color": "#173177"},
        },
    }
    assert len(client_msg_id) == 32 and client_msg_id != server_state.send_requests[1].json()["client_msg_id"]
    assert len({r.peer for r in server_state.send_requests + server_state.token_requests}) == 1  # one connection


def test_rendered_parts_hold_the_body_without_the_addressee(tmp_path, templates):
    channel = channel_for(tmp_path, "http://127.0.0.1:9")
    options = {"template_id": "T", "data": {"k": "{{ customer.name }}"}}
    message = outgoing(channel, templates, "oUser000001", options)
    assert json.loads(message.message.parts["body"]) == {"template_id": "T", "data": {"k": {"value": "张伟"}}}


def test_token_is_cached_across_batches_until_five_minutes_before_expiry(tmp_path, templates):
    cached = WeChatServer(expires_in=7200)
    with serve(cached) as server:
        channel = channel_for(tmp_path, server.url)
        results = send(channel, templates, "oUser000001") + send(channel, templates, "oUser000002", "oUser000003")
        channel.close()
    assert all(r.status is SendStatus.SENT for r in results)
    assert len(cached.token_requests) == 1

    short = WeChatServer(expires_in=300)  # within the margin from the start: never reused
    with serve(short) as server:
        channel = channel_for(tmp_path, server.url)
        results = send(channel, templates, "oUser000001", "oUser000002", "oUser000003")
        channel.close()
    assert all(r.status is SendStatus.SENT for r in results)
    assert len(short.token_requests) == 3
    assert [r.query["access_token"] for r in short.send_requests] == ["TOKEN-1", "TOKEN-2", "TOKEN-3"]


def test_a_token_expired_mid_run_is_refetched_once_and_the_message_sent_once(tmp_path, templates):
    state = WeChatServer(expire_after=1)  # the server expires TOKEN-1 right after the first message
    with serve(state) as server:
        channel = channel_for(tmp_path, server.url)
        results = send(channel, templates, "oUser000001", "oUser000002", "oUser000003")
        channel.close()
    assert [r.status for r in results] == [SendStatus.SENT] * 3
    assert len(state.token_requests) == 2
    assert [r.query["access_token"] for r in state.send_requests] == ["TOKEN-1", "TOKEN-1", "TOKEN-2", "TOKEN-2"]
    assert [body["touser"] for body in state.delivered] == ["oUser000001", "oUser000002", "oUser000003"]


def test_a_token_refused_again_after_refetch_is_transient_without_a_loop(tmp_path, templates):
    state = WeChatServer(usable_tokens=False)
    with serve(state) as server:
        channel = channel_for(tmp_path, server.url)
        [result] = send(channel, templates, "oUser000001")
        channel.close()
    assert result.status is SendStatus.TRANSIENT
    assert "access token refused twice" in result.error and "40001" in result.error
    assert len(state.token_requests) == 2 and len(state.send_requests) == 2


ERROR_CASES = {
    "oBusy000001": (-1, SendStatus.TRANSIENT, None),
    "oQuota00001": (45009, SendStatus.TRANSIENT, None),
    "oCount00001": (45047, SendStatus.TRANSIENT, None),
    "oUnfollow01": (43004, SendStatus.PERMANENT, "unsubscribed"),
    "oRefused001": (43101, SendStatus.PERMANENT, "unsubscribed"),
    "oBadOpenid1": (40003, SendStatus.PERMANENT, "do_not_contact"),
    "oBadTpl0001": (40037, SendStatus.PERMANENT, None),
    "oBadData001": (47003, SendStatus.PERMANENT, None),
    "oOther00001": (48001, SendStatus.PERMANENT, None),
    "oHttp502001": (("http", 502), SendStatus.TRANSIENT, None),
    "oHttp429001": (("http", 429), SendStatus.TRANSIENT, None),
    "oHttp403001": (("http", 403), SendStatus.PERMANENT, None),
}


def test_each_errcode_maps_to_its_result(tmp_path, templates):
    state = WeChatServer()
    state.answers = {openid: answer for openid, (answer, _, _) in ERROR_CASES.items()}
    openids = [*ERROR_CASES, "oFine000001"]
    with serve(state) as server:
        channel = channel_for(tmp_path, server.url)
        results = dict(zip(openids, send(channel, templates, *openids), strict=True))
        channel.close()
    for openid, (answer, status, suppress) in ERROR_CASES.items():
        result = results[openid]
        assert (result.status, result.suppress) == (status, suppress), (openid, result)
        if isinstance(answer, int):
            assert result.error == f"errcode {answer}: {ERRMSG.get(answer, 'error')}"
        else:
            assert result.error == f"HTTP {answer[1]}: upstream error"
    assert results["oFine000001"].status is SendStatus.SENT
    assert len(state.token_requests) == 1 and len(state.send_requests) == len(openids)  # no retries


def test_a_timeout_is_transient_and_the_batch_goes_on(tmp_path, templates):
    state = WeChatServer()
    state.answers = {"oSlow000001": "stall"}
    with serve(state) as server:
        state.stall = server.stall
        channel = channel_for(tmp_path, server.url, timeout=0.3)
        results = send(channel, templates, "oSlow000001", "oFine000001")
        channel.close()
    assert results[0].status is SendStatus.TRANSIENT and "timed out" in results[0].error
    assert results[1].status is SendStatus.SENT


def test_a_failed_token_fetch_makes_the_batch_transient_with_the_errmsg(tmp_path, templates):
    state = WeChatServer(token_answer={"errcode": 40164, "errmsg": "invalid ip 1.2.3.4, not in whitelist"})
    with serve(state) as server:
        channel = channel_for(tmp_path, server.url)
        results = send(channel, templates, "oUser000001", "oUser000002")
        later = send(channel, templates, "oUser000003")  # a later batch tries again
        channel.close()
    assert [r.status for r in results + later] == [SendStatus.TRANSIENT] * 3
    assert results[0].error == "access token: errcode 40164: invalid ip 1.2.3.4, not in whitelist"
    assert results[1].error == results[0].error
    assert len(state.token_requests) == 2 and not state.send_requests
    assert all(APP_SECRET not in r.error for r in results)

    with serve(WeChatServer()) as gone:
        url = gone.url
    channel = channel_for(tmp_path, url, timeout=2)  # nothing listens there any more
    [refused] = send(channel, templates, "oUser000001")
    channel.close()
    assert refused.status is SendStatus.TRANSIENT and refused.error.startswith("access token: ConnectError")


def test_configuration_is_validated_with_the_file_and_a_hint(tmp_path):
    cases = [
        ({"app_id": APP_ID}, "give both app_id and app_secret"),
        ({"app_id": APP_ID, "app_secret": " "}, "secret is empty"),
        ({"app_id": APP_ID, "app_secret": "x", "base_url": "api.weixin.qq.com"}, "http:// or https://"),
        ({"app_id": APP_ID, "app_secret": "x", "token_url": "x"}, "token_url: Extra inputs"),
    ]
    for config, expected in cases:
        settings = make_settings(tmp_path, **config)
        with pytest.raises(InputError) as caught:
            WeChatChannel(settings.channels["wechat"], settings)
        assert expected in caught.value.message, (config, caught.value.message)
        assert caught.value.file == str(tmp_path / "config.yaml") and "app_secret" in caught.value.hint
    settings = make_settings(tmp_path, app_id=APP_ID, app_secret="x", rate_limit={"per_second": 10}, retry={})
    channel = WeChatChannel(settings.channels["wechat"], settings)
    assert channel.cfg.base_url == "https://api.weixin.qq.com" and channel.cfg.timeout == 10
    assert channel.consent is None and channel.contact_field == "wechat_openid"
    assert channel.contact_of({"wechat_openid": " oUser000001 "}) == "oUser000001"
    assert channel.contact_of({"wechat_openid": "not an openid"}) is None
    assert channel.contact_of({}) is None


def test_message_options_are_validated(tmp_path, templates):
    with pytest.raises(ValidationError, match="template_id"):
        WeChatOptions.model_validate({"data": {"first": "x"}})
    with pytest.raises(ValidationError, match="data"):
        WeChatOptions.model_validate({"template_id": "T"})
    with pytest.raises(ValidationError, match="color"):
        WeChatOptions.model_validate({"template_id": "T", "data": {"k": {"value": "v", "color": "red"}}})
    with pytest.raises(ValidationError, match="not template/text"):
        WeChatOptions.model_validate({"template_id": "T", "data": {"k": "v"}, "text": "hello"})
    channel = channel_for(tmp_path, "http://127.0.0.1:9")
    with pytest.raises(InputError, match=r"wechat data\.first") as caught:
        channel.compile(WeChatOptions.model_validate({"template_id": "T", "data": {"first": "{{ x"}}), templates)
    assert caught.value.file.endswith("winback.yaml")


def test_without_an_account_each_message_is_written_to_the_outbox(tmp_path: Path, templates: TemplateLoader):
    settings = make_settings(tmp_path, outbox="out/wechat")
    channel = WeChatChannel(settings.channels["wechat"], settings)
    message = outgoing(channel, templates, "oUser0001")
    [result] = list(channel.send([message]))
    assert result.status == SendStatus.SENT and result.provider_id.endswith(".json")
    [written] = list((tmp_path / "out" / "wechat").iterdir())
    body = json.loads(written.read_text(encoding="utf-8"))
    assert body["touser"] == "oUser0001" and body["template_id"] == OPTIONS["template_id"]
    assert body["data"] == json.loads(message.message.parts["body"])["data"]


# ---- one token for every process sharing the database ----------------------------------------------------------


def shared_channel(tmp_path: Path, base_url: str, engine) -> WeChatChannel:
    """The channel as a run or ``orchestrator dispatch`` builds it: through the service, with its database."""
    settings = make_settings(tmp_path, app_id=APP_ID, app_secret=APP_SECRET, base_url=base_url)
    channel = Orchestrator(settings, engine).channel("wechat")
    assert isinstance(channel, WeChatChannel)
    return channel


def test_two_channels_sharing_a_database_fetch_one_token(tmp_path, templates, engine):
    state = WeChatServer()
    with serve(state) as server:
        first, second = shared_channel(tmp_path, server.url, engine), shared_channel(tmp_path, server.url, engine)
        results = []
        for channel, openid in ((first, "oUser000001"), (second, "oUser000002"), (first, "oUser000003")):
            results += send(channel, templates, openid)
        results += send(second, templates, "oUser000004", "oUser000005")
        first.close()
        second.close()
    assert [r.status for r in results] == [SendStatus.SENT] * 5
    assert len(state.token_requests) == 1
    assert [r.query["access_token"] for r in state.send_requests] == ["TOKEN-1"] * 5  # nothing refused


def test_a_refused_shared_token_is_replaced_once_for_everyone(tmp_path, templates, engine):
    state = WeChatServer(expire_after=1)  # WeChat expires TOKEN-1 early, after the first message
    with serve(state) as server:
        first, second = shared_channel(tmp_path, server.url, engine), shared_channel(tmp_path, server.url, engine)
        results = send(first, templates, "oUser000001") + send(second, templates, "oUser000002")
        results += send(first, templates, "oUser000003")  # still holds TOKEN-1: refused, takes TOKEN-2 from the db
        first.close()
        second.close()
    assert [r.status for r in results] == [SendStatus.SENT] * 3
    assert len(state.token_requests) == 2
    tokens = [r.query["access_token"] for r in state.send_requests]
    assert tokens == ["TOKEN-1", "TOKEN-1", "TOKEN-2", "TOKEN-1", "TOKEN-2"]


SENDER = """
import sys
from pathlib import Path
from orchestrator.db.engine import create_db_engine
from orchestrator.rendering import TemplateLoader
from tests.test_wechat_channel import outgoing, send, shared_channel

folder, base_url, db_url, *openids = sys.argv[1:]
engine = create_db_engine(db_url)
channel = shared_channel(Path(folder), base_url, engine)
templates = TemplateLoader([Path(folder)]).for_campaign(Path(folder) / "campaigns" / "winback.yaml")
results = send(channel, templates, *openids)
channel.close()
print(" ".join(r.status.value for r in results))
"""


def test_two_dispatch_processes_fetch_one_token(tmp_path, engine, db_url):
    state = WeChatServer(token_delay=0.5)  # a slow token API: both processes ask for a token at the same time
    root = Path(__file__).resolve().parent.parent
    with serve(state) as server:
        state.stall = server.stall
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", SENDER, str(tmp_path), server.url, db_url, *openids],
                cwd=root,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for openids in (("oUser000001", "oUser000002", "oUser000003"), ("oUser000004", "oUser000005"))
        ]
        outputs = [process.communicate(timeout=60) for process in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
        assert set(out.split()) == {"sent"}, (out, err)
    assert len(state.token_requests) == 1
    assert len(state.delivered) == 5 and len(state.send_requests) == 5
