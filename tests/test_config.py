"""Configuration file, environment references and the YAML loader's positions."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from orchestrator.config import DEFAULT_DATABASE_URL, Settings, database_url, load_settings
from orchestrator.errors import InputError
from orchestrator.yamlfile import format_path, parse_yaml

REPO = Path(__file__).resolve().parent.parent


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_example_config_loads():
    settings = load_settings(REPO / "config" / "orchestrator.yaml")
    assert settings.timezone == "Asia/Shanghai"
    assert settings.currency == "CNY"
    assert settings.analysis.big_spender_threshold == Decimal("1000")
    assert settings.resolve_path(settings.templates[0]).resolve() == (REPO / "templates").resolve()


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    settings = load_settings()
    assert settings.source is None
    assert settings.tz.key == "Asia/Shanghai"
    assert [t.name for t in settings.tiers] == ["advanced", "regular"]


def test_env_references_are_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("SMTP_PASSWORD", "s3cret")
    monkeypatch.delenv("UNSET_THING", raising=False)
    path = write(
        tmp_path / "o.yaml",
        "channels:\n  email:\n    password: ${SMTP_PASSWORD}\n    host: ${UNSET_THING:-localhost}\n",
    )
    settings = load_settings(path)
    assert settings.channels["email"] == {"password": "s3cret", "host": "localhost"}


def test_missing_env_reference_names_file_and_line(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_SECRET", raising=False)
    path = write(tmp_path / "o.yaml", "timezone: Asia/Shanghai\nchannels:\n  sms:\n    token: ${NO_SUCH_SECRET}\n")
    with pytest.raises(InputError) as err:
        load_settings(path)
    assert err.value.file == str(path)
    assert err.value.line == 4
    assert "NO_SUCH_SECRET" in err.value.message


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("timezone: Mars/Olympus\n", 1, "unknown time zone"),
        ("currency: CNY\nanalysis:\n  big_spender_threshold: lots\n", 3, "big_spender_threshold"),
        ("lifecycle:\n  dormant_day: 90\n", 2, "dormant_day"),
        ("tiers:\n  - {name: gold, min_spend: 1000}\n  - {min_spend: 0}\n", 3, "name"),
        ("timezone: [unclosed\n", 1, "invalid YAML"),  # where the bracket opened
        ("- just\n- a list\n", 1, "mapping"),
        ("currency: CNY\ncurrency: USD\n", 2, "duplicate key"),
        ("dayparts:\n  lunch: 11:00-25:00\n", 2, "dayparts.lunch"),
        # a token lifetime past what dates can hold made every unsubscribe fail with OverflowError (exit 1)
        ("currency: CNY\nunsubscribe_token_days: 3000000\n", 2, "unsubscribe_token_days"),
        # int() of 4,300+ digits raised ValueError: exit 1 without a line
        ("currency: CNY\nunsubscribe_token_days: " + "9" * 5000 + "\n", 2, "5,000 characters"),
    ],
)
def test_bad_config_is_an_input_error_with_line(tmp_path, text, line, fragment):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(InputError) as err:
        load_settings(path)
    assert err.value.exit_code == 2
    assert err.value.line == line
    assert fragment in err.value.render()


def test_database_url_precedence(monkeypatch):
    monkeypatch.delenv("ORCHESTRATOR_DATABASE_URL", raising=False)
    settings = Settings()
    assert database_url(settings) == DEFAULT_DATABASE_URL
    settings.database.url = "sqlite:///from-file.db"
    assert database_url(settings) == "sqlite:///from-file.db"
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", "sqlite:///from-env.db")
    assert database_url(settings) == "sqlite:///from-env.db"
    assert database_url(settings, "sqlite:///from-flag.db") == "sqlite:///from-flag.db"


def test_yaml_positions_follow_paths():
    doc = parse_yaml("name: x\nsteps:\n  - name: a\n    offer:\n      value: 20\n", "c.yaml")
    assert doc.position(("steps", 0, "offer", "value")) == (5, 7)  # a mapping entry is located at its key
    assert doc.position(("steps", 0, "offer", "missing")) == (4, 5)  # else at its nearest ancestor
    assert doc.position(("steps", 0)) == (3, 5)
    assert format_path(("steps", 1, "offer", "coupon", "value")) == "steps[1].offer.coupon.value"


def test_yaml_loader_refuses_python_objects():
    with pytest.raises(InputError):
        parse_yaml("x: !!python/object/apply:os.system ['true']\n", "evil.yaml")


SERVE_SECRETS = (
    "timezone: Asia/Shanghai\ntemplates: []\nserve:\n  sms_hooks:\n    gateway:\n      secret: ${SMS_HOOK_SECRET}\n"
    "  email_hooks:\n    mg:\n      format: mailgun\n      secret: ${MAILGUN_SIGNING_KEY}\n"
)


def test_webhook_secrets_are_needed_by_serve_only(tmp_path, monkeypatch, db_url, engine):
    from orchestrator.web.app import create_app
    from tests.clitools import Cli

    monkeypatch.delenv("SMS_HOOK_SECRET", raising=False)
    monkeypatch.delenv("MAILGUN_SIGNING_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "o.yaml", SERVE_SECRETS)
    settings = load_settings(path)  # every other command reads the same file and works
    cli = Cli(db_url, config=str(path))
    for args in (("suppress", "list"), ("api-keys", "list")):
        result = cli(*args)
        assert result.exit_code == 0, result.output
    with pytest.raises(InputError) as err:
        create_app(settings, engine)
    assert "SMS_HOOK_SECRET is not set" in err.value.render() and "MAILGUN_SIGNING_KEY" in err.value.render()
    result = cli("serve", "--port", "1")
    assert result.exit_code == 2 and "SMS_HOOK_SECRET is not set" in result.output, result.output
    assert "o.yaml" in result.output and ":6" in result.output  # the file and the line of the reference
