"""Records → windows: the per-entity state of window mode, with bounded memory.

Each entity (``key`` of a record) keeps the last few values of its metrics on a regular time
grid; the model input of a point is the window of the W grid slots ending at it, scaled by the
entity's own online statistics, with a mask that marks the slots nobody reported.

Time policy (documented in docs and tests, applied per entity):

* **Grid.** ``interval="auto"`` infers the sampling interval from the entity's first
  ``infer_points`` points (median positive gap); a number fixes it (seconds); ``"rows"`` puts
  every point in the next slot whatever its timestamp (arrival order, no gaps). A point's slot
  is ``round((t - origin) / interval)``. The points used to infer the grid are replayed into it
  but get no window of their own (they are warm-up).
* **Gaps.** Slots skipped by a jump forward are missing: NaN in the state, masked in the window,
  counted in ``stats["missing_slots"]``.
* **Same slot twice.** The newer values overwrite per metric (a record carrying only some
  metrics merges with the one already there), counted as ``duplicates``; the record is scored.
* **Late / out-of-order.** A point older than the newest slot is inserted if its slot is at
  most ``max_lateness`` slots back (default: the window length), and scored with the window
  ending at its own slot (windows already emitted are not revised); counted as
  ``late_inserted``. Older points are rejected with reason ``late_record`` and counted in
  ``late_dropped``. In ``"rows"`` mode an out-of-order timestamp is only counted.
* **Warm-up and sparse windows.** A point gets a window once its entity has been seen for a
  whole window (its slot is at least W − 1 slots after the entity's first one: the first
  slots are context, not data) and when at least ``min_observed`` of the window's W slots are
  observed; otherwise it only updates the state (counted in ``sparse``; points waiting for the
  grid to be inferred in ``pending``). ``min_observed=0`` scores every point after the
  warm-up however sparse its window (the model sees the missing slots as missing), so a
  stream sampled less regularly than its inferred grid is never left unscored.
* **Bounded state.** At most ``max_entities`` entities are kept, least recently seen evicted
  first (counted in ``evicted``); each holds ``window + max_lateness`` slots.

``normalize=False`` passes values through unscaled (for metrics already on a common scale).

**Seasonal channel.** ``seasonal={"period": 86400, "periods": 3, ...}`` adds one derived channel
after the metrics, ``<source>_seasonal``: the source metric (default the first) minus the median
of its values at the same time 1 … ``periods`` periods earlier (`SeasonalResidual`, per entity,
causal). A 32-slot window cannot see "it should be at the daily peak now"; this channel can.
It is missing until a period of history exists, and does not count towards ``min_observed``.

The state is plain data: `snapshot()` gives a JSON-safe dict and `restore()` takes it back, so
a daemon can persist it and resume after a restart with identical windows.
`carried_snapshot()` is the state a bundle keeps from its training data: each of its entities
continues there when its first point in serving comes later, and starts afresh otherwise (the
training data scored again is no continuation, and its points are not refused as late).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vaeguard.errors import ConfigError, DataError
from vaeguard.ingest import (
    TIMESTAMP_RANGE,
    Reason,
    Rejection,
    entity_text,
    to_number,
    to_timestamp,
)
from vaeguard.snapshot import check_header, is_count, is_finite_number
from vaeguard.timeseries.conditions import TimeConditions
from vaeguard.timeseries.normalization import OnlineScaler

STATE_FORMAT = "vaeguard-window-state"
STATE_VERSION = 1
#: Scaled inputs are clipped to ±this many σ so an absurd but finite value stays finite in float32.
CLIP_SIGMAS = 1e6

# Rejection reasons: the ingestion contract's (vaeguard.ingest.Reason), as plain names.
MISSING_FEATURE = Reason.MISSING_FEATURE
NON_NUMERIC = Reason.NON_NUMERIC
NON_FINITE = Reason.NON_FINITE
INVALID_FIELD = Reason.INVALID_FIELD
LATE_RECORD = Reason.LATE_RECORD


#: The most slots an entity keeps (window + lateness): each entity holds a buffer that long, so
#: a bound keeps a mistyped or corrupt spec from exhausting memory at its first point.
MAX_SLOTS = 100_000


@dataclass(frozen=True)
class WindowSpec:
    """How records become windows; the same spec must be used to train and to score."""

    window: int = 32
    metrics: tuple[str, ...] = ("value",)
    conditions: tuple[str, ...] = ()
    interval: float | str = "auto"
    max_lateness: int | None = None
    min_observed: float = 0.5
    max_entities: int = 10_000
    entity_field: str = "key"
    time_field: str = "ts"
    infer_points: int = 8
    normalize: bool = True
    norm_memory: int = 5000
    norm_clip: float = 5.0
    seasonal: dict[str, Any] | None = None

    def __post_init__(self):
        object.__setattr__(self, "metrics", tuple(self.metrics))
        if self.seasonal is not None:
            object.__setattr__(self, "seasonal", _seasonal_spec(self.seasonal, self.metrics))
        object.__setattr__(self, "conditions", tuple(self.conditions))
        if self.window < 2:
            raise ConfigError(f"window: must be at least 2, got {self.window}")
        if not self.metrics:
            raise ConfigError("metrics: name at least one metric")
        if len(set(self.metrics)) != len(self.metrics):
            raise ConfigError("metrics: names must be unique")
        if isinstance(self.interval, str):
            if self.interval not in ("auto", "rows"):
                raise ConfigError(f"interval: 'auto', 'rows' or seconds > 0, got {self.interval!r}")
        elif not (isinstance(self.interval, int | float) and self.interval > 0):
            raise ConfigError(f"interval: 'auto', 'rows' or seconds > 0, got {self.interval!r}")
        if self.max_lateness is not None and self.max_lateness < 0:
            raise ConfigError("max_lateness: must be >= 0 slots")
        if self.capacity > MAX_SLOTS:
            name = "window" if self.window > MAX_SLOTS else "max_lateness"
            raise ConfigError(f"{name}: window + max_lateness must be at most {MAX_SLOTS} slots")
        if not 0.0 <= self.min_observed <= 1.0:
            raise ConfigError("min_observed: must be in [0, 1]")
        if self.max_entities < 1:
            raise ConfigError("max_entities: must be at least 1")
        if self.infer_points < 2:
            raise ConfigError("infer_points: must be at least 2")
        TimeConditions(self.conditions)  # validates the names

    @property
    def lateness(self) -> int:
        return self.window if self.max_lateness is None else int(self.max_lateness)

    @property
    def capacity(self) -> int:
        """Slots kept per entity: the window plus how far back a late point may land."""
        return self.window + self.lateness

    @property
    def channels(self) -> tuple[str, ...]:
        """The window's channels: the metrics, then the derived seasonal channel if any."""
        if self.seasonal is None:
            return self.metrics
        return (*self.metrics, self.seasonal["name"])

    def metric_of(self, channel: str) -> str:
        """The metric a channel is about: itself, or the source of the derived seasonal one."""
        seasonal = self.seasonal
        return seasonal["source"] if seasonal and channel == seasonal["name"] else channel

    @property
    def n_features(self) -> int:
        return self.window * len(self.channels)

    @property
    def feature_names(self) -> list[str]:
        return slot_names(self.channels, self.window)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["metrics"] = list(self.metrics)
        d["conditions"] = list(self.conditions)
        d["seasonal"] = None if self.seasonal is None else dict(self.seasonal)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WindowSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"window spec: unknown field(s) {', '.join(sorted(unknown))}")
        return cls(**d)


