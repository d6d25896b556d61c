"""No network access follows from a template: ``@import`` in a ``<style>`` (which cssutils would fetch while
premailer inlines, allow_network or not) and remote stylesheets are stripped with a warning, and a real HTTP
server on 127.0.0.1 sees no request during validate, dry-run or run, however the @import is spelt."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests import dataset
from tests.clitools import Cli
from tests.dataset import AT
from tests.httpserver import Response, serve

CAMPAIGN = """\
name: styled
segment: {frequency: {gte: 1}}
steps:
  - name: one
    message:
      email:
        subject: "Hi {{ customer.name }}"
        template: styled.html.j2
"""

TEMPLATE = """<!DOCTYPE html>
<html><head>
<link rel="stylesheet" href="{url}/linked.css">
<style>
@import url("{url}/imported.css");
@import '{url}/quoted.css' screen;
p {{ color: #333; }}
</style>
</head>
<body><p>您好 {{{{ customer.name }}}}</p>
<p style="background-image: url('{url}/inline-bg.png')">x</p></body></html>
"""


def test_validate_dry_run_and_run_make_no_request(engine: Engine, db_url: str, tmp_path: Path, monkeypatch):
    dataset.load(engine)
    monkeypatch.chdir(tmp_path)
    with serve(lambda request: Response(200, b"p { color: red; }", {"Content-Type": "text/css"})) as server:
        (tmp_path / "styled.html.j2").write_text(TEMPLATE.format(url=server.url), encoding="utf-8")
        (tmp_path / "campaign.yaml").write_text(CAMPAIGN, encoding="utf-8")
        (tmp_path / "orchestrator.yaml").write_text(
            "templates: []\nchannels:\n  email:\n    from: Shop <shop@example.com>\n", encoding="utf-8"
        )
        cli = Cli(db_url, config=str(tmp_path / "orchestrator.yaml"))
        campaign = str(tmp_path / "campaign.yaml")
        validated = cli("validate", campaign)
        assert validated.exit_code == 0, validated.output
        assert "@import" in validated.output and "removed" in validated.output
        assert "linked.css" in validated.output
        assert cli("dry-run", campaign, "--at", AT.isoformat()).exit_code == 0
        ran = cli("run", campaign, "--at", AT.isoformat(), "--json")
        assert ran.exit_code == 0, ran.output
        assert server.requests == [], [request.path for request in server.requests]
    sent = list((tmp_path / "outbox" / "email").glob("*.eml"))
    assert sent
    body = sent[0].read_bytes()
    assert b"@import" not in body and b"linked.css" not in body


EVASIONS = [  # (the <style> element, whether it is an @import that validate should warn about)
    ("<style>@\\69mport url({url}/escaped.css);\np {{ color: #333; }}</style>", True),  # a CSS escape
    ("<style>@IMPORT url({url}/upper.css);\np {{ color: #333; }}</style>", True),
    ('<style>@import "{url}/string.css";\np {{ color: #333; }}</style>', True),
    ("<style>@im/**/port url({url}/comment.css);\np {{ color: #333; }}</style>", False),  # not CSS's @import
    ("<style>@import url({url}/closed-oddly.css);\np {{ color: #333; }}</style x>", True),
    ("<style>@import url({url}/unclosed.css);\np {{ color: #333; }}", True),
]


@pytest.mark.parametrize(("style", "is_import"), EVASIONS)
def test_no_spelling_of_import_makes_a_request(tmp_path: Path, monkeypatch, style, is_import):
    monkeypatch.chdir(tmp_path)
    with serve(lambda request: Response(200, b"p { color: red; }", {"Content-Type": "text/css"})) as server:
        template = "<html><head>" + style.format(url=server.url) + "</head><body><p>{{ customer.name }}</p></body>"
        (tmp_path / "styled.html.j2").write_text(template + "</html>\n", encoding="utf-8")
        (tmp_path / "campaign.yaml").write_text(CAMPAIGN, encoding="utf-8")
        (tmp_path / "orchestrator.yaml").write_text(
            "templates: []\nchannels:\n  email:\n    from: Shop <shop@example.com>\n", encoding="utf-8"
        )
        validated = Cli(None, config=str(tmp_path / "orchestrator.yaml"))("validate", str(tmp_path / "campaign.yaml"))
        assert validated.exit_code == 0, validated.output
        assert server.requests == [], [request.path for request in server.requests]
        if is_import:  # and validate still says why the import is gone
            output = validated.output
            assert "styled.html.j2" in output and ("not fetched" in output or "removed" in output), output
