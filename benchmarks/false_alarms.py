"""False alarms on anomaly-free streams: a development corpus to design against, not to tune to.

Every stream here is normal by construction (seeded numpy generators, nothing planted), of the
kinds monitoring really carries: bursty and zero-inflated counts, a clipped percentage with a
daily cycle, a sparse hourly business metric with a weekly cycle, integer-quantized values, a
flat line with rare 0/1 blips, irregular sampling, a slow trend, heavy-tailed noise, plain
Gaussian noise around a daily cycle, a short stream (every 5 minutes, and every minute), and
NAB's ``artificialNoAnomaly`` series (read in place from the shared datasets). So every alert is a false alert, and the rate is
compared with the alert budget (false alerts per 1,000 points) the detector promises.

* **window mode**: each stream goes through `vaeguard.apps.online.run_online` exactly as
  the NAB runner feeds a series (records ``{"ts", "value"}``, first fit at NAB's probationary
  15 %, `vaeguard.apps.nab.merged_params` configuration). Each stream's raw scores are
  cached under ``runs/false-alarms/<model config hash>/``, and the likelihood is replayed from
  them (`replay_likelihood`, the serving's arithmetic), so another likelihood spec
  (``--likelihood``) costs seconds. A point alerts when its output reaches the spec's
  ``alert`` level; alerts are counted per 1,000 scored points after the probationary period.
* **tabular mode**: per kind, rows of 4 channels (4 independent draws of the kind's generator
  at the same times, so sharing its daily or weekly cycle); `vaeguard.VAEDetector` (its
  defaults; its ``budget`` when it has one and ``--budget`` is given) trains on the first 40 %
  of the rows and flags (``predict``) rows of the other 60 %. A row carries no time, so the
  trend kind leaves the trained range by construction: an overall row without it is printed.
* **commands mode** (``--mode commands``): what a user runs. ``vaeguard train-window`` (default
  configuration) on each stream's probationary 15 %, then the rest scored as ``vaeguard score``
  scores a file (the daemon's batch step and serving object, which refit online), three ways:
  each entity continuing from the state the bundle carries (its windows, and its likelihood
  histories after the calibration tail), from its windows only (the histories empty), and
  afresh (as bundles without that state are served). No cache: several minutes.

The corpus is meant for judging a design (does the budget hold on data shaped like this?), not
for choosing parameters: a choice fitted to these generators would only fit these generators.

Run ``python benchmarks/false_alarms.py --help`` for the flags.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import os
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: 2024-01-01 00:00 UTC, a Monday (the weekly cycle starts on a weekday).
START = 1_704_067_200.0
DEFAULT_POINTS = 4000
SHORT_POINTS = 1500
#: The kinds capped at `SHORT_POINTS`.
SHORT_KINDS = ("short", "short-minutely")
DEFAULT_CACHE = ROOT / "runs" / "false-alarms"
#: Share of the rows the tabular detector trains on (the rest are scored).
TABULAR_TRAIN_SHARE = 0.4
TABULAR_CHANNELS = 4
#: A rate within this factor of the budget reads "yes".
TOLERANCE = 1.5
NAB_CATEGORY = "artificialNoAnomaly"
NAB_PREFIX = "nab-"

# -- generators ----------------------------------------------------------------------------------

Generator = Callable[[int, int], tuple[np.ndarray, np.ndarray]]
#: kind → generator(n, seed) → (timestamps in epoch seconds, values), both float64 of length
#: `stream_length(kind, n)`; the same (n, seed) always gives the same stream.
KINDS: dict[str, Generator] = {}


def _rng(kind: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(kind.encode())])


def _kind(name: str):
    def register(body: Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]):
        def generate(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
            n, seed = int(n), int(seed)
            if n < 1:
                raise ValueError(f"{name}: n must be at least 1, got {n}")
            if seed < 0:
                raise ValueError(f"{name}: seed must be >= 0, got {seed}")
            t, v = body(_rng(name, seed), stream_length(name, n))
            return np.asarray(t, dtype="float64"), np.asarray(v, dtype="float64")

        generate.__name__ = generate.__qualname__ = name.replace("-", "_")
        generate.__doc__ = body.__doc__
        KINDS[name] = generate
        return generate

    return register


def stream_length(kind: str, n: int) -> int:
    """Points a stream of ``kind`` has when asked for n (the short kind caps it)."""
    return min(n, SHORT_POINTS) if kind in SHORT_KINDS else n


def _grid(n: int, step: float) -> np.ndarray:
    return START + step * np.arange(n, dtype="float64")


def _daily(t: np.ndarray, peak_hour: float = 14.0) -> np.ndarray:
    """+1 at the peak hour (UTC), −1 twelve hours later."""
    return np.cos(2.0 * np.pi * ((t - START) / 3600.0 - peak_hour) / 24.0)


def _ar1(rng: np.random.Generator, n: int, phi: float, sigma: float) -> np.ndarray:
    """Stationary AR(1) noise with marginal standard deviation sigma."""
    e = rng.normal(0.0, sigma * math.sqrt(1.0 - phi * phi), n)
    out = np.empty(n)
    x = rng.normal(0.0, sigma)
    for i in range(n):
        x = phi * x + e[i]
        out[i] = x
    return out


@_kind("counts-bursty")
def _counts_bursty(rng, n):
    """Negative binomial counts per 5 minutes whose rate switches between a base (20) and a
    burst regime (60) of a few bins (Markov chain: a burst starts with probability 0.01 per
    bin, lasts 5 bins on average): the bursts are part of normal."""
    t = _grid(n, 300.0)
    u = rng.random(n)
    burst = np.empty(n, dtype=bool)
    state = False
    for i in range(n):
        state = bool(u[i] < 0.8) if state else bool(u[i] < 0.01)
        burst[i] = state
    rate = np.where(burst, 60.0, 20.0)
    r = 5.0
    return t, rng.negative_binomial(r, r / (r + rate)).astype("float64")


@_kind("counts-zero-inflated")
def _counts_zero_inflated(rng, n):
    """Zero-inflated Poisson counts per 5 minutes: 0 with probability 0.6, else Poisson(3)."""
    t = _grid(n, 300.0)
    zero = rng.random(n) < 0.6
    return t, np.where(zero, 0, rng.poisson(3.0, n)).astype("float64")


@_kind("pct-daily")
def _pct_daily(rng, n):
    """A utilisation-like percentage per 5 minutes: 45 ± 25 over the day plus AR(1) noise
    (σ 8), clipped to [0, 100]."""
    t = _grid(n, 300.0)
    v = 45.0 + 25.0 * _daily(t) + _ar1(rng, n, 0.5, 8.0)
    return t, np.clip(v, 0.0, 100.0)


@_kind("business-hourly-weekly")
def _business_hourly_weekly(rng, n):
    """Hourly Poisson counts of a business metric: rate 12 in weekday office hours (08–18 UTC,
    smooth edges), 0.3 at night, a tenth of the weekday's level on weekends: sparse, mostly
    zeros outside office hours."""
    t = _grid(n, 3600.0)
    hours = (t - START) / 3600.0
    hour = hours % 24.0
    weekday = (hours // 24.0) % 7.0 < 5.0
    office = 1.0 / (1.0 + np.exp(-(hour - 8.0) * 2.0)) * (1.0 / (1.0 + np.exp((hour - 18.0) * 2.0)))
    rate = 0.3 + 11.7 * office
    rate = np.where(weekday, rate, 0.1 * rate)
    return t, rng.poisson(rate).astype("float64")


@_kind("quantized")
def _quantized(rng, n):
    """Integer-quantized values per minute: round(normal(50, 2))."""
    return _grid(n, 60.0), np.round(rng.normal(50.0, 2.0, n))


@_kind("flatline-blips")
def _flatline_blips(rng, n):
    """A flat line at 0 per 5 minutes with rare blips to 1 (probability 0.002 per point)."""
    return _grid(n, 300.0), (rng.random(n) < 0.002).astype("float64")


@_kind("irregular")
def _irregular(rng, n):
    """Irregular sampling (exponential inter-arrival times, mean 60 s) of a smooth signal (a
    6-hour wave and a daily one) plus Gaussian noise (σ 0.7)."""
    gaps = rng.exponential(60.0, n)
    t = START + np.concatenate([[0.0], np.cumsum(gaps[:-1])])
    return t, _irregular_values(rng, t)


def _irregular_values(rng, t):
    wave = np.sin(2.0 * np.pi * (t - START) / (6 * 3600.0))
    return 20.0 + 3.0 * wave + 2.0 * _daily(t) + rng.normal(0.0, 0.7, len(t))


#: Kinds whose sampling times are random: a tabular row's channels are drawn at the times of
#: the first one (one row, one instant), else their cycles would drift apart row by row.
_VALUES_AT = {"irregular": _irregular_values}


@_kind("trend")
def _trend(rng, n):
    """A slow linear trend per 5 minutes (+0.002 a point: +8 over 4,000 points) plus Gaussian
    noise (σ 2)."""
    t = _grid(n, 300.0)
    return t, 100.0 + 0.002 * np.arange(n) + rng.normal(0.0, 2.0, n)


@_kind("heavy-tailed")
def _heavy_tailed(rng, n):
    """Student-t noise (3 degrees of freedom, scale 2) around a daily cycle (50 ± 10), per
    5 minutes: large deviations are normal here."""
    t = _grid(n, 300.0)
    return t, 50.0 + 10.0 * _daily(t) + 2.0 * rng.standard_t(3.0, n)


def _gaussian_daily_body(rng, n):
    t = _grid(n, 300.0)
    return t, 50.0 + 10.0 * _daily(t) + rng.normal(0.0, 2.0, n)


@_kind("gaussian-daily")
def _gaussian_daily(rng, n):
    """I.i.d. Gaussian noise (σ 2) around a daily cycle (50 ± 10), per 5 minutes."""
    return _gaussian_daily_body(rng, n)


@_kind("short")
def _short(rng, n):
    """The gaussian-daily kind, 1,500 points only (a stream the detector barely knows)."""
    return _gaussian_daily_body(rng, n)


@_kind("short-minutely")
def _short_minutely(rng, n):
    """The short stream sampled every minute (1,500 points: a day and an hour): its first fit
    has seen a few hours of the day, the rest of the day is new to it."""
    t = _grid(n, 60.0)
    return t, 50.0 + 10.0 * _daily(t) + rng.normal(0.0, 2.0, n)


def nab_kinds(data_dir: Path | None = None) -> dict[str, Path]:
    """NAB's anomaly-free series: ``nab-<series>`` → its CSV (empty when the data is absent)."""
    folder = (data_dir or datasets_dir() / "nab" / "data") / NAB_CATEGORY
    if not folder.is_dir():
        return {}
    return {f"{NAB_PREFIX}{p.stem}": p for p in sorted(folder.glob("*.csv"))}


