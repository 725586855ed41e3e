"""Helpers for testing sinks against real servers on loopback (used by vaeguard's own tests and
by plugin authors): sample alerts and records, a recording HTTP server that can fail, stall or
recover on demand, and a condition wait with a deadline.
"""

from __future__ import annotations

import datetime as dt
import http.server
import itertools
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vaeguard.alerts.model import Alert, AlertSource, FeatureContribution, alert_id, firing_summary
from vaeguard.scored import ScoredRecord, Source

LOOPBACK = "127.0.0.1"
_offsets = itertools.count(1)

#: ``alerts.delivery`` settings that keep tests fast: short backoffs, a patient breaker.
FAST_DELIVERY: dict[str, Any] = {
    "retries": 3,
    "backoff_initial_s": 0.01,
    "backoff_max_s": 0.05,
    "timeout_s": 3.0,
    "breaker_failures": 50,
    "breaker_cooldown_s": 0.2,
    "max_wait_s": 10.0,
    "redelivery_interval_s": 0.05,
}


def wait_until(
    condition: Callable[[], object],
    timeout: float = 20.0,
    message: str = "condition",
    *,
    interval: float = 0.02,
):
    """Poll ``condition`` until truthy; AssertionError naming ``message`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {message}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def sample_alert(
    entity: str = "host-7",
    *,
    status: str = "firing",
    severity: str = "critical",
    stream: str = "cpu_util",
    offset: int | None = None,
    **overrides: Any,
) -> Alert:
    """A realistic anomaly alert; each call without ``offset`` is a new episode (new id)."""
    source = AlertSource(
        topic=stream, partition=0, offset=next(_offsets) if offset is None else offset
    )
    group = {"topic": stream, "entity": entity}
    top = [
        FeatureContribution(
            feature="cpu_user", observed=97.0, expected=41.0, contribution=21.5, share=0.6
        ),
        FeatureContribution(
            feature="load1", observed=12.0, expected=2.5, contribution=9.1, share=0.25
        ),
    ]
    at = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
    data: dict[str, Any] = {
        "id": alert_id(group, source),
        "status": status,
        "stream": stream,
        "entity": entity,
        "group": group,
        "severity": severity,
        "peak_severity": severity,
        "score": 41.2,
        "peak_score": 41.2,
        "threshold": 12.0,
        "first_seen": at,
        "last_seen": at + dt.timedelta(minutes=3),
        "resolved_at": at + dt.timedelta(minutes=10) if status == "resolved" else None,
        "anomalous_records": 4,
        "top_features": top,
        "model_version": "20260101T000000Z-abc123",
        "episode": source,
        "source": source,
        "labels": {"region": "eu-west"},
        "summary": firing_summary(stream, entity, 41.2, 12.0, severity, top),
    }
    data.update(overrides)
    return Alert(**data)


def make_record(
    key: str | None = "host-7",
    anomalous: bool = True,
    *,
    topic: str = "cpu_util",
    severity: str | None = None,
    score: float | None = None,
    threshold: float = 12.0,
    labels: dict[str, str] | None = None,
    partition: int = 0,
    offset: int | None = None,
    ts: Any = None,
) -> ScoredRecord:
    """A `ScoredRecord` as the daemon builds it (unique source offsets unless given)."""
    if score is None:
        score = 41.2 if anomalous else 3.0
    if severity is None:
        severity = "critical" if anomalous else "normal"
    return ScoredRecord(
        key=key,
        ts=ts if ts is not None else time.time(),
        score=score,
        threshold=threshold,
        is_anomaly=anomalous,
        severity=severity,
        contributions=[
            {
                "feature": "cpu_user",
                "observed": 97.0,
                "expected": 41.0,
                "contribution": 21.5,
                "share": 0.6,
            }
        ]
        if anomalous
        else [],
        model_version="v1",
        source=Source(topic, partition, next(_offsets) if offset is None else offset),
        labels=dict(labels or {}),
    )


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HTTPCapture:
    """A real HTTP(S) server on 127.0.0.1 that records every request.

    ``fail_next(n, status)`` answers the next n requests with an error; ``status`` sets the
    answer after that; ``hold()`` makes requests wait until ``release()`` (a slow or hung
    target). ``received`` holds the requests answered with a 2xx, ``requests`` all of them.
    """

    port: int = 0
    ssl_context: ssl.SSLContext | None = None
    status: int = 200
    response_body: bytes = b'{"status":"ok"}'
    #: The body of error answers (status >= 300).
    error_body: bytes = b'{"error":"injected"}'
    #: Statuses of the first requests, set before the server listens (no race with a client
    #: that is already retrying, as ``fail_next`` after the start would have).
    fail_first: tuple[int, ...] = ()
    response_headers: dict[str, str] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self):
        self._lock = threading.Lock()
        self._failures: list[int] = list(self.fail_first)
        self._gate = threading.Event()
        self._gate.set()
        self.waiting = 0
        capture = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with capture._lock:
                    capture.waiting += 1
                capture._gate.wait(60)
                with capture._lock:
                    capture.waiting -= 1
                    status = capture._failures.pop(0) if capture._failures else capture.status
                    capture.requests.append(
                        Request(
                            "POST",
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                            status,
                        )
                    )
                payload = capture.response_body if status < 300 else capture.error_body
                self.send_response(status)
                for k, v in capture.response_headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_PUT = do_POST

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        self.server.daemon_threads = True
        if self.ssl_context is not None:
            self.server.socket = self.ssl_context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{LOOPBACK}:{self.port}"

    @property
    def received(self) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    def fail_next(self, n: int, status: int = 503) -> None:
        with self._lock:
            self._failures.extend([status] * n)

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> HTTPCapture:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def layer_for(sinks: list[dict[str, Any]], spool_dir: Any, **config: Any):
    """An `AlertLayer` with these sink entries, fast delivery settings and its spool in
    ``spool_dir``; use it as a context manager so it is closed."""
    from vaeguard.alerts.layer import build_alert_layer
    from vaeguard.alerts.settings import AlertsSettings

    delivery = {**FAST_DELIVERY, **config.pop("delivery", {})}
    settings = AlertsSettings.from_mapping(
        {"sinks": sinks, "spool_dir": str(spool_dir), "delivery": delivery, **config}
    )
    return build_alert_layer(settings)
