"""What vaeguard passes to kafka-python beyond its own settings: the keys a passthrough map
(``kafka.client`` / ``consumer`` / ``producer``) may hold, checked against kafka-python's own
defaults and read to their types, and the OAuth 2.0 client-credentials token provider.

Kept apart from `vaeguard.config` (which declares the settings) because this is knowledge of
the Kafka client library, not of vaeguard's configuration file.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, FilePath, SecretStr, ValidationError

from vaeguard.settings_text import list_from_text

#: kafka-python settings refused in kafka.client / consumer / producer, and why: a setting of
#: its own here, or one vaeguard sets itself (its delivery guarantees depend on it).
KAFKA_OWNED: dict[str, str] = {
    **{
        name: f"has a setting of its own: kafka.{name}"
        for name in (
            "bootstrap_servers",
            "client_id",
            "group_id",
            "group_instance_id",
            "session_timeout_ms",
            "heartbeat_interval_ms",
            "max_poll_interval_ms",
            "request_timeout_ms",
            "auto_offset_reset",
            "security_protocol",
            "sasl_mechanism",
            "sasl_plain_username",
            "sasl_plain_password",
            "ssl_cafile",
            "ssl_certfile",
            "ssl_keyfile",
            "ssl_password",
            "ssl_check_hostname",
        )
    },
    "sasl_oauth_token_provider": "set kafka.oauth (a token endpoint or a provider entry point)",
    **{
        name: f"set by vaeguard: {why}"
        for why, names in {
            "it commits offsets itself, after a batch's outputs are acknowledged": (
                "enable_auto_commit",
                "auto_commit_interval_ms",
                "default_offset_commit_callback",
            ),
            "it follows scoring.batch_max_records": ("max_poll_records",),
            "it follows scoring.batch_max_wait_ms (a fetch must not outwait a batch)": (
                "fetch_max_wait_ms",
            ),
            "vaeguard polls; the iterator's timeout does not apply": ("consumer_timeout_ms",),
            "vaeguard reads and writes the raw bytes itself": (
                "key_deserializer",
                "value_deserializer",
                "key_serializer",
                "value_serializer",
            ),
            "offsets are committed only after all replicas acknowledged the outputs (acks=all)": (
                "acks",
            ),
            "it follows kafka.request_timeout_ms": ("max_block_ms", "delivery_timeout_ms"),
            "dead letters are cut to fit the producer's 1 MiB request limit": ("max_request_size",),
            "score records are partitioned by their entity key": ("partitioner",),
            "no transactions (at-least-once: offsets committed after the broker's ack)": (
                "transactional_id",
                "transaction_timeout_ms",
            ),
        }.items()
        for name in names
    },
}
#: kafka-python settings whose default does not tell their type (None, inf): how to read them.
_KAFKA_CHOICES: dict[str, tuple[str, ...]] = {
    "compression_type": ("gzip", "snappy", "lz4", "zstd"),
    "isolation_level": ("read_uncommitted", "read_committed"),
    "client_dns_lookup": ("use_all_dns_ips", "resolve_canonical_bootstrap_servers_only"),
}
_KAFKA_TEXT = frozenset(
    {"client_rack", "ssl_ciphers", "sasl_kerberos_name", "sasl_kerberos_service_name"}
    | {"sasl_kerberos_domain_name"}
)
#: Proxy URLs may carry credentials: kept as secrets (masked in logs and reprs).
_KAFKA_SECRET_TEXT = frozenset({"proxy_url", "socks5_proxy"})
_KAFKA_FILES = frozenset({"ssl_crlfile"})
_KAFKA_COUNTS = frozenset({"receive_buffer_bytes", "send_buffer_bytes", "retries"})
#: The library each compression codec needs (kafka.codec's has_* checks), for the error.
_CODEC_PACKAGES = {"snappy": "python-snappy", "lz4": "lz4", "zstd": "zstandard"}
#: partition_assignment_strategy by name (kafka.coordinator.assignors).
_ASSIGNORS = {
    "range": "kafka.coordinator.assignors.range:RangePartitionAssignor",
    "roundrobin": "kafka.coordinator.assignors.roundrobin:RoundRobinPartitionAssignor",
    "sticky": "kafka.coordinator.assignors.sticky.sticky_assignor:StickyPartitionAssignor",
    "cooperative-sticky": (
        "kafka.coordinator.assignors.cooperative_sticky:CooperativeStickyAssignor"
    ),
}
#: kafka.<map> → the clients it applies to.
KAFKA_MAPS = {
    "client": ("consumer", "producer"),
    "consumer": ("consumer",),
    "producer": ("producer",),
}
KAFKA_MAP_LOCS = frozenset(("kafka", name) for name in KAFKA_MAPS)


def kafka_defaults(kind: str) -> dict[str, Any]:
    """kafka-python's own settings of a client kind (its DEFAULT_CONFIG): what may pass."""
    from kafka import KafkaConsumer, KafkaProducer

    return dict((KafkaConsumer if kind == "consumer" else KafkaProducer).DEFAULT_CONFIG)