def datasets_dir() -> Path:
    """``$VAEGUARD_DATASETS``, else ``<repo root>/../shared/datasets``."""
    env = os.environ.get("VAEGUARD_DATASETS")
    return Path(env) if env else ROOT.parent / "shared" / "datasets"


def load_stream(
    kind: str, seed: int, points: int, nab: dict[str, Path] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps, values) of one stream: a generated kind, or a NAB series (seed ignored)."""
    if kind in KINDS:
        return KINDS[kind](points, seed)
    nab = nab_kinds() if nab is None else nab
    if kind not in nab:
        raise ValueError(f"unknown kind {kind!r}")
    from vaeguard.apps.nab import read_series
    from vaeguard.timeseries.conditions import to_epoch_seconds

    stamps, values = read_series(nab[kind])
    t = np.asarray([to_epoch_seconds(s) for s in stamps], dtype="float64")
    return t, np.asarray(values, dtype="float64")


def stream_seeds(kind: str, seeds: Sequence[int]) -> list[int]:
    """The seeds a kind is run with: NAB's series exist once."""
    return list(seeds[:1]) if kind.startswith(NAB_PREFIX) else list(seeds)


# -- window mode ---------------------------------------------------------------------------------


def default_likelihood(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The default configuration's likelihood spec with ``overrides`` merged in, checked."""
    from vaeguard.apps.nab import merged_params
    from vaeguard.timeseries.likelihood import LikelihoodSpec

    spec = {**(merged_params(None)["likelihood"] or {}), **(overrides or {})}
    LikelihoodSpec.from_dict(spec)
    return spec


def spec_budget(spec: dict[str, Any]) -> tuple[float, bool]:
    """(false alerts per 1,000 points the spec promises, whether it names a budget): without
    one, the rate its output reaches 1 at (``decades``), nominal for estimators other than
    evt."""
    from vaeguard.timeseries.likelihood import LikelihoodSpec

    s = LikelihoodSpec.from_dict(spec)
    if getattr(s, "budget", None) is not None:
        return float(s.budget), True
    return 1000.0 * 10.0 ** (-float(s.decades)), False


def model_key(params: dict[str, Any]) -> str:
    """The cache folder of a model configuration: its resolved parameters minus the likelihood
    (replayed, not run), with the NAB cache's run version (bumped when the library changes
    what a run produces)."""
    from benchmarks.nab_cv import RUN_VERSION
    from vaeguard.timeseries.views import ViewSet

    resolved = ViewSet.from_params(params).get_params()
    resolved.pop("likelihood", None)
    # Every stream here is one metric, which the cross-section terms leave alone.
    resolved.pop("cross_section", None)
    resolved["run_version"] = RUN_VERSION
    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]


