"""Score drift (PSI against the calibration quantiles) and the early retrain it triggers."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import wait_for
from vaeguard.daemon.drift import DriftMonitor, ScoreDrift
from vaeguard.retrain.scheduler import RetrainScheduler
from vaeguard.retrain.settings import RetrainSettings

LEVELS = np.linspace(0.0, 1.0, 101)


def reference(rng, n=5000, loc=5.0):
    return np.quantile(rng.normal(loc, 1.0, n), LEVELS)


def test_psi_is_small_for_the_training_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(0)
    drift = ScoreDrift(reference(rng), window=2000, min_records=500)
    assert drift.edges.size == 9 and np.allclose(drift.expected, 0.1)
    drift.update(rng.normal(5.0, 1.0, 400))
    assert drift.psi() is None  # not judged on too few scores
    drift.update(rng.normal(5.0, 1.0, 1600))
    assert drift.psi() < 0.05
    drift.update(rng.normal(6.5, 1.0, 1000))  # half the window shifted by 1.5 sigma
    half = drift.psi()
    drift.update(rng.normal(6.5, 1.0, 1000))  # the old scores have rolled out
    assert 0.25 < half < drift.psi() and drift.count == 2000


def test_tied_reference_quantiles_merge_into_wider_bins():
    # A model whose calibration scores pile up on one value (half of them at 0).
    ref = np.concatenate([np.zeros(50), np.linspace(0.0, 1.0, 51)])
    drift = ScoreDrift(ref, window=1000, min_records=100)
    assert np.allclose(drift.expected, [0.5, 0.1, 0.1, 0.1, 0.1, 0.1])
    drift.update(np.concatenate([np.zeros(500), np.linspace(0.01, 1.0, 500)]))
    assert drift.psi() < 0.01


def test_monitor_triggers_once_per_cooldown_and_resets_on_a_new_model():
    rng = np.random.default_rng(1)
    ref = reference(rng)
    now = [0.0]
    fired = []
    monitor = DriftMonitor(
        window=500,
        min_records=200,
        threshold=0.25,
        cooldown_s=60,
        on_drift=fired.append,
        clock=lambda: now[0],
    )
    assert monitor.observe("v0001", ref, rng.normal(5.0, 1.0, 500)) < 0.25 and not fired
    for _ in range(3):
        monitor.observe("v0001", ref, rng.normal(8.0, 1.0, 500))
    assert len(fired) == 1 and fired[0] > 1.0
    now[0] = 61.0
    monitor.observe("v0001", ref, rng.normal(8.0, 1.0, 100))
    assert len(fired) == 2
    # A new version starts a new window on its own scale: nothing judged yet.
    assert monitor.observe("v0002", reference(rng, loc=8.0), rng.normal(8.0, 1.0, 100)) is None
    assert monitor.version == "v0002" and monitor.drift.count == 100


def test_a_model_without_a_reference_is_served_without_drift_tracking():
    monitor = DriftMonitor(window=500, min_records=200, threshold=0.25)
    assert monitor.observe("v0001", None, np.ones(300)) is None and monitor.drift is None


def test_drift_triggers_an_early_run_of_the_scheduler(tmp_path: Path):
    """The daemon's wiring in miniature: monitor → RetrainScheduler.run_soon → the job."""
    ran = threading.Event()
    settings = RetrainSettings(schedule="0 3 * * *")  # the scheduled run is far away
    scheduler = RetrainScheduler(settings, ran.set, state_dir=tmp_path / "state")
    scheduler.start()
    try:
        rng = np.random.default_rng(2)
        monitor = DriftMonitor(
            window=300,
            min_records=300,
            threshold=0.25,
            on_drift=lambda psi: scheduler.run_soon(f"score drift PSI {psi:.3f}"),
        )
        monitor.observe("v0001", reference(rng), rng.normal(9.0, 1.0, 300))
        wait_for(ran.is_set, timeout=10, message="the drift-triggered retraining run")
        assert (tmp_path / "state" / "scheduler.sqlite").is_file()
    finally:
        scheduler.shutdown()


def test_retrain_settings_are_a_section_of_the_daemon_settings(monkeypatch):
    from vaeguard.config import load_settings
    from vaeguard.errors import ConfigError

    monkeypatch.setenv("VAEGUARD_RETRAIN__SCHEDULE", "0 3 * * *")
    monkeypatch.setenv("VAEGUARD_RETRAIN__DRIFT_PSI_THRESHOLD", "0.4")
    s = load_settings()
    assert s.retrain.schedule == "0 3 * * *" and s.retrain.drift_psi_threshold == 0.4
    monkeypatch.setenv("VAEGUARD_RETRAIN__SCHEDULE", "every tuesday")
    with pytest.raises(ConfigError, match=r"invalid setting retrain\.schedule"):
        load_settings()


def test_the_example_config_documents_every_retrain_setting():
    from vaeguard.config import load_settings

    example = Path(__file__).resolve().parents[2] / "config" / "vaeguard.yaml"
    s = load_settings(example)
    text = example.read_text()
    assert "retrain:" in text and not s.retrain.enabled
    for field in type(s.retrain).model_fields:
        assert f"  {field}:" in text, f"retrain.{field} is not in config/vaeguard.yaml"
