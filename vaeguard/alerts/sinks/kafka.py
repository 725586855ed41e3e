"""`kafka`: alerts produced to a topic, keyed by alert id, acknowledged by all replicas.

Without its own ``bootstrap_servers`` the sink uses the daemon's cluster and security settings.
Keying by id keeps every notification of an episode in one partition, in order, and lets a
compacted topic keep each alert's latest state.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import FilePath, SecretStr, field_validator

from vaeguard.alerts.model import Alert
from vaeguard.alerts.sink import (
    PermanentSinkError,
    RetryableSinkError,
    Sink,
    SinkSettings,
    UndeliverableAlertError,
)

#: Errors another attempt cannot fix; anything else (timeouts, leaders moving, brokers down) can.
_PERMANENT = frozenset(
    {
        "TopicAuthorizationFailedError",
        "ClusterAuthorizationFailedError",
        "InvalidTopicError",
        "UnsupportedVersionError",
    }
)
#: ... and those about the alerts themselves (too big): dead-lettered, one by one.
_UNDELIVERABLE = frozenset({"MessageSizeTooLargeError", "RecordListTooLargeError"})


class KafkaSinkSettings(SinkSettings):
    topic: str = "vaeguard.alerts"
    #: Another cluster than the daemon's (comma-separated HOST:PORT); its security settings
    #: below apply only then.
    bootstrap_servers: str | None = None
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: SecretStr | None = None
    ssl_cafile: FilePath | None = None

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        import re

        if not re.match(r"^[A-Za-z0-9._-]{1,249}$", v) or v in (".", ".."):
            raise ValueError(f"{v!r} is not a valid Kafka topic name")
        return v


class KafkaSink(Sink):
    """Produces each alert's canonical JSON to a topic (acks=all), keyed by the alert id."""

    Settings = KafkaSinkSettings
    max_batch = 500
    #: It produces to the daemon's cluster (by default), so it needs its SASL / TLS credentials.
    kafka_credentials = True

    def __init__(self, settings: KafkaSinkSettings, context):
        super().__init__(settings, context)
        self.config = self._client_config(settings, context.kafka_config)
        self.producer = None

    @staticmethod
    def _client_config(s: KafkaSinkSettings, daemon: dict[str, Any] | None) -> dict[str, Any]:
        if s.bootstrap_servers is None:
            if not daemon:
                from vaeguard.errors import ConfigError

                raise ConfigError(
                    "the kafka sink needs bootstrap_servers when the daemon's Kafka settings "
                    "are not available"
                )
            return {k: v for k, v in daemon.items() if k != "client_id"}
        config: dict[str, Any] = {
            "bootstrap_servers": [x.strip() for x in s.bootstrap_servers.split(",") if x.strip()],
            "security_protocol": s.security_protocol,
        }
        if s.sasl_mechanism:
            config["sasl_mechanism"] = s.sasl_mechanism
            config["sasl_plain_username"] = s.sasl_plain_username
            if s.sasl_plain_password is not None:
                config["sasl_plain_password"] = s.sasl_plain_password.get_secret_value()
        if s.ssl_cafile is not None:
            config["ssl_cafile"] = str(s.ssl_cafile)
        return config

    def _producer(self):
        if self.producer is None:
            from kafka import KafkaProducer
            from kafka.errors import KafkaError

            timeout_ms = int(self.context.timeout_s * 1000)
            # The sink's own timing wins over the cluster's options (which carry a
            # request_timeout_ms, and kafka.client's settings, of their own).
            own = {
                "client_id": f"vaeguard-alerts-{self.name}",
                "acks": "all",
                "linger_ms": 5,
                "max_block_ms": timeout_ms,
                "request_timeout_ms": max(timeout_ms, 1000),
                "delivery_timeout_ms": max(timeout_ms, 1000) + 5,
                "bootstrap_timeout_ms": timeout_ms,
            }
            try:
                self.producer = KafkaProducer(**{**self.config, **own})
            except KafkaError as exc:
                raise RetryableSinkError(
                    f"cannot connect to Kafka: {type(exc).__name__}: {exc}"
                ) from None
        return self.producer

    def send(self, alerts: list[Alert]) -> None:
        from kafka.errors import KafkaError

        producer = self._producer()
        try:
            futures = [
                producer.send(self.settings.topic, key=a.id.encode(), value=a.json_bytes())
                for a in alerts
            ]
            producer.flush(timeout=self.context.timeout_s)
            for f in futures:
                f.get(timeout=self.context.timeout_s)
        except KafkaError as exc:
            message = f"producing to {self.settings.topic!r} failed: {type(exc).__name__}: {exc}"
            if type(exc).__name__ in _UNDELIVERABLE:
                raise UndeliverableAlertError(message) from None
            if type(exc).__name__ in _PERMANENT:
                raise PermanentSinkError(message) from None
            raise RetryableSinkError(message) from None

    def close(self) -> None:
        if self.producer is not None:
            try:
                self.producer.close(timeout=self.context.timeout_s)
            finally:
                self.producer = None

    def health(self) -> dict[str, Any]:
        return {"topic": self.settings.topic}
