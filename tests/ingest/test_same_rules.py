"""The daemon, retraining, `vaeguard score`, training files, the Python API, replay and the NAB
reader accept and reject exactly the same records and values."""

from __future__ import annotations

import json
import math
from collections import namedtuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from vaeguard.ingest import MAX_DEPTH

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
    from vaeguard.records.batch import StepSettings, process
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
    from vaeguard.retrain.recent import RecentData
    from vaeguard.retrain.settings import RetrainSettings

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
        x, _, skipped = job._table(current, RecentData(records=[record]))
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


#: Refusals about what a table of rows does not carry: the entity key, the timestamp and the
#: record's size on the wire (training and the Python API read feature values only).
NOT_READ_BY_TABLES = {"invalid_timestamp", "oversize_key", "oversize"}


def _table_outcome(daemon: str) -> str | None:
    """What a table reader does with a row the daemon gave ``daemon``: read it or refuse it
    (None: the daemon's verdict is about what a table does not carry)."""
    if daemon in NOT_READ_BY_TABLES:
        return None
    return "read" if daemon == "scored" else "refused"


def test_training_files_read_what_the_daemon_scores(tmp_path, daemon_view):
    """`vaeguard train` / `evaluate` read a JSONL file's values by the daemon's rules: a row the
    daemon refuses for its values or its JSON stops training with a one-line DataError."""
    from vaeguard.data import feature_matrix
    from vaeguard.errors import DataError
    from vaeguard.tabular_files import read_table

    outcomes = []
    for i, (value, _) in enumerate(TABLE):
        path = tmp_path / f"row{i}.jsonl"
        path.write_bytes(value + b"\n")
        try:
            feature_matrix(read_table(path), list("abcd"))
            outcomes.append("read")
        except DataError as exc:
            assert "\n" not in str(exc)
            outcomes.append("refused")
    expected = [_table_outcome(d) for d in daemon_view]
    assert [o for o, e in zip(outcomes, expected, strict=True) if e is not None] == [
        e for e in expected if e is not None
    ]


def test_the_python_api_reads_what_the_daemon_scores(small_bundle, daemon_view):
    """`VAEDetector.decision_function` on a record (a dict, as decoded) and on a DataFrame of
    it: the same verdicts as the daemon on every value."""
    import pandas as pd

    from vaeguard import VAEDetector
    from vaeguard.errors import DataError
    from vaeguard.ingest import decode

    det = VAEDetector.load(small_bundle)
    checked = 0
    for (value, _), daemon in zip(TABLE, daemon_view, strict=True):
        record = decode(value, MAX_BYTES)
        if not isinstance(record, dict) or daemon in NOT_READ_BY_TABLES:
            continue  # not a record at all: nothing to hand the API
        for data in ([record], pd.DataFrame([record])):
            try:
                det.decision_function(data)
                got = "read"
            except DataError:
                got = "refused"
            if isinstance(data, pd.DataFrame) and daemon == "missing_feature":
                continue  # a DataFrame fills a missing column per row with NaN: refused too
            assert got == _table_outcome(daemon), (record, daemon)
        checked += 1
    assert checked >= 12


_CELLS = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["1_000", " 3 ", "1e3", "nan", "-Infinity", "12,5", "0x10", "1e999", "٣"]),
    lambda inner: (
        st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner, max_size=2)
    ),
    max_leaves=4,
)


@settings(max_examples=300, deadline=None)
@given(cell=_CELLS)
def test_a_table_cell_is_read_exactly_when_a_record_field_is(cell):
    """Any cell a JSON row can hold: the table reader (training, evaluate, the Python API)
    takes it as the number the daemon would, or refuses it with a DataError, never another
    exception."""
    from vaeguard.data import feature_matrix
    from vaeguard.errors import DataError
    from vaeguard.ingest import to_number

    expected = to_number(cell, "feature 'a'")
    for table in ({"a": [cell]}, [{"a": cell}]):
        try:
            got = float(feature_matrix(table, ["a"])[0][0, 0])
        except DataError:
            got = None
        assert got == (expected if isinstance(expected, float) else None), (cell, expected)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(max_size=12) | st.sampled_from(["1_000", " 3 ", "-7", "1e3", "nan", "٣"]))
