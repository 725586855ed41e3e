"""One streaming detector: the NAB runner and the daemon's window mode give the same scores.

The runner (`run_online`, what ``vaeguard nab`` and ``benchmarks/nab.py`` score with) learns a
series from nothing; the detector it trained is saved as a bundle, loaded the way ``vaeguard
run`` loads it, and the same series is fed through the daemon's batch step in other batch
sizes: every output (all views, the likelihood, the suppression) must be the same.
"""

from __future__ import annotations

import json
import math
from collections import namedtuple

import numpy as np
import pytest

from vaeguard.apps.online import as_records, run_online, step_settings
from vaeguard.timeseries.views import ViewSet, merge_config

#: What the batch step reads of a consumed Kafka message.
Message = namedtuple("Message", "topic partition offset key value timestamp")

N = 420
FIRST_FIT = 150
SPIKE = 330
DIP = 380
PERIOD = 60 * 60.0  # an hour of one-minute points: the seasonal channel is active early

PARAMS = {
    "window": {
        "window": 12,
        "interval": "auto",
        "conditions": ["hour_of_day"],
        "seasonal": {"period": PERIOD, "periods": 2, "tolerance": 120.0},
    },
    "views": {
        "latent_dim": 2,
        "hidden": [16],
        "train_steps": 80,
        "retrain_steps": 40,
        "batch_size": 32,
        "mc_samples": 4,
        "score_slots": 6,
    },
    "likelihood": {"history": 200, "min_history": 40, "suppress": 30, "decades": 4.0},
    "schedule": {"retrain_growth": None},
}


def records() -> list[dict]:
    rng = np.random.default_rng(7)
    t = np.arange(N)
    values = 10 + 3 * np.sin(2 * math.pi * t / 60) + 0.3 * rng.standard_normal(N)
    values[SPIKE] += 9
    values[DIP : DIP + 8] -= 5  # a missing peak-like dip: the seasonal view's kind of anomaly
    return [{"ts": 1_600_000_000 + 60.0 * i, "value": float(v)} for i, v in enumerate(values)]


@pytest.fixture(scope="module")
def learned():
    from vaeguard.apps.nab import NAB_PARAMS

    params = merge_config(NAB_PARAMS, PARAMS)
    views = ViewSet.from_params(params)
    assert len(views.views) == 2 and views.spec.seasonal is not None
    result = run_online(views, records(), first_fit=FIRST_FIT)
    return views, result


def test_the_runner_learns_online_with_two_views(learned):
    _, result = learned
    assert result.trained_at == [FIRST_FIT]
    # no opinion before the first fit: the rows it trained on only build the state
    assert not np.isfinite(result.raw[:, :FIRST_FIT]).any()
    assert (result.output[:FIRST_FIT] == 0).all()
    # the histories hold the scores of rows the model had not trained on only: the first opinion
    # comes once min_history of them are in (the runner and the daemon alike)
    min_history = PARAMS["likelihood"]["min_history"]
    assert (result.output[FIRST_FIT : FIRST_FIT + min_history] == 0).all()
    assert np.isfinite(result.raw[:, FIRST_FIT:]).all()  # both views scored every window since
    assert result.output[SPIKE] == 1.0
    assert ((result.output >= 0) & (result.output <= 1)).all()


@pytest.mark.parametrize("batch", [1, 37, 500])
def test_the_daemon_gives_the_same_outputs_for_the_bundle_the_runner_trained(
    learned, tmp_path, batch
):
    from vaeguard.records.batch import process
    from vaeguard.serving import load_serving

    views, result = learned
    views.save(tmp_path / "bundle")
    serving = load_serving(tmp_path / "bundle", "v1")
    assert len(serving.views.views) == 2
    messages = as_records(records())
    outputs = np.zeros(N)
    anomalies = set()
    plausible = serving.detector.plausible_range_
    assert plausible is not None
    low, high = plausible.low.min(), plausible.high.max()
    # The rows the runner's first fit trained on build the per-entity state; the likelihood
    # histories then restart, as they do in the runner (and in a daemon started on the bundle).
    assert not process(serving, messages[:FIRST_FIT], step_settings()).dead
    serving.likelihood = serving.views.likelihood()
    for start in range(FIRST_FIT, N, batch):
        done = process(serving, messages[start : start + batch], step_settings())
        assert not done.dead
        for r in done.scored:
            outputs[r.source.offset] = r.anomaly_likelihood
            # expected values stay within what the training made plausible, even at the spike
            assert all(low <= c["expected"] <= high for c in r.contributions)
            if r.is_anomaly:
                anomalies.add(r.source.offset)
    # (batch sizes change float32 rounding in the model, ~1e-6; nothing else differs)
    np.testing.assert_allclose(outputs, result.output, atol=1e-4)
    # the daemon alerts where the detector's output reaches the alert level (1.0)
    assert anomalies == set(np.flatnonzero(result.output >= 1.0).tolist())
    assert SPIKE in anomalies


def test_a_tampered_view_is_refused(learned, tmp_path):
    from vaeguard.errors import BundleError
    from vaeguard.serving import load_serving

    views, _ = learned
    views.save(tmp_path / "bundle")
    part = tmp_path / "bundle" / "views" / "1" / "bundle.json"
    part.write_text(part.read_text().replace('"format_version"', '"format_version" ', 1))
    with pytest.raises(BundleError, match="views/1"):
        load_serving(tmp_path / "bundle", "v1")


