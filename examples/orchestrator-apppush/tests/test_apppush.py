"""The apppush channel against a real HTTP server on 127.0.0.1 (no mocks of httpx), and through the real CLI.

Run from this folder with ``pytest`` (``pythonpath = .`` in pyproject.toml puts the package on the path). When the
package is not pip-installed, the ``installed`` fixture writes the dist-info an installation would have (with the
``orchestrator.plugins`` entry point) into a temporary folder on ``sys.path``, so the orchestrator finds the plugin
exactly as it finds an installed one.
"""

from __future__ import annotations

import json
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from orchestrator_apppush import LOCK_SCREEN_CHARS, AppPushChannel, AppPushOptions

from orchestrator.api import InputError, OutgoingMessage, SendStatus, TemplateLoader, synthetic_context

# the host application, which a plugin's tests drive (the plugin itself imports only orchestrator.api)
from orchestrator.cli import cli
from orchestrator.config import Settings
from orchestrator.plugin_manager import ENTRY_POINT_GROUP, manager, registry

# -- a push service on loopback ---------------------------------------------------------------------------------

Answer = tuple[int, dict[str, Any]]


class PushService:
    """A ThreadingHTTPServer on a free port; ``answer(request_json)`` decides each reply; requests are kept."""

    def __init__(self, answer: Callable[[dict[str, Any]], Answer]):
        self.answer = answer
        self.requests: list[tuple[str, dict[str, str], dict[str, Any], tuple]] = []  # path, headers, json, peer
        self.stopping = threading.Event()
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is visible

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                headers = {name.lower(): value for name, value in self.headers.items()}
                service.requests.append((self.path, headers, body, self.client_address[:2]))
                status, data = service.answer(body)
                payload = json.dumps(data).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client timed out and left
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1/notifications"

    def stall(self, seconds: float) -> None:
        self.stopping.wait(seconds)  # returns early when the server stops: no thread outlives its test


@contextmanager
def push_service(answer: Callable[[dict[str, Any]], Answer]) -> Iterator[PushService]:
    service = PushService(answer)
    service.thread.start()
    try:
        yield service
    finally:
        service.stopping.set()
        service.httpd.shutdown()
        service.httpd.server_close()
        service.thread.join(5)


# -- helpers ----------------------------------------------------------------------------------------------------


def channel_for(tmp_path: Path, **config: Any) -> AppPushChannel:
    settings = Settings(
        base_dir=str(tmp_path), source=str(tmp_path / "orchestrator.yaml"), channels={"apppush": config}
    )
    return AppPushChannel(settings.channels["apppush"], settings)


def outgoing(channel: AppPushChannel, customer_id: str, **options: Any) -> OutgoingMessage:
    templates = TemplateLoader([]).for_campaign(None)
    options = {"title": "{{ customer.name }}，您的券到了", "body": "满 100 减 {{ offer.value }}"} | options
    compiled = channel.compile(AppPushOptions.model_validate(options), templates)
    rendered = channel.render(compiled, synthetic_context(True))
    key = f"run1-{customer_id}"
    return OutgoingMessage(1, customer_id, customer_id, rendered, idempotency_key=key, run_id=1, campaign="winback")


def by_member(service_ref: list[PushService]) -> Callable[[dict[str, Any]], Answer]:
    def answer(body: dict[str, Any]) -> Answer:
        member = body["to"]
        if member == "C-SLOW":
            service_ref[0].stall(5)
        if member in ("C-GONE", "C-SLOW"):
            return 404, {"error": "unknown_member"}
        if member == "C-DOWN":
            return 500, {"error": "internal"}
        return 200, {"id": f"push-{member}"}

    return answer


# -- send: one result per message, in order, as each answer arrives ---------------------------------------------


def test_send_results_for_200_404_500_and_timeout(tmp_path):
    ref: list[PushService] = []
    with push_service(by_member(ref)) as service:
        ref.append(service)
        channel = channel_for(tmp_path, url=service.url, api_key="k-123", timeout=0.5)
        ids = ["C-OK", "C-GONE", "C-DOWN", "C-SLOW"]
        messages = [outgoing(channel, member, deep_link="shop://coupons/{{ offer.code }}") for member in ids]
        results = list(channel.send(messages))
        channel.close()

    ok, gone, down, slow = results
    assert ok.status is SendStatus.SENT and ok.provider_id == "push-C-OK"
    assert gone.status is SendStatus.PERMANENT and gone.suppress == "do_not_contact" and "404" in gone.error
    assert down.status is SendStatus.TRANSIENT and down.suppress is None and "500" in down.error
    assert slow.status is SendStatus.TRANSIENT and "timed out after 0.5s" in slow.error

    path, headers, body, _ = service.requests[0]
    assert path == "/v1/notifications"
    assert body == {
        "to": "C-OK",
        "title": "张伟，您的券到了",
        "body": "满 100 减 20.00",
        "deep_link": "shop://coupons/SYN7-Q2KX-8ZD4",
        "idempotency_key": "run1-C-OK",
    }
    assert headers["authorization"] == "Bearer k-123" and headers["idempotency-key"] == "run1-C-OK"
    assert len({peer for *_, peer in service.requests[:3]}) == 1  # one kept-alive connection