def test_the_nab_reader_reads_a_value_exactly_when_the_daemon_would(text, tmp_path):
    """`vaeguard nab` reads a series' value cell as the number a record field would give, and
    refuses the file (a DataError naming the line) where the daemon would refuse the field."""
    import csv

    from vaeguard.apps.nab import read_series
    from vaeguard.errors import DataError
    from vaeguard.ingest import to_number

    path = tmp_path / "series.csv"
    with open(path, "w", newline="", encoding="utf-8", errors="surrogatepass") as f:
        csv.writer(f).writerows([["timestamp", "value"], ["2026-12-01 00:00:00", text]])
    expected = to_number(text, "value")
    try:
        _, values = read_series(path)
    except DataError as exc:
        assert not isinstance(expected, float), (text, str(exc))
        return
    assert isinstance(expected, float) and to_number(values[0], "value") == expected


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=12) | st.sampled_from(["1_000", " 3 ", "-7", "1e3", "nan", "12,5"]))
def test_replay_turns_a_csv_cell_into_a_number_exactly_when_the_daemon_would_read_one(text):
    """`vaeguard replay` sends CSV text as a JSON number only where the daemon itself would read
    the text as that number: it never turns a cell the daemon refuses into one it scores."""
    from vaeguard.apps.replay import json_row
    from vaeguard.ingest import to_number

    row = json_row({"a": text})
    expected = to_number(text, "feature 'a'")
    if isinstance(expected, float):
        assert type(row["a"]) in (int, float) and row["a"] == expected
    elif expected is None:
        assert row == {}  # an empty cell is left out: missing, as the daemon reads it
    else:
        assert row["a"] == text


# -- the dict source: a record that comes decoded is judged as its JSON text would be ----------


def _nested(depth: int) -> dict:
    """A record whose field ``n`` nests ``depth`` objects below the record itself."""
    inner: dict = {"x": 1}
    for _ in range(depth - 1):
        inner = {"n": inner}
    return {**GOOD, "n": inner}


class _Text(str):
    """A str subclass, as enums and ORMs hand out."""


#: (the record as a Python caller holds it, the same record as JSON text, outcome): what has
#: no JSON object of its own in `TABLE` (numbers JSON text cannot hold as Python values),
#: plus the Python types JSON text never yields.
PY_TABLE = [
    ({**GOOD, "a": math.nan}, _raw("a", "NaN"), "non_finite"),
    ({**GOOD, "a": -math.inf}, _raw("a", "-Infinity"), "non_finite"),
    ({**GOOD, "b": 10**400}, _raw("b", "1" + "0" * 400), "non_finite"),
    ({**GOOD, "b": 10**5000}, _raw("b", "1" + "0" * 5000), "integer_too_long"),
    ({**GOOD, "b": 2**64}, _raw("b", str(2**64)), "scored"),  # beyond 64 bits: a float
    ({**GOOD, "b": -(2**63)}, _raw("b", str(-(2**63))), "scored"),
    (_nested(MAX_DEPTH - 1), json.dumps(_nested(MAX_DEPTH - 1)).encode(), "scored"),
    (_nested(MAX_DEPTH), json.dumps(_nested(MAX_DEPTH)).encode(), "too_deep"),
    ({**GOOD, "a": np.float64(0.5), "b": _Text("-1")}, _with(a=0.5, b="-1"), "scored"),
    ({**GOOD, _Text("host"): _Text("web")}, _with(host="web"), "scored"),
    ({**GOOD, "tags": ("x", (1, None))}, _with(tags=["x", [1, None]]), "scored"),
    ({**GOOD, "note": "\ud800"}, _with(note="\ud800"), "scored"),  # a lone surrogate escape
]


def _run(serving, items):
    from vaeguard.records.batch import StepSettings, process
    from vaeguard.severity import DEFAULT_BANDS
    from vaeguard.sources import source_of

    out = process(serving, items, StepSettings("o", "d", MAX_BYTES, 3, DEFAULT_BANDS, "g", "i"))
    got = {r.source.offset: r.to_json() for r in out.scored}
    got.update({source_of(d.message).offset: d for d in out.dead})
    assert len(got) == len(items) and len(out.outputs) == len(items)
    return [got[i] for i in range(len(items))]


def test_a_dict_source_and_a_bytes_source_give_the_same_verdicts(small_bundle):
    """Every record of `TABLE` that is a JSON object, and every record of `PY_TABLE`: handed
    over decoded (`sources.Record`) it gets exactly the score record, or the rejection, that its
    JSON text gets as a Kafka message. The sizes apply to both (the record's size is its text's,
    as a CSV row's is); a refusal made while reading the value names the field instead of the
    literal, with the same reason, exception class and stage."""
    from vaeguard.ingest import STAGE_DECODE, decode
    from vaeguard.scored import Source
    from vaeguard.serving import load_serving
    from vaeguard.sources import Record

    Message = namedtuple("Message", "topic partition offset key value headers timestamp")
    pairs = [(decode(v, 1 << 30), v, want) for v, want in TABLE]
    pairs = [(d, v, want) for d, v, want in pairs if isinstance(d, dict)] + PY_TABLE
    texts = [Message("t", 0, i, None, v, None, 0) for i, (_, v, _) in enumerate(pairs)]
    records = [Record(d, Source("t", 0, i), None, 0, len(v)) for i, (d, v, _) in enumerate(pairs)]
    # one model each: a model may follow what it has scored (its threshold)
    from_text = _run(load_serving(small_bundle, "v1"), texts)
    from_dict = _run(load_serving(small_bundle, "v1"), records)
    outcomes = [r if isinstance(r, dict) else r.reason for r in from_dict]
    assert [o if isinstance(o, str) else "scored" for o in outcomes] == [w for *_, w in pairs]
    assert len(pairs) >= 30 and {"scored", "oversize", "too_deep", "oversize_key"} <= {
        w for *_, w in pairs
    }
    for (d, _, want), a, b in zip(pairs, from_text, from_dict, strict=True):
        if want == "scored":
            assert a == b, d  # the same score record, source included
            continue
        ra, rb = a.rejection, b.rejection
        assert (ra.reason, ra.error_class, ra.stage, a.stage_class) == (
            rb.reason, rb.error_class, rb.stage, b.stage_class
        ), d  # fmt: skip
        if ra.stage != STAGE_DECODE:
            assert ra.detail == rb.detail, d


