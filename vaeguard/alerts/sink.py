"""The sink plugin API: subclass `Sink`, declare `Settings`, implement `send`.

A sink type is a `Sink` subclass registered under the entry-point group ``vaeguard.sinks``; the
entry-point name is the ``type:`` users write in ``alerts.sinks``. The core never imports a sink
by module path: built-ins are registered in vaeguard's own pyproject.toml exactly like plugins.

Delivery (retries, backoff, circuit breaker, spooling, metrics) is the core's job. A sink only
sends: ``send(alerts)`` returns when the target accepted every alert and raises otherwise:

- `UndeliverableAlertError` when this alert can never be delivered (the target rejected its
  payload); a ``ValueError`` or ``TypeError`` (building the payload failed) counts the same.
  The alert is dead-lettered so the alerts behind it go on.
- `PermanentSinkError` when retrying cannot help until an operator fixes the sink (bad
  credentials, a wrong URL): the alert is parked in the spool.
- anything else (`RetryableSinkError`, `OSError`, a client library's timeout, ...) when another
  attempt may succeed.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from vaeguard.alerts.model import Alert
from vaeguard.errors import PermanentSinkError as PermanentSinkError
from vaeguard.errors import RetryableSinkError as RetryableSinkError
from vaeguard.errors import SinkError as SinkError
from vaeguard.errors import UndeliverableAlertError as UndeliverableAlertError


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
    #: kafka-python client options of the daemon's cluster, if any: where it is and how to reach
    #: it; its credentials only for a sink class with ``kafka_credentials = True``.
    kafka_config: dict[str, Any] | None = None
    #: A directory the sink may keep state in.
    state_dir: Path | None = None
    logger: logging.Logger = field(
        default_factory=lambda: logging.getLogger("vaeguard.alerts.sink")
    )


#: kafka-python options every sink may see: where the cluster is and how to talk to it, no
#: credentials. Anything else (SASL username and password, TLS client key, certificate and
#: key password) goes only to sink classes that set ``kafka_credentials``.
KAFKA_PUBLIC_OPTIONS = frozenset(
    {
        "bootstrap_servers",
        "client_id",
        "security_protocol",
        "sasl_mechanism",
        "request_timeout_ms",
        "ssl_cafile",
        "ssl_check_hostname",
    }
)


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
    #: True for a sink that connects to the daemon's Kafka cluster itself (the `kafka` sink):
    #: only then does ``context.kafka_config`` carry the cluster's credentials.
    kafka_credentials: ClassVar[bool] = False

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


def kafka_config_for(
    sink_class: type[Sink], kafka_config: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The daemon's Kafka options as ``sink_class`` gets them: a sink that does not produce to
    the cluster gets no credentials (least privilege: a plugin cannot leak what it never had)."""
    if not kafka_config:
        return None
    if sink_class.kafka_credentials:
        return dict(kafka_config)
    return {k: v for k, v in kafka_config.items() if k in KAFKA_PUBLIC_OPTIONS}
