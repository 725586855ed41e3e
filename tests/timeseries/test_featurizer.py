"""The per-entity window featurizer on hand-made streams: grid, gaps, lateness, entities, state."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vaeguard.errors import ConfigError, DataError
from vaeguard.timeseries.conditions import TimeConditions, to_epoch_seconds
from vaeguard.timeseries.featurizer import LATE_RECORD, WindowFeaturizer, WindowSpec

NAN = math.nan


def raw(window: int = 4, **kw) -> WindowFeaturizer:
    """Unscaled windows on a fixed 60 s grid, so the expected values can be written by hand."""
    kw.setdefault("interval", 60)
    return WindowFeaturizer(window=window, normalize=False, **kw)


def rec(t, v, key="a", **extra):
    return {"key": key, "ts": t, "value": v, **extra}


def as_window(batch, row):
    """A row of a batch back to a list with None where the mask says missing."""
    return [
        None if m == 0 else float(x) for x, m in zip(batch.x[row], batch.mask[row], strict=True)
    ]


def test_regular_stream_windows_end_at_each_point():
    f = raw()
    b = f.update_and_featurize([rec(60 * i, float(i)) for i in range(6)])
    # warm-up of W=4: the first point with a whole window of the entity's own slots is the 4th
    assert b.keep.tolist() == [3, 4, 5]
    assert as_window(b, 0) == [0.0, 1.0, 2.0, 3.0]
    assert as_window(b, 2) == [2.0, 3.0, 4.0, 5.0]
    assert b.entities == ["a"] * 3
    assert b.ts.tolist() == [60.0 * i for i in range(3, 6)]
    assert f.stats["sparse"] == 3 and f.stats["windows"] == 3


def test_min_observed_zero_scores_every_point_after_the_warm_up_however_sparse_its_window():
    f = raw(min_observed=0.0)
    # warm-up (slots 0-2) unscored; then a point after a gap longer than the whole state sees a
    # window of one observed slot: scored all the same, not counted as sparse
    b = f.update_and_featurize([rec(0, 1.0), rec(60, 2.0), rec(180, 4.0), rec(60 * 100, 9.0)])
    assert b.keep.tolist() == [2, 3]
    assert as_window(b, 0) == [1.0, 2.0, None, 4.0]
    assert as_window(b, 1) == [None, None, None, 9.0]
    assert f.stats["sparse"] == 2 and f.stats["windows"] == 2
    # with the default half-observed gate the same lone point is not scored
    g = raw()
    assert g.update_and_featurize(
        [rec(0, 1.0), rec(60, 2.0), rec(180, 4.0), rec(6000, 9.0)]
    ).keep.tolist() == [2]


def test_min_observed_outside_zero_to_one_is_refused():
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="min_observed"):
            WindowSpec(min_observed=bad)


def test_gap_fills_the_window_with_masked_slots():
    f = raw()
    b = f.update_and_featurize(
        [rec(0, 1.0), rec(60, 2.0), rec(120, 3.0), rec(300, 6.0), rec(360, 7.0)]
    )
    # 180 and 240 never came: slots 3 and 4 are missing (masked, zero in x)
    assert as_window(b, b.keep.tolist().index(3)) == [3.0, None, None, 6.0]
    assert as_window(b, b.keep.tolist().index(4)) == [None, None, 6.0, 7.0]
    assert b.x[b.keep.tolist().index(3)].tolist() == [3.0, 0.0, 0.0, 6.0]
    assert f.stats["missing_slots"] == 2
    # a gap longer than the whole state leaves only the new point: too sparse for a window
    b = f.update_and_featurize([rec(60 * 100, 9.0)])
    assert len(b) == 0 and f.stats["sparse"] >= 1


def test_jittered_timestamps_land_on_the_nearest_slot():
    f = raw()
    b = f.update_and_featurize([rec(0, 0.0), rec(61, 1.0), rec(118, 2.0), rec(185, 3.0)])
    assert as_window(b, 0) == [0.0, 1.0, 2.0, 3.0]
    assert f.stats["missing_slots"] == 0


def test_late_point_within_reach_is_inserted_and_scored_at_its_own_slot():
    f = raw()
    b = f.update_and_featurize(
        [rec(0, 0.0), rec(60, 1.0), rec(120, 2.0), rec(240, 4.0), rec(180, 3.0), rec(300, 5.0)]
    )
    rows = dict(zip(b.keep.tolist(), range(len(b)), strict=True))
    assert as_window(b, rows[3]) == [1.0, 2.0, None, 4.0]  # emitted before the late point came
    assert as_window(b, rows[4]) == [0.0, 1.0, 2.0, 3.0]  # the late point's own window
    assert as_window(b, rows[5]) == [2.0, 3.0, 4.0, 5.0]  # later windows include it
    assert f.stats["late_inserted"] == 1 and f.stats["out_of_order"] == 1


def test_point_older_than_the_lateness_bound_is_rejected_and_counted():
    f = raw(max_lateness=2)
    stream = [rec(60 * i, float(i)) for i in range(11)] + [rec(60 * 7, 99.0), rec(60 * 8, 98.0)]
    b = f.update_and_featurize(stream)
    assert [(r.index, r.reason) for r in b.rejected] == [(11, LATE_RECORD)]
    assert "3 slots behind" in b.rejected[0].detail
    assert f.stats["late_dropped"] == 1
    assert 12 in b.keep.tolist()  # 2 slots back is still accepted (it overwrites slot 8)
    assert f.stats["duplicates"] == 1


def test_same_slot_merges_metrics_and_the_newer_value_wins():
    f = WindowFeaturizer(window=2, metrics=("cpu", "mem"), interval=60, normalize=False)
    b = f.update_and_featurize(
        [
            {"key": "h", "ts": 0, "cpu": 1.0, "mem": 10.0},
            {"key": "h", "ts": 60, "cpu": 2.0},
            {"key": "h", "ts": 60, "mem": 20.0},
            {"key": "h", "ts": 60, "cpu": 3.0, "mem": None},
        ]
    )
    # metric-major: cpu[t-1], cpu[t], mem[t-1], mem[t]; the first point is the warm-up
    assert b.keep.tolist() == [1, 2, 3]
    assert as_window(b, 0) == [1.0, 2.0, 10.0, None]
    assert as_window(b, 1) == [1.0, 2.0, 10.0, 20.0]
    assert as_window(b, 2) == [1.0, 3.0, 10.0, 20.0]
    assert f.stats["duplicates"] == 2
    assert f.spec.feature_names == ["cpu[t-1]", "cpu[t]", "mem[t-1]", "mem[t]"]


def test_rows_mode_ignores_time_gaps():
    f = raw(interval="rows")
    b = f.update_and_featurize([rec(0, 0.0), rec(60, 1.0), rec(6000, 2.0), rec(50, 3.0)])
    assert as_window(b, 0) == [0.0, 1.0, 2.0, 3.0]
    assert f.stats["out_of_order"] == 1 and f.stats["missing_slots"] == 0


def test_interval_is_inferred_from_the_first_points():
    f = WindowFeaturizer(window=4, interval="auto", infer_points=4, normalize=False)
    stream = [rec(300 * i + (7 if i % 2 else -5), float(i)) for i in range(4)]
    assert len(f.update_and_featurize(stream)) == 0  # the points that fix the grid are warm-up
    assert f.stats["pending"] == 4
    b = f.update_and_featurize([rec(300 * 5, 5.0)])  # slot 4 was skipped
    assert as_window(b, 0) == [1.0, 2.0, 3.0, None, 5.0][-4:]
    assert f.stats["missing_slots"] == 1


def test_interleaved_entities_get_the_windows_they_would_get_alone():
    rng = np.random.default_rng(0)
    streams = {
        "web": [rec(60 * i, 100 + 10 * rng.standard_normal(), key="web") for i in range(40)],
        "db": [rec(60 * i + 5, 0.01 * rng.standard_normal(), key="db") for i in range(40)],
    }
    mixed = [r for pair in zip(streams["web"], streams["db"], strict=True) for r in pair]
    together = WindowFeaturizer(window=8, interval=60).update_and_featurize(mixed)
    for key, stream in streams.items():
        alone = WindowFeaturizer(window=8, interval=60).update_and_featurize(stream)
        mine = [i for i, e in enumerate(together.entities) if e == key]
        np.testing.assert_array_equal(together.x[mine], alone.x)
        np.testing.assert_array_equal(together.mask[mine], alone.mask)
    # scale-free: both entities' windows are O(1) whatever their units
    late = together.x[-20:]
    assert 0.05 < np.abs(late).mean() < 5


def test_time_conditions_are_cyclic_hour_and_weekday():
    f = WindowFeaturizer(window=2, interval="rows", conditions=("hour_of_day", "day_of_week"))
    # 2014-04-01 was a Tuesday; 06:00 is a quarter of the day
    b = f.update_and_featurize([rec("2014-04-01 05:00:00", 1.0), rec("2014-04-01T06:00:00Z", 2.0)])
    hour_sin, hour_cos, dow_sin, dow_cos = b.c[-1]
    assert hour_sin == pytest.approx(1.0, abs=1e-6) and hour_cos == pytest.approx(0.0, abs=1e-6)
    phase = 2 * math.pi * (1 + 6 / 24) / 7
    assert (dow_sin, dow_cos) == (
        pytest.approx(math.sin(phase), abs=1e-6),
        pytest.approx(math.cos(phase), abs=1e-6),
    )
    assert TimeConditions(("hour_of_day",)).columns == ["hour_of_day_sin", "hour_of_day_cos"]
    # midnight and 23:59:59 are neighbours on the circle
    enc = TimeConditions(("hour_of_day",)).encode([0.0, 86_399.0])
    assert np.abs(enc[0] - enc[1]).max() < 1e-3


def test_timestamps_parse_or_fail_clearly():
    assert to_epoch_seconds("1970-01-01 00:01:00") == 60.0
    assert to_epoch_seconds("1970-01-01T01:00:00+01:00") == 0.0
    assert to_epoch_seconds(12.5) == 12.5
    with pytest.raises(DataError, match="not ISO 8601"):
        to_epoch_seconds("yesterday")


def test_bad_records_are_rejected_with_a_reason_and_change_nothing():
    f = raw()
    b = f.update_and_featurize(
        [
            {"key": "a", "value": 1.0},
            {"key": "a", "ts": "soon", "value": 1.0},
            {"key": "a", "ts": 0, "value": "high"},
            {"key": "a", "ts": 0, "value": float("inf")},
            {"key": "a", "ts": 0},
            ["not", "a", "dict"],
        ]
    )
    assert len(b) == 0
    assert [r.reason for r in b.rejected] == [
        "missing_feature",
        "invalid_timestamp",
        "non_numeric_feature",
        "non_finite",
        "missing_feature",
        "invalid_field",
    ]
    assert [r.index for r in b.rejected] == list(range(6))
    assert f.n_entities == 0 and f.stats["points"] == 0


def test_entities_are_bounded_least_recently_seen_evicted_first():
    f = raw(window=2, max_entities=2)
    f.update_and_featurize([rec(0, 1.0, key="a"), rec(0, 1.0, key="b"), rec(60, 2.0, key="a")])
    f.update_and_featurize([rec(60, 2.0, key="c")])  # evicts b, the least recently seen
    assert f.n_entities == 2 and f.stats["evicted"] == 1
    b = f.update_and_featurize([rec(120, 3.0, key="a"), rec(120, 3.0, key="b")])
    assert b.entities == ["a"]  # b starts over: one point is not a window yet


def test_invalid_specs_name_the_field():
    with pytest.raises(ConfigError, match="window"):
        WindowSpec(window=1)
    with pytest.raises(ConfigError, match="interval"):
        WindowSpec(interval="hourly")
    with pytest.raises(ConfigError, match="conditions"):
        WindowSpec(conditions=("moon_phase",))


def test_snapshot_restore_continues_with_identical_windows():
    rng = np.random.default_rng(1)
    stream = []
    for i in range(120):
        for key, scale in (("web", 50.0), ("db", 0.1)):
            if key == "db" and 40 <= i < 46:
                continue  # a gap
            stream.append(
                rec(
                    300 * i + int(rng.integers(-20, 20)),
                    scale * (1 + rng.standard_normal()),
                    key=key,
                )
            )
    stream.insert(150, rec(300 * 70, 1.0, key="web"))  # a late point, still within reach
    stream.append(rec(5, 1.0, key="new"))  # an entity still inferring its grid
    spec = WindowSpec(window=16, conditions=("hour_of_day",), infer_points=4)
    first, rest = stream[:161], stream[161:]
    original = WindowFeaturizer(spec)
    original.update_and_featurize(first)
    text = original.to_json()
    json.loads(text)  # strict JSON: no NaN tokens
    restored = WindowFeaturizer.from_json(text)
    rest = [*rest, rec(305, 2.0, key="new"), rec(605, 2.0, key="new"), rec(905, 2.0, key="new")]
    a = original.update_and_featurize(rest)
    b = restored.update_and_featurize(rest)
    assert len(a) > 50
    for name in ("x", "mask", "c", "keep", "ts"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.entities == b.entities
    assert original.stats == restored.stats
    assert original.snapshot() == restored.snapshot()


def test_restore_refuses_foreign_or_corrupt_state():
    with pytest.raises(DataError, match="not a window-state"):
        WindowFeaturizer.restore({"format": "something-else"})
    state = raw().snapshot()
    state["entities"] = [{"key": "a"}]
    with pytest.raises(DataError, match="corrupt"):
        WindowFeaturizer.restore(state)
    with pytest.raises(DataError, match="not JSON"):
        WindowFeaturizer.from_json("{")


@pytest.mark.parametrize("interval", ["auto", 300])
def test_restore_refuses_slots_without_a_grid_origin(interval):
    """An entity with slots but no origin would restart its grid at slot 0 with the next point,
    far behind its newest slot: every later point refused as late, for good (found by the
    state-file fuzz test)."""
    spec = WindowSpec(window=8, interval=interval, infer_points=4)
    featurizer = WindowFeaturizer(spec)
    featurizer.update_and_featurize([rec(300 * i, float(i), key="web") for i in range(40)])
    state = featurizer.snapshot()
    assert state["entities"][0]["end"] > 8
    state["entities"][0]["origin"] = None
    with pytest.raises(DataError, match="grid origin"):
        WindowFeaturizer.restore(state)


def test_no_grid_is_inferred_from_gaps_finer_than_timestamps_resolve():
    """Two points 3e-120 s apart gave a grid of 3e-120 s, which its own snapshot then refused
    (found by the ingestion fuzz test): such gaps are no grid, the points keep waiting."""
    featurizer = WindowFeaturizer(WindowSpec(window=4, metrics=("lat",), infer_points=2))
    featurizer.update_and_featurize(
        [{"ts": 0, "lat": 1.0}, {"ts": 2.9791911964855615e-120, "lat": 1.0}]
    )
    text = featurizer.to_json()
    assert WindowFeaturizer.from_json(text).snapshot() == json.loads(text)
    assert featurizer.stats["pending"] == 2


# -- the state a bundle carries from its training data -------------------------------------------


def _carried_stream(n: int, key: str = "web", start: int = 0) -> list[dict]:
    rng = np.random.default_rng(7)
    return [rec(60 * i, float(rng.normal(10, 2)), key=key) for i in range(start, n)]


def test_a_carried_entity_continues_a_later_stream_with_the_windows_it_would_have_had():
    """Serving the continuation of the training data scores its first point: no window to
    fill again, the same windows and scales as one featurizer reading both parts."""
    spec = WindowSpec(window=8, interval=60, seasonal={"period": 600, "periods": 2})
    trained, rest = _carried_stream(100), _carried_stream(130, start=100)
    whole = WindowFeaturizer(spec)
    whole.update_and_featurize(trained)
    carried = whole.carried_snapshot(1 << 20)
    assert carried is not None and carried["entities"][0]["carried"] is True
    assert set(carried["stats"].values()) == {0}  # serving counts its own points
    served = WindowFeaturizer.restore(json.loads(json.dumps(carried)))
    a = whole.update_and_featurize(rest)
    b = served.update_and_featurize(rest)
    assert len(b) == len(rest)  # the first point of the continuation is scored
    for name in ("x", "mask", "c", "keep", "ts", "center", "scale"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert "carried" not in served.snapshot()["entities"][0]  # continued: an entity like any


def test_a_carried_entity_fed_the_training_data_again_starts_afresh_instead_of_refusing_it():
    """Scoring the training file itself (or older data) is no continuation: its points would
    all be late. The entity starts afresh, and the windows are a fresh featurizer's."""
    spec = WindowSpec(window=8, interval=60)
    trained = _carried_stream(100)
    featurizer = WindowFeaturizer(spec)
    featurizer.update_and_featurize(trained)
    served = WindowFeaturizer.restore(featurizer.carried_snapshot(1 << 20))
    fresh = WindowFeaturizer(spec)
    a = fresh.update_and_featurize(trained)
    b = served.update_and_featurize(trained)
    assert not b.rejected and len(b) == len(a) == 100 - 7
    for name in ("x", "mask", "keep", "center", "scale"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_the_carried_mark_survives_a_snapshot_until_the_entity_is_continued():
    """A daemon may checkpoint before an entity's first point: restored, it still starts that
    entity afresh on older data."""
    spec = WindowSpec(window=8, interval=60)
    featurizer = WindowFeaturizer(spec)
    featurizer.update_and_featurize(_carried_stream(100) + _carried_stream(100, key="db"))
    served = WindowFeaturizer.restore(featurizer.carried_snapshot(1 << 20))
    served.update_and_featurize(_carried_stream(101, start=100))  # web continues
    again = WindowFeaturizer.restore(json.loads(served.to_json()))
    marks = {e["key"]: e.get("carried", False) for e in again.snapshot()["entities"]}
    assert marks == {"web": False, "db": True}
    batch = again.update_and_featurize(_carried_stream(20, key="db"))  # older: afresh
    assert not batch.rejected and len(batch) == 20 - 7
    late = again.update_and_featurize(_carried_stream(20, key="web"))  # web is live: late
    assert len(late.rejected) == 20 and late.rejected[0].reason == LATE_RECORD


def test_the_carried_state_keeps_the_newest_entities_that_fit():
    featurizer = WindowFeaturizer(WindowSpec(window=8, interval=60))
    for key in ("old", "mid", "new"):
        featurizer.update_and_featurize(_carried_stream(50, key=key))
    newest = featurizer.carried_snapshot(1 << 20)["entities"][-1]
    one = len(json.dumps(newest, separators=(",", ":")))
    kept = featurizer.carried_snapshot(2 * one + one // 2)
    assert [e["key"] for e in kept["entities"]] == ["mid", "new"]
    assert featurizer.carried_snapshot(one - 1) is None
    assert featurizer.n_entities == 3 and featurizer.stats["points"] == 150  # untouched


@pytest.mark.parametrize("mark", ["yes", 1, None, []])
def test_a_carried_mark_that_is_not_a_boolean_is_refused(mark):
    featurizer = WindowFeaturizer(WindowSpec(window=8, interval=60))
    featurizer.update_and_featurize(_carried_stream(20))
    state = featurizer.carried_snapshot(1 << 20)
    state["entities"][0]["carried"] = mark
    with pytest.raises(DataError, match="carried must be true or false"):
        WindowFeaturizer.restore(state)
