"""The sms channel's HTTP gateway against a real ThreadingHTTPServer on loopback (no mocks of httpx).

The server records every request (method, path, headers, body) and every connection, and answers from a
function the test gives it, so each test states exactly what the "provider" says and checks what we sent and
how we read the answer.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from orchestrator_plugins.sms import SmsChannel
from orchestrator_plugins.sms.gateway import Answer, GatewayConfig, classify
from sqlalchemy import Engine, select

from orchestrator.api import OutgoingMessage, RenderedMessage, SendStatus
from orchestrator.config import Settings, load_settings
from orchestrator.db.models import Customer, Delivery
from orchestrator.errors import InputError
from tests import dataset
from tests.clitools import Cli
from tests.dataset import AT

TOKEN_ENV = "ORCH_TEST_SMS_TOKEN"


# --- the server ----------------------------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    connection: int

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode()).items()}


Reply = tuple[int, Any]  # status, body (a dict/list is sent as JSON, a str as text)


class Gateway:
    """A recording HTTP/1.1 server (keep-alive) answering with ``respond(request) -> (status, body)``."""

    def __init__(self, respond: Callable[[Request], Reply], delay: float = 0):
        self.respond = respond
        self.delay = delay
        self.requests: list[Request] = []
        self.connections = 0
        self._lock = threading.Lock()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with gateway._lock:
                    gateway.connections += 1
                    self.connection_number = gateway.connections

            def log_message(self, *args) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length),
                    self.connection_number,
                )
                with gateway._lock:
                    gateway.requests.append(request)
                if gateway.delay:
                    time.sleep(gateway.delay)
                status, body = gateway.respond(request)
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout test)
                    self.close_connection = True

            do_POST = do_PUT = do_GET = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/sms"

    @contextmanager
    def running(self) -> Iterator[Gateway]:
        thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
            thread.join(5)


@contextmanager
def gateway(respond: Callable[[Request], Reply], delay: float = 0) -> Iterator[Gateway]:
    with Gateway(respond, delay).running() as server:
        yield server


def ok(request: Request) -> Reply:
    return 200, {"result": {"code": "OK", "message_id": f"msg-{len(request.body)}"}}


# --- the channel ---------------------------------------------------------------------------------------------------


def channel_for(tmp_path: Path, url: str, **gateway_config: Any) -> SmsChannel:
    config = {
        "url": url,
        "headers": {"Authorization": "Bearer secret-token"},
        "fields": {"mobile": "{{ to }}", "content": "{{ text }}", "ref": "{{ idempotency_key }}"},
        "timeout": 2,
        "provider_id_field": "result.message_id",
        "error_field": "result.code",
        **gateway_config,
    }
    settings = Settings(base_dir=str(tmp_path), source=str(tmp_path / "orchestrator.yaml"), channels={})
    return SmsChannel({"gateway": config, "signature": "【某网店】"}, settings)


def message(n: int, text: str = "【某网店】您好回T退订", contact: str = "+8613800138000") -> OutgoingMessage:
    rendered = RenderedMessage("sms", {"text": text}, measures={"sms_segments": 1})
    return OutgoingMessage(
        delivery_id=n,
        customer_id=f"C{n:06d}",
        contact=contact,
        message=rendered,
        idempotency_key=f"run-1:C{n:06d}:sms",
        campaign="winback",
    )


def send(channel: SmsChannel, *messages: OutgoingMessage):
    return list(channel.send(list(messages)))


def test_success_sends_json_fields_auth_and_idempotency_key(tmp_path):
    with gateway(ok) as server:
        channel = channel_for(tmp_path, server.url)
        [result] = send(channel, message(1))
        channel.close()
    assert result.status is SendStatus.SENT
    [request] = server.requests
    assert result.provider_id == f"msg-{len(request.body)}"
    assert request.method == "POST" and request.path == "/v1/sms"
    assert request.headers["authorization"] == "Bearer secret-token"
    assert request.headers["idempotency-key"] == "run-1:C000001:sms"
    assert request.headers["content-type"] == "application/json"
    text = "【某网店】您好回T退订"
    assert request.json() == {"mobile": "+8613800138000", "content": text, "ref": "run-1:C000001:sms"}


def test_form_body_with_templated_fields_and_token_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    config_file = tmp_path / "orchestrator.yaml"
    with gateway(lambda r: (200, {"Code": "OK", "BizId": "biz-9"})) as server:
        config_file.write_text(
            "channels:\n  sms:\n    signature: 【某网店】\n    gateway:\n"
            f"      url: {server.url}\n"
            "      body: form\n"
            "      headers: {Authorization: 'Bearer ${" + TOKEN_ENV + "}'}\n"
            "      fields:\n"
            "        PhoneNumbers: \"{{ to | replace('+86', '') }}\"\n"
            "        Text: '{{ text }}'\n"
            "        Parts: '{{ segments }}'\n"
            "        Who: '{{ customer_id }}/{{ campaign }}'\n"
            "        Version: 2017\n"
            "      success: {json_field: Code, equals: OK}\n"
            "      provider_id_field: BizId\n",
            encoding="utf-8",
        )
        settings = load_settings(str(config_file))
        channel = SmsChannel(settings.channels["sms"], settings)
        [result] = send(channel, message(2, text="a&b=c 好"))
        channel.close()
    assert result.status is SendStatus.SENT and result.provider_id == "biz-9"
    [request] = server.requests
    assert request.headers["authorization"] == "Bearer from-env"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.form() == {
        "PhoneNumbers": "13800138000",
        "Text": "a&b=c 好",
        "Parts": "1",
        "Who": "C000002/winback",
        "Version": "2017",
    }


def test_a_batch_reuses_one_connection_across_batches(tmp_path):
    with gateway(ok) as server:
        channel = channel_for(tmp_path, server.url)
        first = send(channel, *(message(n) for n in range(1, 6)))
        second = send(channel, message(6), message(7))
        channel.close()
    assert [r.status for r in first + second] == [SendStatus.SENT] * 7
    assert len(server.requests) == 7
    assert server.connections == 1
    assert [r.headers["idempotency-key"] for r in server.requests] == [f"run-1:C{n:06d}:sms" for n in range(1, 8)]


def test_2xx_with_error_codes_in_the_body(tmp_path):
    codes = {"1": "OK", "2": "isv.MOBILE_NUMBER_ILLEGAL", "3": "isv.BUSINESS_LIMIT_CONTROL", "4": "isv.UNHEARD_OF"}

    def respond(request: Request) -> Reply:
        code = codes[request.json()["ref"][-5]]
        return 200, {"Code": code, "Message": f"detail of {code}", "BizId": "b-1"}

    with gateway(respond) as server:
        channel = channel_for(
            tmp_path,
            server.url,
            success={"json_field": "Code", "equals": "OK"},
            provider_id_field="BizId",
            error_field="Code",
            error_message_field="Message",
            permanent_codes=["isv.MOBILE_NUMBER_ILLEGAL"],
            transient_codes=["isv.BUSINESS_LIMIT_CONTROL"],
        )
        results = send(channel, *(message(n) for n in (1, 2, 3, 4)))
        channel.close()
    assert [r.status for r in results] == [
        SendStatus.SENT,
        SendStatus.PERMANENT,
        SendStatus.TRANSIENT,
        SendStatus.PERMANENT,  # an unknown code with a 2xx: retrying would get the same answer
    ]
    assert results[0].provider_id == "b-1"
    assert results[1].error == "HTTP 200: isv.MOBILE_NUMBER_ILLEGAL (detail of isv.MOBILE_NUMBER_ILLEGAL)"
    assert results[2].error.startswith("HTTP 200: isv.BUSINESS_LIMIT_CONTROL")


def test_suppress_codes_ask_the_dispatcher_to_suppress_the_number(tmp_path):
    answers = iter([(200, {"status": "queued", "sid": "m1"}), (200, {"status": "failed", "error_code": 21610})])
    with gateway(lambda r: next(answers)) as server:
        channel = channel_for(
            tmp_path,
            server.url,
            success={"json_field": "status", "equals": "queued"},
            provider_id_field="sid",
            error_field="error_code",
            suppress_codes={21610: "unsubscribed"},
        )
        results = send(channel, message(1), message(2))
        channel.close()
    assert results[0].status is SendStatus.SENT and results[0].provider_id == "m1"
    assert results[1].status is SendStatus.PERMANENT
    assert results[1].error == "HTTP 200: 21610" and results[1].suppress == "unsubscribed"


def test_500_and_429_are_transient_400_permanent_with_the_providers_reason(tmp_path):
    answers = {
        "1": (500, "upstream exploded"),
        "2": (429, {"result": {"code": "TOO_FAST"}}),
        "3": (400, {"result": {"code": "INVALID_NUMBER", "text": "number +86138 is not valid"}}),
        "4": (503, {"result": {"code": "INVALID_NUMBER"}}),  # a listed permanent code wins over the status
        "5": (400, {"result": {"code": "RETRY_LATER"}}),  # a listed transient code too
    }
    with gateway(lambda r: answers[r.json()["ref"][-5]]) as server:
        channel = channel_for(
            tmp_path,
            server.url,
            error_message_field="result.text",
            permanent_codes=["INVALID_NUMBER"],
            transient_codes=["RETRY_LATER"],
        )
        results = send(channel, *(message(n) for n in range(1, 6)))
        channel.close()
    assert [r.status for r in results] == [
        SendStatus.TRANSIENT,
        SendStatus.TRANSIENT,
        SendStatus.PERMANENT,
        SendStatus.PERMANENT,
        SendStatus.TRANSIENT,
    ]
    assert results[0].error == "HTTP 500: upstream exploded"
    assert results[1].error == "HTTP 429: TOO_FAST"
    assert results[2].error == "HTTP 400: INVALID_NUMBER (number +86138 is not valid)"


def test_status_list_and_truthy_json_field(tmp_path):
    answers = iter([(201, {"accepted": True, "sid": "SM1"}), (200, {"accepted": True}), (201, {"accepted": False})])
    with gateway(lambda r: next(answers)) as server:
        channel = channel_for(
            tmp_path,
            server.url,
            success={"status": [201], "json_field": "accepted"},
            provider_id_field="sid",
            error_field=None,
        )
        results = send(channel, message(1), message(2), message(3))
        channel.close()
    assert [r.status for r in results] == [SendStatus.SENT, SendStatus.PERMANENT, SendStatus.PERMANENT]
    assert results[0].provider_id == "SM1"
    assert results[1].error == 'HTTP 200: {"accepted": true}'  # without an error field: the answer itself


def test_a_timeout_is_transient_and_the_next_message_still_goes(tmp_path):
    server = Gateway(ok, delay=0.8)
    with server.running():
        channel = channel_for(tmp_path, server.url, timeout=0.3)
        started = time.monotonic()
        [result] = send(channel, message(1))
        elapsed = time.monotonic() - started
        server.delay = 0
        [after] = send(channel, message(2))
        channel.close()
    assert result.status is SendStatus.TRANSIENT
    assert "no answer within 0.3 s" in result.error
    assert elapsed < 0.75  # the client gave up; it did not wait for the server
    assert after.status is SendStatus.SENT


def test_an_unreachable_gateway_is_transient(tmp_path):
    server = Gateway(ok)
    url = server.url
    server.server.server_close()  # the port is free again: connection refused
    channel = channel_for(tmp_path, url)
    results = send(channel, message(1), message(2))
    channel.close()
    assert [r.status for r in results] == [SendStatus.TRANSIENT, SendStatus.TRANSIENT]
    assert "ConnectError" in results[0].error


def test_get_sends_fields_as_query_parameters(tmp_path):
    with gateway(ok) as server:
        channel = channel_for(tmp_path, server.url, method="get", fields={"to": "{{ to }}", "n": "{{ segments }}"})
        [result] = send(channel, message(1))
        channel.close()
    assert result.status is SendStatus.SENT
    [request] = server.requests
    assert request.method == "GET" and request.path == "/v1/sms?to=%2B8613800138000&n=1"


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"url": "ftp://x"}, "url: 'ftp://x' is not an http(s) URL"),
        ({"url": "http://x", "body": "xml"}, "body: Input should be 'json' or 'form'"),
        ({"url": "http://x", "timeout": 0}, "timeout"),
        ({"url": "http://x", "retries": 3}, "retries: Extra inputs are not permitted"),
        ({"url": "http://x", "success": {"equals": "OK"}}, "`equals` needs `json_field`"),
        ({"url": "http://x", "fields": {"to": "{{ phone }}"}}, "fields.to: 'phone' is undefined"),
        ({"url": "http://x", "fields": {"to": "{{ to "}}, "fields.to"),
        ({"url": "http://x", "body": "form", "fields": {"a": {"b": "c"}}}, "must be plain values"),
        ({"url": "http://x", "permanent_codes": ["E1"], "transient_codes": ["E1"]}, "both permanent and transient"),
        ({"url": "http://x", "suppress_codes": {"E1": "angry"}}, "'angry' is not one of"),
        ("http://x", "expected a mapping"),
    ],
)
def test_bad_gateway_config_names_the_config_file(tmp_path, config, problem):
    settings = Settings(base_dir=str(tmp_path), source=str(tmp_path / "orchestrator.yaml"))
    with pytest.raises(InputError) as caught:
        SmsChannel({"gateway": config, "signature": "【某网店】"}, settings)
    assert problem in caught.value.message
    assert caught.value.file == str(tmp_path / "orchestrator.yaml")
    assert caught.value.hint


def test_classify_reads_dotted_paths_with_list_indices():
    config = GatewayConfig.model_validate(
        {
            "url": "https://sms.tencentcloudapi.com",
            "success": {"json_field": "Response.SendStatusSet.0.Code", "equals": "Ok"},
            "provider_id_field": "Response.SendStatusSet.0.SerialNo",
            "error_field": "Response.SendStatusSet.0.Code",
            "error_message_field": "Response.SendStatusSet.0.Message",
        }
    )
    good = {"Response": {"SendStatusSet": [{"Code": "Ok", "SerialNo": "2019:1"}]}}
    bad = {"Response": {"SendStatusSet": [{"Code": "LimitExceeded.PhoneNumberDailyLimit", "Message": "daily"}]}}
    assert classify(config, Answer(200, "OK", json.dumps(good), good)).provider_id == "2019:1"
    result = classify(config, Answer(200, "OK", json.dumps(bad), bad))
    assert result.status is SendStatus.PERMANENT
    assert result.error == "HTTP 200: LimitExceeded.PhoneNumberDailyLimit (daily)"


# --- orchestrator run, end to end ------------------------------------------------------------------------------

CAMPAIGN = """\
name: sms-check
segment: {recency_days: {lt: 400}}
message:
  sms:
    text: "{{ customer.name }}您好，新品上架"
