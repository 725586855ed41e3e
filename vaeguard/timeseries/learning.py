"""Online learning in window mode: the views retrain warm on the stream's newest windows.

A stream's normal drifts: a service settles at a new level, a machine runs hotter after a
change, traffic grows. A model trained once keeps judging the new normal against the old one
(the effect of retraining on NAB is in benchmarks/RESULTS-nab.md). So the serving object keeps
the newest ``max_train`` windows it featurized (one in every E when it holds E entities, so
they span the same time as one entity's ``max_train`` rows) and, each time the stream has
brought ``retrain_max_gap`` new rows per entity (and, after a fit at a known stream position,
each time the stream has grown ``retrain_growth``×), the views retrain warm on them: a few
hundred steps from the current weights, the thresholds and the plausible range re-fitted on the
same windows. Per-entity state (windows, scalers, likelihood histories) carries on, as the NAB
runner always did.

The refit runs at a batch boundary, after the batch is scored with the previous weights, so a
row is always scored by a model trained on earlier rows only (causal). If it fails, the
previous weights and thresholds are put back and serving goes on. The schedule is the
bundle's (``schedule`` section, `vaeguard.timeseries.views.DEFAULT_SCHEDULE`);
``retrain_max_gap: null`` turns online learning off in the daemon.

`refit_state` / `apply_refit_state`: the refitted weights and calibration as plain data (arrays
in base64 with their float32 / float64 dtype, no pickle), saved with the daemon's window state so
that a restart resumes the refitted model, not the bundle's; the same pair puts the previous
model back when a refit fails.
"""

from __future__ import annotations

import base64
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from vaeguard.errors import DataError
from vaeguard.snapshot import is_count, is_finite_number
from vaeguard.timeseries.detector import MIN_TRAIN_WINDOWS, channel_slots

log = logging.getLogger("vaeguard.timeseries.learning")


@dataclass
class Windows:
    """Training windows with the entity statistics they were scaled with (for the plausible
    range in the metrics' units): the part of a `WindowBatch` that training reads."""

    x: np.ndarray
    mask: np.ndarray
    c: np.ndarray | None
    center: np.ndarray
    scale: np.ndarray

    @classmethod
    def of(cls, batch) -> Windows:
        """The training part of a `WindowBatch`."""
        return cls(batch.x, batch.mask, batch.c, np.asarray(batch.center), np.asarray(batch.scale))

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, rows) -> Windows:
        """These rows (an index array or a slice)."""
        return Windows(
            self.x[rows],
            self.mask[rows],
            None if self.c is None else self.c[rows],
            self.center[rows],
            self.scale[rows],
        )

    def newest(self, n: int) -> Windows:
        return self if len(self) <= n else self.take(slice(len(self) - n, len(self)))


def fit_views(views, windows: Windows, *, warm_start: bool) -> None:
    """Train, calibrate and bound the expected values of every view on ``windows``."""
    views.fit(windows.x, windows.c, windows.mask, warm_start=warm_start)
    views.calibrate(windows.x, windows.c, windows.mask)
    views.fit_plausible_range(windows)


