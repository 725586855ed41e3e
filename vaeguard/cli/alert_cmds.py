"""Alerting commands: `vaeguard plugins list`, `vaeguard alert test`, `vaeguard spool list | flush`.

`spool list` shows dead letters too (alerts a sink can never deliver, kept beside the spool);
`spool flush --dead` puts them back in the spool and tries them again."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import typer

from vaeguard.alerts.text import one_line
from vaeguard.errors import ConfigError, VaeguardError

plugins = typer.Typer(help="Sink plugins (entry-point group vaeguard.sinks).", no_args_is_help=True)
alert = typer.Typer(help="Try the configured alert sinks.", no_args_is_help=True)
spool = typer.Typer(
    help="Alerts waiting in the durable spool for a sink to recover.", no_args_is_help=True
)

CONFIG = typer.Option(..., "--config", "-c", help="The daemon's YAML config (its alerts: section).")
JSON = typer.Option(False, "--json", help="Print a JSON array instead of a table.")


def _quiet_logs() -> None:
    """Per-attempt warnings are for the daemon's log; a command reports one outcome line."""
    if not logging.getLogger().handlers:
        logging.getLogger("vaeguard").addHandler(logging.NullHandler())
        logging.getLogger("kafka").addHandler(logging.NullHandler())


def _load(config: Path | None):
    """(alerts settings, kafka client config) from the config file and the environment."""
    _quiet_logs()
    from vaeguard.config import load_settings

    settings = load_settings(config)
    kafka = settings.kafka.client_config() if config is not None else None
    return settings.alerts, kafka


@plugins.command("list")
def list_plugins(as_json: bool = JSON) -> None:
    """Every installed sink type: built-in ones and plugins."""
    from vaeguard.alerts import discovery

    rows = [p.describe() for p in discovery.plugins()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title="sink types", title_justify="left")
    for column in ("name", "package", "version", "builtin", "description"):
        t.add_column(column)
    for r in rows:
        t.add_row(
            r["name"],
            r["package"] or "?",
            r["version"] or "?",
            "yes" if r["builtin"] else "",
            r.get("description") or f"[red]{r.get('error', '')}[/red]",
        )
    Console().print(t)


def synthetic_alert() -> Any:
    from vaeguard.alerts.model import Alert, AlertSource, FeatureContribution

    now = dt.datetime.now(dt.UTC)
    source = AlertSource(topic="vaeguard.test", partition=0, offset=0)
    return Alert(
        id=uuid.uuid4().hex,
        kind="test",
        stream="vaeguard.test",
        entity="alert-test",
        group={"topic": "vaeguard.test", "entity": "alert-test"},
        severity="warning",
        peak_severity="warning",
        score=13.0,
        peak_score=13.0,
        threshold=12.0,
        first_seen=now,
        last_seen=now,
        top_features=[
            FeatureContribution(
                feature="example", observed=2.0, expected=1.0, contribution=1.0, share=1.0
            )
        ],
        model_version="test",
        episode=source,
        source=source,
        labels={"test": "true"},
        summary="vaeguard test alert: if you can read this, the sink works",
    )


@alert.command("test")
def alert_test(
    config: Path = CONFIG,
    sink: str = typer.Option(..., "--sink", "-s", help="Name of the sink in alerts.sinks."),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as one JSON object."),
) -> None:
    """Send one synthetic alert through a sink, with its retries; exit 1 if not delivered."""
    from vaeguard.alerts.delivery import describe_error
    from vaeguard.alerts.layer import build_workers

    alerts_settings, kafka = _load(config)
    cfg = alerts_settings.sink(sink)
    worker = build_workers(alerts_settings, kafka_config=kafka, only=[sink], start=False)[sink]
    message = synthetic_alert()
    started = time.monotonic()
    try:
        attempts = worker.send_now([message])
    except Exception as exc:
        n = worker.delivery.retries + 1
        raise VaeguardError(
            f"sink {sink!r} ({cfg.type}) did not accept the test alert (up to {n} attempts): "
            f"{describe_error(exc)}"
        ) from None
    finally:
        worker.close(timeout=1.0)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "delivered": message.id,
                    "sink": sink,
                    "type": cfg.type,
                    "attempts": attempts,
                    "seconds": round(time.monotonic() - started, 3),
                }
            )
        )
        return
    typer.echo(
        f"delivered test alert {message.id} to sink {sink!r} ({cfg.type}) in "
        f"{time.monotonic() - started:.2f}s ({attempts} attempt{'s' if attempts != 1 else ''})"
    )


def _spool_dir(config: Path | None, spool_dir: Path | None) -> Path:
    if spool_dir is not None:
        return spool_dir
    alerts_settings, _ = _load(config)
    return alerts_settings.spool_dir


