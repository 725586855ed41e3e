"""No input stops the stream: poison records on the real broker, and a SIGKILL loop.

A conditional tabular model (features a..d, a categorical ``host`` and a numeric ``hour``
condition) is served by `vaeguard run` as a subprocess. Every malformed kind of record is sent
interleaved with good ones and also as batches made only of poison; the daemon must stay up,
dead-letter each bad record with its reason, score every good one, and account for every
input offset.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import statistics
import time
from collections import namedtuple

import pytest

from tests.conftest import make_normal_data, wait_for, wait_for_progress
from tests.daemon.conftest import (
    Collector,
    Producer,
    committed,
    create_topic,
    daemon_env,
    kafka_env,
    unique,
)
from tests.daemon.poison import fix_values, tabular_poison

HOSTS = ("web", "db")
Message = namedtuple("Message", "topic partition offset key value headers timestamp")


@pytest.fixture(scope="module")
def conditional_bundle(tmp_path_factory):
    from vaeguard import VAEDetector

    x = make_normal_data(n=1200, seed=5)
    features = {name: x[:, j] for j, name in enumerate("abcd")}
    conditions = {
        "host": [HOSTS[i % 2] for i in range(len(x))],
        "hour": [float(i % 24) for i in range(len(x))],
    }
    det = VAEDetector(epochs=10, hidden=(16,), latent_dim=2, mc_samples=4, seed=0)
    det.fit(features, conditions, categorical=["host"])
    path = tmp_path_factory.mktemp("cond") / "model"
    det.save(path)
    return path


def good(i: int) -> dict:
    row = make_normal_data(n=1, seed=1000 + i)[0]
    return {
        **{f: float(v) for f, v in zip("abcd", row, strict=True)},
        "host": HOSTS[i % 2],
        "hour": i % 24,
        "key": f"{HOSTS[i % 2]}-{i % 3}",
        "ts": 1_790_000_000 + i,
        "id": i,
    }


def dlq_reasons(collector: Collector) -> dict[int, str]:
    out = {}
    for m in collector.messages:
        headers = dict(m.headers)
        out[int(headers["__connect.errors.offset"])] = headers["vaeguard.errors.reason"].decode()
    return out


def test_poison_corpus_on_a_conditional_tabular_daemon(broker, conditional_bundle, daemons):
    from kafka import KafkaProducer

    bs = broker.bootstrap_servers
    topic, group = unique("poison-in"), unique("poison")
    create_topic(bs, topic, 1)
    daemon = daemons("poison", daemon_env(bs, conditional_bundle, [topic], group)).start()
    daemon.wait_ready()
    scores = Collector(bs, f"{group}.scores")
    dlq = Collector(bs, f"{group}.dlq")
    producer = Producer(bs)

    poison = fix_values(tabular_poison(good(0)))
    # also accepted, as by retraining and `vaeguard score`: numbers as decimal strings
    extra_good = [
        {**good(900), "a": "12.5", "b": " -3 "},
        {**good(901), "key": "web-1\r\nBcc: evil@example.com"},  # a key is data, not a header
        {**good(902), "ts": "2026-12-01T10:00:00Z"},
        {**good(903), "ts": 1_790_000_000_123},  # epoch milliseconds
    ]
    expected: dict[int, str] = {}  # offset → "scored" or the dead-letter reason
    offset = 0

    def send(value, outcome):
        nonlocal offset
        producer.send(topic, value, key=b"tombstone" if value is None else None)
        expected[offset] = outcome
        offset += 1

    # 1. interleaved with good records
    for i, (value, reason) in enumerate(poison):
        send(good(i + 1), "scored")
        send(value, reason)
    for record in extra_good:
        send(record, "scored")
    producer.flush()
    n_good = sum(1 for v in expected.values() if v == "scored")
    scores.wait_count(n_good, 60, "score records of the good records")
    dlq.wait_count(len(poison), 60, "dead letters of the poison")
    # 2. batches made only of poison (the daemon is idle, so each lands in a batch of its own)
    for value, reason in poison[:8]:
        send(value, reason)
    producer.flush()
    dlq.wait_count(len(poison) + 8, 60, "dead letters of the poison-only batches")
    # 3. a dead letter larger than the producer's request limit is cut to fit
    big = KafkaProducer(bootstrap_servers=bs, max_request_size=8 * 1024 * 1024, acks="all")
    big.send(topic, b'{"a": "' + b"x" * 1_500_000 + b'"}').get(timeout=60)
    big.close()
    expected[offset] = "oversize"
    offset += 1
    # 4. and good records still flow afterwards
    for i in range(5):
        send(good(500 + i), "scored")
    producer.flush()
    scores.wait_count(n_good + 5, 60, "good records after the poison")
    dlq.wait_count(len(poison) + 9, 60, "the truncated dead letter")

    got = {r["source"]["offset"]: "scored" for r in scores.json()}
    got.update(dlq_reasons(dlq))
    assert got == expected
    assert daemon.proc.poll() is None, daemon.log()[-3000:]
    truncated = next(m for m in dlq.messages if dict(m.headers).get("vaeguard.errors.truncated"))
    assert dict(truncated.headers)["vaeguard.errors.truncated"] == b"1500009"
    assert dict(truncated.headers)["vaeguard.errors.reason"] == b"oversize"
    counted = {
        reason: daemon.metric("vaeguard_records_dead_lettered_total", f'reason="{reason}"')
        for reason in set(expected.values()) - {"scored"}
    }
    for reason, n in counted.items():
        assert n == sum(1 for v in expected.values() if v == reason), reason
    assert daemon.terminate() == 0


def _committed(bootstrap: str, group: str, topic: str) -> int | None:
    """Partition 0's committed offset."""
    return committed(bootstrap, group, topic, [0])[0]


