"""Raw window scores → a [0, 1] anomaly likelihood: how unusual the recent scores are.

After Numenta's anomaly likelihood (Ahmad et al., 2017): a raw score alone is hard to
threshold, because what is "high" differs between entities and drifts with the model. So each
entity keeps a bounded history of its own raw scores; the likelihood of a point is the
Gaussian probability that the mean of the last ``short`` scores falls below what that history
says is usual: ``Φ((mean_short − μ) / σ)``, μ and σ estimated from moving averages of the
history (robustly, by median and MAD, unless ``robust=False``), refreshed every ``refresh``
points. Until an entity has ``min_history`` scores the likelihood is 0 (no opinion yet).

``output="log"`` maps the likelihood L to ``−log10(1 − L) / 10`` (Numenta's log likelihood),
which spreads the interesting region 0.99 … 0.9999999999 over [0.2, 1]. Suppression
(``suppress`` > 0) keeps an alarm from repeating: an output is kept only when it beats every
output kept in the entity's previous ``suppress`` points, counted from the last point of an
alert's incident while it goes on, so one incident reads as one alert. Where
each output names the metric that leads it (window views), that comparison is per metric: an
alert on one metric does not silence a later one on another metric of the entity.
``alert`` is the output level at which the daemon calls a record anomalous.

The ``evt`` estimator is the false-alarm contract: a point's tail probability is its rank
among the entity's own recent scores (a conformal p-value) where the history has enough points
above it, and beyond that a generalized Pareto tail fitted to the history's largest scores
(peaks over threshold), with its shape taken at an upper confidence bound so that a tail
estimated from few points errs towards fewer alerts. ``budget`` (false alerts per 1,000
points per entity) then sets the level: the output reaches 1 at a tail probability of
``budget / 1000``, so on a stationary stream a point alerts with at most that probability,
whatever the scores' distribution. With several views the smallest tail probability is
multiplied by their number (Bonferroni), so the budget holds for the combination too.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vaeguard.errors import ConfigError, DataError
from vaeguard.snapshot import check_header
from vaeguard.thresholds import fit_tail, is_budget, log10_tail_of

STATE_FORMAT = "vaeguard-likelihood-state"
STATE_VERSION = 1
_MAD_TO_SIGMA = 1.4826
_LOG_FLOOR = 1e-10


@dataclass(frozen=True)
class LikelihoodSpec:
    """Parameters of the likelihood post-processing (the same for every entity)."""

    estimator: str = "tail"  # "tail" | "gaussian" | "evt"
    short: int = 10
    history: int = 2000
    min_history: int = 100
    refresh: int = 25
    robust: bool = False
    tail_quantile: float = 0.95
    min_std: float = 0.1
    output: str = "log"  # "log" | "linear"
    decades: float = 10.0
    suppress: int = 0
    max_entities: int = 10_000
    #: When set, an output at or above it makes the daemon's record an anomaly (window mode).
    alert: float | None = None
    #: False alerts per 1,000 points per entity on a stationary stream: when set, the output
    #: reaches 1 at a tail probability of budget / 1000 (``decades`` is then derived from it).
    budget: float | None = None

    def __post_init__(self):
        if self.estimator not in ("tail", "gaussian", "evt"):
            raise ConfigError(f"estimator: 'tail', 'gaussian' or 'evt', got {self.estimator!r}")
        if self.short < 1:
            raise ConfigError("short: must be at least 1")
        if self.history < max(self.short, 2):
            raise ConfigError("history: must be at least max(short, 2)")
        if not 1 <= self.min_history <= self.history:
            raise ConfigError("min_history: must be between 1 and history")
        if self.refresh < 1:
            raise ConfigError("refresh: must be at least 1")
        if not 0.5 <= self.tail_quantile < 1.0:
            raise ConfigError("tail_quantile: must be in [0.5, 1)")
        if self.min_std <= 0:
            raise ConfigError("min_std: must be > 0")
        if self.output not in ("log", "linear"):
            raise ConfigError(f"output: 'log' or 'linear', got {self.output!r}")
        if self.decades <= 0:
            raise ConfigError("decades: must be > 0")
        if self.suppress < 0:
            raise ConfigError("suppress: must be >= 0")
        if self.max_entities < 1:
            raise ConfigError("max_entities: must be at least 1")
        if self.alert is not None and not 0.0 < self.alert <= 1.0:
            raise ConfigError("alert: must be in (0, 1]")
        if self.budget is not None and not is_budget(self.budget):
            raise ConfigError("budget: false alerts per 1,000 points, must be in (0, 1000)")

    @property
    def level_decades(self) -> float:
        """-log10 of the tail probability at which the output reaches 1."""
        if self.budget is not None:
            return math.log10(1000.0 / self.budget)
        return self.decades

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["budget"] is None:  # read back identically by versions that predate it
            del out["budget"]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LikelihoodSpec:
        if not isinstance(d, dict):
            raise ConfigError("likelihood spec: expected an object")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"likelihood spec: unknown field(s) {', '.join(sorted(unknown))}")
        try:
            return cls(**d)
        except (TypeError, ValueError) as exc:  # a wrong type compared in the checks above
            raise ConfigError(f"likelihood spec: a field has the wrong type ({exc})") from None


class _History:
    __slots__ = (
        "averages",
        "count",
        "dropped",
        "fit",
        "metric_peaks",
        "peaks",
        "pending",
        "recent",
        "since_refresh",
    )

    def __init__(self, spec: LikelihoodSpec):
        self.recent: deque[float] = deque(maxlen=spec.short)
        self.averages: deque[float] = deque(maxlen=spec.history)
        self.fit: tuple | None = None  # the estimator's parameters, refreshed periodically
        self.since_refresh = 0
        self.dropped: list[float] = []  # averages that left the history since the last refresh
        self.count = 0  # points seen (ages the entries of `peaks`)
        self.peaks: deque[tuple[int, float]] = deque()  # sliding max of the last `suppress` outputs
        # the same per leading metric, where outputs name one (the count is the entity's)
        self.metric_peaks: dict[str, deque[tuple[int, float]]] = {}
        self.pending: float | None = None  # the score judged last, until it is learned


#: The deepest a log output counts in suppression, in levels: a tail probability of 10^-(this ×
#: the level's decades) is as rare as any (an infinite raw score would otherwise store ∞).
MAX_DEPTH = 1e6


def log10_normal_tail(z: float) -> float:
    """log10 P(Z > z) for a standard normal, accurate far into the tail."""
    if z < 5.0:
        return math.log10(max(0.5 * math.erfc(z / math.sqrt(2.0)), 1e-300))
    # Mills ratio: P(Z > z) ≈ φ(z) / z · (1 − 1/z²)
    log_tail = -0.5 * z * z - math.log(z * math.sqrt(2.0 * math.pi)) + math.log1p(-1.0 / (z * z))
    return log_tail / math.log(10.0)


class AnomalyLikelihood:
    """Per-entity post-processing of raw scores into [0, 1]; bounded, snapshot-able state."""

    def __init__(self, spec: LikelihoodSpec | None = None, **kwargs):
        self.spec = spec if spec is not None else LikelihoodSpec(**kwargs)
        self._state: OrderedDict[str, _History] = OrderedDict()
        self.evicted = 0

    def _history(self, key: str) -> _History:
        h = self._state.get(key)
        if h is not None:
            self._state.move_to_end(key)
            return h
        if len(self._state) >= self.spec.max_entities:
            self._state.popitem(last=False)
            self.evicted += 1
        h = _History(self.spec)
        self._state[key] = h
        return h

    def _refresh(self, h: _History, values: np.ndarray | None = None) -> None:
        """Re-estimate what is usual for this entity from its history of averaged scores."""
        spec = self.spec
        if values is None:
            values = np.fromiter(h.averages, dtype="float64", count=len(h.averages))
        values = np.sort(values)
        if spec.estimator == "evt":
            h.fit = (values, *fit_tail(values, spec.min_std))
        elif spec.estimator == "gaussian":
            if spec.robust:
                center = float(np.median(values))
                spread = _MAD_TO_SIGMA * float(np.median(np.abs(values - center)))
            else:
                center, spread = float(values.mean()), float(values.std())
            h.fit = (center, max(spread, spec.min_std))
        else:
            n = values.shape[0]
            u = float(values[int(spec.tail_quantile * (n - 1))])
            above = values[values > u] - u
            beta = float(above.mean()) if above.size else 0.0
            beta = max(beta, spec.min_std)
            log10_pu = math.log10((n - int(np.searchsorted(values, u, side="left")) + 1) / (n + 1))
            h.fit = (values, u, beta, log10_pu)
        h.since_refresh = 0
        h.dropped = []

    def _log10_tail(self, h: _History, average: float) -> float:
        """log10 of the probability of an average at least this high, under the history."""
        if self.spec.estimator == "evt":
            values, *tail = h.fit
            return log10_tail_of(values, tail, average)
        if self.spec.estimator == "gaussian":
            center, spread = h.fit
            return log10_normal_tail((average - center) / spread)
        values, u, beta, log10_pu = h.fit
        if average <= u:
            n = values.shape[0]
            return math.log10(
                (n - int(np.searchsorted(values, average, side="left")) + 1) / (n + 1)
            )
        return log10_pu - (average - u) / (beta * math.log(10.0))

    def update(self, key: str, score: float) -> float:
        """Feed one raw score of an entity and return its likelihood output in [0, 1]."""
        return self.emit(key, self.log10_tail(key, score))

    def log10_tail(self, key: str, score: float) -> float:
        """Feed one raw score; return log10 of its tail probability (0 = no opinion yet)."""
        log10_tail = self.judge(key, score)
        self.learn(key)
        return log10_tail

    def judge(self, key: str, score: float) -> float:
        """log10 of one raw score's tail probability against the entity's history (0 = no
        opinion yet); the score joins the history only at `learn`."""
        spec = self.spec
        h = self._history(key)
        if not math.isfinite(score):
            score = 1e30 if score > 0 else (h.recent[-1] if h.recent else 0.0)
        h.recent.append(float(score))
        average = sum(h.recent) / len(h.recent)
        h.pending = average
        if len(h.averages) < spec.min_history:
            return 0.0
        if h.fit is None or h.since_refresh >= spec.refresh:
            self._refresh(h)
        return min(self._log10_tail(h, average), 0.0)

    def learn(self, key: str, value: float | None = None) -> None:
        """Add the score last judged for this entity (or ``value``, one judged earlier and
        held back: `take_judged`) to its history."""
        if value is None:
            value = self.take_judged(key)
        if value is None:
            return
        h = self._history(key)
        if h.fit is not None and len(h.averages) == self.spec.history:
            h.dropped.append(h.averages[0])
        h.averages.append(value)
        h.since_refresh += 1

    def largest(self, key: str) -> float | None:
        """The largest score this entity's history holds (None while it holds none)."""
        averages = self._history(key).averages
        return max(averages) if averages else None

    def warming_up(self, key: str) -> bool:
        """Whether this entity's history is still too short for an opinion."""
        return len(self._history(key).averages) < self.spec.min_history

    def take_judged(self, key: str) -> float | None:
        """The score last judged for this entity, taken (it will not join the history unless
        passed back to `learn`)."""
        h = self._history(key)
        value, h.pending = h.pending, None
        return value

    def emit(self, key: str, log10_tail: float, metric: str | None = None) -> float:
        """The [0, 1] output of a tail probability (possibly combined over several models);
        ``metric``: the metric that leads it, whose own earlier outputs alone can suppress it."""
        out = self._output(log10_tail)
        if self.spec.suppress:
            depth = self._depth(log10_tail) if self.spec.output == "log" else None
            out = self._suppress(self._history(key), out, metric, depth)
        return out

    def _suppress(
        self, h: _History, out: float, metric: str | None = None, depth: float | None = None
    ) -> float:
        """0 unless `out` beats every output kept in the entity's last `suppress` points (those
        led by ``metric``, when it is named, and those that name none: outputs of an older
        snapshot count for every metric). A log output is compared by ``depth``, the output
        before it saturates at 1 (log10 of the tail probability in units of the level's).

        After an alert, a new incident (not one going on) alerts again only when it is a whole
        level deeper than every such output: its tail probability is the level's times smaller
        still. An incident is one alert however long it lasts, while an incident far rarer than
        a brief false alert just before it on the same metric is not silenced by it, as it was
        when both saturated at 1.

        What silences is an output that was kept, and an alert's incident while it goes on
        without a break (outputs at the `alert` level on consecutive points): the window runs
        from the incident's last such point. Outputs silenced otherwise do not extend it: had
        they, the tail of one incident (or a false alert) would go on silencing its metric as
        long as anything near the level followed within `suppress` points, and a new incident
        soon after it, saturated at the same output, would never alert."""
        oldest = _window_start(h, self.spec.suppress)
        _expire(h.peaks, oldest)
        recent_max = h.peaks[0][1] if h.peaks else 0.0
        peaks = h.peaks
        if metric is not None:
            peaks = h.metric_peaks.setdefault(metric, deque())
            _expire(peaks, oldest)
            recent_max = max(recent_max, peaks[0][1] if peaks else 0.0)
        alert = 1.0 if self.spec.alert is None else self.spec.alert  # (none set: saturation)
        last = peaks[-1] if peaks else None
        # the point before this one was at the level: an incident going on
        continuing = last is not None and last[0] == h.count - 1 and last[1] >= alert
        if depth is None:  # (a linear output: compared as it is)
            depth = out
            kept = out > recent_max
        elif recent_max >= alert:  # (an output of an older snapshot, at 1, is exactly 1 deep)
            kept = not continuing and depth >= recent_max + 1.0
        else:
            kept = depth > recent_max
        going_on = depth >= alert and continuing
        if kept or going_on:
            while peaks and peaks[-1][1] <= depth:
                peaks.pop()
            peaks.append((h.count, depth))
        h.count += 1
        return out if kept else 0.0

    def _depth(self, log10_tail: float) -> float:
        """A log output before it saturates at 1, capped at `MAX_DEPTH` (finite, so a snapshot
        of the suppression peaks restores)."""
        return min(-log10_tail / self.spec.level_decades, MAX_DEPTH)

    def _output(self, log10_tail: float) -> float:
        if self.spec.output == "linear":
            return 1.0 - 10.0**log10_tail
        return min(1.0, self._depth(log10_tail))

    def update_many(self, keys: Sequence[str], scores: Iterable[float]) -> np.ndarray:
        """`update` for a batch in arrival order (entities may interleave)."""
        return np.array(
            [self.update(k, float(s)) for k, s in zip(keys, scores, strict=True)], dtype="float64"
        )

    def reseed(self, key: str, past_scores: Iterable[float]) -> None:
        """Replace an entity's history with these past raw scores (e.g. after a model swap).

        Raw scores of a new model are not comparable with the old model's, so the history is
        rebuilt from the new model's scores of recent past windows; the suppression state stays.
        """
        h = self._history(key)
        fresh = _History(self.spec)
        fresh.count, fresh.peaks = h.count, h.peaks
        for s in past_scores:
            s = float(s) if math.isfinite(s) else 1e30
            fresh.recent.append(s)
            fresh.averages.append(sum(fresh.recent) / len(fresh.recent))
        self._state[key] = fresh

    # -- snapshot / restore --------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "spec": self.spec.to_dict(),
            "evicted": self.evicted,
            "entities": [
                {
                    "key": key,
                    "recent": list(h.recent),
                    "averages": list(h.averages),
                    "since_refresh": h.since_refresh if h.fit is not None else None,
                    "dropped": list(h.dropped),
                    "count": h.count,
                    "peaks": [list(p) for p in h.peaks],
                    **_metric_peaks_snapshot(h, self.spec.suppress),
                }
                for key, h in self._state.items()
            ],
        }

    @classmethod
    def restore(cls, state: dict[str, Any]) -> AnomalyLikelihood:
        check_header(state, STATE_FORMAT, STATE_VERSION, "likelihood-state snapshot")
        try:
            out = cls(LikelihoodSpec.from_dict(state["spec"]))
            out.evicted = int(state.get("evicted", 0))
            for item in state["entities"]:
                h = _History(out.spec)
                h.recent.extend(_finite(v) for v in item["recent"])
                h.averages.extend(_finite(v) for v in item["averages"])
                if item["since_refresh"] is not None:
                    # Rebuild the estimate exactly as it was: the history at the last refresh is
                    # what has left it since, then all but the points added after.
                    lag = int(item["since_refresh"])
                    if not 0 <= lag <= len(h.averages):
                        raise ValueError(f"since_refresh {lag} outside the history")
                    kept = list(h.averages)[: len(h.averages) - lag]
                    dropped = [_finite(v) for v in item["dropped"]]
                    if not kept and not dropped:
                        raise ValueError("a refreshed estimate with no history")
                    out._refresh(h, np.asarray(dropped + kept))
                    h.since_refresh = lag
                    h.dropped = dropped
                h.count = int(item["count"])
                h.peaks.extend((int(i), _finite(v)) for i, v in item["peaks"])
                # (absent from snapshots written before suppression was per metric)
                by_metric = item.get("metric_peaks", {})
                if not isinstance(by_metric, dict):
                    raise ValueError("metric_peaks must be an object")
                for metric, peaks in by_metric.items():
                    h.metric_peaks[str(metric)] = deque((int(i), _finite(v)) for i, v in peaks)
                lanes = [h.peaks, *h.metric_peaks.values()]
                if h.count < 0 or any(i < 0 or i > h.count for p in lanes for i, _ in p):
                    raise ValueError("suppression peaks outside the entity's count")
                out._state[str(item["key"])] = h
        except (KeyError, IndexError, TypeError, ValueError, ArithmeticError, ConfigError) as exc:
            raise DataError(f"likelihood-state snapshot is corrupt: {exc}") from None
        return out


def _window_start(h: _History, suppress: int) -> int:
    """The oldest count whose output can still suppress the entity's next point: the point at
    count c is judged against the outputs of points c − suppress to c − 1."""
    return h.count - suppress


def _expire(peaks: deque[tuple[int, float]], oldest: int) -> None:
    """Drop the peaks before count ``oldest`` (`_window_start`)."""
    while peaks and peaks[0][0] < oldest:
        peaks.popleft()


def _metric_peaks_snapshot(h: _History, suppress: int) -> dict[str, Any]:
    """The per-metric peaks still inside the suppression window (nothing when there are none,
    so snapshots of entities without named metrics read as before)."""
    out, oldest = {}, _window_start(h, suppress)
    for metric, peaks in h.metric_peaks.items():
        kept = [list(p) for p in peaks if p[0] >= oldest]
        if kept:
            out[metric] = kept
    return {"metric_peaks": out} if out else {}


def _finite(value: Any) -> float:
    """A snapshot's number, refused unless finite (a NaN history would silence an entity)."""
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"a non-finite value {value!r}")
    return number
