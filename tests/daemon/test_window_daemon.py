"""Window mode end to end: `vaeguard train-window`, then `vaeguard run` on a window bundle.

One small window model (W = 8, two metrics, two hosts) is trained once by the CLI; the daemon
runs as a real subprocess against the embedded broker. Every daemon score is compared with the
offline path (`WindowDetector` + `WindowFeaturizer` over the same records), so the two agree.
"""

from __future__ import annotations

import base64
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import wait_for
from tests.daemon.conftest import (
    Collector,
    DaemonProcess,
    Producer,
    create_topic,
    daemon_env,
    unique,
)
from vaeguard.errors import DataError

WINDOW = 8
T0 = 1_700_000_000
HOSTS = {"web-1": 0.0, "web-2": 20.0}
SPIKE = ("web-2", 30)  # (host, point index of the live stream) with a +60 cpu spike


def host_points(start: int, n: int, seed: int, spike: tuple[str, int] | None = None) -> list[dict]:
    """Points start..start+n of both hosts, interleaved, one per minute (cpu, lat)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(start, start + n):
        for host, offset in HOSTS.items():
            cpu = offset + 10 + 3 * math.sin(2 * math.pi * i / 24) + 0.3 * rng.standard_normal()
            if spike is not None and (host, i - start) == spike:
                cpu += 60
            lat = 5 + 0.2 * rng.standard_normal()
            out.append({"host": host, "ts": T0 + 60 * i, "cpu": cpu, "lat": lat})
    return out


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vaeguard.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`vaeguard train-window` once: a bundle directory and a registry holding the same model."""
    root = tmp_path_factory.mktemp("window")
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in host_points(0, 300, seed=0)))
    # The live streams here are 36 points per host: a likelihood judged on 20 scores is noisy,
    # and the default suppression (200 points) would hide the spike behind an early alert.
    (root / "config.json").write_text(json.dumps({"likelihood": {"suppress": 0}}))
    result = run_cli(
        "train-window",
        *("--config", str(root / "config.json")),
        *("--data", str(data), "--metrics", "cpu,lat", "--window", str(WINDOW)),
        *("--entity-column", "host", "--time-column", "ts", "--interval", "60"),
        *("--steps", "60", "--hidden", "16", "--latent-dim", "2", "--mc-samples", "4"),
        *("--likelihood-warmup", "20", "--out", str(root / "bundle")),
        *("--registry", str(root / "registry")),
    )
    assert result.returncode == 0, result.stderr
    return {"bundle": root / "bundle", "registry": root / "registry", "data": data, "cli": result}


def offline(bundle: Path, records: list[dict]):
    """The offline path: record index → (raw score, likelihood) for every windowed record, each
    host continuing from the end of the training data as the bundle records it (windows and
    likelihood histories)."""
    from vaeguard.timeseries.views import ViewSet

    views = ViewSet.load(bundle)
    batch = views.serving_featurizer().update_and_featurize(records)
    scored = views.score_windows(batch.x, batch.c, batch.mask)
    lk = views.serving_likelihood().update_many(batch.entities, scored.terms)
    return {
        int(i): (float(s), float(p)) for i, s, p in zip(batch.keep, scored.score, lk, strict=True)
    }


def assert_same_scores(scores: dict[int, dict], reference: dict[int, tuple[float, float]]) -> None:
    assert sorted(scores) == sorted(reference), "the daemon scored other records than offline"
    for i, (raw, lk) in reference.items():
        assert scores[i]["score"] == pytest.approx(raw, rel=1e-4, abs=1e-3), f"record {i}"
        assert scores[i]["anomaly_likelihood"] == pytest.approx(lk, abs=1e-3), f"record {i}"


def window_env(broker, trained, topic, group, state_dir: Path) -> dict[str, str]:
    return daemon_env(
        broker.bootstrap_servers,
        trained["bundle"],
        [topic],
        group,
        VAEGUARD_SCORING__STATE_DIR=str(state_dir),
        VAEGUARD_SCORING__TOP_K=str(2 * WINDOW),
    )