def slot_names(channels: Sequence[str], window: int) -> list[str]:
    """``cpu[t-31]`` … ``cpu[t]`` for every channel, metric-major (the model's column order)."""
    w = window
    return [f"{m}[t-{w - 1 - j}]" if j < w - 1 else f"{m}[t]" for m in channels for j in range(w)]


_SEASONAL_KEYS = {"period", "periods", "tolerance", "source"}


def _seasonal_spec(value: Any, metrics: tuple[str, ...]) -> dict[str, Any]:
    """The seasonal channel's settings, checked and completed (``name`` is derived)."""
    from vaeguard.timeseries.seasonal import PERIOD, PERIODS, TOLERANCE, SeasonalResidual

    if not isinstance(value, dict):
        raise ConfigError("seasonal: expected an object (period, periods, tolerance, source)")
    unknown = set(value) - _SEASONAL_KEYS - {"name"}
    if unknown:
        raise ConfigError(f"seasonal: unknown field(s) {', '.join(sorted(unknown))}")
    source = value.get("source", metrics[0])
    if source not in metrics:
        raise ConfigError(f"seasonal.source: {source!r} is not one of the metrics")
    out = {
        "period": float(value.get("period", PERIOD)),
        "periods": int(value.get("periods", PERIODS)),
        "tolerance": float(value.get("tolerance", TOLERANCE)),
        "source": source,
    }
    SeasonalResidual(out["period"], out["periods"], out["tolerance"])  # validates
    out["name"] = f"{source}_seasonal"
    if out["name"] in metrics:
        raise ConfigError(f"seasonal: a metric is already named {out['name']!r}")
    return out


