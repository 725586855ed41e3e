"""Input formats: Telegraf, Prometheus (Kafka adapter) and OTLP JSON messages → flat records.

Nobody's metrics arrive as vaeguard's flat record (one JSON object keyed by the model's feature
names). This module turns one decoded message of a known wire shape into zero or more flat
records, so everything after it (the serving classes, retraining, the CLI) sees one shape only.
It is a *source* of the ingestion contract (`vaeguard.ingest`): the message is decoded there,
every value goes through `to_number`, every time through `to_timestamp`, and a refusal is a
`Rejection` with the contract's `Reason` codes, never an exception.

The formats (``input.format``):

* ``flat``: the message is the record (today's behaviour; this module is not involved);
* ``telegraf``: Telegraf's JSON serializer, ``{"name", "tags", "fields", "timestamp"}``, or
  its batch form ``{"metrics": [...]}``;
* ``prometheus``: the Prometheus remote-write Kafka adapter, one sample per message:
  ``{"name", "labels", "value": "<decimal string>", "timestamp": "<RFC 3339>"}``;
* ``otlp-json``: an OpenTelemetry ``ExportMetricsServiceRequest`` in its JSON encoding
  (``resourceMetrics`` → ``scopeMetrics`` → ``metrics`` → ``gauge`` / ``sum`` →
  ``dataPoints``); other metric types (histograms, summaries) are skipped.

Each message becomes *views* (a Telegraf metric; a Prometheus sample; an OTLP data point as
``{"name", "unit", "attributes": resource + scope + point attributes, "resource", "value",
"timestamp"}``). The field mapping reads them: ``input.entity`` and ``input.time`` are paths
into a view (``tags.host``, ``labels.instance``, ``attributes.host.name``: a key may itself hold
dots), and ``input.fields`` maps a feature to a *selector*: for Telegraf a path with optional
matchers (``fields.usage_user{name="cpu", tags.cpu="cpu-total"}``), for the one-sample formats a
metric name with optional label matchers, as in PromQL (``node_load1``,
``node_cpu_seconds_total{mode="user"}``). Without a mapping a feature is a Telegraf field / a
metric of its own name. A view no selector matches is not an error: it is counted as unmapped.

A selector may also read a property of the sample: a Telegraf tag (``tags.role``), a Prometheus
label (``labels.role``), an OTLP attribute (``attributes.service.namespace``, or
``resource.…`` for the resource's only); in the one-sample formats a path starting with
``labels.`` / ``attributes.`` / ``resource.`` is such a path, not a metric name. That is how a
CVAE's categorical condition (entity type, region, …) comes from the record: its value is taken
as it is (a category, not a number; the model's ``labels``), and it rides with the samples of
the features: a view that only carries it is unmapped, and a row that closes without it is
incomplete like a row without a feature (the flat record's rule: a missing condition is
``missing_feature``; a category unseen in training is scored, as the encoder says).

A model that needs every feature in one row (tabular) gets rows assembled per entity
(`RowAssembler`): the newest value of each feature within an alignment interval, the row
closing as soon as it holds every feature, when it has waited ``max_wait_s``, or when more
than ``max_rows`` rows wait; an incomplete row is dead-lettered (``missing_feature``) or passed on with the
missing features absent (``mask``: a model that can mask scores it; one that cannot refuses it
with the same reason).
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vaeguard.ingest import (
    Reason,
    Rejection,
    decode,
    entity_text,
    short_detail,
    to_number,
    to_timestamp,
)

__all__ = [
    "FORMATS",
    "INCOMPLETE",
    "Decoded",
    "InputSpec",
    "RowAssembler",
    "Sample",
    "Selector",
    "parse_selector",
    "samples_of",
]

FORMATS = ("flat", "telegraf", "prometheus", "otlp-json")
#: What a row still missing features becomes when it closes.
INCOMPLETE = ("dead_letter", "mask")
#: The formats with one sample per message (or per data point): their rows are assembled.
LONG_FORMATS = ("prometheus", "otlp-json")

#: Defaults of the mapping per format: the entity path and the time path.
DEFAULT_ENTITY = {
    "telegraf": ("tags.host",),
    "prometheus": ("labels.instance",),
    "otlp-json": ("attributes.host.name",),
}
DEFAULT_TIME = {"telegraf": "timestamp", "prometheus": "timestamp", "otlp-json": "timestamp"}
#: Most views one message may yield (a Telegraf batch, an OTLP request): a bound on the work
#: one message can cause, far above what either sender puts in one Kafka message.
MAX_VIEWS = 10_000

#: The first path segment of a selector that reads a property of the sample, per format.
LABEL_ROOTS = {
    "telegraf": ("tags",),
    "prometheus": ("labels",),
    "otlp-json": ("attributes", "resource"),
}

_SELECTOR = re.compile(r"^\s*([^{}\s]+)\s*(?:\{(.*)\})?\s*$", re.S)
_MATCHER = re.compile(r'\s*([^=,\s"]+)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')


@dataclass(frozen=True)
class Selector:
    """Where a feature's value is in a view: ``path``, in views whose ``matchers`` all hold."""

    path: tuple[str, ...]
    matchers: tuple[tuple[tuple[str, ...], str], ...] = ()
    #: Reads a tag / label / attribute: it rides with a sample, never makes one by itself.
    label: bool = False

    def value(self, view: Mapping[str, Any]) -> tuple[bool, Any]:
        """(whether the view is this feature's, its value there)."""
        for where, wanted in self.matchers:
            found, got = lookup(view, where)
            if not found or _label(got) != wanted:
                return False, None
        return lookup(view, self.path)