def test_oversized_keys_headers_and_entities_never_stall_a_partition(
    broker, conditional_bundle, daemons
):
    """Issue 26: a 700 KB key made a score record larger than the producer sends, and the
    daemon retried it forever. Each of these is now one dead letter with its reason, the
    records after it are scored and committed, and the daemon stops cleanly."""
    from kafka import KafkaProducer

    bs = broker.bootstrap_servers
    topic, group = unique("huge-in"), unique("huge")
    create_topic(bs, topic, 1)
    daemon = daemons("huge", daemon_env(bs, conditional_bundle, [topic], group)).start()
    daemon.wait_ready()
    scores = Collector(bs, f"{group}.scores")
    dlq = Collector(bs, f"{group}.dlq")
    big = KafkaProducer(bootstrap_servers=bs, max_request_size=8 * 1024 * 1024, acks="all")
    value = json.dumps(good(1)).encode()
    rest = json.dumps({**good(2), "key": ""}).encode()
    at_limit = json.dumps({**good(2), "key": "e" * (262_144 - len(rest) - 16)}).encode()
    assert 262_000 < len(at_limit) <= 262_144  # scoring.max_record_bytes, the default
    poison = [
        ({"key": b"k" * 700_000}, "oversize_key"),
        ({"headers": [(f"h{i}", b"x" * 70_000) for i in range(10)]}, "oversize_headers"),
        ({"key": b"db-1", "value": at_limit}, "oversize_key"),
        ({"value": json.dumps({**good(3), "key": {"tags": ["t" * 100] * 50}}).encode()},
         "oversize_key"),
    ]  # fmt: skip
    expected: dict[int, str] = {}
    futures = []
    for i, (message, reason) in enumerate(poison):
        futures.append(big.send(topic, **{"value": value, **message}))
        expected[2 * i] = reason
        futures.append(big.send(topic, json.dumps(good(10 + i)).encode(), key=b"web-1"))
        expected[2 * i + 1] = "scored"
    for f in futures:
        f.get(timeout=60)
    big.close()

    scores.wait_count(len(poison), 90, "the records after each oversized one, scored")
    dlq.wait_count(len(poison), 90, "a dead letter for each oversized record")
    wait_for(
        lambda: _committed(bs, group, topic) == len(expected),
        timeout=60,
        interval=0.2,
        message="every offset committed",
    )
    got = {r["source"]["offset"]: "scored" for r in scores.json()}
    got.update(dlq_reasons(dlq))
    assert got == expected
    assert all(len(m.value) < 1024 for m in scores.messages)
    by_offset = {int(dict(m.headers)["__connect.errors.offset"]): m for m in dlq.messages}
    assert by_offset[0].key == b"k" * 700_000  # kept: it fits a dead letter, not a score record
    assert sum(k.startswith("h") for k, _ in by_offset[2].headers) == 10  # kept: they fit
    assert daemon.metric("vaeguard_records_dead_lettered_total", 'reason="oversize_key"') == 3
    assert daemon.metric("vaeguard_retries_total", 'stage="produce"') == 0
    assert daemon.readyz()[1]["stalled_partitions"] == []
    assert daemon.terminate() == 0, daemon.log()[-3000:]


