"""The ``alerts:`` section: sinks, routes, grouping / dedup / resolve, spool and delivery.

Nested into the daemon's settings as ``alerts`` (YAML, or ``VAEGUARD_ALERTS__...`` variables).
Each sink entry is ``name`` + ``type`` + that sink type's own settings, validated by the
plugin's pydantic model, so a mistake is reported as ``alerts.sinks[ops-webhook].url: ...``.
An absent or empty section means one `log` sink.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from vaeguard.alerts.sink import SinkSettings
from vaeguard.errors import ConfigError
from vaeguard.files import user_state_dir

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
#: Keys of a sink entry that belong to the core, not to the sink type's settings.
COMMON_SINK_KEYS = ("name", "type", "delivery", "repeat_interval_s", "send_resolved")
DEFAULT_SINK = {"name": "log", "type": "log"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class DeliverySettings(_Strict):
    """How hard to try a sink before an alert goes to the spool (per sink, overridable)."""

    #: Attempts after the first one, with exponential backoff and full jitter.
    retries: int = Field(3, ge=0, le=100)
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)
    #: One attempt's limit (connect + send + response), passed to the sink.
    timeout_s: float = Field(10.0, gt=0)
    #: Consecutive failed attempts that open the circuit breaker (alerts go straight to the
    #: spool), and how long it stays open before one probe is let through.
    breaker_failures: int = Field(5, ge=1)
    breaker_cooldown_s: float = Field(30.0, gt=0)
    #: Batches waiting for a sink's worker; beyond it they go to the spool (backpressure).
    queue_size: int = Field(16, ge=1)
    #: How long `process()` waits for a sink before spooling what is not delivered yet: the
    #: most a slow sink can delay a batch.
    max_wait_s: float = Field(5.0, ge=0)
    #: How often a non-empty spool is retried while the sink's breaker is closed.
    redelivery_interval_s: float = Field(5.0, gt=0)
    #: Alerts per `send` call, at most the sink type's own ``max_batch``.
    batch_size: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _order(self) -> DeliverySettings:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be at least backoff_initial_s")
        return self


class _SinkCommon(_Strict):
    repeat_interval_s: float | None = Field(None, ge=0)
    send_resolved: bool | None = None


class SinkConfig(BaseModel):
    """A configured sink: its name, type, the type's validated settings and overrides."""

    model_config = ConfigDict(frozen=True)

    name: str
    type: str
    settings: SerializeAsAny[SinkSettings]
    #: Overrides of ``alerts.delivery`` for this sink (validated).
    delivery: dict[str, Any] = Field(default_factory=dict)
    #: Overrides of ``alerts.repeat_interval_s`` / ``alerts.send_resolved`` for this sink.
    repeat_interval_s: float | None = None
    send_resolved: bool | None = None

    @model_serializer(mode="wrap")
    def _flat(self, handler, info) -> dict[str, Any]:
        # Dump in the YAML's flat shape; secrets stay masked in mode="json".
        out: dict[str, Any] = {"name": self.name, "type": self.type}
        out.update(self.settings.model_dump(mode=info.mode))
        if self.delivery:
            out["delivery"] = dict(self.delivery)
        if self.repeat_interval_s is not None:
            out["repeat_interval_s"] = self.repeat_interval_s
        if self.send_resolved is not None:
            out["send_resolved"] = self.send_resolved
        return out


def _as_list(v: Any) -> Any:
    return [v] if isinstance(v, str) else v


class RouteMatch(_Strict):
    """Every given condition must hold; patterns are shell globs (``host-*``)."""

    topic: list[str] | None = None
    entity: list[str] | None = None
    #: Exact severity names.
    severity: list[str] | None = None
    #: This severity or worse (by the configured band order).
    min_severity: str | None = None
    kind: list[Literal["anomaly", "system", "test"]] | None = None
    #: Label name → glob; a record without the label does not match.
    labels: dict[str, str] = Field(default_factory=dict)

    _lists = field_validator("topic", "entity", "severity", "kind", mode="before")(
        classmethod(lambda cls, v: _as_list(v))
    )


class RateLimit(_Strict):
    """At most ``max_alerts`` notifications per ``per_s`` seconds (a token bucket)."""

    max_alerts: int = Field(ge=1)
    per_s: float = Field(gt=0)


