"""Running the command line in-process, as the tests do."""

from __future__ import annotations

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
