"""Does the daemon keep up with the consumer that feeds it? Throughput, latency and memory.

Three measurements against one embedded broker (Tansu), in one run:

* **throughput**: steady-state records/s of the daemon (in-process `Daemon`, the same code as
  `vaeguard run`: decode, dead-letter checks, VAE scoring, explanations, score records produced
  with acks=all, alert layer, offset commits) next to a **bare kafka-python consumer** that only
  decodes each record's JSON, both reading the same pre-produced records of the same topic.
  Steady state = the rate between 10% and 90% of the records (start-up, model loading and the
  last partial batches excluded). Target: the daemon ≥ 0.8 × the bare consumer.
* **latency**: records produced at a paced rate (default 1,000 records/s) to a running daemon;
  latency = time from the producer's send to the score record's arrival at a consumer of the
  output topic (both in a separate helper process, one clock). Target: p99 < 250 ms.
* **scale-out**: `vaeguard run` and `vaeguard run --workers 2` as subprocesses, rates from the
  group's committed offsets, the window starting once every worker holds partitions (after the
  start-up and the rebalance); one worker is also run with one TensorFlow thread, and the better
  one-worker rate is the peer. The CPU seconds of the broker, the supervisor, each worker, this
  harness and the whole machine are sampled from /proc in the window. The records go to the
  partitions by host (the k-th host to partition k mod partitions) so every partition holds an
  equal share.
* **memory**: peak RSS of the process running the daemon (it also hosts the harness around it:
  an upper bound). Target: < 1 GB.

The model is a VAE trained (in a child process, so its training memory is not counted) on the
synthetic host workload of `vaeguard.synthetic` (7 metrics), with the detector's defaults
(L = 16 Monte-Carlo draws). Optional sweeps over the batch settings (``--sweep``) informed the
defaults of ``scoring.batch_max_records`` / ``batch_max_wait_ms``.

Run: ``python benchmarks/throughput.py [--records 60000] [--partitions 4] [--rate 1000]
[--seconds 20] [--repeats 2] [--sweep]``; prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

from vaeguard.broker import create_topics

#: Hosts of the synthetic workload: a multiple of the partitions, so that every partition holds
#: the same number of records (see `produce_all`).
FEATURES_ENTITIES = 8


# -- data and model ------------------------------------------------------------------------------


def make_records(n: int, seed: int = 3) -> list[tuple[bytes, bytes]]:
    """(key, JSON value) pairs of the synthetic host workload, normal and with incidents."""
    from vaeguard.synthetic import Workload

    workload = Workload(entities=FEATURES_ENTITIES, seed=seed)
    ticks = -(-n // FEATURES_ENTITIES)
    start = 6 * workload.ticks_per_day
    incidents = workload.schedule(start, ticks, per_entity=max(1, ticks // 2000))
    out = []
    for _tick, records in workload.stream(start, ticks, incidents, seed=seed + 1):
        for r in records:
            out.append((str(r["key"]).encode(), json.dumps(r, separators=(",", ":")).encode()))
    return out[:n]


def train_bundle(path: str, seed: int = 3) -> None:
    """Child process: fit a VAE on four normal days of the workload and save the bundle."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from vaeguard._quiet import import_keras

    import_keras()
    from vaeguard.detector import VAEDetector
    from vaeguard.synthetic import Workload

    workload = Workload(entities=FEATURES_ENTITIES, seed=seed)
    day = workload.ticks_per_day
    history = workload.history(0, 4 * day)
    calibration = workload.history(4 * day, 2 * day, seed=seed + 5)
    det = VAEDetector(epochs=15, hidden=(64, 32), latent_dim=4, seed=0).fit(history)
    det.calibrate(calibration, method="spot", risk=1e-4)  # as `vaeguard demo` does
    det.save(path)


# -- Kafka helpers -------------------------------------------------------------------------------


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    create_topics(bootstrap, {name: partitions})


def produce_all(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], partitions: int | None = None
) -> None:
    """Produce the records; with ``partitions``, the k-th distinct key goes to partition
    k mod partitions (keys keep their order and the partitions hold equal shares; hashed keys
    put 5/6 of 6 hosts' records into 2 of 4 partitions, which capped what a second group member
    could take over)."""
    from kafka import KafkaProducer

    order: dict[bytes, int] = {}

    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=512 * 1024
    )
    try:
        for key, value in records:
            part = None
            if partitions:
                part = order.setdefault(key, len(order)) % partitions
            producer.send(topic, value, key=key, partition=part)
        producer.flush(timeout=300)
    finally:
        producer.close(timeout=10)


def steady_rate(timeline: list[tuple[float, int]], total: int) -> float:
    """records/s between the moments 10% and 90% of ``total`` had been processed."""
    lo, hi = 0.1 * total, 0.9 * total
    t_lo = next(t for t, n in timeline if n >= lo)
    n_lo = next(n for t, n in timeline if n >= lo)
    t_hi, n_hi = next((t, n) for t, n in timeline if n >= hi)
    return (n_hi - n_lo) / (t_hi - t_lo) if t_hi > t_lo else float("nan")