def test_a_record_the_producer_refuses_is_one_dead_letter_and_never_retried(
    broker, monkeypatch, caplog
):
    """The size check the producer does before sending, and the broker's refusal, are the
    same error: the output becomes a dead letter, then its minimal form, then it is skipped
    with a log line and a count, never retried."""
    from prometheus_client import REGISTRY

    from vaeguard.config import load_settings
    from vaeguard.daemon import pipeline as pipeline_module
    from vaeguard.daemon.pipeline import Pipeline, Shutdown
    from vaeguard.ingest import Reason, Rejection
    from vaeguard.records.wire import DeadLetter, dlq_output

    bs = broker.bootstrap_servers
    group = unique("refused")
    kafka_env(
        monkeypatch,
        bootstrap_servers=bs,
        group_id=group,
        output_topic=f"{group}.scores",
        dlq_topic=f"{group}.dlq",
    )
    create_topic(bs, f"{group}.scores", 1)
    create_topic(bs, f"{group}.dlq", 1)

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    def pipeline(limit: int) -> Pipeline:
        monkeypatch.setattr(pipeline_module, "MAX_REQUEST_SIZE", limit)
        p = Pipeline(load_settings(None), provider=None, alert_layer=None, shutdown=Shutdown(30))
        p.producer = p._new_producer()
        return p

    m = Message("in", 0, 7, b"web-1", b'{"a": 1}', [], 0)
    huge = Message("in", 0, 8, None, b"v" * 50_000, [("trace", b"t")], 0)
    dead = DeadLetter(huge, Rejection(Reason.INVALID_JSON, "ValueError", "nope"))
    retries = sample("vaeguard_retries_total", stage="produce")

    p = pipeline(8192)
    outputs = [
        (f"{group}.scores", b"web-1", b"s" * 20_000, None),  # refused by the producer
        (f"{group}.scores", b"web-1", b"{}", None),
        dlq_output(dead, f"{group}.dlq", "g", "t", 10**6),  # cut for a larger limit: refused
    ]
    replaced = p._produce(outputs, [(m, None), (m, None), (huge, dead)])
    p.producer.close(timeout=10)
    (oversize,) = replaced
    assert oversize.reason == "oversize_output" and oversize.message is m
    assert oversize.rejection.error_class == "MessageSizeTooLargeError"
    scores = Collector(bs, f"{group}.scores").wait_count(1, 30, "the small score record")
    dlq = Collector(bs, f"{group}.dlq").wait_count(2, 30, "two dead letters")
    assert [s.value for s in scores] == [b"{}"]
    letters = {dict(d.headers)["vaeguard.errors.reason"]: d for d in dlq}
    assert letters[b"oversize_output"].key == b"web-1"
    assert letters[b"oversize_output"].value == b'{"a": 1}'
    minimal = letters[b"invalid_json"]
    assert minimal.key is None and minimal.value == b""
    assert dict(minimal.headers)["vaeguard.errors.truncated"] == b"50000"

    # a limit below even the minimal dead letter: logged, counted, skipped; the call returns
    dropped = sample("vaeguard_dead_letters_dropped_total")
    p = pipeline(256)
    caplog.set_level(logging.ERROR, logger="vaeguard.daemon")
    assert p._produce([outputs[0]], [(m, None)]) and p._produce([outputs[2]], [(huge, dead)]) == []
    p.producer.close(timeout=10)
    assert sample("vaeguard_dead_letters_dropped_total") == dropped + 2
    skipped = [r for r in caplog.records if "refused as too large even" in r.getMessage()]
    assert [(r.topic, r.partition, r.offset) for r in skipped] == [("in", 0, 7), ("in", 0, 8)]
    assert sample("vaeguard_retries_total", stage="produce") == retries, "never retried"


