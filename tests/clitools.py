"""Running the command line in-process, as the tests do."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from orchestrator.cli import cli


class Cli:
    """Runs ``orchestrator`` in-process against one database and checks it never prints a traceback."""

    def __init__(self, db_url: str | None, config: str | None = None):
        self.db_url = db_url
        self.config = config

    def __call__(self, *args: str, input: str | None = None) -> Result:
        argv: list[str] = []
        if self.config:
            argv += ["--config", self.config]
        if self.db_url:
            argv += ["--db", self.db_url]
        result = CliRunner().invoke(cli, [*argv, *map(str, args)], input=input, catch_exceptions=True)
        output = result.output + (result.stderr if result.stderr_bytes is not None else "")
        assert "Traceback" not in output, output
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result


def email_outbox_config(folder: Path) -> Path:
    """The config most CLI tests run with: shop time zone, no template folders, e-mail to ``folder/outbox``."""
    path = folder / "orchestrator.yaml"
    path.write_text(
        "timezone: Asia/Shanghai\ntemplates: []\nchannels:\n  email:\n    from: Shop <shop@example.com>\n"
        f"    outbox: {folder / 'outbox'}\n",
        encoding="utf-8",
    )
    return path