def bare_consumer(bootstrap: str, topic: str, total: int, max_records: int) -> float:
    """The peer: a kafka-python consumer in a group that only decodes each record's JSON."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bare-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=max_records,
    )
    loads = json.loads
    count = 0
    timeline = []
    deadline = time.monotonic() + 600
    try:
        while count < total and time.monotonic() < deadline:
            for messages in consumer.poll(timeout_ms=200, max_records=max_records).values():
                for m in messages:
                    loads(m.value)
                count += sum(1 for _ in messages)
            timeline.append((time.perf_counter(), count))
    finally:
        consumer.close()
    if count < total:
        raise RuntimeError(f"the bare consumer read only {count} of {total} records")
    return steady_rate(timeline, total)


def consume_produce(bootstrap: str, topic: str, total: int, max_records: int) -> float:
    """A second peer: the daemon's Kafka I/O alone. Consume, decode, and produce one small JSON
    message per record (acks=all, flushed per poll, committed), no scoring: what kafka-python
    itself allows a one-output-per-input daemon to reach."""
    from kafka import KafkaConsumer, KafkaProducer

    group = f"io-{uuid.uuid4().hex[:8]}"
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=max_records,
    )
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=256 * 1024
    )
    loads, dumps = json.loads, json.dumps
    count = 0
    timeline = []
    deadline = time.monotonic() + 600
    try:
        while count < total and time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200, max_records=max_records)
            for messages in batch.values():
                for m in messages:
                    obj = loads(m.value)
                    out = {"key": obj.get("key"), "score": 0.0, "offset": m.offset}
                    producer.send(f"{group}.out", dumps(out).encode(), key=m.key)
                count += len(messages)
            if batch:
                producer.flush()
                consumer.commit()
            timeline.append((time.perf_counter(), count))
    finally:
        consumer.close()
        producer.close(timeout=10)
    if count < total:
        raise RuntimeError(f"the consume-produce peer read only {count} of {total} records")
    return steady_rate(timeline, total)


def daemon_settings(
    bootstrap: str,
    bundle: str,
    topic: str,
    group: str,
    workdir: Path,
    output_mode: str = "all",
    **scoring,
):
    from vaeguard.config import Settings

    return Settings.model_validate(
        {
            "output": {"mode": output_mode},
            "kafka": {
                "bootstrap_servers": bootstrap,
                "input_topics": [topic],
                "output_topic": f"{group}.scores",
                "dlq_topic": f"{group}.dlq",
                "group_id": group,
            },
            "model": {"path": bundle, "device": "cpu", "reload_interval_s": 0},
            "scoring": scoring,
            "http": {"enabled": False},
            # Alerts of the incidents go to a JSONL file (the log sink would write to stdout).
            "alerts": {
                "spool_dir": str(workdir / "spool"),
                "sinks": [{"name": "file", "type": "file", "path": str(workdir / "alerts.jsonl")}],
            },
            "shutdown_grace_s": 30,
        }
    )


class RunningDaemon:
    """A `Daemon` on a thread of this process, with a timeline of records processed."""

    def __init__(self, settings):
        from vaeguard.daemon.app import Daemon

        self.timeline: list[tuple[float, int]] = []
        self.count = 0
        self.daemon = Daemon(settings, on_batch=self._on_batch)
        self.thread = threading.Thread(target=self._run, name="bench-daemon", daemon=True)
        self.error: BaseException | None = None

    def _on_batch(self, scored, dead) -> None:
        self.count += len(scored) + len(dead)
        self.timeline.append((time.perf_counter(), self.count))

    def _run(self) -> None:
        try:
            self.daemon.run()
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> RunningDaemon:
        self.thread.start()
        return self

    def wait_count(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.count < n:
            if self.error is not None:
                raise self.error
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the daemon processed {self.count} of {n} records")
            time.sleep(0.05)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.error is not None:
                raise self.error
            pipeline = self.daemon.pipeline
            if pipeline is not None and pipeline.readiness()[0]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon did not become ready")
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self.daemon.stop("benchmark done")
        self.thread.join(60)


def daemon_throughput(bootstrap, bundle, topic, total, workdir, output_mode="all", **scoring):
    """(steady-state records/s, seconds per stage of the record path, records processed)."""
    group = f"thr-{uuid.uuid4().hex[:8]}"
    settings = daemon_settings(bootstrap, bundle, topic, group, workdir, output_mode, **scoring)
    with RunningDaemon(settings) as d:
        d.wait_count(total, timeout=900)
        stages = dict(d.daemon.pipeline.stats.stage_seconds)
    return steady_rate(d.timeline, total), stages, d.count


# -- `vaeguard run` as an operator runs it: subprocesses, rates from the committed offsets ------


def run_env(bootstrap, bundle, topic, group, workdir, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAEGUARD_")}
    env.update(
        VAEGUARD_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
        VAEGUARD_KAFKA__INPUT_TOPICS=json.dumps([topic]),
        VAEGUARD_KAFKA__OUTPUT_TOPIC=f"{group}.scores",
        VAEGUARD_KAFKA__DLQ_TOPIC=f"{group}.dlq",
        VAEGUARD_KAFKA__GROUP_ID=group,
        VAEGUARD_KAFKA__GROUP_INSTANCE_ID=group,
        VAEGUARD_MODEL__PATH=bundle,
        VAEGUARD_MODEL__DEVICE="cpu",
        VAEGUARD_MODEL__RELOAD_INTERVAL_S="0",
        VAEGUARD_HTTP__PORT="0",
        VAEGUARD_LOGGING__LEVEL="WARNING",
        VAEGUARD_ALERTS__SPOOL_DIR=str(workdir / f"spool-{group}"),
        VAEGUARD_ALERTS__SINKS=json.dumps(
            [{"name": "file", "type": "file", "path": str(workdir / f"alerts-{group}.jsonl")}]
        ),
        **{k: str(v) for k, v in extra.items()},
    )
    return env


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far; nan once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores; /proc/stat less idle, iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / _CLK_TCK


def _all_assigned(port: int, workers: int, n_parts: int) -> bool:
    """Whether /readyz shows every worker holding partitions and all ``n_parts`` held."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as exc:  # 503 while not ready: the body still tells
        body = json.loads(exc.read() or b"{}")
    except (OSError, ValueError):
        return False
    held = [w["partitions_assigned"] for w in body.get("workers", [])] or [
        body.get("partitions_assigned", 0)
    ]
    return len(held) == workers and all(held) and sum(held) == n_parts


