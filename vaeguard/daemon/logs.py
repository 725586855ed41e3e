"""Structured logs: one JSON object per line, for log shippers rather than for eyes.

Fields passed with ``extra={...}`` become keys of the object. The stream is a private duplicate
of stderr, so the daemon's logs survive the moments when TensorFlow's import silences fd 2.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
from typing import Any, TextIO

#: LogRecord attributes that are not user fields.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, exc, tb = record.exc_info
            out["error"] = f"{exc_type.__name__}: {exc}"
            out["stack"] = "".join(traceback.format_exception(exc_type, exc, tb))
        return json.dumps(out, default=str, separators=(",", ":"))


_handler: logging.Handler | None = None


class _KafkaClientFilter(logging.Filter):
    """Keeps kafka-python's own lines out of the log below CRITICAL: while a broker is away it
    writes several ERROR lines per connection attempt, endlessly. The daemon writes one line
    per retry of its own instead, quoting kafka-python's latest error (`kafka_client_error`);
    ``logging.level: DEBUG`` shows everything."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "kafka" and not record.name.startswith("kafka."):
            return True
        return record.levelno >= logging.CRITICAL


class _ClientErrors(logging.Handler):
    """Remembers kafka-python's latest error (why a connection failed), whatever is shown."""

    _ERROR = re.compile(r"\b([A-Z]\w*(?:Error|Exception|Failed)\b.*)$")

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lock_ = threading.Lock()
        self.last: tuple[float, str] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:
            return
        if message.startswith("Bootstrap failed"):  # says only that it gave up in time
            return
        match = self._ERROR.search(message)
        with self.lock_:
            self.last = (time.monotonic(), (match.group(1) if match else message)[:300])


_CLIENT_ERRORS = _ClientErrors()


def watch_kafka_client_errors() -> None:
    """Start remembering kafka-python's errors (idempotent)."""
    kafka_logger = logging.getLogger("kafka")
    if _CLIENT_ERRORS not in kafka_logger.handlers:
        kafka_logger.addHandler(_CLIENT_ERRORS)


def kafka_client_error(since: float) -> str | None:
    """kafka-python's latest error logged after ``since`` (time.monotonic()), if any."""
    with _CLIENT_ERRORS.lock_:
        last = _CLIENT_ERRORS.last
    return last[1] if last is not None and last[0] >= since else None


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Route every logger (ours, kafka-python's) through one JSON handler on stderr."""
    global _handler
    if stream is None:
        stream = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, encoding="utf-8")
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(stream)
    _handler.setFormatter(JsonFormatter())
    if logging.getLevelName(level) > logging.DEBUG:
        _handler.addFilter(_KafkaClientFilter())
    root.addHandler(_handler)
    root.setLevel(level)
    # kafka-python narrates every reconnect at INFO; its errors are remembered for our lines.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    watch_kafka_client_errors()