@dataclass
class WindowBatch:
    """Model input for the records of a batch that have a window.

    ``x`` (rows × W·M, scale-free, missing slots 0), ``mask`` (1 = observed), ``c`` (time
    conditions or None), ``keep`` (index of the record each row reports on), ``entities`` and
    ``ts`` (epoch seconds) of each row, and the records that were refused. ``center`` and
    ``scale`` (rows × M) are the entity statistics each row was scaled with, so a value in user
    units is ``x · scale + center`` (how the daemon explains a score in the metric's own units).
    """

    x: np.ndarray
    mask: np.ndarray
    c: np.ndarray | None
    keep: np.ndarray
    entities: list[str]
    ts: np.ndarray
    rejected: list[Rejection] = field(default_factory=list)
    center: np.ndarray | None = None
    scale: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.keep.shape[0])


class _Entity:
    """Grid, ring buffer of raw values (NaN = missing) and scaler of one entity."""

    __slots__ = (
        "buf",
        "carried",
        "end",
        "interval",
        "last_ts",
        "origin",
        "pending",
        "scaler",
        "seasonal",
    )

    def __init__(self, spec: WindowSpec):
        self.buf = np.full((spec.capacity, len(spec.channels)), np.nan)
        self.end = -1  # newest slot
        self.origin: float | None = None
        self.interval: float | None = (
            None
            if spec.interval == "auto"
            else (None if spec.interval == "rows" else float(spec.interval))
        )
        self.last_ts = -math.inf
        #: State carried over from the training data (`WindowFeaturizer.carried_snapshot`),
        #: not yet continued by a point of this stream.
        self.carried = False
        self.pending: list[tuple[float, list[float]]] = []
        self.scaler = OnlineScaler(len(spec.channels), spec.norm_memory, spec.norm_clip)
        self.seasonal = None
        if spec.seasonal is not None:
            from vaeguard.timeseries.seasonal import SeasonalResidual

            s = spec.seasonal
            self.seasonal = SeasonalResidual(s["period"], s["periods"], s["tolerance"])