def subprocess_throughput(
    bootstrap, bundle, topic, total, workdir, workers: int, broker_pid: int | None = None,
    extra_env: dict[str, str] | None = None,
) -> dict:  # fmt: skip
    """`vaeguard run [--workers N]` on the pre-produced topic; records/s from the group's
    committed offsets (what an operator's lag dashboard sees), peak RSS of each worker, and
    where the CPU went between 10% and 90% of the records: cores used by the broker, the
    supervisor, each worker, this harness and the whole machine (so also anything else)."""
    import socket
    import subprocess

    from kafka import KafkaConsumer, TopicPartition

    group = f"sub{workers}-{uuid.uuid4().hex[:8]}"
    with socket.socket() as sock:  # a free port for the ops endpoint (its /readyz)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = run_env(bootstrap, bundle, topic, group, workdir, **(extra_env or {}))
    env.update(VAEGUARD_HTTP__HOST="127.0.0.1", VAEGUARD_HTTP__PORT=str(port))
    # Dynamic members, the supervisor's default: with static instance ids a two-worker group on
    # the embedded Tansu broker once stalled for good after its first rebalance (UnknownMemberId).
    env.pop("VAEGUARD_KAFKA__GROUP_INSTANCE_ID", None)
    args = [sys.executable, "-m", "vaeguard.cli.main", "run"]
    if workers > 1:
        args += ["--workers", str(workers)]
    started = time.perf_counter()
    proc = subprocess.Popen(
        args,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / f"{group}.log", "wb"),  # noqa: SIM115
    )
    check = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    partitions = [TopicPartition(topic, p) for p in sorted(check.partitions_for_topic(topic))]
    n_parts = len(partitions)
    timeline = []
    all_assigned = None  # when every worker held partitions and together all of them
    cpu: list[dict] = []  # one sample per timeline point: role -> CPU seconds so far
    rss: dict[int, float] = {}
    deadline = time.monotonic() + 300
    try:
        count = 0
        while count < total and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"vaeguard run exited with {proc.returncode}")
            count = sum(check.committed(tp) or 0 for tp in partitions)
            timeline.append((time.perf_counter(), count))
            if all_assigned is None and _all_assigned(port, workers, n_parts):
                all_assigned = timeline[-1][0]
            kids = _children(proc.pid) if workers > 1 else []
            sample = {"harness": sum(os.times()[:2]), "machine": _machine_busy_s()}
            if broker_pid is not None:
                sample["broker"] = _cpu_s(broker_pid)
            if workers > 1:
                sample["supervisor"] = _cpu_s(proc.pid)
                for k, pid in enumerate(sorted(kids)):
                    sample[f"worker {k}"] = _cpu_s(pid)
            else:
                sample["worker 0"] = _cpu_s(proc.pid)
            cpu.append(sample)
            for pid in [proc.pid, *kids]:
                rss[pid] = max(rss.get(pid, 0.0), _peak_rss_mb(pid))
            time.sleep(0.2)  # sampling period of the committed offsets
        if count < total:
            raise RuntimeError(f"`vaeguard run` committed {count} of {total} records")
    finally:
        check.close()
        proc.terminate()
        proc.wait(60)
    worker_rss = [v for pid, v in rss.items() if workers == 1 or pid != proc.pid]
    # The steady-state window: from 10% of the records, but not before every worker has its
    # partitions (the start-up and the group's rebalance are not steady state), to 90%.
    t_all = all_assigned if all_assigned is not None else float("inf")
    i_lo = next(i for i, (t, n) in enumerate(timeline) if n >= 0.1 * total and t >= t_all)
    i_hi = next(i for i, (_, n) in enumerate(timeline) if n >= 0.9 * total)
    window = timeline[i_hi][0] - timeline[i_lo][0]
    cores = {
        role: (cpu[i_hi][role] - cpu[i_lo].get(role, 0.0)) / window
        for role in cpu[i_hi]
        if window > 0
    }
    n_lo = timeline[i_lo][1]
    return {
        "rate": (timeline[i_hi][1] - n_lo) / window,
        "rate_from_10pct": steady_rate(timeline, total),  # the earlier definition
        "window_from_pct": 100 * n_lo / total,
        "all_assigned_s": (all_assigned or float("nan")) - started,
        "rss": worker_rss,
        "cores": cores,  # CPU seconds per wall second inside the window (1.0 = one core)
        "window_s": window,
        "first_commit_s": next(t for t, n in timeline if n > 0) - started,
        "window_start_s": timeline[i_lo][0] - started,
    }