def by_id(collector: Collector) -> dict[int, dict]:
    return {r["source"]["offset"]: r for r in collector.json()}


@pytest.fixture(scope="module")
def served(broker, trained, tmp_path_factory):
    """A daemon scoring a live stream of both hosts, with malformed records mixed in."""
    tmp = tmp_path_factory.mktemp("served")
    topic, group = unique("win-in"), unique("win")
    create_topic(broker.bootstrap_servers, topic, 1)
    good = host_points(300, 40, seed=1, spike=SPIKE)
    bad = {
        5: ({"host": "web-1", "ts": T0, "cpu": "high", "lat": 5.0}, "non_numeric_feature"),
        17: ({"host": "web-2", "cpu": 30.0, "lat": 5.0}, "missing_feature"),
        41: (b'{"host": "web-1", "cpu": ', "invalid_json"),
    }
    stream: list[bytes | dict] = list(good)
    for pos in sorted(bad):
        stream.insert(pos, bad[pos][0])
    daemon = DaemonProcess(tmp, "daemon", window_env(broker, trained, topic, group, tmp / "state"))
    daemon.start()
    try:
        producer = Producer(broker.bootstrap_servers)
        for value in stream:
            producer.send(topic, value)
        producer.flush()
        reference = offline(trained["bundle"], good)
        scores = Collector(broker.bootstrap_servers, f"{group}.scores")
        dlq = Collector(broker.bootstrap_servers, f"{group}.dlq")
        scores.wait_count(len(reference), 90, "score records of the window stream")
        dlq.wait_count(len(bad), 30, "dead letters of the malformed records")
        assert daemon.terminate() == 0, daemon.log()[-3000:]
    finally:
        daemon.stop()
    # the stream offset of each good record, in order
    offsets = [i for i, v in enumerate(stream) if isinstance(v, dict) and v in good]
    return {
        "scores": {offsets.index(o): r for o, r in by_id(scores).items()},
        "dlq": dlq.messages,
        "bad": {pos: reason for pos, (_, reason) in bad.items()},
        "reference": reference,
        "good": good,
    }


def test_daemon_scores_a_window_bundle_like_the_offline_path(served):
    scores, reference, good = served["scores"], served["reference"], served["good"]
    assert_same_scores(scores, reference)
    # Each host's first points only fill its window (no score record); all later ones are scored.
    first_scored = {h: min(i for i in scores if good[i]["host"] == h) for h in HOSTS}
    assert all(first_scored[h] < 2 * WINDOW for h in HOSTS)
    for record in scores.values():
        assert record["key"] in HOSTS
        assert 0.0 <= record["anomaly_likelihood"] <= 1.0
        for c in record["contributions"]:
            assert c["metric"] in ("cpu", "lat") and c["feature"] == c["metric"]
            first, last = c["slots"]
            assert -WINDOW < first <= last <= 0 and -WINDOW < c["slot"] <= 0
    # The cpu spike is an anomaly, explained by metric and moment in the metric's own units
    # (top_k = more than the two metrics here: both are listed; which ranks first depends on
    # how well the tiny model learned: its distorted lat reconstruction can outweigh cpu's).
    spike = 2 * SPIKE[1] + 1
    assert good[spike]["host"] == SPIKE[0]
    record = scores[spike]
    assert record["is_anomaly"] and record["severity"] != "normal"
    assert sorted(c["metric"] for c in record["contributions"]) == ["cpu", "lat"]
    cpu, lat = sorted(record["contributions"], key=lambda c: c["metric"])
    assert cpu["slot"] == 0 and cpu["slots"][1] == 0
    assert cpu["observed"] == pytest.approx(good[spike]["cpu"], rel=1e-4)
    assert cpu["observed"] - cpu["expected"] > 30 and cpu["contribution"] > 10
    # lat at its own worst slot: the host's point that many minutes earlier (hosts interleave)
    assert lat["observed"] == pytest.approx(good[spike + 2 * lat["slot"]]["lat"], rel=1e-4)
    others = [r for i, r in scores.items() if i < spike]
    assert sum(r["is_anomaly"] for r in others) <= 2


