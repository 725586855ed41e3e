"""`vaeguard train-window`: train a window-mode (time-series) model from timestamped records.

The tabular `train` learns what one row looks like; this learns what the last W points of an
entity's metrics look like (Donut-style windows, `vaeguard.timeseries`). The file is read in
order, as the daemon would read the topic: one `WindowFeaturizer` builds every entity's windows,
the model trains on the windows of the first part and its threshold is calibrated on the
windows of the tail (``--calibration-fraction``), so the threshold is set on windows the model
did not train on. The result is an ordinary bundle (``extra.window_mode``) that `vaeguard run`,
the registry and `vaeguard inspect` accept.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from vaeguard.errors import DataError

#: Featurizer rejections that are the data's fault (a late point is only skipped).
_LATE = "late_record"


def _names(value: str | None) -> list[str]:
    if value is None:
        return []
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise DataError("an empty name list was given")
    return names


def _interval(value: str) -> float | str:
    if value in ("auto", "rows"):
        return value
    try:
        seconds = float(value)
    except ValueError:
        raise DataError(f"--interval must be auto, rows or seconds, got {value!r}") from None
    if not seconds > 0:
        raise DataError(f"--interval must be > 0 seconds, got {value!r}")
    return seconds


def train_window(
    data: Path = typer.Option(
        ..., "--data", help="CSV or JSONL of (mostly) normal timestamped records, in time order."
    ),
    metrics: str = typer.Option(
        ..., "--metrics", help="Comma-separated metric columns, e.g. cpu,latency_ms."
    ),
    out: Path | None = typer.Option(None, "--out", help="Bundle directory to write."),
    registry: Path | None = typer.Option(
        None,
        "--registry",
        help="Register the model as a new version in this registry (created if missing).",
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        help="JSON overrides of the detector configuration (the format of `vaeguard nab --params`).",
    ),
    window: int | None = typer.Option(None, "--window", min=2, help="Points per window (W)."),
    entity_column: str = typer.Option(
        "key", "--entity-column", help="Column naming the entity (host, service)."
    ),
    time_column: str = typer.Option(
        "ts", "--time-column", help="Column of the timestamp (epoch seconds or ISO 8601)."
    ),
    interval: str = typer.Option(
        "auto",
        "--interval",
        help="Sampling interval: seconds, auto (inferred per entity) or rows (arrival order).",
    ),
    conditions: str | None = typer.Option(
        None,
        "--conditions",
        help="Time conditions: hour_of_day,day_of_week (conditional VAE), or none "
        "(default: the configuration's, hour_of_day).",
    ),
    seasonal: bool = typer.Option(
        True,
        "--seasonal/--no-seasonal",
        help="The second view: the metrics with the seasonal residual of the first one.",
    ),
    max_lateness: int | None = typer.Option(
        None, "--max-lateness", min=0, help="Slots a late point may land behind (default: W)."
    ),
    max_entities: int = typer.Option(
        10_000, "--max-entities", min=1, help="Entities the daemon keeps state for (LRU)."
    ),
    latent_dim: int | None = typer.Option(None, "--latent-dim", min=1),
    hidden: str | None = typer.Option(None, "--hidden", help="Encoder widths, e.g. 64,32."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Gradient steps of training."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1),
    mc_samples: int | None = typer.Option(None, "--mc-samples", min=1, help="Monte-Carlo draws L."),
    score_slots: int | None = typer.Option(
        None,
        "--score-slots",
        min=1,
        help="Score the newest N slots (default: the configuration's, at most the window).",
    ),
    likelihood: bool = typer.Option(
        True,
        "--likelihood/--no-likelihood",
        help="Add the [0, 1] anomaly likelihood to every score record (and alert on it).",
    ),
    likelihood_warmup: int | None = typer.Option(
        None, "--likelihood-warmup", min=1, help="Scores an entity needs before its likelihood."
    ),
    budget: float | None = typer.Option(
        None,
        "--budget",
        help="Alert budget: at most this many false alerts per 1,000 points per entity on a "
        "stationary stream (default: the configuration's).",
    ),
    calibration_fraction: float = typer.Option(
        0.2, "--calibration-fraction", help="Share of the windows (the tail) for the threshold."
    ),
    threshold_method: str = typer.Option(
        "quantile", "--threshold-method", help="quantile or spot."
    ),
    target_fpr: float = typer.Option(0.01, "--target-fpr"),
    risk: float = typer.Option(1e-3, "--risk", help="Tail risk for the SPOT threshold."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train the streaming window detector on timestamped records; write a bundle.

    The detector is `vaeguard.timeseries.views.DEFAULT_CONFIG` (the configuration the NAB
    benchmark measures), with ``--config`` overrides and the flags given applied on top.
    """
    from rich.console import Console

    from vaeguard.tabular_files import read_records
    from vaeguard.timeseries.detector import MIN_TRAIN_WINDOWS

    console = Console(stderr=True)
    if out is None and registry is None:
        raise DataError("say where the model goes: --out DIR and/or --registry DIR")
    if not 0.0 < calibration_fraction < 1.0:
        raise DataError("--calibration-fraction must be between 0 and 1")
    overrides = None
    if config is not None:
        import json

        try:
            overrides = json.loads(config.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"--config {config}: not a readable JSON file ({exc})") from None
    detector = _configured(
        overrides,
        metrics=tuple(_names(metrics)),
        window=window,
        entity_field=entity_column,
        time_field=time_column,
        interval=_interval(interval),
        conditions=conditions,
        seasonal=seasonal,
        max_lateness=max_lateness,
        max_entities=max_entities,
        latent_dim=latent_dim,
        hidden=hidden,
        steps=steps,
        batch_size=batch_size,
        mc_samples=mc_samples,
        score_slots=score_slots,
        likelihood=likelihood,
        likelihood_warmup=likelihood_warmup,
        budget=budget,
        seed=seed,
    )

    records = read_records(data)
    columns = set().union(*(r.keys() for r in records[:1000]))
    for name in (*detector.spec.metrics, time_column):
        if name not in columns:
            raise DataError(f"column {name!r} not found; columns are: {', '.join(sorted(columns))}")
    started = time.monotonic()
    featurizer = detector.featurizer()
    batch = featurizer.update_and_featurize(records)
    bad = [r for r in batch.rejected if r.reason != _LATE]
    if bad:
        first = bad[0]
        more = f" ({len(bad) - 1} more bad rows)" if len(bad) > 1 else ""
        raise DataError(f"{data}: row {first.index + 1}: {first.detail}{more}")
    n = len(batch)
    n_cal = max(MIN_TRAIN_WINDOWS, round(calibration_fraction * n))
    if n - n_cal < MIN_TRAIN_WINDOWS:
        raise DataError(
            f"{data} gives {n} complete windows of {detector.spec.window} points, too few to "
            f"train and calibrate (need {2 * MIN_TRAIN_WINDOWS}; more rows or a smaller --window)"
        )
    split = n - n_cal
    c = batch.c

    def part(rows: slice):
        return batch.x[rows], None if c is None else c[rows], batch.mask[rows]

    try:
        detector.fit(*part(slice(0, split)))
        detector.fit_plausible_range(batch)
        detector.calibrate(
            *part(slice(split, n)), method=threshold_method, target_fpr=target_fpr, risk=risk
        )
    except ValueError as exc:
        raise DataError(str(exc)) from None
    for view in detector.views:
        view.training_info_ = {
            **view.training_info_,
            "train_rows": len(records),
            "entities": featurizer.n_entities,
            "late_points_skipped": len(batch.rejected),
            "training_data": str(data),
        }
    from vaeguard.cli.model_cmds import write_model
    from vaeguard.timeseries.bundle import bundle_view

    provenance = {"source": "train-window", "training_data": str(data)}
    where = write_model(detector, bundle_view(detector), out, registry, provenance)
    _summary(console, detector, where, len(records), featurizer, split, n_cal)
    console.print(f"time {time.monotonic() - started:.1f} s")