# -- latency (the paced producer and the output reader run in a helper process) -----------------


def paced_latency(
    bootstrap: str, topic: str, out_topic: str, rate: float, seconds: float, q
) -> None:
    """Child process: produce at ``rate``/s for ``seconds``; time each record to its score."""
    from kafka import KafkaConsumer, KafkaProducer

    records = make_records(int(rate * seconds), seed=11)
    reader = KafkaConsumer(
        out_topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="latest",
        enable_auto_commit=False,
        fetch_max_wait_ms=5,
    )
    while not reader.assignment():
        reader.poll(timeout_ms=100)
    reader.seek_to_end()
    reader.poll(timeout_ms=100)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
    sent_at: dict[str, float] = {}
    arrived: dict[str, float] = {}
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set() or len(arrived) < len(sent_at):
            for messages in reader.poll(timeout_ms=20).values():
                now = time.perf_counter()
                for m in messages:
                    # Only this run's records count (the reader may also see earlier ones).
                    k = m.key.decode() + "|" + str(json.loads(m.value)["ts"])
                    if k in sent_at:
                        arrived.setdefault(k, now)
            if stop.is_set() and time.perf_counter() > stop_at[0] + 30:
                return

    stop_at = [0.0]
    reader_thread = threading.Thread(target=read, daemon=True)
    reader_thread.start()
    started = time.perf_counter()
    for i, (key, value) in enumerate(records):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        # A unique ts per record identifies its score record (the daemon copies ts over).
        ts = 1_700_000_000_000 + i
        value = value[:-1] + b',"ts":' + str(ts).encode() + b"}"
        sent_at[key.decode() + "|" + str(ts)] = time.perf_counter()
        producer.send(topic, value, key=key)
    producer.flush(timeout=60)
    achieved = len(records) / (time.perf_counter() - started)
    stop_at[0] = time.perf_counter()
    stop.set()
    reader_thread.join(60)
    producer.close(timeout=10)
    reader.close()
    latencies = [arrived[k] - t for k, t in sent_at.items() if k in arrived]
    q.put(
        {"sent": len(sent_at), "received": len(latencies), "rate": achieved, "latencies": latencies}
    )


def daemon_latency(bootstrap, bundle, topic, rate, seconds, workdir, **scoring) -> dict:
    """`vaeguard run` in its own process, the paced producer and the output reader in another:
    the latency an operator sees."""
    import subprocess

    from kafka import KafkaConsumer

    group = f"lat-{uuid.uuid4().hex[:8]}"
    env = run_env(
        bootstrap,
        bundle,
        topic,
        group,
        workdir,
        VAEGUARD_SCORING__BATCH_MAX_RECORDS=scoring["batch_max_records"],
        VAEGUARD_SCORING__BATCH_MAX_WAIT_MS=scoring["batch_max_wait_ms"],
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "vaeguard.cli.main", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / f"{group}.log", "wb"),  # noqa: SIM115
    )
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    try:
        # Warm-up: the first batches compile the scoring graph.
        warm = make_records(2000, seed=5)
        produce_all(bootstrap, topic, warm)
        reader = KafkaConsumer(
            f"{group}.scores", bootstrap_servers=bootstrap, auto_offset_reset="earliest"
        )
        seen, deadline = 0, time.monotonic() + 180
        while seen < len(warm) and time.monotonic() < deadline:
            seen += sum(len(v) for v in reader.poll(timeout_ms=200).values())
        reader.close()
        if seen < len(warm):
            raise RuntimeError("the daemon did not score the warm-up records")
        child = ctx.Process(
            target=paced_latency, args=(bootstrap, topic, f"{group}.scores", rate, seconds, q)
        )
        child.start()
        result = q.get(timeout=seconds + 180)
        child.join(30)
    finally:
        proc.terminate()
        proc.wait(60)
    return _latency_summary(result)