def test_a_record_without_a_size_is_not_held_to_one(small_bundle):
    """A dict in memory has no size on the wire: only a source that has one (a file row) is
    held to ``max_record_bytes``; the entity rule applies to every source."""
    from vaeguard.scored import Source
    from vaeguard.serving import load_serving
    from vaeguard.sources import Record

    big = {**GOOD, "note": "x" * (2 * MAX_BYTES)}
    items = [
        Record(big, Source("t", 0, 0)),
        Record(big, Source("t", 0, 1), size=2 * MAX_BYTES),
        Record({**GOOD, "key": "e" * 4097}, Source("t", 0, 2)),
    ]
    got = _run(load_serving(small_bundle, "v1"), items)
    assert isinstance(got[0], dict) and got[0]["source"]["offset"] == 0
    assert [g.reason for g in got[1:]] == ["oversize", "oversize_key"]


_ODD = st.sampled_from(
    [b"bytes", {1, 2}, object(), np.int64(3), np.float32(0.5), np.array([1.0]), 1j, _Text("7")]
)


def test_a_dict_that_holds_itself_is_refused_not_followed():
    from vaeguard.ingest import Reason, check_record

    loop: dict = {**GOOD}
    loop["self"] = loop
    ring: list = []
    ring.append(ring)
    assert [check_record(r).reason for r in (loop, {**GOOD, "ring": ring})] == [
        Reason.TOO_DEEP,
        Reason.TOO_DEEP,
    ]


_ODD_NAMES = st.sampled_from([1, None, 1.5, b"k", (1,), np.int64(2), _Text("k")])
_PY_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([64, 400, 5000]).map(lambda n: -(10**n))  # beyond 64 bits, a float …
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["12.5", " 3 ", "nan", "1e999", "2026-12-01T10:00:00Z"])
    | _ODD,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=3) | _ODD_NAMES, inner, max_size=3)
    ),
    max_leaves=8,
)
_PY_RECORDS = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d", "key", "ts", "host"]) | st.text(max_size=3),
    _PY_VALUES,
    max_size=7,
) | _PY_VALUES.map(lambda v: {**GOOD, "x": v})


@settings(max_examples=300, deadline=None)
@given(record=_PY_RECORDS)
def test_any_python_dict_is_a_json_record_or_a_clear_rejection(record):
    """`check_record` on any dict: the record its JSON text decodes to, or a one-line refusal
    with the reason the decoder gives that text (where Python can write it as JSON at all)."""
    from vaeguard.ingest import Reason, Rejection, check_record, decode

    got = check_record(record)
    if isinstance(got, dict):
        text = json.dumps(got, allow_nan=False).encode()  # only JSON values are left
        assert decode(text, 1 << 40) == got
        return
    assert isinstance(got, Rejection) and got.detail and "\n" not in got.detail
    if got.reason == Reason.INVALID_FIELD:
        return  # not a JSON value at all (json.dumps would write an int name as a string)
    try:
        text = json.dumps(record).encode()
    except (TypeError, ValueError):
        return  # Python cannot write it as JSON either
    refused = decode(text, 1 << 40)
    assert isinstance(refused, Rejection) and refused.reason == got.reason, (record, refused)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(_PY_RECORDS, min_size=1, max_size=4))
def test_any_python_dict_through_the_batch_step_is_scored_or_refused(small_bundle, batch):
    """The dict source end to end: each record gets a score record or a dead letter with a
    reason, and the batch step never raises."""
    from vaeguard.scored import Source
    from vaeguard.sources import Record

    items = [Record(r, Source("py", 0, i)) for i, r in enumerate(batch)]
    for verdict in _run(_serving(small_bundle), items):
        assert isinstance(verdict, dict) or (verdict.reason and verdict.detail)


_SERVINGS: dict = {}


def _serving(bundle):
    from vaeguard.serving import load_serving

    if bundle not in _SERVINGS:
        _SERVINGS[bundle] = load_serving(bundle, "v1")
    return _SERVINGS[bundle]