def test_malformed_window_records_go_to_the_dlq_with_a_reason(served):
    dead = {}
    for m in served["dlq"]:
        headers = dict(m.headers)
        dead[int(headers["__connect.errors.offset"])] = headers
    assert sorted(dead) == sorted(served["bad"])
    for offset, reason in served["bad"].items():
        headers = dead[offset]
        assert headers["vaeguard.errors.reason"].decode() == reason
        assert headers["__connect.errors.exception.message"]
    assert b"timestamp" in dead[17]["__connect.errors.exception.message"]
    assert b"cpu" in dead[5]["__connect.errors.exception.message"]


def test_window_state_survives_a_daemon_restart(broker, trained, tmp_path):
    topic, group = unique("win-restart"), unique("winr")
    create_topic(broker.bootstrap_servers, topic, 1)
    state = tmp_path / "state"
    env = window_env(broker, trained, topic, group, state)
    records = host_points(300, 36, seed=2)
    half = len(records) // 2
    reference = offline(trained["bundle"], records)
    producer = Producer(broker.bootstrap_servers)
    scores = Collector(broker.bootstrap_servers, f"{group}.scores")

    first = DaemonProcess(tmp_path, "first", env).start()
    for r in records[:half]:
        producer.send(topic, r)
    producer.flush()
    scores.wait_count(sum(1 for i in reference if i < half), 90, "scores before the restart")
    assert first.terminate() == 0, first.log()[-3000:]
    assert list(state.glob("*.window-state.json")), "no state snapshot was written"

    second = DaemonProcess(tmp_path, "second", env).start()
    for r in records[half:]:
        producer.send(topic, r)
    producer.flush()
    scores.wait_count(len(reference), 90, "scores after the restart")
    assert second.terminate() == 0, second.log()[-3000:]
    got = by_id(scores)
    assert len(got) == len(scores.messages), "a record was scored twice"
    # Same records scored as in one uninterrupted run (no host refilled its window after the
    # restart), with the same raw scores and likelihoods (windows, scalers, histories restored).
    assert_same_scores(got, reference)
    assert half in got and half + 1 in got
    assert any(line.get("msg") == "window state restored" for line in second.log_lines())


def test_a_shift_in_one_metric_is_explained_by_that_metric_and_its_slots(trained):
    """The daemon's batch step in process: lat shifted for 3 points of one host; the record of
    the third names lat first, the slots the shift spans, and the values at its worst slot."""
    from dataclasses import replace

    from vaeguard.apps.online import as_records, step_settings
    from vaeguard.records.batch import process
    from vaeguard.serving import load_serving

    records = host_points(300, 40, seed=4)
    web1 = [i for i, r in enumerate(records) if r["host"] == "web-1"]
    shifted = web1[32:35]
    for i in shifted:
        records[i]["lat"] += 4.0  # 20 sd of its noise; cpu untouched
    serving = load_serving(trained["bundle"], "v1")
    done = process(serving, as_records(records), replace(step_settings(), top_k=2))
    assert not done.dead
    by_offset = {r.source.offset: r for r in done.scored}
    top = by_offset[shifted[-1]].contributions
    assert [c["metric"] for c in top] == ["lat", "cpu"]
    lat = top[0]
    assert -2 <= lat["slots"][0] <= lat["slots"][1] <= 0 and -2 <= lat["slot"] <= 0
    at = web1[34 + lat["slot"]]
    assert lat["observed"] == pytest.approx(records[at]["lat"], rel=1e-4)
    assert lat["observed"] - lat["expected"] > 2 and lat["share"] > 0.5
    # before the shift, a normal record still names both metrics, with finite numbers
    assert {c["metric"] for c in by_offset[web1[30]].contributions} == {"cpu", "lat"}