def parse_selector(text: str, fmt: str) -> Selector:
    """A selector's text → `Selector`; ValueError naming the problem if it is not one."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a selector must be a non-empty string")
    match = _SELECTOR.match(text)
    if match is None:
        raise ValueError(f'{text!r} is not PATH or PATH{{key="value", ...}}')
    head, body = match.group(1), match.group(2)
    matchers: list[tuple[tuple[str, ...], str]] = []
    if body is not None and body.strip():
        pos = 0
        while pos < len(body):
            m = _MATCHER.match(body, pos)
            if m is None or m.end() == pos:
                raise ValueError(f'{text!r}: expected key="value" at {body[pos:]!r}')
            matchers.append((m.group(1), re.sub(r"\\(.)", r"\1", m.group(2))))
            pos = m.end()
    label = "." in head and head.split(".", 1)[0] in LABEL_ROOTS.get(fmt, ())
    if fmt in LONG_FORMATS and not label:  # metric name + labels (PromQL)
        container = "labels" if fmt == "prometheus" else "attributes"
        where = [(("name",), head)] + [((container, k), v) for k, v in matchers]
        return Selector(("value",), tuple(where))
    return Selector(_path(head), tuple((_path(k), v) for k, v in matchers), label)


def _path(text: str) -> tuple[str, ...]:
    parts = tuple(text.split("."))
    if not all(parts):
        raise ValueError(f"{text!r} is not a dotted path")
    return parts


def lookup(node: Any, path: Sequence[str]) -> tuple[bool, Any]:
    """(found, value) of a dotted path; at each level the longest key that exists wins, so
    ``attributes.host.name`` finds the key ``host.name``."""
    if not path:
        return True, node
    if not isinstance(node, Mapping):
        return False, None
    for k in range(len(path), 0, -1):
        key = ".".join(path[:k]) if k > 1 else path[0]
        if key in node:
            found, value = lookup(node[key], path[k:])
            if found:
                return True, value
    return False, None


def _label(value: Any) -> str:
    return value if isinstance(value, str) else entity_text(value)


@dataclass(frozen=True)
class InputSpec:
    """The ``input:`` settings, as this module needs them (`vaeguard.config.InputSettings`)."""

    format: str = "flat"
    #: Feature name → selector text (empty: a feature is a field / metric of its own name).
    fields: Mapping[str, str] = field(default_factory=dict)
    #: Path(s) of the entity in a view; several make a label set ``k=v,k=v``.
    entity: tuple[str, ...] = ()
    #: Path of the time in a view (None: the format's default).
    time: str | None = None
    interval_s: float = 10.0
    max_rows: int = 10_000
    max_wait_s: float = 30.0
    incomplete: str = "dead_letter"

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"format: {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.incomplete not in INCOMPLETE:
            raise ValueError(f"incomplete: {self.incomplete!r} is not one of dead_letter, mask")
        for name, text in self.fields.items():
            try:
                parse_selector(text, self.format if self.format != "flat" else "telegraf")
            except ValueError as exc:
                raise ValueError(f"fields.{name}: {exc}") from None
        for text in self.entity:
            _path(text)
        if self.time is not None:
            _path(self.time)

    @property
    def flat(self) -> bool:
        return self.format == "flat"

    @property
    def long(self) -> bool:
        return self.format in LONG_FORMATS


@dataclass(slots=True)
class Sample:
    """What one view says: an entity's values of some features at one time (epoch seconds)."""

    entity: str
    time: float
    #: Numbers, and the raw values of the model's labels (categorical conditions).
    values: dict[str, Any]


