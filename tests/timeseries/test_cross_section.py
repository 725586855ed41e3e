"""Cross-section terms (issue 27): each metric of a multi-metric entity judged against the other
metrics at the same moment, so the common load's noise cancels and a shift of a few noise sd
in one metric stands out; carried by bundles and the daemon's refit state; left out for a
single metric and for bundles written before it."""

from __future__ import annotations

import contextlib
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.json_fuzz import BASE_SCALARS, json_values
from tests.timeseries.test_detector import small_detector
from vaeguard.errors import BundleError, ConfigError, DataError
from vaeguard.timeseries.cross_section import POOL
from vaeguard.timeseries.views import DEFAULT_CONFIG, ViewSet, merge_config

WINDOW = 12
METRICS = ("cpu", "mem", "idle")


def host(n: int, seed: int = 0, load_noise: float = 3.0, shift=None, surge=None) -> list[dict]:
    """Three metrics driven by one noisy load: cpu and idle follow it closely (own noise sd
    0.2), mem loosely (own noise sd 1, the load's noise moves it by 6); ``shift``: (metric,
    first row, size in units) for 5 rows; ``surge``: (first row, size) added to the load
    itself for 5 rows (every metric follows)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    load = 10 + 3 * np.sin(2 * math.pi * t / 60) + load_noise * rng.standard_normal(n)
    if surge is not None:
        load[surge[0] : surge[0] + 5] += surge[1]
    own = rng.standard_normal((n, 3)) * np.array([0.2, 1.0, 0.2])
    values = np.stack([load, 2 * load + 5, 30 - load], axis=1) + own
    if shift is not None:
        metric, first, size = shift
        values[first : first + 5, metric] += size
    return [
        {"ts": 60.0 * i, **{name: float(x) for name, x in zip(METRICS, v, strict=True)}}
        for i, v in enumerate(values)
    ]


def views(cross_section: bool = True) -> ViewSet:
    return ViewSet(
        [small_detector(window=WINDOW, metrics=METRICS, score_slots=4, inputs="metrics")],
        {"short": 1, "history": 200, "min_history": 40, "budget": 2.0},
        {"retrain_growth": None, "retrain_max_gap": None},
        cross_section=cross_section,
    )


@pytest.fixture(scope="module")
def trained() -> ViewSet:
    model = views()
    batch = model.featurizer().update_and_featurize(host(400))
    model.fit(batch.x, batch.c, batch.mask)
    model.calibrate(batch.x, batch.c, batch.mask)
    return model


def terms_of(model: ViewSet, records: list[dict]) -> np.ndarray:
    """The cross-section terms (rows × metrics) of records fed after the training rows."""
    featurizer = model.featurizer()
    featurizer.update_and_featurize(host(400))  # the entity's past, as when it was trained
    batch = featurizer.update_and_featurize(records)
    terms = model.score_windows(batch.x, batch.c, batch.mask).terms
    return np.stack(terms[-len(METRICS) :], axis=1)


def later(n: int, shift=None, surge=None) -> list[dict]:
    """Rows that continue the training rows' clock (``shift`` and ``surge`` rows counted from
    the first of them)."""
    move = lambda p: None if p is None else (*p[:-2], p[-2] + 400, p[-1])  # noqa: E731
    return host(400 + n, seed=1, shift=move(shift), surge=move(surge))[400:]


def test_the_terms_follow_the_views_terms_and_name_each_metric(trained):
    assert trained.judges_cross_section
    assert trained.term_metrics == [*METRICS, *METRICS]
    assert trained.cross_section_.rows > 300
    assert trained.likelihood().metrics == trained.term_metrics


def test_a_shift_of_four_noise_sd_in_one_metric_stands_out_of_its_cross_section(trained):
    normal = terms_of(trained, later(300))
    shifted = terms_of(trained, later(300, shift=(1, 200, 4.0)))
    # the shifted metric's term at the shift beats anything it reached on normal rows
    assert shifted[200:205, 1].max() > 2 * normal[:, 1].max()
    # the other metrics' terms are not moved by it (they are judged on the others too, so a
    # little of the shift shows, never as much)
    assert shifted[200:205, 0].max() < shifted[200:205, 1].max() / 4
    # the view's own term for the metric, with the load's noise in it, does not see it
    view_terms = trained.score_windows
    featurizer = trained.featurizer()
    featurizer.update_and_featurize(host(400))
    batch = featurizer.update_and_featurize(later(300, shift=(1, 200, 4.0)))
    mem_view = view_terms(batch.x, batch.c, batch.mask).terms[1]
    assert mem_view[200:205].max() < np.quantile(mem_view, 0.999) * 1.5


def test_a_surge_of_the_common_load_moves_no_cross_section_term(trained):
    """Every metric follows the load: a big surge is what the entity does, not one metric."""
    normal = terms_of(trained, later(300))
    surged = terms_of(trained, later(300, surge=(200, 12.0)))
    assert surged[200:210].max() < 3 * normal.max()


def test_missing_slots_give_finite_terms_and_no_evidence_without_a_recent_value(trained):
    featurizer = trained.featurizer()
    featurizer.update_and_featurize(host(400))
    batch = featurizer.update_and_featurize(later(50))
    mask = batch.mask.copy()
    layout = mask.reshape(len(mask), -1, WINDOW)
    layout[:, 0, -POOL:] = 0.0  # cpu unobserved in the newest slots
    layout[:, 2, -1] = 0.0  # idle missing at the newest slot (a stand-in predicts from it)
    terms = np.stack(trained.score_windows(batch.x, batch.c, mask).terms[-3:], axis=1)
    assert np.isfinite(terms).all()
    assert (terms[:, 0] == 0.0).all()


def test_a_single_metric_or_a_disabled_model_has_no_cross_section_terms():
    one = ViewSet.from_params(merge_config(DEFAULT_CONFIG, {"window": {"metrics": ["value"]}}))
    assert one.cross_section and not one.judges_cross_section
    # two views, each judging the metric under the Gaussian and the Student-t: no more
    assert one.term_metrics == ["value"] * 4
    assert not views(cross_section=False).judges_cross_section
    # a configuration written before it existed reads as without it
    old = merge_config(DEFAULT_CONFIG, {"window": {"metrics": list(METRICS)}})
    del old["cross_section"]
    assert ViewSet.from_params(old).cross_section is False


@pytest.mark.parametrize("value", [1, "yes", None, {}])
def test_the_setting_is_a_boolean(value):
    with pytest.raises(ConfigError, match="cross_section: true or false"):
        merge_config(DEFAULT_CONFIG, {"cross_section": value})


def test_too_few_fully_observed_rows_give_no_fit_and_zero_terms():
    model = views()
    batch = model.featurizer().update_and_featurize(host(400))
    mask = batch.mask.copy()
    mask.reshape(len(mask), -1, WINDOW)[:, 1, -1] = 0.0  # mem never seen at a newest slot
    model.fit(batch.x, batch.c, mask)
    assert model.cross_section_ is None
    terms = model.score_windows(batch.x, batch.c, batch.mask).terms
    assert len(terms) == 6 and not np.any(terms[-3:])


def test_a_bundle_carries_the_fit_and_refuses_a_wrong_one(trained, tmp_path):
    path = trained.save(tmp_path / "b")
    loaded = ViewSet.load(path)
    records = later(120, shift=(2, 60, 5.0))
    np.testing.assert_array_equal(terms_of(loaded, records), terms_of(trained, records))
    assert loaded.summary()["cross_section"] == {
        "metrics": list(METRICS),
        "fitted_rows": trained.cross_section_.rows,
    }
    manifest = json.loads((path / "bundle.json").read_text())
    fit = manifest["window"]["cross_section"]
    for broken in ({"metrics": ["cpu"]}, "x", {**fit, "scale": [0, 1, 1]}):
        manifest["window"]["cross_section"] = broken
        (path / "bundle.json").write_text(json.dumps(manifest))
        with pytest.raises(BundleError, match="cross_section: not a fit"):
            ViewSet.load(path)
    del manifest["window"]["cross_section"]
    (path / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="cross_section is missing"):
        ViewSet.load(path)


def test_the_refit_state_carries_the_fit_and_a_rollback_puts_it_back(trained):
    from vaeguard.timeseries.learning import apply_refit_state, refit_state

    before = trained.cross_section_.to_dict()
    state = json.loads(json.dumps(refit_state(trained)))
    fitted = trained.cross_section_
    try:
        trained.cross_section_ = None  # as if a failed refit had lost it
        apply_refit_state(trained, state)
        assert trained.cross_section_.to_dict() == before
        state[0]["cross_section"]["coef"][0][0] = "nan"
        with pytest.raises(DataError, match="cross_section"):
            apply_refit_state(trained, state)
        assert trained.cross_section_.to_dict() == before  # nothing changed
    finally:
        trained.cross_section_ = fitted


@settings(max_examples=200, deadline=None)
@given(value=json_values(BASE_SCALARS), edit=st.booleans(), data=st.data())
def test_any_saved_fit_reads_back_or_is_refused(trained, value, edit, data):
    """Arbitrary JSON, or the real fit with one field replaced by it: a fit, or `DataError`."""
    d = trained.cross_section_.to_dict()
    if edit:
        d[data.draw(st.sampled_from(sorted(d)))] = value
    else:
        d = value
    with contextlib.suppress(DataError):
        fit = trained.cross_section_from(d)
        assert fit is None or (np.isfinite(fit.coef).all() and (fit.scale > 0).all())


def test_the_largest_cross_section_term_names_the_metric_whatever_their_histories():
    """A shift in mem moves cpu's residual a little too: against its tight history that is the
    smaller p-value, but mem's own standardized residual is the larger, and names it."""
    from vaeguard.timeseries.likelihood import LikelihoodSpec
    from vaeguard.timeseries.views import ViewLikelihood

    spec = LikelihoodSpec(estimator="evt", short=1, history=300, min_history=50, budget=2.0)
    rng = np.random.default_rng(0)
    metrics = ["cpu", "mem", "cpu", "mem"]  # a view's two terms, then the cross-section's

    def lead(comparable) -> str | None:
        lk = ViewLikelihood(spec, 4, metrics, comparable)
        quiet = [rng.exponential(1.0, 300) for _ in range(4)]
        quiet[3] = 50.0 * rng.pareto(1.0, 300)  # mem's have had a heavy tail
        lk.update_many(["e"] * 300, quiet)
        lk.update_many(["e"], [np.array([v]) for v in (1.0, 1.0, 30.0, 400.0)])
        return lk.last_metric[0]

    assert lead(()) == "cpu"  # by p-value alone: cpu's term against its tight history
    assert lead([2, 3]) == "mem"


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_any_window_values_and_masks_give_finite_non_negative_terms(trained, data):
    """Whatever the scaled values (NaN where unobserved) and the time conditions."""
    rows = data.draw(st.integers(0, 6))
    width = len(METRICS) * WINDOW
    values = st.floats(-1e6, 1e6, allow_nan=False)
    x = np.array(data.draw(st.lists(values, min_size=rows * width, max_size=rows * width)))
    seen = data.draw(st.lists(st.booleans(), min_size=rows * width, max_size=rows * width))
    mask = np.array(seen, dtype="float32").reshape(rows, width)
    x = np.where(mask > 0, x.reshape(rows, width), np.nan)
    c = np.array(data.draw(st.lists(st.floats(-1, 1), min_size=2 * rows, max_size=2 * rows)))
    terms = trained.cross_section_.terms(
        x, c.reshape(rows, 2), mask, channels=len(METRICS), window=WINDOW
    )
    assert terms.shape == (rows, len(METRICS))
    assert np.isfinite(terms).all() and (terms >= 0).all()


