"""``orchestrator serve`` (the web service, ``orchestrator.web``) and ``orchestrator api-keys create|list|revoke``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from orchestrator import api_keys
from orchestrator.errors import InputError
from orchestrator.logs import configure_json_logging, remove_handler
from orchestrator.output import emit_json, local_time

LOG_ENV = "ORCHESTRATOR_SERVE_LOG_FILE"  # how the parent tells worker processes where to log


def register(cli: click.Group) -> None:
    cli.add_command(serve_command)
    cli.add_command(api_keys_group)


@click.command("serve")
@click.option("--host", help="Address to listen on (default: the config's serve.host, 127.0.0.1).")
@click.option("--port", type=int, help="Port (default: serve.port, 8080).")
@click.option("--workers", type=int, help="Server processes sharing the port (default: serve.workers, 1).")
@click.option("--log-file", metavar="PATH", help="Append the JSON request log here (default: serve.log_file, stderr).")
@click.pass_obj
def serve_command(app, host: str | None, port: int | None, workers: int | None, log_file: str | None) -> None:
    """Serve the unsubscribe pages, the inbound SMS and e-mail hooks, the point-of-sale coupon API, /healthz and
    /metrics until stopped (SIGINT / SIGTERM). Put it behind a reverse proxy for TLS (see docs/serve.md)."""
    import uvicorn

    app.settings.require_serve_secrets()  # before anything else: the one command that needs them
    config = app.settings.serve
    port = config.port if port is None else port
    workers = config.workers if workers is None else workers
    if not 0 < port < 65536:
        raise InputError(f"--port must be between 1 and 65535, not {port}")
    if not 0 < workers <= 64:
        raise InputError(f"--workers must be between 1 and 64, not {workers}")
    engine = app.engine  # refuses a database that is missing or not migrated, before anything listens
    target = log_file or (str(app.settings.resolve_path(config.log_file)) if config.log_file else None)
    handler = configure_json_logging(target)
    logging.getLogger("uvicorn").addHandler(handler)
    options = {
        "host": host or config.host,
        "port": port,
        "access_log": False,  # our own JSON line per request replaces it
        "log_config": None,
        "proxy_headers": True,
        "forwarded_allow_ips": config.forwarded_allow_ips,
        "server_header": False,
    }
    logging.getLogger("orchestrator.serve").info(
        "service starting",
        extra={"fields": {"host": options["host"], "port": port, "workers": workers, "database": engine.dialect.name}},
    )
    try:
        if workers == 1:
            from orchestrator.web.app import create_app

            uvicorn.run(create_app(app.settings, engine), **options)
        else:
            # each worker is a fresh process building the app from the same config and database
            if app.config_path:
                os.environ["ORCHESTRATOR_CONFIG"] = str(Path(app.config_path).resolve())
            os.environ["ORCHESTRATOR_DATABASE_URL"] = engine.url.render_as_string(hide_password=False)
            if target:
                os.environ[LOG_ENV] = target
            uvicorn.run("orchestrator.cli.serve:worker_app", factory=True, workers=workers, **options)
    finally:
        logging.getLogger("uvicorn").removeHandler(handler)
        remove_handler(handler)


def worker_app():
    """One worker process's application (``uvicorn --factory``): the config and database its parent was given
    (``ORCHESTRATOR_CONFIG``, ``ORCHESTRATOR_DATABASE_URL``), logging where its parent does."""
    from orchestrator.cli.context import AppContext
    from orchestrator.web.app import create_app

    handler = configure_json_logging(os.environ.get(LOG_ENV) or None)
    logging.getLogger("uvicorn").addHandler(handler)
    os.umask(0o077)
    context = AppContext()
    return create_app(context.settings, context.engine)


# --- api-keys --------------------------------------------------------------------------------------------------


@click.group("api-keys")
def api_keys_group() -> None:
    """API keys for the points of sale calling `orchestrator serve` (only a hash of each key is stored)."""


@api_keys_group.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    metavar="SCOPE",
    help=f"What the key may do (repeatable): {', '.join(api_keys.SCOPES)}.",
)
@click.pass_obj
def create_command(app, name: str, scopes: tuple[str, ...]) -> None:
    """Create a key and print it once: store it in the till's configuration now, it cannot be shown again."""
    parsed = api_keys.parse_scopes(scopes)
    with app.engine.begin() as conn:
        key = api_keys.create(conn, name, parsed)
    click.echo(key)
    click.echo(f"created API key {name} ({', '.join(parsed)}); it is shown only this once", err=True)


@api_keys_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_obj
def list_command(app, as_json: bool) -> None:
    """The keys: name, prefix, scopes, when created, last used and revoked."""
    with app.engine.connect() as conn:
        rows = api_keys.listing(conn)
    if as_json:
        emit_json({"api_keys": rows})
        return
    if not rows:
        click.echo("no API keys (create one with: orchestrator api-keys create NAME --scope coupons:redeem)")
        return
    tz = app.settings.tz
    for row in rows:
        state = f"revoked {local_time(row['revoked_at'], tz)}" if row["revoked_at"] else "active"
        used = local_time(row["last_used_at"], tz) if row["last_used_at"] else "never"
        click.echo(
            f"{row['name']}  {row['prefix']}  {','.join(row['scopes'])}  created {local_time(row['created_at'], tz)}"
            f"  last used {used}  {state}"
        )


@api_keys_group.command("revoke")
@click.argument("name")
@click.pass_obj
def revoke_command(app, name: str) -> None:
    """Revoke a key at once, for every server process."""
    with app.engine.begin() as conn:
        api_keys.revoke(conn, name)
    click.echo(f"revoked API key {name}")
