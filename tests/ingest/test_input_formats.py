"""Input formats (`vaeguard.input_formats`): the documented example record of each format, the
field mapping, row assembly, and for every format a property test: arbitrary input gives flat
records or a clear `Rejection` through the ingestion contract, never an exception."""

from __future__ import annotations

import copy
import json
from collections import namedtuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.json_fuzz import dump, json_values, paths, replace
from vaeguard.config import load_settings
from vaeguard.errors import ConfigError
from vaeguard.ingest import Reason, Rejection, decode
from vaeguard.input_formats import (
    InputReader,
    InputSpec,
    RowAssembler,
    Sample,
    parse_selector,
    read_messages,
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Telegraf's JSON serializer (outputs.kafka, data_format = "json"), as its docs show it.
TELEGRAF = {
    "fields": {"usage_user": 12.5, "usage_system": 3.25, "usage_idle": 84.25},
    "name": "cpu",
    "tags": {"cpu": "cpu-total", "host": "web-1"},
    "timestamp": 1764979200,
}
#: The Prometheus remote-write Kafka adapter (Telefonica/prometheus-kafka-adapter), JSON.
PROMETHEUS = {
    "timestamp": "2025-12-06T00:00:00Z",
    "value": "0.42",
    "name": "node_load1",
    "labels": {"__name__": "node_load1", "instance": "web-1:9100", "job": "node"},
}
#: An OTLP ExportMetricsServiceRequest in its JSON encoding (the Collector's Kafka exporter
#: with encoding otlp_json): a gauge with asDouble and a sum with asInt (int64 as a string).
OTLP = {
    "resourceMetrics": [
        {
            "resource": {
                "attributes": [
                    {"key": "host.name", "value": {"stringValue": "web-1"}},
                    {"key": "service.name", "value": {"stringValue": "checkout"}},
                ]
            },
            "scopeMetrics": [
                {
                    "scope": {"name": "otelcol/hostmetricsreceiver/load"},
                    "metrics": [
                        {
                            "name": "system.cpu.load_average.1m",
                            "unit": "{thread}",
                            "gauge": {
                                "dataPoints": [
                                    {"asDouble": 0.42, "timeUnixNano": "1764979200000000000"}
                                ]
                            },
                        },
                        {
                            "name": "http.server.requests",
                            "unit": "{request}",
                            "sum": {
                                "aggregationTemporality": 2,
                                "isMonotonic": True,
                                "dataPoints": [
                                    {
                                        "asInt": "1200",
                                        "timeUnixNano": "1764979200000000000",
                                        "attributes": [
                                            {"key": "method", "value": {"stringValue": "GET"}}
                                        ],
                                    }
                                ],
                            },
                        },
                        {"name": "http.duration", "histogram": {"dataPoints": [{"count": "3"}]}},
                    ],
                }
            ],
        }
    ]
}


def reader(fmt: str, required=(), assemble=False, **kw) -> InputReader:
    return InputReader(InputSpec(format=fmt, **kw), required=required, assemble=assemble)


# -- the documented examples ----------------------------------------------------------------


def test_telegraf_example_is_one_record_per_metric():
    got = reader("telegraf").read(TELEGRAF, "m")
    assert got.refused == []
    [(record, origin)] = got.records
    assert origin == "m"
    assert record == {
        "usage_user": 12.5,
        "usage_system": 3.25,
        "usage_idle": 84.25,
        "key": "web-1",
        "ts": 1764979200.0,
    }


def test_telegraf_batch_form_and_a_mapping_with_matchers():
    batch = {
        "metrics": [
            TELEGRAF,
            {**TELEGRAF, "tags": {"cpu": "cpu0", "host": "web-1"}, "fields": {"usage_user": 99}},
            {"name": "mem", "tags": {"host": "web-1"}, "fields": {"used_percent": 40}, "timestamp": 1764979200},
        ]
    }  # fmt: skip
    r = reader(
        "telegraf",
        required=("user", "mem"),
        assemble=True,
        fields={"user": 'fields.usage_user{name="cpu", tags.cpu="cpu-total"}',
                "mem": "fields.used_percent"},
    )  # fmt: skip
    got = r.read(batch, "m", ("t", 0, 5))
    assert got.refused == [] and got.unmapped == 0
    [(record, _)] = got.records  # cpu + mem: one row, complete once both came
    assert record == {"user": 12.5, "mem": 40.0, "key": "web-1", "ts": 1764979200.0}


def test_prometheus_adapter_example():
    got = reader("prometheus", required=("node_load1",)).read(PROMETHEUS, "m")
    [(record, _)] = got.records
    assert record == {"node_load1": 0.42, "key": "web-1:9100", "ts": 1764979200.0}
    other = {**PROMETHEUS, "name": "up", "labels": {"instance": "x"}}
    assert reader("prometheus", required=("node_load1",)).read(other).unmapped == 1


def test_a_prometheus_staleness_marker_is_skipped_not_dead_lettered():
    stale = {**PROMETHEUS, "value": "NaN"}
    got = reader("prometheus", required=("node_load1",)).read(stale)
    assert not got.records and not got.refused and got.unmapped == 1
    # a non-finite number that is not the adapter's marker is still refused
    assert (
        reader("prometheus", required=("node_load1",)).read({**PROMETHEUS, "value": "+Inf"}).refused
    )


def test_prometheus_label_set_entity_and_selector():
    r = reader(
        "prometheus",
        fields={"load": 'node_load1{job="node"}'},
        entity=("labels.instance", "labels.job"),
    )
    [(record, _)] = r.read(PROMETHEUS).records
    assert record["key"] == "instance=web-1:9100,job=node" and record["load"] == 0.42
    assert r.read({**PROMETHEUS, "labels": {"instance": "a", "job": "other"}}).unmapped == 1


def test_otlp_example_gauge_and_sum():
    r = reader(
        "otlp-json",
        fields={
            "load": "system.cpu.load_average.1m",
            "get_requests": 'http.server.requests{method="GET"}',
        },
    )
    got = r.read(OTLP, "m")
    assert got.refused == []
    # a window model's record: the message's points of one entity and time, together
    assert got.records == [
        ({"load": 0.42, "get_requests": 1200.0, "key": "web-1", "ts": 1764979200.0}, "m")
    ]


def test_otlp_rows_assembled_for_a_tabular_model():
    r = reader("otlp-json", required=("load", "get_requests"), assemble=True, fields={
        "load": "system.cpu.load_average.1m", "get_requests": "http.server.requests"})  # fmt: skip
    [(record, origin)] = r.read(OTLP, "m").records
    assert record == {"load": 0.42, "get_requests": 1200.0, "key": "web-1", "ts": 1764979200.0}
    assert origin == "m"


@pytest.mark.parametrize(
    ("fmt", "message", "reason", "words"),
    [
        ("telegraf", {"name": "cpu", "fields": "x"}, Reason.INVALID_FIELD, "'fields'"),
        ("telegraf", {**TELEGRAF, "tags": {}}, Reason.INVALID_FIELD, "tags.host"),
        ("telegraf", {**TELEGRAF, "timestamp": "soon"}, Reason.INVALID_TIMESTAMP, "timestamp"),
        ("telegraf", {**TELEGRAF, "fields": {"usage_user": "x"}}, Reason.NON_NUMERIC, "usage_user"),
        ("prometheus", {**PROMETHEUS, "value": "-Inf"}, Reason.NON_FINITE, "node_load1"),
        ("prometheus", {**PROMETHEUS, "value": "+Inf"}, Reason.NON_FINITE, "node_load1"),
        ("prometheus", {**PROMETHEUS, "labels": []}, Reason.INVALID_FIELD, "labels"),
        ("prometheus", {"name": "node_load1"}, Reason.INVALID_FIELD, "value"),
        ("otlp-json", {"resourceMetrics": {}}, Reason.INVALID_FIELD, "resourceMetrics"),
        ("otlp-json", {"x": 1}, Reason.INVALID_FIELD, "resourceMetrics"),
    ],
)
def test_refusals_use_the_contract_reasons(fmt, message, reason, words):
    got = reader(fmt, required=("node_load1", "usage_user")).read(message)
    assert got.records == []
    [(rejection, _)] = got.refused
    assert rejection.reason == reason and words in rejection.detail


# -- assembly ----------------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_row_closes_when_complete_newest_value_wins():
    a = RowAssembler(("a", "b"), interval_s=10, max_rows=10, max_wait_s=60)
    assert a.add(Sample("h", 100.0, {"a": 1.0}), "m1", ("t", 0, 1)) == []
    assert a.add(Sample("h", 101.0, {"a": 2.0}), "m2", ("t", 0, 2)) == []
    assert a.held_from() == {("t", 0): 1}
    [row] = a.add(Sample("h", 102.0, {"b": 5.0}), "m3", ("t", 0, 3))
    assert (row.values, row.time, row.origin, row.rejection) == (
        {"a": 2.0, "b": 5.0},
        102.0,
        "m3",
        None,
    )
    assert a.held_from() == {}
    late = a.add(Sample("h", 105.0, {"b": 1.0}), "m4")  # the same interval, already closed
    assert isinstance(late, Rejection) and late.reason == Reason.LATE_RECORD


def test_rows_of_several_intervals_wait_at_once():
    """Samples spread over partitions come out of time order: each interval's row waits."""
    a = RowAssembler(("a", "b"), interval_s=10, max_rows=10, max_wait_s=60)
    assert a.add(Sample("h", 100.0, {"a": 1.0}), "m1", ("t", 0, 1)) == []
    assert a.add(Sample("h", 111.0, {"a": 3.0}), "m2", ("t", 1, 7)) == []
    assert a.held_from() == {("t", 0): 1, ("t", 1): 7}
    [row] = a.add(Sample("h", 101.0, {"b": 2.0}), "m3", ("t", 1, 8))
    assert (row.values, row.time, row.origin) == ({"a": 1.0, "b": 2.0}, 101.0, "m3")
    assert a.held_from() == {("t", 1): 7} and len(a) == 1


def test_entity_bound_closes_the_oldest_row_first():
    a = RowAssembler(("a", "b"), interval_s=10, max_rows=2, max_wait_s=60)
    a.add(Sample("h1", 100.0, {"a": 1.0}), "m1")
    a.add(Sample("h2", 100.0, {"a": 1.0}), "m2")
    [row] = a.add(Sample("h3", 100.0, {"a": 1.0}), "m3")
    assert row.entity == "h1" and row.rejection.reason == Reason.MISSING_FEATURE
    assert len(a) == 2


def test_incomplete_row_dead_lettered_or_masked_after_max_wait():
    clock = Clock()
    for incomplete, expect in (("dead_letter", Reason.MISSING_FEATURE), ("mask", None)):
        a = RowAssembler(("a", "b"), interval_s=10, max_rows=10, max_wait_s=5,
                         incomplete=incomplete, clock=clock)  # fmt: skip
        a.add(Sample("h", 100.0, {"a": 1.0}), "m1")
        assert not a.due_now() and a.due() == []
        clock.now += 5
        assert a.due_now()
        [row] = a.due()
        assert (row.rejection and row.rejection.reason) == expect
        if expect:
            assert "'b'" in row.rejection.detail and "00:01:40Z" in row.rejection.detail
        assert len(a) == 0


def test_window_models_get_one_record_per_sample():
    r = reader("prometheus", required=("node_load1", "up"), assemble=False)
    [(record, _)] = r.read(PROMETHEUS).records
    assert "up" not in record and record["node_load1"] == 0.42


def test_read_messages_of_a_file_by_the_daemon_rules():
    lines = [
        (1, json.dumps(PROMETHEUS).encode()),
        (2, json.dumps({**PROMETHEUS, "name": "up", "value": "1"}).encode()),
        (3, b"{not json"),
        (4, json.dumps({**PROMETHEUS, "value": "+Inf"}).encode()),
        (5, json.dumps({**PROMETHEUS, "timestamp": "2025-12-06T00:00:30Z"}).encode()),
    ]
    r = reader("prometheus", required=("node_load1", "up"), assemble=True)
    records, refused = read_messages(lines, r, max_bytes=10_000)
    assert records == [{"node_load1": 0.42, "up": 1.0, "key": "web-1:9100", "ts": 1764979200.0}]
    assert [(line, rej.reason) for line, rej in refused] == [
        (3, Reason.INVALID_JSON),
        (4, Reason.NON_FINITE),
        (5, Reason.MISSING_FEATURE),  # the last row, closed at the end of the file
    ]


# -- settings ----------------------------------------------------------------------------------


def test_input_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("VAEGUARD_INPUT__FORMAT", "prometheus")
    monkeypatch.setenv("VAEGUARD_INPUT__ENTITY", "labels.instance,labels.job")
    monkeypatch.setenv("VAEGUARD_INPUT__FIELDS", '{"load": "node_load1{job=\\"node\\"}"}')
    monkeypatch.setenv("VAEGUARD_INPUT__MAX_WAIT_S", "5")
    s = load_settings()
    assert s.input.format == "prometheus" and s.input.max_wait_s == 5
    assert s.input.spec().entity == ("labels.instance", "labels.job")
    assert s.input.spec().fields == {"load": 'node_load1{job="node"}'}


def test_flat_is_the_default_and_takes_no_mapping():
    assert load_settings().input.format == "flat"
    with pytest.raises(ConfigError, match=r"input.format"):
        load_settings(input={"format": "flat", "entity": ["tags.host"]})


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ({"format": "influx"}, "input.format"),
        ({"format": "prometheus", "fields": {"x": 'a{b="c"'}}, "fields.x"),
        ({"format": "prometheus", "fields": {"x": "a{b=c}"}}, "fields.x"),
        ({"format": "telegraf", "entity": "tags..host"}, "dotted path"),
        ({"format": "telegraf", "incomplete": "drop"}, "input.incomplete"),
        ({"format": "telegraf", "interval_s": 0}, "input.interval_s"),
    ],
)
def test_bad_input_settings_name_the_setting(section, words):
    with pytest.raises(ConfigError, match=words):
        load_settings(input=section)


