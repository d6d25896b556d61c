"""The service under test: a real uvicorn server on a free 127.0.0.1 port, in a thread of the test process.

``running(settings, engine)`` builds the application exactly as ``orchestrator serve`` does (``create_app``),
serves it from a socket bound to port 0, waits until uvicorn is accepting, and yields its base URL; leaving the
block stops the server. Tests talk to it with httpx over real TCP.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from sqlalchemy import Engine

from orchestrator.config import Settings
from orchestrator.web.app import create_app


@contextmanager
def running(settings: Settings, engine: Engine) -> Iterator[str]:
    app = create_app(settings, engine)
    # IPPROTO_TCP, as uvicorn binds its own: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every response waits for the client's delayed ACK (40 ms)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
