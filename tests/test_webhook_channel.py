"""The webhook channel against a real HTTP server on loopback (tests.httpserver; no mocks of httpx).

Covered: the body (an envelope around the rendered payload, valid JSON whatever the customer data holds) and its
byte-identical resend from the stored parts, the signature checked as a receiver would with ``verify``, the
Idempotency-Key and configured headers, the reading of every answer (2xx with or without an id, 408/425/429/5xx,
4xx with the answer's reason, 410 with a suppression), timeouts and refused connections, one kept-alive
connection, results yielded one by one, configuration and options validation, and the plugin's registration.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from pathlib import Path

import pytest
from orchestrator_plugins.webhook import WebhookChannel, WebhookOptions, build_body, sign, verify
from pydantic import ValidationError

from orchestrator.api import OutgoingMessage, SendStatus
from orchestrator.config import Settings
from orchestrator.errors import InputError
from orchestrator.plugin_manager import build_manager, describe
from orchestrator.rendering import TemplateLoader, synthetic_context
from tests.httpserver import Request, Response, serve

SECRET = "whsec-test-秘密"
PAYLOAD = {
    "name": "{{ customer.name }}",
    "coupon": {"code": "{{ offer.code }}", "value": "{{ offer.value }}"},
    "tags": ["winback", "{{ customer.city }}"],
    "priority": 2,
    "vip": True,
    "note": None,
}


def make_settings(tmp_path: Path, **webhook) -> Settings:
    return Settings(base_dir=str(tmp_path), source=str(tmp_path / "config.yaml"), channels={"webhook": webhook})


@pytest.fixture
def templates(tmp_path: Path) -> TemplateLoader:
    return TemplateLoader([tmp_path]).for_campaign(tmp_path / "campaigns" / "winback.yaml")


def channel_for(tmp_path: Path, url: str, **config) -> WebhookChannel:
    settings = make_settings(tmp_path, url=url, **config)
    return WebhookChannel(settings.channels["webhook"], settings)


def outgoing(channel, templates, *, customer_id="C000042", key=None, payload=PAYLOAD, event=None, context=None):
    options = {"payload": payload} | ({"event": event} if event else {})
    compiled = channel.compile(WebhookOptions.model_validate(options), templates)
    rendered = channel.render(compiled, context or synthetic_context(True, campaign_name="winback"))
    return OutgoingMessage(
        delivery_id=1,
        customer_id=customer_id,
        contact=customer_id,
        message=rendered,
        idempotency_key=key or f"run-1:{customer_id}:webhook",
        run_id=1,
        campaign="winback",
    )


def accept(request: Request) -> Response:
    return Response.json({"id": f"evt_{request.json()['customer_id']}", "ok": True}, status=202)


def test_body_is_the_envelope_around_the_rendered_payload_and_is_signed(tmp_path, templates):
    with serve(accept) as server:
        channel = channel_for(tmp_path, f"{server.url}/hooks", secret=SECRET, headers={"Authorization": "Bearer t"})
        message = outgoing(channel, templates, event="winback.offer")
        [result] = list(channel.send([message]))
        channel.close()
    assert result.status is SendStatus.SENT and result.provider_id == "evt_C000042"
    [request] = server.requests
    assert request.method == "POST" and request.path == "/hooks"
    assert json.loads(request.body) == {
        "event": "winback.offer",
        "campaign": "winback",
        "customer_id": "C000042",
        "idempotency_key": "run-1:C000042:webhook",
        "data": {
            "name": "张伟",
            "coupon": {"code": "SYN7-Q2KX-8ZD4", "value": "20.00"},
            "tags": ["winback", "杭州"],
            "priority": 2,
            "vip": True,
            "note": None,
        },
    }
    assert b" " not in request.body and "张伟".encode() in request.body  # compact UTF-8, not \\u escapes
    assert request.headers["content-type"].startswith("application/json")
    assert request.headers["idempotency-key"] == "run-1:C000042:webhook"
    assert request.headers["authorization"] == "Bearer t"
    header = request.headers["x-orchestrator-signature"]
    assert verify(SECRET, header, request.body)
    assert abs(int(header.split(",")[0].removeprefix("t=")) - time.time()) < 60
    assert not verify("another-secret", header, request.body)
    assert not verify(SECRET, header, request.body.replace(b"SYN7", b"SYN8"))  # tampered body
    assert not verify(SECRET, header, request.body, now=time.time() + 3600)  # replayed an hour later
    stale = sign(SECRET, request.body, timestamp=int(time.time()) - 600)
    assert not verify(SECRET, stale, request.body, tolerance=300) and verify(SECRET, stale, request.body, 900)
    assert verify(SECRET, f"v1=deadbeef,{header}", request.body)  # any matching v1 (secret rotation)
    assert not verify(SECRET, "v1=abc", request.body) and not verify(SECRET, "t=x,v1=abc", request.body)


def test_resend_from_stored_parts_is_byte_identical(tmp_path, templates):
    with serve(accept) as server:
        channel = channel_for(tmp_path, server.url, secret=SECRET, signature_header="X-Sig")
        first = outgoing(channel, templates)
        stored_parts = json.loads(json.dumps(first.message.parts))  # what the ledger keeps, read back
        again = copy.deepcopy(first)
        again.message.parts = stored_parts
        results = list(channel.send([first])) + list(channel.send([again]))
        channel.close()
    assert [r.status for r in results] == [SendStatus.SENT, SendStatus.SENT]
    one, two = server.requests
    assert one.body == two.body == build_body(first)
    assert one.headers["idempotency-key"] == two.headers["idempotency-key"]
    assert verify(SECRET, one.headers["x-sig"], one.body) and verify(SECRET, two.headers["x-sig"], two.body)
    assert "x-orchestrator-signature" not in one.headers


def test_customer_data_cannot_break_the_json(tmp_path, templates):
    context = synthetic_context(True, campaign_name="winback")
    context["customer"]["name"] = '"}, "admin": true, "x": "\\\n\t</script>'
    with serve(accept) as server:
        channel = channel_for(tmp_path, server.url)
        [result] = list(channel.send([outgoing(channel, templates, context=context)]))
        channel.close()
    assert result.status is SendStatus.SENT
    body = server.requests[0].json()
    assert body["data"]["name"] == '"}, "admin": true, "x": "\\\n\t</script>'
    assert "admin" not in body and "admin" not in body["data"]
    assert body["event"] == "message"  # the default event name
    assert "x-orchestrator-signature" not in server.requests[0].headers  # no secret, no signature


def answer_by_customer(request: Request) -> Response:
    """The customer id says how to answer: C200, C201-noid, C408, C429, C503, C400, C410, …"""
    customer = request.json()["customer_id"]
    if customer == "C201-noid":
        return Response(201, b"created")
    status = int(customer[1:4])
    if status == 400:
        return Response(400, "bad member: " + "x" * 400, {"Content-Type": "text/plain"})
    if status == 410:
        return Response.json({"error": "member deleted"}, status=410)
    return Response.json({"id": f"id-{customer}"} if status < 300 else {"error": "later"}, status=status)


def test_each_answer_is_read_as_documented_over_one_connection(tmp_path, templates):
    customers = ["C200", "C201-noid", "C408", "C425", "C429", "C500", "C503", "C400", "C404", "C410", "C200b"]
    with serve(answer_by_customer) as server:
        channel = channel_for(tmp_path, server.url, timeout=5)
        messages = [outgoing(channel, templates, customer_id=customer) for customer in customers]
        results = list(channel.send(messages))
        channel.close()
    by_customer = dict(zip(customers, results, strict=True))
    assert [r.status.value for r in results] == [
        "sent",
        "sent",
        "transient",
        "transient",
        "transient",
        "transient",
        "transient",
        "permanent",
        "permanent",
        "permanent",
        "sent",
    ]
    assert by_customer["C200"].provider_id == "id-C200"
    assert by_customer["C201-noid"].provider_id == "201"
    assert by_customer["C429"].error == 'HTTP 429: {"error": "later"}'
    bad = by_customer["C400"]
    assert bad.error.startswith("HTTP 400: bad member: xxx") and bad.suppress is None
    assert len(bad.error) == len("HTTP 400: ") + 200  # the first 200 characters of the answer
    assert by_customer["C410"].suppress == "do_not_contact" and "member deleted" in by_customer["C410"].error
    assert all(r.suppress is None for c, r in by_customer.items() if c != "C410")
    assert [r.json()["customer_id"] for r in server.requests] == customers  # in order, each once: no retries
    assert len({r.peer for r in server.requests}) == 1  # one kept-alive connection for the whole batch


def test_results_are_yielded_as_each_answer_arrives(tmp_path, templates):
    with serve(accept) as server:
        channel = channel_for(tmp_path, server.url)
        results = channel.send([outgoing(channel, templates, customer_id=c) for c in ("C1", "C2", "C3")])
        first = next(iter(results))
        assert first.provider_id == "evt_C1" and len(server.requests) == 1
        assert [r.provider_id for r in results] == ["evt_C2", "evt_C3"]
        channel.close()


def test_timeouts_and_refused_connections_are_transient(tmp_path, templates):
    release = threading.Event()

    def slow(request: Request) -> Response:
        if request.json()["customer_id"] == "C-slow":
            server.stall(5)
        release.set()
        return accept(request)

    with serve(slow) as server:
        channel = channel_for(tmp_path, server.url, timeout=0.3)
        started = time.monotonic()
        results = list(channel.send([outgoing(channel, templates, customer_id=c) for c in ("C-slow", "C-fast")]))
        elapsed = time.monotonic() - started
        channel.close()
    assert results[0].status is SendStatus.TRANSIENT and "timed out after 0.3s" in results[0].error
    assert results[1].status is SendStatus.SENT  # the next message still goes (on a new connection)
    assert elapsed < 3

    with serve(accept) as gone:
        url = gone.url
    channel = channel_for(tmp_path, url, timeout=2)  # nothing listens there any more
    [refused] = list(channel.send([outgoing(channel, templates)]))
    channel.close()
    assert refused.status is SendStatus.TRANSIENT and "ConnectError" in refused.error


def test_configuration_is_validated_with_the_file_and_a_hint(tmp_path):
    config_file = str(tmp_path / "config.yaml")
    cases = [
        ({"url": ""}, "http:// or https://"),
        ({"url": "ftp://example.com/x"}, "http:// or https://"),
        ({"url": "https://x.example", "timeout": 0}, "timeout"),
        ({"url": "https://x.example", "secret": ""}, "secret is empty"),
        ({"url": "https://x.example", "verify_tls": False}, "verify_tls: Extra inputs"),
        ({"url": "https://x.example", "headers": {"X-Count": [1]}}, "headers.X-Count"),
    ]
    for config, expected in cases:
        settings = make_settings(tmp_path, **config)
        with pytest.raises(InputError) as caught:
            WebhookChannel(settings.channels["webhook"], settings)
        assert expected in caught.value.message, (config, caught.value.message)
        assert caught.value.file == config_file and "url:" in caught.value.hint

    settings = make_settings(
        tmp_path,
        url="https://x.example/hook",
        consent="email",
        is_message=False,
        rate_limit={"per_second": 5},  # the dispatcher's keys are accepted and left to it
        cost_per_message=0.01,
        retry={"max_attempts": 3},
    )
    channel = WebhookChannel(settings.channels["webhook"], settings)
    assert channel.consent == "email" and channel.is_message is False
    assert channel.cfg.timeout == 10 and channel.cfg.signature_header == "X-Orchestrator-Signature"
    default = channel_for(tmp_path, "http://127.0.0.1:9/hook")
    assert default.consent is None and default.is_message is True
    assert default.contact_of({"customer_id": " C7 "}) == "C7"


def test_message_options_are_validated(tmp_path, templates):
    with pytest.raises(ValidationError, match="payload"):
        WebhookOptions.model_validate({"text": '{"name": "{{ customer.name }}"}'})
    with pytest.raises(ValidationError, match="Extra inputs"):
        WebhookOptions.model_validate({"payload": {}, "body": "x"})
    channel = channel_for(tmp_path, "http://127.0.0.1:9/hook")
    with pytest.raises(InputError, match=r"webhook payload\.coupon\.code") as caught:
        channel.compile(WebhookOptions.model_validate({"payload": {"coupon": {"code": "{{ offer.code "}}}), templates)
    assert caught.value.file.endswith("winback.yaml")


def test_webhook_and_wechat_are_registered_as_builtins():
    infos = {(info.name, info.kind): info.source for info in describe(build_manager(entry_points=False))}
    assert infos[("webhook", "channel")] == "orchestrator_plugins.webhook (built-in)"
    assert infos[("wechat", "channel")] == "orchestrator_plugins.wechat (built-in)"


def test_without_a_url_each_body_is_written_to_the_outbox(tmp_path: Path, templates: TemplateLoader):
    settings = make_settings(tmp_path, outbox="out/hooks")
    channel = WebhookChannel(settings.channels["webhook"], settings)
    message = outgoing(channel, templates, key="run7-d3")
    [result] = list(channel.send([message]))
    again = list(channel.send([message]))  # a resend overwrites the same file
    assert result.status == SendStatus.SENT and result.provider_id == "run7-d3.json" and again == [result]
    assert [p.name for p in (tmp_path / "out" / "hooks").iterdir()] == ["run7-d3.json"]
    body = json.loads((tmp_path / "out" / "hooks" / "run7-d3.json").read_text(encoding="utf-8"))
    assert body["idempotency_key"] == "run7-d3" and body["campaign"] == "winback"
    assert body["data"] == json.loads(message.message.parts["data"])
