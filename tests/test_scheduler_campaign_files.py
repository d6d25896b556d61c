"""The campaigns folder as ``schedule`` and ``scheduler --from --until`` read it: a file that disappears while the
folder is being loaded - on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.campaign import loader
from tests.test_scheduler_replay import WEEKLY, shop  # noqa: F401 - the fixture


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
