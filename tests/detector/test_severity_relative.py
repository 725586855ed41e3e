"""Severity relative to the model's own calibration (issue 28, item 5): a band means the same
tail probability on every model, whatever the units of its scores."""

from __future__ import annotations

import math
import warnings

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from vaeguard.severity import DEFAULT_BANDS, NORMAL, levels, rank, severity
from vaeguard.thresholds import budget_threshold, p_values


def _calibrated(scale: float, shift: float, budget: float = 10.0):
    """A budget threshold on normal scores in some model's units, and a p-value function."""
    normal = np.random.default_rng(0).standard_normal(5000) * scale + shift
    th = budget_threshold(normal, budget)
    return th, (lambda s: p_values(th, np.asarray(s, dtype="float64")))


def test_the_same_rarity_is_the_same_band_on_every_model():
    """Two models whose scores differ by units (×200, shifted): rows equally rare on normal
    data get the same band; in nats above the threshold they would not."""
    a, pa = _calibrated(1.0, 0.0)
    b, pb = _calibrated(200.0, -50.0)
    alert_p = 10.0 / 1000
    seen = []
    for z in (3.0, 4.5, 8.0):
        sa, sb = z, z * 200.0 - 50.0
        band_a = severity(sa, a.value, p_value=float(pa([sa])[0]), alert_p=alert_p)
        band_b = severity(sb, b.value, p_value=float(pb([sb])[0]), alert_p=alert_p)
        assert band_a == band_b != NORMAL
        seen.append(band_a)
    assert seen == ["warning", "major", "critical"]
    # the same rows in nats above the threshold: 0.5 against 99 nats
    assert 3.0 - a.value < 1.0 < 3.0 * 200.0 - 50.0 - b.value - 90.0
    # critical: at most a thousandth of the alert level's probability on normal data
    s = 8.0
    p = float(pa([s])[0])
    assert severity(s, a.value, p_value=p, alert_p=alert_p) == "critical"
    assert p <= alert_p / 1000


def test_without_p_values_the_margin_counts_in_threshold_heights():
    """A threshold without a tail (quantile, SPOT, contamination): the margin in multiples of
    the threshold's height above the median normal score, so units cancel too."""
    for scale in (1.0, 1e3):
        th, med = 3.0 * scale, 1.0 * scale
        assert severity(3.5 * scale, th, median=med) == "warning"
        assert severity(5.0 * scale, th, median=med) == "major"  # 1 height beyond
        assert severity(9.5 * scale, th, median=med) == "critical"  # over 3 heights beyond


def test_bands_are_decades_beyond_the_alert_level():
    assert [name for name, _ in DEFAULT_BANDS] == ["warning", "major", "critical"]
    lv = levels([0.0] * 3, -1.0, p_values=[1e-2, 1e-3, 1e-5], alert_p=1e-2)
    assert np.allclose(lv, [0.0, 1.0, 3.0])
    assert rank("critical") > rank("major") > rank("warning") > rank(NORMAL)


@settings(max_examples=200, deadline=None)
@given(
    score=st.floats(allow_nan=True, allow_infinity=True, width=64),
    threshold=st.floats(-1e6, 1e6),
    p=st.one_of(st.none(), st.floats(0.0, 1.0), st.just(float("nan"))),
    alert_p=st.one_of(st.none(), st.floats(1e-6, 0.5)),
    median=st.one_of(st.none(), st.floats(-1e6, 1e6)),
)
def test_any_input_gives_a_known_band(score, threshold, p, alert_p, median):
    """Arbitrary scores, p-values and references: a known band, normal exactly at or below
    the threshold, never an exception."""
    name = severity(score, threshold, p_value=p, alert_p=alert_p, median=median)
    assert name in (NORMAL, *(b for b, _ in DEFAULT_BANDS))
    assert (name == NORMAL) == (not score > threshold)


def test_a_threshold_a_hair_above_the_median_gives_the_top_band_without_a_warning():
    """(score − threshold) / (threshold − median) overflows there: the level is infinite, no
    RuntimeWarning reaches the caller (Hypothesis found it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lv = levels([1e300], 0.0, median=-1e-300)
        name = severity(1e300, 0.0, median=-1e-300)
    assert lv[0] == math.inf and name == "critical"


def test_the_serving_path_uses_the_calibration(fitted, normal_data):
    """Score records of a budget model: severity from the record's p-value and the budget."""
    from vaeguard.serving.explain import score_records
    from vaeguard.serving.tabular import severity_reference

    ref = severity_reference(fitted)
    assert ref["alert_p"] == fitted.threshold_rule_.params["budget"] / 1000
    assert math.isfinite(ref["median"]) and ref["median"] < fitted.threshold_
    x = normal_data[:20].copy()
    x[:6] += np.linspace(2, 40, 6)[:, None]
    scores = fitted.decision_function(x)
    pv = p_values(fitted.threshold_rule_, scores)

    class Item:
        source, record = None, {}

    records = score_records(
        [Item()] * len(x), [None] * len(x), [None] * len(x), scores, fitted.threshold_,
        [[] for _ in x], bands=DEFAULT_BANDS, model_version="t", p_values=pv.tolist(), **ref,
    )  # fmt: skip
    for r, s, p in zip(records, scores, pv, strict=True):
        assert r.severity == severity(s, fitted.threshold_, p_value=p, alert_p=ref["alert_p"])


def test_window_mode_is_relative_to_its_likelihood_level():
    """Window mode: the alert level's tail probability is the budget's (or the output level's),
    so a record's severity counts decades beyond it as in tabular mode."""
    from types import SimpleNamespace

    from vaeguard.serving.window import WindowServing
    from vaeguard.timeseries.likelihood import LikelihoodSpec

    serving = WindowServing.__new__(WindowServing)
    for spec, alert_p in (
        (LikelihoodSpec(estimator="evt", alert=1.0, budget=2.0), 2.0 / 1000),
        (LikelihoodSpec(alert=0.5, decades=8.0), 1e-4),
        (LikelihoodSpec(output="linear", alert=0.99), 0.01),
        (LikelihoodSpec(), None),  # no alert level: no relative severity
    ):
        serving.views = SimpleNamespace(likelihood_spec=spec)
        got = serving._alert_p()
        assert got == alert_p if alert_p is None else math.isclose(got, alert_p)