"""


def test_orchestrator_run_delivers_through_the_gateway_and_honours_sms_replies(
    engine: Engine, db_url: str, tmp_path: Path, monkeypatch
):
    dataset.load(engine)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(CAMPAIGN, encoding="utf-8")
    with engine.connect() as conn:
        reachable = conn.execute(select(Customer.phone).where(Customer.phone.is_not(None))).scalars().all()
    opted_out = sorted(reachable)[0]
    replies = tmp_path / "replies.csv"
    replies.write_text(f"phone,text,received_at\n{opted_out},退订,2025-06-30T12:00:00+08:00\n", encoding="utf-8")

    def respond(request: Request) -> Reply:
        return 200, {"Code": "OK", "BizId": f"biz-{request.json()['mobile']}"}

    with gateway(respond) as server:
        config = tmp_path / "orchestrator.yaml"
        config.write_text(
            "timezone: Asia/Shanghai\ntemplates: []\nchannels:\n  sms:\n    signature: 【某网店】\n    gateway:\n"
            f"      url: {server.url}\n"
            "      fields: {mobile: '{{ to }}', content: '{{ text }}', n: '{{ segments }}'}\n"
            "      success: {json_field: Code, equals: OK}\n"
            "      provider_id_field: BizId\n",
            encoding="utf-8",
        )
        cli = Cli(db_url, config=str(config))
        assert cli("import", "sms-replies", str(replies)).exit_code == 0
        result = cli("run", str(campaign), "--at", AT.isoformat(), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)

    with engine.connect() as conn:
        rows = conn.execute(
            select(Delivery.state, Delivery.reason, Delivery.provider_id, Delivery.contact, Customer.phone)
            .join(Customer, Customer.id == Delivery.customer_pk)
            .where(Delivery.channel == "sms")
        ).all()
    sent = [row for row in rows if row.state == "sent"]
    assert sent and data["outcomes"] == {"sent": len(sent)}
    assert len(server.requests) == len(sent) and server.connections == 1
    for row in sent:
        assert row.contact == row.phone and row.provider_id == f"biz-{row.phone}"
    bodies = [r.json() for r in server.requests]
    assert all(b["content"].startswith("【某网店】") and b["content"].endswith("新品上架 回T退订") for b in bodies)
    assert all(b["n"] == "1" for b in bodies)
    assert opted_out not in {b["mobile"] for b in bodies}  # unsubscribed by reply: never contacted
    [skipped] = [(row.state, row.reason) for row in rows if row.phone == opted_out]
    assert skipped == ("skipped", "suppressed")
    assert not (tmp_path / "outbox").exists()
