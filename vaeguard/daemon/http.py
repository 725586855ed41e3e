"""The ops listener: /healthz (the process answers), /readyz (it can do its job), /metrics."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger("vaeguard.daemon.http")


class OpsServer:
    """A ThreadingHTTPServer on its own thread; ``readiness()`` returns (ready, details)."""

    def __init__(self, host: str, port: int, readiness: Callable[[], tuple[bool, dict[str, Any]]]):
        handler = _handler(readiness)
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
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


def _handler(readiness):
    class Handler(BaseHTTPRequestHandler):
        server_version = "vaeguard"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._send(200, "application/json", b'{"status":"ok"}')
            elif path == "/readyz":
                ready, details = readiness()
                body = json.dumps({"ready": ready, **details}, default=str).encode()
                self._send(200 if ready else 503, "application/json", body)
            elif path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
            else:
                self._send(404, "application/json", b'{"error":"not found"}')

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # probes are too chatty to log
            pass

    return Handler
