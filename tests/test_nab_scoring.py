"""NAB scorer: reproduces NAB's published numbers, and its rules hold on hand-made series."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks import nab_scoring as nab
from benchmarks.nab_scoring import PROFILES, CostProfile, scaled_sigmoid

# NAB's own scorer on the 25 series of shared/datasets/nab (its README): standard,
# reward_low_FP_rate, reward_low_FN_rate.
REFERENCE = {
    "ARTime": (74.6, 67.0, 79.6),
    "numenta": (67.2, 61.2, 72.2),
}
PROFILE_NAMES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
STANDARD = PROFILES["standard"]


def _nab_dir() -> Path:
    env = os.environ.get("VAEGUARD_DATASETS")
    root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
    return root / "nab"


@pytest.fixture(scope="module")
def nab_dir() -> Path:
    path = _nab_dir()
    if not (path / "combined_windows.json").is_file() or not (path / "reference_results").is_dir():
        pytest.skip(
            f"NAB data not found at {path} (set VAEGUARD_DATASETS to the shared datasets folder)"
        )
    return path


@pytest.fixture(scope="module")
def windows(nab_dir: Path) -> dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]]:
    return nab.load_windows(nab_dir / "combined_windows.json")


@pytest.fixture(scope="module")
def reference_scores(nab_dir: Path, windows) -> dict[str, dict[str, nab.CorpusScore]]:
    results_dir = nab_dir / "reference_results"
    return {
        name: nab.score_detector_profiles(results_dir, name, windows)
        for name in (*REFERENCE, "null")
    }


# ----------------------------------------------------------------------------------------------
# Reproduction of the published numbers


@pytest.mark.parametrize("detector", sorted(REFERENCE))
@pytest.mark.parametrize("profile_index", range(3), ids=PROFILE_NAMES)
def test_reproduces_nab_reference_scores(reference_scores, detector, profile_index):
    profile = PROFILE_NAMES[profile_index]
    expected = REFERENCE[detector][profile_index]
    got = reference_scores[detector][profile].score
    assert got == pytest.approx(expected, abs=0.05)
    # And to NAB's printed precision.
    assert f"{got:.1f}" == f"{expected:.1f}"


def test_score_detector_gives_the_same_numbers(nab_dir, reference_scores):
    scores = nab.score_detector(
        nab_dir / "reference_results", "ARTime", nab_dir / "combined_windows.json"
    )
    assert list(scores) == list(PROFILE_NAMES)
    for profile, value in scores.items():
        assert value == reference_scores["ARTime"][profile].score


def test_null_detector_scores_zero(reference_scores):
    for profile, result in reference_scores["null"].items():
        assert result.score == pytest.approx(0.0, abs=1e-9), profile
        # The baseline computed for a constant-0.5 detector is exactly the null file's raw score.
        assert result.raw == pytest.approx(result.null, abs=1e-9), profile
        assert result.perfect == 39 * PROFILES[profile].tp  # every labelled window


def test_perfect_detector_scores_100(nab_dir, windows):
    results = {}
    for name, limits in windows.items():
        frame = pd.read_csv(nab_dir / "data" / name, usecols=["timestamp"])
        frame["timestamp"] = pd.to_datetime(frame["timestamp"])
        starts = {pd.Timestamp(start) for start, _ in limits}
        frame["anomaly_score"] = frame["timestamp"].isin(starts).astype(float)
        results[name] = frame
    for profile_name, profile in PROFILES.items():
        result = nab.score_corpus(results, windows, profile)
        assert result.score == pytest.approx(100.0, abs=1e-9), profile_name
        assert result.threshold == 1.0
        assert (result.tp, result.fp) == (39, 0)


def test_row_weights_match_nabs_own_sweep_column(nab_dir, windows):
    """ARTime's result files carry NAB's per-row ``S(t)_standard`` (its sweep weights)."""
    root = nab_dir / "reference_results" / "ARTime"
    checked = 0
    for path in sorted(root.glob("*/*.csv")):
        frame = pd.read_csv(path)
        if "S(t)_standard" not in frame:
            continue
        name = f"{path.parent.name}/{path.name.removeprefix('ARTime_')}"
        weights = nab.row_weights(frame, windows[name], STANDARD)
        np.testing.assert_allclose(weights, frame["S(t)_standard"], rtol=0, atol=1e-12)
        checked += 1
    assert checked == 25


def test_sweep_agrees_with_direct_scoring_at_the_optimum(reference_scores):
    for by_profile in reference_scores.values():
        for result in by_profile.values():
            assert sum(s.raw for s in result.per_series.values()) == pytest.approx(result.raw)
            assert sum(s.tp for s in result.per_series.values()) == result.tp
            assert sum(s.fp for s in result.per_series.values()) == result.fp


def test_subset_of_series_is_scored(nab_dir, windows):
    results_dir = nab_dir / "reference_results"
    subset = {
        name: frame
        for name, frame in nab.load_results(results_dir, "numenta").items()
        if name.startswith("realKnownCause/")
    }
    assert len(subset) == 7
    result = nab.score_corpus(subset, windows, STANDARD)
    assert set(result.per_series) == set(subset)
    assert result.perfect == sum(len(windows[name]) for name in subset)
    assert 0.0 < result.score < 100.0

    null_subset = {
        name: frame
        for name, frame in nab.load_results(results_dir, "null").items()
        if name.startswith("realKnownCause/")
    }
    assert nab.score_corpus(null_subset, windows, STANDARD).score == pytest.approx(0.0, abs=1e-9)


def test_cli_prints_the_table(nab_dir, capsys):
    code = nab.main(
        [
            "--results-dir",
            str(nab_dir / "reference_results"),
            "--windows",
            str(nab_dir / "combined_windows.json"),
            "--detector",
            "ARTime",
            "--detector",
            "numenta",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "| detector | standard | reward_low_FP_rate | reward_low_FN_rate |" in out
    assert "| ARTime | 74.60 |" in out
    assert "| numenta | 67.21 |" in out


def test_cli_reports_a_missing_detector(nab_dir, capsys):
    code = nab.main(
        [
            "--results-dir",
            str(nab_dir / "reference_results"),
            "--windows",
            str(nab_dir / "combined_windows.json"),
            "--detector",
            "no_such_detector",
        ]
    )
    assert code == 2
    assert "no_such_detector" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Building blocks, on hand-made data


def test_scaled_sigmoid_values():
    edge = 2.0 / (1.0 + math.exp(-5.0)) - 1.0  # 0.98661
    assert scaled_sigmoid(-1.0) == pytest.approx(edge)
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert scaled_sigmoid(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(1.0) == pytest.approx(-edge)
    # Up to 3 window widths away the curve still applies; beyond, a flat -1.
    assert scaled_sigmoid(3.0) == pytest.approx(2.0 / (1.0 + math.exp(15.0)) - 1.0)
    assert scaled_sigmoid(3.0) > -1.0
    assert scaled_sigmoid(3.0001) == -1.0
    assert scaled_sigmoid(1e6) == -1.0


def test_scaled_sigmoid_vectorised_and_decreasing():
    x = np.linspace(-1.0, 5.0, 601)
    y = scaled_sigmoid(x)
    assert isinstance(y, np.ndarray)
    assert y.shape == x.shape
    assert np.all(np.diff(y) <= 0.0)
    np.testing.assert_allclose(y[:5], [scaled_sigmoid(float(v)) for v in x[:5]])


def test_probation_length():
    assert nab.probation_length(100) == 15
    assert nab.probation_length(4032) == 604  # floor(604.8)
    assert nab.probation_length(5000) == 750
    assert nab.probation_length(22695) == 750  # capped at 0.15 * 5000


def _series(n: int = 100, detections: tuple[int, ...] = ()) -> pd.DataFrame:
    scores = np.zeros(n)
    scores[list(detections)] = 1.0
    stamps = pd.date_range("2024-01-01", periods=n, freq="5min")
    return pd.DataFrame({"timestamp": stamps, "anomaly_score": scores})


# 100 rows: probation is rows 0..14; one window on rows 40..49 (width 10).
TIMES = pd.date_range("2024-01-01", periods=100, freq="5min")
WINDOW = [(TIMES[40], TIMES[49])]
MAX_TP = scaled_sigmoid(-1.0)


def _tp_weight(row: int, first: int = 40, last: int = 49) -> float:
    width = last - first + 1
    return scaled_sigmoid(-(last - row + 1) / width) / MAX_TP


def test_first_detection_in_a_window_counts_later_ones_do_not():
    only_first = nab.score_series(_series(detections=(42,)), WINDOW, STANDARD, 0.5)
    both = nab.score_series(_series(detections=(42, 45)), WINDOW, STANDARD, 0.5)
    assert only_first.raw == pytest.approx(_tp_weight(42))
    assert both.raw == only_first.raw
    assert (both.tp, both.fp) == (2, 0)  # NAB's counts are rows, the score is per window


def test_detection_on_the_first_window_row_earns_the_full_tp_weight():
    profile = CostProfile(tp=2.0, fn=1.0, fp=0.11)
    assert nab.score_series(_series(detections=(40,)), WINDOW, profile, 0.5).raw == pytest.approx(
        2.0
    )
    late = nab.score_series(_series(detections=(49,)), WINDOW, profile, 0.5).raw
    assert 0.0 < late < 2.0 * _tp_weight(45)  # later in the window earns less


def test_missed_window_costs_fn():
    profile = PROFILES["reward_low_FN_rate"]
    result = nab.score_series(_series(), WINDOW, profile, 0.5)
    assert result.raw == -2.0
    assert (result.tp, result.fn) == (0, 10)


def test_false_positive_after_a_window_is_weighted_by_distance():
    fp = STANDARD.fp
    near = nab.score_series(_series(detections=(52,)), WINDOW, STANDARD, 0.5)
    far = nab.score_series(_series(detections=(60,)), WINDOW, STANDARD, 0.5)
    very_far = nab.score_series(_series(detections=(90,)), WINDOW, STANDARD, 0.5)
    miss = -STANDARD.fn
    # Distance from the window's last row in units of (width - 1) = 9 rows.
    assert near.raw - miss == pytest.approx(fp * scaled_sigmoid(3 / 9))
    assert far.raw - miss == pytest.approx(fp * scaled_sigmoid(11 / 9))
    assert very_far.raw - miss == pytest.approx(-fp)  # 41 / 9 > 3: full cost
    assert near.raw > far.raw > very_far.raw
    assert near.fp == far.fp == very_far.fp == 1


def test_false_positive_before_any_window_costs_full_fp_and_probation_is_ignored():
    before = nab.score_series(_series(detections=(30,)), WINDOW, STANDARD, 0.5)
    assert before.raw == pytest.approx(-STANDARD.fn - STANDARD.fp)
    in_probation = nab.score_series(_series(detections=(3, 14)), WINDOW, STANDARD, 0.5)
    assert in_probation.raw == -STANDARD.fn
    assert in_probation.fp == 0
    assert in_probation.tn + in_probation.fp + in_probation.tp + in_probation.fn == 100 - 15


def test_window_partly_in_probation_scores_only_its_scorable_rows():
    window = [(TIMES[10], TIMES[20])]  # rows 10..20; rows 10..14 are probationary
    early = nab.score_series(_series(detections=(12,)), window, STANDARD, 0.5)
    assert early.raw == -STANDARD.fn  # a detection during probation does not count
    scored = nab.score_series(_series(detections=(12, 16)), window, STANDARD, 0.5)
    assert scored.raw == pytest.approx(_tp_weight(16, first=10, last=20))


def test_threshold_is_inclusive():
    frame = _series()
    frame.loc[45, "anomaly_score"] = 0.7
    assert nab.score_series(frame, WINDOW, STANDARD, 0.7).tp == 1
    assert nab.score_series(frame, WINDOW, STANDARD, 0.70001).tp == 0


def test_window_limits_must_be_timestamps_of_the_series():
    bad = [(TIMES[40] + pd.Timedelta(seconds=1), TIMES[49])]
    with pytest.raises(ValueError, match="not a timestamp"):
        nab.score_series(_series(), bad, STANDARD, 0.5)


def test_corpus_threshold_sweep_matches_brute_force():
    rng = np.random.default_rng(7)
    results, windows = {}, {}
    for i in range(4):
        n = int(rng.integers(200, 400))
        frame = _series(n)
        # Few distinct values, so that ties between rows and series are exercised.
        frame["anomaly_score"] = rng.integers(0, 20, n) / 19.0
        first = int(rng.integers(60, n // 2))
        last = first + int(rng.integers(1, 30))
        second = int(rng.integers(last + 20, n - 10))
        name = f"synthetic/series_{i}.csv"
        results[name] = frame
        windows[name] = [
            (frame["timestamp"][first], frame["timestamp"][last]),
            (frame["timestamp"][second], frame["timestamp"][second + 5]),
        ]
    for profile in PROFILES.values():
        sweep = nab.sweep_thresholds(results, windows, profile)
        assert sweep["threshold"].iloc[0] == nab.NO_DETECTION_THRESHOLD
        assert np.all(np.diff(sweep["threshold"]) < 0)
        for row in sweep.itertuples():
            direct = [
                nab.score_series(results[name], windows[name], profile, row.threshold)
                for name in results
            ]
            assert row.raw == pytest.approx(sum(d.raw for d in direct))
            assert row.tp == sum(d.tp for d in direct)
            assert row.fp == sum(d.fp for d in direct)
            assert row.tn == sum(d.tn for d in direct)
            assert row.fn == sum(d.fn for d in direct)
        best = nab.score_corpus(results, windows, profile)
        assert best.raw == pytest.approx(sweep["raw"].max())
        assert best.threshold == sweep["threshold"][sweep["raw"].idxmax()]


def test_score_corpus_normalisation_on_a_tiny_corpus():
    results = {"toy/series.csv": _series(detections=(40,))}
    windows = {"toy/series.csv": WINDOW}
    result = nab.score_corpus(results, windows, STANDARD)
    assert result.threshold == 1.0
    assert result.raw == pytest.approx(1.0)
    assert result.perfect == 1.0
    assert result.null == -1.0  # the null detector misses the window at its best threshold
    assert result.score == pytest.approx(100.0)


def test_series_without_windows_is_an_error():
    with pytest.raises(ValueError, match="no labelled windows"):
        nab.score_corpus({"toy/series.csv": _series()}, {}, STANDARD)


def test_load_results_layout(tmp_path):
    detector_dir = tmp_path / "mydet"
    (detector_dir / "catA").mkdir(parents=True)
    frame = _series(detections=(40,))
    frame.to_csv(detector_dir / "catA" / "mydet_one.csv", index=False)
    frame.to_csv(detector_dir / "catA" / "other_two.csv", index=False)  # not this detector's
    (detector_dir / "mydet_standard_scores.csv").write_text("Detector,Score\n")  # NAB's summary
    results = nab.load_results(tmp_path, "mydet")
    assert list(results) == ["catA/one.csv"]
    assert list(results["catA/one.csv"].columns) == ["timestamp", "anomaly_score"]
    result = nab.score_corpus(results, {"catA/one.csv": WINDOW}, STANDARD)
    assert result.score == pytest.approx(100.0)
    with pytest.raises(FileNotFoundError):
        nab.load_results(tmp_path, "absent")