def test_only_the_unknown_member_answer_suppresses(tmp_path):
    answers = {"C1": (404, {"error": "no such route"}), "C2": (401, {"error": "bad key"}), "C3": (429, {})}
    with push_service(lambda body: answers[body["to"]]) as service:
        channel = channel_for(tmp_path, url=service.url, api_key="k")
        results = list(channel.send([outgoing(channel, member) for member in answers]))
        channel.close()
    wrong_url, bad_key, throttled = results
    assert wrong_url.status is SendStatus.PERMANENT and wrong_url.suppress is None  # a wrong URL suppresses nobody
    assert bad_key.status is SendStatus.PERMANENT and bad_key.suppress is None
    assert throttled.status is SendStatus.TRANSIENT
    assert service.requests[0][2]["deep_link"] is None  # no deep_link written: null, not ""


def test_results_are_yielded_one_by_one(tmp_path):
    with push_service(lambda body: (200, {"id": body["to"]})) as service:
        channel = channel_for(tmp_path, url=service.url, api_key="k")
        results = channel.send([outgoing(channel, "C1"), outgoing(channel, "C2")])
        first = next(iter(results))
        asked_after_first = len(service.requests)
        rest = list(results)
        channel.close()
    assert first.provider_id == "C1" and asked_after_first == 1  # the second push waits for the ledger
    assert [r.provider_id for r in rest] == ["C2"]


def test_a_refused_connection_is_transient(tmp_path):
    with push_service(lambda body: (200, {})) as service:
        url = service.url
    channel = channel_for(tmp_path, url=url, api_key="k", timeout=1)  # the server is gone: connection refused
    [result] = list(channel.send([outgoing(channel, "C1")]))
    channel.close()
    assert result.status is SendStatus.TRANSIENT and "ConnectError" in result.error


# -- compile and render --------------------------------------------------------------------------------------


def test_a_long_body_is_a_warning_and_is_sent_in_full(tmp_path):
    channel = channel_for(tmp_path, url="http://127.0.0.1:9/", api_key="k")
    templates = TemplateLoader([]).for_campaign(None)
    long_body = "{{ customer.name }}，" + "新品上市，会员抢先看。" * 20
    compiled = channel.compile(AppPushOptions(title="新品", body=long_body), templates)
    [warning] = compiled.warnings
    assert f"about {LOCK_SCREEN_CHARS}" in warning and "sent in full" in warning
    rendered = channel.render(compiled, synthetic_context(False))
    assert rendered.measures["chars"] == len(rendered.parts["body"]) > LOCK_SCREEN_CHARS
    assert rendered.parts["body"].endswith("会员抢先看。")  # not truncated
    short = channel.compile(AppPushOptions(title="新品", body="{{ customer.name }}，新品上市"), templates)
    assert short.warnings == ()


def test_configuration_errors_name_the_config_file_with_a_hint(tmp_path):
    for config, fragment in (
        ({"url": "ftp://push.example.com", "api_key": "k"}, "url: expected an http"),
        ({"url": "https://push.example.com"}, "api_key: Field required"),
        ({"url": "https://push.example.com", "api_key": " "}, "the API key is empty"),
        ({"url": "https://push.example.com", "api_key": "k", "tiemout": 3}, "tiemout: Extra inputs"),
    ):
        with pytest.raises(InputError) as caught:
            channel_for(tmp_path, **config)
        assert fragment in caught.value.message
        assert caught.value.file == str(tmp_path / "orchestrator.yaml") and "APPPUSH_KEY" in caught.value.hint
    # the dispatcher's keys are accepted (and left to it); consent is configurable
    channel = channel_for(tmp_path, url="https://push.example.com", api_key="k", retry={"max_attempts": 3}, consent="x")
    assert channel.consent == "x" and channel_for(tmp_path, url="https://p.example.com", api_key="k").consent is None


# -- through the real CLI, found by its entry point -----------------------------------------------------------


