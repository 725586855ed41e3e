"""Multi-metric entities: does window mode see a shift in one metric, and name it? (issue 27)

A benchmark to design against, not a test: seeded numpy generators (nothing downloaded) of
entities with 2–8 correlated metrics at 1-minute steps, in four families:

* ``load``: a latent load (a daily cycle plus a slow AR(1) part) drives every metric,
  ``metric_j = a_j + b_j·load + noise_j``, ``b_j`` of both signs, Gaussian noise whose sd
  ranges from a twentieth to over half of ``|b_j|`` (some metrics follow the load closely,
  some are mostly noise);
* ``weekly``: the same with a weekly cycle too (weekends lower and flatter); the stream starts
  on a Friday so that the history holds weekdays and a weekend;
* ``heavy``: as ``load``, but some metrics' noise is Student-t (3 degrees of freedom) and
  some lognormal (skewed), rescaled to the metric's noise sd;
* ``quantized``: some metrics are Poisson counts whose mean follows the load, some are
  rounded to a coarse step (1–2 noise sd).

Each stream is one entity: ``--train`` normal history points, then ``--test`` points in which
anomalies are planted every `SPACING` points (each judged on its own; the normal stretches
between them give the false-alert count). Kinds: ``shift`` (one metric +k sd for d points),
``multi_shift`` (2–3 metrics at once), ``spike`` (one point, ±k sd), ``level_shift`` (one
metric moves by ±k sd and stays there for `LEVEL_HOLD` points, judged on its first
`LEVEL_JUDGED` points), ``stuck`` (one metric frozen at its last value for d points) and
``correlation_break`` (one metric replaced for d points by a series independent of the load
with the metric's mean and sd over the previous day); k in 2–10 sd, where sd is the metric's
noise sd around its load-driven mean at the anomaly's start.

Every stream goes through the one streaming detector as a serving that trained on the history
and went on would: `vaeguard.apps.online.run_online` with the first fit at the end of the
history (whose points build each entity's windows, scalers and seasonal history; the
likelihood histories restart there), then online refits. ``vaeguard score`` on a bundle
starts every entity afresh instead (`benchmarks/cli_path.py` measures that path). A point alerts when its output
reaches the likelihood's ``alert`` level. An anomaly is detected when an alert falls in
``[start, end + W)`` (W: view 0's ``score_slots``, the slots a score counts); its top-1
metric is the metric named first by the score record of that first alert. False alerts are
the alerts outside every anomaly's ``[start, end + W + 100)`` (100: the likelihood's default
suppression), per 1,000 test points outside those intervals. Each stream's result is cached
under ``runs/multimetric/<hash>/`` (the model configuration, the run version of
`benchmarks.nab_cv`, the generator settings); a configuration that differs only in its
likelihood replays the cached raw scores (`replay_likelihood`, the serving's arithmetic).

``--cv``: out-of-fold over families. For each family held out, the candidate configuration
with the best detected share of shifts of at least 4 sd on the other families, among those
whose false alerts stay within 1.5× their budget on each other family, is reported on the held
out family.

The calibration table trains the views offline on each stream's history as the first fit
does, scores the windows of the same stream's test part without anomalies, and prints the
spread of normal raw scores and what carries the excess of the top 1 % of them.

Run ``python benchmarks/multimetric.py --help`` for the flags.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: 2024-01-01 00:00 UTC, a Monday; the weekly family starts on the Friday after it.
START = 1_704_067_200.0
DAY = 86_400.0
STEP = 60.0
DEFAULT_TRAIN = 4000
DEFAULT_TEST = 6000
#: Entities per family in the default run (metric counts cycle through 2–8 with the seed).
DEFAULT_SEEDS = 5
QUICK_TRAIN = 500
QUICK_TEST = 700
DEFAULT_CACHE = ROOT / "runs" / "multimetric"
#: Bumped when the generators change what they produce (part of the cache key).
GENERATOR_VERSION = 1

FAMILIES = ("load", "weekly", "heavy", "quantized")
METRIC_NAMES = ("cpu", "mem", "net_in", "net_out", "latency", "errors", "disk_io", "conns")

#: Points from one anomaly's start to the next (± `JITTER`); the first starts `FIRST` points
#: into the test part.
SPACING = 300
JITTER = 20
FIRST = 150
#: A level shift holds for this many points, and must be seen within its first `LEVEL_JUDGED`.
LEVEL_HOLD = 120
LEVEL_JUDGED = 30
#: Points after an anomaly's scored span (end + W) still excluded from the false alerts: the
#: default likelihood's suppression of repeated alerts.
AFTERMATH = 100
#: A rate within this factor of the budget reads "yes" (as in false_alarms.py).
TOLERANCE = 1.5
SIZES = (2, 4, 6, 8, 10)
#: The issue's reference case: one metric +8 sd for 5 points.
REFERENCE = ("shift", 8, 5)
#: Runs the quick mode's models faster (it checks the pipeline, not the detector).
QUICK_CONFIG: dict[str, Any] = {
    "views": {"train_steps": 40, "retrain_steps": 20, "mc_samples": 4},
    "schedule": {"retrain_max_gap": 400},
}


def _combos() -> list[tuple[str, float | None, int]]:
    """The anomaly schedule each stream walks through: (kind, size in sd, duration); the
    reference case three times and +4 sd shifts twice, so that they are the best measured."""
    out: list[tuple[str, float | None, int]] = []
    for k in SIZES:
        for d in (5, 30):
            out.append(("shift", k, d))
            out.append(("multi_shift", k, d))
        out.append(("spike", k, 1))
        out.append(("level_shift", k, LEVEL_HOLD))
    for d in (5, 30):
        out.append(("stuck", None, d))
        out.append(("correlation_break", None, d))
    out += [REFERENCE, REFERENCE, ("shift", 4, 5), ("shift", 4, 30)]
    order = np.random.default_rng(27).permutation(len(out))
    return [out[i] for i in order]


COMBOS = _combos()
KINDS = ("shift", "multi_shift", "spike", "level_shift", "stuck", "correlation_break")

# -- generators ----------------------------------------------------------------------------------


@dataclass
class Anomaly:
    kind: str
    start: int  # row index in the stream
    end: int  # exclusive: the rows start..end-1 are changed
    size: float | None  # sd (None where a size does not apply)
    duration: int
    metrics: tuple[str, ...]
    #: Exclusive end of the rows an alert may follow (+ W): ``end``, but a level shift's first
    #: `LEVEL_JUDGED` points.
    judged_end: int

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "metrics": list(self.metrics)}


@dataclass
class Stream:
    """One entity: timestamps, values (rows × metrics) with and without the anomalies, each
    metric's noise sd per row, and the anomalies planted in the test part."""

    family: str
    seed: int
    key: str
    metrics: tuple[str, ...]
    t: np.ndarray
    values: np.ndarray
    clean: np.ndarray
    sd: np.ndarray
    kinds: tuple[str, ...]  # each metric's noise kind
    grid: tuple[float, ...]  # each metric's value step (0: continuous)
    train: int
    anomalies: list[Anomaly] = field(default_factory=list)

    def records(self, clean: bool = False, rows: slice = slice(None)) -> list[dict[str, Any]]:
        v = self.clean if clean else self.values
        names = self.metrics
        return [
            {"key": self.key, "ts": float(t), **dict(zip(names, map(float, row), strict=True))}
            for t, row in zip(self.t[rows], v[rows], strict=True)
        ]

    def digest(self) -> str:
        h = hashlib.sha256(np.ascontiguousarray(self.t).tobytes())
        h.update(np.ascontiguousarray(self.values).tobytes())
        h.update(json.dumps([a.to_dict() for a in self.anomalies]).encode())
        return h.hexdigest()[:16]