def broker_latency(bootstrap, topic, rate, seconds) -> dict:
    """The latency peer: the same paced producer and reader, the reader on the input topic
    itself: what the broker and kafka-python take from produce to fetch, without a daemon."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    child = ctx.Process(target=paced_latency, args=(bootstrap, topic, topic, rate, seconds, q))
    child.start()
    result = q.get(timeout=seconds + 180)
    child.join(30)
    return _latency_summary(result)


def _latency_summary(result: dict) -> dict:
    lat = np.asarray(result["latencies"]) * 1000
    return {
        "sent": result["sent"],
        "received": result["received"],
        "rate": result["rate"],
        "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "max": float(lat.max()) if len(lat) else float("nan"),
    }


def split_score(bundle: str, records, batch: int = 2000, passes: int = 3) -> dict[str, float]:
    """Seconds per record of the score step's parts, in this process, over *every* record of
    the run in batches of ``batch`` (the stream's anomalous share varies along it: its first
    2,000 records hold 16 % anomalous rows, the whole stream 1.4 %, and counterfactuals are
    computed for anomalous rows only). Each part's total is the best of ``passes`` passes.

    Parts: ``model`` (`score_matrix`: the reconstruction probability with the latent kNN term),
    ``counterfactuals`` (`counterfactual_matrix` on the anomalous rows), ``records`` (top
    contributions and the `ScoredRecord`s); ``anomalous``: the share of anomalous rows."""
    from vaeguard.daemon.pipeline import _settle_heap
    from vaeguard.ingest import decode
    from vaeguard.model.counterfactual import CANDIDATES
    from vaeguard.scored import Source
    from vaeguard.serving import Inbound, load_serving
    from vaeguard.serving.explain import score_records, top_contributions
    from vaeguard.serving.tabular import CLIP_SIGMAS
    from vaeguard.severity import DEFAULT_BANDS

    serving = load_serving(bundle, "bench")
    serving.warm_up()
    det = serving.detector
    center, scale = det.scaler_.center, det.scaler_.scale
    batches = []
    for start in range(0, len(records), batch):
        part = records[start : start + batch]
        items = [
            Inbound(decode(v, 1 << 20), Source("t", 0, start + i)) for i, (_, v) in enumerate(part)
        ]
        features = serving.featurize(items)
        x_in = np.clip(features.x, center - CLIP_SIGMAS * scale, center + CLIP_SIGMAS * scale)
        batches.append((items, features, x_in))
    _settle_heap()  # as the daemon does at each model swap: no full collections of this heap

    best = {"model": np.inf, "counterfactuals": np.inf, "records": np.inf}
    anomalous = 0
    for _ in range(passes):
        spent = dict.fromkeys(best, 0.0)
        anomalous = 0
        for items, features, x_in in batches:
            t0 = time.perf_counter()
            result = det.score_matrix(x_in, features.c)
            t1 = time.perf_counter()
            if result.is_anomaly.any():
                result = det.counterfactual_matrix(
                    x_in, features.c, base=result, k=3, candidates=max(CANDIDATES, 3)
                )
            t2 = time.perf_counter()
            contributions = top_contributions(
                result.contributions, features.x, result.expected, serving.feature_names, 3,
                score_drop=result.score_drop, blame=result.blame,
            )  # fmt: skip
            score_records(
                items, features.entities, features.timestamps, result.scores,
                det.threshold_, contributions, bands=DEFAULT_BANDS, model_version="bench",
            )  # fmt: skip
            t3 = time.perf_counter()
            spent["model"] += t1 - t0
            spent["counterfactuals"] += t2 - t1
            spent["records"] += t3 - t2
            anomalous += int(result.is_anomaly.sum())
        best = {k: min(best[k], spent[k]) for k in best}
    n = max(1, len(records))
    return {**{k: v / n for k, v in best.items()}, "anomalous": anomalous / n}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# -- main ------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=60_000, help="records for the throughput runs")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--rate", type=float, default=1000.0, help="paced rate of the latency run")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the latency run")
    p.add_argument("--repeats", type=int, default=2, help="throughput runs of each side")
    p.add_argument("--batch-max-records", type=int, default=None)
    p.add_argument("--batch-max-wait-ms", type=int, default=None)
    p.add_argument("--sweep", action="store_true", help="also time other batch sizes and max waits")
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.ERROR)
    from vaeguard.broker import EmbeddedBroker
    from vaeguard.config import ScoringSettings

    defaults = ScoringSettings()
    scoring = {
        "batch_max_records": args.batch_max_records or defaults.batch_max_records,
        "batch_max_wait_ms": (
            defaults.batch_max_wait_ms if args.batch_max_wait_ms is None else args.batch_max_wait_ms
        ),
    }
    workdir = Path(tempfile.mkdtemp(prefix="vaeguard-bench-"))
    try:
        bundle = str(workdir / "model")
        ctx = mp.get_context("spawn")
        trainer = ctx.Process(target=train_bundle, args=(bundle,))
        trainer.start()
        records = make_records(args.records)
        trainer.join()
        if trainer.exitcode != 0:
            raise RuntimeError("training the benchmark model failed")

        from vaeguard._quiet import import_keras

        import_keras()
        with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
            bs = broker.bootstrap_servers
            topic = "bench.in"
            create_topic(bs, topic, args.partitions)
            t0 = time.perf_counter()
            produce_all(bs, topic, records, args.partitions)
            produce_s = time.perf_counter() - t0

            bare, io_only, daemon, anomalies, one, one_1t, two = [], [], [], [], [], [], []
            bpid = broker.process.pid
            one_thread = {v: "1" for v in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS",
                                           "OMP_NUM_THREADS")}  # fmt: skip
            stages: dict[str, float] = {}
            staged = 0
            for _ in range(args.repeats):  # interleaved: every side sees the same load
                n = len(records)
                bare.append(bare_consumer(bs, topic, n, scoring["batch_max_records"]))
                io_only.append(consume_produce(bs, topic, n, scoring["batch_max_records"]))
                rate, seconds, count = daemon_throughput(bs, bundle, topic, n, workdir, **scoring)
                daemon.append(rate)
                for k, v in seconds.items():
                    stages[k] = stages.get(k, 0.0) + v
                staged += count
                anomalies.append(
                    daemon_throughput(bs, bundle, topic, n, workdir, "anomalies", **scoring)[0]
                )
                one.append(subprocess_throughput(bs, bundle, topic, n, workdir, 1, bpid))
                one_1t.append(
                    subprocess_throughput(bs, bundle, topic, n, workdir, 1, bpid, one_thread)
                )
                two.append(subprocess_throughput(bs, bundle, topic, n, workdir, 2, bpid))
            load_after_throughput = os.getloadavg()
            score_split = split_score(bundle, records)
            sweep = []
            if args.sweep:
                for size, wait in ((250, 20), (500, 20), (1000, 20), (2000, 20), (5000, 20)):
                    r = daemon_throughput(
                        bs, bundle, topic, len(records), workdir,
                        batch_max_records=size, batch_max_wait_ms=wait,
                    )[0]  # fmt: skip
                    sweep.append((size, wait, r))
            lat_topic = "bench.latency"
            create_topic(bs, lat_topic, args.partitions)
            latency = daemon_latency(
                bs, bundle, lat_topic, args.rate, args.seconds, workdir, **scoring
            )
            peer_topic = "bench.latency-peer"
            create_topic(bs, peer_topic, args.partitions)
            peer_latency = broker_latency(bs, peer_topic, args.rate, args.seconds)
            load_during_latency = os.getloadavg()[0]
            sweep_lat = []
            if args.sweep:
                for size, wait in ((2000, 10), (2000, 20), (2000, 50), (2000, 100)):
                    if (size, wait) == (scoring["batch_max_records"], scoring["batch_max_wait_ms"]):
                        continue
                    topic_s = f"bench.latency-{size}-{wait}"
                    create_topic(bs, topic_s, args.partitions)
                    r = daemon_latency(
                        bs, bundle, topic_s, args.rate, args.seconds, workdir,
                        batch_max_records=size, batch_max_wait_ms=wait,
                    )  # fmt: skip
                    sweep_lat.append((size, wait, r))
        rss = peak_rss_mb()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        json.dumps(
            {
                "bare": bare, "floor": io_only, "daemon_all": daemon, "daemon_anomalies": anomalies,
                "one_worker": one, "one_worker_1_thread": one_1t, "two_workers": two, "stages": stages, "staged": staged,
                "score_split": score_split, "latency": latency, "peer_latency": peer_latency,
                "rss": rss,
            },
            default=float,
        ),
        file=sys.stderr,
    )  # fmt: skip
    med = lambda xs: float(np.median(xs))  # noqa: E731
    bare_rate, io_rate, daemon_rate, anom_rate = (
        med(bare),
        med(io_only),
        med(daemon),
        med(anomalies),
    )
    one_rate, two_rate = med([r["rate"] for r in one]), med([r["rate"] for r in two])
    one_1t_rate = med([r["rate"] for r in one_1t])
    rss_worker = max(v for r in one + one_1t + two for v in r["rss"])

    def row(what, ours, peer, peer_label, target, ratio_min):
        ratio = ours / peer
        met = "yes" if ratio >= ratio_min else "no"
        print(
            f"| {what} | {ours:,.0f} | {peer:,.0f} ({peer_label}) | {target} "
            f"(measured {ratio:.2f}×) | {met} |"
        )

    print(
        f"## vaeguard daemon throughput, latency and memory\n\n"
        f"{len(records):,} records × 7 metrics ({sum(len(v) for _, v in records) / len(records):.0f} "
        f"bytes of JSON each) in {args.partitions} partitions of an embedded Tansu broker "
        f"(produced at {len(records) / produce_s:,.0f} records/s); batch_max_records="
        f"{scoring['batch_max_records']}, batch_max_wait_ms={scoring['batch_max_wait_ms']}; "
        f"scoring on the CPU; {os.cpu_count()} CPUs, Python {platform.python_version()}. "
        f"Medians of {args.repeats} interleaved runs each; every side reads the same records "
        f"of the same topic on the same broker.\n"
    )
    print("| measurement (steady-state records/s) | vaeguard | peer | target | met |")
    print("|---|---:|---|---|:-:|")
    row(
        "`output.mode: all`, one worker (in-process `Daemon`)",
        daemon_rate,
        io_rate,
        "floor: consume + decode + produce one message per record + commit, no scoring",
        "≥ 0.8 × floor",
        0.8,
    )
    row(
        "`output.mode: anomalies`, one worker (in-process `Daemon`)",
        anom_rate,
        bare_rate,
        "decode-only consumer",
        "≥ 0.6 × decode-only",
        0.6,
    )
    best_one, best_label = max(
        (one_rate, "`vaeguard run`, one worker, measured the same way"),
        (one_1t_rate, "`vaeguard run`, one worker with one TensorFlow thread, the faster one"),
    )
    row(
        "`vaeguard run --workers 2` (subprocesses; rate of the group's committed offsets once "
        "every worker holds partitions)",
        two_rate,
        best_one,
        best_label,
        "≥ 1.6 × one worker",
        1.6,
    )
    print(
        f"| produce→score latency p99 at {latency['rate']:,.0f} records/s (`vaeguard run` in its "
        f"own process, producer and reader in another) | {latency['p99']:.0f} ms "
        f"(p50 {latency['p50']:.0f}, max {latency['max']:.0f}) | {peer_latency['p99']:.0f} ms "
        f"(p50 {peer_latency['p50']:.0f}; produce→fetch of the input topic, no daemon) | "
        f"< 250 ms (goal < 100) | {'yes' if latency['p99'] < 250 else 'no'} |"
    )
    print(
        f"| score records received in the latency run | {latency['received']:,} of "
        f"{latency['sent']:,} | – | all | {'yes' if latency['received'] == latency['sent'] else 'no'} |"
    )
    print(
        f"| peak RSS per worker (`vaeguard run` processes) | {rss_worker:,.0f} MB | – | < 1024 MB "
        f"| {'yes' if rss_worker < 1024 else 'no'} |"
    )
    print(
        f"| peak RSS of the benchmark process (in-process daemon + harness) | {rss:,.0f} MB | – | – | – |"
    )
    print()
    la = load_after_throughput
    print(
        f"Load average after the throughput runs: {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} "
        f"(1 / 5 / 15 min); at the end of the latency runs (1 min): {load_during_latency:.2f}."
    )
    print(
        "Individual runs (records/s): daemon all " + ", ".join(f"{r:,.0f}" for r in daemon)
        + "; anomalies " + ", ".join(f"{r:,.0f}" for r in anomalies)
        + "; one worker " + ", ".join(f"{r['rate']:,.0f}" for r in one)
        + "; one worker, one TF thread " + ", ".join(f"{r['rate']:,.0f}" for r in one_1t)
        + "; two workers " + ", ".join(f"{r['rate']:,.0f}" for r in two)
        + "; decode-only " + ", ".join(f"{r:,.0f}" for r in bare)
        + "; floor " + ", ".join(f"{r:,.0f}" for r in io_only)
    )  # fmt: skip
    print(
        f"\n### Worker scaling: where the {os.cpu_count()} cores go (`vaeguard run`, medians; "
        "cores = CPU seconds per second of the steady-state window)\n"
    )
    print(
        "| run | records/s | window | broker | harness | supervisor | worker 0 | worker 1 "
        "| whole machine | machine − listed |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, runs in (
        ("one worker (TensorFlow's default pools)", one),
        ("one worker, one TensorFlow thread", one_1t),
        ("`--workers 2` (the supervisor's thread share per worker)", two),
    ):
        c = {k: med([r["cores"].get(k, float("nan")) for r in runs]) for k in runs[0]["cores"]}
        listed = sum(v for k, v in c.items() if k != "machine")
        cell = lambda k, c=c: f"{c[k]:.2f}" if k in c else "–"  # noqa: E731
        print(
            f"| {label} | {med([r['rate'] for r in runs]):,.0f} "
            f"| {med([r['window_s'] for r in runs]):.1f} s "
            f"| {cell('broker')} | {cell('harness')} | {cell('supervisor')} | {cell('worker 0')} "
            f"| {cell('worker 1')} | {cell('machine')} | {c['machine'] - listed:.2f} |"
        )
    print(
        "\nWindow starts (% of the records committed when every worker held partitions, or 10%): "
        + "; ".join(
            f"{name} " + ", ".join(f"{r['window_from_pct']:.0f}%" for r in runs)
            for name, runs in (("one", one), ("one, 1 thread", one_1t), ("two", two))
        )
        + ". Rates from 10% regardless (the earlier definition): two workers "
        + ", ".join(f"{r['rate_from_10pct']:,.0f}" for r in two)
        + "."
    )
    print(
        "Ratios within each repeat (the sides of one repeat run back to back): all / floor "
        + ", ".join(f"{d / f:.2f}" for d, f in zip(daemon, io_only, strict=True))
        + "; anomalies / decode-only "
        + ", ".join(f"{a / b:.2f}" for a, b in zip(anomalies, bare, strict=True))
        + "; two workers / one (TensorFlow's default pools) "
        + ", ".join(f"{t['rate'] / o['rate']:.2f}" for t, o in zip(two, one, strict=True))
        + "."
    )
    print(
        "\n### Where a record's microseconds go (`output.mode: all`, in-process daemon; "
        f"means over the {len(daemon)} runs)\n"
    )
    # The stage timers add up over every run, so the wall time is the runs' mean too (the
    # median run's alone left a negative rest when the runs' speeds differed).
    wall = float(np.mean([1e6 / r for r in daemon]))
    print("| stage | µs per record | share of the wall time per record |")
    print("|---|---:|---:|")
    parts = (
        ("model", "score: the model (reconstruction probability + latent kNN term)"),
        ("counterfactuals", "score: counterfactual explanations (anomalous rows only)"),
        ("records", "score: top contributions and score records"),
    )
    isolated = sum(score_split[k] for k, _ in parts)
    for stage in ("decode", "featurize", "score", "encode", "produce", "alert", "commit"):
        us = stages.get(stage, 0.0) / staged * 1e6
        if stage == "score":
            for key, label in parts:
                share = score_split[key] / isolated
                print(f"| {label} | {us * share:.1f} | {us * share / wall:.0%} |")
            continue
        print(f"| {stage} | {us:.1f} | {us / wall:.0%} |")
    accounted = sum(stages.values()) / staged * 1e6
    print(
        f"| poll, batching and the rest (wall − stages) | {wall - accounted:.1f} | {(wall - accounted) / wall:.0%} |"
    )
    print(f"| **wall time per record** (1 / steady-state rate) | **{wall:.1f}** | 100% |")
    print(
        "\nThe score stage is the daemon's own timer; its split is in proportion to the parts "
        "timed alone in this process over every record of the run, in 2,000-record batches: "
        + ", ".join(f"{k} {score_split[k] * 1e6:.1f} µs" for k, _ in parts)
        + f" per record ({isolated * 1e6:.1f} together, vs {stages.get('score', 0.0) / staged * 1e6:.1f}"
        " inside the daemon, beside its Kafka clients' threads); anomalous rows: "
        f"{score_split['anomalous']:.1%} of the records, "
        f"{score_split['counterfactuals'] / max(score_split['anomalous'], 1e-12) * 1e6:.0f} µs of "
        "counterfactuals each."
    )
    # What the first target leaves for scoring: the stages the floor does too (poll, decode,
    # produce, commit) cost what they cost here, the rest must fit in what is left.
    floor_wall = float(np.mean([1e6 / r for r in io_only]))
    target_wall = floor_wall / 0.8
    own = sum(stages.get(s, 0.0) for s in ("featurize", "score", "encode", "alert")) / staged * 1e6
    shared = wall - own
    model_us = stages.get("score", 0.0) / staged * 1e6 * score_split["model"] / isolated
    featurize_us = stages.get("featurize", 0.0) / staged * 1e6
    print(
        f"\nBudget at the first target: 0.8× the floor is {target_wall:.1f} µs per record. The "
        f"stages the floor has too (poll, decode, produce, commit) take {shared:.1f} µs per "
        f"record here ({floor_wall:.1f} µs is the floor's whole wall time), which leaves "
        f"{target_wall - shared:.1f} µs for featurize, score, encode and alert; they take "
        f"{own:.1f} µs (the model alone {model_us:.1f})."
    )
    bare_wall = float(np.mean([1e6 / r for r in bare]))
    print(
        f"Budget at the second target: 0.6× decode-only is {bare_wall / 0.6:.1f} µs per "
        f"record. The decode-only consumer's own wall time is {bare_wall:.1f} µs, and "
        f"featurizing ({featurize_us:.1f}) and the model ({model_us:.1f}), which "
        "`anomalies` mode runs on every record as `all` does, bring that to "
        f"{bare_wall + featurize_us + model_us:.1f} µs before any explanation, alert, "
        "score record or commit. (Both budgets: means over the runs.)"
    )
    if sweep:
        print("\n| batch_max_records | batch_max_wait_ms | daemon records/s |\n|---:|---:|---:|")
        for size, wait, r in sweep:
            print(f"| {size} | {wait} | {r:,.0f} |")
    if sweep_lat:
        print(
            "\n| batch_max_records | batch_max_wait_ms | p50 ms | p99 ms |\n|---:|---:|---:|---:|"
        )
        for size, wait, r in sweep_lat:
            print(f"| {size} | {wait} | {r['p50']:.0f} | {r['p99']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
