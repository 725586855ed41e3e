"""`vaeguard retrain`: one retraining run, for cron or a Kubernetes CronJob.

Exit codes (`vaeguard.cli.exit_codes.ExitCode`): 0 promoted, 3 refused (too little data, an
incident in the window, another run in progress), 4 rejected by the validation gate, 2 bad
settings, 1 another failure (Kafka unreachable, an unusable registry). The outcome is one JSON object
on stdout either way; the reason of a non-zero exit is one line on stderr.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vaeguard.errors import ConfigError, VaeguardError


def retrain(
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        help="YAML settings file (the daemon's); VAEGUARD_<SECTION>__<FIELD> environment "
        "variables override it. Uses kafka.*, model.path (a registry) and retrain.*.",
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Structured JSON logs on stderr (logging.level)."
    ),
) -> None:
    """Retrain the registry's current model on the recent window of the input topics; promote
    the candidate if it passes the validation gate."""
    from kafka.errors import KafkaError

    from vaeguard.config import load_settings
    from vaeguard.daemon.logs import configure_logging
    from vaeguard.registry import ModelRegistry, is_registry
    from vaeguard.retrain.job import RetrainJob, RetrainRefused, RetrainRejected
    from vaeguard.retrain.notify import json_safe, outcome_alert

    settings = load_settings(config)
    path = settings.model.path
    if path is None:
        raise ConfigError(
            "missing setting model.path: the registry to retrain (VAEGUARD_MODEL__PATH)"
        )
    options = settings.model.registry_options()
    if not is_registry(path, options["storage_options"]):
        raise ConfigError(
            f"invalid setting model.path: {path} is not a model registry "
            "(create one with `vaeguard train --registry DIR`)"
        )
    configure_logging(settings.logging.level if verbose else "ERROR")
    registry = ModelRegistry(path, **options)
    job = RetrainJob(
        registry,
        settings.retrain,
        settings.kafka.consumer_config(),
        settings.kafka.input_topics,
        max_record_bytes=settings.scoring.max_record_bytes,
        input_spec=settings.input.spec(),
    )
    try:
        outcome = job.run()
    except KafkaError as exc:
        raise VaeguardError(
            f"cannot read the training window from Kafka at {settings.kafka.bootstrap_servers}: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    typer.echo(json.dumps(json_safe(outcome.to_json()), default=str))
    if outcome.status == "refused":
        raise RetrainRefused(outcome.summary)
    if outcome.status == "rejected":
        if settings.alerts.sinks:
            _alert(settings, outcome_alert(outcome.summary, str(path), outcome.to_json()))
        raise RetrainRejected(outcome.summary)


def _alert(settings, alert) -> None:
    """Send the rejection through the configured sinks, like the daemon would."""
    from vaeguard.alerts.layer import build_alert_layer
    from vaeguard.retrain.notify import send_alert

    layer = build_alert_layer(
        settings.alerts,
        kafka_config=settings.kafka.client_config(),
        severity_bands=settings.scoring.bands,
    )
    try:
        if not send_alert(layer, alert):
            typer.echo("vaeguard: warning: the rejection alert could not be delivered", err=True)
    finally:
        layer.close()


def register(app: typer.Typer) -> None:
    app.command("retrain")(retrain)