def test_replayed_records_are_not_fed_twice_and_hot_swaps_keep_compatible_state(trained):
    """The at-least-once seam in process: a replay after a crash between snapshot and commit."""
    from collections import namedtuple

    from vaeguard.scored import Source
    from vaeguard.serving import Inbound, WindowServing, load_serving

    TP = namedtuple("TP", "topic partition")
    records = host_points(300, 24, seed=3)
    half = len(records) // 2

    def load() -> WindowServing:
        return load_serving(trained["bundle"], "v1")

    def feed(f: WindowServing, start: int, stop: int):
        fresh = [
            Inbound(records[i], Source("t", 0, i))
            for i in range(start, stop)
            if not f.covers(Source("t", 0, i))
        ]
        batch = f.featurize(fresh)
        f.advance({TP("t", 0): stop})
        raw = f.detector.score_windows(batch.x, batch.c, batch.mask)[0]
        return {fresh[i].source.offset: float(s) for i, s in zip(batch.keep, raw, strict=True)}

    straight = load()
    assert straight.kind == "window" and straight.stateful
    expected = feed(straight, 0, len(records))

    crashed = load()
    before = feed(crashed, 0, half)
    saved = json.loads(json.dumps(crashed.snapshot()))  # what the state file holds
    restarted = load()
    assert restarted.restore(saved)["windows"]
    # the uncommitted batch is replayed from the committed offset: its records are skipped
    assert feed(restarted, half - 4, half) == {}
    after = feed(restarted, half, len(records))
    assert {**before, **after} == pytest.approx(expected, rel=1e-5)

    # hot swap: same window spec keeps the windows; another window length starts fresh
    same = load()
    assert same.adopt(restarted)["windows"] and same.n_entities == len(HOSTS)
    other = WindowServing(type(restarted.detector)(window=WINDOW + 1, metrics=("cpu", "lat")))
    kept = other.adopt(restarted)
    assert not kept["windows"] and other.n_entities == 0
    assert other.offsets == restarted.offsets