def import_object(spec: str) -> Any:
    """``module:attribute`` (or ``module.attribute``) → the object; ValueError if absent."""
    import importlib

    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"{spec!r} is not MODULE:ATTRIBUTE")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import error, or the module failing as it runs
        raise ValueError(f"cannot import {module_name} ({type(exc).__name__}: {exc})") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{module_name} has no {attr}")
        obj = getattr(obj, part)
    return obj


def kafka_value(key: str, value: Any, default: Any) -> Any:
    """One passthrough value in the type kafka-python expects; ValueError with the problem."""
    from pydantic import TypeAdapter

    def read(kind: Any, what: str) -> Any:
        try:
            return TypeAdapter(kind).validate_python(value)
        except ValidationError:
            raise ValueError(f"must be {what}, not {value!r:.60}") from None

    if key in _KAFKA_CHOICES:
        choices = _KAFKA_CHOICES[key]
        text = read(str, "text").strip().lower()
        if key == "compression_type" and text in ("none", ""):
            return None
        if text not in choices:
            raise ValueError(f"{text!r:.60} is not one of {', '.join(choices)}")
        if key == "compression_type":
            import kafka.codec

            if not getattr(kafka.codec, f"has_{text}")():
                raise ValueError(
                    f"{text} compression needs the {_CODEC_PACKAGES[text]} package, which is "
                    f"not installed (pip install {_CODEC_PACKAGES[text]})"
                )
        return text
    if key in _KAFKA_SECRET_TEXT:
        return SecretStr(read(str, "text"))
    if key in _KAFKA_TEXT:
        return read(str, "text")
    if key in _KAFKA_FILES:
        return str(read(FilePath, "an existing file"))
    if key in _KAFKA_COUNTS:
        return read(Annotated[int, Field(ge=0)], "a whole number >= 0")
    if key == "api_version":
        if isinstance(value, str):
            try:
                version: tuple[int, ...] = tuple(int(p) for p in value.strip().split("."))
            except ValueError:
                version = ()
        else:
            version = read(tuple[int, ...], 'a broker version such as "3.6" or [3, 6]')
        if not 1 <= len(version) <= 4 or min(version) < 0:
            raise ValueError(f'must be a broker version such as "3.6", not {value!r:.60}')
        return version
    if key == "partition_assignment_strategy":
        names = read(Annotated[list[str], BeforeValidator(list_from_text)], "a list of names")
        unknown = [n for n in names if n not in _ASSIGNORS]
        if not names or unknown:
            raise ValueError(
                f"must list assignors by name: {', '.join(_ASSIGNORS)}"
                + (f" (not {unknown[0]!r:.40})" if unknown else "")
            )
        return tuple(names)
    if key == "socket_options":
        options = read(list[tuple[int, int, int]], "a list of [level, option, value] numbers")
        return [tuple(o) for o in options]
    if isinstance(default, bool):
        return read(bool, "true or false")
    if isinstance(default, int):
        return read(Annotated[int, Field(ge=0)], "a whole number >= 0")
    if isinstance(default, float) and default != float("inf"):
        return read(Annotated[float, Field(ge=0, allow_inf_nan=False)], "a number >= 0")
    if isinstance(default, str):
        return read(str, "text")
    raise ValueError("takes a Python object, which a settings file cannot give")


