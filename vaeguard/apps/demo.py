"""`vaeguard demo`: the whole product in about a minute, on a laptop, with nothing to set up.

Embedded broker → synthetic hosts (vaeguard.synthetic) → a VAE trained on normal history →
the real daemon (in-process, same code as `vaeguard run`) catching up on a backlog and then
scoring a live stream with injected incidents → a live view of what it flags and why → a
summary graded against the incidents' ground truth. Everything lives in a temporary folder
that is removed at the end, and the broker is stopped, whatever happens.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vaeguard.synthetic import FEATURES, Incident, Workload

TOPIC = "demo.metrics"
SCORES = "demo.scores"
DLQ = "demo.dlq"
TICKS_PER_DAY = 480  # one simulated day = 480 ticks of 3 minutes
TICKS_PER_SECOND = 40  # live pace: 40 ticks/s → a simulated day every 12 s
TRAIN_DAYS, CALIBRATION_DAYS, BACKLOG_DAYS = 4, 2, 4
TRAIN_BUDGET_S = 15.0
#: A few malformed records in the live stream, to show the dead-letter topic at work.
POISON = (
    b'{"key": "host-03", "cpu_pct": NaN}',
    b'{"key": "host-01", "requests_per_s": "lots"',
    b"\xff\xfe not utf-8",
    b'{"key": "host-05", "cpu_pct": 12.0}',
)
#: The demo's model. Latency, error rate and load follow the CPU in these hosts (a queue, a
#: run queue): declared symptoms, so that a saturated CPU is blamed rather than the latency it
#: causes, which leaves the training range much further (`VAEDetector`'s ``symptoms``).
MODEL_PARAMS = {
    "epochs": 60,
    "hidden": (64, 32),
    "latent_dim": 4,
    "mc_samples": 32,
    "patience": 8,
    "seed": 0,
    "symptoms": ("latency_p99_ms", "error_rate_pct", "load1"),
}
SEVERITY_STYLE = {"warning": "yellow", "major": "dark_orange", "critical": "bold red"}
#: The metric each kind of incident changes first (`vaeguard.synthetic`): what an alert about it
#: should blame. The summary marks whether it did (benchmarks/attribution.py measures it).
ROOT_METRIC = {
    "cpu_saturation": "cpu_pct",
    "memory_leak": "mem_used_pct",
    "traffic_decoupling": "net_in_mbps",
    "stuck_sensor": "cpu_pct",
    "error_burst": "error_rate_pct",
}


@dataclass
class Sent:
    tick: int
    host: str
    at: float  # perf_counter when produced


@dataclass
class Episode:
    """Consecutive flagged ticks of one host: what an operator would see as one alert."""

    host: str
    first: int
    last: int
    severity: str
    score: float
    top: list[dict[str, Any]]
    records: int = 1
    incident: Incident | None = None


@dataclass
class DemoState:
    sent: dict[tuple[int, int], Sent] = field(default_factory=dict)
    scored: dict[tuple[int, int], dict] = field(default_factory=dict)
    arrivals: dict[tuple[int, int], float] = field(default_factory=dict)
    dead: Counter = field(default_factory=Counter)
    episodes: list[Episode] = field(default_factory=list)
    open_episode: dict[str, Episode] = field(default_factory=dict)
    produced: int = 0
    backlog: int = 0
    tick: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def sim_time(tick: int) -> str:
    minutes = tick * 24 * 60 // TICKS_PER_DAY
    return f"day {minutes // 1440 + 1} {minutes % 1440 // 60:02d}:{minutes % 60:02d}"


def run_demo(seconds: float = 35.0, entities: int = 6, seed: int = 7) -> None:
    from rich.console import Console

    console = Console()
    workdir = Path(tempfile.mkdtemp(prefix="vaeguard-demo-"))
    broker = daemon = None
    daemon_thread = None
    try:
        from vaeguard.broker import EmbeddedBroker

        with console.status("starting the embedded Kafka broker…"):
            broker = EmbeddedBroker(log_path=workdir / "broker.log").start()
            _create_topics(broker.bootstrap_servers)
        console.print(f"[green]✓[/] embedded Kafka broker on {broker.bootstrap_servers}")

        workload = Workload(entities=entities, seed=seed, ticks_per_day=TICKS_PER_DAY)
        model_dir = workdir / "model"
        info = _train(console, workload, model_dir)

        from vaeguard.config import Settings
        from vaeguard.daemon.app import Daemon
        from vaeguard.daemon.logs import configure_logging

        log_file = open(workdir / "daemon.log", "w", buffering=1, encoding="utf-8")  # noqa: SIM115
        configure_logging("INFO", stream=log_file)
        settings = Settings.model_validate(
            {
                "kafka": {
                    "bootstrap_servers": broker.bootstrap_servers,
                    "input_topics": [TOPIC],
                    "output_topic": SCORES,
                    "dlq_topic": DLQ,
                    "group_id": "vaeguard-demo",
                },
                "model": {"path": str(model_dir), "device": "auto", "reload_interval_s": 0},
                "http": {"port": 0},
                # Alerts are logged (to the daemon log in workdir); any spool stays in workdir.
                "alerts": {"spool_dir": str(workdir / "spool")},
                "shutdown_grace_s": 10,
            }
        )
        state = DemoState()
        producer = _producer(settings.kafka)
        start_tick = (TRAIN_DAYS + CALIBRATION_DAYS) * TICKS_PER_DAY
        backlog_ticks = BACKLOG_DAYS * TICKS_PER_DAY
        with console.status(f"writing a backlog of {BACKLOG_DAYS} normal days to {TOPIC}…"):
            for _tick, records in workload.stream(start_tick, backlog_ticks, seed=seed + 11):
                for r in records:
                    _send(producer, state, r)
            producer.flush()
        state.backlog = state.produced

        daemon = Daemon(settings)
        daemon_thread = threading.Thread(target=daemon.run, name="vaeguard-daemon", daemon=True)
        daemon_thread.start()
        collector = _Collector(settings.kafka, state)
        backlog_rate = _catch_up(console, daemon, collector, state)

        live_start = start_tick + backlog_ticks
        live_ticks = int(seconds * TICKS_PER_SECOND)
        incidents = workload.schedule(live_start, live_ticks, per_entity=2, lead_in=40)
        _live(
            console, workload, incidents, producer, collector, state, live_start, live_ticks, daemon
        )

        with console.status("waiting for the last score records…"):
            deadline = time.monotonic() + 30
            while len(state.scored) < state.produced - len(POISON) and time.monotonic() < deadline:
                collector.poll()
        stats = daemon.pipeline.stats if daemon.pipeline else None
        daemon.stop("demo finished")
        daemon_thread.join(15)
        collector.close()
        producer.close(timeout=5)
        _summary(console, state, incidents, info, backlog_rate, stats, live_start)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
    finally:
        if daemon is not None:
            daemon.stop("demo cleanup")
        if daemon_thread is not None:
            daemon_thread.join(15)
        if broker is not None:
            broker.stop()
        logging.getLogger().handlers.clear()
        shutil.rmtree(workdir, ignore_errors=True)
        console.print("[dim]broker stopped, temporary files removed[/]")


# -- setup ----------------------------------------------------------------------------------------


def _create_topics(bootstrap: str) -> None:
    from vaeguard.broker import create_topics

    create_topics(bootstrap, {TOPIC: 3, SCORES: 3, DLQ: 1})


def _train(console, workload: Workload, model_dir: Path) -> dict[str, Any]:
    """Fit on normal history (time-boxed), calibrate an EVT threshold on two more normal days."""
    with console.status("loading TensorFlow…"):
        from vaeguard._quiet import import_keras

        keras = import_keras()
        from vaeguard.detector import VAEDetector

    history = workload.history(0, TRAIN_DAYS * TICKS_PER_DAY)
    calibration = workload.history(
        TRAIN_DAYS * TICKS_PER_DAY, CALIBRATION_DAYS * TICKS_PER_DAY, seed=workload.seed + 5
    )
    rows = len(history[FEATURES[0]])
    started = time.monotonic()
    status = console.status("")

    class Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            elapsed = time.monotonic() - started
            status.update(
                f"training the VAE on {rows:,} normal records ({TRAIN_DAYS} simulated days): "
                f"epoch {epoch + 1}, loss {logs.get('loss', float('nan')):.3f}, {elapsed:.0f}s"
            )
            if elapsed > TRAIN_BUDGET_S:
                self.model.stop_training = True

    with status:
        det = VAEDetector(**MODEL_PARAMS).fit(history, callbacks=[Progress()])
        det.calibrate(calibration, method="spot", risk=1e-4)
        det.save(model_dir)
    seconds = time.monotonic() - started
    console.print(
        f"[green]✓[/] trained on {rows:,} records × {len(FEATURES)} metrics in {seconds:.0f}s "
        f"({det.training_info_['epochs_run']} epochs); threshold {det.threshold_:.2f} nats "
        f"(EVT, risk 1e-4, on {len(calibration[FEATURES[0]]):,} more normal records)"
    )
    return {"rows": rows, "seconds": seconds, "threshold": det.threshold_}


def _producer(kafka_settings):
    """The workload's producer, with the daemon's client settings (`KafkaSettings`)."""
    from kafka import KafkaProducer

    return KafkaProducer(
        **kafka_settings.producer_config(
            client_id="vaeguard-demo-workload", acks="all", linger_ms=5, batch_size=256 * 1024
        )
    )


def _send(producer, state: DemoState, record: dict[str, Any]) -> None:
    tick = int(record["tick"])
    host = str(record["key"])
    value = json.dumps({**record, "service": "checkout"}).encode()
    future = producer.send(TOPIC, value, key=host.encode())
    sent_at = time.perf_counter()

    def done(md, tick=tick, host=host, sent_at=sent_at):
        with state.lock:
            state.sent[(md.partition, md.offset)] = Sent(tick, host, sent_at)

    future.add_callback(done)
    state.produced += 1


class _Collector:
    """Reads score records and dead letters as they appear."""

    def __init__(self, kafka_settings, state: DemoState):
        from kafka import KafkaConsumer

        self.state = state
        self.consumer = KafkaConsumer(
            SCORES, DLQ, **kafka_settings.consumer_config(
                client_id="vaeguard-demo-collector", auto_offset_reset="earliest",
                enable_auto_commit=False, fetch_max_wait_ms=50,
            ),
        )  # fmt: skip

    def poll(self, timeout_ms: int = 50) -> list[dict]:
        now = time.perf_counter()
        fresh = []
        for tp, messages in self.consumer.poll(timeout_ms=timeout_ms, max_records=20_000).items():
            for m in messages:
                if tp.topic == DLQ:
                    reason = dict(m.headers).get("vaeguard.errors.reason", b"?").decode()
                    self.state.dead[reason] += 1
                    continue
                record = json.loads(m.value)
                src = (record["source"]["partition"], record["source"]["offset"])
                if src not in self.state.scored:
                    self.state.scored[src] = record
                    self.state.arrivals[src] = now
                    fresh.append(record)
        return fresh

    def close(self) -> None:
        self.consumer.close()


def _catch_up(console, daemon, collector: _Collector, state: DemoState) -> float:
    """Let the daemon score the backlog; returns its catch-up rate (records/s)."""
    first = last = None
    with console.status("starting the daemon (same code as `vaeguard run`)…") as status:
        deadline = time.monotonic() + 90
        while len(state.scored) < state.backlog and time.monotonic() < deadline:
            if daemon.pipeline is not None and daemon.pipeline.provider.failure is not None:
                raise daemon.pipeline.provider.failure
            fresh = collector.poll(100)
            if fresh:
                now = time.perf_counter()
                first = first or now
                last = now
                status.update(
                    f"catching up on the backlog: {len(state.scored):,} / {state.backlog:,} scored"
                )
    n = len(state.scored)
    rate = n / (last - first) if first and last and last > first else float("nan")
    flagged = sum(r["is_anomaly"] for r in state.scored.values())
    console.print(
        f"[green]✓[/] daemon caught up on {n:,} backlog records at {rate:,.0f} records/s; "
        f"{flagged} flagged ({flagged / max(1, n):.2%}) on normal data; ops endpoints on "
        f"http://127.0.0.1:{daemon.http_port}/metrics"
    )
    return rate


# -- the live phase ---------------------------------------------------------------------------


def _live(console, workload, incidents, producer, collector, state, start, ticks, daemon) -> None:
    from rich.live import Live

    stop = threading.Event()
    poison_at = {start + ticks * (k + 1) // (len(POISON) + 1): p for k, p in enumerate(POISON)}

    def stream() -> None:
        began = time.perf_counter()
        for i, (tick, records) in enumerate(
            workload.stream(start, ticks, incidents, seed=workload.seed + 17)
        ):
            if stop.is_set():
                break
            delay = began + i / TICKS_PER_SECOND - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            for r in records:
                r["ts"] = int(1_700_000_000_000 + tick * 180_000)
                _send(producer, state, r)
            if tick in poison_at:
                producer.send(TOPIC, poison_at[tick], key=b"poison")
                state.produced += 1
            state.tick = tick
        producer.flush()

    by_host: dict[str, list[Incident]] = defaultdict(list)
    for inc in incidents:
        by_host[inc.entity].append(inc)
    feeder = threading.Thread(target=stream, daemon=True)
    feeder.start()
    try:
        with Live(
            _render(state, incidents, daemon, start), console=console, refresh_per_second=8
        ) as live:
            while feeder.is_alive():
                _track(collector.poll(100), state, by_host)
                live.update(_render(state, incidents, daemon, start))
            _track(collector.poll(200), state, by_host)
            live.update(_render(state, incidents, daemon, start))
    finally:
        stop.set()
        feeder.join(10)


def _tick_of(state: DemoState, record: dict) -> tuple[int, str] | None:
    sent = state.sent.get((record["source"]["partition"], record["source"]["offset"]))
    return (sent.tick, sent.host) if sent else None


def _track(fresh: list[dict], state: DemoState, by_host: dict[str, list[Incident]]) -> None:
    """Group flagged records into per-host episodes (gaps of up to 3 ticks merge)."""
    for record in sorted(fresh, key=lambda r: r["source"]["offset"]):
        if not record["is_anomaly"]:
            continue
        where = _tick_of(state, record)
        if where is None:
            continue
        tick, host = where
        ep = state.open_episode.get(host)
        if ep is not None and tick - ep.last <= 3:
            ep.last = max(ep.last, tick)
            ep.records += 1
            if record["score"] > ep.score:
                ep.score, ep.severity, ep.top = (
                    record["score"],
                    record["severity"],
                    record["contributions"],
                )
            continue
        incident = next((i for i in by_host.get(host, []) if i.start - 3 <= tick < i.end + 3), None)
        ep = Episode(
            host,
            tick,
            tick,
            record["severity"],
            record["score"],
            record["contributions"],
            1,
            incident,
        )
        state.open_episode[host] = ep
        state.episodes.append(ep)


def _features_text(top: list[dict]) -> str:
    parts = []
    for c in top[:2]:
        parts.append(
            f"{c['feature']} {c['observed']:.4g} (exp {c['expected']:.4g}, {c['share']:.0%})"
        )
    return "; ".join(parts)


def _blamed_text(metric: str, root: str | None) -> str:
    if root is None:
        return metric
    return f"[green]✓ {metric}[/]" if metric == root else f"[yellow]✗ {metric}[/]"


def _render(state: DemoState, incidents, daemon, start: int):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    scored = len(state.scored)
    flagged = sum(1 for r in state.scored.values() if r["is_anomaly"])
    header = Text.assemble(
        ("live ", "bold"),
        (f"{sim_time(max(state.tick, start))}  ", "cyan"),
        f"produced {state.produced:,}  scored {scored:,}  flagged {flagged:,}  "
        f"dead-lettered {sum(state.dead.values())}  ",
        (f"(ops: http://127.0.0.1:{daemon.http_port}/metrics)", "dim"),
    )
    table = Table(expand=True, show_edge=False, pad_edge=False)
    table.add_column("when (sim)", no_wrap=True)
    table.add_column("host", no_wrap=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("recs", justify="right")
    table.add_column(
        "blamed metrics (observed, expected given the others, share of the explained score)"
    )
    table.add_column("injected incident", no_wrap=True)
    for ep in state.episodes[-12:]:
        truth = (
            Text(f"✓ {ep.incident.kind}", style="green")
            if ep.incident
            else Text("✗ false alarm", style="red")
        )
        table.add_row(
            sim_time(ep.first), ep.host, Text(ep.severity, style=SEVERITY_STYLE.get(ep.severity, "")),
            str(ep.records), _features_text(ep.top), truth,
        )  # fmt: skip
    pending = sum(1 for i in incidents if i.start > state.tick)
    active = [i for i in incidents if i.covers(state.tick)]
    footer = Text(
        f"incidents injected so far: {len(incidents) - pending} of {len(incidents)}"
        + (f"; now: {', '.join(f'{i.entity} {i.kind}' for i in active)}" if active else ""),
        style="dim",
    )
    return Group(header, table, footer)


# -- the verdict ------------------------------------------------------------------------------


def _summary(console, state, incidents, info, backlog_rate, stats, live_start) -> None:
    from rich.table import Table

    live = {}
    for src, record in state.scored.items():
        sent = state.sent.get(src)
        if sent is not None and sent.tick >= live_start:
            live[(sent.host, sent.tick)] = (record, src)
    labels = {key: any(i.entity == key[0] and i.covers(key[1]) for i in incidents) for key in live}
    flagged = {key: rec["is_anomaly"] for key, (rec, _) in live.items()}
    tp = sum(1 for k in live if flagged[k] and labels[k])
    fp = sum(1 for k in live if flagged[k] and not labels[k])
    fn = sum(1 for k in live if not flagged[k] and labels[k])
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")

    per_incident = Table(title="injected incidents", title_justify="left")
    columns = ("incident", "host", "duration", "detected", "delay", "flagged", "root metric")
    for col in (*columns, "blamed metric"):
        per_incident.add_column(col)
    detected = 0
    for inc in incidents:
        keys = [(inc.entity, t) for t in range(inc.start, inc.end) if (inc.entity, t) in live]
        hits = [k for k in keys if flagged[k]]
        blame = Counter(
            live[k][0]["contributions"][0]["feature"] for k in hits if live[k][0]["contributions"]
        )
        minutes = 24 * 60 // TICKS_PER_DAY
        if hits:
            detected += 1
            delay = f"{(hits[0][1] - inc.start) * minutes} min"
        per_incident.add_row(
            inc.kind.replace("_", " "),
            inc.entity,
            f"{(inc.end - inc.start) * minutes // 60}h{(inc.end - inc.start) * minutes % 60:02d}",
            "[green]yes[/]" if hits else "[red]no[/]",
            delay if hits else "–",
            f"{len(hits) / max(1, len(keys)):.0%}",
            ROOT_METRIC.get(inc.kind, "–"),
            _blamed_text(blame.most_common(1)[0][0], ROOT_METRIC.get(inc.kind)) if blame else "–",
        )
    true_episodes = sum(1 for ep in state.episodes if ep.incident is not None)
    event_precision = true_episodes / len(state.episodes) if state.episodes else float("nan")
    event_recall = detected / len(incidents) if incidents else float("nan")

    latencies = sorted(
        state.arrivals[src] - state.sent[src].at for _, src in live.values() if src in state.sent
    )
    p50 = np.percentile(latencies, 50) * 1000 if latencies else float("nan")
    p99 = np.percentile(latencies, 99) * 1000 if latencies else float("nan")
    backlog_flags = sum(
        1
        for src, r in state.scored.items()
        if r["is_anomaly"] and src in state.sent and state.sent[src].tick < live_start
    )

    totals = Table(title="summary", title_justify="left", show_header=False)
    totals.add_column(style="bold")
    totals.add_column()
    totals.add_row(
        "event level",
        f"recall {event_recall:.0%} ({detected}/{len(incidents)} incidents caught), "
        f"precision {event_precision:.0%} ({true_episodes}/{len(state.episodes)} alert episodes are real)",
    )
    totals.add_row(
        "record level",
        f"precision {precision:.1%}, recall {recall:.1%} "
        f"({tp} of {tp + fn} incident records flagged, {fp} false alarms in {len(live) - tp - fn:,} normal records)",
    )
    totals.add_row(
        "backlog (normal)",
        f"{backlog_flags} of {state.backlog:,} records flagged ({backlog_flags / max(1, state.backlog):.2%})",
    )
    totals.add_row(
        "throughput",
        f"{backlog_rate:,.0f} records/s catching up on the backlog; live stream "
        f"{TICKS_PER_SECOND * len({k[0] for k in live}):,} records/s, produce→score latency "
        f"p50 {p50:.0f} ms, p99 {p99:.0f} ms",
    )
    dead = ", ".join(f"{n} {reason}" for reason, n in state.dead.most_common()) or "none"
    totals.add_row(
        "counts",
        f"{state.produced:,} produced, {len(state.scored):,} scored, "
        f"{sum(r['is_anomaly'] for r in state.scored.values()):,} flagged, "
        f"{sum(state.dead.values())} dead-lettered ({dead})"
        + (
            f", {stats.duplicates_possible} possible duplicates"
            if stats and stats.duplicates_possible
            else ""
        ),
    )
    totals.add_row("model", f"VAE trained on {info['rows']:,} records in {info['seconds']:.0f}s")
    console.print()
    console.print(per_incident)
    console.print(totals)