def test_selectors():
    s = parse_selector('node_cpu_seconds_total{mode="user", cpu="0"}', "prometheus")
    assert s.value({"name": "node_cpu_seconds_total", "labels": {"mode": "user", "cpu": "0"},
                    "value": "1.5"}) == (True, "1.5")  # fmt: skip
    assert s.value({"name": "node_cpu_seconds_total", "labels": {"mode": "idle", "cpu": "0"},
                    "value": "1"})[0] is False  # fmt: skip
    dotted = parse_selector('fields.x{tags.path="/a\\"b"}', "telegraf")
    assert dotted.value({"fields": {"x": 1}, "tags": {"path": '/a"b'}}) == (True, 1)


# -- properties --------------------------------------------------------------------------------

wild = json_values()
#: Shapes close to each format, with wild values anywhere, so the fuzz reaches deep paths.
telegraf_like = st.fixed_dictionaries(
    {"name": wild, "tags": wild | st.dictionaries(st.sampled_from(["host", "cpu"]), wild),
     "fields": wild | st.dictionaries(st.sampled_from(["usage_user", "usage_idle"]), wild),
     "timestamp": wild},
) | st.fixed_dictionaries({"metrics": st.lists(wild | st.just(TELEGRAF), max_size=3)})  # fmt: skip
prometheus_like = st.fixed_dictionaries(
    {"name": wild | st.just("node_load1"), "value": wild,
     "labels": wild | st.dictionaries(st.sampled_from(["instance", "job"]), wild),
     "timestamp": wild}
)  # fmt: skip
otlp_point = st.fixed_dictionaries(
    {"asDouble": wild, "asInt": wild, "timeUnixNano": wild,
     "attributes": wild | st.lists(st.fixed_dictionaries({"key": wild, "value": wild}))}
)  # fmt: skip
otlp_like = st.fixed_dictionaries(
    {"resourceMetrics": wild | st.lists(st.fixed_dictionaries(
        {"resource": wild | st.fixed_dictionaries({"attributes": wild}),
         "scopeMetrics": wild | st.lists(st.fixed_dictionaries({"metrics": wild | st.lists(
             st.fixed_dictionaries({"name": wild | st.just("system.cpu.load_average.1m"),
                                    "gauge": wild | st.fixed_dictionaries(
                                        {"dataPoints": wild | st.lists(otlp_point, max_size=2)})}),
             max_size=2)}), max_size=2)}), max_size=2)}
)  # fmt: skip


