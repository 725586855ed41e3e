"""The seasonal residual: value minus the median of the same time in earlier periods, causally."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vaeguard.errors import ConfigError
from vaeguard.timeseries.seasonal import SeasonalResidual

DAY = 86_400.0
STEP = 3_600.0  # hourly points: 24 a period


def daily(days: int, rng_seed: int = 0) -> np.ndarray:
    t = np.arange(days * 24) * STEP
    return (
        50 + 20 * np.sin(2 * np.pi * t / DAY) + np.random.default_rng(rng_seed).normal(0, 1, t.size)
    )


def residuals(values, **kwargs) -> np.ndarray:
    seasonal = SeasonalResidual(**kwargs)
    return np.array([seasonal.update(i * STEP, float(v)) for i, v in enumerate(values)])


def test_residual_is_the_value_minus_the_median_of_earlier_periods():
    values = daily(5)
    out = residuals(values, period=DAY, periods=3)
    assert np.isnan(out[:24]).all()  # nothing a period back yet
    i = 4 * 24 + 5
    expected = values[i] - np.median(values[[i - 24, i - 48, i - 72]])
    assert out[i] == pytest.approx(expected)
    assert out[24] == pytest.approx(values[24] - values[0])  # only one period known
    assert np.nanmax(np.abs(out)) < 10  # the daily cycle itself is gone


def test_a_missing_peak_stands_out_and_a_past_spike_is_not_replayed():
    values = daily(6)
    values[3 * 24 + 6] += 100.0  # spike on day 3
    values[5 * 24 : 5 * 24 + 12] = 30.0  # day 5: the morning peak does not come
    out = residuals(values, period=DAY, periods=3)
    assert out[3 * 24 + 6] > 90
    assert abs(out[4 * 24 + 6]) < 10  # a day later the median ignores the spike
    assert out[5 * 24 + 6] < -30


def test_future_points_do_not_change_past_residuals_and_memory_is_bounded():
    values = daily(20)
    seasonal = SeasonalResidual(period=DAY, periods=2)
    first = [seasonal.update(i * STEP, float(v)) for i, v in enumerate(values[:200])]
    again = residuals(values, period=DAY, periods=2)[:200]
    np.testing.assert_array_equal(np.array(first), again)
    for i, v in enumerate(values[200:], start=200):
        seasonal.update(i * STEP, float(v))
    assert len(seasonal._ts) <= 2 * 24 + 64 + 2


def test_irregular_gaps_beyond_the_tolerance_count_as_missing():
    seasonal = SeasonalResidual(period=DAY, periods=1, tolerance=600.0)
    seasonal.update(0.0, 1.0)
    seasonal.update(1_000.0, 2.0)
    assert seasonal.update(DAY + 1_500.0, 5.0) == pytest.approx(3.0)  # 500 s older: close enough
    assert math.isnan(seasonal.update(DAY + 1_700.0, 5.0))  # 700 s older: missing


def test_the_featurizer_adds_the_channel_only_where_known():
    from vaeguard.timeseries.featurizer import WindowFeaturizer

    f = WindowFeaturizer(
        window=2,
        interval="rows",
        normalize=False,
        seasonal={"period": DAY, "periods": 1},
    )
    assert f.spec.channels == ("value", "value_seasonal")
    records = [{"ts": i * STEP, "value": float(i)} for i in range(30)]
    batch = f.update_and_featurize(records)
    newest = {int(i): (x[3], m[3]) for i, x, m in zip(batch.keep, batch.x, batch.mask, strict=True)}
    assert newest[1][1] == 0  # no earlier period yet: missing
    assert newest[25] == (pytest.approx(24.0), 1)


def test_bad_parameters_are_refused():
    with pytest.raises(ConfigError, match="period"):
        SeasonalResidual(period=0)
    with pytest.raises(ConfigError, match="periods"):
        SeasonalResidual(periods=0)