class Route(_Strict):
    """Alerts matching ``match`` go to ``sinks``; ``continue: true`` also tries later routes."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_default=True)

    name: str | None = None
    match: RouteMatch = Field(default_factory=RouteMatch)
    sinks: Annotated[list[str], Field(min_length=1)]
    continue_: bool = Field(False, alias="continue")
    rate_limit: RateLimit | None = None

    _sinks = field_validator("sinks", mode="before")(classmethod(lambda cls, v: _as_list(v)))


def default_spool_dir() -> Path:
    """The per-user state folder's ``spool`` (absolute: a daemon restarted from another
    working directory finds the alerts it spooled); ``vaeguard-state/spool`` without a home."""
    try:
        return user_state_dir() / "spool"
    except RuntimeError:
        return Path("vaeguard-state/spool")


class AlertsSettings(BaseModel):
    """The ``alerts:`` section. Empty means: log every alert (one `log` sink)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    sinks: list[SinkConfig] = Field(default_factory=list)
    #: Evaluated in order; without routes every alert goes to every sink.
    routes: list[Route] = Field(default_factory=list)
    #: Where alerts matching no route go: every sink (null) or the listed ones ([] = nowhere).
    default_sinks: list[str] | None = None
    #: What makes records one alert: ``topic``, ``entity`` and/or ``labels.<name>``.
    group_by: list[str] = Field(default_factory=lambda: ["topic", "entity"])
    #: An open episode is notified again after this long while it stays anomalous (0 = on
    #: every batch with an anomalous record). It is also notified at once when it escalates.
    repeat_interval_s: float = Field(4 * 3600.0, ge=0)
    #: An episode resolves after this many consecutive normal records of its group ...
    resolve_after_records: int = Field(5, ge=1)
    #: ... or after this long without any anomalous record (null = never by time).
    resolve_timeout_s: float | None = Field(None, gt=0)
    #: Notify sinks when an episode resolves.
    send_resolved: bool = True
    #: Open episodes kept at most (one per anomalous group): beyond it the least recently
    #: active one is closed early (notified as resolved, counted in
    #: vaeguard_alerts_episodes_evicted_total), so a flood of new entity keys cannot grow
    #: memory without bound.
    max_open_episodes: int = Field(10_000, ge=1)
    #: Durable per-sink spool of alerts not delivered yet (JSON lines, fsync'ed).
    spool_dir: Path = Field(default_factory=default_spool_dir)
    #: A sink's spool beyond this size refuses new alerts: `process()` raises, the daemon stops
    #: committing (backpressure to Kafka) instead of filling the disk.
    spool_max_mb: float = Field(512.0, gt=0)
    #: A sink's dead letters (alerts it can never deliver, in ``<spool_dir>/dead/``) beyond
    #: this size are rotated to one ``.1`` backup: the oldest are dropped, the disk stays bounded.
    dead_letter_max_mb: float = Field(64.0, gt=0)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)

    @field_validator("group_by")
    @classmethod
    def _group_by(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must name at least one of topic, entity, labels.<name>")
        for item in v:
            if item not in ("topic", "entity") and not (
                item.startswith("labels.") and len(item) > len("labels.")
            ):
                raise ValueError(f"{item!r} is not topic, entity or labels.<name>")
        if len(set(v)) != len(v):
            raise ValueError("lists an item twice")
        return v

    @model_validator(mode="wrap")
    @classmethod
    def _validate(cls, data: Any, handler) -> AlertsSettings:
        if not isinstance(data, Mapping):
            return handler(data)
        data = dict(data)
        errors: list[InitErrorDetails] = []
        raw_sinks = data.get("sinks")
        if raw_sinks is None or raw_sinks == []:
            raw_sinks = [dict(DEFAULT_SINK)]
        if isinstance(raw_sinks, list):
            sinks: list[Any] = []
            names: set[str] = set()
            raw_delivery = data.get("delivery")
            for i, raw in enumerate(raw_sinks):
                if isinstance(raw, SinkConfig):
                    config, errs = raw, []
                else:
                    config, errs = _validate_sink(i, raw, raw_delivery)
                errors.extend(errs)
                if config is not None:
                    if config.name in names:
                        errors.append(
                            _error(
                                (f"sinks[{config.name}]", "name"),
                                f"duplicate sink name {config.name!r} (sink names must be unique)",
                                config.name,
                            )
                        )
                    names.add(config.name)
                    sinks.append(config)
            data["sinks"] = sinks
        try:
            result = handler(data)
        except ValidationError as exc:
            errors.extend(_reraise(e, ()) for e in exc.errors())
            result = None
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        errors = _check_references(result)
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return result

    def redacted(self) -> dict[str, Any]:
        """JSON-safe, with secrets masked: what may be logged. `SecretStr` fields, credentials
        in URLs and secret-named keys everywhere; in sinks also every header value, whatever
        its name, and every URL's path, query and fragment (see `redact_sink`)."""
        from vaeguard.redaction import redact

        out = redact(self.model_dump(mode="json"))
        out["sinks"] = [redact_sink(s) for s in out["sinks"]]
        return out

    def sink(self, name: str) -> SinkConfig:
        for s in self.sinks:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.sinks)
        raise ConfigError(f"no sink named {name!r} in alerts.sinks (configured: {known})")

    def delivery_for(self, sink: SinkConfig) -> DeliverySettings:
        """This sink's delivery settings: ``alerts.delivery`` with its overrides."""
        if not sink.delivery:
            return self.delivery
        return DeliverySettings.model_validate({**self.delivery.model_dump(), **sink.delivery})

    def repeat_interval_for(self, sink: SinkConfig) -> float:
        return self.repeat_interval_s if sink.repeat_interval_s is None else sink.repeat_interval_s

    def send_resolved_for(self, sink: SinkConfig) -> bool:
        return self.send_resolved if sink.send_resolved is None else sink.send_resolved

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, origin: str = "alerts") -> AlertsSettings:
        """Validate an ``alerts:`` mapping; a `ConfigError` naming each bad setting if invalid."""
        try:
            return cls.model_validate(dict(data or {}))
        except ValidationError as exc:
            raise ConfigError(describe(exc, origin)) from None