def test_an_alert_named_by_the_cross_section_says_what_the_others_predict():
    """Served as the daemon serves it: the alert on a shifted mem names mem first, with its
    value at that point and the value the other metrics at that moment predict for it."""
    from vaeguard.apps.online import as_records, step_settings
    from vaeguard.records.batch import process
    from vaeguard.serving.window import WindowServing

    model = ViewSet(
        [small_detector(window=WINDOW, metrics=METRICS, score_slots=4, inputs="metrics")],
        {"short": 1, "history": 300, "min_history": 40, "budget": 2.0, "alert": 1.0},
        {"retrain_growth": None, "retrain_max_gap": None},
        cross_section=True,
    )
    train = model.featurizer().update_and_featurize(host(400))
    model.fit(train.x, train.c, train.mask)
    model.calibrate(train.x, train.c, train.mask)
    rows = [{"key": "web-1", **r} for r in host(700, seed=1, shift=(1, 600, 8.0))]
    serving = WindowServing(model)
    messages = as_records(rows)
    assert not process(serving, messages[:400], step_settings()).dead  # the entity's past
    serving.likelihood = serving.views.likelihood()
    scored = {r.source.offset: r for r in process(serving, messages[400:], step_settings()).scored}
    alerts = [scored[i] for i in range(600, 605) if scored[i].is_anomaly]
    assert alerts, "the shift raised no alert"
    first = alerts[0].contributions[0]
    assert first["metric"] == "mem"
    given = first["given_others"]
    assert given["observed"] == pytest.approx(rows[alerts[0].source.offset]["mem"], abs=1e-6)
    assert 5.0 < given["observed"] - given["expected"] < 11.0  # the 8-unit shift, ± noise
    # no record before the shift carries it (no alert there, or none the cross-section named)
    assert not any("given_others" in c for i in range(440, 600) for c in scored[i].contributions)