class WindowFeaturizer:
    """Per-entity windows for a stream of records; see the module docstring for the policy."""

    STAT_NAMES = (
        "points",
        "windows",
        "pending",
        "sparse",
        "missing_slots",
        "duplicates",
        "late_inserted",
        "late_dropped",
        "out_of_order",
        "evicted",
        "rejected",
    )

    def __init__(self, spec: WindowSpec | None = None, **kwargs):
        self.spec = spec if spec is not None else WindowSpec(**kwargs)
        self.time_conditions = TimeConditions(self.spec.conditions)
        self._entities: OrderedDict[str, _Entity] = OrderedDict()
        self.stats = dict.fromkeys(self.STAT_NAMES, 0)
        m = len(self.spec.channels)
        self._last_affine = (np.zeros(m), np.ones(m))
        #: Carried entities started afresh since the owner last took this list (serving drops
        #: their carried likelihood histories too).
        self.restarted: list[str] = []

    # -- the daemon's call ---------------------------------------------------------------------

    def update_and_featurize(self, records: Sequence[dict[str, Any]]) -> WindowBatch:
        """Feed a batch of decoded records (in arrival order) and return the windows they close."""
        spec = self.spec
        rows: list[np.ndarray] = []
        affine: list[tuple[np.ndarray, np.ndarray]] = []
        keep: list[int] = []
        ents: list[str] = []
        stamps: list[float] = []
        rejected: list[Rejection] = []
        for i, record in enumerate(records):
            try:
                parsed = self._parse(record)
                window = parsed if isinstance(parsed, Rejection) else self._push(*parsed)
            except Exception as exc:  # a bug here must cost one record, not the stream
                window = Rejection(Reason.PROCESSING_ERROR, type(exc).__name__, str(exc)[:500])
            if isinstance(window, Rejection):
                rejected.append(window.at(i))
            elif window is not None:
                key, t, _ = parsed
                rows.append(window)
                affine.append(self._last_affine)
                keep.append(i)
                ents.append(key)
                stamps.append(t)
        self.stats["rejected"] += len(rejected)
        self.stats["windows"] += len(rows)
        d = spec.n_features
        raw = np.stack(rows) if rows else np.zeros((0, d))
        mask = np.isfinite(raw)
        x = np.where(mask, np.clip(raw, -CLIP_SIGMAS, CLIP_SIGMAS), 0.0).astype("float32")
        ts = np.asarray(stamps, dtype="float64")
        c = self.time_conditions.encode(ts) if self.time_conditions.width else None
        m = len(spec.channels)
        return WindowBatch(
            x=x,
            mask=mask.astype("float32"),
            c=c,
            keep=np.asarray(keep, dtype="int64"),
            entities=ents,
            ts=ts,
            rejected=rejected,
            center=np.array([a[0] for a in affine]).reshape(-1, m),
            scale=np.array([a[1] for a in affine]).reshape(-1, m),
        )

    # -- parsing -------------------------------------------------------------------------------

    def _parse(self, record: Any):
        """(entity, epoch seconds, metric values with NaN for missing) or a `Rejection`."""
        spec = self.spec
        if not isinstance(record, dict):
            return Rejection(INVALID_FIELD, "TypeError", "record is not a JSON object")
        key = record.get(spec.entity_field)
        key = "" if key is None else entity_text(key)
        if record.get(spec.time_field) is None:
            return Rejection(
                MISSING_FEATURE, "KeyError", f"timestamp {spec.time_field!r} is missing"
            )
        t = to_timestamp(record[spec.time_field], repr(spec.time_field))
        if isinstance(t, Rejection):
            return t
        values: list[float] = []
        for name in spec.metrics:
            number = to_number(record.get(name), f"metric {name!r}")
            if isinstance(number, Rejection):
                return number
            values.append(math.nan if number is None else number)  # missing point, like null
        if all(math.isnan(v) for v in values):
            return Rejection(
                MISSING_FEATURE,
                "KeyError",
                f"none of the metrics {', '.join(spec.metrics)} is present",
            )
        return key, t, values

    # -- state ---------------------------------------------------------------------------------

    def _entity(self, key: str) -> _Entity:
        entity = self._entities.get(key)
        if entity is not None:
            self._entities.move_to_end(key)
            return entity
        if len(self._entities) >= self.spec.max_entities:
            self._entities.popitem(last=False)
            self.stats["evicted"] += 1
        entity = _Entity(self.spec)
        self._entities[key] = entity
        return entity

    def _push(self, key: str, t: float, values: list[float]):
        """Put one point into its entity's grid; return its window, a Rejection, or None."""
        spec = self.spec
        entity = self._entity(key)
        if entity.carried:
            entity.carried = False
            if t <= entity.last_ts:
                # Not the continuation of the data the state was carried from (that data again,
                # or older): the entity starts afresh rather than refuse its points as late.
                entity = self._entities[key] = _Entity(spec)
                self.restarted.append(key)
        self.stats["points"] += 1
        if entity.seasonal is not None:
            source = values[spec.metrics.index(spec.seasonal["source"])]
            residual = entity.seasonal.update(t, source) if math.isfinite(source) else math.nan
            values = [*values, residual]
        if t < entity.last_ts:
            self.stats["out_of_order"] += 1
        if spec.interval == "rows":
            entity.last_ts = max(entity.last_ts, t)
            return self._place(entity, entity.end + 1, values, emit=True)
        if entity.origin is None and entity.interval is not None:
            entity.origin = t  # a configured grid starts at the entity's first point
        if entity.origin is None:
            entity.pending.append((t, values))
            entity.last_ts = max(entity.last_ts, t)
            self.stats["pending"] += 1
            self._start_grid(entity)
            return None
        entity.last_ts = max(entity.last_ts, t)
        k = round((t - entity.origin) / entity.interval)
        if k < entity.end - spec.lateness:
            self.stats["late_dropped"] += 1
            return Rejection(
                LATE_RECORD,
                "ValueError",
                f"timestamp {t:.0f} is {entity.end - k} slots behind the newest point of entity "
                f"{key!r} (at most {spec.lateness} allowed)",
            )
        return self._place(entity, k, values, emit=True)

    def _start_grid(self, entity: _Entity) -> None:
        """Once enough points are pending, infer the interval, fix the grid and replay them."""
        if len(entity.pending) < self.spec.infer_points:
            return
        stamps = np.unique(np.array([p[0] for p in entity.pending]))
        gaps = np.diff(stamps)
        gaps = gaps[gaps >= MIN_INTERVAL]  # finer than float timestamps resolve is no grid
        if gaps.size == 0:
            return
        entity.interval = float(np.median(gaps))
        pending = sorted(entity.pending, key=lambda p: p[0])
        entity.pending = []
        entity.origin = pending[0][0]
        for t, values in pending:
            k = round((t - entity.origin) / entity.interval)
            self._place(entity, k, values, emit=False)

    def _place(self, entity: _Entity, k: int, values: list[float], *, emit: bool):
        spec = self.spec
        cap = spec.capacity
        v = np.asarray(values, dtype="float64")
        if k > entity.end:
            skipped = min(k - entity.end - 1, cap) if entity.end >= 0 else 0
            if skipped:
                self.stats["missing_slots"] += k - entity.end - 1
                idx = _ring(entity.end + 1, skipped, cap)
                entity.buf[idx] = np.nan
            if k - entity.end - 1 >= cap:
                entity.buf[:] = np.nan
            entity.buf[k % cap] = v
            entity.end = k
        else:
            slot = entity.buf[k % cap]
            if np.isfinite(slot).any():
                self.stats["duplicates"] += 1
            else:
                self.stats["late_inserted"] += 1
            entity.buf[k % cap] = np.where(np.isnan(v), slot, v)
        window = None
        if emit:
            window = self._window(entity, k)
        entity.scaler.update(v)
        return window

    def _window(self, entity: _Entity, k: int) -> np.ndarray | None:
        """Scaled window ending at slot k (flattened metric-major), or None if not scorable."""
        spec = self.spec
        w = spec.window
        if k < w - 1:  # the window reaches back before the entity's first point: warm-up
            self.stats["sparse"] += 1
            return None
        idx = _ring(k - w + 1, w, spec.capacity)
        raw = entity.buf[idx]  # (W, channels)
        observed = np.isfinite(raw[:, : len(spec.metrics)])  # a derived channel does not count
        if observed.mean() < spec.min_observed:
            self.stats["sparse"] += 1
            return None
        if spec.normalize:
            raw = entity.scaler.transform(raw)
            self._last_affine = (entity.scaler.mean.copy(), entity.scaler.scale)
        return raw.T.reshape(-1)

    # -- snapshot / restore --------------------------------------------------------------------

    @property
    def n_entities(self) -> int:
        return len(self._entities)

    @property
    def n_live(self) -> int:
        """Entities this stream has fed: the held ones, less those still as carried."""
        return sum(not e.carried for e in self._entities.values())

    def snapshot(self) -> dict[str, Any]:
        """The whole state as a JSON-safe dict (NaN → null), entities in LRU order."""
        cap = self.spec.capacity
        entities = []
        for key, e in self._entities.items():
            recent = None
            if e.end >= 0:
                idx = _ring(e.end - cap + 1, cap, cap)
                recent = _nan_to_none(e.buf[idx])
            entities.append(
                {
                    "key": key,
                    "origin": e.origin,
                    "interval": e.interval,
                    "end": e.end,
                    "last_ts": None if math.isinf(e.last_ts) else e.last_ts,
                    "recent": recent,
                    "pending": [[t, _nan_to_none(np.asarray(v))] for t, v in e.pending],
                    "scaler": e.scaler.to_dict(),
                    "seasonal": None if e.seasonal is None else e.seasonal.to_dict(),
                    **({"carried": True} if e.carried else {}),
                }
            )
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "spec": self.spec.to_dict(),
            "stats": dict(self.stats),
            "entities": entities,
        }

    def to_json(self) -> str:
        return json.dumps(self.snapshot(), allow_nan=False, separators=(",", ":"))

    def carried_snapshot(self, max_bytes: int) -> dict[str, Any] | None:
        """The state serving continues from (a bundle carries it: `ViewSet.entity_state_`): the
        most recently seen entities whose snapshots fit in ``max_bytes`` of JSON, each marked
        carried, the counters at zero. None when no entity fits."""
        state = self.snapshot()
        kept, size = [], 0
        for item in reversed(state["entities"]):
            item["carried"] = True
            size += len(json.dumps(item, allow_nan=False, separators=(",", ":")))
            if size > max_bytes:
                break
            kept.append(item)
        if not kept:
            return None
        state["entities"] = kept[::-1]
        state["stats"] = dict.fromkeys(self.STAT_NAMES, 0)
        return state

    @classmethod
    def restore(cls, state: dict[str, Any]) -> WindowFeaturizer:
        """A featurizer continuing exactly where `snapshot()` left off.

        The snapshot is read from disk, so every field is checked before any of it is used:
        `DataError` for a wrong type, a non-finite time, statistic or value, a negative count,
        an array of the wrong shape (a NaN or infinite scaler would poison every window of
        its entity; an ``end`` of ``1e400`` is no slot at all)."""
        check_header(state, STATE_FORMAT, STATE_VERSION, "window-state snapshot")
        try:
            featurizer = cls(WindowSpec.from_dict(_expect(state["spec"], dict, "spec")))
            spec = featurizer.spec
            stats = _expect(state["stats"], dict, "stats")
            for name in cls.STAT_NAMES:
                featurizer.stats[name] = _count(stats.get(name, 0), f"stats.{name}")
            for item in _expect(state["entities"], list, "entities"):
                key, entity = _restore_entity(_expect(item, dict, "an entity"), spec)
                featurizer._entities[key] = entity
        except DataError as exc:
            raise DataError(f"window-state snapshot is corrupt: {exc}") from None
        except (
            ConfigError,
            KeyError,
            TypeError,
            ValueError,
            ArithmeticError,
            AttributeError,
        ) as exc:
            raise DataError(
                f"window-state snapshot is corrupt: {type(exc).__name__}: {exc}"
            ) from None
        return featurizer

    @classmethod
    def from_json(cls, text: str) -> WindowFeaturizer:
        try:
            state = json.loads(text)
        except ValueError as exc:
            raise DataError(f"window-state snapshot is not JSON: {exc}") from None
        return cls.restore(state)