#: A URL inside a longer text, and the scheme + authority a masked sink URL keeps.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
_STARTS_WITH_URL = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")
_HEADER_KEY = re.compile(r"header", re.IGNORECASE)


def _url_origin(url: str) -> str:
    """``scheme://authority/***``: a sink URL's path, query and fragment can be its credential
    (Slack's ``/services/T…/B…/<token>``, ``/api/<token>/…``); only where it points is kept."""
    scheme, _, rest = url.partition("://")
    end = next((i for i, c in enumerate(rest) if c in "/?#"), len(rest))
    tail = rest[end:]
    return f"{scheme}://{rest[:end]}" + ("" if tail in ("", "/") else "/***")


def redact_sink(data: Any, *, header: bool = False) -> Any:
    """A sink's JSON-safe settings (already through `redact`) as they may be logged: every
    value under a key naming headers is masked, whatever the header is called
    (``X-Functions-Key``, ``Ocp-Apim-Subscription-Key``...), and every URL keeps only its
    scheme and host. It errs on the side of masking: a sink's settings are its credentials."""
    from vaeguard.redaction import MASK

    if isinstance(data, dict):
        return {
            k: redact_sink(v, header=header or bool(_HEADER_KEY.search(str(k))))
            for k, v in data.items()
        }
    if isinstance(data, list | tuple):
        return [redact_sink(v, header=header) for v in data]
    if isinstance(data, str):
        if header and data:
            return MASK
        if "://" not in data:
            return data
        if _STARTS_WITH_URL.match(data):  # a URL setting: whole, even with a raw space in it
            return _url_origin(data.strip())
        return _URL_IN_TEXT.sub(lambda m: _url_origin(m.group(0)), data)
    return data


def describe(exc: ValidationError, prefix: str = "alerts") -> str:
    """One line naming every invalid setting: ``invalid setting alerts.sinks[x].url: ...``."""
    parts = []
    for err in exc.errors():
        dotted = (
            ".".join([prefix, *(str(p) for p in err["loc"])])
            if prefix
            else ".".join(str(p) for p in err["loc"])
        )
        msg = err["msg"]
        for p in ("Value error, ", "Assertion failed, "):
            msg = msg.removeprefix(p)
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown setting {dotted}")
        elif err["type"] == "missing":
            parts.append(f"missing setting {dotted}")
        else:
            parts.append(f"invalid setting {dotted}: {msg}")
    return "; ".join(parts)


def _error(
    loc: tuple[Any, ...], message: str, value: Any, kind: str = "value_error"
) -> InitErrorDetails:
    return InitErrorDetails(
        type=PydanticCustomError(kind, "{message}", {"message": message}), loc=loc, input=value
    )


