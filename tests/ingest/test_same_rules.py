"""The daemon, retraining and `vaeguard score` accept and reject exactly the same records."""

from __future__ import annotations

import json
from collections import namedtuple

import pytest
from typer.testing import CliRunner

GOOD = {"a": 0.1, "b": -0.2, "c": 0.3, "d": 0.0}


def _with(**fields) -> bytes:
    return json.dumps({**GOOD, **fields}).encode()


def _raw(field: str, literal: str) -> bytes:
    body = json.dumps({k: v for k, v in GOOD.items() if k != field})
    return (body[:-1] + f', "{field}": {literal}}}').encode()


#: (message value, outcome): "scored" or the dead-letter reason. One line of a JSONL file each.
TABLE = [
    (_with(), "scored"),
    (_with(a="12.5"), "scored"),
    (_with(a=" 3 ", b="-1e3"), "scored"),
    (_with(a=True), "scored"),
    (_with(ts="2026-12-01T10:00:00Z", key={"x": 1}), "scored"),
    (_with(ts=1_790_000_000_000), "scored"),  # epoch milliseconds
    (_with(host="web", note="anything"), "scored"),
    (_with(a=""), "missing_feature"),
    (_with(a=None), "missing_feature"),
    (json.dumps({"a": 1, "b": 2, "c": 3}).encode(), "missing_feature"),
    (_with(a="12,5"), "non_numeric_feature"),
    (_with(a=[1]), "non_numeric_feature"),
    (_with(a="1_000"), "non_numeric_feature"),
    (_with(a="nan"), "non_finite"),
    (_with(a="-Infinity"), "non_finite"),
    (_with(a="1e999"), "non_finite"),
    (_raw("a", "1e400"), "non_finite"),
    (_raw("a", "NaN"), "non_finite"),
    (_raw("b", "9" * 400), "non_finite"),
    (_raw("b", "9" * 5000), "integer_too_long"),
    (_with(ts="nan"), "invalid_timestamp"),
    (_with(ts=1e300), "invalid_timestamp"),
    (_with(ts="tomorrow"), "invalid_timestamp"),
    (b"[" * 5000, "too_deep"),
    (b'{"a": 1', "invalid_json"),
    (b"\xff\xfe", "invalid_utf8"),
    (b'"just a string"', "not_an_object"),
    (b'{"pad": "' + b"x" * 10_000 + b'"}', "oversize"),
    (_with(key="e" * 4097), "oversize_key"),  # the entity, beyond scoring.max_key_bytes
]
MAX_BYTES = 8192


def test_the_table_is_one_line_per_record():
    assert all(b"\n" not in v and v.strip() for v, _ in TABLE)


@pytest.fixture(scope="module")
def daemon_view(small_bundle):
    from vaeguard.daemon.batch import StepSettings, process
    from vaeguard.serving import load_serving
    from vaeguard.severity import DEFAULT_BANDS

    Message = namedtuple("Message", "topic partition offset key value headers timestamp")
    messages = [Message("t", 0, i, None, v, [], 0) for i, (v, _) in enumerate(TABLE)]
    out = process(
        load_serving(small_bundle, "v1"),
        messages,
        StepSettings("o", "d", MAX_BYTES, 3, DEFAULT_BANDS, "g", "i"),
    )
    got = {r.source.offset: "scored" for r in out.scored}
    got.update({d.message.offset: d.reason for d in out.dead})
    return [got[i] for i in range(len(TABLE))]


def test_the_daemon_follows_the_table(daemon_view):
    assert daemon_view == [outcome for _, outcome in TABLE]


def test_retraining_reads_what_the_daemon_scores(small_bundle, daemon_view):
    from vaeguard import VAEDetector
    from vaeguard.ingest import Rejection
    from vaeguard.registry import ModelRegistry
    from vaeguard.retrain.job import RetrainJob
    from vaeguard.retrain.settings import RetrainSettings
    from vaeguard.retrain.window import WindowData

    current = VAEDetector.load(small_bundle)
    job = RetrainJob(
        ModelRegistry.__new__(ModelRegistry), RetrainSettings(), {}, [], max_record_bytes=MAX_BYTES
    )
    outcomes = []
    for value, _ in TABLE:
        record = job.decode(value)
        if isinstance(record, Rejection):
            outcomes.append(str(record.reason))
            continue
        x, _, skipped = job._table(current, WindowData(records=[record]))
        outcomes.append("scored" if x.shape[0] == 1 else next(iter(skipped)))
    assert outcomes == daemon_view


def test_vaeguard_score_reads_what_the_daemon_scores(small_bundle, daemon_view, tmp_path):
    from vaeguard.cli.main import app

    data = tmp_path / "rows.jsonl"
    data.write_bytes(b"\n".join(v for v, _ in TABLE) + b"\n")
    out = tmp_path / "scores.jsonl"
    result = CliRunner().invoke(
        app,
        ["score", "--model", str(small_bundle), "--data", str(data), "--out", str(out),
         "--max-record-bytes", str(MAX_BYTES)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["row"] for r in rows] == list(range(1, len(TABLE) + 1))
    outcomes = [r["rejected"]["reason"] if "rejected" in r else "scored" for r in rows]
    assert outcomes == daemon_view


def test_vaeguard_score_refuses_an_oversize_entity_as_the_daemon_does(small_bundle, tmp_path):
    """The entity cap at its edge: 4096 bytes scored, 4097 refused (the table above holds the
    daemon, retraining and `vaeguard score` to the same refusal)."""
    from vaeguard.cli.main import app

    data = tmp_path / "rows.jsonl"
    data.write_bytes(_with(key="e" * 4096) + b"\n" + _with(key="e" * 4097) + b"\n")
    out = tmp_path / "scores.jsonl"
    result = CliRunner().invoke(
        app, ["score", "--model", str(small_bundle), "--data", str(data), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert "rejected" not in rows[0]
    assert rows[1]["rejected"]["reason"] == "oversize_key"
