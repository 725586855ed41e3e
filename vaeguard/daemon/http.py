"""The ops listener: /healthz (the process answers), /readyz (it can do its job), /metrics.

Bounded, so no client can take it down: a connection has ``request_timeout_s`` in all to send
its request (one that connects and stalls, or trickles a byte at a time, is dropped), and each
write of the answer as long again; at most ``max_connections`` are served at once, one thread
each, and more are answered 503 at once instead of piling up threads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from vaeguard.daemon import metrics

log = logging.getLogger("vaeguard.daemon.http")

HANDLER_THREAD = "vaeguard-http-conn"
_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: 17\r\nConnection: close\r\n\r\n"
    b'{"error":"busy"}\n'
)


class OpsServer:
    """A bounded threading HTTP server on its own thread; ``readiness()`` returns
    (ready, details)."""

    def __init__(
        self,
        host: str,
        port: int,
        readiness: Callable[[], tuple[bool, dict[str, Any]]],
        *,
        request_timeout_s: float = 5.0,
        max_connections: int = 16,
        registry=None,
    ):
        """``registry``: what /metrics serves (default: this process's; a supervisor of
        workers passes a registry that reads prometheus_client's multiprocess files)."""
        handler = _handler(readiness, request_timeout_s, registry or REGISTRY)
        self.server = _BoundedServer((host, port), handler, max_connections)
        self.thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="vaeguard-http",
            daemon=True,
        )

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def host(self) -> str:
        return self.server.server_address[0]

    def start(self) -> OpsServer:
        self.thread.start()
        log.info("ops endpoints listening", extra={"host": self.host, "port": self.port})
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _BoundedServer(ThreadingHTTPServer):
    """At most ``max_connections`` handler threads; a connection beyond them gets 503."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address, handler, max_connections: int):
        self.slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            metrics.HTTP_CONNECTIONS_DROPPED.labels("busy").inc()
            _refuse(request)
            return
        try:
            threading.Thread(
                target=self._serve, args=(request, client_address), name=HANDLER_THREAD, daemon=True
            ).start()
        except BaseException:
            self.slots.release()
            self.shutdown_request(request)
            raise

    def _serve(self, request, client_address) -> None:
        try:
            self.process_request_thread(request, client_address)  # closes the socket
        finally:
            self.slots.release()


def _refuse(sock: socket.socket) -> None:
    """Answer 503 without blocking the accept loop, then close."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        sock.send(_BUSY)
        sock.shutdown(socket.SHUT_WR)
        # Read what the client already sent: closing with unread data would reset the
        # connection, and the client might never see the 503.
        sock.recv(65536)
    sock.close()


class _DeadlineReader:
    """The request stream with one deadline for the whole request: each read may wait only
    for what is left of it, so trickling bytes does not extend it."""

    def __init__(self, raw, sock: socket.socket, deadline: float):
        self._raw = raw
        self._sock = sock
        self._deadline = deadline

    def _arm(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request deadline passed")
        self._sock.settimeout(left)

    def _call(self, method: str, *args):
        try:
            self._arm()
            return getattr(self._raw, method)(*args)
        except TimeoutError:
            metrics.HTTP_CONNECTIONS_DROPPED.labels("timeout").inc()
            raise

    def readline(self, *args):
        return self._call("readline", *args)

    def read(self, *args):
        return self._call("read", *args)

    def __getattr__(self, name: str):
        return getattr(self._raw, name)


def _handler(readiness, request_timeout_s: float, registry):
    class Handler(BaseHTTPRequestHandler):
        server_version = "vaeguard"
        #: Also the socket timeout of each write (StreamRequestHandler.setup sets it).
        timeout = request_timeout_s

        def setup(self) -> None:
            super().setup()
            deadline = time.monotonic() + request_timeout_s
            self.rfile = _DeadlineReader(self.rfile, self.connection, deadline)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._send(200, "application/json", b'{"status":"ok"}')
            elif path == "/readyz":
                ready, details = readiness()
                body = json.dumps({"ready": ready, **details}, default=str).encode()
                self._send(200 if ready else 503, "application/json", body)
            elif path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            else:
                self._send(404, "application/json", b'{"error":"not found"}')

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.connection.settimeout(request_timeout_s)  # the answer's own time to be read
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # probes are too chatty to log
            pass

    return Handler