def _reraise(
    err: Any, prefix: tuple[Any, ...], known: list[str] | None = None, what: str = ""
) -> InitErrorDetails:
    """A pydantic error dict as InitErrorDetails under ``prefix`` (keeps type and message)."""
    loc = (*prefix, *err["loc"])
    if err["type"] == "extra_forbidden" and known is not None:
        return _error(
            loc,
            f"unknown setting for {what}; known settings: {', '.join(known)}",
            err.get("input"),
        )
    return InitErrorDetails(
        type=PydanticCustomError(err["type"], "{message}", {"message": err["msg"]}),
        loc=loc,
        input=err.get("input"),
    )


def _validate_sink(
    index: int, raw: Any, raw_delivery: Any
) -> tuple[SinkConfig | None, list[InitErrorDetails]]:
    from vaeguard.alerts import discovery

    if not isinstance(raw, Mapping):
        return None, [
            _error(
                ("sinks", index), "must be a mapping with name, type and the sink's settings", raw
            )
        ]
    name = raw.get("name")
    label = f"sinks[{name}]" if isinstance(name, str) and name else f"sinks[{index}]"
    errors: list[InitErrorDetails] = []
    if not isinstance(name, str) or not name:
        errors.append(_error((label, "name"), "every sink needs a name", name, "missing"))
    elif not _NAME_RE.match(name):
        errors.append(
            _error(
                (label, "name"),
                f"{name!r} is not a valid sink name (letters, digits, '.', '_', '-')",
                name,
            )
        )
    type_name = raw.get("type")
    cls = None
    if not isinstance(type_name, str) or not type_name:
        installed = ", ".join(discovery.sink_types()) or "none"
        errors.append(
            _error(
                (label, "type"),
                f"every sink needs a type; installed sink types: {installed}",
                type_name,
            )
        )
    else:
        try:
            cls = discovery.load_sink_class(type_name)
        except ConfigError as exc:
            errors.append(_error((label, "type"), str(exc), type_name))
    settings = None
    if cls is not None:
        own = {k: v for k, v in raw.items() if k not in COMMON_SINK_KEYS}
        try:
            settings = cls.Settings.model_validate(own)
        except ValidationError as exc:
            known = sorted(cls.Settings.model_fields)
            errors.extend(_reraise(e, (label,), known, f"a {type_name} sink") for e in exc.errors())
    overrides = raw.get("delivery") or {}
    if not isinstance(overrides, Mapping):
        errors.append(
            _error((label, "delivery"), "must be a mapping of delivery settings", overrides)
        )
        overrides = {}
    else:
        base = dict(raw_delivery) if isinstance(raw_delivery, Mapping) else {}
        try:
            DeliverySettings.model_validate({**base, **overrides})
        except ValidationError as exc:
            known = sorted(DeliverySettings.model_fields)
            for e in exc.errors():
                if not e["loc"] or e["loc"][0] in overrides or e["type"] == "extra_forbidden":
                    errors.append(_reraise(e, (label, "delivery"), known, "delivery"))
    common = {k: raw[k] for k in ("repeat_interval_s", "send_resolved") if k in raw}
    try:
        extra = _SinkCommon.model_validate(common)
    except ValidationError as exc:
        errors.extend(_reraise(e, (label,)) for e in exc.errors())
        extra = _SinkCommon()
    if errors or settings is None:
        return None, errors
    return (
        SinkConfig(
            name=name,
            type=type_name,
            settings=settings,
            delivery=dict(overrides),
            repeat_interval_s=extra.repeat_interval_s,
            send_resolved=extra.send_resolved,
        ),
        [],
    )


def _check_references(settings: AlertsSettings) -> list[InitErrorDetails]:
    names = [s.name for s in settings.sinks]
    configured = ", ".join(names)
    errors = []
    for i, route in enumerate(settings.routes):
        for sink in route.sinks:
            if sink not in names:
                errors.append(
                    _error(
                        ("routes", i, "sinks"),
                        f"unknown sink {sink!r} (configured: {configured})",
                        sink,
                    )
                )
    for sink in settings.default_sinks or []:
        if sink not in names:
            errors.append(
                _error(
                    ("default_sinks",), f"unknown sink {sink!r} (configured: {configured})", sink
                )
            )
    return errors
