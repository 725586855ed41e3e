"""Property-based tests of the size limits on keys, entities and headers (issue 26): for all
inputs, a valid result or an ``oversize_*`` rejection, never an exception, and never an output
larger than the producer sends."""

from __future__ import annotations

import json
from collections import namedtuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ingest.test_contract_fuzz import json_values
from vaeguard.ingest import (
    Reason,
    Rejection,
    check_entity,
    check_envelope,
    decode,
    entity_text,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMIT = 64

keys = st.one_of(st.none(), st.binary(max_size=2 * LIMIT))
header_lists = st.one_of(
    st.none(),
    st.lists(st.tuples(st.text(max_size=20), st.one_of(st.none(), st.binary(max_size=200)))),
)
entities = st.one_of(
    json_values,
    st.text(min_size=LIMIT // 4, max_size=2 * LIMIT),  # around the limit, any characters
    st.text(alphabet="é€😀", min_size=1, max_size=LIMIT),  # 2-, 3- and 4-byte UTF-8
    st.lists(st.text(max_size=20), max_size=8),
)


def _too_long(entity) -> bool:
    return entity is not None and len(entity_text(entity).encode("utf-8", "replace")) > LIMIT


def _size(headers) -> int:
    return sum(len(k.encode("utf-8", "replace")) + len(v or b"") for k, v in headers or [])


@FUZZ
@given(keys, header_lists)
def test_the_envelope_is_accepted_or_refused_by_its_size(key, headers):
    out = check_envelope(key, headers, LIMIT, 4 * LIMIT)
    too_long = key is not None and len(key) > LIMIT
    if out is None:
        assert not too_long and _size(headers) <= 4 * LIMIT
        return
    assert isinstance(out, Rejection)
    if too_long:
        assert out.reason == Reason.OVERSIZE_KEY and out.stage == "KEY_CONVERTER"
    else:
        assert out.reason == Reason.OVERSIZE_HEADERS and _size(headers) > 4 * LIMIT


@FUZZ
@given(st.one_of(st.integers(), st.text(), st.binary(), st.lists(st.integers())))
def test_headers_that_are_not_pairs_are_refused_not_raised(headers):
    out = check_envelope(None, headers, LIMIT, 4 * LIMIT)
    assert out is None or isinstance(out, Rejection)


@FUZZ
@given(entities, st.sampled_from(["key", "host"]))
def test_an_entity_is_accepted_or_refused_by_its_size_as_text(entity, field):
    out = check_entity({field: entity, "a": 1.0}, field, LIMIT)
    if entity is None:
        assert out is None
        return
    fits = len(entity_text(entity).encode("utf-8", "replace")) <= LIMIT
    if fits:
        assert out is None
    else:
        assert isinstance(out, Rejection) and out.reason == Reason.OVERSIZE_KEY
        assert f"scoring.max_key_bytes={LIMIT}" in out.detail
    assert check_entity({"other": entity}, field, LIMIT) is None  # absent: not an entity


Message = namedtuple("Message", "topic partition offset key value headers timestamp")


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(keys, header_lists, entities), min_size=1, max_size=8))
def test_the_batch_step_accounts_for_every_key_entity_and_header(small_bundle, messages):
    """Through a real model: each offset is scored or dead-lettered, and each output fits."""
    from vaeguard.records.batch import StepSettings, process
    from vaeguard.records.wire import record_size
    from vaeguard.serving import load_serving
    from vaeguard.severity import DEFAULT_BANDS

    serving = _SERVINGS.get(small_bundle) or _SERVINGS.setdefault(
        small_bundle, load_serving(small_bundle, "v1")
    )
    good = {"a": 0.1, "b": -0.2, "c": 0.3, "d": 0.0}
    batch = [
        Message("t", 0, i, key, json.dumps({**good, "key": entity}).encode(), headers, 0)
        for i, (key, headers, entity) in enumerate(messages)
    ]
    limit, max_bytes = 4096, 4 * LIMIT + 1024
    step = StepSettings("o", "d", max_bytes, 3, DEFAULT_BANDS, "g", "i", limit, max_key_bytes=LIMIT)
    out = process(serving, batch, step)
    outcome = {r.source.offset: "scored" for r in out.scored}
    outcome.update({d.message.offset: d.reason for d in out.dead})
    assert sorted(outcome) == list(range(len(batch)))
    for i, (key, headers, _) in enumerate(messages):
        if key is not None and len(key) > LIMIT:
            assert outcome[i] == "oversize_key"
        elif _size(headers) > max_bytes:
            assert outcome[i] == "oversize_headers"
        elif isinstance(obj := decode(batch[i].value, 10**6), dict) and _too_long(obj["key"]):
            assert outcome[i] in ("oversize_key", "oversize")  # "oversize": the whole value
    for _, key, value, headers in out.outputs:
        assert isinstance(value, bytes) and record_size(key, value, headers) <= limit
    assert len(out.origins) == len(out.outputs)


_SERVINGS: dict = {}
