"""`vaeguard train-window`: train a window-mode (time-series) model from timestamped records.

The tabular `train` learns what one row looks like; this learns what the last W points of an
entity's metrics look like (Donut-style windows, `vaeguard.timeseries`). The file is read in
order, as the daemon would read the topic: one `WindowFeaturizer` builds every entity's windows,
the model trains on the windows of the first part and its threshold is calibrated on the
windows of the tail (``--calibration-fraction``), so the threshold is set on windows the model
did not train on. The result is an ordinary bundle (``kind: window``) that `vaeguard run`,
the registry and `vaeguard inspect` accept. It keeps each entity's window state at the end of
the file (`WindowFeaturizer.carried_snapshot`), so scoring the data that follows starts where the
file ends, as a daemon that had read it would, instead of filling every window again.
"""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path

import typer

from vaeguard.cli import input_files
from vaeguard.cli._common import (
    check_destinations,
    facts_table,
    input_file,
    json_option,
    print_json,
    usage,
)
from vaeguard.errors import DataError

#: Featurizer rejections that are the data's fault (a late point is only skipped).
_LATE = "late_record"


#: The most JSON the bundle's per-entity state may take (the most recently seen entities that
#: fit are carried; the others start afresh when scored).
CARRIED_STATE_BYTES = 32 << 20

#: The entity column when --entity-column is not given (absent from the data: one entity).
DEFAULT_ENTITY = "key"


class WindowThreshold(StrEnum):
    """How `train-window` calibrates each view's threshold on the tail windows."""

    quantile = "quantile"
    spot = "spot"


def _names(value: str | None, option: str = "--conditions") -> list[str]:
    if value is None:
        return []
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise usage("an empty name list was given", option)
    return names


def _interval(value: str) -> float | str:
    if value in ("auto", "rows"):
        return value
    try:
        seconds = float(value)
    except ValueError:
        raise usage(f"auto, rows or seconds expected, got {value!r}", "--interval") from None
    if not (seconds > 0 and seconds < float("inf")):
        raise usage(f"must be > 0 seconds, got {value!r}", "--interval")
    return seconds