@dataclass
class Decoded:
    """One message's samples, the first refusal among its views (if any), views unmapped."""

    samples: list[Sample] = field(default_factory=list)
    rejection: Rejection | None = None
    refused: int = 0
    unmapped: int = 0

    def refuse(self, rejection: Rejection) -> None:
        self.refused += 1
        if self.rejection is None:
            self.rejection = rejection


class FieldMapping:
    """An `InputSpec` compiled: selectors parsed, defaults filled (built once per settings)."""

    def __init__(self, spec: InputSpec, known: Iterable[str] = (), labels: Iterable[str] = ()):
        """``known``: the model's features; without a mapping, other fields / metrics are
        not features (another metric on the same topic is unmapped, not a new feature).
        ``labels``: those taken as they are (categories), not read as numbers."""
        self.spec = spec
        self.known = frozenset(known)
        self.labels = frozenset(labels)
        fmt = spec.format
        self.selectors = {
            name: parse_selector(text, fmt if fmt != "flat" else "telegraf")
            for name, text in spec.fields.items()
        }
        self.entity = tuple(_path(p) for p in spec.entity or DEFAULT_ENTITY.get(fmt, ()))
        self.entity_names = tuple(p[-1] for p in self.entity)
        self.time = _path(spec.time or DEFAULT_TIME.get(fmt, "timestamp"))

    def features(self, view: Mapping[str, Any]) -> Iterator[tuple[str, Any, bool]]:
        """(feature, raw value, whether a tag / label selector found it) of every feature this
        view holds."""
        if self.selectors:
            for name, selector in self.selectors.items():
                found, value = selector.value(view)
                if found:
                    yield name, value, selector.label
        elif self.spec.format == "telegraf":
            fields = view.get("fields")
            if isinstance(fields, Mapping):
                for name, value in fields.items():
                    if not self.known or name in self.known:
                        yield name, value, False
        else:
            name = view.get("name")
            if isinstance(name, str) and "value" in view and (not self.known or name in self.known):
                yield name, view["value"], False


def samples_of(obj: dict[str, Any], mapping: FieldMapping) -> Decoded:
    """One decoded message → its samples (never raises; a bad view is a `Rejection`)."""
    out = Decoded()
    try:
        views = _views(obj, mapping.spec.format)
        if isinstance(views, Rejection):
            out.refuse(views)
            return out
        for view in views:
            _sample(view, mapping, out)
    except RecursionError:
        out.refuse(Rejection(Reason.TOO_DEEP, "RecursionError", "the message nests too deep"))
    return out


def _sample(view: Mapping[str, Any], mapping: FieldMapping, out: Decoded) -> None:
    raw = list(mapping.features(view))
    measured = [name for name, _, label in raw if not label]
    if not measured:  # nothing, or only tags / labels: they ride with a measurement
        out.unmapped += 1
        return
    values: dict[str, Any] = {}
    for name, value, _ in raw:
        if name in mapping.labels:  # a category: taken as it is (None: absent)
            if value is not None:
                values[name] = value
            continue
        number = to_number(value, f"feature {name!r}")
        if isinstance(number, Rejection):
            out.refuse(number)
            return
        if number is not None:
            values[name] = number
    if not any(name in values for name in measured):
        out.refuse(
            Rejection(Reason.MISSING_FEATURE, "ValueError", f"feature {measured[0]!r} has no value")
        )
        return
    entity = _entity(view, mapping)
    if isinstance(entity, Rejection):
        out.refuse(entity)
        return
    found, when = lookup(view, mapping.time)
    stamp = (
        to_timestamp(when, ".".join(mapping.time))
        if found
        else Rejection(
            Reason.INVALID_TIMESTAMP,
            "ValueError",
            f"the time {'.'.join(mapping.time)} is missing",
        )
    )
    if isinstance(stamp, Rejection):
        out.refuse(stamp)
        return
    out.samples.append(Sample(entity, stamp, values))


