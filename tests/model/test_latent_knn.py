"""The latent kNN score term: exact, deterministic, batch-independent, and carried by bundles."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import make_normal_data
from vaeguard import BundleError, VAEDetector
from vaeguard.model import latent_knn
from vaeguard.model.latent_knn import (
    MAX_REFERENCE,
    LatentKNN,
    knn_distance,
    reference_sample,
    robust_location_scale,
)
from vaeguard.model.scoring import Scorer

KNN = {
    "epochs": 40,
    "hidden": (32, 16),
    "latent_dim": 2,
    "mc_samples": 8,
    "patience": 10,
    "seed": 0,
    "knn_weight": 1.0,
    "knn_k": 3,
}


@pytest.fixture(scope="module")
def knn_fitted():
    return VAEDetector(**KNN).fit(make_normal_data(1500, seed=0, n_features=5))


def _brute(z, ref, k):
    d = np.sqrt(((z[:, None, :] - ref[None, :, :]) ** 2).sum(-1))
    return np.sort(d, axis=1)[:, :k].mean(axis=1)


@pytest.mark.parametrize("k", [1, 3, 50])
def test_distance_is_the_mean_over_the_k_nearest(k, monkeypatch):
    monkeypatch.setattr(latent_knn, "CHUNK_ROWS", 7)  # several chunks, one partial
    rng = np.random.default_rng(1)
    z, ref = rng.normal(size=(30, 4)), rng.normal(size=(40, 4))
    np.testing.assert_allclose(knn_distance(z, ref, k), _brute(z, ref, k), rtol=1e-9, atol=1e-12)
    # k beyond the reference: every point counts
    np.testing.assert_allclose(knn_distance(z, ref[:2], k), _brute(z, ref[:2], min(k, 2)))
    assert knn_distance(np.zeros((0, 4)), ref, k).shape == (0,)


def test_reference_is_a_bounded_seeded_subsample():
    idx = reference_sample(10_000, seed=3)
    assert len(idx) == MAX_REFERENCE == len(np.unique(idx)) and (np.diff(idx) > 0).all()
    np.testing.assert_array_equal(idx, reference_sample(10_000, seed=3))
    assert not np.array_equal(idx, reference_sample(10_000, seed=4))
    np.testing.assert_array_equal(reference_sample(50, seed=3), np.arange(50))


def test_robust_scale_falls_back_when_the_iqr_is_zero():
    assert robust_location_scale(np.r_[np.zeros(90), np.ones(10)])[1] == pytest.approx(0.3)
    assert robust_location_scale(np.zeros(10)) == (0.0, 1.0)


def test_score_is_reconstruction_plus_the_normalized_latent_distance(knn_fitted):
    det = knn_fitted
    knn = det.latent_knn_
    assert knn.k == 3 and knn.reference.shape == (1200, 2)  # the training part, not calibration
    x = make_normal_data(200, seed=5, n_features=5)
    plain = Scorer(det.model_, det.mc_samples, seed=0)(det.scaler_.transform(x).astype("float32"))
    expected = plain.score + knn.weight * (knn.distance(plain.z_mean) - knn.center) / knn.scale
    np.testing.assert_allclose(det.decision_function(x), expected, rtol=1e-9)
    # the scorer that explanations rescore with gives the detector's own score
    np.testing.assert_allclose(
        det.scorer(det.scaler_.transform(x).astype("float32")).score, expected, rtol=1e-9
    )
    # the term is centred on normal rows: it adds as much as it takes away
    assert abs(np.median(knn.term(plain.z_mean))) < 0.3 * knn.weight


def test_a_row_far_from_every_training_latent_scores_higher(knn_fitted):
    det = knn_fitted
    normal = make_normal_data(300, seed=6, n_features=5)
    # the 20 rows furthest out, pushed 3× further along the data's own subspace
    far = normal[np.argsort(np.linalg.norm(normal, axis=1))[-20:]] * 3.0
    base = Scorer(det.model_, det.mc_samples, seed=0)
    term = det.latent_knn_.term(base(det.scaler_.transform(far).astype("float32")).z_mean)
    assert (term > det.latent_knn_.weight).all()


def test_scores_are_deterministic_and_batch_independent(knn_fitted):
    x = make_normal_data(700, seed=7, n_features=5)
    x[:5, 2] += 5.0
    full = knn_fitted.decision_function(x)
    np.testing.assert_array_equal(full, knn_fitted.decision_function(x))
    singles = np.concatenate([knn_fitted.decision_function(x[i : i + 1]) for i in range(10)])
    np.testing.assert_allclose(singles, full[:10], rtol=1e-4)
    np.testing.assert_allclose(knn_fitted.decision_function(x[3:600]), full[3:600], rtol=1e-4)


def test_threshold_is_calibrated_on_the_combined_score(knn_fitted):
    fresh = make_normal_data(4000, seed=11, n_features=5)
    fpr = float(knn_fitted.predict(fresh).mean())
    assert 0.0 < fpr < 0.04


def test_bundle_round_trip_keeps_the_term_as_plain_numbers(knn_fitted, tmp_path):
    knn_fitted.save(tmp_path / "b")
    m = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert m["format_version"] == 2
    assert m["params"]["knn_weight"] == 1.0 and m["params"]["knn_k"] == 3
    assert len(m["latent_knn"]["reference"]) == 1200
    assert all(isinstance(v, float) for v in m["latent_knn"]["reference"][0])
    loaded = VAEDetector.load(tmp_path / "b")
    x = make_normal_data(300, seed=8, n_features=5)
    np.testing.assert_array_equal(loaded.decision_function(x), knn_fitted.decision_function(x))
    assert loaded.threshold == knn_fitted.threshold


def test_a_bundle_from_before_the_term_loads_and_scores_as_it_did(knn_fitted, tmp_path):
    """An old manifest has no latent_knn and no knn_* params: reconstruction score only."""
    knn_fitted.save(tmp_path / "old")
    path = tmp_path / "old" / "bundle.json"
    m = json.loads(path.read_text())
    del m["latent_knn"]
    for key in ("knn_weight", "knn_k"):
        del m["params"][key]
    m["format_version"] = 1
    path.write_text(json.dumps(m))
    old = VAEDetector.load(tmp_path / "old")
    assert old.latent_knn_ is None and old.get_params()["knn_weight"] == 0.0
    x = make_normal_data(100, seed=9, n_features=5)
    plain = Scorer(old.model_, old.mc_samples, seed=0)(old.scaler_.transform(x).astype("float32"))
    np.testing.assert_array_equal(old.decision_function(x), plain.score)
    old.save(tmp_path / "again")  # and it is written back as the format-1 bundle it is
    again = json.loads((tmp_path / "again" / "bundle.json").read_text())
    assert again["format_version"] == 1 and "latent_knn" not in again


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda k: k.update(reference=[[0.0, 1.0, 2.0]]), "points of 2 numbers"),
        (lambda k: k.update(reference=[]), "1 to 2000 points"),
        (lambda k: k["reference"][0].__setitem__(0, "x"), "points of 2 numbers|numbers"),
        (lambda k: k.update(scale=0.0), "scale must be positive"),
        (lambda k: k.update(k=0), "positive integer"),
        (lambda k: k.update(weight=None), "weight must be a finite number"),
    ],
)
def test_a_malformed_latent_knn_is_refused(knn_fitted, tmp_path, change, message):
    knn_fitted.save(tmp_path / "b")
    path = tmp_path / "b" / "bundle.json"
    m = json.loads(path.read_text())
    change(m["latent_knn"])
    path.write_text(json.dumps(m))
    with pytest.raises(BundleError, match=f"corrupt bundle.*latent_knn.*({message})"):
        VAEDetector.load(tmp_path / "b")


def test_from_dict_rejects_non_finite_points():
    d = LatentKNN(np.zeros((2, 2)), 1, 0.0, 1.0, 1.0).to_dict()
    d["reference"][1][0] = float("inf")
    with pytest.raises(ValueError, match="finite"):
        LatentKNN.from_dict(d, 2)


def test_weight_zero_or_no_validation_rows_leaves_the_reconstruction_score():
    x = make_normal_data(400, seed=2, n_features=5)
    for params in ({"knn_weight": 0.0}, {"validation_fraction": 0.0}):
        det = VAEDetector(**{**KNN, "epochs": 3, **params}).fit(x)
        assert det.latent_knn_ is None
        plain = Scorer(det.model_, det.mc_samples, seed=0)(
            det.scaler_.transform(x).astype("float32")
        )
        np.testing.assert_array_equal(det.decision_function(x), plain.score)


def test_bad_knn_params_are_refused():
    x = make_normal_data(100, seed=2, n_features=5)
    with pytest.raises(ValueError, match="knn_weight"):
        VAEDetector(knn_weight=-1.0).fit(x)
    with pytest.raises(ValueError, match="knn_k"):
        VAEDetector(knn_k=0).fit(x)