#: The smallest grid interval a snapshot may hold (seconds): finer than float timestamps resolve.
MIN_INTERVAL = 1e-9


def _restore_entity(item: dict[str, Any], spec: WindowSpec) -> tuple[str, _Entity]:
    """One entity of a snapshot, checked (see `WindowFeaturizer.restore`)."""
    cap, m = spec.capacity, len(spec.channels)
    low, high = TIMESTAMP_RANGE
    e = _Entity(spec)
    key = _expect(item["key"], str, "an entity's key")
    e.origin = _time(item["origin"], "origin", optional=True)
    e.interval = _time(item["interval"], "interval", optional=True)
    last_ts = _time(item["last_ts"], "last_ts", optional=True)
    e.last_ts = -math.inf if last_ts is None else last_ts
    if any(t is not None and not low <= t <= high for t in (e.origin, last_ts)):
        raise DataError(f"entity {key!r}: origin and last_ts must be timestamps in range")
    if e.interval is not None and not MIN_INTERVAL <= e.interval <= high - low:
        raise DataError(f"entity {key!r}: interval must be positive seconds")
    if not isinstance(spec.interval, str) and e.interval != float(spec.interval):
        raise DataError(f"entity {key!r}: interval differs from the spec's {spec.interval}")
    end = item["end"]
    if not is_count(end, -1):
        raise DataError(f"entity {key!r}: end must be a slot number (-1 for none)")
    e.end = end
    if spec.interval != "rows" and e.origin is None and end >= 0:
        # the next point would start the grid again at slot 0, far behind ``end``: every point
        # of the entity "late" for good
        raise DataError(f"entity {key!r}: slots without a grid origin")
    if spec.interval != "rows" and e.origin is not None:
        # The newest slot is the latest point's: a slot beyond it would make every new point
        # of the entity "late" (an ``end`` of 10**30 stalls the entity for good).
        if e.interval is None or last_ts is None or last_ts < e.origin:
            raise DataError(f"entity {key!r}: a grid origin without an interval or a last point")
        if end > round((last_ts - e.origin) / e.interval):
            raise DataError(f"entity {key!r}: end is beyond the slot of its latest point")
    if item["recent"] is not None:
        e.buf[_ring(e.end - cap + 1, cap, cap)] = _values(item["recent"], (cap, m))
    pending = _expect(item["pending"], list, "pending")
    e.pending = []
    for point in pending:
        if not isinstance(point, list) or len(point) != 2:
            raise DataError(f"entity {key!r}: a pending point must be [time, values]")
        t = _time(point[0], "a pending time")
        if not low <= t <= high:
            raise DataError(f"entity {key!r}: a pending time is out of range")
        e.pending.append((t, list(_values(point[1], (m,)))))
    scaler = _expect(item["scaler"], dict, "scaler")
    stats = {name: _values(scaler[name], (m,), missing=False) for name in ("count", "mean", "var")}
    if (stats["count"] < 0).any() or (stats["var"] < 0).any():
        raise DataError(f"entity {key!r}: scaler counts and variances must be >= 0")
    e.scaler.load_dict(stats)
    if e.seasonal is not None:
        e.seasonal.load_dict(_expect(item["seasonal"], dict, "seasonal"))
    e.carried = item.get("carried", False)
    if not isinstance(e.carried, bool):
        raise DataError(f"entity {key!r}: carried must be true or false")
    return key, e