def stream_digest(t: np.ndarray, v: np.ndarray) -> str:
    """Identifies a stream's data, so a cached run of a changed generator is not reused."""
    h = hashlib.sha256(np.ascontiguousarray(t, dtype="float64").tobytes())
    h.update(np.ascontiguousarray(v, dtype="float64").tobytes())
    return h.hexdigest()[:16]


def score_stream(kind: str, seed: int, points: int, params: dict[str, Any]) -> dict[str, Any]:
    """One stream through the NAB runner's path (runs in a worker process)."""
    from vaeguard.apps.nab import probation_rows
    from vaeguard.apps.online import run_online

    started = time.perf_counter()
    t, v = load_stream(kind, seed, points)
    records = [{"ts": float(a), "value": float(b)} for a, b in zip(t, v, strict=True)]
    first_fit = probation_rows(len(records))
    result = run_online(params, records, first_fit=first_fit)
    return {
        "kind": kind,
        "seed": seed,
        "raw": result.raw,
        "entities": result.entities,
        "first_fit": first_fit,
        "trained_at": result.trained_at,
        "restarts": result.restarts,
        "digest": stream_digest(t, v),
        "seconds": time.perf_counter() - started,
    }


def _cache_file(folder: Path, kind: str, seed: int, points: int) -> Path:
    return folder / f"{kind}__seed{seed}__n{points}.npz"


