"""Plugins that fail, fail safely: broken third-party plugins installed by entry point, run through the real CLI.

Each plugin is made visible the way an installation would: its module next to a dist-info declaring the
``orchestrator.plugins`` entry point, on ``PYTHONPATH`` of an ``orchestrator`` subprocess. One raises at import,
one raises in ``register_channels``, one registers the built-in name ``sms``. Every command still runs, each
failure is one warning line on stderr, ``orchestrator plugins`` lists it with its error, and only a campaign that
needs a missing channel fails, at validate time, naming the plugin that failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator.plugin_manager import ENTRY_POINT_GROUP

REPO = Path(__file__).resolve().parent.parent
ORCHESTRATOR = Path(sys.executable).parent / "orchestrator"

PLUGINS = {
    # entry point name: (distribution, module name, module source)
    "apppush": (
        "orchestrator-apppush",
        "orchestrator_apppush_broken",
        "import orchestrator_push_sdk_that_is_not_installed  # noqa\n",
    ),
    "fax": (
        "orchestrator-fax",
        "orchestrator_fax",
        """
        from orchestrator.api import hookimpl

        @hookimpl
        def register_channels():
            raise RuntimeError("fax modem not configured")
        """,
    ),
    "cheap_sms": (
        "cheap-sms",
        "cheap_sms",
        """
        from orchestrator.api import Channel, hookimpl

        class CheapSms(Channel):
            name = "sms"
            contact_field = "phone"
            def compile(self, options, templates): ...
            def render(self, compiled, context): ...
            def send(self, messages): return []

        @hookimpl
        def register_channels():
            return [CheapSms]
        """,
    ),
}

PUSH_CAMPAIGN = """\
name: app-push
segment: {frequency: {gte: 1}}
message:
  apppush: {title: hi, body: there}
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    for entry_point, (dist_name, module, source) in PLUGINS.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        dist = site / f"{dist_name.replace('-', '_')}-0.3.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 0.3.0\n")
        (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry_point} = {module}\n")
    return site


def orchestrator(site: Path, cwd: Path, *args: str, load: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env["PYTHONPATH"] = str(site)
    env["COLUMNS"] = "250"  # the plugins table unwrapped
    if load is not None:
        env["ORCHESTRATOR_LOAD_PLUGINS"] = load
    done = subprocess.run([str(ORCHESTRATOR), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def warnings_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning: plugin")]


def test_every_command_runs_and_each_failed_plugin_is_one_warning_line(site, tmp_path):
    version = orchestrator(site, tmp_path, "--version")
    assert version.returncode == 0 and "orchestrator" in version.stdout
    lines = warnings_in(version.stderr)
    assert len(lines) == 3, version.stderr
    by_name = {line.split("'")[1]: line for line in lines}
    assert "orchestrator-apppush 0.3.0 (entry point)" in by_name["apppush"]
    assert "ModuleNotFoundError: No module named 'orchestrator_push_sdk_that_is_not_installed'" in by_name["apppush"]
    assert "cheap-sms 0.3.0 (entry point)" in by_name["cheap_sms"]
    assert "the channel 'sms' is already registered by the plugin 'orchestrator_plugins.sms'" in by_name["cheap_sms"]
    assert "RuntimeError: fax modem not configured" in by_name["fax"]

    db = f"sqlite:///{tmp_path / 'x.db'}"
    config = str(REPO / "config" / "orchestrator.yaml")
    assert orchestrator(site, tmp_path, "--db", db, "init").returncode == 0
    valid = orchestrator(
        site,
        REPO,
        "--config",
        config,
        "--db",
        db,
        "validate",
        "campaigns/wake_dormant.yaml",
        "campaigns/dinner_to_lunch.yaml",
    )
    assert valid.returncode == 0, valid.stdout + valid.stderr


def test_plugins_lists_each_failure_with_its_error(site, tmp_path):
    done = orchestrator(site, tmp_path, "plugins", "--json")
    assert done.returncode == 0, done.stderr
    infos = json.loads(done.stdout)
    failed = {i["name"]: i for i in infos if i["error"]}
    assert set(failed) == {"apppush", "fax", "cheap_sms"}
    assert failed["apppush"]["source"] == "orchestrator-apppush 0.3.0 (entry point)"
    assert failed["apppush"]["error"].startswith("ModuleNotFoundError: ")
    assert failed["fax"]["error"] == "RuntimeError: fax modem not configured"
    channels = {i["name"]: i["source"] for i in infos if i["kind"] == "channel"}
    assert channels["sms"] == "orchestrator_plugins.sms (built-in)"  # the built-in keeps its name
    assert {"email", "sms", "wechat", "webhook", "call_list", "coupon"} <= set(channels)
    assert "fax" not in channels
    table = orchestrator(site, tmp_path, "plugins")
    assert table.returncode == 0 and "fax modem not configured" in table.stdout


def test_only_a_campaign_using_a_missing_channel_fails_and_it_names_the_plugin(site, tmp_path):
    (tmp_path / "push.yaml").write_text(PUSH_CAMPAIGN)
    done = orchestrator(site, tmp_path, "--db", f"sqlite:///{tmp_path / 'x.db'}", "validate", "push.yaml")
    assert done.returncode == 2
    assert "push.yaml:4" in done.stderr
    assert (
        "unknown channel 'apppush': the plugin apppush (orchestrator-apppush 0.3.0 (entry point)) failed to load: "
        "ModuleNotFoundError: No module named 'orchestrator_push_sdk_that_is_not_installed'"
    ) in done.stderr


def test_load_plugins_set_but_empty_loads_the_builtins_only(site, tmp_path):
    done = orchestrator(site, tmp_path, "plugins", "--json", load="")
    assert done.returncode == 0 and warnings_in(done.stderr) == []
    infos = json.loads(done.stdout)
    assert all(i["error"] is None and "(built-in)" in i["source"] for i in infos)
    assert {"email", "sms", "coupon"} <= {i["name"] for i in infos if i["kind"] == "channel"}


def test_load_plugins_chooses_entry_points_by_name(site, tmp_path):
    done = orchestrator(site, tmp_path, "plugins", "--json", load="fax, nosuch")
    assert done.returncode == 0
    lines = warnings_in(done.stderr)
    assert len(lines) == 2 and "fax" in lines[0] and "nosuch" in lines[1]
    failed = {i["name"]: i for i in json.loads(done.stdout) if i["error"]}
    assert set(failed) == {"fax", "nosuch"}
    assert failed["nosuch"]["source"] == "ORCHESTRATOR_LOAD_PLUGINS"
    assert failed["nosuch"]["error"] == "no installed package has the entry point 'nosuch'"
