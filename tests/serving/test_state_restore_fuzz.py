"""The window-state file is data read from disk, not trusted (issue 26, "files are data").

Restoring it gives a valid state or a refusal that moves the file aside (counted, logged), never
an escaping exception: a NaN or infinite threshold, scaler statistic or weight is refused, an
``end`` of ``1e400`` is refused instead of crash-looping the daemon, and the offsets it holds are
bounded by the consumer group's committed ones so that `covers` never skips records the group
has not committed. With ``scoring.state_key`` the file is authenticated (HMAC-SHA256).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.json_fuzz import dump, json_values, paths, replace
from tests.serving.window_model import TP, records, snapshot, window_bundle
from vaeguard.apps.online import TOPIC, as_records, step_settings
from vaeguard.daemon import metrics  # noqa: F401 (registers the counter)
from vaeguard.daemon.checkpoint import Checkpoint, StateStore
from vaeguard.errors import DataError
from vaeguard.scored import Source

PARTITION = f"{TOPIC}:0"
KEY = b"0123456789abcdef0123"


@pytest.fixture(scope="module")
def serving():
    from vaeguard.serving import load_serving
    from vaeguard.timeseries.learning import refit_state

    serving = load_serving(window_bundle(), "v1")
    serving.bundle_state = refit_state(serving.views)
    return serving


def fresh(serving):
    """``serving`` back to the bundle's model with no state, without loading it again."""
    from vaeguard.timeseries.learning import apply_refit_state

    apply_refit_state(serving.views, serving.bundle_state)
    serving._serving_refit(0)
    serving.model_id = serving._model_id
    serving.state = serving.views.featurizer()
    serving.likelihood = serving.views.likelihood()
    serving.offsets = {}
    return serving


def refused(state_dir) -> int:
    return len(list(state_dir.glob("*.window-state.json.bad-*")))


def counted(kind: str) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value("vaeguard_window_state_refused_total", {"reason": kind})
    return value or 0.0


def restore_file(serving, tmp_path, text: str | bytes, key: bytes | None = None) -> Checkpoint:
    store = StateStore(tmp_path, "g", "i", key)
    store.path.write_bytes(text.encode() if isinstance(text, str) else text)
    checkpoint = Checkpoint(store, 0.0, lambda offsets: None)
    checkpoint.take_over(serving, "v1")
    return checkpoint


def thresholds(serving) -> list[float]:
    return [float(v.threshold_.value) for v in serving.views.views]


# -- the cases ---------------------------------------------------------------------------


def test_a_nan_threshold_in_the_state_file_is_refused_and_the_file_moved_aside(serving, tmp_path):
    fresh(serving)
    before = thresholds(serving)
    state = snapshot()
    state["refit"]["views"][0]["threshold"]["value"] = math.nan
    was = counted("corrupt")
    restore_file(serving, tmp_path, json.dumps(state))  # Python writes NaN as the token NaN
    assert thresholds(serving) == before and all(map(math.isfinite, thresholds(serving)))
    assert serving.n_entities == 0 and serving.offsets == {}
    assert refused(tmp_path) == 1 and not list(tmp_path.glob("*.window-state.json"))
    assert counted("corrupt") == was + 1


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "1e400", "NaN"])
def test_a_non_finite_refit_threshold_is_refused_by_restore_itself(serving, value):
    """Also when the state does not come from a file (a hot swap hands it over in memory)."""
    fresh(serving)
    before = thresholds(serving)
    state = snapshot()
    state["refit"]["views"][1]["threshold"]["value"] = value
    with pytest.raises(DataError, match="threshold"):
        serving.restore(state)
    assert thresholds(serving) == before and serving.n_entities == 0


def test_an_end_of_1e400_is_refused_not_a_crash(serving, tmp_path):
    fresh(serving)
    text = json.dumps(snapshot())
    text = re.sub(r'"end":-?\d+', '"end":1e400', text.replace(" ", ""), count=1)
    restore_file(serving, tmp_path, text)
    assert refused(tmp_path) == 1 and serving.n_entities == 0


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s["featurizer"]["entities"][0]["scaler"]["var"].__setitem__(0, -1.0),
        lambda s: s["featurizer"]["entities"][0]["scaler"]["mean"].__setitem__(0, "1e400"),
        lambda s: s["featurizer"]["entities"][0]["recent"][-1].__setitem__(0, True),
        lambda s: s["featurizer"]["entities"][0].__setitem__("interval", -60.0),
        lambda s: s["featurizer"]["entities"][0].__setitem__("end", 12.5),
        lambda s: s["featurizer"]["entities"][0].__setitem__("end", 10**30),  # stalls it
        lambda s: s["featurizer"]["entities"][0].__setitem__("origin", 5e9),  # after last_ts
        lambda s: s["featurizer"]["entities"][0].__setitem__("last_ts", 1e300),
        lambda s: s["refit"]["views"][0]["plausible_range"]["low"].__setitem__(0, 1e300),
        lambda s: s["refit"]["views"][0]["weights"][1].__setitem__("shape", [1e400]),
        lambda s: s["refit"].__setitem__("refits", 1e400),
        lambda s: s["offsets"].__setitem__(PARTITION, -5),
        lambda s: s["offsets"].__setitem__(PARTITION, 2**70),
        lambda s: s["offsets"].__setitem__("no-partition", 3),
        lambda s: s.__setitem__("committed", {PARTITION: "7"}),
    ],
)
def test_malformed_fields_are_refused_whole(serving, tmp_path, edit):
    fresh(serving)
    state = snapshot()
    edit(state)
    restore_file(serving, tmp_path, json.dumps(state))
    assert refused(tmp_path) == 1
    assert serving.n_entities == 0 and serving.offsets == {} and serving.learning.refits == 0


