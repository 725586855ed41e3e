"""The daemon with ``input.format`` telegraf, prometheus and otlp-json against the real broker:
real-shaped messages in, score records keyed by the mapped entity out, refusals dead-lettered
with the contract's reasons, and commits that reach the end once no row waits."""

from __future__ import annotations

import json
from collections import namedtuple
from threading import Thread
from types import SimpleNamespace

from tests.conftest import wait_for
from tests.daemon.conftest import (
    Collector,
    Producer,
    committed,
    create_topic,
    good_record,
    unique,
)
from vaeguard.config import load_settings
from vaeguard.daemon import metrics
from vaeguard.daemon.app import Daemon
from vaeguard.input_formats import InputSpec
from vaeguard.records.inputs import InputStage

T0 = 1_764_979_200  # 2025-12-06T00:00:00Z
N_ROWS = 6


def _row(i: int) -> dict:
    r = good_record(i)
    return {f: r[f] for f in "abcd"}


def telegraf_messages() -> list[dict]:
    """Telegraf's JSON serializer: features a, b in measurement cpu, c, d in mem."""
    out = []
    for i in range(N_ROWS):
        r, host, ts = _row(i), f"web-{i % 2}", T0 + 10 * i
        cpu = {"name": "cpu", "tags": {"host": host, "cpu": "cpu-total"}, "timestamp": ts,
               "fields": {"usage_user": r["a"], "usage_system": r["b"]}}  # fmt: skip
        mem = {"name": "mem", "tags": {"host": host}, "timestamp": ts,
               "fields": {"used_percent": r["c"], "available_percent": r["d"]}}  # fmt: skip
        out += [cpu, mem] if i % 2 else [{"metrics": [cpu, mem]}]  # single and batch forms
    return out


TELEGRAF = {
    "format": "telegraf",
    "fields": {
        "a": 'fields.usage_user{name="cpu"}',
        "b": "fields.usage_system",
        "c": 'fields.used_percent{name="mem"}',
        "d": "fields.available_percent",
    },
    "entity": ["tags.host"],
}


def prometheus_messages() -> list[dict]:
    """The remote-write Kafka adapter: one sample per message, metric vg_<feature>."""
    out = []
    for i in range(N_ROWS):
        stamp = f"2025-12-06T00:{i:02d}:00Z"
        labels = {"instance": f"web-{i % 2}:9100", "job": "node"}
        for f, v in _row(i).items():
            out.append({"timestamp": stamp, "value": repr(v), "name": f"vg_{f}",
                        "labels": {"__name__": f"vg_{f}", **labels}})  # fmt: skip
        out.append({"timestamp": stamp, "value": "1", "name": "up",
                    "labels": {"__name__": "up", **labels}})  # fmt: skip
    return out


PROMETHEUS = {
    "format": "prometheus",
    "fields": {f: f'vg_{f}{{job="node"}}' for f in "abcd"},
    "entity": ["labels.instance"],
    "max_wait_s": 1,
}


def otlp_messages() -> list[dict]:
    """The Collector's Kafka exporter, encoding otlp_json: one request per row, 4 gauges."""
    out = []
    for i in range(N_ROWS):
        nanos = str((T0 + 10 * i) * 1_000_000_000)
        metrics = [
            {"name": f"vg.{f}", "unit": "1",
             "gauge": {"dataPoints": [{"asDouble": v, "timeUnixNano": nanos}]}}
            for f, v in _row(i).items()
        ]  # fmt: skip
        resource = {"attributes": [{"key": "host.name", "value": {"stringValue": f"web-{i % 2}"}}]}
        out.append(
            {
                "resourceMetrics": [
                    {
                        "resource": resource,
                        "scopeMetrics": [{"scope": {"name": "test"}, "metrics": metrics}],
                    }
                ]
            }
        )
    return out


OTLP = {"format": "otlp-json", "fields": {f: f"vg.{f}" for f in "abcd"}}


def _daemon(bs: str, bundle, topic: str, group: str, section: dict) -> tuple[Daemon, Thread]:
    """The daemon in a thread of this process (the model's libraries are loaded already: a
    subprocess would spend most of the test importing them)."""
    settings = load_settings(
        None,
        kafka={"bootstrap_servers": bs, "input_topics": [topic], "group_id": group,
               "output_topic": f"{group}.scores", "dlq_topic": f"{group}.dlq"},
        model={"path": str(bundle), "reload_interval_s": 0},
        http={"enabled": False},
        input=section,
    )  # fmt: skip
    daemon = Daemon(settings)
    thread = Thread(target=daemon.run, name=f"daemon-{group}", daemon=True)
    thread.start()
    return daemon, thread


