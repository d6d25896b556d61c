"""The plugin guide's worked example, ``examples/orchestrator-apppush``, installed the way a third-party plugin is.

Nothing is pip-installed: ``installed_example`` puts the example's source on ``sys.path`` next to a dist-info
written from the example's own ``pyproject.toml`` (name, version and the ``orchestrator.plugins`` entry point), which
is all an installation adds for the plugin manager. Then: the entry point is discovered and reported as such; a
campaign using ``message: {apppush: ...}`` runs through the real CLI, pipeline and dispatcher against a push
service on loopback (sent, suppressed, failed); and the example's own test suite passes in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from orchestrator.api import Channel
from orchestrator.db.engine import create_db_engine, migrate
from orchestrator.plugin_manager import ENTRY_POINT_GROUP, build_manager, build_registry, describe, manager, registry
from tests import dataset
from tests.clitools import Cli
from tests.httpserver import Request, Response, serve

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "orchestrator-apppush"
PROJECT = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]


@pytest.fixture
def installed_example(tmp_path_factory, monkeypatch):
    """The example as pip would leave it: its package importable, its dist-info declaring the entry point."""
    site = tmp_path_factory.mktemp("site")
    name, version = PROJECT["name"], PROJECT["version"]
    dist = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    group = PROJECT["entry-points"][ENTRY_POINT_GROUP]
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n" + "".join(f"{k} = {v}\n" for k, v in group.items())
    )
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.syspath_prepend(str(site))
    manager.cache_clear()  # the CLI's plugin manager is built once per process
    registry.cache_clear()
    yield
    manager.cache_clear()
    registry.cache_clear()
    sys.modules.pop("orchestrator_apppush", None)


def test_the_pyproject_declares_the_entry_point_the_guide_describes():
    assert PROJECT["name"] == "orchestrator-apppush"
    assert PROJECT["entry-points"] == {"orchestrator.plugins": {"apppush": "orchestrator_apppush"}}


def test_the_example_is_discovered_by_its_entry_point(installed_example):
    pm = build_manager()
    sources = {(i.name, i.kind): i.source for i in describe(pm)}
    assert sources[("apppush", "plugin")] == "orchestrator-apppush 0.1.0 (entry point)"
    assert sources[("apppush", "channel")] == "orchestrator-apppush 0.1.0 (entry point)"
    assert sources[("webhook", "channel")] == "orchestrator_plugins.webhook (built-in)"
    channel = build_registry(pm).channels["apppush"]
    assert issubclass(channel, Channel) and channel.contact_field == "customer_id" and channel.consent is None
    import orchestrator_apppush

    assert orchestrator_apppush.__version__ == PROJECT["version"]
    assert build_manager(entry_points=False).get_plugin("apppush") is None  # found only through the entry point


# -- a whole run: pipeline, ledger, dispatcher, suppression ------------------------------------------------------

GONE, DOWN = "C02", "C05"  # the push service knows no device for GONE and fails for DOWN

CONFIG = """\
timezone: Asia/Shanghai
channels:
  apppush:
    url: {url}/v1/notifications
    api_key: ${{APPPUSH_KEY}}
    timeout: 5
    retry: {{max_attempts: 1}}
"""

CAMPAIGN = """\
name: app-coupon
segment: {frequency: {gte: 1}}
offer: {coupon: {kind: amount_off, value: 20, min_spend: 100, valid_days: 14}}
message:
  apppush:
    title: "{{ customer.name }}，送您 {{ offer.value }} 元券"
    body: "满 100 可用，{{ offer.expires_at|date('%m月%d日') }} 前有效"
    deep_link: "shop://coupons/{{ offer.code }}"
"""


def push_service(request: Request) -> Response:
    member = request.json()["to"]
    if member == GONE:
        return Response.json({"error": "unknown_member"}, status=404)
    if member == DOWN:
        return Response.json({"error": "overloaded"}, status=503)
    return Response.json({"id": f"push-{member}"})


def test_a_campaign_runs_through_the_example_channel(installed_example, tmp_path, monkeypatch):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'orchestrator.db'}")
    migrate(engine)
    dataset.load(engine)
    engine.dispose()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("APPPUSH_KEY", "key-from-env")
    (tmp_path / "app_coupon.yaml").write_text(CAMPAIGN)
    cli = Cli(f"sqlite:///{tmp_path / 'orchestrator.db'}", str(tmp_path / "orchestrator.yaml"))

    def json_of(*args: str) -> list:
        return json.loads(cli(*args, "--json").stdout)

    with serve(push_service) as server:
        (tmp_path / "orchestrator.yaml").write_text(CONFIG.format(url=server.url))
        assert cli("validate", "app_coupon.yaml").exit_code == 0
        run = cli("run", "app_coupon.yaml", "--at", dataset.AT.isoformat(), "--json")
        assert run.exit_code == 0, run.output
        deliveries = json_of("deliveries", "--campaign", "app-coupon")
        suppressed = json_of("suppress", "list")

    rows = {row["customer_id"]: row for row in deliveries}
    pushed = [r.json() for r in server.requests]
    assert len(pushed) == len(rows) >= 10 and {p["to"] for p in pushed} == set(rows)
    assert all(r.headers["authorization"] == "Bearer key-from-env" for r in server.requests)
    assert all(
        r.headers["idempotency-key"] == p["idempotency_key"] != "" for r, p in zip(server.requests, pushed, strict=True)
    )
    assert all(p["deep_link"].startswith("shop://coupons/") and "送您 20" in p["title"] for p in pushed)
    assert rows[GONE]["state"] == rows[DOWN]["state"] == "failed"
    assert {row["state"] for cid, row in rows.items() if cid not in (GONE, DOWN)} == {"sent"}
    assert rows[GONE]["last_error"] == 'HTTP 404: {"error": "unknown_member"}'  # permanent: never retried
    assert (
        rows[DOWN]["last_error"] == 'gave up after 1 attempts: HTTP 503: {"error": "overloaded"}'
    )  # retry.max_attempts
    assert rows["C01"]["provider_id"] == "push-C01"
    assert [(e["customer_id"], e["channel"], e["reason"]) for e in suppressed] == [(GONE, "apppush", "do_not_contact")]


# -- the example's own tests -----------------------------------------------------------------------------------


def test_the_examples_own_tests_pass():
    env = {**os.environ, "PYTHONPATH": str(EXAMPLE), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("ORCHESTRATOR_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    passed = re.search(r"(\d+) passed", done.stdout)
    assert passed and int(passed.group(1)) >= 8 and "failed" not in done.stdout and "skipped" not in done.stdout