def test_train_window_cli_writes_a_bundle_the_daemon_and_registry_accept(trained, tmp_path):
    from vaeguard.registry import ModelRegistry
    from vaeguard.timeseries.bundle import load_window_bundle
    from vaeguard.timeseries.views import ViewSet

    assert "window model trained" in trained["cli"].stderr
    out = " ".join((trained["cli"].stdout + trained["cli"].stderr).split())
    assert "warm refits every 1000 rows" in out
    det = load_window_bundle(trained["bundle"])
    assert det.spec.window == WINDOW and det.spec.metrics == ("cpu", "lat")
    assert det.spec.entity_field == "host" and det.use_likelihood
    # the default configuration: the metrics, and the metrics with cpu's seasonal residual
    assert [v.input_channels for v in det.views] == [("cpu", "lat"), ("cpu", "lat", "cpu_seasonal")]
    assert (trained["bundle"] / "views" / "1" / "bundle.json").is_file()
    # five hours of training data hold no daily seasonal residual: the bundle knows, and says
    assert [v.unlearned_channels for v in det.views] == [(), ("cpu_seasonal",)]
    assert "not learned" in out and "cpu_seasonal: too few observed" in out
    assert all(math.isfinite(v.threshold_.value) for v in det.views)
    # the alert budget of the default configuration, carried by the bundle and shown by inspect
    assert det.likelihood_spec.budget == 2.0 and det.likelihood_spec.estimator == "evt"
    shown = run_cli("inspect", "--model", str(trained["bundle"]))
    assert shown.returncode == 0, shown.stderr
    shown = " ".join(shown.stdout.split())
    assert f"{WINDOW} points of cpu, lat per host" in shown
    assert "2 false alerts per 1,000 points per entity" in shown
    registry = ModelRegistry(trained["registry"])
    vae, version = registry.load()
    assert version == "v0001" and isinstance(vae, ViewSet)
    assert json.loads((trained["bundle"] / "bundle.json").read_text())["kind"] == "window"
    # Scheduled retraining covers row models only: refused up front, naming the way out.
    from vaeguard.retrain.job import RetrainJob
    from vaeguard.retrain.settings import RetrainSettings

    outcome = RetrainJob(
        registry, RetrainSettings(), {"bootstrap_servers": "127.0.0.1:9"}, []
    ).run()
    assert outcome.status == "refused" and "train-window" in outcome.reasons[0]
    assert registry.current() == "v0001"
    inspect = run_cli("inspect", "--model", str(trained["bundle"]))
    assert inspect.returncode == 0 and "window mode" in inspect.stdout
    assert "cpu[t-7]" in inspect.stdout

    bad = run_cli(
        "train-window",
        "--data",
        str(trained["data"]),
        "--metrics",
        "cpu,mem",
        "--out",
        str(tmp_path / "b"),
    )
    assert bad.returncode != 0
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "vaeguard: error: --metrics: metric column 'mem' not found; "
        "columns are: cpu, host, lat, ts (see vaeguard train-window --help)"
    ]
    short = tmp_path / "short.jsonl"
    short.write_text("".join(json.dumps(r) + "\n" for r in host_points(0, 12, seed=0)))
    bad = run_cli(
        "train-window",
        "--data",
        str(short),
        "--metrics",
        "cpu",
        "--entity-column",
        "host",
        "--out",
        str(tmp_path / "b"),
    )
    assert bad.returncode != 0 and "too few to train" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_window_daemon_survives_a_poison_corpus(broker, trained, tmp_path):
    """Every malformed kind, interleaved and alone: dead-lettered with its reason; every
    input offset is a score record, a dead letter or a buffered point; the daemon stays up."""
    from tests.daemon.test_poison import dlq_reasons

    topic, group = unique("winpoison-in"), unique("winpoison")
    create_topic(broker.bootstrap_servers, topic, 1)
    good = host_points(300, 30, seed=5)
    base = {"host": "web-1", "ts": T0 + 60 * 400, "cpu": 10.0, "lat": 5.0}

    def raw(field: str, literal: str) -> bytes:
        body = json.dumps({k: v for k, v in base.items() if k != field})
        return (body[:-1] + f', "{field}": {literal}}}').encode()

    poison = [
        ({**base, "ts": "nan"}, "invalid_timestamp"),
        ({**base, "ts": 1e300}, "invalid_timestamp"),
        ({**base, "ts": "9999-12-31T23:59:59"}, "invalid_timestamp"),
        ({**base, "ts": True}, "invalid_timestamp"),
        ({**base, "ts": [T0]}, "invalid_timestamp"),
        (raw("ts", "1" * 5000), "integer_too_long"),
        (raw("cpu", "1e400"), "non_finite"),
        (raw("lat", "-Infinity"), "non_finite"),
        ({**base, "cpu": "abc"}, "non_numeric_feature"),
        ({"host": "web-1", "cpu": 1.0}, "missing_feature"),
        ({"host": "web-1", "ts": T0 + 60 * 400}, "missing_feature"),
        ({"host": "web-2", "ts": T0, "cpu": 1.0, "lat": 1.0}, "late_record"),
        (b"[" * 100_000, "too_deep"),
        (b"\xc3\x28", "invalid_utf8"),
        (b"[]", "not_an_object"),
        (b"", "empty_value"),
    ]
    odd_but_valid = [
        {"host": "web-9", "ts": T0 + 60 * 300, "cpu": 1e154, "lat": -1e300},
        {"host": "web-9\r\nBcc: x@example.com", "ts": "2023-11-14T22:13:20Z", "cpu": "12.5"},
        {"host": {"nested": ["key"]}, "ts": T0 + 60 * 301, "cpu": 3, "lat": 4},
    ]
    daemon = DaemonProcess(
        tmp_path, "daemon", window_env(broker, trained, topic, group, tmp_path / "s")
    )
    daemon.start()
    try:
        producer = Producer(broker.bootstrap_servers)
        expected: dict[int, str] = {}
        offset = 0
        for i, point in enumerate(good):
            producer.send(topic, point)
            offset += 1
            if i < len(poison):
                value, reason = poison[i]
                producer.send(topic, value)
                expected[offset] = reason
                offset += 1
        for value in odd_but_valid:
            producer.send(topic, value)
            offset += 1
        producer.flush()
        dlq = Collector(broker.bootstrap_servers, f"{group}.dlq")
        dlq.wait_count(len(poison), 60, "dead letters of the poison")
        for value, reason in poison[:6]:  # batches of poison only
            producer.send(topic, value)
            expected[offset] = reason
            offset += 1
        producer.flush()
        dlq.wait_count(len(poison) + 6, 60, "dead letters of the poison-only batches")
        scores = Collector(broker.bootstrap_servers, f"{group}.scores")

        def accounted() -> bool:
            buffered = daemon.metric("vaeguard_window_buffered_records_total")
            return len(scores.drain()) + len(dlq.drain()) + buffered >= offset

        wait_for(accounted, timeout=60, interval=0.1, message="every input offset accounted for")
        assert dlq_reasons(dlq) == expected
        scored = {r["source"]["offset"] for r in scores.json()}
        assert not scored & set(expected)
        buffered = daemon.metric("vaeguard_window_buffered_records_total")
        assert len(scored) + len(expected) + buffered == offset
        assert daemon.proc.poll() is None, daemon.log()[-3000:]
        assert daemon.terminate() == 0, daemon.log()[-3000:]
    finally:
        daemon.stop()


