"""A real HTTP server on loopback for testing HTTP providers: no mocks of the client library.

``serve(handler)`` starts a ``ThreadingHTTPServer`` on a free 127.0.0.1 port in a thread and yields a
``LoopbackServer`` whose ``url`` the channel under test is pointed at. ``handler(request)`` is a plain function
receiving a ``Request`` (method, path, query, headers, raw body, peer) and returning a ``Response``; every request is
recorded in ``server.requests`` in arrival order. A handler that should time out the client calls
``server.stall(seconds)``, which returns early when the server stops, so no thread outlives its test.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]  # the first value of each query parameter
    headers: dict[str, str]  # names lower-cased
    body: bytes
    peer: tuple[str, int] = ("", 0)  # the client's address: one per connection, so reuse is visible

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


@dataclass
class Response:
    status: int = 200
    body: bytes | str | dict | list = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(data, ensure_ascii=False).encode(), {"Content-Type": "application/json"})

    def encoded(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        return json.dumps(self.body, ensure_ascii=False).encode("utf-8")


Handler = Callable[[Request], Response]


class LoopbackServer:
    def __init__(self, handler: Handler):
        self.handler = handler
        self.requests: list[Request] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._request_handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def stall(self, seconds: float) -> None:
        """Hold the current request (to make the client time out); ends early when the server stops."""
        self._stopping.wait(seconds)

    def paths(self) -> list[str]:
        return [request.path for request in self.requests]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def _request_handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as providers do: the client reuses its connection
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                query = {key: values[0] for key, values in parse_qs(parts.query, keep_blank_values=True).items()}
                headers = {name.lower(): value for name, value in self.headers.items()}
                request = Request(self.command, parts.path, query, headers, body, tuple(self.client_address[:2]))
                with server._lock:
                    server.requests.append(request)
                response = server.handler(request)
                payload = response.encoded()
                try:
                    self.send_response(response.status)
                    for name, value in response.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up (timeout): nothing to answer
                    self.close_connection = True

            do_GET = do_POST = do_PUT = _handle

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

        return _Handler


@contextmanager
def serve(handler: Handler) -> Iterator[LoopbackServer]:
    server = LoopbackServer(handler)
    server.start()
    try:
        yield server
    finally:
        server.stop()