def test_a_good_file_restores_everything(serving, tmp_path):
    fresh(serving)
    restore_file(serving, tmp_path, json.dumps(snapshot()))
    assert refused(tmp_path) == 0
    assert serving.n_entities == 2 and serving.offsets == {PARTITION: 160}
    assert serving.learning.refits == 1 and serving.model_id.endswith("+refit1")


# -- offsets are bounded by the group's committed ones ---------------------------------------------


def held_file(serving, tmp_path, offset: int, believed: int | None) -> Checkpoint:
    """Restore a state holding records up to ``offset``, saved when the daemon believed the
    group had committed ``believed``; the group's offsets are not known yet."""
    fresh(serving)
    state = snapshot()
    state["offsets"] = {PARTITION: offset}
    state["committed"] = {} if believed is None else {PARTITION: believed}
    checkpoint = restore_file(serving, tmp_path, json.dumps(state))
    assert serving.offsets == {PARTITION: offset}  # not known yet: held as saved
    return checkpoint


def test_offsets_ahead_of_the_committed_ones_are_cut_back_when_they_become_known(serving, tmp_path):
    """A restore happens before the committed offsets are fetched: the cut comes with them. A
    file claiming offset 10**12 (or a group rewound to reprocess) must not skip records."""
    checkpoint = held_file(serving, tmp_path, 10**12, believed=10**12 - 5)
    assert serving.covers(Source(TOPIC, 0, 200))  # what the old code did from here on
    checkpoint.committed({TP(TOPIC, 0): 150})
    assert serving.offsets == {PARTITION: 150}
    assert serving.covers(Source(TOPIC, 0, 149)) and not serving.covers(Source(TOPIC, 0, 150))


def test_no_committed_offset_means_nothing_is_covered(serving, tmp_path):
    checkpoint = held_file(serving, tmp_path, 160, believed=None)
    checkpoint.committed({TP(TOPIC, 0): None})
    assert serving.offsets == {} and not serving.covers(Source(TOPIC, 0, 0))


def test_a_crash_between_the_save_and_its_commit_still_skips_what_the_state_holds(
    serving, tmp_path
):
    """The file records that the group had committed 150 when the state (up to 160) was saved;
    the group still has 150: the commit of 160 never happened, so records 150 … 159 are in the
    state and must not be fed twice."""
    checkpoint = held_file(serving, tmp_path, 160, believed=150)
    checkpoint.committed({TP(TOPIC, 0): 150})
    assert serving.offsets == {PARTITION: 160} and serving.covers(Source(TOPIC, 0, 159))


def test_offsets_behind_the_committed_ones_are_left_alone(serving, tmp_path):
    checkpoint = held_file(serving, tmp_path, 160, believed=100)
    checkpoint.committed({TP(TOPIC, 0): 170})
    assert serving.offsets == {PARTITION: 160}


def test_a_stateless_to_window_swap_cuts_at_once_with_the_known_offsets(serving, tmp_path):
    """Committed offsets learned while a row model served: a window state restored later is
    bounded by them immediately (the file is from an older run)."""
    fresh(serving)
    state = snapshot()
    state["committed"] = {PARTITION: 100}
    store = StateStore(tmp_path, "g", "i")
    store.path.write_text(json.dumps(state))
    checkpoint = Checkpoint(store, 0.0, lambda offsets: None)
    checkpoint.committed({TP(TOPIC, 0): 120})  # while nothing stateful serves
    checkpoint.take_over(serving, "v2")
    assert serving.offsets == {PARTITION: 120} and serving.n_entities == 2


def test_the_saved_file_records_what_was_committed_before_its_commit(serving, tmp_path):
    fresh(serving)
    commits = []
    store = StateStore(tmp_path, "g", "i")
    checkpoint = Checkpoint(store, 0.0, commits.append)
    checkpoint.take_over(serving, "v1")
    checkpoint.committed({TP(TOPIC, 0): 0})
    checkpoint.done(serving, {TP(TOPIC, 0): 40})
    checkpoint.done(serving, {TP(TOPIC, 0): 90})
    saved = json.loads(store.path.read_text())
    assert saved["offsets"] == {PARTITION: 90} and saved["committed"] == {PARTITION: 40}
    assert commits == [{TP(TOPIC, 0): 40}, {TP(TOPIC, 0): 90}]