@pytest.fixture
def installed(tmp_path_factory, monkeypatch):
    """The plugin discoverable by entry point: installed already, or given a dist-info on sys.path here."""
    if not any(ep.name == "apppush" for ep in entry_points(group=ENTRY_POINT_GROUP)):
        site = tmp_path_factory.mktemp("site")
        dist = site / "orchestrator_apppush-0.1.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: orchestrator-apppush\nVersion: 0.1.0\n")
        (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\napppush = orchestrator_apppush\n")
        monkeypatch.syspath_prepend(str(site))
    manager.cache_clear()  # the CLI built its plugin manager when it was imported
    registry.cache_clear()
    yield
    manager.cache_clear()
    registry.cache_clear()


CONFIG = """\
timezone: Asia/Shanghai
channels:
  apppush:
    url: {url}
    api_key: ${{APPPUSH_KEY}}
    timeout: 5
    retry: {{max_attempts: 4}}
"""

CAMPAIGN = """\
name: coupon-push
segment: {recency_days: {gte: 60}}
offer: {coupon: {kind: amount_off, value: 20, min_spend: 100, valid_days: 14}}
message:
  apppush:
    title: "{{ customer.name }}，送您 {{ offer.value }} 元券"
    body: "满 100 可用，{{ offer.expires_at|date('%m月%d日') }} 前有效"
    deep_link: "shop://coupons/{{ offer.code }}"
"""


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


def test_the_cli_lists_the_plugin_and_validates_a_campaign_using_it(installed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("APPPUSH_KEY", "k-from-env")
    (tmp_path / "orchestrator.yaml").write_text(CONFIG.format(url="https://push.example.com/v1/notifications"))
    (tmp_path / "coupon_push.yaml").write_text(CAMPAIGN)

    listed = invoke("plugins", "--json")
    assert listed.exit_code == 0
    [channel] = [i for i in json.loads(listed.stdout) if i["name"] == "apppush" and i["kind"] == "channel"]
    assert channel["source"] == "orchestrator-apppush 0.1.0 (entry point)"

    ok = invoke("--config", "orchestrator.yaml", "validate", "coupon_push.yaml")
    assert ok.exit_code == 0, ok.output
    assert "ok  coupon_push.yaml (coupon-push)" in ok.output

    broken = CAMPAIGN.replace("    body:", "    bdy:")  # a misspelt key, and no body
    (tmp_path / "broken.yaml").write_text(broken)
    result = invoke("--config", "orchestrator.yaml", "validate", "broken.yaml", "--json")
    assert result.exit_code == 2
    problems = json.loads(result.stdout)["files"][0]["problems"]
    assert [(p["line"], p["message"]) for p in problems] == [
        (5, "message.apppush: missing required key 'body'"),
        (7, "message.apppush: unknown key 'bdy'"),
    ]

    no_offer = textwrap.dedent(CAMPAIGN).replace("offer: {coupon: {kind: amount_off", "# offer: {coupon: {kind: x")
    (tmp_path / "no_offer.yaml").write_text(no_offer)
    result = invoke("--config", "orchestrator.yaml", "validate", "no_offer.yaml")
    assert result.exit_code == 2  # every template is rendered against a synthetic member, without an offer here
    assert "apppush title, line 1: 'None' has no attribute 'value'" in result.output


def test_a_bad_channel_config_fails_validate_naming_the_config_file(installed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("APPPUSH_KEY", "k")
    (tmp_path / "orchestrator.yaml").write_text(CONFIG.format(url="push.example.com"))
    (tmp_path / "coupon_push.yaml").write_text(CAMPAIGN)
    result = invoke("--config", "orchestrator.yaml", "validate", "coupon_push.yaml")
    assert result.exit_code == 2
    assert (
        "orchestrator.yaml:4:5: channels.apppush.url: expected an http" in result.output
        and "hint: apppush: {url:" in result.output
    )


def test_an_unset_api_key_variable_is_an_input_error(installed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("APPPUSH_KEY", raising=False)
    (tmp_path / "orchestrator.yaml").write_text(CONFIG.format(url="https://push.example.com"))
    (tmp_path / "coupon_push.yaml").write_text(CAMPAIGN)
    result = invoke("--config", "orchestrator.yaml", "validate", "coupon_push.yaml")
    assert result.exit_code == 2 and "APPPUSH_KEY is not set" in result.output


def test_the_registry_holds_this_very_class(installed):
    assert registry().channels["apppush"] is AppPushChannel  # the entry point loads the module imported here
    assert sys.modules["orchestrator_apppush"].AppPushChannel is AppPushChannel
