"""The campaigns folder as ``schedule``, ``scheduler --from --until`` and the service's reload read it: a file that
disappears while the folder is being loaded, and campaign files that are symbolic links or not regular files -
on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import Engine

from orchestrator.campaign import loader
from orchestrator.config import load_settings
from orchestrator.scheduler.reload import CampaignFolder
from orchestrator.service import Orchestrator
from tests.test_scheduler_replay import WEEKLY, shop  # noqa: F401 - the fixture

SECRET = "root:$6$salt$hashhashhash:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\nbin:*:19000:0:99999:7:::\n"


@pytest.fixture
def vanishing(shop, monkeypatch):  # noqa: F811
    """``gone.yaml`` is renamed away right after it has been parsed, before the loader is done with it: the moment
    an editor or a deploy that replaces files by renaming makes it disappear mid-load."""
    cli, folder = shop
    (folder / "gone.yaml").write_text(WEEKLY.replace("weekly-buyers", "gone"), encoding="utf-8")
    real = loader.load_yaml

    def load_then_vanish(path):
        doc = real(path)
        if Path(path).name == "gone.yaml" and Path(path).exists():
            Path(path).rename(Path(path).with_suffix(".bak"))
        return doc

    monkeypatch.setattr(loader, "load_yaml", load_then_vanish)
    return cli, folder


def test_schedule_lists_the_other_campaigns_when_one_file_disappears_mid_load(vanishing):
    cli, _ = vanishing
    result = cli("schedule", "--at", "2025-06-10T12:00:00+08:00", "--json")
    assert result.exit_code == 0, result.output
    names = {Path(e["file"]).name for e in json.loads(result.stdout)["campaigns"]}
    assert {"weekly.yaml", "paused.yaml", "broken.yaml"} <= names and "gone.yaml" not in names


def test_a_replay_fires_the_other_campaigns_when_one_file_disappears_mid_load(vanishing):
    cli, _ = vanishing
    result = cli("scheduler", "--from", "2025-06-02", "--until", "2025-06-10", "--json")
    assert result.exit_code == 0, result.output
    assert {t["campaign"] for t in json.loads(result.stdout)["ticks"]} == {"weekly-buyers"}


def test_a_symlink_out_of_the_campaigns_folder_is_refused_without_quoting_its_target(shop, tmp_path: Path):  # noqa: F811
    cli, folder = shop
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET, encoding="utf-8")
    (folder / "shadow.yaml").symlink_to(secret)
    (folder / "also.yml").symlink_to(tmp_path / "outside" / "missing.yaml")  # dangling, outside
    (folder / "inside.yaml").symlink_to(folder / "weekly.yaml")  # inside the folder: a file like the others
    os.mkfifo(folder / "pipe.yaml")  # reading it would block for ever

    result = cli("schedule", "--at", "2025-06-10T12:00:00+08:00")
    assert result.exit_code == 0, result.output
    output = result.output + result.stderr
    assert "hashhash" not in output and "daemon" not in output and "bin:" not in output  # the target's lines
    assert str(secret) not in output and "shadow.yaml:None" not in output
    assert "shadow.yaml: invalid" in output and "outside the campaigns folder" in output
    assert "also.yml: invalid" in output
    assert "pipe.yaml: invalid" in output and "not a regular file" in output
    entries = {Path(e["file"]).name: e for e in json.loads(cli("schedule", "--json").stdout)["campaigns"]}
    assert [e["line"] for e in entries["shadow.yaml"]["errors"]] == [None]
    assert "campaign" in entries["inside.yaml"] or "also declared" in str(entries["inside.yaml"])

    replayed = cli("scheduler", "--from", "2025-06-02", "--until", "2025-06-10")
    assert replayed.exit_code == 0, replayed.output
    assert "hashhash" not in replayed.stderr and "daemon" not in replayed.stderr and "shadow.yaml" in replayed.stderr


def test_the_service_reload_refuses_a_symlink_out_of_the_folder(shop, engine: Engine, tmp_path: Path):  # noqa: F811
    cli, folder = shop
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET, encoding="utf-8")
    (folder / "shadow.yaml").symlink_to(secret)
    service = Orchestrator(load_settings(cli.config), engine)
    changes = {Path(c.path).name: c for c in CampaignFolder(service, folder).poll()}
    shadow = changes["shadow.yaml"]
    assert shadow.kind == "invalid"
    assert [p.line for p in shadow.problems] == [None]
    assert all("hashhash" not in p.render() and "daemon" not in p.render() for p in shadow.problems)
    assert changes["weekly.yaml"].kind == "added"
