"""Model commands: train, score, evaluate, generate, interpolate, inspect, report."""

from __future__ import annotations

import json
import time
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from vaeguard.cli import input_files
from vaeguard.cli._common import (
    OutputFormat,
    check_destinations,
    check_json_and_out,
    check_kind,
    facts_table,
    input_file,
    is_stdio,
    load_model,
    model_path,
    output_format,
    print_json,
    usage,
    write_output,
)
from vaeguard.errors import DataError
from vaeguard.tabular_files import csv_text, is_text_column, jsonl_text

#: Columns with these names are record metadata, never features unless asked for explicitly.
RESERVED = ("key", "ts", "timestamp")
#: The largest row `score` and `evaluate` accept by default: the daemon's
#: ``scoring.max_record_bytes`` default (a test holds them equal).
MAX_RECORD_BYTES = 262_144


def _split(value: str | None, option: str) -> list[str] | None:
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise usage("an empty column list was given", option)
    return names


def _same(a: Any, b: str) -> bool:
    """Label comparison that treats 0, 0.0 and "0" from CSV or JSON as equal."""
    if isinstance(a, float) and a.is_integer():
        a = int(a)
    return str(a).strip() == b.strip()


def _load_table(path: Path) -> dict[str, list[Any]]:
    from vaeguard.tabular_files import read_table

    return read_table(path)


def _columns(records: list[dict[str, Any]]) -> dict[str, list[Any]]:
    from vaeguard.tabular_files import to_columns

    return to_columns(records)


def _subset(table: dict[str, list[Any]], keep: list[bool]) -> dict[str, list[Any]]:
    return {k: [v for v, k_ in zip(col, keep, strict=True) if k_] for k, col in table.items()}


def _labels(table: dict[str, list[Any]], column: str, normal_value: str) -> list[int]:
    if column not in table:
        raise _not_found("label", column, table, "--label-column")
    labels = []
    for i, value in enumerate(table[column]):
        if value is None or str(value).strip() == "":
            raise DataError(f"row {i + 1}, column {column!r}: label is missing")
        labels.append(0 if _same(value, normal_value) else 1)
    return labels


class ThresholdMethod(StrEnum):
    """How `train` sets the alert threshold on held-out rows."""

    budget = "budget"
    quantile = "quantile"
    spot = "spot"


def _param_error(exc: ValueError) -> Exception:
    """A detector parameter's error as a usage error naming its option (``target_fpr`` →
    ``--target-fpr``)."""
    message = str(exc)
    name = message.split(" ", 1)[0].rstrip(":")
    option = "--" + name.replace("_", "-") if name.isidentifier() else None
    return usage(message, option)


def train(
    data: Path = typer.Option(
        ..., "--data", help="CSV or JSONL of (mostly) normal rows; - reads standard input."
    ),
    out: Path | None = typer.Option(None, "--out", help="Bundle directory to write."),
    registry: Path | None = typer.Option(
        None,
        "--registry",
        help="Register the model as a new version in this registry (created if missing; made current if it has none).",
    ),
    features: str | None = typer.Option(
        None,
        "--features",
        help="Comma-separated feature columns (default: all but label, conditions, key, ts).",
    ),
    conditions: str | None = typer.Option(
        None, "--conditions", help="Comma-separated condition columns (conditional VAE)."
    ),
    label_column: str | None = typer.Option(
        None, "--label-column", help="Train only on rows whose label equals --normal-value."
    ),
    normal_value: str = typer.Option("0", "--normal-value", help="Label value of normal rows."),
    epochs: int | None = typer.Option(
        None, "--epochs", min=1, help="Maximum epochs (early stopping may end sooner)."
    ),
    latent_dim: int | None = typer.Option(None, "--latent-dim", min=1),
    hidden: str | None = typer.Option(None, "--hidden", help="Encoder widths, e.g. 64,32."),
    mc_samples: int | None = typer.Option(
        None, "--mc-samples", min=1, help="Monte-Carlo draws L in the score."
    ),
    threshold_method: ThresholdMethod | None = typer.Option(
        None, "--threshold-method", help="How the threshold is set (default: budget)."
    ),
    budget: float | None = typer.Option(
        None,
        "--budget",
        help="Alert budget: at most this many false alerts per 1,000 normal rows (default 10).",
    ),
    target_fpr: float | None = typer.Option(
        None, "--target-fpr", help="False-positive rate for the quantile threshold."
    ),
    risk: float | None = typer.Option(None, "--risk", help="Tail risk for the SPOT threshold."),
    symptoms: str | None = typer.Option(
        None,
        "--symptoms",
        help="Comma-separated features that follow the others (e.g. latency, error rate): "
        "explanations blame an anomalous cause before its symptoms.",
    ),
    seed: int = typer.Option(0, "--seed"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the summary as one JSON object on stdout."
    ),
    input_settings: Path | None = typer.Option(None, input_files.OPTION, help=input_files.HELP),
) -> None:
    """Train a detector on normal data and write a model bundle."""
    from rich.console import Console

    console = Console(stderr=True)
    # every option is checked before the data is read and before any training
    check_destinations(out, registry)
    params: dict[str, Any] = {"seed": seed}
    for name, value in (
        ("epochs", epochs),
        ("latent_dim", latent_dim),
        ("mc_samples", mc_samples),
        ("threshold_method", None if threshold_method is None else threshold_method.value),
        ("budget", budget),
        ("target_fpr", target_fpr),
        ("risk", risk),
    ):
        if value is not None:
            params[name] = value
    if hidden:
        try:
            params["hidden"] = tuple(int(h) for h in hidden.split(","))
        except ValueError:
            raise usage(f"comma-separated integers expected, got {hidden!r}", "--hidden") from None
    symptom_names = _split(symptoms, "--symptoms") or []
    if symptom_names:
        params["symptoms"] = tuple(symptom_names)
    condition_names = _split(conditions, "--conditions") or []
    feature_names = _split(features, "--features")
    from vaeguard.detector import VAEDetector

    try:
        detector = VAEDetector(**params)
        detector._validate_params()
    except ValueError as exc:
        raise _param_error(exc) from None
    path = input_file(data)

    records = None
    if input_settings is not None:  # Telegraf / Prometheus / OTLP messages, as the daemon reads
        records = input_files.input_records(
            path,
            input_settings,
            required=feature_names,
            assemble=True,
            conditions=condition_names,
        )
    table = _load_table(path) if records is None else _columns(records)
    n_rows = len(next(iter(table.values())))
    if label_column:
        labels = _labels(table, label_column, normal_value)
        table = _subset(table, [lab == 0 for lab in labels])
        if not table or not next(iter(table.values())):
            raise DataError(f"no rows have {label_column} = {normal_value!r}")
    for name in condition_names:
        if name not in table:
            raise _not_found("condition", name, table, "--conditions")
    if feature_names is None:
        excluded = {label_column, *condition_names, *RESERVED}
        candidates = [c for c in table if c not in excluded]
        text = [c for c in candidates if is_text_column(table[c])]
        if text:
            console.print(
                f"ignoring text column(s) {', '.join(text)}: name them with --conditions to condition on them"
            )
        feature_names = [c for c in candidates if c not in text]
        if not feature_names:
            raise DataError("no feature columns left; name them with --features")
    else:
        for name in feature_names:
            if name not in table:
                raise _not_found("feature", name, table, "--features")
    unknown = [s for s in symptom_names if s not in feature_names]
    if unknown:
        raise usage(
            f"{', '.join(map(repr, unknown))} not among the features ({', '.join(feature_names)})",
            "--symptoms",
        )

    x = {name: table[name] for name in feature_names}
    c = {name: table[name] for name in condition_names} if condition_names else None
    # the data is checked before the progress bar and Keras load: a bad cell is refused at once
    detector._training_inputs(x, c, feature_names, None, None)
    started = time.monotonic()
    callbacks = [] if quiet else [_progress_callback(console, detector.epochs)]
    try:
        detector.fit(x, c, feature_names=feature_names, callbacks=callbacks)
    finally:
        for cb in callbacks:
            cb.close()
    where = write_model(
        detector, detector, out, registry, {"source": "train", "training_data": str(data)}
    )
    summary = _train_summary(detector, where, n_rows, time.monotonic() - started)
    if as_json:
        print_json(summary)
    else:
        _print_summary(console, detector, summary)