def mutated(example):
    """The documented example with a wild value (a number, a string, NaN...) at one place."""
    places = list(paths(example))
    return st.tuples(
        st.sampled_from(places), wild | st.sampled_from(["1.5", "NaN", 7, "+Inf"])
    ).map(lambda pv: replace(copy.deepcopy(example), *pv))


SHAPES = {
    "telegraf": telegraf_like | mutated(TELEGRAF),
    "prometheus": prometheus_like | mutated(PROMETHEUS),
    "otlp-json": otlp_like | mutated(OTLP),
}
REQUIRED = ("usage_user", "usage_idle", "node_load1", "system.cpu.load_average.1m")


def _check(read, reader: InputReader) -> None:
    for record, _ in read.records:
        assert isinstance(record["key"], str) and isinstance(record["ts"], float)
        values = {k: v for k, v in record.items() if k not in ("key", "ts")}
        assert values and set(values) <= set(REQUIRED)
        assert all(type(v) is float and v == v and abs(v) != float("inf") for v in values.values())
    for rejection, _ in read.refused:
        assert isinstance(rejection, Rejection) and isinstance(rejection.reason, Reason)
        assert rejection.detail and len(rejection.detail) <= 500


@pytest.mark.parametrize("fmt", sorted(SHAPES))
@pytest.mark.parametrize("assemble", [False, True])
def test_any_message_gives_records_or_a_rejection(fmt, assemble):
    r = reader(fmt, required=REQUIRED, assemble=assemble, max_wait_s=1, max_rows=3)

    @FUZZ
    @given(message=SHAPES[fmt] | wild)
    def run(message):
        obj = decode(dump(message).encode(), 1 << 20)
        if isinstance(obj, Rejection):
            return
        got = r.read(obj, "m", ("t", 0, 1))
        _check(got, r)
        assert got.records or got.refused or got.unmapped or got.held

    run()
    _check(r.close_all(), r)