def _entity(view: Mapping[str, Any], mapping: FieldMapping) -> str | Rejection:
    parts = []
    for path, name in zip(mapping.entity, mapping.entity_names, strict=True):
        found, value = lookup(view, path)
        if not found or value is None or value == "":
            return Rejection(
                Reason.INVALID_FIELD, "ValueError", f"the entity {'.'.join(path)} is missing"
            )
        parts.append((name, _label(value)))
    if len(parts) == 1:
        return parts[0][1]
    return ",".join(f"{k}={v}" for k, v in parts)


def _shape(detail: str) -> Rejection:
    return Rejection(Reason.INVALID_FIELD, "ValueError", short_detail(detail))


def _views(obj: dict[str, Any], fmt: str) -> list[Mapping[str, Any]] | Rejection:
    if fmt == "telegraf":
        return _telegraf(obj)
    if fmt == "prometheus":
        return _prometheus(obj)
    if fmt == "otlp-json":
        return _otlp(obj)
    return [obj]


def _telegraf(obj: dict[str, Any]) -> list[Mapping[str, Any]] | Rejection:
    metrics = obj.get("metrics") if "fields" not in obj else None
    if metrics is None:
        metrics = [obj]
    if not isinstance(metrics, list):
        return _shape("telegraf: 'metrics' is not an array")
    if len(metrics) > MAX_VIEWS:
        return _shape(f"telegraf: {len(metrics)} metrics in one message, more than {MAX_VIEWS}")
    views = []
    for i, metric in enumerate(metrics):
        where = "telegraf" if metric is obj else f"telegraf: metrics[{i}]"
        if not isinstance(metric, dict):
            return _shape(f"{where} is not an object")
        if not isinstance(metric.get("fields"), dict):
            return _shape(f"{where}: 'fields' is missing or not an object")
        tags = metric.get("tags", {})
        if not isinstance(tags, dict):
            return _shape(f"{where}: 'tags' is not an object")
        views.append(metric)
    return views


def _prometheus(obj: dict[str, Any]) -> list[Mapping[str, Any]] | Rejection:
    labels = obj.get("labels", {})
    if not isinstance(labels, dict):
        return _shape("prometheus: 'labels' is not an object")
    name = obj.get("name", labels.get("__name__"))
    if not isinstance(name, str) or not name:
        return _shape("prometheus: 'name' is missing or not a string")
    if "value" not in obj:
        return _shape("prometheus: 'value' is missing")
    value = obj["value"]
    if isinstance(value, str) and value.strip().lower() == "nan":
        # A staleness marker (the series went away), not a measurement: skipped, not a dead
        # letter; counted with the messages that carry nothing the model uses.
        return []
    return [{**obj, "name": name, "labels": labels}]


def _attributes(items: Any, where: str) -> dict[str, Any] | Rejection:
    """OTLP ``[{"key", "value": {"stringValue": …}}]`` → ``{key: value}``."""
    if items is None:
        return {}
    if not isinstance(items, list):
        return _shape(f"otlp: {where} is not an array")
    out: dict[str, Any] = {}
    for kv in items:
        if not isinstance(kv, dict) or not isinstance(kv.get("key"), str):
            return _shape(f"otlp: {where} holds an entry without a string 'key'")
        value = kv.get("value")
        if isinstance(value, dict) and len(value) == 1:
            ((_kind, inner),) = value.items()
            out[kv["key"]] = inner
        else:
            out[kv["key"]] = value
    return out


def _list(node: Any, key: str, where: str) -> list[Any] | Rejection:
    value = node.get(key, []) if isinstance(node, dict) else None
    if value is None:
        return []
    if not isinstance(value, list):
        return _shape(f"otlp: {where}.{key} is not an array")
    return value