def _not_found(what: str, name: str, table: dict[str, list[Any]], option: str) -> Exception:
    return usage(f"{what} column {name!r} not found; columns are: {', '.join(table)}", option)


def write_model(
    detector, as_bundle, out: Path | None, registry: Path | None, provenance: dict
) -> str:
    """Save ``detector`` to ``out`` and/or register ``as_bundle`` in ``registry``; say where.

    ``as_bundle`` is what the registry stores: the detector itself, or the bundle view of a
    window-mode detector (`vaeguard.timeseries.bundle.bundle_view`).
    """
    destinations = []
    if out is not None:
        detector.save(out)
        destinations.append(str(out))
    if registry is not None:
        from vaeguard.registry import ModelRegistry, is_registry

        reg = ModelRegistry(registry, create=not is_registry(registry))
        version = reg.register(as_bundle, provenance)
        current = " (current)" if reg.current() == version else ""
        destinations.append(f"{registry} as {version}{current}")
    return "; ".join(destinations)


def _progress_callback(console, epochs: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vaeguard._quiet import import_keras

    keras = import_keras()

    class RichProgress(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.progress = Progress(
                TextColumn("[bold]training"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            )
            self.task = self.progress.add_task("train", total=epochs, info="")
            self.progress.start()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            info = "  ".join(f"{k} {logs[k]:.3f}" for k in ("loss", "val_loss", "kl") if k in logs)
            self.progress.update(self.task, completed=epoch + 1, info=info)

        def close(self):
            self.progress.stop()

    return RichProgress()


def _train_summary(detector, where: str, n_rows: int, seconds: float) -> dict[str, Any]:
    """What `train` reports, as plain JSON data (`--json`) and as the table."""
    info = detector.training_info_
    th = detector.threshold_rule_
    return {
        "written_to": where,
        "rows": n_rows,
        "train_rows": info["train_rows"],
        "validation_rows": info["validation_rows"],
        "features": list(detector.feature_names_),
        "conditions": [{"name": c.name, "kind": c.kind} for c in detector.conditions_.columns],
        "epochs_run": info["epochs_run"],
        "epochs": detector.epochs,
        "final_loss": {
            k: float(v)
            for k, v in info["final"].items()
            if k in ("reconstruction", "kl", "val_reconstruction", "val_kl")
        },
        "threshold": {
            "value": float(th.value),
            "method": th.method,
            "params": {k: v for k, v in th.params.items() if k in ("budget", "target_fpr", "risk")},
            "calibration_rows": th.calibration_rows,
        },
        "seconds": round(seconds, 3),
    }


def _print_summary(console, detector, s: dict[str, Any]) -> None:
    from rich.markup import escape

    t = facts_table("vaeguard model trained")
    t.add_row("written to", escape(s["written_to"]))
    t.add_row(
        "rows",
        f"{s['rows']} read, {s['train_rows']} trained on, {s['validation_rows']} held out",
    )
    t.add_row("features", escape(", ".join(s["features"])))
    if s["conditions"]:
        t.add_row(
            "conditions", escape(", ".join(f"{c['name']} ({c['kind']})" for c in s["conditions"]))
        )
    t.add_row("epochs", f"{s['epochs_run']} of {s['epochs']} (early stopping on validation ELBO)")
    t.add_row("final loss", "  ".join(f"{k} {v:.3f}" for k, v in s["final_loss"].items()))
    th = s["threshold"]
    shown = ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in th["params"].items()
        if k in ("target_fpr", "risk", "budget")
    )
    method = f"{th['method']}, {shown}" if shown else th["method"]
    t.add_row("threshold", f"{th['value']:.3f} ({method}; {th['calibration_rows']} held-out rows)")
    t.add_row("time", f"{s['seconds']:.1f} s")
    console.print(t)


def score(
    model: Path = typer.Option(
        ..., "--model", help="Model bundle directory, or a registry (its current version)."
    ),
    data: Path = typer.Option(..., "--data", help="CSV or JSONL to score; - reads standard input."),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Results file, one row per input row; - writes standard output. JSON Lines "
        "(score records), or CSV (the input rows with score columns appended).",
    ),
    fmt: OutputFormat | None = typer.Option(
        None, "--format", help="Format of --out (default: from its extension; jsonl for -)."
    ),
    top_k: int = typer.Option(3, "--top-k", min=1, help="Contributing features per row."),
    max_record_bytes: int = typer.Option(
        MAX_RECORD_BYTES,
        "--max-record-bytes",
        min=64,
        help="Largest row accepted (as the daemon's).",
    ),
    fixed_threshold: bool = typer.Option(
        False,
        "--fixed-threshold",
        help="Tabular bundles: judge every row by the threshold fixed at training (the daemon's "
        "model.follow_normal: false). Default: the alert budget's threshold follows the recent "
        "normal rows, learned every 100 rows, as the daemon's does.",
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the summary as one JSON object on stdout."
    ),
) -> None:
    """Score every row exactly as the daemon would: a score record per scored row, a
    refusal (reason and detail) per row the daemon would dead-letter. The rows are judged in
    order, as a stream: a tabular budget threshold follows the normal rows before them."""
    check_json_and_out(as_json, out)
    out_format = output_format(out, fmt)
    path = input_file(data)
    bundle, version = model_path(model)
    if check_kind(bundle, "score", ("tabular", "window")) == "window" and fixed_threshold:
        raise usage(
            "a window model has no threshold to fix: its anomaly likelihood decides, under "
            "the alert budget (tabular bundles only)",
            "--fixed-threshold",
        )
    from vaeguard.bundle import read_manifest, required_fields
    from vaeguard.tabular_files import csv_header

    header = csv_header(path)
    # a file without the model's columns is refused before the model (and Keras) loads
    required = required_fields(read_manifest(bundle))
    _refuse_missing(required or [], header, data)

    from vaeguard.serving import load_serving
    from vaeguard.thresholds import FOLLOW_BATCH

    serving = load_serving(bundle, version or _version_of(bundle), follow=not fixed_threshold)
    # A following threshold learns after each batch, as the daemon's does after each batch it
    # scores: in one large batch a file would be judged wholly by the training threshold.
    batch_rows = FOLLOW_BATCH if getattr(serving, "following", None) is not None else 4096
    if required is None:  # (a manifest that does not say them: the loaded serving does)
        _refuse_missing(serving.required_fields, header, data)
    rows, inputs, n_read = _score_rows(
        serving,
        path,
        str(data),
        _step_settings(max_record_bytes, top_k),
        batch_rows,
        keep_inputs=out_format == "csv",
    )
    if n_read == 0:
        raise DataError(f"{data}: the file has no data rows")
    if out_format == "csv":
        write_output(out, _scores_csv(header, inputs, rows))
    else:
        write_output(out, jsonl_text(rows))
    flagged = sum(1 for r in rows if r.get("is_anomaly"))
    refused = sum(1 for r in rows if "rejected" in r)
    buffered = n_read - len(rows)
    thresholds = [r["threshold"] for r in rows if r.get("threshold") is not None]
    threshold = thresholds[0] if thresholds else None
    last = thresholds[-1] if thresholds else None
    summary = {
        "rows": n_read,
        "scored": len(rows) - refused,
        "anomalies": flagged,
        "refused": refused,
        "filling_windows": buffered,
        "threshold": threshold,
        #: where a following threshold ended (the same as ``threshold`` when fixed)
        "last_threshold": last,
        "model": str(bundle),
        "model_version": version,
        "out": str(out),
        "format": out_format,
    }
    if as_json:
        print_json(summary)
        return
    typer.echo(
        f"scored {len(rows) - refused} rows, {flagged} above the threshold"
        + (f" {threshold:.3f}" if threshold is not None else "")
        + (f" (following the normal rows: {last:.3f} at the end)" if last != threshold else "")
        + (f", {refused} refused" if refused else "")
        + (f", {buffered} only filled windows" if buffered else "")
        + f" → {'standard output' if is_stdio(out) else out}",
        err=True,
    )


def _refuse_missing(required: list[str], header: list[str] | None, data: Path) -> None:
    """Refuse a file whose columns (a CSV header; None for JSONL that is checked row by row,
    as the daemon checks records) lack one the model needs."""
    if header is not None:
        missing = [f for f in required if f not in header]
        if missing:
            raise DataError(
                f"{data}: missing feature column(s) {', '.join(map(repr, missing))}; "
                f"the file has {', '.join(map(repr, header))}"
            )


def _step_settings(max_record_bytes: int, top_k: int):
    """The batch step of a file's rows: the daemon's, with nowhere to send anything."""
    from vaeguard.records.batch import StepSettings
    from vaeguard.severity import DEFAULT_BANDS

    return StepSettings(
        output_topic="",
        dlq_topic="",
        max_record_bytes=max_record_bytes,
        top_k=top_k,
        bands=DEFAULT_BANDS,
        connector="vaeguard-score",
        task="cli",
        max_request_size=2**62,
    )


def _score_rows(
    serving, path: Path, source: str, step, batch_rows: int, *, keep_inputs: bool
) -> tuple[list[dict[str, Any]], list[bytes | dict[str, str] | str], int]:
    """Every row of ``path`` through ``serving`` as the daemon's batch step takes a topic's
    records, ``batch_rows`` at a time and in order: a verdict per row that got one (a score
    record, or a refusal with its reason; none for a row that only filled a window), in row
    order; the rows as read, when ``keep_inputs``; and how many rows were read."""
    from vaeguard.records.batch import process
    from vaeguard.scored import Source
    from vaeguard.sources import Record, source_of
    from vaeguard.tabular_files import iter_rows, json_text_size

    rows: list[dict[str, Any]] = []
    chunk: list[Record] = []
    inputs: list[bytes | dict[str, str] | str] = []

    def flush() -> None:
        if not chunk:
            return
        result = process(serving, chunk, step)
        by_offset: dict[int, dict[str, Any]] = {}
        for d in result.dead:
            row = source_of(d.message).offset
            by_offset[row] = {"row": row, "rejected": {"reason": d.reason, "detail": d.detail}}
        for r in result.scored:
            record = r.to_json()
            record.pop("source")
            by_offset[r.source.offset] = {"row": r.source.offset, **record}
        rows.extend(by_offset[k] for k in sorted(by_offset))
        chunk.clear()

    n_read = 0
    for line_no, raw in iter_rows(path):
        n_read += 1
        if keep_inputs:
            inputs.append(raw)
        if isinstance(raw, str):
            flush()  # keep the output in row order
            detail = f"line {line_no}: {raw}"
            rows.append({"row": n_read, "rejected": {"reason": "invalid_field", "detail": detail}})
            continue
        # a JSONL line is JSON text, decoded as a message is; a CSV row comes as its cells,
        # held to --max-record-bytes by its size as JSON text (the daemon's size of it)
        size = json_text_size(raw) if isinstance(raw, dict) else None
        chunk.append(Record(raw, Source(source, 0, n_read), size=size))
        if len(chunk) >= batch_rows:
            flush()
    flush()
    return rows, inputs, n_read


#: The columns `score` appends to the input rows in CSV output (prefixed ``vaeguard_`` when
#: an input column already has one of these names).
SCORE_COLUMNS = (
    "score",
    "threshold",
    "is_anomaly",
    "severity",
    "p_value",
    "anomaly_likelihood",
    "top_features",
    "model_version",
    "rejected",
)


def _scores_csv(
    header: list[str] | None, inputs: list[bytes | dict[str, str] | str], rows: list[dict[str, Any]]
) -> str:
    """Every input row, in order, with the score columns appended (empty where a row only
    filled a window; ``rejected`` holds the reason of a refused row)."""
    records: list[dict[str, Any]] = []
    names: dict[str, None] = dict.fromkeys(header or [])
    for raw in inputs:
        record = _row_record(raw) or {}  # a CSV row's cells, a JSONL line's object
        names.update(dict.fromkeys(record))
        records.append(record)
    clash = any(c in names for c in SCORE_COLUMNS)
    appended = [f"vaeguard_{c}" if clash else c for c in SCORE_COLUMNS]
    verdicts = {r["row"]: r for r in rows}

    def cell(value: Any) -> Any:
        if value is None:
            return ""
        if isinstance(value, dict | list):
            return json.dumps(value, separators=(",", ":"))
        return value

    def out_rows():
        for n, record in enumerate(records, start=1):
            v = verdicts.get(n, {})
            rejected = v.get("rejected")
            yield [cell(record.get(c)) for c in names] + [
                cell(v.get("score")),
                cell(v.get("threshold")),
                "" if "is_anomaly" not in v else str(bool(v["is_anomaly"])).lower(),
                cell(v.get("severity")),
                cell(v.get("p_value")),
                cell(v.get("anomaly_likelihood")),
                ";".join(c["feature"] for c in v.get("contributions") or []),
                cell(v.get("model_version")),
                f"{rejected['reason']}: {rejected['detail']}" if rejected else "",
            ]

    return csv_text([*names, *appended], out_rows())


def _version_of(path: Path) -> str:
    from vaeguard.bundle import read_manifest

    return read_manifest(path)["model_sha256"][:12]


MODEL_HELP = "Model bundle directory, or a registry (its current version)."


def evaluate(
    model: Path = typer.Option(..., "--model", help=MODEL_HELP),
    data: Path = typer.Option(..., "--data", help="Labelled CSV or JSONL; - reads standard input."),
    label_column: str = typer.Option(..., "--label-column"),
    normal_value: str = typer.Option(
        "0", "--normal-value", help="Label value of normal rows; any other value is an anomaly."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """ROC-AUC, average precision, precision / recall / F1 and false alarms at the bundle
    threshold and, for a budget threshold, with the rows judged in order as the daemon judges a
    stream (the threshold following the normal rows, as `vaeguard score` does); best F1.

    A window bundle scores the file as `vaeguard score` does and counts incidents (runs of
    anomalous rows of an entity): how many an alert detected and how late, and the false alerts
    per 1,000 points next to the model's alert budget."""
    path = input_file(data)
    bundle, version = model_path(model)
    from vaeguard.bundle import read_manifest, required_fields

    # the file's columns are checked against the manifest before the model (and Keras) loads
    required = required_fields(read_manifest(bundle))
    if check_kind(bundle, "evaluate", ("tabular", "window")) == "window":
        _evaluate_window(bundle, version, path, data, label_column, normal_value, as_json, required)
        return
    table = _load_table(path)
    labels = _labels(table, label_column, normal_value)
    # (fields the manifest does not say are refused by the loaded detector's own check)
    _refuse_missing(required or [], list(table), data)

    from vaeguard.detector import VAEDetector
    from vaeguard.evaluation import evaluate as run_evaluation
    from vaeguard.thresholds import FOLLOW_BATCH, FollowingThreshold

    detector = VAEDetector.load(bundle)  # (the kind checked above)
    scores = detector.decision_function(table)
    rule = getattr(detector, "threshold_rule_", None)
    follows = rule is not None and rule.method == "budget"
    stream_flags = FollowingThreshold(rule).replay(scores, FOLLOW_BATCH) if follows else None
    result = run_evaluation(labels, scores, detector.threshold, stream_flags)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"evaluation on {data} ({result.rows} rows, {result.anomalies} anomalous)",
        title_justify="left",
    )
    t.add_column("metric")
    t.add_column("value", justify="right")
    at = f"@ {result.threshold:.3f}"
    rows = [
        ("ROC-AUC", result.roc_auc),
        ("average precision", result.average_precision),
        (f"precision {at}", result.precision),
        (f"recall {at}", result.recall),
        (f"F1 {at}", result.f1),
        (f"false alarms {at} (share of normal rows)", result.false_alarm_rate),
    ]
    if result.stream is not None:
        how = "as a stream, the threshold following"
        rows += [
            (f"precision {how}", result.stream.precision),
            (f"recall {how}", result.stream.recall),
            (f"F1 {how}", result.stream.f1),
            (f"false alarms {how}", result.stream.false_alarm_rate),
        ]
    rows.append((f"best F1 (@ {result.best_f1_threshold:.3f})", result.best_f1))
    for name, value in rows:
        t.add_row(name, f"{value:.4f}")
    Console().print(t)


def _row_record(raw: bytes | dict[str, str] | str) -> dict[str, Any] | None:
    """A row as read (CSV cells, a JSONL line, or an unreadable line) as a record; None when
    it is not one. Lenient (NaN, any nesting the parser takes): it shows and labels rows, the
    scoring path decides which it refuses."""
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, bytes):
        try:
            decoded = json.loads(raw)
        except (ValueError, RecursionError):
            return None
        return decoded if isinstance(decoded, dict) else None
    return None


def _row_labels(
    inputs: list[bytes | dict[str, str] | str],
    label_column: str,
    normal_value: str,
    entity_field: str,
) -> tuple[list[int | None], list[str | None]]:
    """Each row's label (0 normal, 1 anomalous; None for a row that is not a record, which
    nothing scores) and entity (None without one). A record without a label is refused,
    naming its row; a label column the first record lacks, naming the column."""
    from vaeguard.ingest import entity_text

    labels: list[int | None] = []
    entities: list[str | None] = []
    first = True
    for n, raw in enumerate(inputs, start=1):
        record = _row_record(raw)
        if record is None:
            labels.append(None)
            entities.append(None)
            continue
        if first and label_column not in record:
            raise _not_found("label", label_column, _columns([record]), "--label-column")
        first = False
        value = record.get(label_column)
        if value is None or str(value).strip() == "":
            raise DataError(f"row {n}, column {label_column!r}: label is missing")
        labels.append(0 if _same(value, normal_value) else 1)
        key = record.get(entity_field)
        entities.append(None if key is None else entity_text(key))
    return labels, entities


def _evaluate_window(
    bundle: Path,
    version: str | None,
    path: Path,
    data: Path,
    label_column: str,
    normal_value: str,
    as_json: bool,
    required: list[str] | None,
) -> None:
    """`evaluate` on a window bundle: the file scored as `score` scores it, its labelled
    incidents counted against the alerts (`vaeguard.evaluation.judge_incidents`).
    ``required``: the fields the manifest says rows carry (None: the loaded serving says)."""
    from vaeguard.evaluation import judge_incidents
    from vaeguard.serving import load_serving
    from vaeguard.tabular_files import csv_header

    header = csv_header(path)
    _refuse_missing(required or [], header, data)
    serving = load_serving(bundle, version or _version_of(bundle))
    if required is None:
        _refuse_missing(serving.required_fields, header, data)
    rows, inputs, n_read = _score_rows(
        serving, path, str(data), _step_settings(MAX_RECORD_BYTES, 1), 4096, keep_inputs=True
    )
    if n_read == 0:
        raise DataError(f"{data}: the file has no data rows")
    labels, entities = _row_labels(inputs, label_column, normal_value, serving.spec.entity_field)
    alerts, scored, named = [False] * n_read, [False] * n_read, [None] * n_read
    for r in rows:
        if "rejected" in r:
            continue
        i = r["row"] - 1
        scored[i], alerts[i] = True, bool(r.get("is_anomaly"))
        top = r.get("contributions") or []
        named[i] = top[0].get("feature") if top else None
    records = [i for i, label in enumerate(labels) if label is not None]
    if not records:
        raise DataError(f"{data}: no row is a record")
    spec = serving.views.likelihood_spec
    w = serving.detector.score_slots or serving.spec.window
    result = judge_incidents(
        [labels[i] for i in records],
        [alerts[i] for i in records],
        [scored[i] for i in records],
        [entities[i] for i in records],
        lag=int(w),
        aftermath=spec.suppress if spec is not None else 0,
        named=[named[i] for i in records],
        rows=[i + 1 for i in records],
    )
    refused = sum(1 for r in rows if "rejected" in r)
    summary = {
        "kind": "window",
        "rows": n_read,
        "scored": sum(scored),
        "refused": refused,
        "filling_windows": n_read - len(rows),
        "entities": len({entities[i] for i in records}),
        "alert_budget": None if spec is None else spec.budget,
        **result.to_dict(),
        "model": str(bundle),
        "model_version": version,
    }
    if as_json:
        print_json(summary)
        return
    _print_incidents(data, summary, result)


def _print_incidents(data: Path, s: dict[str, Any], result) -> None:
    from rich.console import Console
    from rich.table import Table

    def num(value: float | None, fmt: str) -> str:
        return "–" if value is None else format(value, fmt)

    t = facts_table(
        f"evaluation on {data} ({s['rows']} rows, {s['entities']} "
        f"entit{'y' if s['entities'] == 1 else 'ies'}, {result.incidents} labelled incidents)"
    )
    budget = s["alert_budget"]
    follow_ups = result.alerts - result.true_alerts - result.false_alerts
    facts = [
        (
            "incidents detected",
            f"{result.detected} of {result.incidents}"
            + (f" ({result.recall:.0%})" if result.recall is not None else ""),
        ),
        (
            "points to detection",
            f"median {num(result.median_delay, 'g')}, worst {num(result.max_delay, 'd')}",
        ),
        (
            "alerts",
            f"{result.alerts}: {result.true_alerts} in incidents, {result.false_alerts} false"
            + (f", {follow_ups} follow-ups" if follow_ups else ""),
        ),
        (
            "false alerts per 1,000 points",
            f"{num(result.false_alerts_per_1000, '.2f')} "
            f"(of {result.quiet_points} points away from incidents)"
            + (f"; alert budget {budget:g}" if budget is not None else ""),
        ),
        ("alert precision", num(result.alert_precision, ".3f")),
        (
            "points",
            f"{s['scored']} scored, {s['filling_windows']} only filled windows"
            + (f", {s['refused']} refused" if s["refused"] else ""),
        ),
        (
            "counted",
            f"an alert up to {result.lag} points after an incident detects it; "
            f"{result.aftermath} more are its follow-up",
        ),
    ]
    for name, value in facts:
        t.add_row(name, value)
    console = Console()
    console.print(t)
    if result.each:
        console.print(_incident_table(result.each[:INCIDENTS_SHOWN]))
        if len(result.each) > INCIDENTS_SHOWN:
            more = len(result.each) - INCIDENTS_SHOWN
            console.print(f"… and {more} more (--json lists every one)")
    if result.noisiest:
        nt = Table(title="entities with false alerts, most first", title_justify="left")
        for col in ("entity", "false alerts", "per 1,000 points"):
            nt.add_column(col, justify="left" if col == "entity" else "right")
        for entity, n_false, n_quiet in result.noisiest[:INCIDENTS_SHOWN]:
            nt.add_row(
                "–" if entity is None else entity, str(n_false), f"{1000 * n_false / n_quiet:.2f}"
            )
        console.print(nt)


#: Rows of `evaluate`'s incident and noisy-entity tables (``--json`` lists every one).
INCIDENTS_SHOWN = 20


def _incident_table(incidents):
    from rich.table import Table

    it = Table(title="incidents", title_justify="left")
    for col in ("entity", "rows", "detected at row", "points late", "names first"):
        it.add_column(col, justify="left" if col in ("entity", "names first") else "right")
    for i in incidents:
        it.add_row(
            "–" if i.entity is None else i.entity,
            f"{i.first_row}–{i.last_row}",
            "missed" if i.alert_row is None else str(i.alert_row),
            "–" if i.delay is None else str(i.delay),
            i.named or "–",
        )
    return it


def _parse_conditions(values: list[str]) -> dict[str, str] | None:
    if not values:
        return None
    out = {}
    for item in values:
        if "=" not in item:
            raise usage(f"NAME=VALUE expected, got {item!r}", "--condition")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _write_rows(path: Path, fmt: str, names: list[str], matrix) -> None:
    if fmt == "csv":
        write_output(path, csv_text(names, ([float(v) for v in row] for row in matrix)))
    else:
        write_output(
            path,
            jsonl_text({n: float(v) for n, v in zip(names, row, strict=True)} for row in matrix),
        )


OUT_HELP = "CSV or JSONL file; - writes standard output."
FORMAT_HELP = "Format of --out (default: from its extension; jsonl for -)."


def generate(
    model: Path = typer.Option(..., "--model", help=MODEL_HELP),
    n: int = typer.Option(..., "-n", "--n", min=1, help="Rows to generate."),
    out: Path = typer.Option(..., "--out", help=OUT_HELP),
    fmt: OutputFormat | None = typer.Option(None, "--format", help=FORMAT_HELP),
    condition: list[str] = typer.Option(
        [], "--condition", help="NAME=VALUE for a conditional model (repeatable)."
    ),
    seed: int | None = typer.Option(None, "--seed"),
    mean_only: bool = typer.Option(
        False, "--mean-only", help="Decoder means instead of draws from p(x|z)."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the summary as one JSON object on stdout."
    ),
) -> None:
    """Generate synthetic normal rows: z ~ N(0, I) through the decoder."""
    check_json_and_out(as_json, out)
    out_format = output_format(out, fmt)
    conditions = _parse_conditions(condition)
    detector = load_model(model, "generate")
    rows = detector.sample(n, conditions, noise=not mean_only, seed=seed)
    _write_rows(out, out_format, detector.feature_names_, rows)
    if as_json:
        print_json({"rows": n, "out": str(out), "format": out_format})
    else:
        typer.echo(f"generated {n} rows → {out}", err=True)


def interpolate(
    model: Path = typer.Option(..., "--model", help=MODEL_HELP),
    data: Path = typer.Option(
        ..., "--data", help="CSV or JSONL holding the two end rows; - reads standard input."
    ),
    start: int = typer.Option(1, "--from-row", min=1, help="1-based row number of the start."),
    end: int = typer.Option(2, "--to-row", min=1, help="1-based row number of the end."),
    steps: int = typer.Option(10, "--steps", min=2),
    out: Path = typer.Option(..., "--out", help=OUT_HELP),
    fmt: OutputFormat | None = typer.Option(None, "--format", help=FORMAT_HELP),
    as_json: bool = typer.Option(
        False, "--json", help="Print the summary as one JSON object on stdout."
    ),
) -> None:
    """Decode the straight line between two rows' latent means."""
    from vaeguard.tabular_files import read_records

    check_json_and_out(as_json, out)
    out_format = output_format(out, fmt)
    path = input_file(data)
    detector = load_model(model, "interpolate")
    records = read_records(path)
    for row in (start, end):
        if row > len(records):
            raise DataError(f"row {row} does not exist: {data} has {len(records)} rows")
    conditions = None
    if detector.conditions_.columns:
        conditions = {name: [records[start - 1].get(name)] for name in detector.conditions_.names}
    line = detector.interpolate(records[start - 1], records[end - 1], steps, conditions)
    _write_rows(out, out_format, detector.feature_names_, line)
    if as_json:
        print_json(
            {"rows": steps, "from_row": start, "to_row": end, "out": str(out), "format": out_format}
        )
    else:
        typer.echo(f"interpolated {steps} points between rows {start} and {end} → {out}", err=True)


def inspect(
    model: Path = typer.Option(..., "--model", help=MODEL_HELP),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print a summary as one JSON object (--full: the whole manifest).",
    ),
    full: bool = typer.Option(
        False, "--full", help="Print the whole validated manifest as JSON (any kind of bundle)."
    ),
) -> None:
    """Validate a bundle and show what it holds."""
    from vaeguard.bundle import is_scalar, load_any, tabular_summary
    from vaeguard.timeseries.views import ViewSet

    model, _ = model_path(model)
    # checked as serving reads it: a window bundle's config, views and schedule too
    loaded = load_any(model)
    views = loaded if isinstance(loaded, ViewSet) else None
    m = views.primary.manifest_ if views is not None else loaded.manifest_
    if full:
        typer.echo(json.dumps(m, indent=2))
        return
    if as_json and views is None:
        typer.echo(json.dumps({"bundle": str(model), **tabular_summary(m)}, indent=2))
        return
    if views is not None:
        summary = views.summary()
        if as_json:
            typer.echo(json.dumps({"bundle": str(model), **summary}, indent=2))
        else:
            _print_window_summary(model, summary)
        return
    from rich.console import Console
    from rich.markup import escape

    t = facts_table(f"model bundle {model}")
    t.add_row("created", m["created_at"])
    t.add_row("versions", ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v))
    th = m["threshold"]
    if th.get("method") == "budget":
        t.add_row(
            "alert budget", f"{th['params'].get('budget'):g} false alerts per 1,000 normal rows"
        )
    t.add_row("features", escape(", ".join(m["features"])))
    if m["conditions"]:
        t.add_row("conditions", ", ".join(f"{c['name']} ({c['kind']})" for c in m["conditions"]))
    shown = ", ".join(f"{k}={v}" for k, v in th["params"].items() if is_scalar(v))
    t.add_row("threshold", escape(f"{th['value']:.4f} nats ({th['method']}; {shown})"))
    p = m["params"]
    t.add_row(
        "architecture",
        f"hidden {p['hidden']}, latent {p['latent_dim']}, β {p['beta']}, L = {p['mc_samples']} MC draws",
    )
    if p.get("symptoms"):
        t.add_row("symptoms", escape(", ".join(map(str, p["symptoms"]))))
    training = m.get("training", {})
    t.add_row(
        "training",
        f"{training.get('train_rows')} rows, {training.get('epochs_run')} epochs, best val loss {training.get('best_val_loss')}",
    )
    fp = m.get("data_fingerprint") or {}
    t.add_row("data", f"{fp.get('rows')} rows, sha256 {str(fp.get('sha256', ''))[:16]}…")
    t.add_row("model file", f"{m['model_file']} sha256 {m['model_sha256'][:16]}… (verified)")
    Console().print(t)