class OnlineLearning:
    """When a `ViewSet` is due for a warm refit, and on which windows (bounded memory)."""

    def __init__(self, views, *, fitted_at: int = 0):
        schedule = views.schedule
        self.views = views
        self.max_train = int(schedule["max_train"])
        self.growth = schedule.get("retrain_growth")
        self.gap = schedule.get("retrain_max_gap")
        self.rows = 0  # rows fed since this serving started
        self.fitted_at = int(fitted_at)  # stream position (in `rows`) of the last fit
        self.refits = 0
        self.failures = 0
        self.refit_rows: list[int] = []  # where each refit happened (in `rows`)
        self._parts: deque[Windows] = deque()
        self._held = 0
        self._windows_seen = 0

    @property
    def enabled(self) -> bool:
        """A gap, or growth from a known stream position (a daemon starts at 0: gap only)."""
        return bool(self.gap) or bool(self.growth and self.fitted_at > 0)

    # -- what was fed ----------------------------------------------------------------------------

    def count(self, rows: int) -> None:
        """Count the rows of a featurized batch (the schedule is in rows)."""
        if self.enabled:
            self.rows += int(rows)

    def observe(self, windows: Windows, n_entities: int = 1, *, keep=None) -> None:
        """Keep a scored batch's windows: the newest ``max_train``, one in every
        ``n_entities`` (so that with many entities the windows still span the time that
        ``max_train`` rows of one entity do: every hour of the day, not the last minute), and
        only those ``keep`` marks (the rows the likelihood learned as normal)."""
        if not self.enabled:
            return
        n = len(windows)
        if n == 0:
            return
        stride = max(1, int(n_entities))
        chosen = (self._windows_seen + np.arange(n)) % stride == 0
        self._windows_seen += n
        if keep is not None:
            chosen &= np.asarray(keep, dtype=bool)
        take = np.flatnonzero(chosen)
        if take.size == 0:
            return
        part = windows
        if take.size < n:
            part = part.take(take)
        part = part.newest(self.max_train)
        self._parts.append(part)
        self._held += len(part)
        while self._parts and self._held - len(self._parts[0]) >= self.max_train:
            self._held -= len(self._parts.popleft())

    def windows(self) -> Windows | None:
        """The newest ``max_train`` windows fed (None before any)."""
        parts = list(self._parts)
        if not parts:
            return None
        c = None if parts[0].c is None else np.concatenate([p.c for p in parts])
        joined = Windows(
            np.concatenate([p.x for p in parts]),
            np.concatenate([p.mask for p in parts]),
            c,
            np.concatenate([p.center for p in parts]),
            np.concatenate([p.scale for p in parts]),
        )
        return joined.newest(self.max_train)

    # -- when ------------------------------------------------------------------------------------

    def rows_until_due(self, n_entities: int) -> float:
        """Rows still to feed before the next refit (``inf`` when online learning is off)."""
        due = math.inf
        if self.gap:
            due = self.fitted_at + self.gap * max(1, int(n_entities))
        if self.growth and self.fitted_at > 0:
            due = min(due, max(math.ceil(self.fitted_at * self.growth), self.fitted_at + 1))
        return max(due - self.rows, 0)

    # -- the refit -------------------------------------------------------------------------------

    def refit_if_due(self, n_entities: int) -> dict[str, Any] | None:
        """Refit warm when due; what happened (``result``: ok, failed, or skipped with fewer
        than `MIN_TRAIN_WINDOWS` windows held), or None when not due."""
        if self.rows_until_due(n_entities) > 0:
            return None
        windows = self.windows()
        self.fitted_at = self.rows
        held = 0 if windows is None else len(windows)
        if held < MIN_TRAIN_WINDOWS:
            log.info(
                "online refit skipped: too few windows",
                extra={"windows": held, "needed": MIN_TRAIN_WINDOWS, "rows": self.rows},
            )
            return {"ok": False, "result": "skipped", "windows": held, "seconds": 0.0}
        started = time.perf_counter()
        saved = refit_state(self.views)
        try:
            fit_views(self.views, windows, warm_start=True)
            self._check(windows)
        except Exception as exc:
            apply_refit_state(self.views, saved)
            self.failures += 1
            log.warning(
                "online refit failed; the previous model keeps serving",
                extra={"error": f"{type(exc).__name__}: {exc}"[:500], "windows": len(windows)},
            )
            seconds = time.perf_counter() - started
            return {"ok": False, "result": "failed", "windows": held, "seconds": seconds}
        self.refits += 1
        self.refit_rows.append(self.rows)
        seconds = time.perf_counter() - started
        info = {"ok": True, "result": "ok", "windows": held, "seconds": seconds}
        log.info("online refit", extra={**info, "refits": self.refits, "rows": self.rows})
        return info

    def _check(self, windows: Windows) -> None:
        """A refit that scores its own training windows as non-finite is refused."""
        probe = windows.newest(256)
        for scores in self.views.raw_scores(probe.x, probe.c, probe.mask):
            if not np.isfinite(scores).all():
                raise ValueError("the refitted model scores non-finite values")


# -- the refitted model as plain data (the daemon's window state) --------------------------------


#: The dtypes an array keeps in the refit state: the weights are float32, the calibration
#: float64 (a rollback must put back exactly what was there).
_DTYPES = ("<f4", "<f8")


def _encode(a: np.ndarray) -> dict[str, Any]:
    a = np.asarray(a)
    dtype = "<f8" if a.dtype == np.float64 else "<f4"
    a = a.astype(dtype, copy=False)  # (tobytes is C order; ascontiguousarray would make 0-d 1-d)
    return {
        "shape": list(a.shape),
        "dtype": dtype,
        "data": base64.b64encode(a.tobytes()).decode("ascii"),
    }


def _decode(d: Any, shape: tuple[int, ...] | None = None) -> np.ndarray:
    if not isinstance(d, dict):
        raise DataError("refit state: an array is not an object")
    dtype = d.get("dtype", "<f4")  # state files written before the dtype was kept: float32
    if dtype not in _DTYPES:
        raise DataError(f"refit state: unsupported array dtype {dtype!r}")
    shape_of = d.get("shape")
    if not isinstance(shape_of, list) or not all(is_count(n) for n in shape_of):
        raise DataError("refit state: an array's shape must list sizes")
    try:
        raw = base64.b64decode(d["data"], validate=True)
        a = np.frombuffer(raw, dtype=dtype).reshape(shape_of)
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        raise DataError(f"refit state: bad array ({exc})") from None
    if shape is not None and a.shape != tuple(shape):
        raise DataError(f"refit state: an array of shape {a.shape}, the model has {shape}")
    if not np.isfinite(a).all():
        raise DataError("refit state: non-finite values")
    return a.astype(np.dtype(dtype).newbyteorder("="))


