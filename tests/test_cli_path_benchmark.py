"""The plain-case benchmark (benchmarks/cli_path.py): its stream holds the shifts it says it
planted, and its tally counts what its docstring says it counts."""

from __future__ import annotations

import numpy as np

from benchmarks import cli_path as cp


def test_the_plain_case_plants_one_metric_in_turn_spacing_apart():
    case = cp.generate(0)
    assert case.values.shape == (cp.TRAIN + cp.TEST, len(cp.METRICS))
    assert np.all(np.isfinite(case.values)) and np.all(np.diff(case.ts) == cp.STEP)
    rows = [row for row, _ in case.shifts]
    assert rows[0] == cp.FIRST and np.all(np.diff(rows) == cp.SPACING)
    assert [j for _, j in case.shifts][:5] == [0, 1, 2, 3, 0]
    assert rows[-1] + cp.DURATION <= cp.TEST
    # seeded, and each shift lifts its metric above the points before it
    again = cp.generate(0)
    np.testing.assert_array_equal(again.values, case.values)
    for row, j in case.shifts[:3]:
        shifted = case.values[cp.TRAIN + row : cp.TRAIN + row + cp.DURATION, j]
        before = case.values[cp.TRAIN + row - 20 : cp.TRAIN + row, j]
        assert shifted.mean() > before.mean()


def test_the_tally_counts_detections_their_metric_and_false_alerts():
    case = cp.Case(np.arange(3), np.zeros((3, 4)), [(10, 0), (300, 1), (600, 2)])
    alerts = np.zeros(cp.TEST, dtype=bool)
    named: list[str | None] = [None] * cp.TEST
    alerts[12], named[12] = True, "cpu"  # the first shift, named right
    alerts[300 + cp.DURATION + 15], named[300 + cp.DURATION + 15] = True, "lat"  # in span, wrong
    alerts[600 + cp.DURATION + 16] = True  # just after the span: neither detected nor false
    alerts[2000] = True  # far from any shift: false
    tally = cp.Tally()
    tally.add(case, alerts, named, warm_up=100)
    assert (tally.early, tally.early_detected) == (1, 1)  # the shift at 10 is in the warm-up
    assert (tally.shifts, tally.detected, tally.named) == (2, 1, 0)
    assert tally.false_alerts == 1 and tally.by_seed == ["1/2"]
    assert tally.normal_points == cp.TEST - 3 * (cp.DURATION + 16 + 100)
