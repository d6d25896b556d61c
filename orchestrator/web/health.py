"""``GET /healthz`` (process up, database reachable, migrations current: 200, else 503 naming which) and
``GET /metrics`` (``metrics``)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator.db.engine import schema_is_current
from orchestrator.web.metrics import exposition

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def _database_state(engine) -> str:
    try:
        return "current" if schema_is_current(engine) else "out_of_date"
    except Exception:  # the detail (host, driver message) is for the log, not for whoever asks
        return "unreachable"


async def healthz(request: Request) -> JSONResponse:
    state = await run_in_threadpool(_database_state, request.app.state.engine)
    ok = state == "current"
    return JSONResponse({"status": "ok" if ok else "unavailable", "database": state}, status_code=200 if ok else 503)


async def metrics(request: Request) -> Response:
    body = await run_in_threadpool(exposition, request.app.state.engine)
    return Response(body, media_type=PROMETHEUS_TEXT)


routes = [Route("/healthz", healthz, methods=["GET"]), Route("/metrics", metrics, methods=["GET"])]
