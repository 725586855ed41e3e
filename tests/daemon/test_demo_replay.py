"""`vaeguard demo` end to end (short), `vaeguard replay` into the real broker, the workload."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from tests.daemon.conftest import Collector, unique
from vaeguard.synthetic import FEATURES, Workload

ROOT = Path(__file__).resolve().parents[2]


def _vaeguard(args: list[str], tmp: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAEGUARD_")}
    env.update({"TMPDIR": str(tmp), "COLUMNS": "120"})
    return subprocess.run(
        [sys.executable, "-m", "vaeguard.cli.main", *args],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def test_short_demo_runs_end_to_end_and_cleans_up(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    result = _vaeguard(["demo", "--seconds", "4", "--entities", "3"], tmp, timeout=300)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in out + result.stderr

    address = re.search(r"embedded Kafka broker on (127\.0\.0\.1):(\d+)", out)
    assert address, out[:2000]
    assert "trained on" in out and "daemon caught up on" in out
    # The live view shows flagged episodes with their top contributing metrics.
    assert re.search(r"host-0\d .*(warning|major|critical)", out), out[-4000:]
    # The summary grades the run against the injected incidents and reports throughput.
    for needle in ("summary", "event level", "recall", "precision", "records/s", "p99"):
        assert needle in out, f"{needle!r} missing from the summary:\n{out[-3000:]}"
    counts = re.search(r"([\d,]+) produced, ([\d,]+) scored", out)
    produced, scored = (int(n.replace(",", "")) for n in counts.groups())
    assert scored == produced - 4, "every good record scored (4 are poison)"
    assert "4 dead-lettered" in out

    # Nothing left behind: no temporary files, no broker process, the port is closed.
    assert "temporary files removed" in out
    assert list(tmp.iterdir()) == []
    host, port = address.group(1), int(address.group(2))
    assert _processes_mentioning(f"{host}:{port}") == []
    with socket.socket() as s:
        assert s.connect_ex((host, port)) != 0


def test_replay_produces_a_files_rows_as_json(broker, tmp_path):
    data = tmp_path / "rows.csv"
    data.write_text("host,cpu,mem,note\nweb-1,12.5,40,ok\nweb-2,nan,41.5,\nweb-1,13,,spike\n")
    topic = unique("replay")
    result = _vaeguard(
        ["replay", "--data", str(data), "--topic", topic, "--rate", "200",
         "--bootstrap", broker.bootstrap_servers, "--key-field", "host"],
        tmp_path,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"produced 3 records to {topic}" in result.stdout
    collector = Collector(broker.bootstrap_servers, topic)
    messages = collector.wait_count(3, timeout=30, message="the replayed rows")
    rows = [json.loads(m.value) for m in messages]
    assert [m.key.decode() for m in messages] == [r["host"] for r in rows]
    # Numbers become JSON numbers, empty cells are left out, "nan" stays text (the daemon
    # dead-letters it as the poison it is).
    expected = [
        {"host": "web-1", "cpu": 12.5, "mem": 40, "note": "ok"},
        {"host": "web-2", "cpu": "nan", "mem": 41.5},
        {"host": "web-1", "cpu": 13, "note": "spike"},
    ]
    assert sorted(rows, key=json.dumps) == sorted(expected, key=json.dumps)

    bad = _vaeguard(
        ["replay", "--data", str(data), "--topic", topic, "--rate", "0",
         "--bootstrap", broker.bootstrap_servers],
        tmp_path,
        timeout=60,
    )  # fmt: skip
    assert bad.returncode != 0 and bad.stderr.startswith("vaeguard: error: --rate")
    assert "Traceback" not in bad.stderr


def test_workload_is_deterministic_correlated_and_labelled():
    a, b = Workload(entities=3, seed=1), Workload(entities=3, seed=1)
    day = a.ticks_per_day
    ha, hb = a.history(0, day), b.history(0, day)
    assert set(ha) == set(FEATURES) and len(ha["cpu_pct"]) == 3 * day
    assert all((ha[f] == hb[f]).all() for f in FEATURES)
    # Network volume follows traffic: the correlations the VAE learns are really there.
    import numpy as np

    assert np.corrcoef(ha["requests_per_s"], ha["net_in_mbps"])[0, 1] > 0.8
    incidents = a.schedule(day, day, per_entity=2)
    assert len(incidents) == 6 and {i.entity for i in incidents} == set(a.entities)
    for inc in incidents:
        assert day <= inc.start < inc.end <= 2 * day
    per_host = {}
    for inc in incidents:
        per_host.setdefault(inc.entity, []).append(inc)
    for spans in per_host.values():
        spans.sort(key=lambda i: i.start)
        assert spans[0].end <= spans[1].start, "a host's incidents never overlap"


def test_broker_command_prints_its_address_and_stops_cleanly(tmp_path):
    import signal

    from kafka import KafkaProducer

    env = {k: v for k, v in os.environ.items() if not k.startswith("VAEGUARD_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vaeguard.cli.main", "broker"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # blocks until the broker is up (or the command failed)
        address = re.search(r"listening on (127\.0\.0\.1):(\d+)", line)
        assert address, line + proc.stderr.read() if proc.poll() is not None else line
        bootstrap = f"{address.group(1)}:{address.group(2)}"
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        producer.send(unique("broker-cli"), b"{}").get(timeout=30)
        producer.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert _processes_mentioning(bootstrap) == []
