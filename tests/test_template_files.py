"""Only template files are templates: a campaign folder also holds the signing key, the config, a database and
.env files, none of which a campaign may show in a sample by naming it as its template."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import Settings
from orchestrator.errors import InputError
from orchestrator.rendering import TemplateLoader
from tests.clitools import Cli

KEY = "k3y-that-must-never-show"

CAMPAIGN = """\
name: leak
segment: {frequency: {gte: 1}}
steps:
  - name: one
    message:
      sms:
        template: {template}
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "orchestrator.secret").write_text(KEY, encoding="utf-8")
    (tmp_path / ".env").write_text(f"ORCHESTRATOR_SECRET={KEY}\n", encoding="utf-8")
    (tmp_path / "orchestrator.yaml").write_text("templates: []\n", encoding="utf-8")
    (tmp_path / "orchestrator.db").write_bytes(b"SQLite format 3\x00" + KEY.encode())
    (tmp_path / "notes.txt").write_text(KEY, encoding="utf-8")
    (tmp_path / "ok.txt.j2").write_text("您好{{ customer.name }}", encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("name", ["orchestrator.secret", ".env", "orchestrator.yaml", "orchestrator.db", "notes.md"])
def test_files_without_a_template_suffix_are_refused(folder, name):
    (folder / "notes.md").write_text(KEY, encoding="utf-8")
    loader = TemplateLoader([]).for_campaign(folder / "campaign.yaml")
    with pytest.raises(InputError, match="not a template file") as caught:
        loader.load(name)
    assert ".j2" in caught.value.hint and "template_suffixes" in caught.value.hint
    assert KEY not in caught.value.render()


def test_includes_are_held_to_the_same_rule(folder):
    (folder / "inc.txt.j2").write_text("{% include 'orchestrator.secret' %}", encoding="utf-8")
    loader = TemplateLoader([folder])
    with pytest.raises(InputError) as caught:
        loader.load("inc.txt.j2").render({})
    assert "not a template file" in caught.value.message and KEY not in caught.value.render()


def test_the_key_config_and_database_are_refused_even_with_a_template_suffix(folder):
    (folder / "shop.db").write_text(KEY, encoding="utf-8")
    settings = Settings(base_dir=str(folder), template_suffixes=[".j2", ".secret", ".yaml", ".db"])
    settings.source = str(folder / "orchestrator.yaml")
    settings.database = settings.database.model_copy(update={"url": f"sqlite:///{folder / 'shop.db'}"})
    loader = TemplateLoader.from_settings(settings).for_campaign(folder / "campaign.yaml")
    for name in ("orchestrator.secret", "orchestrator.yaml", "shop.db"):
        with pytest.raises(InputError, match=r"never a template|is not a template file") as caught:
            loader.load(name)
        assert KEY not in caught.value.render()
    with pytest.raises(InputError, match="never a template"):
        loader.load("shop.db")
    assert loader.load("ok.txt.j2").render({"customer": {"name": "张伟"}}) == "您好张伟"


def test_suffixes_are_configurable(folder):
    settings = Settings(base_dir=str(folder), template_suffixes=[".txt"])
    loader = TemplateLoader.from_settings(settings).for_campaign(folder / "campaign.yaml")
    assert loader.load("notes.txt").render({}) == KEY  # the operator said .txt files are templates
    with pytest.raises(InputError, match="not a template file"):
        loader.load("ok.txt.j2")


@pytest.mark.parametrize("template", ["orchestrator.secret", ".env"])
def test_dry_run_never_shows_the_signing_key(folder, template, db_url, monkeypatch):
    monkeypatch.chdir(folder)
    (folder / "campaign.yaml").write_text(CAMPAIGN.replace("{template}", template), encoding="utf-8")
    cli = Cli(db_url, config=str(folder / "orchestrator.yaml"))
    result = cli("dry-run", str(folder / "campaign.yaml"), "--json")
    assert result.exit_code == 2, result.output
    assert KEY not in result.output and "not a template file" in result.output


# --- links: the file a template name points at is judged, not only the name -----------------------------------

OLD_KEY = "old-k3y-that-must-never-show"


@pytest.fixture
def config_folder(folder: Path) -> Path:
    """``folder`` as an operator's config folder: rotated key, config, SQLite database with its -wal and -shm."""
    (folder / "orchestrator.secret.previous").write_text(OLD_KEY + "\n", encoding="utf-8")
    (folder / "notes.md").write_text(KEY, encoding="utf-8")
    (folder / "orchestrator.yaml").write_text(f"templates: []\ndatabase:\n  url: sqlite:///{folder / 'shop.db'}\n")
    for name in ("shop.db", "shop.db-wal", "shop.db-shm"):
        (folder / name).write_text(KEY, encoding="utf-8")
    return folder


def _loader(folder: Path, campaign_folder: Path) -> TemplateLoader:
    settings = Settings(base_dir=str(folder))
    settings.source = str(folder / "orchestrator.yaml")
    settings.database = settings.database.model_copy(update={"url": f"sqlite:///{folder / 'shop.db'}"})
    return TemplateLoader.from_settings(settings).for_campaign(campaign_folder / "campaign.yaml")


@pytest.mark.parametrize(
    "target", ["orchestrator.secret.previous", "orchestrator.secret", ".env", "orchestrator.yaml", "notes.md"]
)
def test_a_symlink_is_judged_by_the_file_it_points_at(config_folder, target):
    (config_folder / "old.txt").symlink_to(target)
    with pytest.raises(InputError, match=r"not a template file|never a template") as caught:
        _loader(config_folder, config_folder).load("old.txt").render({})
    assert KEY not in caught.value.render() and OLD_KEY not in caught.value.render()


@pytest.mark.parametrize(
    "target", ["orchestrator.secret", "orchestrator.secret.previous", ".env", "orchestrator.yaml", "shop.db-wal"]
)
def test_a_hard_link_to_a_protected_file_is_refused(config_folder, tmp_path_factory, target):
    campaigns = tmp_path_factory.mktemp("campaigns")  # the campaign elsewhere, on the same file system
    (campaigns / "key.txt").hardlink_to(config_folder / target)
    with pytest.raises(InputError, match=r"never a template|hard link") as caught:
        _loader(config_folder, campaigns).load("key.txt").render({})
    assert KEY not in caught.value.render() and OLD_KEY not in caught.value.render()


def test_includes_and_imports_follow_the_same_rules(config_folder):
    (config_folder / "old.txt").symlink_to("orchestrator.secret.previous")
    (config_folder / "same.txt").hardlink_to(config_folder / "orchestrator.secret")
    loader = TemplateLoader([config_folder])
    for tag in ("{% include 'old.txt' %}", "{% import 'old.txt' as m %}", "{% include 'same.txt' %}"):
        (config_folder / "inc.txt.j2").write_text(tag, encoding="utf-8")
        with pytest.raises(InputError) as caught:
            loader.load("inc.txt.j2").render({})
        assert KEY not in caught.value.render() and OLD_KEY not in caught.value.render(), tag


def test_a_symlink_to_a_template_still_works(config_folder):
    (config_folder / "alias.txt.j2").symlink_to("ok.txt.j2")
    loaded = _loader(config_folder, config_folder).load("alias.txt.j2")
    assert loaded.render({"customer": {"name": "张伟"}}) == "您好张伟"


def test_dry_run_never_shows_a_rotated_key_through_a_symlink(config_folder, db_url, monkeypatch):
    monkeypatch.chdir(config_folder)
    (config_folder / "old.txt").symlink_to("orchestrator.secret.previous")
    (config_folder / "campaign.yaml").write_text(CAMPAIGN.replace("{template}", "old.txt"), encoding="utf-8")
    cli = Cli(db_url, config=str(config_folder / "orchestrator.yaml"))
    result = cli("dry-run", str(config_folder / "campaign.yaml"), "--sample", "1")
    assert result.exit_code == 2, result.output
    assert OLD_KEY not in result.output and "old.txt" in result.output
