"""Unsubscribe links end to end, on SQLite and PostgreSQL: the signing key (file, environment, rotation), strict
token decoding, the token lifetime, the ``all`` channel, and links given whole to ``suppress unsubscribe``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from orchestrator.db.models import Delivery, Suppression
from orchestrator.timeutil import utcnow
from orchestrator.unsubscribe import PREVIOUS_ENV, SECRET_ENV, SECRET_FILE, sign
from tests import dataset
from tests.clitools import Cli
from tests.dataset import AT

KEY = "k" * 20 + "-test-signing-key-0123456789"
CAMPAIGN = """\
name: unsubscribe-check
segment: {frequency: {gte: 1}}
message:
  email:
    subject: "Hi {{ customer.name }}"
    text: "Hello {{ customer.name }}, bye: {{ unsubscribe_url }}"
"""


class Env:
    def __init__(self, cli: Cli, engine: Engine, config_dir: Path, campaign: Path, outbox: Path):
        self.cli, self.engine, self.config_dir, self.campaign, self.outbox = cli, engine, config_dir, campaign, outbox

    @property
    def key_file(self) -> Path:
        return self.config_dir / SECRET_FILE

    def ok(self, *args: str):
        result = self.cli(*args)
        assert result.exit_code == 0, result.output
        return result

    def suppressions(self) -> list:
        with self.engine.connect() as conn:
            return conn.execute(select(Suppression.customer_pk, Suppression.channel, Suppression.reason)).all()

    def deliveries(self) -> int:
        with self.engine.connect() as conn:
            return len(conn.execute(select(Delivery.id)).all())


@pytest.fixture
def env(engine: Engine, db_url: str, tmp_path: Path, monkeypatch) -> Env:
    dataset.load(engine)
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    outbox = tmp_path / "outbox"
    (config_dir / "orchestrator.yaml").write_text(
        "timezone: Asia/Shanghai\ntemplates: []\nunsubscribe_url: https://shop.example.com/u\nchannels:\n"
        f"  email:\n    from: Shop <shop@example.com>\n    outbox: {outbox / 'email'}\n",
        encoding="utf-8",
    )
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(CAMPAIGN, encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.delenv(PREVIOUS_ENV, raising=False)
    return Env(Cli(db_url, config=str(config_dir / "orchestrator.yaml")), engine, config_dir, campaign, outbox)


def write_key(env: Env, text: str = KEY, mode: int = 0o600) -> None:
    env.key_file.write_text(text, encoding="utf-8")
    env.key_file.chmod(mode)


# --- the key ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["", "  \n", "short-key"])
def test_an_empty_or_short_key_file_is_refused(env: Env, content: str):
    write_key(env, content)
    forged = sign(content.strip().encode(), "C01", "email")  # what anyone can sign with a key they can guess
    result = env.cli("suppress", "unsubscribe", forged)
    assert result.exit_code == 2, result.output
    assert str(env.key_file) in result.output and "too short" in result.output
    assert env.suppressions() == []
    result = env.cli("run", str(env.campaign), "--at", AT.isoformat())
    assert result.exit_code == 2 and str(env.key_file) in result.output
    assert env.deliveries() == 0


def test_a_short_key_in_the_environment_is_refused(env: Env, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "abc")
    result = env.cli("run", str(env.campaign), "--at", AT.isoformat())
    assert result.exit_code == 2 and SECRET_ENV in result.output and "too short" in result.output
    assert env.deliveries() == 0


def test_a_missing_key_file_is_an_error_and_is_not_recreated(env: Env):
    result = env.cli("run", str(env.campaign), "--at", AT.isoformat())
    assert result.exit_code == 2, result.output
    assert str(env.key_file) in result.output and "restore" in result.output and "init" in result.output
    assert not env.key_file.exists() and env.deliveries() == 0
    result = env.cli("suppress", "unsubscribe", sign(KEY.encode(), "C01", "email"))
    assert result.exit_code == 2 and "restore" in result.output
    assert not env.key_file.exists()


def test_init_creates_a_private_key_once(env: Env):
    env.ok("init")
    assert stat.S_IMODE(env.key_file.stat().st_mode) == 0o600
    key = env.key_file.read_text()
    assert len(key.strip()) >= 32
    env.ok("init")
    assert env.key_file.read_text() == key


def test_a_key_file_readable_by_others_is_warned_about(env: Env):
    write_key(env, mode=0o644)
    result = env.ok("suppress", "unsubscribe", sign(KEY.encode(), "C01", "email"))
    assert "warning" in result.stderr and str(env.key_file) in result.stderr and "chmod 600" in result.stderr


def test_validate_needs_no_key(env: Env):
    env.ok("validate", str(env.campaign))
    assert not env.key_file.exists()


def test_dry_run_without_a_key_says_so_and_with_one_signs_genuine_links(env: Env):
    result = env.ok("dry-run", str(env.campaign), "--at", AT.isoformat(), "--json")
    assert "no signing key" in result.stderr and not env.key_file.exists()
    write_key(env)
    data = json.loads(env.ok("dry-run", str(env.campaign), "--at", AT.isoformat(), "--json").stdout)
    link = next(s["parts"]["text"].split("bye: ")[1].strip() for s in data["samples"] if s["channel"] == "email")
    unsubscribed = json.loads(env.ok("suppress", "unsubscribe", link, "--json").stdout)
    assert unsubscribed["added"] is True


# --- rotation --------------------------------------------------------------------------------------------------------


def test_previous_keys_from_the_environment_still_verify(env: Env, monkeypatch):
    old = "o" * 40
    token = sign(old.encode(), "C01", "email")
    write_key(env)
    assert env.cli("suppress", "unsubscribe", token).exit_code == 2
    monkeypatch.setenv(PREVIOUS_ENV, f"{'x' * 40}, {old}")
    assert json.loads(env.ok("suppress", "unsubscribe", token, "--json").stdout)["added"] is True


def test_init_rotate_key_keeps_the_old_key_as_a_previous_one(env: Env):
    env.ok("init")
    old = env.key_file.read_text().strip()
    token = sign(old.encode(), "C01", "email")
    result = env.ok("init", "--rotate-key")
    assert "rotated" in result.output
    assert env.key_file.read_text().strip() != old
    previous = env.config_dir / f"{SECRET_FILE}.previous"
    assert old in previous.read_text() and stat.S_IMODE(previous.stat().st_mode) == 0o600
    assert json.loads(env.ok("suppress", "unsubscribe", token, "--json").stdout)["added"] is True


# --- tokens ----------------------------------------------------------------------------------------------------------


def _alternative_last_character(text: str) -> str:
    """Another base64url character that decodes to the same bytes (only the unused low bits differ)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return text[:-1] + alphabet[alphabet.index(text[-1]) ^ 1]


