"""The ``orchestrator`` command line.

One module per command family; each exposes ``register(cli)``. Plugins add commands through the
``register_commands`` hook. Errors become exit statuses here, once: 2 for invalid input, 1 for runtime
failures, never a traceback (set ``ORCHESTRATOR_DEBUG=1`` to see one); 141 (as for a Unix tool stopped by SIGPIPE)
when the reader of the output went away, e.g. ``orchestrator deliveries | head``, without a message. Personal data
is masked in error messages. The process runs with umask 077: every file it creates is readable by its owner only.
"""

from __future__ import annotations

import os
import sys

import click

from orchestrator import __version__
from orchestrator.cli import analyze as analyze_commands
from orchestrator.cli import campaigns as campaign_commands
from orchestrator.cli import coupons as coupon_commands
from orchestrator.cli import data as data_commands
from orchestrator.cli import deliveries as delivery_commands
from orchestrator.cli import demo as demo_commands
from orchestrator.cli import dispatch as dispatch_commands
from orchestrator.cli import plugins as plugin_commands
from orchestrator.cli import report as report_commands
from orchestrator.cli import runs as run_listing_commands
from orchestrator.cli import scheduler as scheduler_commands
from orchestrator.cli import serve as serve_commands
from orchestrator.cli import setup as setup_commands
from orchestrator.cli import worker as worker_commands
from orchestrator.cli.context import AppContext
from orchestrator.errors import OrchestratorError
from orchestrator.masking import describe_unexpected
from orchestrator.output import BROKEN_PIPE_EXIT, silence_stdout

PRIVATE_UMASK = 0o077


class OrchestratorGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OrchestratorError as exc:
            click.echo(exc.render(), err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError:  # the reader stopped early (`| head`): not an error worth a message
            silence_stdout()
            ctx.exit(BROKEN_PIPE_EXIT)
        except Exception as exc:
            if os.environ.get("ORCHESTRATOR_DEBUG"):
                raise
            click.echo(f"error: {describe_unexpected(exc)}", err=True)
            click.echo("  hint: set ORCHESTRATOR_DEBUG=1 to see the traceback", err=True)
            ctx.exit(1)


@click.group(cls=OrchestratorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    envvar="ORCHESTRATOR_CONFIG",
    type=click.Path(dir_okay=False),
    help="Config file (env ORCHESTRATOR_CONFIG; default ./orchestrator.yaml if present).",
)
@click.option(
    "--db",
    "db_url",
    envvar="ORCHESTRATOR_DATABASE_URL",
    help="Database URL (env ORCHESTRATOR_DATABASE_URL; default sqlite:///orchestrator.db).",
)
@click.version_option(__version__, prog_name="orchestrator")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, db_url: str | None) -> None:
    """Marketing campaigns as YAML: select a segment, apply an offer, render, dispatch.

    \b
    Start with:
      orchestrator init
      orchestrator demo-data --preset seed-shop
      orchestrator analyze
    """
    # everything this process creates (the SQLite database and its -wal / -shm files, outbox files, call lists,
    # reject files, the signing key) holds personal data or secrets: owner-only, whatever the caller's umask
    os.umask(PRIVATE_UMASK)
    ctx.obj = AppContext(config_path=config_path, db_url=db_url)
    ctx.call_on_close(ctx.obj.close)


for family in (
    setup_commands,
    data_commands,
    demo_commands,
    analyze_commands,
    campaign_commands,
    dispatch_commands,
    scheduler_commands,
    serve_commands,
    coupon_commands,
    delivery_commands,
    run_listing_commands,
    report_commands,
    plugin_commands,
    worker_commands,
):
    family.register(cli)


def _register_plugin_commands() -> None:
    from orchestrator.plugin_manager import call_each, manager

    pm = manager()
    # a plugin whose register_commands raises is reported like one that failed to import; the others still add theirs
    pm.failures.extend(call_each(pm, "register_commands", cli=cli))


_register_plugin_commands()


def warn_about_failed_plugins() -> None:
    """One line on stderr per plugin left out; the command itself still runs."""
    from orchestrator.plugin_manager import manager

    for failure in manager().failures:
        click.echo(failure.warning(), err=True)


def main() -> None:
    warn_about_failed_plugins()
    sys.exit(cli.main(prog_name="orchestrator"))