@FUZZ
@given(data=st.binary(max_size=200))
def test_any_bytes_go_through_the_contract(data):
    for fmt in SHAPES:
        r = reader(fmt, required=REQUIRED, assemble=True)
        records, refused = read_messages([(1, data)], r, max_bytes=1 << 20)
        assert all(isinstance(rec, dict) for rec in records)
        assert all(line == 1 and isinstance(rej, Rejection) for line, rej in refused)


# -- the daemon's batch step with an input format, through a real model ----------------------

Message = namedtuple("Message", "topic partition offset key value headers timestamp")
_MODEL_EXAMPLES = {
    "telegraf": {"name": "m", "tags": {"host": "h1"}, "timestamp": 1764979200,
                 "fields": {"a": 0.1, "b": -0.2, "c": 0.3, "d": 0.0}},
    "prometheus": {"name": "a", "labels": {"instance": "h1"}, "value": "0.5",
                   "timestamp": "2025-12-06T00:00:00Z"},
    "otlp-json": {"resourceMetrics": [{"resource": {"attributes": [
        {"key": "host.name", "value": {"stringValue": "h1"}}]}, "scopeMetrics": [{"metrics": [
            {"name": f, "gauge": {"dataPoints": [{"asDouble": 0.1, "timeUnixNano": "1764979200000000000"}]}}
            for f in "abcd"]}]}]},
}  # fmt: skip
_STAGES: dict = {}