def _rng(family: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(f"multimetric-{family}".encode())])


def _ar1(rng: np.random.Generator, n: int, phi: float, sigma: float) -> np.ndarray:
    """Stationary AR(1) noise with marginal standard deviation sigma."""
    e = rng.normal(0.0, sigma * math.sqrt(1.0 - phi * phi), n)
    out = np.empty(n)
    x = rng.normal(0.0, sigma)
    for i in range(n):
        x = phi * x + e[i]
        out[i] = x
    return out


def _daily(t: np.ndarray, peak_hour: float) -> np.ndarray:
    return np.cos(2.0 * np.pi * ((t - START) / 3600.0 - peak_hour) / 24.0)


def _weekend(t: np.ndarray) -> np.ndarray:
    """About 1 on Saturday and Sunday (UTC), 0 on weekdays, with smooth edges (~2 hours)."""
    dow = ((t - START) / DAY) % 7.0  # START is a Monday

    def sig(x):
        return 1.0 / (1.0 + np.exp(-12.0 * x))

    # [Sat, Mon) this week, and the tail of last week's Sunday edge (continuous at Monday 00:00)
    return sig(dow - 5.0) - sig(dow - 7.0) + sig(dow + 2.0) - sig(dow)


def metric_count(family: str, seed: int) -> int:
    """2 … 8 metrics, cycling with the seed (shifted per family)."""
    return 2 + (3 * int(seed) + FAMILIES.index(family)) % 7


def _noise_kinds(family: str, m: int, rng: np.random.Generator) -> list[str]:
    if family == "heavy":
        cycle = ["t3", "lognormal", "gauss"]
    elif family == "quantized":
        cycle = ["poisson", "rounded", "gauss"]
    else:
        cycle = ["gauss"]
    kinds = [cycle[j % len(cycle)] for j in range(m)]
    return [kinds[i] for i in rng.permutation(m)]