def refit_state(views) -> list[dict[str, Any]]:
    """Every view's weights and calibration, JSON-safe."""
    out = []
    for view in views.views:
        pr = view.plausible_range_
        out.append(
            {
                "weights": [_encode(w) for w in view.model_.get_weights()],
                "threshold": view.threshold_.to_dict(),
                "baseline": _encode(view.baseline_),
                "score_reference": _encode(view.score_reference_),
                "plausible_range": None if pr is None else pr.to_dict(),
                "training_info": dict(view.training_info_),
                "fits": int(getattr(view, "fits_", 0)),
            }
        )
    if views.judges_cross_section:
        fitted = views.cross_section_
        out[0]["cross_section"] = None if fitted is None else fitted.to_dict()
    return out


def apply_refit_state(views, state: Any) -> None:
    """Put saved refitted weights and calibration in place; `DataError` (and nothing changed)
    when they do not fit these views."""
    put_refit_state(views, stage_refit_state(views, state))


def stage_refit_state(views, state: Any) -> list[dict[str, Any]]:
    """Decode and check saved refitted weights and calibration without touching the views
    (`put_refit_state` then puts them in place): `DataError` unless every array has the
    model's shape and finite values, every threshold is a finite number, every plausible range
    finite low ≤ high pairs for the view's inputs. A state file is read from disk: a NaN
    threshold adopted from it would flag nothing ever again."""
    if not isinstance(state, list) or len(state) != len(views.views):
        raise DataError("refit state: expected one entry per view")
    staged: list[dict[str, Any]] = []
    cross = views.cross_section_
    for view, item in zip(views.views, state, strict=True):
        try:
            if not isinstance(item, dict):
                raise DataError("refit state: a view's entry is not an object")
            current = view.model_.get_weights()
            weights = item["weights"]
            if not isinstance(weights, list) or len(weights) != len(current):
                raise DataError("refit state: the number of weight arrays differs")
            if not isinstance(item["training_info"], dict) or not is_count(item["fits"]):
                raise DataError("refit state: training_info must be an object and fits a count")
            channel_slots(item["training_info"], len(view.input_channels))
            if not staged and views.judges_cross_section:
                # view 0's entry carries the model's cross-section fit (None: not fitted yet)
                cross = views.cross_section_from(item.get("cross_section"))
            staged.append(
                {
                    "weights": [
                        _decode(d, w.shape).astype(w.dtype)
                        for d, w in zip(weights, current, strict=True)
                    ],
                    "threshold_": _threshold(item["threshold"]),
                    "baseline_": _decode(item["baseline"], view.baseline_.shape).astype("float64"),
                    "score_reference_": _decode(item["score_reference"]).astype("float64"),
                    "plausible_range_": _plausible_range(item["plausible_range"], view.n_inputs),
                    "training_info_": dict(item["training_info"]),
                    "fits_": int(item["fits"]),
                }
            )
        except DataError:
            raise
        except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError) as exc:
            raise DataError(f"refit state is corrupt: {type(exc).__name__}: {exc}") from None
    if views.judges_cross_section:
        staged[0]["cross_section_"] = cross
    return staged


def put_refit_state(views, staged: list[dict[str, Any]]) -> None:
    """Put what `stage_refit_state` checked in place (cannot fail half-way: shapes match)."""
    for view, item in zip(views.views, staged, strict=True):
        item = dict(item)
        if "cross_section_" in item:  # the model's, carried by view 0's entry
            views.cross_section_ = item.pop("cross_section_")
        view.model_.set_weights(item.pop("weights"))
        for k, v in item.items():
            setattr(view, k, v)


def _threshold(d: Any):
    from vaeguard.thresholds import Threshold

    if (
        not isinstance(d, dict)
        or not is_finite_number(d.get("value"))
        or not isinstance(d.get("method"), str)
        or not isinstance(d.get("params", {}), dict)
        or not is_count(d.get("calibration_rows", 0))
    ):
        raise DataError("refit state: a threshold must have a finite value and a method")
    return Threshold.from_dict(d)


def _plausible_range(d: Any, n: int):
    from vaeguard.model.counterfactual import PlausibleRange

    if d is None:
        return None
    ok = isinstance(d, dict) and is_finite_number(d.get("margin", 0.0))
    ok = ok and isinstance(d.get("basis", ""), str)
    for key in ("low", "high"):
        values = d.get(key) if ok else None
        ok = (
            ok
            and isinstance(values, list)
            and len(values) == n
            and all(map(is_finite_number, values))
        )
    if not (ok and all(lo <= hi for lo, hi in zip(d["low"], d["high"], strict=True))):
        raise DataError(f"refit state: a plausible range must hold {n} finite low <= high pairs")
    return PlausibleRange.from_dict(d)