@pytest.mark.parametrize("fmt", sorted(_MODEL_EXAMPLES))
def test_the_batch_step_with_an_input_format_never_raises(small_bundle, fmt):
    """Arbitrary messages of a format through the daemon's batch step and a real model: score
    records and dead letters with the contract's reasons, never an exception."""
    from vaeguard.records.batch import StepSettings, process
    from vaeguard.records.inputs import InputStage
    from vaeguard.serving import load_serving
    from vaeguard.severity import DEFAULT_BANDS

    serving = load_serving(small_bundle, "v1")
    stage = InputStage(InputSpec(format=fmt, max_wait_s=0.001))
    step = StepSettings("o", "d", 4096, 3, DEFAULT_BANDS, "g", "i")
    offsets = iter(range(10**9))

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(mutated(_MODEL_EXAMPLES[fmt]) | wild, min_size=1, max_size=6))
    def run(values):
        messages = [Message("t", 0, next(offsets), None, dump(v).encode(), [], 0) for v in values]
        out = process(serving, messages, step, stage)
        for d in out.dead:
            assert isinstance(d.rejection.reason, Reason) and d.rejection.detail
        for r in out.scored:
            assert r.key == "h1" or isinstance(r.key, str)
        assert all(isinstance(value, bytes) for _, _, value, _ in out.outputs)

    run()