def test_telegraf_prometheus_and_otlp_messages_are_scored(broker, small_bundle):
    bs = broker.bootstrap_servers
    runs = {}
    poison = {
        "telegraf": (
            {"name": "cpu", "tags": {"host": "web-9"}, "timestamp": T0,
             "fields": {"usage_user": "high"}},
            "non_numeric_feature",
        ),
        # a row that never completes: dead-lettered once it waited input.max_wait_s
        "prometheus": (
            {"timestamp": "2025-12-06T01:00:00Z", "value": "0.5", "name": "vg_a",
             "labels": {"instance": "web-9:9100", "job": "node"}},
            "missing_feature",
        ),
        # no host.name attribute: no entity
        "otlp-json": (
            {"resourceMetrics": [{"scopeMetrics": [{"metrics": [
                {"name": "vg.a", "gauge": {"dataPoints": [{"asDouble": 1.0}]}}]}]}]},
            "invalid_field",
        ),
    }  # fmt: skip
    # a staleness marker (the adapter's "NaN"): skipped, neither a record nor a dead letter
    stale = {"timestamp": "2025-12-06T02:00:00Z", "value": "NaN", "name": "vg_a",
             "labels": {"instance": "web-0:9100", "job": "node"}}  # fmt: skip
    before = {o: metrics.INPUT_MESSAGES.labels(o)._value.get() for o in ("held", "unmapped")}
    try:
        for fmt, messages, section in (
            ("telegraf", telegraf_messages(), TELEGRAF),
            ("prometheus", prometheus_messages(), PROMETHEUS),
            ("otlp-json", otlp_messages(), OTLP),
        ):
            topic, group = unique(f"in-{fmt}"), unique(fmt)
            create_topic(bs, topic, 1)
            producer = Producer(bs)
            extra = [stale] if fmt == "prometheus" else []
            for m in [*messages, *extra, poison[fmt][0]]:
                producer.send(topic, m)
            end = producer.flush()
            daemon, thread = _daemon(bs, small_bundle, topic, group, section)
            scores, dlq = Collector(bs, f"{group}.scores"), Collector(bs, f"{group}.dlq")
            runs[fmt] = (daemon, thread, topic, group, end, scores, dlq)

        for fmt, (_, thread, topic, group, end, scores, dlq) in runs.items():
            scores.wait_count(N_ROWS, timeout=60, message=f"{fmt}: {N_ROWS} score records")
            dlq.wait_count(1, timeout=30, message=f"{fmt}: the poison message dead-lettered")
            assert thread.is_alive()
            records = sorted(scores.json(), key=lambda r: r["ts"])  # keyed over 3 partitions
            assert len(records) == N_ROWS, records
            step, port = (60, ":9100") if fmt == "prometheus" else (10, "")
            assert [(r["key"], r["ts"]) for r in records] == [
                (f"web-{i % 2}{port}", T0 + step * i) for i in range(N_ROWS)
            ]
            assert all(isinstance(r["score"], float) for r in records)
            assert {c["feature"] for r in records for c in r["contributions"]} <= set("abcd")
            [dead] = dlq.messages
            headers = dict(dead.headers)
            assert headers["vaeguard.errors.reason"].decode() == poison[fmt][1], headers
            assert json.loads(dead.value) == poison[fmt][0]  # the original message, as it came
            # Every message is committed once no row waits (the incomplete one included).
            wait_for(
                lambda t=topic, g=group, e=end: committed(bs, g, t, [0]) == {0: e[0]},
                timeout=30,
                message=f"{fmt}: offsets committed to the end",
            )
        # counted on /metrics: the adapter's samples waited in rows, the marker was skipped
        after = {o: metrics.INPUT_MESSAGES.labels(o)._value.get() for o in before}
        assert after["held"] > before["held"] and after["unmapped"] > before["unmapped"]
    finally:
        for daemon, *_ in runs.values():
            daemon.stop()
        for _, thread, *_ in runs.values():
            thread.join(30)


TP = namedtuple("TP", "topic partition")


def test_commits_stop_at_the_first_sample_a_waiting_row_holds():
    """A tabular row waiting for its features holds samples of messages already polled: the
    partition's commit must not pass them, or a crash would lose them; a rebalance drops the
    rows and says where to rewind."""
    stage = InputStage(InputSpec(format="prometheus", entity=("labels.instance",)))
    serving = SimpleNamespace(stateful=False, entity_field="key", required_fields=["a", "b"])
    reader, _ = stage.bind(serving)
    tp = TP("in", 0)

    def sample(name: str, offset: int, minute: int = 0) -> None:
        message = {"name": name, "labels": {"instance": "h"}, "value": "1",
                   "timestamp": f"2025-12-06T00:{minute:02d}:00Z"}  # fmt: skip
        reader.read(message, origin=offset, where=("in", 0, offset))

    sample("a", 5)
    assert stage.commit_offsets({tp: 6}) == {tp: 5}  # not past the waiting sample
    stage.committed({tp: 5})
    sample("b", 6)  # the row is complete: nothing waits
    assert stage.commit_offsets({tp: 7}) == {tp: 7}
    stage.committed({tp: 7})
    sample("a", 9, minute=1)
    assert stage.commit_offsets({tp: 10}) == {tp: 9}
    assert stage.revoked({tp}) == {("in", 0): 9} and stage.reader.waiting() == 0
