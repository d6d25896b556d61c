"""``orchestrator init``: config file and database schema in the working directory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import click

from orchestrator.config import DEFAULT_CONFIG_NAME
from orchestrator.db.engine import migrate
from orchestrator.errors import InputError
from orchestrator.output import emit_json
from orchestrator.unsubscribe import PREVIOUS_ENV, SECRET_ENV, create_key, key_path, load_keys, rotate_key

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "default_config.yaml"


def register(cli: click.Group) -> None:
    cli.add_command(init)


@click.command()
@click.option(
    "--rotate-key",
    "rotate_key_",
    is_flag=True,
    help="Replace the unsubscribe signing key; the old one moves to orchestrator.secret.previous and still verifies.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def init(app, rotate_key_: bool, as_json: bool) -> None:
    """Create the config file (if missing), create or upgrade the database, and create the unsubscribe
    signing key (orchestrator.secret, mode 600) if there is none."""
    created_config = None
    if app.config_path is None and not Path(DEFAULT_CONFIG_NAME).exists():
        shutil.copyfile(DEFAULT_CONFIG, DEFAULT_CONFIG_NAME)
        created_config = DEFAULT_CONFIG_NAME
    # the key is created here only, once: links signed by every later run stay valid
    base_dir = app.settings.base_dir
    if os.environ.get(SECRET_ENV):
        if rotate_key_:
            raise InputError(
                f"--rotate-key: the signing key comes from {SECRET_ENV}",
                hint=f"set a new {SECRET_ENV} and list the old one in {PREVIOUS_ENV}",
            )
        load_keys(base_dir)  # checked, not written
        key_state = "environment"
    elif rotate_key_:
        previous = rotate_key(base_dir)
        key_state = "rotated"
    else:
        key_state = "created" if create_key(base_dir) else "kept"
    engine = app.raw_engine()
    revision = migrate(engine)
    url = engine.url.render_as_string(hide_password=True)
    result = {
        "config": app.settings.source or created_config,
        "database": url,
        "revision": revision,
        "secret_key": {"file": None if key_state == "environment" else str(key_path(base_dir)), "state": key_state},
    }
    if as_json:
        emit_json(result)
        return
    if created_config:
        click.echo(f"created {created_config}")
    click.echo(f"database {url} is at revision {revision}")
    if key_state == "created":
        click.echo(f"created the unsubscribe signing key {key_path(base_dir)} (keep a backup; never share it)")
    elif key_state == "rotated":
        click.echo(f"rotated the unsubscribe signing key {key_path(base_dir)}; links signed before still verify")
        click.echo(f"  (previous keys: {previous}; delete a line to retire its links)")