@spool.command("list")
def spool_list(
    config: Path | None = typer.Option(None, "--config", "-c", help="The daemon's YAML config."),
    spool_dir: Path | None = typer.Option(None, "--spool-dir", help="Overrides alerts.spool_dir."),
    as_json: bool = JSON,
) -> None:
    """Alerts waiting in the spool, per sink, oldest first, then each sink's dead letters."""
    from vaeguard.alerts.spool import Spool, dead_sinks, spooled_sinks

    directory = _spool_dir(config, spool_dir)
    rows: list[dict[str, Any]] = []
    listed = [(n, "pending") for n in spooled_sinks(directory)]
    listed += [(n, "dead") for n in dead_sinks(directory)]
    for name, state in listed:
        spool = Spool(directory, name)
        for e in spool.pending() if state == "pending" else spool.dead():
            rows.append(
                {
                    "sink": name,
                    "state": state,
                    "nid": e.nid,
                    "id": e.alert.id,
                    "status": e.alert.status,
                    "stream": e.alert.stream,
                    "entity": e.alert.entity,
                    "severity": e.alert.severity,
                    "spooled_at": dt.datetime.fromtimestamp(e.at, dt.UTC).isoformat(
                        timespec="seconds"
                    ),
                    "reason": e.reason,
                    "summary": e.alert.summary,
                }
            )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"the spool in {directory} is empty")
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    dead = sum(r["state"] == "dead" for r in rows)
    title = f"spool {directory}: {len(rows) - dead} alert(s) pending, {dead} dead-lettered"
    t = Table(title=title, title_justify="left")
    for column in ("sink", "state", "spooled", "status", "severity", "stream", "entity", "reason"):
        t.add_column(column)
    for r in rows:
        cells = ("sink", "state", "spooled_at", "status", "severity", "stream", "entity", "reason")
        # Alert text is data: one line each, and never taken as rich markup.
        t.add_row(*(escape(one_line(r[c] or "", 200)) for c in cells))
    Console().print(t)


@spool.command("flush")
def spool_flush(
    config: Path = CONFIG,
    sink: list[str] | None = typer.Option(
        None, "--sink", "-s", help="Only these sinks (repeatable)."
    ),
    dead: bool = typer.Option(
        False, "--dead", help="Requeue the dead letters too (e.g. after fixing the receiver)."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the outcome as one JSON object (per sink) on stdout."
    ),
) -> None:
    """Redeliver spooled alerts now (rejected ones too), with each sink's retries; exit 1 if
    any stay in the spool."""
    from vaeguard.alerts.layer import build_workers
    from vaeguard.alerts.spool import Spool, dead_sinks, spooled_sinks

    alerts_settings, kafka = _load(config)
    configured = {s.name for s in alerts_settings.sinks}
    directory = alerts_settings.spool_dir
    present = sorted(set(spooled_sinks(directory)) | set(dead_sinks(directory) if dead else ()))
    names = list(sink) if sink else present
    for name in names:
        if name not in configured:
            raise ConfigError(
                f"the spool holds alerts for sink {name!r}, which is not in alerts.sinks of {config}; "
                "they stay in the spool"
                if name in present
                else f"no sink named {name!r} in alerts.sinks of {config}"
            )
    wanted = [n for n in names if n in present]
    outcome: dict[str, dict[str, Any]] = {n: {} for n in wanted}
    say = (lambda text: None) if as_json else typer.echo
    if dead:
        for name in wanted:
            requeued = Spool(directory, name).revive()
            outcome[name]["requeued"] = requeued
            if requeued:
                say(f"{name}: {requeued} dead letter(s) requeued")
    if not wanted:
        if as_json:
            typer.echo(json.dumps({}))
        say(f"nothing to flush: the spool in {alerts_settings.spool_dir} is empty")
        return
    workers = build_workers(alerts_settings, kafka_config=kafka, only=wanted, start=False)
    left = buried = 0
    try:
        for name in wanted:
            worker = workers[name]
            delivered, remaining = worker.redeliver(include_parked=True, retry=True)
            left += remaining
            buried += worker.dead_lettered
            detail = f", {worker.dead_lettered} dead-lettered" if worker.dead_lettered else ""
            if remaining or worker.dead_lettered:
                detail += f"; last error: {worker.last_error}"
            say(f"{name}: {delivered} delivered, {remaining} still pending{detail}")
            outcome[name].update(
                delivered=delivered,
                pending=remaining,
                dead_lettered=worker.dead_lettered,
                last_error=None if worker.last_error is None else str(worker.last_error),
            )
    finally:
        for w in workers.values():
            w.close(timeout=1.0)
    if as_json:
        typer.echo(json.dumps(outcome))
    if left or buried:
        raise VaeguardError(
            f"{left} alert(s) are still in the spool"
            + (f", {buried} dead-lettered (`vaeguard spool list`)" if buried else "")
        )


def register(app: typer.Typer) -> None:
    app.add_typer(plugins, name="plugins")
    app.add_typer(alert, name="alert")
    app.add_typer(spool, name="spool")
