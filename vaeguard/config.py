"""The daemon's settings: one pydantic-settings model, read from YAML and the environment.

Precedence: environment variables ``VAEGUARD_<SECTION>__<FIELD>`` override the YAML file given
with ``--config``, which overrides the defaults below. Every section forbids unknown keys, so a
typo fails loudly instead of silently running with a default. `load_settings` turns any
validation failure into one `ConfigError` line that names the setting and where it came from.
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FilePath,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from vaeguard.alerts.settings import AlertsSettings
from vaeguard.errors import ConfigError, VaeguardError
from vaeguard.input_formats import InputSpec
from vaeguard.kafka_options import (
    KAFKA_MAP_LOCS,
    client_credentials_provider,
    import_object,
    kafka_map,
    plain_options,
)
from vaeguard.redaction import redact
from vaeguard.retrain.settings import RetrainSettings
from vaeguard.settings_text import list_from_text
from vaeguard.severity import DEFAULT_BANDS, NORMAL

ENV_PREFIX = "VAEGUARD_"
ENV_DELIMITER = "__"
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_INSTANCE_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_DEVICE_RE = re.compile(r"^(auto|cpu|gpu:\d+)$")


def _topic(name: str) -> str:
    if not _TOPIC_RE.match(name) or name in (".", ".."):
        raise ValueError(
            f"{name!r} is not a valid Kafka topic name (ASCII letters, digits, '.', '_', '-')"
        )
    return name


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class KafkaOAuthSettings(_Section):
    """SASL OAUTHBEARER: where the token comes from (``sasl_mechanism: OAUTHBEARER``).

    Either ``token_endpoint`` (the OAuth 2.0 client-credentials grant, with ``client_id`` and
    ``client_secret``; the token is reused until shortly before it expires) or ``provider``
    (``module:attribute`` of a kafka-python ``AbstractTokenProvider`` class, or of a callable
    returning one, for any other way of getting tokens).
    """

    token_endpoint: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    scope: str | None = None
    #: SASL extensions sent with the token (e.g. a logical cluster id).
    extensions: dict[str, str] = Field(default_factory=dict)
    provider: str | None = None
    #: Seconds one token request may take.
    timeout_s: float = Field(10.0, gt=0, le=300)

    @field_validator("token_endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s]*)?", v.strip(), re.ASCII):
            raise ValueError("must be an http:// or https:// URL")
        return v.strip() if v is not None else None

    @field_validator("provider")
    @classmethod
    def _provider(cls, v: str | None) -> str | None:
        if v is not None:
            import_object(v.strip())
        return v.strip() if v is not None else None

    @model_validator(mode="after")
    def _one_source(self) -> KafkaOAuthSettings:
        if self.token_endpoint and self.provider:
            raise ValueError("provider: set either token_endpoint or provider, not both")
        if self.token_endpoint and (not self.client_id or self.client_secret is None):
            missing = "client_id" if not self.client_id else "client_secret"
            raise ValueError(f"{missing}: token_endpoint needs it")
        return self

    @property
    def configured(self) -> bool:
        return bool(self.token_endpoint or self.provider)

    def token_provider(self) -> Any:
        """A kafka-python token provider for these settings."""
        if self.provider:
            from kafka.net.sasl.oauth import AbstractTokenProvider

            where = f"invalid setting kafka.oauth.provider: {self.provider}"
            try:
                obj = import_object(self.provider)
                made = (
                    obj() if callable(obj) and not isinstance(obj, AbstractTokenProvider) else obj
                )
            except Exception as exc:  # the user's code, whatever it raises
                raise ConfigError(f"{where} failed: {type(exc).__name__}: {exc}") from None
            if not isinstance(made, AbstractTokenProvider):
                raise ConfigError(
                    f"{where} gave a {type(made).__name__}, not a kafka-python "
                    "AbstractTokenProvider"
                )
            return made
        return client_credentials_provider()(self)


class KafkaSettings(_Section):
    """Where records come from and where verdicts go; security settings pass to kafka-python.

    ``client`` / ``consumer`` / ``producer`` pass any other kafka-python setting to every client
    / every consumer / every producer vaeguard opens, checked against kafka-python's own
    settings (those vaeguard sets itself are refused, with the reason).
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    input_topics: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["metrics"])
    output_topic: str = "vaeguard.scores"
    dlq_topic: str = "vaeguard.dlq"
    group_id: str = "vaeguard"
    client_id: str = "vaeguard"
    #: Static membership (KIP-345): a restarted daemon with the same id takes its partitions
    #: back at once instead of waiting for a rebalance. Must be unique per running daemon.
    group_instance_id: str | None = None
    #: 6 s is the broker's default minimum (group.min.session.timeout.ms); with 1 s heartbeats
    #: a crashed daemon's partitions move to the others after ~6 s, and a restarted daemon
    #: gets them back after that plus the rebalance (the SIGKILL loop test prints how long).
    session_timeout_ms: int = Field(6000, ge=1000)
    heartbeat_interval_ms: int = Field(1000, ge=100)
    max_poll_interval_ms: int = Field(60000, ge=1000)
    request_timeout_ms: int = Field(10000, ge=1000)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: (
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI", "AWS_MSK_IAM"]
        | None
    ) = None
    sasl_plain_username: str | None = None
    sasl_plain_password: SecretStr | None = None
    #: OAUTHBEARER's token source (see `KafkaOAuthSettings`).
    oauth: KafkaOAuthSettings = Field(default_factory=KafkaOAuthSettings)
    ssl_cafile: FilePath | None = None
    ssl_certfile: FilePath | None = None
    ssl_keyfile: FilePath | None = None
    ssl_password: SecretStr | None = None
    ssl_check_hostname: bool = True
    #: Any other kafka-python setting, for every client (keys both KafkaConsumer and
    #: KafkaProducer take), e.g. ``{metadata_max_age_ms: 60000, client_rack: eu-1a}``.
    client: dict[str, Any] = Field(default_factory=dict)
    #: Any other KafkaConsumer setting, e.g. ``{fetch_max_bytes: 10485760}``.
    consumer: dict[str, Any] = Field(default_factory=dict)
    #: Any other KafkaProducer setting (the producer of score records and dead letters),
    #: e.g. ``{compression_type: zstd, linger_ms: 20}``.
    producer: dict[str, Any] = Field(default_factory=dict)

    _oauth_provider: Any = PrivateAttr(default=None)

    @field_validator("client", "consumer", "producer", mode="before")
    @classmethod
    def _passthrough(cls, v: Any, info) -> Any:
        return kafka_map(info.field_name, v)

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, v: str) -> str:
        servers = [s.strip() for s in v.split(",") if s.strip()]
        if not servers:
            raise ValueError("must name at least one HOST:PORT")
        for s in servers:
            host, sep, port = s.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{s!r} is not HOST:PORT")
        return ",".join(servers)

    @field_validator("input_topics", mode="before")
    @classmethod
    def _topics_from_text(cls, v: Any) -> Any:
        """Accept a JSON list (the documented env form) or a comma-separated string."""
        return list_from_text(v)

    @field_validator("input_topics")
    @classmethod
    def _topics(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must list at least one topic")
        if len(set(v)) != len(v):
            raise ValueError("lists a topic twice")
        return [_topic(t) for t in v]

    @field_validator("output_topic", "dlq_topic")
    @classmethod
    def _one_topic(cls, v: str) -> str:
        return _topic(v)

    @field_validator("group_id", "client_id")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("group_instance_id")
    @classmethod
    def _instance(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not _INSTANCE_RE.match(v) or v in (".", ".."):
            raise ValueError(
                f"{v!r} is not a valid instance id (ASCII letters, digits, '.', '_', '-')"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSettings:
        loops = {self.output_topic, self.dlq_topic} & set(self.input_topics)
        if loops:
            field = "output_topic" if self.output_topic in loops else "dlq_topic"
            raise ValueError(f"{field}: {', '.join(sorted(loops))} is also an input topic")
        if self.output_topic == self.dlq_topic:
            raise ValueError("dlq_topic: must differ from output_topic")
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError(
                f"heartbeat_interval_ms: must be at most a third of session_timeout_ms ({self.session_timeout_ms})"
            )
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism is None:
                raise ValueError(
                    f"sasl_mechanism: security_protocol {self.security_protocol} needs one"
                )
            self._check_mechanism()
        idle = {**self.client, **self.consumer}.get("connections_max_idle_ms")
        if idle is not None and idle <= self.request_timeout_ms:
            raise ValueError(
                f"consumer: connections_max_idle_ms ({idle}) must exceed request_timeout_ms "
                f"({self.request_timeout_ms})"
            )
        return self

    def _check_mechanism(self) -> None:
        """What the SASL mechanism needs: credentials, a token source, a library."""
        mechanism = self.sasl_mechanism
        if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            if not self.sasl_plain_username or self.sasl_plain_password is None:
                missing = (
                    "sasl_plain_username" if not self.sasl_plain_username else "sasl_plain_password"
                )
                raise ValueError(f"{missing}: sasl_mechanism {mechanism} needs it")
        elif mechanism == "OAUTHBEARER":
            if not self.oauth.configured:
                raise ValueError(
                    "oauth: sasl_mechanism OAUTHBEARER needs a token source: "
                    "kafka.oauth.token_endpoint (with client_id and client_secret) or "
                    "kafka.oauth.provider (MODULE:ATTRIBUTE of a token provider)"
                )
        elif mechanism == "GSSAPI":
            import importlib.util

            if importlib.util.find_spec("gssapi") is None:
                raise ValueError(
                    "sasl_mechanism: GSSAPI (Kerberos) needs the gssapi package and the system's "
                    "Kerberos libraries (pip install gssapi), which are not installed"
                )
        elif mechanism == "AWS_MSK_IAM":
            import importlib.util

            if self.security_protocol != "SASL_SSL":
                raise ValueError("security_protocol: sasl_mechanism AWS_MSK_IAM needs SASL_SSL")
            if importlib.util.find_spec("botocore") is None:
                raise ValueError(
                    "sasl_mechanism: AWS_MSK_IAM needs the botocore package (pip install "
                    "botocore), which is not installed"
                )

    def client_config(self, **options: Any) -> dict[str, Any]:
        """Options for every kafka-python client we create: connection and security, then
        ``options`` (that client's own, from vaeguard), then ``kafka.client``."""
        config: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.security_protocol.startswith("SASL"):
            config["sasl_mechanism"] = self.sasl_mechanism
            if self.sasl_plain_username:
                config["sasl_plain_username"] = self.sasl_plain_username
            if self.sasl_plain_password is not None:
                config["sasl_plain_password"] = self.sasl_plain_password.get_secret_value()
            if self.sasl_mechanism == "OAUTHBEARER":
                config["sasl_oauth_token_provider"] = self._token_provider()
        if self.security_protocol in ("SSL", "SASL_SSL"):
            config["ssl_check_hostname"] = self.ssl_check_hostname
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                value = getattr(self, name)
                if value is not None:
                    config[name] = str(value)
            if self.ssl_password is not None:
                config["ssl_password"] = self.ssl_password.get_secret_value()
        return {**config, **options, **plain_options(self.client)}

    def consumer_config(self, **options: Any) -> dict[str, Any]:
        """`client_config` for a KafkaConsumer, with ``kafka.consumer`` over it."""
        return {**self.client_config(**options), **plain_options(self.consumer)}

    def producer_config(self, **options: Any) -> dict[str, Any]:
        """`client_config` for a KafkaProducer, with ``kafka.producer`` over it."""
        return {**self.client_config(**options), **plain_options(self.producer)}

    def _token_provider(self) -> Any:
        """One OAUTHBEARER token provider for every client of these settings (tokens reused)."""
        if self._oauth_provider is None:
            self._oauth_provider = self.oauth.token_provider()
        return self._oauth_provider


class RegistryStoreSettings(_Section):
    """An object-store registry's endpoint and credentials (model.path = ``s3://…``).

    Each one left unset comes from the standard AWS sources (``AWS_ENDPOINT_URL_S3`` or
    ``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``,
    profiles, instance roles).
    """

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https?://[^\s/?#]+/?", v.strip(), re.ASCII):
            raise ValueError("must be an http:// or https:// URL of the S3 endpoint (host[:port])")
        return v.strip() if v is not None else None

    @model_validator(mode="after")
    def _pair(self) -> RegistryStoreSettings:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("set access_key_id and secret_access_key together")
        return self

    def storage_options(self) -> dict[str, Any]:
        """s3fs's options for what is set here (the rest: the standard AWS sources)."""
        options: dict[str, Any] = {}
        if self.endpoint_url:
            options["endpoint_url"] = self.endpoint_url
        if self.region:
            options["client_kwargs"] = {"region_name": self.region}
        if self.access_key_id and self.secret_access_key is not None:
            options["key"] = self.access_key_id
            options["secret"] = self.secret_access_key.get_secret_value()
        return options


def _model_path(v: Any) -> Any:
    """An ``s3://`` URI stays text (a `Path` would fold its ``//``); anything else is a path."""
    from vaeguard.registry_store import canonical_uri, looks_like_uri

    if isinstance(v, str | Path) and looks_like_uri(v):
        try:
            return canonical_uri(v)
        except VaeguardError as exc:
            raise ValueError(str(exc)) from None
    return Path(v) if isinstance(v, str) else v


class ModelSettings(_Section):
    """Which model scores the stream, and on which device."""

    #: A model bundle directory (`vaeguard train --out`) or a model registry
    #: (`vaeguard train --registry`), whose CURRENT version the daemon follows; a registry
    #: may be on an object store: ``s3://bucket/prefix`` (``pip install 'vaeguard[s3]'``).
    path: Annotated[Path | str | None, BeforeValidator(_model_path)] = None
    #: An ``s3://`` registry's endpoint and credentials (see `RegistryStoreSettings`).
    s3: RegistryStoreSettings = Field(default_factory=RegistryStoreSettings)
    #: An ``s3://`` registry: the local folder its versions are downloaded to (None: the
    #: user's cache, ``$XDG_CACHE_HOME/vaeguard/registries/…``).
    cache_dir: Path | None = None
    device: str = "auto"
    #: How often to check the model path for a new version (0 = never).
    reload_interval_s: float = Field(30.0, ge=0)
    #: The alert budget: at most this many false alerts per 1,000 points per entity (window
    #: mode) or per 1,000 rows (tabular mode) on normal data. None: each bundle's own (set at
    #: training with --budget).
    alert_budget: float | None = Field(None, gt=0, lt=1000)
    #: Tabular models calibrated by their budget: re-estimate the threshold on the recent
    #: normal rows' scores as the stream goes (a slowly drifting process does not alarm on
    #: every row); false keeps the threshold the bundle was calibrated with.
    follow_normal: bool = True

    def registry_options(self) -> dict[str, Any]:
        """The keyword arguments `ModelRegistry` takes for an ``s3://`` path."""
        return {"storage_options": self.s3.storage_options(), "cache_dir": self.cache_dir}

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        v = v.strip().lower()
        if not _DEVICE_RE.match(v):
            raise ValueError(f"{v!r} is not one of auto, cpu, gpu:N")
        return v


class ScoringSettings(_Section):
    """Batching (tuned by benchmarks/throughput.py), explanations and severity."""

    batch_max_records: int = Field(2000, ge=1, le=100_000)
    batch_max_wait_ms: int = Field(20, ge=0, le=60_000)
    top_k: int = Field(3, ge=0)
    max_record_bytes: int = Field(262_144, ge=64)
    #: Largest message key, and entity field as text, accepted (bytes): a score record is keyed
    #: by the entity and carries it, so it must stay far below the producer's request limit.
    max_key_bytes: int = Field(4096, ge=16, le=65_536)
    #: Seconds without committed progress, while records wait, after which an assigned
    #: partition counts as stalled (/readyz not ready, vaeguard_partition_stalled = 1).
    stall_after_s: float = Field(120.0, ge=1, le=86_400)
    #: Severity name → minimum margin above the threshold, in nats (ascending, first is 0).
    severity_bands: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_BANDS))
    #: Window-mode models: folder of the per-entity state snapshot (windows, online scalers,
    #: likelihood histories), written before each commit and restored at start. None = memory
    #: only (after a restart each entity fills its window again before it is scored).
    state_dir: Path | None = None
    #: Seconds between two saves of that state; offsets are committed with each save.
    state_interval_s: float = Field(5.0, ge=0)
    #: Key of the HMAC-SHA256 that authenticates the state file (at least 16 characters); a
    #: file whose MAC does not verify is moved aside like a corrupt one. None = not
    #: authenticated (anyone who can write the folder can change the restored state).
    state_key: SecretStr | None = None

    @field_validator("severity_bands")
    @classmethod
    def _bands(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("must define at least one band")
        margins = list(v.values())
        if margins[0] != 0:
            raise ValueError("the first band must start at margin 0")
        if any(b <= a for a, b in itertools.pairwise(margins)):
            raise ValueError("margins must increase strictly")
        if NORMAL in v:
            raise ValueError(f"{NORMAL!r} is implicit (at or below the threshold)")
        return v

    @field_validator("state_key")
    @classmethod
    def _state_key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (an HMAC-SHA256 key)")
        return v

    @model_validator(mode="after")
    def _stall_after_a_save(self) -> ScoringSettings:
        if self.stall_after_s <= self.state_interval_s:
            raise ValueError(
                f"stall_after_s ({self.stall_after_s:g}) must exceed state_interval_s "
                f"({self.state_interval_s:g}): window mode commits only with each state save"
            )
        return self

    @property
    def bands(self) -> tuple[tuple[str, float], ...]:
        return tuple(self.severity_bands.items())


class OutputSettings(_Section):
    """What goes to the output topic."""

    #: ``all``: one score record per scored input record. ``anomalies``: score records only for
    #: records above the threshold (every record is still scored, counted in /metrics, alerted
    #: on, and committed only after its batch is done); the per-record produce cost disappears
    #: for normal traffic.
    mode: Literal["all", "anomalies"] = "all"


class HttpSettings(_Section):
    """The ops listener: /healthz, /readyz, /metrics."""

    enabled: bool = True
    host: str = "127.0.0.1"
    #: 0 picks any free port (logged at start).
    port: int = Field(8080, ge=0, le=65535)
    #: The most one connection may take to send its request and read the answer: a client
    #: that connects and then stalls is dropped after this long.
    request_timeout_s: float = Field(5.0, gt=0, le=300)
    #: Connections served at once, one thread each; more are answered 503 at once.
    max_connections: int = Field(16, ge=1, le=1024)


class SupervisorSettings(_Section):
    """`vaeguard run --workers N`: how the supervisor watches its workers."""

    #: A worker whose heartbeat (sent from its main loop, idle or not) is older than this is
    #: taken as hung and restarted (SIGTERM, SIGKILL after shutdown_grace_s). It must exceed
    #: the longest batch and a worker's start (imports, model load).
    hang_timeout_s: float = Field(120.0, ge=10, le=86_400)


class InputSettings(_Section):
    """What the input topics carry and where each feature is in it (`vaeguard.input_formats`).

    ``flat`` (the default) is vaeguard's own record; ``telegraf``, ``prometheus`` (the
    remote-write Kafka adapter) and ``otlp-json`` are read through the field mapping. The same
    section serves ``vaeguard train --settings``, so training and serving read alike.
    """

    format: Literal["flat", "telegraf", "prometheus", "otlp-json"] = "flat"
    #: Feature name → selector: a path with optional matchers for Telegraf
    #: (``fields.usage_user{name="cpu"}``), a metric with optional label matchers for the
    #: one-sample formats (``node_cpu_seconds_total{mode="user"}``). Empty: a feature is a
    #: Telegraf field / a metric of its own name.
    fields: dict[str, str] = Field(default_factory=dict)
    #: Path(s) of the entity (``tags.host``, ``labels.instance``, ``attributes.host.name``);
    #: several make a label set. Empty: the format's default (those three).
    entity: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Path of the timestamp (default ``timestamp``; OTLP: the data point's timeUnixNano).
    time: str | None = None
    #: Tabular models: a row holds the newest value of each feature within this interval.
    interval_s: float = Field(10.0, gt=0, le=86_400)
    #: Rows (one per entity and interval) waiting for their features, at most; the oldest
    #: closes first.
    max_rows: int = Field(10_000, ge=1, le=10_000_000)
    #: A row waits at most this long (wall clock) for its features; the commit waits with it.
    max_wait_s: float = Field(30.0, gt=0, le=3_600)
    #: A row still missing features when it closes: ``dead_letter`` (reason missing_feature)
    #: or ``mask`` (passed on without them: a model that cannot mask refuses it likewise).
    incomplete: Literal["dead_letter", "mask"] = "dead_letter"

    @field_validator("entity", mode="before")
    @classmethod
    def _entity_from_text(cls, v: Any) -> Any:
        """Accept a JSON list (the env form) or a comma-separated string."""
        return list_from_text(v)

    @model_validator(mode="after")
    def _mapping(self) -> InputSettings:
        if self.format == "flat" and (self.fields or self.entity or self.time):
            raise ValueError("format: flat takes no fields, entity or time mapping")
        self.spec()  # every selector and path parses
        return self

    def spec(self):
        """The mapping as `vaeguard.input_formats` takes it."""
        return InputSpec(
            format=self.format,
            fields=dict(self.fields),
            entity=tuple(self.entity),
            time=self.time,
            interval_s=self.interval_s,
            max_rows=self.max_rows,
            max_wait_s=self.max_wait_s,
            incomplete=self.incomplete,
        )


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


class Settings(BaseSettings):
    """Everything `vaeguard run` needs. See config/vaeguard.yaml for a commented example."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
        validate_default=True,
        nested_model_default_partial_update=True,
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    #: What the input topics carry (format) and where each feature is (field mapping).
    input: InputSettings = Field(default_factory=InputSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    supervisor: SupervisorSettings = Field(default_factory=SupervisorSettings)
    #: Seconds SIGTERM / SIGINT may take to finish the in-flight batch, commit and close.
    shutdown_grace_s: float = Field(30.0, gt=0)
    alerts: AlertsSettings = Field(default_factory=AlertsSettings)
    #: Periodic retraining, drift-triggered retraining (model.path must be a registry).
    retrain: RetrainSettings = Field(default_factory=RetrainSettings)

    @model_validator(mode="after")
    def _rows_wait_less_than_a_stall(self) -> Settings:
        """A waiting row holds its partition's commit (`vaeguard.records.inputs`) until it has
        waited input.max_wait_s and the next batch closes it: the stall detector must allow
        that, or it reports a partition that only waits for a row."""
        held = self.input.max_wait_s + self.scoring.batch_max_wait_ms / 1000
        if self.input.format != "flat" and held >= self.scoring.stall_after_s:
            raise ValueError(
                f"input.max_wait_s: {self.input.max_wait_s:g} s plus one batch wait "
                f"(scoring.batch_max_wait_ms = {self.scoring.batch_max_wait_ms} ms) must stay "
                f"below scoring.stall_after_s ({self.scoring.stall_after_s:g} s), since a row's "
                "samples hold their partition's commit while it waits and the partition would "
                "count as stalled; lower input.max_wait_s or raise scoring.stall_after_s"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        # The YAML file arrives as init arguments (see load_settings); the environment wins.
        return (env_settings, init_settings)

    def redacted(self) -> dict[str, Any]:
        """The settings as JSON-safe data with every secret masked, for the start-up log:
        `SecretStr` fields, credentials inside URLs (userinfo, token-like query parameters)
        and values of secret-named keys; in sinks every header value and URL path too
        (`AlertsSettings.redacted`)."""
        out = redact(self.model_dump(mode="json"))
        out["alerts"] = self.alerts.redacted()
        return out


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Settings from an optional YAML file and the environment; one `ConfigError` if invalid.

    ``overrides`` (section → mapping) are merged over the YAML, under the environment.
    """
    data: dict[str, Any] = read_yaml(config_file) if config_file else {}
    for section, values in overrides.items():
        if isinstance(values, Mapping) and isinstance(data.get(section), Mapping):
            data[section] = {**data[section], **values}
        else:
            data[section] = values
    _check_env_sections()
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, data, config_file)) from None
    except SettingsError as exc:
        raise ConfigError(_describe_settings_error(exc)) from None


def _check_env_sections() -> None:
    """An environment variable ``VAEGUARD_<SECTION>__…`` of no section is an unknown setting,
    as an unknown key inside a section is (pydantic-settings would skip it silently)."""
    known = sorted(Settings.model_fields)
    for name in sorted(os.environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or ENV_DELIMITER not in upper[len(ENV_PREFIX) :]:
            continue
        section = upper[len(ENV_PREFIX) :].split(ENV_DELIMITER, 1)[0].lower()
        if section not in known:
            close = difflib.get_close_matches(section, known, n=1)
            hint = f"did you mean {close[0]}?" if close else f"known sections: {', '.join(known)}"
            raise ConfigError(
                f"unknown setting {section} (from environment variable {name}); {hint}"
            )


def read_yaml(path: Path | str) -> dict[str, Any]:
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of sections, not {type(data).__name__}"
        )
    return data


def env_name(loc: tuple[Any, ...]) -> str:
    return ENV_PREFIX + ENV_DELIMITER.join(str(p).upper() for p in loc)


def _env_source(loc: tuple[Any, ...]) -> str | None:
    """The environment variable that set this location (or a parent of it), if any."""
    upper = {k.upper(): k for k in os.environ}
    for depth in range(len(loc), 0, -1):
        name = env_name(loc[:depth])
        if name in upper:
            return upper[name]
    return None


def _in_yaml(data: Mapping[str, Any], loc: tuple[Any, ...]) -> bool:
    node: Any = data
    for part in loc:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _known_fields(loc: tuple[Any, ...]) -> list[str]:
    model: Any = Settings
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None or not isinstance(field.annotation, type):
            return []
        model = field.annotation
    return sorted(getattr(model, "model_fields", {}))


def describe_errors(exc: ValidationError, data: Mapping[str, Any], config_file) -> str:
    """One line naming each invalid setting, its problem and where its value came from."""
    parts = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        msg = err["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            msg = msg.removeprefix(prefix)
        # Cross-field checks name their field as "field: problem"; move it into the location
        # (a kafka-python passthrough map names its key so).
        head, sep, rest = msg.partition(": ")
        path = tuple(head.split("."))  # a check across sections names "section.field"
        if sep and not loc and len(path) == 2 and path[1] in _known_fields(path):
            loc, msg = path, rest
            head, sep, rest = msg.partition(": ")
        if sep and (head in _known_fields((*loc, head)) or tuple(loc) in KAFKA_MAP_LOCS):
            loc, msg = (*loc, head), rest
        dotted = ".".join(str(p) for p in loc) or "(settings)"
        env = _env_source(loc)
        if env:
            origin = f" (from environment variable {env})"
        elif config_file and _in_yaml(data, loc):
            origin = f" (in {config_file})"
        else:
            origin = ""
        if err["type"] == "extra_forbidden":
            known = _known_fields(loc)
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            if close:
                hint = f"; did you mean {close[0]}?"
            else:
                hint = f"; known settings here: {', '.join(known)}" if known else ""
            parts.append(f"unknown setting {dotted}{origin}{hint}")
        elif err["type"] == "missing":
            parts.append(f"missing setting {dotted}")
        else:
            parts.append(f"invalid setting {dotted}{origin}: {msg}")
    return "; ".join(parts)


def _describe_settings_error(exc: SettingsError) -> str:
    match = re.search(r'field "([^"]+)"', str(exc))
    field = match.group(1) if match else None
    names = sorted(
        k
        for k in os.environ
        if k.upper().startswith(
            ENV_PREFIX + ((field or "").upper() + ENV_DELIMITER if field else "")
        )
    )
    where = f" (check {', '.join(names)})" if names else ""
    return f"invalid setting {field or '(environment)'}: a value from the environment is not valid JSON{where}"
