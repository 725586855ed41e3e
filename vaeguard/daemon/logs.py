"""Structured logs: one JSON object per line, for log shippers rather than for eyes.

Fields passed with ``extra={...}`` become keys of the object. The stream is a private duplicate
of stderr, so the daemon's logs survive the moments when TensorFlow's import silences fd 2.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
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
    root.addHandler(_handler)
    root.setLevel(level)
    # kafka-python narrates every reconnect at INFO; its warnings and errors are what matter.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLevelName(level)))