def _otlp(obj: dict[str, Any]) -> list[Mapping[str, Any]] | Rejection:
    views: list[Mapping[str, Any]] = []
    resources = _list(obj, "resourceMetrics", "")
    if isinstance(resources, Rejection):
        return resources
    if "resourceMetrics" not in obj:
        return _shape("otlp: 'resourceMetrics' is missing")
    for r, rm in enumerate(resources):
        where = f"resourceMetrics[{r}]"
        if not isinstance(rm, dict):
            return _shape(f"otlp: {where} is not an object")
        resource = rm.get("resource") or {}
        res_attrs = _attributes(
            resource.get("attributes") if isinstance(resource, dict) else [],
            f"{where}.resource.attributes",
        )
        if isinstance(res_attrs, Rejection):
            return res_attrs
        scopes = _list(rm, "scopeMetrics", where)
        if isinstance(scopes, Rejection):
            return scopes
        for s, sm in enumerate(scopes):
            swhere = f"{where}.scopeMetrics[{s}]"
            metrics = _list(sm, "metrics", swhere)
            if isinstance(metrics, Rejection):
                return metrics
            if not isinstance(sm, dict):
                return _shape(f"otlp: {swhere} is not an object")
            for m, metric in enumerate(metrics):
                mwhere = f"{swhere}.metrics[{m}]"
                if not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
                    return _shape(f"otlp: {mwhere} has no string 'name'")
                data = metric.get("gauge", metric.get("sum"))
                if data is None:
                    continue  # histograms, summaries: not a number per point
                points = _list(data, "dataPoints", mwhere)
                if isinstance(points, Rejection):
                    return points
                for p, point in enumerate(points):
                    pwhere = f"{mwhere}.dataPoints[{p}]"
                    if not isinstance(point, dict):
                        return _shape(f"otlp: {pwhere} is not an object")
                    attrs = _attributes(point.get("attributes"), f"{pwhere}.attributes")
                    if isinstance(attrs, Rejection):
                        return attrs
                    value = point.get("asDouble", point.get("asInt"))
                    if len(views) >= MAX_VIEWS:
                        return _shape(f"otlp: more than {MAX_VIEWS} data points in one message")
                    views.append(
                        {
                            "name": metric["name"],
                            "unit": metric.get("unit"),
                            "resource": res_attrs,
                            "attributes": {**res_attrs, **attrs},
                            "value": value,
                            "timestamp": point.get("timeUnixNano"),
                        }
                    )
    return views


# -- assembling rows of the long formats ------------------------------------------------------


@dataclass
class _Row:
    bucket: int
    opened: float  # monotonic time of its first sample
    time: float = 0.0
    values: dict[str, Any] = field(default_factory=dict)
    #: (topic, partition) → the first offset of a sample it holds: what a commit must not pass.
    first: dict[tuple[str, int], int] = field(default_factory=dict)
    origin: Any = None  # the message of its newest sample (a row's output is that message's)


@dataclass(slots=True)
class Closed:
    """A closed row: a flat record, or the refusal of an incomplete one (``rejection``)."""

    entity: str
    time: float
    values: dict[str, Any]
    origin: Any
    rejection: Rejection | None = None


