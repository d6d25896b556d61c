"""``orchestrator init``: config file and database schema in the working directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from orchestrator.config import DEFAULT_CONFIG_NAME
from orchestrator.db.engine import migrate
from orchestrator.output import emit_json
from orchestrator.unsubscribe import secret_key

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "default_config.yaml"


def register(cli: click.Group) -> None:
    cli.add_command(init)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def init(app, as_json: bool) -> None:
    """Create the config file (if missing) and create or upgrade the database."""
    created_config = None
    if app.config_path is None and not Path(DEFAULT_CONFIG_NAME).exists():
        shutil.copyfile(DEFAULT_CONFIG, DEFAULT_CONFIG_NAME)
        created_config = DEFAULT_CONFIG_NAME
    engine = app.raw_engine()
    revision = migrate(engine)
    secret_key(app.settings.base_dir)  # created once here, so links signed by every later run stay valid
    url = engine.url.render_as_string(hide_password=True)
    result = {"config": app.settings.source or created_config, "database": url, "revision": revision}
    if as_json:
        emit_json(result)
        return
    if created_config:
        click.echo(f"created {created_config}")
    click.echo(f"database {url} is at revision {revision}")
