"""The Celery application of a config's ``executor:`` section: broker, queue and the delivery settings.

Chosen deliberately (docs/deployment.md says why at length):

- ``task_acks_late``: a task is acknowledged when it has finished, not when a worker takes it, so a worker that
  dies mid-task leaves it on the broker for another worker. Tasks may therefore run twice: both are idempotent
  (a partition re-planned counts what the ledger holds; a dispatch task claims whatever is due then).
- ``task_reject_on_worker_lost``: a pool process killed (SIGKILL, out of memory) has its task put back at once
  rather than recorded as failed.
- ``worker_prefetch_multiplier = 1``: a worker reserves no more tasks than it runs, so a busy worker does not
  sit on claim batches an idle one could send.
- ``visibility_timeout`` (Redis): a task taken by a worker whose whole process vanished is handed out again after
  this long; it must exceed the longest task (``task_time_limit``, enforced), or a slow task would run twice
  at once.
- JSON only, for tasks and results: nothing from the broker is unpickled.
"""

from __future__ import annotations

from datetime import timedelta

from celery import Celery

from orchestrator.config import ExecutorConfig

PLAN_PARTITION = "orchestrator.plan_partition"
DISPATCH_CLAIMS = "orchestrator.dispatch_claims"


def result_backend(config: ExecutorConfig) -> str:
    if config.result_backend:
        return config.result_backend
    return config.broker if config.broker.startswith(("redis", "rediss")) else "rpc://"


def build_app(config: ExecutorConfig) -> Celery:
    app = Celery("orchestrator", broker=config.broker, backend=result_backend(config), set_as_current=False)
    prefix = {"global_keyprefix": config.key_prefix} if config.key_prefix else {}
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": config.visibility_timeout_seconds, **prefix},
        result_backend_transport_options=prefix,
        task_time_limit=config.task_time_limit_seconds,
        task_default_queue=config.queue,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_track_started=True,
        result_expires=timedelta(days=1),
        broker_connection_retry_on_startup=True,
    )
    return app