def _load_cached(path: Path, digest: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        if str(z["digest"]) != digest:
            return None
        return {
            "raw": z["raw"],
            "entities": [e or None for e in z["entities"].tolist()],
            "first_fit": int(z["first_fit"]),
            "restarts": z.get("restarts", ()),
            "seconds": float(z["seconds"]),
            "cached": True,
        }


def run_streams(
    kinds: Sequence[str],
    seeds: Sequence[int],
    *,
    points: int = DEFAULT_POINTS,
    params: dict[str, Any] | None = None,
    jobs: int = 1,
    cache: Path = DEFAULT_CACHE,
    fresh: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[tuple[str, int], dict[str, Any]]:
    """{(kind, seed): {"raw", "entities", "first_fit", "seconds", "cached"}}: every stream's
    raw scores, from the cache where the same model configuration ran the same data."""
    from vaeguard.apps.nab import merged_params, run_jobs
    from vaeguard.apps.online import restarts_array

    params = params or merged_params(None)
    log = log or (lambda line: None)
    folder = Path(cache) / model_key(params)
    folder.mkdir(parents=True, exist_ok=True)
    # What the folder is keyed on: candidates that differ only in their likelihood share it
    # (replayed), so a likelihood here would be the last candidate's, not the runs'.
    model = {k: v for k, v in params.items() if k != "likelihood"}
    (folder / "params.json").write_text(json.dumps(model, indent=1, sort_keys=True))
    nab = nab_kinds()
    out: dict[tuple[str, int], dict[str, Any]] = {}
    todo: list[tuple[str, int]] = []
    order = [(kind, seed) for kind in kinds for seed in stream_seeds(kind, seeds)]
    for kind, seed in order:
        t, v = load_stream(kind, seed, points, nab)
        path = _cache_file(folder, kind, seed, points)
        hit = None if fresh else _load_cached(path, stream_digest(t, v))
        if hit is None:
            todo.append((kind, seed))
        else:
            out[(kind, seed)] = hit
    if out:
        log(f"{len(out)} stream(s) cached in {folder}")

    def keep(r: dict[str, Any]) -> None:
        np.savez_compressed(
            _cache_file(folder, r["kind"], r["seed"], points),
            raw=r["raw"],
            entities=np.asarray([e or "" for e in r["entities"]]),
            first_fit=r["first_fit"],
            restarts=restarts_array(r["restarts"], len(r["raw"])),
            seconds=r["seconds"],
            digest=r["digest"],
        )
        out[(r["kind"], r["seed"])] = {
            "raw": r["raw"],
            "entities": list(r["entities"]),
            "first_fit": r["first_fit"],
            "restarts": r["restarts"],
            "seconds": r["seconds"],
            "cached": False,
        }
        log(f"  {r['kind']} (seed {r['seed']}): {r['seconds']:.0f} s")

    if todo:
        log(f"running {len(todo)} stream(s) through the streaming detector ({jobs} job(s)) …")
    run_jobs(score_stream, [(k, s, points, params) for k, s in todo], jobs, keep)
    return {key: out[key] for key in order}


@dataclass
class Count:
    """Alerts over scored points (after the probationary period)."""

    points: int = 0
    alerts: int = 0

    def __add__(self, other: Count) -> Count:
        return Count(self.points + other.points, self.alerts + other.alerts)

    @property
    def per_1000(self) -> float:
        return 1000.0 * self.alerts / self.points if self.points else math.nan


def count_alerts(output: np.ndarray, raw: np.ndarray, first_fit: int, alert: float) -> Count:
    """Rows from ``first_fit`` on with a raw score (any view), and how many reach ``alert``."""
    raw = np.atleast_2d(np.asarray(raw, dtype="float64"))
    scored = np.isfinite(raw).any(axis=0)
    scored[: max(int(first_fit), 0)] = False
    return Count(int(scored.sum()), int((np.asarray(output)[scored] >= alert).sum()))


def window_counts(
    likelihood_spec: dict[str, Any] | None,
    runs: dict[tuple[str, int], dict[str, Any]],
) -> dict[str, Count]:
    """Per kind, the alerts the spec's outputs give on the cached runs (seeds pooled)."""
    from vaeguard.apps.online import replay_likelihood

    spec = default_likelihood() if likelihood_spec is None else dict(likelihood_spec)
    alert = spec.get("alert")
    if alert is None:
        raise ValueError("likelihood spec: 'alert' must be set to count alerts")
    out: dict[str, Count] = {}
    for (kind, _seed), run in runs.items():
        output = replay_likelihood(run["raw"], run["entities"], spec, run.get("restarts", ()))
        out[kind] = out.get(kind, Count()) + count_alerts(
            output, run["raw"], run["first_fit"], float(alert)
        )
    return out


def window_alert_rates(
    likelihood_spec: dict[str, Any] | None = None,
    kinds: Iterable[str] | None = None,
    seeds: int | Iterable[int] = 1,
    *,
    points: int = DEFAULT_POINTS,
    params: dict[str, Any] | None = None,
    jobs: int = 1,
    cache: Path = DEFAULT_CACHE,
) -> dict[str, float]:
    """False alerts per 1,000 scored points per kind in window mode under ``likelihood_spec``.

    ``likelihood_spec`` is a complete spec (as `replay_likelihood` takes it; None: the default
    configuration's, `default_likelihood` merges overrides into it); ``kinds`` default to every
    kind (NAB's included when present); ``seeds`` is a count or the seeds themselves. Streams
    not in the cache are run first (minutes); cached ones replay in seconds.
    """
    kinds = list(kinds) if kinds is not None else all_kinds()
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    runs = run_streams(kinds, seeds, points=points, params=params, jobs=jobs, cache=cache)
    return {k: c.per_1000 for k, c in window_counts(likelihood_spec, runs).items()}


# -- the commands a user runs -------------------------------------------------------------------

#: Records per batch step when scoring a file (what ``vaeguard score`` takes at once).
SCORE_CHUNK = 4096


def commands_count(kind: str, seed: int, points: int) -> dict[str, Any]:
    """One stream through ``vaeguard train-window`` on its probationary rows, then the rest
    through the serving ``vaeguard score`` uses, each of `COMMAND_WAYS` (runs in a worker
    process)."""
    import tempfile

    from typer.testing import CliRunner

    from vaeguard.apps.nab import probation_rows
    from vaeguard.apps.online import as_records, step_settings
    from vaeguard.cli.main import app
    from vaeguard.records.batch import process
    from vaeguard.serving import load_serving

    started = time.perf_counter()
    t, v = load_stream(kind, seed, points)
    records = [{"ts": float(a), "value": float(b)} for a, b in zip(t, v, strict=True)]
    split = probation_rows(len(records))
    counts: dict[str, Count] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data, bundle = Path(tmp) / "train.jsonl", Path(tmp) / "bundle"
        data.write_text("".join(json.dumps(r) + "\n" for r in records[:split]))
        args = ["train-window", "--data", str(data), "--metrics", "value", "--out", str(bundle)]
        trained = CliRunner().invoke(app, args)
        if trained.exit_code != 0:
            raise RuntimeError(f"train-window failed on {kind} (seed {seed}): {trained.output}")
        messages = as_records(records[split:])
        for way in COMMAND_WAYS:
            serving = load_serving(bundle)
            if way != "continuing":
                serving.likelihood = serving.views.likelihood()
            if way == "afresh":
                serving.state = serving.views.featurizer()
            alerts = 0
            for i in range(0, len(messages), SCORE_CHUNK):
                result = process(serving, messages[i : i + SCORE_CHUNK], step_settings())
                alerts += sum(bool(r.is_anomaly) for r in result.scored)
            counts[way] = Count(len(messages), alerts)
    return {"kind": kind, "counts": counts, "seconds": time.perf_counter() - started}


#: How `commands_count` starts serving: from the bundle's entity state (windows and
#: histories), from its windows only, or without it.
COMMAND_WAYS = ("continuing", "windows only", "afresh")


# -- tabular mode --------------------------------------------------------------------------------


def tabular_rows(kind: str, seed: int, points: int) -> np.ndarray:
    """rows × 4: independent draws of the kind's generator at the same times (so sharing its
    daily or weekly cycle)."""
    seeds = [seed * TABULAR_CHANNELS + c for c in range(TABULAR_CHANNELS)]
    t, first = KINDS[kind](points, seeds[0])
    if kind in _VALUES_AT:
        rest = [_VALUES_AT[kind](_rng(kind, s), t) for s in seeds[1:]]
    else:
        rest = [KINDS[kind](points, s)[1] for s in seeds[1:]]
    return np.stack([first, *rest], axis=1)


def detector_budget_support() -> bool:
    from vaeguard import VAEDetector

    return "budget" in inspect.signature(VAEDetector).parameters


def tabular_count(
    kind: str, seed: int, points: int, *, epochs: int | None, budget: float | None
) -> tuple[Count, Count | None, dict[str, Any]]:
    """Fit on the first 40 % of the kind's rows; count on the rest the rows flagged at the
    threshold fixed at training (``predict``) and, for a budget threshold, at the threshold
    the daemon keeps on the recent normal rows (`vaeguard.thresholds.FollowingThreshold`)."""
    from vaeguard import VAEDetector

    kwargs: dict[str, Any] = {"seed": seed}
    if epochs is not None:
        kwargs["epochs"] = epochs
    if budget is not None:
        kwargs["budget"] = budget
    rows = tabular_rows(kind, seed, points)
    split = round(TABULAR_TRAIN_SHARE * len(rows))
    det = VAEDetector(**kwargs)
    det.fit(rows[:split], feature_names=[f"c{i}" for i in range(rows.shape[1])])
    flags = det.predict(rows[split:])
    followed = None
    if det.threshold_rule_.method == "budget":
        from vaeguard.thresholds import FOLLOW_BATCH, FollowingThreshold

        scores = det.decision_function(rows[split:])
        flags_followed = FollowingThreshold(det.threshold_rule_).replay(scores, FOLLOW_BATCH)
        followed = Count(len(scores), int(flags_followed.sum()))
    return Count(len(flags), int(flags.sum())), followed, det.get_params()


def tabular_budget(params: dict[str, Any]) -> tuple[float, str]:
    """(false alerts per 1,000 rows the detector's threshold aims at, how it was read)."""
    method = params.get("threshold_method")
    if method == "budget" and params.get("budget") is not None:
        return float(params["budget"]), "budget"
    if method == "quantile":
        return 1000.0 * float(params["target_fpr"]), "target_fpr (no budget parameter)"
    if method == "spot":
        return 1000.0 * float(params["risk"]), "risk (no budget parameter)"
    return math.nan, f"unknown threshold method {method!r}"


# -- output --------------------------------------------------------------------------------------


def all_kinds() -> list[str]:
    return [*KINDS, *nab_kinds()]


def poisson_sf(k: int, mean: float) -> float:
    """P(X ≥ k) for X ~ Poisson(mean)."""
    if k <= 0:
        return 1.0
    term = math.exp(-mean)
    cdf = term
    for i in range(1, k):
        term *= mean / i
        cdf += term
    return max(0.0, 1.0 - cdf)


def table(
    counts: dict[str, Count], budget: float, implied: bool = False, stationary: bool = False
) -> str:
    """kind | points | alerts | per 1,000 | budget | within 1.5× | P(≥ alerts at budget);
    ``stationary`` adds an overall row without the trend kind."""
    label = f"{budget:g}" + (" (implied)" if implied else "")
    lines = [
        "| kind | points | alerts | alerts per 1,000 | budget | within 1.5× budget "
        "| P(≥ alerts at budget) |",
        "|---|---:|---:|---:|---:|:---:|---:|",
    ]
    rows = [*counts.items(), ("**overall**", sum(counts.values(), Count()))]
    if stationary and "trend" in counts and len(counts) > 1:
        rest = sum((c for k, c in counts.items() if k != "trend"), Count())
        rows.append(("**overall, without trend**", rest))
    for kind, c in rows:
        within = "yes" if c.per_1000 <= TOLERANCE * budget else "no"
        p = poisson_sf(c.alerts, budget * c.points / 1000.0)
        lines.append(
            f"| {kind} | {c.points} | {c.alerts} | {c.per_1000:.2f} | {label} | {within} "
            f"| {p:.2g} |"
        )
    return "\n".join(lines)


def _parse_likelihood(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    path = Path(text)
    raw = path.read_text() if not text.lstrip().startswith("{") and path.is_file() else text
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise SystemExit(f"--likelihood: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise SystemExit("--likelihood: expected a JSON object of likelihood fields")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/false_alarms.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--mode", choices=("window", "tabular", "both", "commands"), default="both")
    parser.add_argument(
        "--kinds",
        default=None,
        help=f"comma-separated kinds (default: all); {', '.join(KINDS)}, and NAB's as nab-<series>",
    )
    parser.add_argument("--seeds", type=int, default=1, help="streams per kind (seeds 0..N-1)")
    parser.add_argument("--points", type=int, default=DEFAULT_POINTS, help="points per stream")
    parser.add_argument(
        "--likelihood",
        default=None,
        help="window mode: JSON object (or a file holding one) merged into the default "
        "likelihood spec, e.g. '{\"budget\": 0.2}'",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="window and commands modes: parallel processes"
    )
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument(
        "--fresh", action="store_true", help="window mode: rerun the models, ignoring the cache"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="tabular mode: VAEDetector's budget (when it has one; default: its own default)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="tabular mode: VAEDetector epochs (default: its own; fewer run faster and, with "
        "an undertrained model, alert more)",
    )
    args = parser.parse_args(argv)
    if args.points < 200:
        parser.error("--points: at least 200")
    if args.seeds < 1:
        parser.error("--seeds: at least 1")
    if args.jobs < 1:
        parser.error("--jobs: at least 1")
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs: at least 1")
    if args.budget is not None and not 0.0 < args.budget < 1000.0:
        parser.error("--budget: false alerts per 1,000 rows, in (0, 1000)")
    known = all_kinds()
    kinds = known if not args.kinds else [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in known]
    if unknown:
        parser.error(f"--kinds: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    seeds = list(range(args.seeds))

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    total = time.perf_counter()
    if args.mode in ("window", "both"):
        from vaeguard.errors import ConfigError

        try:
            spec = default_likelihood(_parse_likelihood(args.likelihood))
        except (ConfigError, TypeError, ValueError) as exc:
            parser.error(f"--likelihood: {exc}")
        started = time.perf_counter()
        runs = run_streams(
            kinds,
            seeds,
            points=args.points,
            jobs=args.jobs,
            cache=args.cache,
            fresh=args.fresh,
            log=log,
        )
        model_seconds = time.perf_counter() - started
        started = time.perf_counter()
        counts = window_counts(spec, runs)
        replay_seconds = time.perf_counter() - started
        budget, named = spec_budget(spec)
        ran = [r for r in runs.values() if not r["cached"]]
        print(f"## Window mode ({len(runs)} streams, {args.points} points each unless shorter)\n")
        print(f"Likelihood spec: `{json.dumps(spec, sort_keys=True)}`")
        print(
            f"Alert: output ≥ {spec['alert']:g}; counted after the probationary 15 %, per 1,000 "
            "scored points; seeds pooled per kind.\n"
        )
        print(table(counts, budget, implied=not named))
        print(
            f"\nTimings: models {model_seconds:.0f} s ({len(ran)} stream(s) run, "
            f"{sum(r['seconds'] for r in ran):.0f} s of stream time, {args.jobs} job(s); "
            f"{len(runs) - len(ran)} from the cache), likelihood replay {replay_seconds:.1f} s\n"
        )

    if args.mode == "commands":
        from vaeguard.apps.nab import run_jobs

        spec = default_likelihood()
        budget, named = spec_budget(spec)
        by_way: dict[str, dict[str, Count]] = {way: {} for way in COMMAND_WAYS}

        def add(r: dict[str, Any]) -> None:
            for way, c in r["counts"].items():
                by_way[way][r["kind"]] = by_way[way].get(r["kind"], Count()) + c
            log(f"  {r['kind']}: {r['seconds']:.0f} s")

        started = time.perf_counter()
        calls = [(k, s, args.points) for k in kinds for s in stream_seeds(k, seeds)]
        run_jobs(commands_count, calls, args.jobs, add)
        print(f"## Commands ({len(calls)} streams: train-window on 15 %, then score the rest)\n")
        for way, what in (
            ("continuing", "each entity continuing from the bundle's windows and histories"),
            ("windows only", "each entity continuing from the bundle's windows, histories empty"),
            ("afresh", "the entity state dropped: every entity afresh"),
        ):
            print(f"Scored {what}; alerts per 1,000 points after the training rows:\n")
            print(table({k: by_way[way][k] for k in kinds}, budget, implied=not named))
            print()
        print(f"Timings: {time.perf_counter() - started:.0f} s ({args.jobs} job(s))\n")

    if args.mode in ("tabular", "both"):
        tab_kinds = [k for k in kinds if k in KINDS]
        skipped = [k for k in kinds if k not in KINDS]
        from vaeguard import VAEDetector

        supported = detector_budget_support()
        if args.budget is not None and not supported:
            log("--budget: this VAEDetector has no budget parameter; using its default threshold")
        budget_arg = args.budget if supported else None
        started = time.perf_counter()
        counts, followed, params = {}, {}, {}
        for kind in tab_kinds:
            t0 = time.perf_counter()
            for seed in seeds:
                c, f, params = tabular_count(
                    kind, seed, args.points, epochs=args.epochs, budget=budget_arg
                )
                counts[kind] = counts.get(kind, Count()) + c
                if f is not None:
                    followed[kind] = followed.get(kind, Count()) + f
            log(f"  tabular {kind}: {time.perf_counter() - t0:.0f} s")
        tab_budget, source = tabular_budget(params) if params else (math.nan, "—")
        print(
            f"## Tabular mode ({len(tab_kinds)} kinds × {len(seeds)} seed(s), "
            f"{TABULAR_CHANNELS} channels per row)\n"
        )
        default_epochs = inspect.signature(VAEDetector).parameters["epochs"].default
        if args.epochs is None:
            epochs = f"epochs {default_epochs} (its default, early stopping)"
        else:
            epochs = f"epochs {args.epochs} (its default: {default_epochs})"
        if not supported:
            how = f"no budget parameter: default threshold, {source} → {tab_budget:g} per 1,000"
        elif budget_arg is not None:
            how = f"budget parameter supported, passed --budget {budget_arg:g}"
        else:
            how = f"budget parameter supported, its default ({tab_budget:g} per 1,000 rows)"
        print(f"VAEDetector: {epochs}, threshold_method {params.get('threshold_method')!r}; {how}")
        print(
            f"Fit on the first {TABULAR_TRAIN_SHARE:.0%} of each kind's rows, flagged rows "
            f"counted on the other {1 - TABULAR_TRAIN_SHARE:.0%}."
            + (f" Not tabular (one series each): {', '.join(skipped)}." if skipped else "")
            + "\n"
        )
        if followed:
            from vaeguard.thresholds import FOLLOW_BATCH

            print(
                "Threshold kept on the recent normal rows (the daemon's default, "
                f"`model.follow_normal`; rows judged in batches of {FOLLOW_BATCH}):\n"
            )
            print(table(followed, tab_budget, implied=not supported, stationary=True))
            print("\nThreshold fixed at training (`predict`):\n")
        if counts:
            print(table(counts, tab_budget, implied=not supported, stationary=True))
            if "trend" in counts:
                print(
                    "\nA tabular row carries no time: the trend's later values lie outside "
                    "the range the detector trained on, and are flagged as such."
                )
        print(f"\nTimings: tabular {time.perf_counter() - started:.0f} s\n")
    print(f"Total: {time.perf_counter() - total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