def test_sigkill_loop_loses_nothing_and_every_restart_scores(
    broker, small_bundle, daemons, measured
):
    """Killed at random moments while records arrive, six times: no offset without a score.
    (Each kill costs a restart, TensorFlow's import and the model load, which is most of the
    suite's longest test: six random moments, not ten, keep the suite inside its time.)"""
    from tests.daemon.test_delivery import PacedProducer, _all_offsets

    bs = broker.bootstrap_servers
    topic, group = unique("loop-in"), unique("loop")
    create_topic(bs, topic, 2)
    # Sessions of 3 s (the default is 6): the group rebalances sooner after each kill, so the
    # kills take less of the suite's time; what is tested (nothing lost) is the same.
    env = daemon_env(
        bs,
        small_bundle,
        [topic],
        group,
        VAEGUARD_KAFKA__SESSION_TIMEOUT_MS="3000",
        VAEGUARD_KAFKA__HEARTBEAT_INTERVAL_MS="1000",
    )
    # At most this many records (2,000 s of stream, beyond any loop's length even on busy
    # cores): the stream is stopped once the last daemon is scoring. A modest rate: the last
    # daemon catches up on all that arrived during the restarts, through one broker that
    # also serves the score topic, and on slower machines the broker's CPU set its pace.
    stream = PacedProducer(bs, topic, n=200_000, rate=100)
    scores = Collector(bs, f"{group}.scores")
    rng = random.Random(7)
    restarts = []
    phases: dict[str, list[float]] = {}
    stream.start()
    for k in range(6):
        daemon = daemons(f"loop-{k}", env).start()
        started = time.monotonic()
        started_wall = time.time()
        # This process's own count: a score record of the killed one arriving late must not
        # count as the restarted daemon's first.
        # A liveness deadline, not a speed target: restart-to-first-score is measured (and
        # printed below); on 2 shared cores it is the killed member's session timeout plus
        # TensorFlow's import, 6-15 s.
        wait_for(
            lambda daemon=daemon: daemon.metric_or_zero("vaeguard_records_scored_total") > 0,
            timeout=60,
            interval=0.05,
            message=f"restart {k} to score a record",
        )
        restarts.append(time.monotonic() - started)
        for phase, seconds in restart_phases(daemon.log_lines(), started_wall).items():
            phases.setdefault(phase, []).append(seconds)
        time.sleep(rng.uniform(0.0, 1.5))  # a random moment mid-stream (not synchronization)
        assert stream.sent < stream.n, "every kill must land while records are still flowing"
        daemon.kill()
    final = daemons("loop-final", env).start()
    wait_for(
        lambda: final.metric_or_zero("vaeguard_records_scored_total") > 0,
        timeout=60,
        interval=0.05,
        message="the last daemon to score a record",
    )
    assert stream.sent < stream.n, "records must still be flowing when the last daemon starts"
    stream.stop()
    stream.join(60)
    assert not stream.is_alive(), "the stream did not stop"
    # The backlog the last daemon catches up on grows with how slow the restarts were (the
    # stream ran all along): a liveness deadline on progress, not on the whole catch-up.
    expected = _all_offsets(stream.end)
    seen: set[tuple[int, int]] = set()
    parsed = [0]  # score records read so far: each is parsed once (the backlog can be large)

    def covered() -> int:
        scores.drain()
        for message in scores.messages[parsed[0] :]:
            source = json.loads(message.value)["source"]
            seen.add((source["partition"], source["offset"]))
        parsed[0] = len(scores.messages)
        return len(seen & expected)

    wait_for_progress(
        covered, len(expected), stall=60, message="a score record for every input record"
    )
    assert final.terminate() == 0
    summary = (
        f"SIGKILL loop: restart to first score max {max(restarts):.1f} s, median "
        f"{statistics.median(restarts):.1f} s over {len(restarts)} restarts; seconds after the "
        "start, median / max: "
        + ", ".join(
            f"{phase} {statistics.median(v):.1f} / {max(v):.1f}" for phase, v in phases.items()
        )
    )
    measured(summary)
    print(summary)


#: Log messages of a daemon's start, in the order they usually come.
RESTART_EVENTS = {
    "imports done": "vaeguard daemon starting",
    "connected": "connected to Kafka",
    "partitions assigned": "partitions assigned",
    "model loaded": "model loaded",
}


def restart_phases(lines: list[dict], started_wall: float) -> dict[str, float]:
    """Seconds from the process start to the first log line of each `RESTART_EVENTS` event."""
    out = {}
    for phase, message in RESTART_EVENTS.items():
        for line in lines:
            if line.get("msg") == message and "ts" in line:
                stamp = dt.datetime.fromisoformat(line["ts"].replace("Z", "+00:00"))
                out[phase] = stamp.timestamp() - started_wall
                break
    return out