def _standard_noise(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """Zero-mean, unit-sd noise of the kind."""
    if kind == "t3":
        return rng.standard_t(3.0, n) / math.sqrt(3.0)
    if kind == "lognormal":
        s = 0.8
        z = np.exp(s * rng.standard_normal(n))
        mean = math.exp(s * s / 2.0)
        sd = math.sqrt((math.exp(s * s) - 1.0) * math.exp(s * s))
        return (z - mean) / sd
    return rng.standard_normal(n)


def generate(
    family: str, seed: int, train: int = DEFAULT_TRAIN, test: int = DEFAULT_TEST
) -> Stream:
    """One entity of the family; the same arguments always give the same stream."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r} (known: {', '.join(FAMILIES)})")
    train, test, seed = int(train), int(test), int(seed)
    if train < 100 or test < SPACING or seed < 0:
        raise ValueError(f"train ≥ 100, test ≥ {SPACING}, seed ≥ 0 (got {train}, {test}, {seed})")
    rng = _rng(family, seed)
    n = train + test
    start = START + (4 * DAY if family == "weekly" else 0.0)
    t = start + STEP * np.arange(n, dtype="float64")
    peak = rng.uniform(10.0, 16.0)
    load = _daily(t, peak) + _ar1(rng, n, 0.98, 0.25)
    if family == "weekly":
        weekend = _weekend(t)
        load = _daily(t, peak) * (1.0 - 0.5 * weekend) - 0.8 * weekend + _ar1(rng, n, 0.98, 0.25)
    m = metric_count(family, seed)
    names = tuple(str(x) for x in rng.permutation(METRIC_NAMES)[:m])
    kinds = _noise_kinds(family, m, rng)
    signs = rng.choice([-1.0, 1.0], m)
    signs[0] = 1.0
    if m >= 2 and (signs > 0).all():
        signs[rng.integers(1, m)] = -1.0
    clean = np.empty((n, m))
    sd = np.empty((n, m))
    grid = [0.0] * m
    for j, kind in enumerate(kinds):
        a = rng.uniform(20.0, 100.0)
        b = signs[j] * rng.uniform(2.0, 15.0)
        sigma = abs(b) * math.exp(rng.uniform(math.log(0.05), math.log(0.6)))
        if kind == "poisson":
            lam = rng.uniform(3.0, 30.0) * np.exp(0.5 * signs[j] * load)
            clean[:, j] = rng.poisson(lam)
            grid[j] = 1.0
            sd[:, j] = np.sqrt(lam)
        elif kind == "rounded":
            step = grid[j] = sigma * rng.uniform(1.0, 2.0)
            clean[:, j] = step * np.round((a + b * load + sigma * rng.standard_normal(n)) / step)
            sd[:, j] = math.sqrt(sigma * sigma + step * step / 12.0)
        else:
            clean[:, j] = a + b * load + sigma * _standard_noise(kind, rng, n)
            sd[:, j] = sigma
    stream = Stream(
        family,
        seed,
        f"{family}-{seed}",
        names,
        t,
        clean.copy(),
        clean,
        sd,
        tuple(kinds),
        tuple(grid),
        train,
    )
    _plant(stream, rng)
    return stream


def _quantize(stream: Stream, j: int, v: np.ndarray) -> np.ndarray:
    """Values put back on the metric's grid (counts stay non-negative integers)."""
    step = stream.grid[j]
    if not step:
        return v
    v = step * np.round(v / step)
    return np.maximum(v, 0.0) if stream.kinds[j] == "poisson" else v


def _plant(stream: Stream, rng: np.random.Generator) -> None:
    """Anomalies every `SPACING` points of the test part, walking through `COMBOS` from a
    place that depends on the family and seed (so a family's streams share out the kinds)."""
    n, m = stream.values.shape
    starts = []
    s = stream.train + FIRST
    while s + SPACING - FIRST <= n:
        starts.append(s + int(rng.integers(-JITTER, JITTER + 1)))
        s += SPACING
    offset = (7 * stream.seed + 11 * FAMILIES.index(stream.family)) * max(1, len(starts))
    for i, s in enumerate(starts):
        kind, size, d = COMBOS[(offset + i) % len(COMBOS)]
        j = (stream.seed + i) % m
        v = stream.values
        sd = stream.sd[s]
        if kind in ("shift", "spike", "level_shift", "multi_shift"):
            sign = rng.choice([-1.0, 1.0]) if kind in ("spike", "level_shift") else 1.0
            if stream.kinds[j] == "poisson":  # (a count cannot go far below its mean)
                sign = 1.0
            touched = [j]
            if kind == "multi_shift":
                touched = [j, *(x for x in rng.permutation(m) if x != j)][
                    : min(m, rng.integers(2, 4))
                ]
            for x in touched:
                v[s : s + d, x] = _quantize(stream, x, v[s : s + d, x] + sign * size * sd[x])
            judged = s + (LEVEL_JUDGED if kind == "level_shift" else d)
        elif kind == "stuck":
            touched = [j]
            v[s : s + d, j] = v[s - 1, j]
            judged = s + d
        else:  # correlation_break
            touched = [j]
            recent = stream.clean[max(0, s - int(DAY / STEP)) : s, j]
            z = _ar1(rng, d, 0.9, 1.0)
            v[s : s + d, j] = _quantize(stream, j, recent.mean() + recent.std() * z)
            judged = s + d
        stream.anomalies.append(
            Anomaly(
                kind,
                int(s),
                int(s + d),
                None if size is None else float(size),
                int(d),
                tuple(stream.metrics[x] for x in touched),
                int(judged),
            )
        )


# -- configuration and the cache -----------------------------------------------------------------


def resolve(config: dict[str, Any] | None, candidate: dict[str, Any] | None = None) -> dict:
    """The default configuration with ``config`` then ``candidate`` merged in, checked; metrics
    are filled in per stream."""
    from vaeguard.apps.nab import merged_params
    from vaeguard.timeseries.views import merge_config

    params = merged_params(config)
    return merged_params(merge_config(params, candidate)) if candidate else params


def stream_params(params: dict[str, Any], stream: Stream) -> dict[str, Any]:
    from vaeguard.apps.nab import merged_params

    return merged_params(
        {**params, "window": {**params["window"], "metrics": list(stream.metrics)}}
    )


def score_span(params: dict[str, Any]) -> int:
    """W: the slots view 0's score counts (its ``score_slots``, else the whole window)."""
    slots = params["views"][0].get("score_slots")
    return int(slots) if slots else int(params["window"].get("window", 32))


def alert_level(params: dict[str, Any]) -> float:
    spec = params.get("likelihood") or {}
    return float(spec.get("alert") or 1.0)


def budget_of(params: dict[str, Any]) -> float:
    from benchmarks.false_alarms import spec_budget

    return spec_budget(params.get("likelihood") or {})[0]


def model_key(params: dict[str, Any], train: int, test: int) -> str:
    """The cache folder: the model configuration without the likelihood (replayed), the NAB
    cache's run version (bumped when the library changes what a run produces), the generator
    settings. Not the library's source: a change to the likelihood alone replays."""
    from benchmarks.nab_cv import RUN_VERSION

    resolved = json.loads(json.dumps(params))
    resolved.pop("likelihood", None)
    resolved["window"].pop("metrics", None)
    key = {
        "params": resolved,
        "run_version": RUN_VERSION,
        "generator": GENERATOR_VERSION,
        "train": train,
        "test": test,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


# -- one stream (runs in a worker process) -------------------------------------------------------


def score_stream(family: str, seed: int, train: int, test: int, params: dict) -> dict[str, Any]:
    """One stream through the streaming detector (``vaeguard train-window`` + ``score``)."""
    from vaeguard.apps.online import run_online

    started = time.perf_counter()
    stream = generate(family, seed, train, test)
    result = run_online(stream_params(params, stream), stream.records(), first_fit=train)
    return {
        "family": family,
        "seed": seed,
        "raw": result.raw,
        "output": result.output,
        "top_metric": list(getattr(result, "top_metric", None) or [None] * len(result.output)),
        "trained_at": list(result.trained_at),
        "restarts": result.restarts,
        "term_metrics": list(result.term_metrics),
        "comparable": list(result.comparable),
        "digest": stream.digest(),
        "likelihood": params.get("likelihood"),
        "seconds": time.perf_counter() - started,
    }


def _cache_file(folder: Path, family: str, seed: int) -> Path:
    return folder / f"{family}__seed{seed}.npz"


def _save(path: Path, run: dict[str, Any]) -> None:
    from vaeguard.apps.online import restarts_array

    tmp = path.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        raw=run["raw"],
        output=run["output"],
        top_metric=np.array([m or "" for m in run["top_metric"]], dtype=str),
        trained_at=np.asarray(run["trained_at"], dtype="int64"),
        restarts=restarts_array(run["restarts"], len(run["raw"])),
        term_metrics=np.array(run["term_metrics"], dtype=str),
        comparable=np.asarray(run["comparable"], dtype="int64"),
        digest=np.array(run["digest"]),
        likelihood=np.array(json.dumps(run["likelihood"], sort_keys=True)),
        seconds=np.array(run["seconds"]),
    )
    os.replace(tmp, path)


def _load(path: Path, digest: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        if str(z["digest"]) != digest:
            return None
        return {
            "raw": z["raw"],
            "output": z["output"],
            "top_metric": [m or None for m in z["top_metric"].tolist()],
            "trained_at": z["trained_at"].tolist(),
            "restarts": z.get("restarts", ()),
            "term_metrics": z["term_metrics"].tolist() if "term_metrics" in z else None,
            "comparable": z["comparable"].tolist() if "comparable" in z else [],
            "likelihood": json.loads(str(z["likelihood"])),
            "seconds": float(z["seconds"]),
            "cached": True,
        }


def run_streams(
    families: Sequence[str],
    seeds: Sequence[int],
    params: dict[str, Any],
    *,
    train: int,
    test: int,
    jobs: int = 1,
    cache: Path = DEFAULT_CACHE,
    fresh: bool = False,
    log: Callable[[str], None] = lambda line: None,
) -> dict[tuple[str, int], dict[str, Any]]:
    """{(family, seed): run}: every stream's outputs, raw scores and top metrics, from the cache
    where the same model configuration ran the same data."""
    from vaeguard.apps.nab import run_jobs

    folder = Path(cache) / model_key(params, train, test)
    folder.mkdir(parents=True, exist_ok=True)
    # What the folder is keyed on: candidates that differ only in their likelihood share it
    # (replayed), so a likelihood here would be the last candidate's, not the runs'.
    model = {k: v for k, v in params.items() if k != "likelihood"}
    (folder / "params.json").write_text(json.dumps(model, indent=1, sort_keys=True))
    out: dict[tuple[str, int], dict[str, Any]] = {}
    digests = {(f, s): generate(f, s, train, test).digest() for f in families for s in seeds}
    todo = []
    for key, digest in digests.items():
        cached = None if fresh else _load(_cache_file(folder, *key), digest)
        if cached is None:
            todo.append(key)
        else:
            out[key] = cached

    def keep(run: dict[str, Any]) -> None:
        key = (run["family"], run["seed"])
        _save(_cache_file(folder, *key), run)
        out[key] = {**run, "cached": False}
        log(f"  {key[0]} seed {key[1]}: {run['seconds']:.0f} s")

    if todo:
        log(f"running {len(todo)} stream(s) through the streaming detector ({jobs} job(s)) …")
        from benchmarks import multimetric

        run_jobs(
            multimetric.score_stream, [(f, s, train, test, params) for f, s in todo], jobs, keep
        )
    return {key: out[key] for key in digests}


def outputs_for(run: dict[str, Any], likelihood: dict[str, Any] | None) -> np.ndarray:
    """The run's outputs under ``likelihood``: as run when it is the spec the run used, else
    replayed from the raw scores (the serving's arithmetic)."""
    if json.dumps(likelihood, sort_keys=True) == json.dumps(run["likelihood"], sort_keys=True):
        return run["output"]
    from vaeguard.apps.online import replay_likelihood

    if likelihood is None:
        return np.zeros(run["raw"].shape[1])
    entities = ["e" if np.isfinite(r) else None for r in run["raw"][0]]
    return replay_likelihood(
        run["raw"],
        entities,
        likelihood,
        run.get("restarts", ()),
        run.get("term_metrics"),
        run.get("comparable", ()),
    )


# -- decisions -----------------------------------------------------------------------------------


@dataclass
class Judged:
    """One anomaly's verdict."""

    family: str
    seed: int
    n_metrics: int
    anomaly: Anomaly
    detected: bool
    delay: int | None
    top_metric: str | None
    #: The highest raw score (any row of the run's raw scores) in the judged span, in IQRs of
    #: that row's normal test points above their median.
    peak_z: float

    @property
    def top_right(self) -> bool:
        return self.detected and self.top_metric in self.anomaly.metrics


@dataclass
class FalseAlerts:
    points: int = 0
    alerts: int = 0

    def __add__(self, other: FalseAlerts) -> FalseAlerts:
        return FalseAlerts(self.points + other.points, self.alerts + other.alerts)

    @property
    def per_1000(self) -> float:
        return 1000.0 * self.alerts / self.points if self.points else math.nan


def judge(
    stream: Stream, run: dict[str, Any], output: np.ndarray, alert: float, w: int
) -> tuple[list[Judged], FalseAlerts]:
    """Each anomaly's verdict, and the alerts on the test points outside every anomaly."""
    n = len(output)
    alerts = np.asarray(output) >= alert
    normal = np.zeros(n, dtype=bool)
    normal[stream.train :] = True
    for a in stream.anomalies:
        normal[a.start : min(n, a.end + w + AFTERMATH)] = False
    raw = np.asarray(run["raw"], dtype="float64")
    z = np.full(raw.shape, np.nan)
    for v in range(raw.shape[0]):
        base = raw[v, normal & np.isfinite(raw[v])]
        if base.size >= 10:
            q1, med, q3 = np.quantile(base, [0.25, 0.5, 0.75])
            z[v] = (raw[v] - med) / max(q3 - q1, 1e-9)
    out = []
    for a in stream.anomalies:
        span = slice(a.start, min(n, a.judged_end + w))
        hits = np.flatnonzero(alerts[span])
        first = a.start + int(hits[0]) if hits.size else None
        peak = z[:, span]
        peak_z = float(np.nanmax(peak)) if np.isfinite(peak).any() else math.nan
        out.append(
            Judged(
                stream.family,
                stream.seed,
                len(stream.metrics),
                a,
                first is not None,
                None if first is None else first - a.start,
                None if first is None else run["top_metric"][first],
                peak_z,
            )
        )
    return out, FalseAlerts(int(normal.sum()), int((alerts & normal).sum()))


@dataclass
class Evaluation:
    judged: list[Judged]
    false_alerts: dict[str, FalseAlerts]  # per family
    budget: float


def evaluate(
    runs: dict[tuple[str, int], dict[str, Any]], params: dict[str, Any], train: int, test: int
) -> Evaluation:
    judged: list[Judged] = []
    fa: dict[str, FalseAlerts] = {}
    alert, w = alert_level(params), score_span(params)
    for (family, seed), run in runs.items():
        stream = generate(family, seed, train, test)
        output = outputs_for(run, params.get("likelihood"))
        j, f = judge(stream, run, output, alert, w)
        judged += j
        fa[family] = fa.get(family, FalseAlerts()) + f
    return Evaluation(judged, fa, budget_of(params))


# -- tables --------------------------------------------------------------------------------------


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], right: int = 1) -> str:
    """A Markdown table; columns from ``right`` on are right-aligned."""
    align = ["---" if i < right else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _share(k: int, n: int) -> str:
    return f"{k}/{n} ({100.0 * k / n:.0f} %)" if n else "—"


def _median(values: Sequence[float]) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return f"{np.median(values):.0f}" if values else "—"


def summary_row(label: Sequence[Any], group: Sequence[Judged]) -> list[Any]:
    detected = [j for j in group if j.detected]
    return [
        *label,
        len(group),
        _share(len(detected), len(group)),
        _median([j.delay for j in detected]),
        _share(sum(j.top_right for j in detected), len(detected)),
        _median([j.peak_z for j in group]),
    ]


SUMMARY_COLUMNS = [
    "anomalies",
    "detected",
    "median points to detection",
    "top-1 metric",
    "median peak z",
]


def _size(size: float | None) -> str:
    return "—" if size is None else f"{size:g} sd"


def kind_table(judged: Sequence[Judged]) -> str:
    groups: dict[tuple, list[Judged]] = {}
    for j in judged:
        a = j.anomaly
        groups.setdefault((KINDS.index(a.kind), a.kind, a.size or 0.0, a.duration), []).append(j)
    rows = []
    for key in sorted(groups):
        _, kind, size, d = key
        rows.append(summary_row([kind, _size(size or None), d], groups[key]))
    return md_table(["kind", "size", "duration (points)", *SUMMARY_COLUMNS], rows, right=2)


def is_shift(j: Judged, at_least: float = 4.0) -> bool:
    return j.anomaly.kind == "shift" and (j.anomaly.size or 0.0) >= at_least


def is_reference(j: Judged) -> bool:
    a = j.anomaly
    return (a.kind, a.size, a.duration) == REFERENCE


def callouts(judged: Sequence[Judged]) -> str:
    rows = [
        summary_row(
            ["shift +8 sd, 5 points (the issue's reference case)"],
            [j for j in judged if is_reference(j)],
        ),
        summary_row(
            ["shift +4 sd (5 and 30 points)"],
            [j for j in judged if j.anomaly.kind == "shift" and j.anomaly.size == 4],
        ),
        summary_row(["shift ≥ 4 sd"], [j for j in judged if is_shift(j)]),
        summary_row(["every anomaly"], list(judged)),
    ]
    return md_table(["case", *SUMMARY_COLUMNS], rows)


def metrics_table(judged: Sequence[Judged]) -> str:
    """Shifts of at least 4 sd by the entity's number of metrics (does a shift in one of M
    metrics get averaged away as M grows?)."""
    groups: dict[int, list[Judged]] = {}
    for j in judged:
        if is_shift(j):
            groups.setdefault(j.n_metrics, []).append(j)
    rows = [summary_row([m], groups[m]) for m in sorted(groups)]
    return md_table(["metrics", *SUMMARY_COLUMNS], rows)


def family_table(ev: Evaluation) -> str:
    rows = []
    for family in sorted(ev.false_alerts, key=FAMILIES.index):
        f = ev.false_alerts[family]
        js = [j for j in ev.judged if j.family == family]
        ref = [j for j in js if is_reference(j)]
        shifts = [j for j in js if is_shift(j)]
        within = "yes" if f.per_1000 <= TOLERANCE * ev.budget else "no"
        rows.append(
            [
                family,
                f.points,
                f.alerts,
                f"{f.per_1000:.2f}",
                f"{ev.budget:g}",
                within,
                _share(sum(j.detected for j in ref), len(ref)),
                _share(sum(j.detected for j in shifts), len(shifts)),
            ]
        )
    total = sum(ev.false_alerts.values(), FalseAlerts())
    ref = [j for j in ev.judged if is_reference(j)]
    shifts = [j for j in ev.judged if is_shift(j)]
    rows.append(
        [
            "**overall**",
            total.points,
            total.alerts,
            f"{total.per_1000:.2f}",
            f"{ev.budget:g}",
            "yes" if total.per_1000 <= TOLERANCE * ev.budget else "no",
            _share(sum(j.detected for j in ref), len(ref)),
            _share(sum(j.detected for j in shifts), len(shifts)),
        ]
    )
    header = [
        "family",
        "normal test points",
        "false alerts",
        "per 1,000",
        "budget",
        "within 1.5×",
        "shift +8 sd 5 pts detected",
        "shift ≥ 4 sd detected",
    ]
    return md_table(header, rows)


# -- out-of-fold over families -------------------------------------------------------------------

#: Candidate configurations for --cv (overrides of the default configuration): the default,
#: the same without its cross-section terms (a run of its own), and two likelihood-only
#: variants (they replay the default's cached runs).
CANDIDATES: dict[str, dict[str, Any]] = {
    "default": {},
    "no-cross-section": {"cross_section": False},
    "short-3": {"likelihood": {"short": 3}},
    "short-1": {"likelihood": {"short": 1}},
}


@dataclass
class FoldScore:
    shifts: int = 0
    shifts_detected: int = 0

    @property
    def share(self) -> float:
        return self.shifts_detected / self.shifts if self.shifts else 0.0


def cross_validate(
    evaluations: dict[str, Evaluation], families: Sequence[str]
) -> tuple[list[list[Any]], list[Judged], dict[str, FalseAlerts], dict[str, str]]:
    """Per held-out family: the candidate picked on the others, and its held-out figures."""
    rows, pooled, pooled_fa, picks = [], [], {}, {}
    for held in families:
        others = [f for f in families if f != held]

        def ok(ev: Evaluation, others: list[str] = others) -> bool:
            return all(ev.false_alerts[f].per_1000 <= TOLERANCE * ev.budget for f in others)

        def merit(name: str, others: list[str] = others) -> tuple[float, float]:
            ev = evaluations[name]
            js = [j for j in ev.judged if j.family in others and is_shift(j)]
            fa = sum((ev.false_alerts[f] for f in others), FalseAlerts())
            share = sum(j.detected for j in js) / len(js) if js else 0.0
            return share, -fa.per_1000

        eligible = [name for name, ev in evaluations.items() if ok(ev)]
        if eligible:
            pick, how = max(eligible, key=merit), "best shift ≥ 4 sd within 1.5× budget"
        else:
            pick = min(evaluations, key=lambda name: -merit(name)[1])
            how = "none within 1.5× budget: fewest false alerts"
        picks[held] = pick
        ev = evaluations[pick]
        js = [j for j in ev.judged if j.family == held]
        pooled += js
        fa = ev.false_alerts[held]
        pooled_fa[held] = fa
        ref = [j for j in js if is_reference(j)]
        four = [j for j in js if j.anomaly.kind == "shift" and j.anomaly.size == 4]
        rows.append(
            [
                held,
                pick,
                how,
                _share(sum(j.detected for j in ref), len(ref)),
                _share(sum(j.top_right for j in ref if j.detected), sum(j.detected for j in ref)),
                _share(sum(j.detected for j in four), len(four)),
                f"{fa.per_1000:.2f} (budget {ev.budget:g})",
            ]
        )
    return rows, pooled, pooled_fa, picks


CV_COLUMNS = [
    "held-out family",
    "picked",
    "how",
    "shift +8 sd 5 pts detected",
    "top-1 metric",
    "shift +4 sd detected",
    "false alerts per 1,000",
]


# -- normal-score calibration ---------------------------------------------------------------------


def _decoder_log_var(view, x, c, mask) -> np.ndarray | None:
    """The decoder's log-variance at the posterior mean, per model input (None if the model
    does not expose encode/decode)."""
    try:
        from keras import ops

        model = view.model_
        xs = view.select(np.asarray(x, dtype="float32"))
        ms = view.select(np.asarray(mask, dtype="float32"))
        cond = None if not view.spec.conditions else np.asarray(c, dtype="float32")
        out = []
        for a in range(0, xs.shape[0], 1024):
            cc = None if cond is None else cond[a : a + 1024]
            z, _ = model.encode(xs[a : a + 1024] * ms[a : a + 1024], cc)
            _, log_var = model.decode(z, cc)
            out.append(ops.convert_to_numpy(log_var))
        return np.concatenate(out).astype("float64")
    except Exception:  # a changed model API: skip this part of the table
        return None


def calibrate_stream(family: str, seed: int, train: int, test: int, params: dict) -> dict:
    """Fit the views on the history as the first fit does; score the test part's windows
    without anomalies; per view: the normal raw scores, and the excess of the top 1 %."""
    from vaeguard.timeseries.learning import Windows, fit_views
    from vaeguard.timeseries.views import ViewSet

    started = time.perf_counter()
    stream = generate(family, seed, train, test)
    p = stream_params(params, stream)
    views = ViewSet.from_params(p)
    feat = views.featurizer()
    history = feat.update_and_featurize(stream.records(clean=True, rows=slice(0, train)))
    fit_views(views, Windows.of(history).newest(int(views.schedule["max_train"])), warm_start=False)
    batch = feat.update_and_featurize(stream.records(clean=True, rows=slice(train, None)))
    w = views.spec.window
    early = batch.ts - stream.t[0] < 3 * DAY
    out = {
        "family": family,
        "seed": seed,
        "views": [],
        "early": early,
        "seconds": 0.0,
        "metrics": list(stream.metrics),
    }
    for view in views.views:
        score, nll, _ = view.score_windows(batch.x, batch.c, batch.mask)
        mask = view.select(batch.mask) > 0
        nll = np.where(mask, nll, np.nan)
        with warnings.catch_warnings():  # (a slot never observed has no median)
            warnings.simplefilter("ignore", RuntimeWarning)
            median_slot = np.nan_to_num(np.nanmedian(nll, axis=0))
        excess = np.where(mask, np.clip(nll - median_slot, 0.0, None), 0.0)
        slots = view.score_slots or w
        scored = np.zeros(nll.shape[1], dtype=bool)
        for j in range(len(view.input_channels)):
            scored[j * w + w - slots : (j + 1) * w] = True
        top = score >= np.quantile(score, 0.99)
        log_var = _decoder_log_var(view, batch.x, batch.c, batch.mask)
        entry = {
            "inputs": list(view.input_channels),
            "score": score,
            "channels_top": _channel_shares(excess[top], scored, len(view.input_channels), w),
            "channels_all": _channel_shares(excess, scored, len(view.input_channels), w),
            "scored_top": _part(excess[top], scored),
            "scored_all": _part(excess, scored),
        }
        if log_var is not None:
            low = _lowest_variance(log_var, scored, mask)
            entry["low_var_top"] = _part(excess[top] * scored, low[top])
            entry["low_var_all"] = _part(excess * scored, low)
            entry["log_var_median"] = float(np.median(log_var[:, scored]))
            entry["log_var_p1"] = float(np.quantile(log_var[:, scored], 0.01))
            entry["min_log_var"] = float(view.min_log_var)
        out["views"].append(entry)
    out["seconds"] = time.perf_counter() - started
    return out


#: The share of a window's scored cells counted as "smallest decoder variance".
LOW_VARIANCE_SHARE = 0.1


def _lowest_variance(log_var: np.ndarray, scored: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per window, the `LOW_VARIANCE_SHARE` of its observed scored cells with the smallest
    decoder variance."""
    lv = np.where(scored[None, :] & mask, log_var, np.inf)
    k = max(1, round(LOW_VARIANCE_SHARE * int(scored.sum())))
    cut = np.partition(lv, k - 1, axis=1)[:, k - 1 : k]
    return (lv <= cut) & np.isfinite(lv)


def _part(excess: np.ndarray, where: np.ndarray) -> float:
    total = excess.sum()
    return float((excess * where).sum() / total) if total > 0 else math.nan


def _channel_shares(excess: np.ndarray, scored: np.ndarray, m: int, w: int) -> list[float]:
    """Each channel's share of the excess on the scored slots."""
    e = (excess * scored).reshape(excess.shape[0], m, w).sum(axis=(0, 2))
    total = e.sum()
    return (e / total).tolist() if total > 0 else [math.nan] * m


def run_calibration(
    families: Sequence[str],
    seeds: Sequence[int],
    params: dict,
    *,
    train: int,
    test: int,
    jobs: int,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    from benchmarks import multimetric
    from vaeguard.apps.nab import run_jobs

    out: list[dict[str, Any]] = []

    def keep(result):
        out.append(result)
        log(f"  calibration {result['family']} seed {result['seed']}: {result['seconds']:.0f} s")

    calls = [(f, s, train, test, params) for f in families for s in seeds]
    log(f"calibration: {len(calls)} stream(s) fitted offline ({jobs} job(s)) …")
    run_jobs(multimetric.calibrate_stream, calls, jobs, keep)
    out.sort(key=lambda r: (FAMILIES.index(r["family"]), r["seed"]))
    return out


def _spread(score: np.ndarray) -> tuple[float, float, float, float, float]:
    q1, med, q3, p99 = np.quantile(score, [0.25, 0.5, 0.75, 0.99])
    iqr = q3 - q1
    return med, iqr, p99, float(score.max()), (p99 - med) / iqr if iqr > 0 else math.inf


def calibration_tables(results: Sequence[dict[str, Any]]) -> str:
    parts = []
    rows = []
    families = list(dict.fromkeys(r["family"] for r in results))
    n_views = len(results[0]["views"])
    for family in families:
        rs = [r for r in results if r["family"] == family]
        for v in range(n_views):
            stats = np.array([_spread(r["views"][v]["score"]) for r in rs])
            ratio = stats[:, 4]
            rows.append(
                [
                    family,
                    f"{v} ({_view_label(rs[0]['views'][v]['inputs'], rs[0]['metrics'])})",
                    len(rs),
                    f"{np.median(stats[:, 0]):.1f}",
                    f"{np.median(stats[:, 1]):.1f}",
                    f"{np.median(stats[:, 2]):.1f}",
                    f"{stats[:, 3].max():.0f}",
                    f"{np.median(ratio):.1f}",
                    f"{ratio.max():.1f}",
                ]
            )
    parts.append(
        "Normal raw scores (nats) of the test windows without anomalies, per entity; the "
        "median over a family's entities of each statistic (max: the largest of any entity). "
        "Target: (p99 − median)/IQR ≤ 3.\n"
    )
    parts.append(
        md_table(
            [
                "family",
                "view",
                "entities",
                "median",
                "IQR",
                "p99",
                "max",
                "(p99 − median)/IQR, median",
                "worst",
            ],
            rows,
            right=2,
        )
    )

    # what drives the tail
    rows = []
    for family in families:
        rs = [r for r in results if r["family"] == family]
        for v in range(n_views):
            entries = [r["views"][v] for r in rs]
            metric_top, metric_all, seasonal_top, seasonal_all = [], [], [], []
            for r, e in zip(rs, entries, strict=True):
                for name, top, every in zip(
                    e["inputs"], e["channels_top"], e["channels_all"], strict=True
                ):
                    if name in r["metrics"]:
                        metric_top.append(top)
                        metric_all.append(every)
                    else:
                        seasonal_top.append(top)
                        seasonal_all.append(every)
            biggest = [max(e["channels_top"]) for e in entries]
            fair = [1.0 / len(e["inputs"]) for e in entries]
            low = [e.get("low_var_top", math.nan) for e in entries]
            low_all = [e.get("low_var_all", math.nan) for e in entries]
            rows.append(
                [
                    family,
                    v,
                    _pct(np.median(biggest)),
                    _pct(np.median(fair)),
                    f"{_pct(np.nanmedian(seasonal_top))} / {_pct(np.nanmedian(seasonal_all))}"
                    if seasonal_top
                    else "—",
                    f"{_pct(np.median([e['scored_top'] for e in entries]))} / "
                    f"{_pct(np.median([e['scored_all'] for e in entries]))}",
                    f"{_pct(np.nanmedian(low))} / {_pct(np.nanmedian(low_all))}",
                    _log_var_text(entries),
                ]
            )
    parts.append(
        "\nWhat drives the tail: the top 1 % normal windows of each view, their per-slot nll "
        "excess (nll − that slot's median over all normal windows, positive part), the median "
        "over entities of: the share carried by the channel that carries most (vs an even "
        "share 1/channels) and by the seasonal channel (top 1 % / all windows, on the scored "
        "slots); the share on the scored (last score_slots) slots over the whole window (top "
        "1 % / all); on the scored slots, the share carried by the "
        f"{LOW_VARIANCE_SHARE:.0%} of a window's cells with the smallest decoder variance "
        "(log-variance at the posterior mean; top 1 % / all).\n"
    )
    parts.append(
        md_table(
            [
                "family",
                "view",
                "top channel",
                "even share",
                "seasonal channel",
                "scored slots",
                "smallest-variance 10 % of cells",
                "decoder log-var: median, p1 (floor)",
            ],
            rows,
            right=2,
        )
    )

    # early (seasonal channel filling) vs later
    rows = []
    for family in families:
        rs = [r for r in results if r["family"] == family]
        for v in range(n_views):
            early, late = [], []
            for r in rs:
                s = r["views"][v]["score"]
                q1, med, q3 = np.quantile(s, [0.25, 0.5, 0.75])
                z = (s - med) / max(q3 - q1, 1e-9)
                early.append(z[r["early"]])
                late.append(z[~r["early"]])
            for label, zs in (("first 3 days", early), ("after", late)):
                z = np.concatenate(zs)
                if z.size == 0:
                    rows.append([family, v, label, 0, "—", "—", "—"])
                    continue
                rows.append(
                    [
                        family,
                        v,
                        label,
                        z.size,
                        f"{np.median(z):.2f}",
                        f"{np.quantile(z, 0.99):.1f}",
                        f"{z.max():.1f}",
                    ]
                )
    parts.append(
        "\nThe same normal scores split by the window's time: within the first 3 days of the "
        "entity's history (the seasonal channel not yet full) or after; each entity's scores "
        "standardized by its own median and IQR over all its normal test windows.\n"
    )
    parts.append(
        md_table(
            ["family", "view", "window time", "windows", "median z", "p99 z", "max z"],
            rows,
            right=3,
        )
    )
    return "\n".join(parts)


def _view_label(inputs: Sequence[str], metrics: Sequence[str]) -> str:
    derived = [c for c in inputs if c not in metrics]
    return "metrics" + (" + " + ", ".join(d.split("_")[-1] for d in derived) if derived else "")


def _pct(x: float) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{100.0 * x:.0f} %"


def _log_var_text(entries: Sequence[dict[str, Any]]) -> str:
    if "log_var_median" not in entries[0]:
        return "— (not exposed)"
    med = np.median([e["log_var_median"] for e in entries])
    p1 = np.median([e["log_var_p1"] for e in entries])
    return f"{med:.1f}, {p1:.1f} ({entries[0]['min_log_var']:g})"


# -- main ----------------------------------------------------------------------------------------


def _json_arg(text: str, what: str) -> dict[str, Any]:
    path = Path(text)
    raw = path.read_text() if not text.lstrip().startswith("{") and path.is_file() else text
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise SystemExit(f"{what}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise SystemExit(f"{what}: expected a JSON object")
    return value


def describe_setup(
    train: int, test: int, params: dict[str, Any], seeds: Sequence[int], families: Sequence[str]
) -> str:
    w = score_span(params)
    counts = sorted({metric_count(f, s) for f in families for s in seeds})
    return (
        f"{len(families)} families × {len(seeds)} entities ({', '.join(map(str, counts))} "
        f"metrics), {train} history + {test} test points at 1-minute steps; anomalies every "
        f"{SPACING} ± {JITTER} points of the test part. Alert: output ≥ {alert_level(params):g}. "
        f"Detected: an alert in [start, end + {w}) ({w}: view 0's score_slots; a level shift: "
        f"its first {LEVEL_JUDGED} points + {w}). False alerts: outside every "
        f"[start, end + {w} + {AFTERMATH}), per 1,000 such test points. Peak z: the highest raw "
        "score in the judged span (of any row of the run's raw scores: a view's, or a "
        "likelihood term's), in IQRs above that row's median over the stream's normal test "
        "points."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/multimetric.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated")
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help=f"entities per family (seeds 0..N-1; default {DEFAULT_SEEDS}, quick 1)",
    )
    parser.add_argument("--train", type=int, default=None, help="normal history points")
    parser.add_argument("--test", type=int, default=None, help="test points (with anomalies)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: {QUICK_TRAIN} + {QUICK_TEST} points, one entity per "
        "family, small models (QUICK_CONFIG), no --cv",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="JSON object (or a file) merged into the default configuration",
    )
    parser.add_argument("--cv", action="store_true", help="out-of-fold over families")
    parser.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="--cv: another candidate (repeatable)",
    )
    parser.add_argument(
        "--no-calibration", action="store_true", help="skip the normal-score calibration table"
    )
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--fresh", action="store_true", help="rerun, ignoring the cache")
    args = parser.parse_args(argv)

    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        parser.error(f"--families: unknown {', '.join(unknown)} (known: {', '.join(FAMILIES)})")
    train = args.train or (QUICK_TRAIN if args.quick else DEFAULT_TRAIN)
    test = args.test or (QUICK_TEST if args.quick else DEFAULT_TEST)
    n_seeds = args.seeds or (1 if args.quick else DEFAULT_SEEDS)
    if train < 100 or test < SPACING or n_seeds < 1 or args.jobs < 1:
        parser.error(f"--train ≥ 100, --test ≥ {SPACING}, --seeds ≥ 1, --jobs ≥ 1")
    if args.cv and len(families) < 2:
        parser.error("--cv: at least two families")
    seeds = list(range(n_seeds))
    from vaeguard.errors import ConfigError
    from vaeguard.timeseries.views import merge_config

    config = _json_arg(args.config, "--config") if args.config else None
    if args.quick:
        config = merge_config(QUICK_CONFIG, config) if config else dict(QUICK_CONFIG)
    candidates = dict(CANDIDATES)
    for item in args.candidate:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            parser.error("--candidate: NAME=JSON")
        candidates[name.strip()] = _json_arg(text, f"--candidate {name}")
    try:
        params = resolve(config)
        cand_params = {n: resolve(config, c) for n, c in candidates.items()} if args.cv else {}
    except (ConfigError, TypeError, ValueError) as exc:
        parser.error(f"configuration: {exc}")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    total = time.perf_counter()
    run_kw = {
        "train": train,
        "test": test,
        "jobs": args.jobs,
        "cache": args.cache,
        "fresh": args.fresh,
        "log": log,
    }
    started = time.perf_counter()
    runs = run_streams(families, seeds, params, **run_kw)
    ran = [r for r in runs.values() if not r["cached"]]
    model_seconds = time.perf_counter() - started
    ev = evaluate(runs, params, train, test)

    print(f"## Multi-metric entities ({'quick' if args.quick else 'full'} run)\n")
    print(describe_setup(train, test, params, seeds, families))
    if config:
        print(f"\nOverrides: `{json.dumps(config, sort_keys=True)}`")
    print("\n### Per kind, size and duration\n")
    print(kind_table(ev.judged))
    print("\n### The cases the issue names\n")
    print(callouts(ev.judged))
    print("\n### Shifts ≥ 4 sd by the entity's number of metrics\n")
    print(metrics_table(ev.judged))
    print("\n### Per family: false alerts\n")
    print(family_table(ev))
    print(
        f"\nTimings: streams {model_seconds:.0f} s ({len(ran)} run, "
        f"{sum(r['seconds'] for r in ran):.0f} s of stream time, {args.jobs} job(s); "
        f"{len(runs) - len(ran)} from the cache)"
    )

    if args.cv and not args.quick:
        evaluations = {}
        for name, p in cand_params.items():
            if p == params:
                evaluations[name] = ev
                continue
            cr = run_streams(families, seeds, p, **run_kw)
            evaluations[name] = evaluate(cr, p, train, test)
        rows, pooled, pooled_fa, _ = cross_validate(evaluations, families)
        print("\n### Out-of-fold over families\n")
        print(
            "Candidates: "
            + "; ".join(f"{n} `{json.dumps(c, sort_keys=True)}`" for n, c in candidates.items())
        )
        print()
        print(md_table(CV_COLUMNS, rows, right=3))
        print("\nPooled out-of-fold (each family under the candidate picked without it):\n")
        print(callouts(pooled))
        fa = sum(pooled_fa.values(), FalseAlerts())
        print(
            f"\nFalse alerts per 1,000 (pooled): {fa.per_1000:.2f} ({fa.alerts} over "
            f"{fa.points} normal test points)"
        )

    if not args.no_calibration:
        started = time.perf_counter()
        results = run_calibration(
            families, seeds, params, train=train, test=test, jobs=args.jobs, log=log
        )
        print("\n### Normal-score calibration (offline fit on the history)\n")
        print(calibration_tables(results))
        print(f"\nTimings: calibration {time.perf_counter() - started:.0f} s")
    print(f"\nTotal: {time.perf_counter() - total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