def test_the_daemon_learns_online_and_loses_nothing(broker, tmp_path):
    """A bundle whose schedule refits every 30 rows per entity: the daemon refits warm between
    batches while it serves (the scores before the first refit are the bundle's, later ones
    move), every record is scored once, and a restart does not judge the bundle's scores
    against histories built by a refitted model."""
    from vaeguard.apps.online import as_records, step_settings
    from vaeguard.records.batch import process
    from vaeguard.serving import load_serving

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in host_points(0, 300, seed=0)))
    config = {
        "likelihood": {"suppress": 0},
        "schedule": {"retrain_max_gap": 30},
        "views": {"retrain_steps": 30},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    bundle = tmp_path / "bundle"
    trained = run_cli(
        "train-window",
        *("--config", str(tmp_path / "config.json")),
        *("--data", str(data), "--metrics", "cpu,lat", "--window", str(WINDOW)),
        *("--entity-column", "host", "--time-column", "ts", "--interval", "60"),
        *("--steps", "60", "--hidden", "16", "--latent-dim", "2", "--mc-samples", "4"),
        *("--likelihood-warmup", "20", "--out", str(bundle)),
    )
    assert trained.returncode == 0, trained.stderr
    assert "warm refits every 30 rows" in trained.stdout + trained.stderr

    topic, group = unique("win-learn"), unique("winl")
    create_topic(broker.bootstrap_servers, topic, 1)
    records = host_points(300, 70, seed=4)  # 140 records, 2 hosts: a refit due every 60
    reference = offline(bundle, records)  # the bundle's model, never refitted
    env = daemon_env(broker.bootstrap_servers, bundle, [topic], group)
    daemon = DaemonProcess(tmp_path, "learner", env).start()
    producer = Producer(broker.bootstrap_servers)
    scores = Collector(broker.bootstrap_servers, f"{group}.scores")
    try:
        daemon.wait_ready()
        # 4 parts of 35, each scored before the next is sent: the first refit falls between
        # rows 60 and 70 (a part may come in more than one batch), the second between 120 and
        # 140; each has at least 16 windows (one in every 2: two hosts)
        for start in range(0, len(records), 35):
            for r in records[start : start + 35]:
                producer.send(topic, r)
            producer.flush()
            want = sum(1 for i in reference if i < start + 35)
            scores.wait_count(want, 60, f"scores of records < {start + 35}")
        wait_for(
            lambda: daemon.metric("vaeguard_window_refits_total", 'result="ok"') >= 2,
            30,
            message="two online refits",
        )
        assert daemon.metric("vaeguard_window_refits_total", 'result="failed"') == 0
        assert daemon.metric("vaeguard_window_refits_total", 'result="skipped"') == 0
        assert daemon.terminate() == 0, daemon.log()[-3000:]
    finally:
        daemon.stop()
    got = by_id(scores)
    assert len(got) == len(scores.messages) == len(reference), "lost or duplicated records"
    refits = [line for line in daemon.log_lines() if line.get("msg") == "online refit"]
    assert len(refits) == 2
    # before the first refit (due after 30 rows per host): the bundle's own scores; after it
    # (at the latest after record 70) they have moved
    assert_same_scores(
        {i: r for i, r in got.items() if i < 60}, {i: v for i, v in reference.items() if i < 60}
    )
    later = [i for i in reference if i >= 70]
    assert any(abs(got[i]["score"] - reference[i][0]) > 1e-3 for i in later)

    # In process: a restart resumes the refitted model from the saved state (its weights and
    # calibration travel in the snapshot), so the next records score as if nothing happened.
    serving = load_serving(bundle, "v1")
    messages = as_records(records)
    for start in range(0, len(messages) - 35, 35):
        process(serving, messages[start : start + 35], step_settings())
    assert serving.learning.refit_rows == [70]
    saved = json.loads(json.dumps(serving.snapshot(), allow_nan=False))  # the state file
    restarted = load_serving(bundle, "v1")
    kept = restarted.restore(saved)
    assert kept["windows"] and kept["likelihood"] and kept["refits"] == 1
    assert restarted.model_id == serving.model_id != load_serving(bundle, "v1").model_id
    tail = messages[len(messages) - 35 :]
    a = process(serving, tail, step_settings())
    b = process(restarted, tail, step_settings())
    assert [r.score for r in a.scored] == pytest.approx([r.score for r in b.scored], rel=1e-5)
    assert [r.anomaly_likelihood for r in a.scored] == pytest.approx(
        [r.anomaly_likelihood for r in b.scored], abs=1e-6
    )
    # ... which differs from the bundle's model (so the comparison could fail)
    fresh = load_serving(bundle, "v1")
    fresh.restore({**saved, "refit": None})
    c = process(fresh, tail, step_settings())
    assert [r.score for r in c.scored] != pytest.approx([r.score for r in a.scored], rel=1e-3)

    # A snapshot of another bundle's refits is not applied; a damaged one is refused whole.
    other = {**saved, "refit": {**saved["refit"], "base_model_id": "another-model"}}
    kept = load_serving(bundle, "v1").restore(other)
    assert kept["refits"] == 0 and not kept["likelihood"]
    views = saved["refit"]["views"]
    wrong_shape = [{**views[0], "weights": views[0]["weights"][:-1]}, *views[1:]]
    shape = views[0]["baseline"]["shape"]
    nan = {
        "shape": shape,
        "data": base64.b64encode(np.full(shape, np.nan, "<f4").tobytes()).decode(),
    }
    for bad in (wrong_shape, [{**views[0], "baseline": nan}, *views[1:]], "junk", views[:1]):
        damaged = {**saved, "refit": {**saved["refit"], "views": bad}}
        with pytest.raises(DataError, match="refit state"):
            load_serving(bundle, "v1").restore(damaged)