# -- HMAC ------------------------------------------------------------------------------------------


def test_an_authenticated_file_restores_and_a_changed_one_is_refused(serving, tmp_path):
    fresh(serving)
    store = StateStore(tmp_path, "g", "i", KEY)
    store.save(snapshot())
    signed = store.path.read_bytes()
    assert signed.startswith(b"HMAC-SHA256 ") and store.read() == snapshot()

    was = counted("unauthenticated")
    changed = signed.replace(b'"end":', b'"end":1', 1)
    restore_file(serving, tmp_path, changed, KEY)
    assert refused(tmp_path) == 1 and serving.n_entities == 0
    restore_file(serving, tmp_path, signed, b"another key of 16+ bytes")
    restore_file(serving, tmp_path, json.dumps(snapshot()), KEY)  # not signed at all
    assert refused(tmp_path) == 3 and serving.n_entities == 0
    assert counted("unauthenticated") == was + 3

    restore_file(serving, tmp_path, signed, KEY)
    assert serving.n_entities == 2
    fresh(serving)
    restore_file(serving, tmp_path, signed)  # the key taken out of the settings: not checked
    assert serving.n_entities == 2


def test_the_state_key_setting_is_a_secret_of_16_characters_or_more():
    from pydantic import ValidationError

    from vaeguard.config import ScoringSettings
    from vaeguard.daemon.checkpoint import state_key

    settings = ScoringSettings(state_key="k" * 16)
    assert "k" * 16 not in repr(settings) and state_key(settings) == b"k" * 16
    assert state_key(ScoringSettings()) is None
    with pytest.raises(ValidationError, match="state_key"):
        ScoringSettings(state_key="short")


# -- arbitrary state files -------------------------------------------------------------------------


JSON = json_values()


def check_valid(serving) -> None:
    """What a restored state must be: finite everything, Kafka offsets, a stream it can score."""
    for view in serving.views.views:
        assert math.isfinite(view.threshold_.value)
        assert np.isfinite(view.baseline_).all()
        for w in view.model_.get_weights():
            assert np.isfinite(w).all()
        if view.plausible_range_ is not None:
            assert np.isfinite(view.plausible_range_.low).all()
    for offset in serving.offsets.values():
        assert isinstance(offset, int) and 0 <= offset < 2**63
    for entity in serving.state._entities.values():
        s = entity.scaler
        assert np.isfinite([s.count, s.mean, s.var]).all() and (s.var >= 0).all()
        assert isinstance(entity.end, int)
    from vaeguard.records.batch import process

    # points after the entity's latest restored one: scored or buffered, never "late" (a
    # restored slot beyond its latest point would stall the entity for good)
    entity = serving.state._entities.get("web-1")
    start = max(entity.last_ts if entity is not None else -math.inf, 1_600_100_000.0)
    later = [{**r, "ts": start + 60.0 * (i + 1)} for i, r in enumerate(records(12))]
    done = process(serving, as_records(later), step_settings())
    assert not done.isolated
    assert not [d for d in done.dead if d.reason == "late_record"], done.dead


@functools.cache
def all_paths() -> list[tuple]:
    return sorted(set(paths(snapshot())), key=repr)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    edits=st.lists(
        st.tuples(st.deferred(lambda: st.sampled_from(all_paths())), JSON), min_size=1, max_size=3
    ),
    committed=st.none() | st.integers(0, 10**6),
)
def test_arbitrary_state_files_restore_whole_or_are_moved_aside(
    serving, tmp_path_factory, edits, committed
):
    """Arbitrary JSON in any field of a valid snapshot (written as text: 1e400, NaN, huge and
    negative numbers): a valid state, or the file moved aside and a fresh start. Never an
    exception out of the daemon's restore, never half a state."""
    tmp_path = tmp_path_factory.mktemp("state")
    fresh(serving)
    state = snapshot()
    for path, value in edits:
        with contextlib.suppress(KeyError, IndexError, TypeError):  # a place an edit removed
            state = replace(state, path, value)
    text = dump(state)
    checkpoint = restore_file(serving, tmp_path, text)
    checkpoint.committed({TP(TOPIC, 0): committed})
    event("refused" if refused(tmp_path) else "restored")
    if refused(tmp_path):
        assert serving.n_entities == 0 and serving.offsets == {}
        assert serving.learning.refits == 0
    else:
        assert not list(tmp_path.glob("*.bad-*"))
    held = serving.offsets.get(PARTITION)
    assert (
        held is None
        or (committed is not None and held <= max(committed, 0))
        or (  # trusted: the file says the group had committed just that when it was saved
            isinstance(written := json.loads(text), dict)
            and isinstance(written.get("committed"), dict)
            and written["committed"].get(PARTITION) == committed
        )
    )
    check_valid(serving)
    # the snapshot of whatever was restored saves (no NaN to refuse at the next save)
    json.dumps(serving.snapshot(), allow_nan=False)