class RowAssembler:
    """Rows of the long formats, one per entity and interval: the newest value of each feature.

    ``required`` are the features a complete row holds (the model's). A row closes once it
    holds them all (scrapes stamp one target's series alike, so this is the common case and
    costs no latency), after ``max_wait_s`` (`due`), or when more than ``max_rows`` rows wait
    (the oldest closes). Rows of several intervals of one entity may wait at once, so samples
    spread over partitions (a sender that does not key by entity) still meet. A sample of a row
    already closed is refused as ``late_record`` (so set ``interval_s`` to the scrape /
    collection interval). ``held_from`` says, per partition, the first offset a waiting row
    holds: commits stop there, so a crash replays the samples of waiting rows instead of losing
    them.
    """

    def __init__(
        self,
        required: Iterable[str],
        *,
        interval_s: float,
        max_rows: int,
        max_wait_s: float,
        incomplete: str = "dead_letter",
        clock=time.monotonic,
    ):
        self.required = tuple(required)
        self.interval_s = interval_s
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self.incomplete = incomplete
        self._clock = clock
        #: (entity, interval) → its row, in the order they opened.
        self._rows: OrderedDict[tuple[str, int], _Row] = OrderedDict()
        #: Rows closed lately (a sample for one of them is late), bounded.
        self._closed: OrderedDict[tuple[str, int], None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, sample: Sample, origin: Any = None, where: tuple[str, int, int] | None = None):
        """Take a sample; returns the rows it closes, or a `Rejection` if it is late."""
        closed: list[Closed] = []
        key = (sample.entity, int(sample.time // self.interval_s))
        if key in self._closed:
            return Rejection(
                Reason.LATE_RECORD,
                "ValueError",
                f"a sample of entity {sample.entity!r} at {_iso(sample.time)} came after its "
                f"row closed (the interval from {_iso(key[1] * self.interval_s)}, "
                f"input.interval_s={self.interval_s:g})",
            )
        row = self._rows.get(key)
        if row is None:
            row = _Row(key[1], self._clock())
            self._rows[key] = row
            while len(self._rows) > self.max_rows:
                closed.append(self._close(next(iter(self._rows))))
        row.values.update(sample.values)
        if sample.time >= row.time or row.origin is None:
            row.time = max(row.time, sample.time)
            row.origin = origin
        if all(f in row.values for f in self.required):
            closed.append(self._close(key))  # complete: no reason to wait
        elif where is not None:
            topic, partition, offset = where
            tp = (topic, partition)
            row.first[tp] = min(offset, row.first.get(tp, offset))
        return closed

    def due_now(self) -> bool:
        """Whether the oldest waiting row (rows wait in the order they opened) is due."""
        if not self._rows:
            return False
        return next(iter(self._rows.values())).opened <= self._clock() - self.max_wait_s

    def due(self) -> list[Closed]:
        """Close the rows that have waited ``max_wait_s``."""
        limit = self._clock() - self.max_wait_s
        out = []
        while self._rows and next(iter(self._rows.values())).opened <= limit:
            out.append(self._close(next(iter(self._rows))))
        return out

    def close_all(self) -> list[Closed]:
        """Close every waiting row (the end of a file)."""
        return [self._close(k) for k in list(self._rows)]

    def drop_all(self) -> dict[tuple[str, int], int]:
        """Forget every waiting row (a rebalance: the samples are replayed from the commit);
        returns per partition the first offset they held, where to rewind it."""
        held = self.held_from()
        self._rows.clear()
        return held

    def held_from(self) -> dict[tuple[str, int], int]:
        held: dict[tuple[str, int], int] = {}
        for row in self._rows.values():
            for tp, offset in row.first.items():
                held[tp] = min(offset, held.get(tp, offset))
        return held

    def _close(self, key: tuple[str, int]) -> Closed:
        row = self._rows.pop(key)
        self._closed[key] = None
        while len(self._closed) > 4 * self.max_rows:
            self._closed.popitem(last=False)
        entity = key[0]
        missing = [f for f in self.required if f not in row.values]
        rejection = None
        if missing and self.incomplete == "dead_letter":
            rejection = Rejection(
                Reason.MISSING_FEATURE,
                "ValueError",
                short_detail(
                    f"the row of entity {entity!r} at {_iso(row.time)} closed without "
                    f"{', '.join(repr(m) for m in missing)} (input.incomplete=dead_letter)"
                ),
            )
        return Closed(entity, row.time, row.values, row.origin, rejection)


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat().replace("+00:00", "Z")


def record_of(
    entity: str, when: float, values: Mapping[str, Any], entity_field: str, time_field: str
) -> dict[str, Any]:
    """The flat record of a sample or a closed row, in the fields the model reads."""
    record: dict[str, Any] = dict(values)
    record[entity_field] = entity
    record[time_field] = when
    return record


@dataclass
class Read:
    """What messages gave: flat records and refusals, each with the message it reports on."""

    records: list[tuple[dict[str, Any], Any]] = field(default_factory=list)
    refused: list[tuple[Rejection, Any]] = field(default_factory=list)
    #: Messages no selector matched (another metric on the same topic): skipped, not refused.
    unmapped: int = 0
    #: Messages whose samples only went into a waiting row.
    held: int = 0


class InputReader:
    """One format and field mapping, bound to what a model reads: messages in, records out.

    ``entity_field`` / ``time_field`` name the flat record's entity and time (the model's);
    ``assemble`` (tabular models: a row needs every feature at once) assembles rows of
    ``required`` features with a `RowAssembler`; without it (window models, which take any
    subset of their metrics per point) each sample is a record of its own. ``labels``: the
    required fields that are categories (a tabular model's categorical conditions), taken
    as they are rather than read as numbers.
    """

    def __init__(
        self,
        spec: InputSpec,
        *,
        entity_field: str = "key",
        time_field: str = "ts",
        required: Iterable[str] = (),
        assemble: bool = False,
        labels: Iterable[str] = (),
        clock=time.monotonic,
    ):
        self.spec = spec
        self.mapping = FieldMapping(spec, required, labels)
        self.entity_field = entity_field
        self.time_field = time_field
        self.required = frozenset(self.mapping.known)
        self.assembler = (
            RowAssembler(
                self.required,
                interval_s=spec.interval_s,
                max_rows=spec.max_rows,
                max_wait_s=spec.max_wait_s,
                incomplete=spec.incomplete,
                clock=clock,
            )
            if assemble
            else None
        )

    def read(
        self, obj: dict[str, Any], origin: Any = None, where: tuple[str, int, int] | None = None
    ) -> Read:
        """One decoded message (``where``: its topic, partition and offset, if it has them)."""
        out = Read()
        self._read(obj, origin, where, out)
        return out

    def _read(self, obj, origin, where, out: Read) -> None:
        decoded = samples_of(obj, self.mapping)
        if decoded.rejection is not None:
            rejection = decoded.rejection
            if decoded.refused > 1:
                rejection.detail = short_detail(
                    f"{rejection.detail} (and {decoded.refused - 1} more refused in this message)"
                )
            out.refused.append((rejection, origin))
        if not decoded.samples:
            if decoded.rejection is None:
                out.unmapped += 1
            return
        if self.assembler is None:  # one record per entity and time of this message
            merged: dict[tuple[str, float], dict[str, Any]] = {}
            for s in decoded.samples:
                merged.setdefault((s.entity, s.time), {}).update(s.values)
            for (entity, when), values in merged.items():
                out.records.append((self._record(entity, when, values), origin))
            return
        gave = len(out.records) + len(out.refused)
        for s in decoded.samples:
            closed = self.assembler.add(s, origin, where)
            if isinstance(closed, Rejection):
                out.refused.append((closed, origin))
            else:
                self._closed(closed, out)
        if len(out.records) + len(out.refused) == gave:
            out.held += 1

    def _closed(self, rows: Iterable[Closed], out: Read) -> None:
        for row in rows:
            if row.rejection is not None:
                out.refused.append((row.rejection, row.origin))
            else:
                out.records.append((self._record(row.entity, row.time, row.values), row.origin))

    def _record(self, entity: str, when: float, values: Mapping[str, Any]) -> dict[str, Any]:
        return record_of(entity, when, values, self.entity_field, self.time_field)

    def due(self) -> Read:
        """The rows that have waited ``input.max_wait_s``, closed."""
        out = Read()
        if self.assembler is not None:
            self._closed(self.assembler.due(), out)
        return out

    def close_all(self) -> Read:
        out = Read()
        if self.assembler is not None:
            self._closed(self.assembler.close_all(), out)
        return out

    def waiting(self) -> int:
        return 0 if self.assembler is None else len(self.assembler)

    def due_now(self) -> bool:
        return self.assembler is not None and self.assembler.due_now()

    def held_from(self) -> dict[tuple[str, int], int]:
        return {} if self.assembler is None else self.assembler.held_from()

    def drop_all(self) -> dict[tuple[str, int], int]:
        return {} if self.assembler is None else self.assembler.drop_all()


def read_messages(
    lines: Iterable[tuple[int, bytes | str]],
    reader: InputReader,
    max_bytes: int,
) -> tuple[list[dict[str, Any]], list[tuple[int, Rejection]]]:
    """Messages of a file (line number, raw bytes, as `tabular_files.iter_raw_rows` yields
    them) → the flat records they give and the refused lines, by the daemon's rules."""
    records: list[dict[str, Any]] = []
    refused: list[tuple[int, Rejection]] = []
    for line_no, raw in lines:
        if isinstance(raw, str):
            refused.append(
                (line_no, Rejection(Reason.INVALID_FIELD, "ValueError", short_detail(raw)))
            )
            continue
        obj = decode(raw, max_bytes)
        if isinstance(obj, Rejection):
            refused.append((line_no, obj))
            continue
        got = reader.read(obj, line_no)
        records += [r for r, _ in got.records]
        refused += [(origin, r) for r, origin in got.refused]
    end = reader.close_all()
    records += [r for r, _ in end.records]
    refused += [(origin, r) for r, origin in end.refused]
    return records, refused
