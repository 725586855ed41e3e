"""Daemon commands: `run` (the streaming daemon), `broker`, `demo`, `replay`."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path

import typer

from vaeguard.errors import VaeguardError

log = logging.getLogger("vaeguard.daemon")


def run(
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        help="YAML settings file (see config/vaeguard.yaml); VAEGUARD_<SECTION>__<FIELD> "
        "environment variables override it.",
    ),
    workers: str = typer.Option(
        "1",
        "--workers",
        help="Group members to run on this machine (N or auto = one per core), supervised: "
        "a dead or hung worker (supervisor.hang_timeout_s) is restarted, SIGTERM or SIGINT "
        "stops them all, one /healthz /readyz /metrics. "
        "Each worker's TensorFlow/OpenMP pools get cores // N threads (at least 1) unless "
        "TF_NUM_INTRAOP_THREADS, TF_NUM_INTEROP_THREADS or OMP_NUM_THREADS is set.",
    ),
) -> None:
    """Score Kafka topics continuously: records in, score records and dead letters out."""
    from vaeguard.daemon.supervisor import resolve_workers, worker_startup

    heartbeat = worker_startup()  # a supervisor's worker: die with it, beat from the loop
    from vaeguard.config import load_settings
    from vaeguard.daemon.logs import configure_logging

    n_workers = resolve_workers(workers)
    settings = load_settings(config)
    configure_logging(settings.logging.level)
    if n_workers > 1:
        _supervise(settings, config, n_workers)
        return
    from vaeguard.daemon.app import Daemon

    daemon = Daemon(settings, heartbeat=heartbeat)
    signals = {"count": 0}

    def on_signal(signum, frame) -> None:
        signals["count"] += 1
        name = signal.Signals(signum).name
        if signals["count"] > 1:
            log.error("second signal: exiting at once", extra={"signal": name})
            logging.shutdown()
            import os

            os._exit(1)
        daemon.stop(reason=name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    daemon.start_watchdog()
    try:
        daemon.run()
    except VaeguardError as exc:
        log.error("daemon stopped by an error", extra={"error": str(exc)})
        raise
    except Exception:
        log.exception("daemon crashed")
        raise typer.Exit(1) from None
    if daemon.retraining is not None and daemon.retraining.in_progress:
        # Everything is committed and closed; only an abandoned retraining run is left (nothing
        # half-done can become current). Leave without the interpreter's teardown, which can
        # abort the process (SIGABRT) under a model still training in another thread.
        log.info("exiting with a retraining run abandoned")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _supervise(settings, config: Path | None, n_workers: int) -> None:
    from vaeguard.daemon.supervisor import Supervisor

    supervisor = Supervisor(settings, config, n_workers)

    def on_signal(signum, frame) -> None:
        supervisor.stop(reason=signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = supervisor.run()
    if code:
        raise typer.Exit(code)


def broker(
    port: int = typer.Option(
        0, "--port", min=0, max=65535, help="Port on 127.0.0.1 (0 = any free port)."
    ),
) -> None:
    """Run the embedded Kafka-compatible broker (Tansu) on loopback until Ctrl-C."""
    from vaeguard.broker import EmbeddedBroker

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with EmbeddedBroker(port=port) as b:
        typer.echo(f"embedded Kafka broker listening on {b.bootstrap_servers} (Ctrl-C to stop)")
        typer.echo(f"  export VAEGUARD_KAFKA__BOOTSTRAP_SERVERS={b.bootstrap_servers}")
        while not stop.wait(0.5):
            if b.process is not None and b.process.poll() is not None:
                raise VaeguardError(f"the embedded broker exited with code {b.process.returncode}")
    typer.echo("broker stopped")


def replay(
    data: Path = typer.Option(
        ..., "--data", help="CSV or JSONL file of records; - reads standard input."
    ),
    topic: str = typer.Option(..., "--topic", help="Topic to produce to."),
    rate: float | None = typer.Option(
        None, "--rate", help="Records per second (default: as fast as possible)."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the outcome as one JSON object on stdout."
    ),
    bootstrap: str = typer.Option(
        "127.0.0.1:9092",
        "--bootstrap",
        envvar="VAEGUARD_KAFKA__BOOTSTRAP_SERVERS",
        help="Kafka bootstrap HOST:PORT.",
    ),
    key_field: str | None = typer.Option(
        None, "--key-field", help="Field whose value becomes the message key (the entity)."
    ),
) -> None:
    """Produce a file's rows to a topic as JSON, optionally paced (backfills, load tests)."""
    from vaeguard.apps.replay import file_rows
    from vaeguard.apps.replay import replay as do_replay
    from vaeguard.cli._common import input_file, print_json, usage

    if rate is not None and not (0 < rate < float("inf")):
        raise usage("a positive number of records per second expected", "--rate")
    import itertools

    rows = file_rows(input_file(data))
    first = next(rows)  # an empty or unreadable file is refused before connecting
    if key_field is not None and key_field not in first:
        raise usage(
            f"column {key_field!r} not found; columns are: {', '.join(first)}", "--key-field"
        )
    count, seconds = do_replay(
        itertools.chain([first], rows),
        topic,
        bootstrap,
        rate=rate,
        key_field=key_field,
        progress=lambda n: typer.echo(f"  {n} records…", err=True),
    )
    if as_json:
        print_json({"records": count, "topic": topic, "seconds": round(seconds, 3)})
        return
    typer.echo(
        f"produced {count} records to {topic} in {seconds:.1f}s ({count / max(seconds, 1e-9):,.0f} records/s)"
    )


def demo(
    seconds: float = typer.Option(
        45.0, "--seconds", min=1, help="How long to stream the live workload after training."
    ),
    entities: int = typer.Option(
        6, "--entities", min=1, max=1000, help="How many hosts the workload simulates."
    ),
    seed: int = typer.Option(7, "--seed", help="Seed of the synthetic workload."),
) -> None:
    """Watch vaeguard work end to end: broker, workload, training, daemon, live anomalies."""
    from vaeguard.apps.demo import run_demo

    run_demo(seconds=seconds, entities=entities, seed=seed)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("broker")(broker)
    app.command("replay")(replay)
    app.command("demo")(demo)