def _with_url_alphabet_characters() -> str:
    for n in range(1, 48):
        token = sign(KEY.encode(), f"C{n:02d}", "email")
        if "-" in token or "_" in token:
            return token
    raise AssertionError("no token with - or _")


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda t: t[:3] + "!" + t[3:], id="junk-character"),
        pytest.param(lambda t: t.replace(".", "*."), id="junk-before-dot"),
        pytest.param(lambda t: t + "==", id="extra-padding"),
        pytest.param(lambda t: t.replace(".", "==."), id="padding-inside"),
        pytest.param(lambda t: t.replace("-", "+").replace("_", "/"), id="standard-alphabet"),
        pytest.param(_alternative_last_character, id="changed-final-character"),
        pytest.param(lambda t: t + ".AAAA", id="extra-part"),
    ],
)
def test_tokens_are_decoded_strictly(env: Env, mangle):
    write_key(env)
    genuine = _with_url_alphabet_characters()
    mangled = mangle(genuine)
    assert mangled != genuine
    result = env.cli("suppress", "unsubscribe", mangled)
    assert result.exit_code == 2, result.output
    assert "not genuine" in result.output
    assert env.suppressions() == []


def test_tokens_expire_after_the_configured_lifetime(env: Env):
    write_key(env)
    now = utcnow()
    stale = sign(KEY.encode(), "C01", "email", issued=now - timedelta(days=366))
    result = env.cli("suppress", "unsubscribe", stale)
    assert result.exit_code == 2 and "expired" in result.output and "365 days" in result.output
    assert env.suppressions() == []
    recent = sign(KEY.encode(), "C01", "email", issued=now - timedelta(days=300))
    env.ok("suppress", "unsubscribe", recent)
    config = env.config_dir / "orchestrator.yaml"
    config.write_text(config.read_text() + "unsubscribe_token_days: 30\n", encoding="utf-8")
    result = env.cli("suppress", "unsubscribe", sign(KEY.encode(), "C02", "email", issued=now - timedelta(days=31)))
    assert result.exit_code == 2 and "30 days" in result.output


def test_tokens_sent_before_issue_dates_were_signed_are_still_honoured(env: Env):
    """The earlier format (customer and channel, no date): links already in mailboxes keep working."""
    write_key(env)
    payload = b"C01\x1femail"
    mac = hmac.new(KEY.encode(), payload, hashlib.sha256).digest()[:16]
    legacy = ".".join(base64.urlsafe_b64encode(p).rstrip(b"=").decode() for p in (payload, mac))
    assert json.loads(env.ok("suppress", "unsubscribe", legacy, "--json").stdout)["channel"] == "email"


def test_a_token_for_all_channels_suppresses_every_channel(env: Env):
    write_key(env)
    data = json.loads(env.ok("suppress", "unsubscribe", sign(KEY.encode(), "C01", "all"), "--json").stdout)
    assert data["channel"] == "all"
    [(pk, channel, reason)] = env.suppressions()
    assert (channel, reason) == (None, "unsubscribed")  # NULL: the all-channel entry the policies match
    env.ok("suppress", "unsubscribe", sign(KEY.encode(), "C01", "all"))
    assert len(env.suppressions()) == 1
    env.ok("run", str(env.campaign), "--at", AT.isoformat())
    with env.engine.connect() as conn:
        states = conn.execute(select(Delivery.state, Delivery.reason).where(Delivery.customer_pk == pk)).all()
    assert states and all(s == ("skipped", "suppressed") for s in states)


@pytest.mark.parametrize(
    "link",
    [
        "https://shop.example.com/unsubscribe?token={token}",
        "https://shop.example.com/unsubscribe?c=1&token={token}&x=2",
        "https://shop.example.com/u/{token}",
        "https://shop.example.com/u/{token}/",
        "  {token}\n",
    ],
)
def test_unsubscribe_accepts_the_whole_link(env: Env, link: str):
    write_key(env)
    token = sign(KEY.encode(), "C01", "email")
    data = json.loads(env.ok("suppress", "unsubscribe", link.format(token=token), "--json").stdout)
    assert (data["customer_id"], data["channel"], data["added"]) == ("C01", "email", True)
