"""Helpers for daemon tests: `vaeguard run` as a real subprocess against the real broker."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import wait_for
from vaeguard.alerts.testing import wait_until
from vaeguard.broker import create_topics

FEATURES = ("a", "b", "c", "d")
#: Kafka clients opened by a test; closed after it (the broker waits for open connections).
_OPEN: list = []


@pytest.fixture(autouse=True)
def _close_clients():
    yield
    while _OPEN:
        with contextlib.suppress(Exception):
            _OPEN.pop().close()


def committed(bootstrap: str, group: str, topic: str, partitions) -> dict[int, int | None]:
    """The group's committed offsets of ``partitions`` of ``topic`` (None: nothing committed)."""
    from kafka import KafkaConsumer, TopicPartition

    check = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: check.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        check.close()


def kafka_env(monkeypatch, **settings: str) -> None:
    """Set the daemon's Kafka settings through the environment (``VAEGUARD_KAFKA__<NAME>``)."""
    for name, value in settings.items():
        monkeypatch.setenv(f"VAEGUARD_KAFKA__{name.upper()}", value)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    create_topics(bootstrap, {name: partitions})


def good_record(i: int) -> dict:
    """A normal-looking record for the small_bundle model (features a..d), entity h<i%5>."""
    row = _normal_rows()[i % len(_normal_rows())]
    return {
        **{f: float(v) for f, v in zip(FEATURES, row, strict=True)},
        "key": f"h{i % 5}",
        "id": i,
    }


_ROWS = None


def _normal_rows():
    global _ROWS
    if _ROWS is None:
        from tests.conftest import make_normal_data

        _ROWS = make_normal_data(n=500, seed=42).tolist()
    return _ROWS


class Producer:
    """Produces JSON records and remembers each partition's next offset."""

    def __init__(self, bootstrap: str):
        from kafka import KafkaProducer

        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        self.end: dict[int, int] = {}
        self.futures = []
        _OPEN.append(self)

    def send(self, topic: str, value: bytes | dict, key: bytes | None = None, headers=None):
        if isinstance(value, dict):
            value = json.dumps(value).encode()
        self.futures.append(self.producer.send(topic, value, key=key, headers=headers))

    def flush(self) -> dict[int, int]:
        self.producer.flush(timeout=60)
        for f in self.futures:
            md = f.get(timeout=60)
            self.end[md.partition] = max(self.end.get(md.partition, 0), md.offset + 1)
        self.futures = []
        return self.end

    def close(self) -> None:
        self.producer.close(timeout=10)


class Collector:
    """Reads a topic from the beginning (no group) and keeps every message."""

    def __init__(self, bootstrap: str, topic: str):
        from kafka import KafkaConsumer

        self.topic = topic
        self.consumer = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        self.messages = []
        _OPEN.append(self)

    def drain(self, timeout_ms: int = 200) -> list:
        for records in self.consumer.poll(timeout_ms=timeout_ms, max_records=10_000).values():
            self.messages.extend(records)
        return self.messages

    def json(self) -> list[dict]:
        return [json.loads(m.value) for m in self.messages]

    def wait_count(self, n: int, timeout: float, message: str) -> list:
        wait_for(lambda: len(self.drain()) >= n, timeout=timeout, interval=0.01, message=message)
        return self.messages

    def close(self) -> None:
        self.consumer.close()


def free_port() -> int:
    from vaeguard.broker import free_port as fp

    return fp()


class DaemonProcess:
    """`python -m vaeguard.cli.main run` with settings from the environment."""

    def __init__(self, tmp_path: Path, name: str, env: dict[str, str], config: Path | None = None):
        self.port = int(env.get("VAEGUARD_HTTP__PORT") or free_port())
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("VAEGUARD_")},
            "VAEGUARD_HTTP__PORT": str(self.port),
            "VAEGUARD_MODEL__RELOAD_INTERVAL_S": "0",
            **env,
        }
        self.log_path = tmp_path / f"{name}.log"
        self.config = config
        #: Extra arguments of `vaeguard run` (e.g. ["--workers", "2"]).
        self.start_args: list[str] = []
        self.proc: subprocess.Popen | None = None

    def start(self) -> DaemonProcess:
        args = [sys.executable, "-m", "vaeguard.cli.main", "run", *self.start_args]
        if self.config is not None:
            args += ["--config", str(self.config)]
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            args,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log_path, "ab"),  # noqa: SIM115 (the child owns it)
            cwd=Path(__file__).resolve().parents[2],
        )
        return self

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, ""

    def readyz(self) -> tuple[int, dict]:
        code, body = self.get("/readyz")
        return code, (json.loads(body) if body else {})

    def wait_ready(self, timeout: float = 40.0) -> None:
        try:
            wait_until(
                lambda: self.readyz()[0] == 200 or self.proc.poll() is not None,
                timeout,
                f"daemon ready on :{self.port}",
                interval=0.1,
            )
        except AssertionError as exc:
            pytest.fail(f"{exc}; /readyz says {self.readyz()}; log tail:\n{self.log()[-3000:]}")
        assert self.proc.poll() is None, f"daemon exited early:\n{self.log()[-3000:]}"

    def metric(self, name: str, labels: str = "") -> float:
        code, body = self.get("/metrics")
        assert code == 200
        return _metric_total(body, name, labels)

    def metric_or_zero(self, name: str) -> float:
        """`metric`, or 0 while the ops endpoint does not answer (the process starting, or too
        busy to answer within `get`'s timeout): one request, so a slow answer is not a failure."""
        code, body = self.get("/metrics")
        return _metric_total(body, name) if code == 200 else 0.0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_lines(self) -> list[dict]:
        out = []
        for line in self.log().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"raw": line})
        return out

    def terminate(self, timeout: float = 40.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def daemons(tmp_path):
    """Factory of daemon subprocesses; all are killed at the end of the test."""
    started: list[DaemonProcess] = []

    def make(name: str, env: dict[str, str], config: Path | None = None) -> DaemonProcess:
        d = DaemonProcess(tmp_path, name, env, config)
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()


def daemon_env(
    bootstrap: str, bundle: Path, topics: list[str], group: str, **extra
) -> dict[str, str]:
    out = {
        "VAEGUARD_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "VAEGUARD_KAFKA__INPUT_TOPICS": json.dumps(topics),
        "VAEGUARD_KAFKA__OUTPUT_TOPIC": f"{group}.scores",
        "VAEGUARD_KAFKA__DLQ_TOPIC": f"{group}.dlq",
        "VAEGUARD_KAFKA__GROUP_ID": group,
        "VAEGUARD_MODEL__PATH": str(bundle),
    }
    out.update({k: str(v) for k, v in extra.items()})
    return out


def _metric_total(body: str, name: str, labels: str = "") -> float:
    """The sum of a metric's samples in a Prometheus text body (those with ``labels`` in them)."""
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name + ("{" if labels else "")) or line.startswith(name + " "):
            if labels and labels not in line:
                continue
            total += float(line.rsplit(" ", 1)[1])
    return total