def _expect(value: Any, kind: type, what: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{what} must be a JSON {kind.__name__}")
    return value


def _count(value: Any, what: str) -> int:
    if not is_count(value):
        raise DataError(f"{what} must be a count (an integer >= 0)")
    return value


def _time(value: Any, what: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if not is_finite_number(value):
        raise DataError(f"{what} must be a finite number")
    return float(value)


def _values(items: Any, shape: tuple[int, ...], *, missing: bool = True) -> np.ndarray:
    """A nested list of finite numbers (or null for a missing value, when ``missing``) of this
    shape, as float64 with NaN for null."""
    leaves = [items]
    for n in shape:
        if not all(isinstance(x, list) and len(x) == n for x in leaves):
            raise DataError(f"expected an array of shape {shape}")
        leaves = [v for x in leaves for v in x]
    absent = [v is None for v in leaves] if missing else [False] * len(leaves)
    values = [math.nan if gone else v for v, gone in zip(leaves, absent, strict=True)]
    if not all(type(v) in (int, float) for v in values):  # not bool, str, list …
        raise DataError("state values must be numbers" + " or null" * missing)
    arr = np.asarray(values, dtype="float64").reshape(shape)
    if not np.isfinite(arr[~np.asarray(absent, dtype=bool).reshape(shape)]).all():
        raise DataError("state values must be finite")
    return arr


def _ring(start: int, n: int, capacity: int) -> np.ndarray:
    """Ring-buffer positions of the n slots from ``start``: reduced first, so a slot index
    beyond int64 (a grid inferred from nanosecond gaps, then a far timestamp) stays an index."""
    return (start % capacity + np.arange(n)) % capacity


def _nan_to_none(a: np.ndarray) -> list:
    """Missing (and a seasonal residual that overflowed, which a window masks all the same) as
    null: a snapshot holds finite numbers only."""
    return np.where(np.isfinite(a), a, None).tolist()