def train_window(
    data: Path = typer.Option(
        ...,
        "--data",
        help="CSV or JSONL of (mostly) normal timestamped records, in time order; - reads "
        "standard input.",
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
    params: Path | None = typer.Option(
        None,
        "--params",
        help="JSON overrides of the detector configuration (as `vaeguard nab --params`).",
    ),
    config: Path | None = typer.Option(
        None, "--config", hidden=True, help="The former name of --params (JSON, not YAML)."
    ),
    window: int | None = typer.Option(None, "--window", min=2, help="Points per window (W)."),
    entity_column: str | None = typer.Option(
        None,
        "--entity-column",
        help=f"Column naming the entity (host, service); default {DEFAULT_ENTITY!r}, and one "
        "entity when the data has no such column.",
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
    threshold_method: WindowThreshold = typer.Option(
        WindowThreshold.quantile, "--threshold-method", help="How each view's threshold is set."
    ),
    target_fpr: float = typer.Option(0.01, "--target-fpr"),
    risk: float = typer.Option(1e-3, "--risk", help="Tail risk for the SPOT threshold."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(
        False, "--json", help="Print the summary as one JSON object on stdout."
    ),
    input_settings: Path | None = typer.Option(None, input_files.OPTION, help=input_files.HELP),
) -> None:
    """Train the streaming window detector on timestamped records; write a bundle.

    The detector is `vaeguard.timeseries.views.DEFAULT_CONFIG` (the configuration the NAB
    benchmark measures), with ``--params`` overrides and the flags given applied on top.
    """
    from rich.console import Console

    from vaeguard.tabular_files import read_records
    from vaeguard.thresholds import check_probability
    from vaeguard.timeseries.detector import MIN_TRAIN_WINDOWS

    console = Console(stderr=True)
    # every option is checked before the data is read and before any training
    check_destinations(out, registry)
    if not 0.0 < calibration_fraction < 1.0:
        raise usage("must be between 0 and 1", "--calibration-fraction")
    for name, value in (("target_fpr", target_fpr), ("risk", risk)):
        try:
            check_probability(name, value)
        except ValueError as exc:
            raise usage(str(exc), "--" + name.replace("_", "-")) from None
    if params is not None and config is not None:
        raise usage("give --params only (--config is its former name)", "--config")
    if config is not None:
        console.print("vaeguard: warning: --config is now --params (JSON detector overrides)")
    params = params if params is not None else config
    overrides = json_option(params, "--params")
    detector = _configured(
        overrides,
        metrics=tuple(_names(metrics, "--metrics")),
        window=window,
        entity_field=entity_column or DEFAULT_ENTITY,
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

    records = None
    if input_settings is not None:  # Telegraf / Prometheus / OTLP messages, as the daemon reads
        records = input_files.input_records(
            input_file(data),
            input_settings,
            required=list(detector.spec.metrics),
            entity_field=detector.spec.entity_field,
            time_field=detector.spec.time_field,
            assemble=False,
        )
    if records is None:
        records = read_records(input_file(data))
    columns = set().union(*(r.keys() for r in records[:1000]))
    named = [("metric", m, "--metrics") for m in detector.spec.metrics]
    named.append(("time", time_column, "--time-column"))
    if entity_column is not None:
        named.append(("entity", entity_column, "--entity-column"))
    for what, name, option in named:
        if name not in columns:
            raise usage(
                f"{what} column {name!r} not found; columns are: {', '.join(sorted(columns))}",
                option,
            )
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
            *part(slice(split, n)),
            method=threshold_method.value,
            target_fpr=target_fpr,
            risk=risk,
        )
    except ValueError as exc:
        raise DataError(str(exc)) from None
    # serving continues each entity from where the file ends (`ViewSet.serving_featurizer`),
    # judging as it would have after the calibration tail (`ViewSet.serving_likelihood`)
    detector.entity_state_ = featurizer.carried_snapshot(CARRIED_STATE_BYTES)
    detector.likelihood_state_ = _judged_tail(
        detector, part(slice(split, n)), batch.entities[split:]
    )
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
    seconds = time.monotonic() - started
    if as_json:
        print_json(_summary_json(detector, where, len(records), featurizer, split, n_cal, seconds))
        return
    _summary(console, detector, where, len(records), featurizer, split, n_cal)
    console.print(f"time {seconds:.1f} s")


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
    """The `ViewSet` of the default configuration, ``--params`` and the flags given."""
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
            raise usage(f"comma-separated integers expected, got {hidden!r}", "--hidden") from None
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
            raise usage("needs the likelihood (drop --no-likelihood)", "--budget")
        params["likelihood"]["budget"] = budget
    try:
        return ViewSet.from_params(params)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise usage(f"the detector configuration is not valid: {exc}") from None


def _summary_json(
    detector, where: str, n_rows: int, featurizer, n_train: int, n_cal: int, seconds: float
) -> dict:
    """What `train-window --json` prints: the facts of the table, as plain JSON data."""
    spec = detector.spec
    th = detector.primary.threshold_
    lk = detector.likelihood_spec
    carried = _carried(detector)
    return {
        "written_to": where,
        "records": n_rows,
        "entities": featurizer.n_entities,
        "entities_carried": carried["entities"],
        "entities_with_histories": carried["with_histories"],
        "window": spec.window,
        "channels": list(spec.channels),
        "train_windows": n_train,
        "calibration_windows": n_cal,
        "views": [list(v.input_channels) for v in detector.views],
        "unlearned_channels": sorted({c for v in detector.views for c in v.unlearned_channels}),
        "conditions": list(spec.conditions),
        "threshold": {"value": float(th.value), "unit": "nats", "method": th.method},
        "likelihood": None if lk is None else {"min_history": lk.min_history, "alert": lk.alert},
        "retrain_max_gap": detector.schedule.get("retrain_max_gap"),
        "seconds": round(seconds, 3),
    }


def _judged_tail(detector, windows, entities) -> dict | None:
    """The carried entities' likelihood histories after judging the calibration windows in
    order, as serving would have (windows the model did not train on, so their scores are the
    kind serving will judge): at most `CARRIED_STATE_BYTES` of them, the most recently seen
    entities' first."""
    likelihood = detector.likelihood()
    carried = detector.entity_state_
    if likelihood is None or carried is None:
        return None
    likelihood.update_many(entities, detector.score_windows(*windows).terms)
    keys = [e["key"] for e in carried["entities"]]
    return likelihood.carried_snapshot(keys, CARRIED_STATE_BYTES)


def _carried(detector) -> dict:
    """How many entities' window state (and likelihood histories) the bundle keeps."""
    return detector.carried_summary() or {"entities": 0, "with_histories": 0}


def _summary(console, detector, where: str, n_rows: int, featurizer, n_train: int, n_cal: int):
    from rich.markup import escape

    spec = detector.spec
    t = facts_table("vaeguard window model trained")
    t.add_row("written to", escape(where))
    t.add_row(
        "records",
        f"{n_rows} read, {featurizer.n_entities} entities ({_carried(detector)['entities']} "
        "carried: scoring what follows continues them)",
    )
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
