"""A CVAE's categorical condition taken from a Telegraf tag, a Prometheus label or an OTLP
attribute through ``input.fields`` (``role: tags.role``): trained from a Telegraf file with
``vaeguard train --input-settings``, then scored by the daemon's batch step, with the flat
record's refusals (a missing condition is ``missing_feature``; an unseen category is scored)."""

from __future__ import annotations

import json
from collections import namedtuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tests.ingest.test_input_formats import SHAPES, wild
from tests.json_fuzz import dump
from vaeguard.ingest import Reason, Rejection, decode
from vaeguard.input_formats import InputReader, InputSpec, parse_selector

T0 = 1_764_979_200
ROLES = ("db", "web")
MAPPING = {"a": "fields.a", "b": "fields.b", "role": "tags.role"}
Message = namedtuple("Message", "topic partition offset key value headers timestamp")


def telegraf(i: int, role: str | None, a: float, b: float, **extra) -> dict:
    tags = {"host": f"h{i % 4}"} | ({"role": role} if role is not None else {})
    return {"name": "app", "tags": tags, "fields": {"a": a, "b": b, **extra},
            "timestamp": T0 + 10 * i}  # fmt: skip


@pytest.fixture(scope="module")
def cvae(tmp_path_factory):
    """A CVAE trained by the CLI from Telegraf messages, its condition from the role tag."""
    from vaeguard.cli.main import app

    tmp = tmp_path_factory.mktemp("cvae")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(400):
        role = ROLES[i % 2]
        z = rng.standard_normal()
        shift = 3.0 if role == "db" else -3.0
        lines.append(telegraf(i, role, z + shift, 0.5 * z + 0.1 * rng.standard_normal()))
    lines.append(
        {
            "name": "mem",
            "tags": {"host": "h1", "role": "db"},
            "fields": {"used": 1.0},
            "timestamp": T0,
        }
    )  # fmt: skip  (tags only: unmapped, not a row)
    data = tmp / "telegraf.jsonl"
    data.write_text("".join(json.dumps(m) + "\n" for m in lines))
    cfg = tmp / "vaeguard.yaml"
    cfg.write_text(
        "input:\n  format: telegraf\n  entity: tags.host\n  fields:\n"
        + "".join(f"    {k}: {v}\n" for k, v in MAPPING.items())
    )
    result = CliRunner().invoke(
        app,
        ["train", "--data", str(data), "--input-settings", str(cfg), "--features", "a,b",
         "--conditions", "role", "--out", str(tmp / "model"), "--json", "--epochs", "5",
         "--hidden", "8", "--latent-dim", "2", "--mc-samples", "2", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rows"] == 400, summary
    assert summary["conditions"] == [{"name": "role", "kind": "categorical"}], summary
    return tmp / "model", cfg


def test_a_condition_from_a_tag_trains_and_scores(cvae):
    from vaeguard.config import load_settings
    from vaeguard.records.batch import StepSettings, process
    from vaeguard.records.inputs import InputStage
    from vaeguard.serving import load_serving
    from vaeguard.severity import DEFAULT_BANDS

    model, cfg = cvae
    serving = load_serving(model, "v1")
    assert serving.categorical_conditions == ["role"]
    stage = InputStage(load_settings(cfg).input.spec())
    step = StepSettings("o", "d", 4096, 3, DEFAULT_BANDS, "g", "i")
    sent = [
        telegraf(0, "db", 3.0, 0.0),
        telegraf(1, "web", -3.0, 0.0),
        telegraf(2, "cache", 0.0, 0.0),  # a category unseen in training: scored, as flat does
        telegraf(3, "db", "high", 0.0),  # a feature that is no number: refused as in flat
    ]
    messages = [Message("t", 0, i, None, json.dumps(m).encode(), [], 0) for i, m in enumerate(sent)]
    out = process(serving, messages, step, stage)
    assert sorted(r.key for r in out.scored) == ["h0", "h1", "h2"]
    [dead] = out.dead
    assert dead.rejection.reason == Reason.NON_NUMERIC
    # the condition reached the model: the rows were encoded with their own role
    reader, _ = InputStage(stage.spec).bind(serving)  # its own rows: these are not late
    records = [r for m in sent[:3] for r, _ in reader.read(m).records]
    assert [r["role"] for r in records] == ["db", "web", "cache"]
    c = serving.conditions.transform(records)
    assert c.tolist() == [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]


def test_a_row_without_its_condition_is_incomplete_as_a_flat_record_without_it(cvae):
    """No role tag: the row waits for it, then is dead-lettered as missing_feature naming it
    (``mask`` passes it on, and the model refuses it with the same reason, as a flat record
    without the condition)."""
    from vaeguard.config import load_settings
    from vaeguard.serving import load_serving

    model, cfg = cvae
    serving = load_serving(model, "v1")
    spec = load_settings(cfg).input.spec()
    for incomplete in ("dead_letter", "mask"):
        s = InputSpec(**{**spec.__dict__, "incomplete": incomplete})
        r = InputReader(s, required=serving.required_fields, assemble=True, labels=["role"])
        got = r.read(telegraf(0, None, 3.0, 0.0))
        assert not got.records and got.held == 1
        end = r.close_all()
        if incomplete == "dead_letter":
            [(rejection, _)] = end.refused
            assert rejection.reason == Reason.MISSING_FEATURE and "'role'" in rejection.detail
        else:
            [(record, _)] = end.records
            refused = serving.check(record)
            assert isinstance(refused, Rejection) and refused.reason == Reason.MISSING_FEATURE
            assert refused.detail == "condition 'role' is missing"


@pytest.mark.parametrize(
    "fmt, fields, messages",
    [
        (
            "prometheus",
            {"a": "vg_a", "role": "labels.role"},
            [
                {"name": "up", "value": "1", "timestamp": T0,
                 "labels": {"instance": "h1", "role": "db"}},
                {"name": "vg_a", "value": "0.5", "timestamp": T0,
                 "labels": {"instance": "h1", "role": "db"}},
            ],
        ),
        (
            "otlp-json",
            {"a": "vg.a", "role": "attributes.service.namespace"},
            [{"resourceMetrics": [{"resource": {"attributes": [
                {"key": "host.name", "value": {"stringValue": "h1"}},
                {"key": "service.namespace", "value": {"stringValue": "db"}}]},
                "scopeMetrics": [{"metrics": [
                    {"name": "other", "gauge": {"dataPoints": [
                        {"asDouble": 1, "timeUnixNano": str(T0 * 10**9)}]}},
                    {"name": "vg.a", "gauge": {"dataPoints": [
                        {"asDouble": 0.5, "timeUnixNano": str(T0 * 10**9)}]}}]}]}]}],
        ),
    ],
)  # fmt: skip
def test_a_label_or_attribute_rides_with_the_samples_of_the_one_sample_formats(
    fmt, fields, messages
):
    """``labels.role`` / ``attributes.…`` are paths, not metric names; a sample that carries
    only the label (another metric) is unmapped, not a row of its own."""
    assert parse_selector(fields["role"], fmt).label
    assert not parse_selector(fields["a"], fmt).label
    r = InputReader(
        InputSpec(format=fmt, fields=fields), required=["a", "role"], assemble=True,
        labels=["role"],
    )  # fmt: skip
    records = []
    unmapped = 0
    for m in messages:
        got = r.read(m)
        records += [rec for rec, _ in got.records]
        unmapped += got.unmapped
    assert [(rec["a"], rec["role"]) for rec in records] == [(0.5, "db")]
    assert r.waiting() == 0 and (unmapped == 1 or fmt == "otlp-json")


LABELLED = {
    "telegraf": {"usage_user": "fields.usage_user", "usage_idle": "fields.usage_idle",
                 "role": "tags.cpu"},
    "prometheus": {"node_load1": "node_load1", "role": "labels.job"},
    "otlp-json": {"system.cpu.load_average.1m": "system.cpu.load_average.1m",
                  "role": "attributes.service.name"},
}  # fmt: skip


@pytest.mark.parametrize("fmt", sorted(SHAPES))
def test_any_message_with_a_label_mapping_gives_records_or_a_rejection(fmt):
    fields = LABELLED[fmt]
    r = InputReader(
        InputSpec(format=fmt, fields=fields, max_wait_s=1, max_rows=3),
        required=list(fields), assemble=True, labels=["role"],
    )  # fmt: skip
    features = set(fields) - {"role"}

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(message=SHAPES[fmt] | wild)
    def run(message):
        obj = decode(dump(message).encode(), 1 << 20)
        if isinstance(obj, Rejection):
            return
        got = r.read(obj, "m", ("t", 0, 1))
        for record, _ in got.records:
            assert isinstance(record["key"], str) and isinstance(record["ts"], float)
            numbers = {k: v for k, v in record.items() if k in features}
            assert numbers and all(type(v) is float and np.isfinite(v) for v in numbers.values())
            assert set(record) <= {*fields, "key", "ts"} and record.get("role", "") is not None
        for rejection, _ in got.refused:
            assert isinstance(rejection.reason, Reason) and rejection.detail
        assert got.records or got.refused or got.unmapped or got.held

    run()
    end = r.close_all()
    assert all(isinstance(rej.reason, Reason) for rej, _ in end.refused)


@settings(max_examples=50, deadline=None)
@given(value=st.one_of(st.none(), st.text(max_size=8), st.integers(), st.floats()))
def test_a_tag_of_any_value_is_a_category_or_missing(value):
    r = InputReader(
        InputSpec(format="telegraf", fields=MAPPING), required=["a", "b", "role"],
        assemble=True, labels=["role"],
    )  # fmt: skip
    got = r.read({"name": "app", "tags": {"host": "h", "role": value},
                  "fields": {"a": 1.0, "b": 2.0}, "timestamp": T0})  # fmt: skip
    if value is None:
        assert got.held == 1 and not got.records
    else:
        [(record, _)] = got.records
        assert record["role"] == value or (value != value and record["role"] != record["role"])


def test_retraining_reads_the_condition_from_the_tag_too(cvae):
    """Retraining decodes its window as the daemon reads: the tag's category, not a refusal."""
    from vaeguard.detector import load_bundle
    from vaeguard.retrain.job import RetrainJob
    from vaeguard.retrain.settings import RetrainSettings

    model, cfg = cvae
    from vaeguard.config import load_settings

    job = RetrainJob(None, RetrainSettings(), {}, ["t"], input_spec=load_settings(cfg).input.spec())
    decode = job._decoder(load_bundle(model))
    [record] = decode(json.dumps(telegraf(0, "web", -3.0, 0.5)).encode())
    assert record == {"a": -3.0, "b": 0.5, "role": "web", "key": "h0", "ts": float(T0)}
