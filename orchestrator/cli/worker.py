"""``orchestrator worker``: a Celery worker for the config's ``executor:`` (kind celery), planning and sending runs
that ``orchestrator run`` and the scheduler start anywhere. See docs/deployment.md."""

from __future__ import annotations

import os

import click

from orchestrator.errors import InputError


def register(cli: click.Group) -> None:
    cli.add_command(worker)


@click.command()
@click.option(
    "--concurrency",
    type=click.IntRange(1, 512),
    help="Tasks run at once (pool processes or threads). Default: the number of CPUs.",
)
@click.option("--queues", metavar="Q1,Q2", help="Queues to take tasks from. Default: executor.queue.")
@click.option(
    "--pool",
    type=click.Choice(["prefork", "threads", "solo"]),
    default="prefork",
    show_default=True,
    help="prefork: one process per task slot (a crash takes one task); threads: one process, less memory.",
)
@click.option(
    "--loglevel",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.pass_obj
def worker(app, concurrency: int | None, queues: str | None, pool: str, loglevel: str) -> None:
    """Run planning and dispatch tasks of campaign runs (executor: {kind: celery}) until stopped.

    Start any number, on any machines that reach the broker and the PostgreSQL database, with the same config,
    campaign files and templates as the processes that run campaigns. Stop with SIGTERM: the worker finishes
    the tasks it runs; a worker killed outright leaves them to others (docs/deployment.md).
    """
    from orchestrator.executors import require_shared_database
    from orchestrator.executors.celery_app import build_app
    from orchestrator.executors.tasks import WorkerContext, configure, register

    settings = app.settings
    if queues is not None:
        names = queues.split(",")
        if any(not name or name != name.strip() or any(c.isspace() for c in name) for name in names):
            raise InputError(
                f"--queues {queues!r}: queue names are separated by commas, each non-empty and without spaces",
                hint="e.g. --queues orchestrator,bulk",
            )
    if settings.executor.kind != "celery":
        raise InputError(
            "a worker needs executor: {kind: celery, broker: …} in the config",
            file=settings.source,
            hint="set executor.kind: celery and executor.broker (redis://… or amqp://…); see docs/deployment.md",
        )
    require_shared_database(settings, app.raw_engine().url.get_backend_name())
    app.engine  # noqa: B018 - refuses a database that is missing or not migrated, before the pool starts
    app.close()  # each pool process opens its own connections
    celery_app = build_app(settings.executor)
    register(celery_app)
    configure(WorkerContext(config_path=app.config_path, db_url=app.db_url_override))
    argv = [
        "worker",
        f"--loglevel={loglevel.upper()}",
        f"--pool={pool}",
        f"--queues={queues or settings.executor.queue}",
        f"--hostname=orchestrator-{os.getpid()}@%h",
        "--without-gossip",  # workers need not know each other: they share work through the broker and database
        "--without-mingle",
    ]
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    celery_app.worker_main(argv)