def kafka_map(section: str, values: Any) -> dict[str, Any]:
    """Check a kafka.client / consumer / producer map against kafka-python's own settings."""
    if not isinstance(values, Mapping):
        return values  # pydantic's dict check names the problem
    kinds = KAFKA_MAPS[section]
    configs = [kafka_defaults(kind) for kind in kinds]
    accepted = set.intersection(*(set(c) for c in configs))
    everything = set(kafka_defaults("consumer")) | set(kafka_defaults("producer"))
    out: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = str(raw_key).strip().lower().replace("-", "_").replace(".", "_")
        where = str(raw_key)
        if not re.fullmatch(r"[\w.-]{1,100}", where, re.ASCII):  # quoted, on one line
            where = ascii(where[:60]).replace(": ", ":")
        if key in KAFKA_OWNED:
            raise ValueError(f"{where}: {KAFKA_OWNED[key]}")
        if key not in accepted:
            if key in everything:
                only = "consumer" if key in kafka_defaults("consumer") else "producer"
                raise ValueError(
                    f"{where}: a {only}-only setting of kafka-python; put it under kafka.{only}"
                )
            close = difflib.get_close_matches(key, sorted(accepted - KAFKA_OWNED.keys()), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            what = "client (consumer and producer)" if section == "client" else section
            raise ValueError(f"{where}: not a kafka-python {what} setting{hint}")
        if key in out:
            raise ValueError(f"{where}: given twice")
        try:
            out[key] = kafka_value(key, value, configs[0][key])
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return out


def plain_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """A passthrough map as kafka-python takes it: secrets revealed, assignors imported."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif key == "partition_assignment_strategy":
            value = tuple(import_object(_ASSIGNORS[name]) for name in value)
        out[key] = value
    return out


def client_credentials_provider() -> type:
    """The OAuth 2.0 client-credentials token provider (a kafka-python AbstractTokenProvider,
    defined on first use so that the settings load without importing kafka-python)."""
    global _CLIENT_CREDENTIALS
    if _CLIENT_CREDENTIALS is not None:
        return _CLIENT_CREDENTIALS
    import base64
    import threading
    import time
    import urllib.error
    import urllib.parse
    import urllib.request

    from kafka.errors import KafkaConnectionError
    from kafka.net.sasl.oauth import AbstractTokenProvider

    class ClientCredentialsTokenProvider(AbstractTokenProvider):
        """Fetches a token from the endpoint and reuses it until shortly before it expires."""

        def __init__(self, settings: Any):  # a `vaeguard.config.KafkaOAuthSettings`
            self.settings = settings
            self._lock = threading.Lock()
            self._token: str | None = None
            self._renew_at = 0.0

        def token(self) -> str:
            with self._lock:
                if self._token is None or time.monotonic() >= self._renew_at:
                    self._token, lifetime = self._fetch()
                    # Renew at 80 % of the lifetime, so a connection never presents a stale one.
                    self._renew_at = time.monotonic() + 0.8 * lifetime
                return self._token

        def extensions(self) -> dict[str, str]:
            return dict(self.settings.extensions)

        def _fetch(self) -> tuple[str, float]:
            s = self.settings
            form = {"grant_type": "client_credentials"}
            if s.scope:
                form["scope"] = s.scope
            secret = s.client_secret.get_secret_value() if s.client_secret else ""
            basic = base64.b64encode(
                f"{urllib.parse.quote(s.client_id or '', safe='')}:"
                f"{urllib.parse.quote(secret, safe='')}".encode()
            ).decode()
            request = urllib.request.Request(
                s.token_endpoint or "",
                data=urllib.parse.urlencode(form).encode(),
                headers={
                    "Authorization": f"Basic {basic}",
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Accept": "application/json",
                },
                method="POST",
            )
            try:
                with urllib.request.urlopen(request, timeout=s.timeout_s) as response:
                    body = json.loads(response.read(1_000_000))
            except urllib.error.HTTPError as exc:
                raise KafkaConnectionError(
                    f"OAuth token endpoint answered HTTP {exc.code}"
                ) from None
            except (OSError, ValueError) as exc:
                raise KafkaConnectionError(
                    f"OAuth token endpoint failed: {type(exc).__name__}: {exc}"
                ) from None
            token = body.get("access_token") if isinstance(body, dict) else None
            if not isinstance(token, str) or not token:
                raise KafkaConnectionError("OAuth token endpoint answered without access_token")
            lifetime = body.get("expires_in", 3600)
            if not isinstance(lifetime, int | float) or not lifetime > 0:
                lifetime = 3600
            return token, float(lifetime)

        def __repr__(self) -> str:
            return f"ClientCredentialsTokenProvider({self.settings.token_endpoint})"

    _CLIENT_CREDENTIALS = ClientCredentialsTokenProvider
    return _CLIENT_CREDENTIALS


_CLIENT_CREDENTIALS: type | None = None