def test_a_refit_that_first_fits_the_cross_section_restarts_its_histories():
    """Trained while mem was never seen at a newest slot, the terms are 0 (no evidence); the
    first refit that can fit them restarts their histories, or the zeros would be what is
    usual and every real term after them an alert."""
    from vaeguard.apps.online import as_records, step_settings
    from vaeguard.records.batch import process
    from vaeguard.serving.window import WindowServing

    model = ViewSet(
        [small_detector(window=WINDOW, metrics=METRICS, score_slots=4, inputs="metrics")],
        {"short": 1, "history": 300, "min_history": 40, "budget": 2.0, "alert": 1.0},
        {"retrain_growth": None, "retrain_max_gap": 100},
        cross_section=True,
    )
    train = model.featurizer().update_and_featurize(host(400))
    blind = train.mask.copy()
    blind.reshape(len(blind), -1, WINDOW)[:, 1, -1] = 0.0
    model.fit(train.x, train.c, blind)
    model.calibrate(train.x, train.c, train.mask)
    assert model.cross_section_ is None
    serving = WindowServing(model)
    rows = as_records([{"key": "web-1", **r} for r in host(700, seed=1)])
    assert not process(serving, rows[:400], step_settings()).dead
    refits = [
        process(serving, rows[i : i + 50], step_settings()).refit for i in range(400, 700, 50)
    ]
    assert any(r is not None and r["ok"] for r in refits)
    assert serving.views.cross_section_ is not None
    assert list(serving.views.cross_section_terms()) == [3, 4, 5]
    assert set(serving.restarted_terms) >= {3, 4, 5}