def _configured(
    overrides,
    *,
    metrics,
    window,
    conditions,
    seasonal,
    hidden,
    steps,
    likelihood,
    likelihood_warmup,
    budget=None,
    **flags,
):
    """The `ViewSet` of the default configuration, ``--config`` and the flags given."""
    from vaeguard.errors import ConfigError
    from vaeguard.timeseries.views import DEFAULT_CONFIG, ViewSet, merge_config

    params = merge_config(DEFAULT_CONFIG, overrides)
    spec = params["window"]
    spec.update(
        metrics=list(metrics),
        entity_field=flags.pop("entity_field"),
        time_field=flags.pop("time_field"),
        interval=flags.pop("interval"),
        max_lateness=flags.pop("max_lateness"),
        max_entities=flags.pop("max_entities"),
    )
    if window is not None:
        spec["window"] = window
    if conditions is not None:
        spec["conditions"] = [] if conditions.strip().lower() == "none" else _names(conditions)
    if not seasonal:
        spec["seasonal"] = None
        params["views"] = params["views"][:1]
    elif isinstance(spec.get("seasonal"), dict):
        spec["seasonal"] = {**spec["seasonal"], "source": metrics[0]}
    view_flags = {
        "latent_dim": flags.pop("latent_dim"),
        "train_steps": steps,
        "batch_size": flags.pop("batch_size"),
        "mc_samples": flags.pop("mc_samples"),
        "score_slots": flags.pop("score_slots"),
        "seed": flags.pop("seed"),
    }
    if hidden is not None:
        try:
            view_flags["hidden"] = [int(h) for h in hidden.split(",")]
        except ValueError:
            raise DataError(f"--hidden must be comma-separated integers, got {hidden!r}") from None
    for view in params["views"]:
        view.update({k: v for k, v in view_flags.items() if v is not None})
        slots = view.get("score_slots")
        if view_flags["score_slots"] is None and slots is not None:
            # a shorter --window scores at most all of it, or, when the scored slots are
            # predicted from the others, its newer half (as the default's 16 of 32)
            window_slots = int(spec.get("window", 32))
            most = max(1, window_slots // 2) if view.get("predict_scored") else window_slots
            view["score_slots"] = min(int(slots), most)
    if not likelihood:
        params["likelihood"] = None
    elif likelihood_warmup is not None and params["likelihood"] is not None:
        lk = params["likelihood"]
        lk["min_history"] = likelihood_warmup
        lk["history"] = max(int(lk.get("history", 2000)), likelihood_warmup)
    if budget is not None:
        if params["likelihood"] is None:
            raise DataError("--budget needs the likelihood (drop --no-likelihood)")
        params["likelihood"]["budget"] = budget
    try:
        return ViewSet.from_params(params)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise DataError(str(exc)) from None


def _summary(console, detector, where: str, n_rows: int, featurizer, n_train: int, n_cal: int):
    from rich.markup import escape
    from rich.table import Table

    spec = detector.spec
    t = Table(title="vaeguard window model trained", show_header=False, title_justify="left")
    t.add_row("written to", escape(where))
    t.add_row("records", f"{n_rows} read, {featurizer.n_entities} entities")
    t.add_row(
        "windows",
        f"{spec.window} points of {', '.join(spec.channels)}; "
        f"{n_train} trained on, {n_cal} (the tail) calibrated on",
    )
    t.add_row("views", "; ".join(", ".join(v.input_channels) for v in detector.views))
    unlearned = sorted({c for v in detector.views for c in v.unlearned_channels})
    if unlearned:
        t.add_row(
            "not learned",
            escape(
                f"{', '.join(unlearned)}: too few observed points in the training windows "
                "(a seasonal channel needs its periods of history); masked when scored until "
                "an online refit has seen enough of them"
            ),
        )
    if spec.conditions:
        t.add_row("conditions", ", ".join(spec.conditions))
    th = detector.primary.threshold_
    t.add_row("threshold", f"{th.value:.3f} nats ({th.method}, view 1)")
    lk = detector.likelihood_spec
    t.add_row(
        "likelihood",
        f"on (after {lk.min_history} scores per entity"
        + (f"; alerts at {lk.alert:g}" if lk.alert is not None else "")
        + ")"
        if lk is not None
        else "off",
    )
    gap = detector.schedule.get("retrain_max_gap")
    t.add_row(
        "online learning",
        f"warm refits every {gap} rows per entity on the newest "
        f"{detector.schedule['max_train']} windows"
        if gap
        else "off",
    )
    console.print(t)


def register(app: typer.Typer) -> None:
    app.command("train-window")(train_window)