def _known(value: Any) -> str:
    """A recorded fact as text, "unknown" when the bundle does not record it."""
    return "unknown" if value is None else str(value)


def _when(epoch: float | None) -> str:
    """Epoch seconds as UTC ISO time ("unknown" for None)."""
    import datetime as dt

    if epoch is None:
        return "unknown"
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


def _print_window_summary(model: Path, s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape

    spec, lk, views = s["window"], s["likelihood"], s["views"]
    t = facts_table(f"model bundle {model}")
    t.add_row("created", escape(_known(s["created_at"])))
    versions = s["versions"] if isinstance(s["versions"], dict) else {}
    t.add_row("versions", escape(", ".join(f"{k} {v}" for k, v in versions.items() if v)))
    interval = spec["interval"]
    interval = {"auto": "auto, inferred per entity", "rows": "rows, arrival order"}.get(
        interval, f"{interval:g} s" if isinstance(interval, int | float) else str(interval)
    )
    t.add_row(
        "window mode",
        escape(
            f"{spec['window']} points of {', '.join(spec['metrics'])} per {spec['entity_field']} "
            f"(time {spec['time_field']}, interval {interval}); likelihood {'on' if lk else 'off'}"
        ),
    )
    t.add_row("conditions", escape(", ".join(spec["conditions"]) or "none"))
    seasonal = spec.get("seasonal")
    t.add_row(
        "seasonal",
        escape(
            f"{seasonal['name']} = {seasonal['source']} minus its median at the same time of the "
            f"previous {seasonal['periods']} periods of {seasonal['period']:g} s "
            f"(tolerance {seasonal['tolerance']:g} s)"
        )
        if seasonal
        else "none",
    )
    alerts = s["alerts"]
    if alerts["decided_by"] == "likelihood":
        t.add_row(
            "alerts",
            f"the anomaly likelihood decides: a point alerts at {alerts['level']:g} or more "
            "(the views' thresholds do not)",
        )
    else:
        t.add_row(
            "alerts",
            f"decided by view 1's raw score above its threshold {alerts['level']:.4f} nats"
            + ("" if lk is None else " (the likelihood is reported, not alerted on)"),
        )
    if lk is not None:
        t.add_row("alert budget", _budget_text(lk))
        t.add_row(
            "likelihood",
            f"{lk['estimator']}: "
            + (
                "each term's score"
                if lk["short"] == 1
                else f"the mean of each term's last {lk['short']} scores"
            )
            + f" vs the entity's last {lk['history']}, from {lk['min_history']} scores on; "
            + (
                f"suppress {lk['suppress']} points per metric"
                if lk["suppress"]
                else "no suppression"
            ),
        )
    for k, v in enumerate(views):
        t.add_row(f"view {k + 1}", escape(_view_text(v, spec["window"])))
    cross = s.get("cross_section")
    if cross is not None:
        rows = cross["fitted_rows"]
        t.add_row(
            "cross-section",
            escape(
                f"each of {', '.join(cross['metrics'])} against the others at the same moment; "
                + (
                    f"fitted on {rows} rows"
                    if rows is not None
                    else "not fitted (too few rows with every metric observed): no evidence"
                )
            ),
        )
    sched = s["schedule"]
    gap = sched.get("retrain_max_gap")
    t.add_row(
        "online learning",
        f"warm refits every {gap} rows per entity on the newest {_known(sched.get('max_train'))} "
        "windows"
        if gap
        else "off (retrain_max_gap null)",
    )
    tr = s["training"]
    t.add_row(
        "training",
        escape(
            f"{_known(tr['train_rows'])} records of {_known(tr['entities'])} entities "
            f"({_known(tr['late_points_skipped'])} late points skipped); "
            f"{_known(tr['windows'])} windows trained on, "
            f"{_known(tr['calibration_windows'])} calibrated on"
        ),
    )
    t.add_row("training data", escape(_known(tr["training_data"])))
    carried = s.get("entity_state")
    t.add_row(
        "entity state",
        "none: scoring starts every entity afresh"
        if carried is None
        else (
            f"{carried['entities']} entities continue from the end of the training data "
            f"(latest point {_when(carried['last_ts'])}), {carried.get('with_histories', 0)} "
            "of them with likelihood histories from the calibration tail (judged from their "
            "first point); one whose first point comes earlier starts afresh"
        ),
    )
    Console().print(t)


def _budget_text(lk: dict[str, Any]) -> str:
    """What sets the likelihood's level: the budget, or (without one) ``decades``; a linear
    output is 1 − the tail probability, which no budget scales."""
    budget = lk.get("budget")
    if lk["output"] == "linear":
        return "none (linear output: 1 − the tail probability)"
    if budget is None:
        return f"none (the likelihood reaches 1 at a tail probability of {10 ** -lk['decades']:g})"
    return (
        f"{budget:g} false alerts per 1,000 points per entity (tail probability {budget / 1000:g})"
    )


def _view_text(v: dict[str, Any], window: int) -> str:
    """One view: channels, model, calibration threshold, unlearned channels, model file."""
    inputs = v["inputs"]
    slots = v["score_slots"]
    th = v["threshold"]
    params = ", ".join(f"{k}={p}" for k, p in th["params"].items())
    lines = [
        f"{', '.join(inputs)} ({len(inputs) * window} inputs: "
        f"{inputs[0]}[t-{window - 1}] … {inputs[-1]}[t])",
        f"hidden {v['hidden']}, latent {v['latent_dim']}, L = {v['mc_samples']} MC draws, "
        + ("whole window scored" if slots is None else f"newest {slots} slots scored")
        + (
            f", predicted from the older {window - slots} (the encoder does not see them)"
            if v.get("predict_scored")
            else ""
        )
        + (
            f"; each metric judged under a Student-t of {v['student_t_dof']:g} degrees of "
            "freedom too"
            if v.get("student_t_dof") is not None
            else ""
        ),
        f"calibrated at {th['value']:.4f} nats ({th['method']}"
        + (f", {params}" if params else "")
        + f"; {_known(v['training']['calibration_windows'])} windows)",
    ]
    unlearned = v["unlearned_channels"]
    if unlearned is None:
        lines.append("unlearned channels: unknown (not recorded in this bundle)")
    elif unlearned:
        seen = dict(zip(inputs, v["channel_slots"], strict=True))
        lines.append(
            "not learned: "
            + ", ".join(f"{c} ({seen[c]} of {v['slots_needed']} slots seen)" for c in unlearned)
            + ", masked when scored"
        )
    else:
        lines.append("every channel learned")
    lines.append(f"{v['model_file']} sha256 {v['model_sha256'][:16]}… (verified)")
    return "\n".join(lines)


def report(
    model: Path = typer.Option(..., "--model", help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", help="Directory for the PNG files."),
    data: Path | None = typer.Option(
        None, "--data", help="Rows to plot scores and latent means of; - reads standard input."
    ),
    label_column: str | None = typer.Option(None, "--label-column"),
    normal_value: str = typer.Option("0", "--normal-value"),
    as_json: bool = typer.Option(
        False, "--json", help="Print the written files as a JSON array on stdout."
    ),
) -> None:
    """Pictures: training curves, score histogram with threshold, 2-D latent map."""
    import numpy as np

    from vaeguard.report import write_report

    if label_column and data is None:
        raise usage("--label-column needs --data", "--label-column")
    path = input_file(data) if data is not None else None
    detector = load_model(model, "report")
    table = labels = None
    if path is not None:
        table = _load_table(path)
        if label_column:
            labels = np.asarray(_labels(table, label_column, normal_value))
    written = [str(p) for p in write_report(detector, out, table, labels)]
    if as_json:
        print_json(written)
    else:
        for p in written:
            typer.echo(p)


def register(app: typer.Typer) -> None:
    for command in (train, score, evaluate, generate, interpolate, inspect, report):
        app.command()(command)
