"""The sink plugin API: subclass `Sink`, declare `Settings`, implement `send`.

A sink type is a `Sink` subclass registered under the entry-point group ``vaeguard.sinks``; the
entry-point name is the ``type:`` users write in ``alerts.sinks``. The core never imports a sink
by module path: built-ins are registered in vaeguard's own pyproject.toml exactly like plugins.

Delivery (retries, backoff, circuit breaker, spooling, metrics) is the core's job. A sink only
sends: ``send(alerts)`` returns when the target accepted every alert and raises otherwise, as
`PermanentSinkError` when retrying cannot help (a rejected payload, bad credentials) or any
other exception (`RetryableSinkError`, `OSError`, a client library's timeout, ...) when it can.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from vaeguard.alerts.model import Alert


class SinkSettings(BaseModel):
    """Base of every sink's settings: unknown keys are errors, so typos fail loudly.

    Declare secrets as `pydantic.SecretStr`: they are masked in logs and dumps.
    """

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class SinkContext:
    """What the core tells a sink about its surroundings."""

    #: The configured sink name (``alerts.sinks[].name``), for logs and metrics.
    name: str
    #: Seconds one `send` call may take (the per-attempt timeout): honour it in network I/O.
    timeout_s: float = 10.0
    #: kafka-python client options of the daemon's cluster (bootstrap_servers, security), if any.
    kafka_config: dict[str, Any] | None = None
    #: A directory the sink may keep state in.
    state_dir: Path | None = None
    logger: logging.Logger = field(
        default_factory=lambda: logging.getLogger("vaeguard.alerts.sink")
    )


class SinkError(Exception):
    """A failed delivery. ``retryable`` tells the core whether another attempt may succeed."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        #: Seconds the target asked us to wait (HTTP Retry-After), if it said.
        self.retry_after = retry_after


class RetryableSinkError(SinkError):
    """Temporary: the target is down, overloaded (HTTP 5xx, 408, 429) or timed out."""


class PermanentSinkError(SinkError):
    """Retrying the same alert cannot help: a rejected payload, bad credentials, a wrong URL.

    The alert is kept in the spool (never dropped) but not retried in the background; a
    restart or ``vaeguard spool flush`` tries it again (after fixing the config).
    """

    retryable = False


class Sink(abc.ABC):
    """Base class of every sink.

    Subclasses set ``Settings`` (a `SinkSettings` subclass) and implement `send`. The core
    creates one instance per configured sink and calls `send` from one worker thread, never
    concurrently.
    """

    Settings: ClassVar[type[SinkSettings]] = SinkSettings
    #: The most alerts one `send` call gets. 1 means one request per alert; raise it where the
    #: target takes a batch in one request (a partial failure then retries the whole batch).
    max_batch: ClassVar[int] = 1

    def __init__(self, settings: SinkSettings, context: SinkContext):
        self.settings = settings
        self.context = context
        self.name = context.name
        self.log = context.logger

    @abc.abstractmethod
    def send(self, alerts: list[Alert]) -> None:
        """Deliver every alert, or raise. Must honour ``self.context.timeout_s``."""

    def close(self) -> None:  # noqa: B027 (optional hook: most sinks hold nothing to close)
        """Release connections and files. Called once, after the last `send`."""

    def health(self) -> dict[str, Any]:
        """Cheap, local facts for ``/healthz`` (no network calls)."""
        return {}