def test_an_irregular_stream_is_scored_at_every_point_after_the_warm_up():
    """Sampled at 40 % of a one-minute grid: the default configuration scores every point once
    the entity has been seen for a whole window; the old half-observed gate left gaps."""
    from vaeguard.apps.nab import NAB_PARAMS

    rng = np.random.default_rng(3)
    kept = [r for r in records() if rng.random() < 0.4]
    params = merge_config(NAB_PARAMS, {**PARAMS, "window": {**PARAMS["window"], "interval": 60}})
    assert params["window"]["min_observed"] == 0.0  # from the default configuration
    result = run_online(ViewSet.from_params(params), kept, first_fit=80)
    scored = np.isfinite(result.raw).all(axis=0)
    assert scored[80:].all() and not scored[:80].any()  # every point from the first fit on

    gated = merge_config(params, {"window": {"min_observed": 0.5}})
    old = run_online(ViewSet.from_params(gated), kept, first_fit=80)
    assert np.isfinite(old.raw).all(axis=0)[80:].mean() < 0.9


@pytest.mark.parametrize("batch", [50, 25])
def test_the_daemon_step_refits_online_where_the_runner_does(batch):
    """Online learning is the serving object's own: fed through the daemon's batch step in
    other batch sizes (that end on the due rows), the same first model refits on the same rows
    with the same windows and gives the runner's outputs."""
    from vaeguard.apps.nab import NAB_PARAMS
    from vaeguard.records.batch import process
    from vaeguard.serving.window import WindowServing

    params = merge_config(
        NAB_PARAMS, {**PARAMS, "schedule": {"retrain_growth": None, "retrain_max_gap": 100}}
    )
    runner = run_online(ViewSet.from_params(params), records(), first_fit=150)
    assert runner.trained_at == [150, 250, 350]

    views = ViewSet.from_params(params)
    first = run_online(views, records()[:151], first_fit=150)  # the same (seeded) first fit
    assert first.trained_at == [150]
    serving = WindowServing(views, fitted_at=150)
    messages = as_records(records())
    outputs = np.zeros(N)
    refits = []
    # The rows the runner's first fit trained on build the per-entity state; the likelihood
    # histories then restart, as they do in the runner (and in a daemon started on the bundle).
    assert not process(serving, messages[:FIRST_FIT], step_settings()).dead
    serving.likelihood = serving.views.likelihood()
    for start in range(FIRST_FIT, N, batch):
        done = process(serving, messages[start : start + batch], step_settings())
        assert not done.dead
        if done.refit is not None:
            assert done.refit["ok"] and "learn" in done.timings
            refits.append(start + batch)
        for r in done.scored:
            outputs[r.source.offset] = r.anomaly_likelihood
    assert refits == serving.learning.refit_rows == [250, 350]
    assert serving.model_id.endswith("+refit2")
    np.testing.assert_allclose(outputs, runner.output, atol=1e-4)
    # ... and the refits changed the scores after them (so the comparison could fail), and
    # only after them (causal)
    frozen = merge_config(params, {"schedule": {"retrain_max_gap": None}})
    once = run_online(ViewSet.from_params(frozen), records(), first_fit=150)
    assert once.trained_at == [150]
    np.testing.assert_array_equal(once.raw[:, :250], runner.raw[:, :250])
    assert not np.allclose(once.raw[:, 250:], runner.raw[:, 250:])


def test_a_window_model_keeps_one_state_per_message_key(learned, tmp_path):
    """Records that name their entity only by the Kafka message key (as a keyed producer
    sends them) are one entity per key, exactly as the same records with the key in the
    value: the entity rule of a tabular model."""
    from vaeguard.records.batch import process
    from vaeguard.serving import load_serving

    views, _ = learned
    views.save(tmp_path / "bundle")
    rows = records()[:200]
    hosts = [b"host-a", b"host-b"]

    def feed(with_field: bool):
        serving = load_serving(tmp_path / "bundle", "v1")
        messages = []
        for i, row in enumerate(rows):
            for h, host in enumerate(hosts):
                value = {**row, "value": row["value"] + 5 * h}
                if with_field:
                    value["key"] = host.decode()
                encoded = json.dumps(value).encode()  # as a keyed producer sends it
                messages.append(Message("t", 0, 2 * i + h, host, encoded, 0))
        done = process(serving, messages, step_settings())
        assert not done.dead
        return serving, {
            (r.key, r.source.offset): (r.anomaly_likelihood, r.score) for r in done.scored
        }

    by_message_key, got = feed(with_field=False)
    by_field, expected = feed(with_field=True)
    assert by_message_key.n_entities == by_field.n_entities == 2
    assert {key for key, _ in got} == {"host-a", "host-b"}
    assert got == expected


def test_a_window_record_says_what_its_threshold_applies_to(learned, tmp_path):
    """The record keeps the raw score (nats) while the likelihood decides: ``threshold`` is a
    level of ``anomaly_likelihood``, and the record says so."""
    from vaeguard.records.batch import process
    from vaeguard.serving import load_serving

    views, _ = learned
    views.save(tmp_path / "bundle")
    serving = load_serving(tmp_path / "bundle", "v1")
    done = process(serving, as_records(records())[: FIRST_FIT + 60], step_settings())
    assert done.scored
    for r in done.scored:
        record = r.to_json()
        assert record["threshold_of"] == "anomaly_likelihood"
        assert record["threshold"] == 1.0
        assert record["is_anomaly"] == (record["anomaly_likelihood"] >= record["threshold"])
