"""`WindowDetector` keeps scikit-learn's estimator contract: the constructor stores its
arguments as given, `get_params(deep=True)` / `set_params` / `clone` round-trip them, and the
checks run at `fit` (or the first use that needs them), with the errors construction raised
before; a configuration or a bundle is still refused when it is read."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.utils import estimator_checks

from tests.json_fuzz import json_values
from vaeguard.errors import BundleError, ConfigError, VaeguardError
from vaeguard.timeseries.detector import WindowDetector
from vaeguard.timeseries.featurizer import WindowSpec
from vaeguard.timeseries.likelihood import LikelihoodSpec
from vaeguard.timeseries.views import VIEW_FIELDS, ViewSet

#: The keys `get_params()` returned before the contract (bundles and `ViewSet` rely on them).
OLD_KEYS = {
    *WindowSpec.__dataclass_fields__,
    "latent_dim",
    "hidden",
    "beta",
    "min_log_var",
    "max_log_var",
    "train_steps",
    "retrain_steps",
    "batch_size",
    "learning_rate",
    "mc_samples",
    "score_slots",
    "likelihood",
    "inputs",
    "seed",
}
#: Every key now: the old ones (kept) and those added since.
KEYS = OLD_KEYS | {"predict_scored", "student_t_dof"}
#: The added keys a bundle records only when set, so that bundles without them read alike.
UNSET = {"predict_scored": False, "student_t_dof": None}

#: A model small enough to fit in a second.
TINY = {"latent_dim": 2, "hidden": (8,), "train_steps": 8, "batch_size": 16, "mc_samples": 2}


def records(n: int = 80) -> list[dict]:
    rng = np.random.default_rng(3)
    return [
        {"ts": 60.0 * i, "value": 10 + math.sin(i / 5) + 0.1 * float(rng.standard_normal())}
        for i in range(n)
    ]


def windows(det: WindowDetector):
    return det.featurizer().update_and_featurize(records())


# -- scikit-learn's own checks ---------------------------------------------------------------------

#: The checks of `check_estimator` that apply: the rest feed `fit` arbitrary tables (a window
#: detector takes windows of its spec's width, at least 16) or call predict-style methods.
SKLEARN_CHECKS = [
    "check_estimator_cloneable",
    "check_no_attributes_set_in_init",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_parameters_default_constructible",
    "check_get_params_invariance",
    "check_set_params",
]


@pytest.mark.parametrize("check", SKLEARN_CHECKS)
@pytest.mark.parametrize(
    "det",
    [
        WindowDetector(),
        WindowDetector(window=8, metrics=["cpu", "mem"], inputs="metrics", likelihood={"short": 2}),
        WindowDetector(
            seasonal={"periods": 2}, hidden=[16], score_slots=4, conditions=["hour_of_day"]
        ),
    ],
    ids=["defaults", "set", "seasonal"],
)
def test_scikit_learn_parameter_checks_pass(check, det):
    with warnings.catch_warnings():
        # check_set_params only warns when set_params validates: that counts as a failure here
        warnings.simplefilter("error")
        getattr(estimator_checks, check)("WindowDetector", det)


class Tagged(WindowDetector):
    """What the fit checks need besides the contract: estimator tags, which scikit-learn's
    `BaseEstimator` supplies (the library does not depend on scikit-learn)."""

    def __sklearn_tags__(self):
        from sklearn.utils import Tags, TargetTags

        return Tags(estimator_type=None, target_tags=TargetTags(required=False))


@pytest.mark.parametrize(
    ("check", "window"),
    [
        ("check_estimators_overwrite_params", 2),
        ("check_dont_overwrite_parameters", 3),
        ("check_estimators_fit_returns_self", 2),
    ],
)
def test_scikit_learn_fit_checks_pass(check, window):
    """Fitting (on the check's own rows, as windows of one metric) changes no parameter and
    sets only private or fitted (``_``-suffixed) attributes."""
    getattr(estimator_checks, check)("WindowDetector", Tagged(window=window, **TINY))


def test_the_constructor_stores_each_argument_as_given():
    hidden, metrics, likelihood = [16, 8], ["cpu", "mem"], {"short": 3}
    det = WindowDetector(
        hidden=hidden, metrics=metrics, likelihood=likelihood, inputs="metrics", window=1
    )
    assert det.hidden is hidden and det.metrics is metrics and det.likelihood is likelihood
    assert det.inputs == "metrics" and det.window == 1  # not resolved, not checked
    assert set(vars(det)) == set(inspect.signature(WindowDetector).parameters)
    assert det.model_ is None and det.threshold_ is None  # unfitted


def test_the_defaults_are_the_window_specs():
    signature = inspect.signature(WindowDetector).parameters
    for name, field in WindowSpec.__dataclass_fields__.items():
        assert signature[name].default == field.default, name


# -- get_params / set_params / clone ---------------------------------------------------------------


def test_get_params_takes_deep_and_returns_every_constructor_parameter():
    det = WindowDetector(window=8, inputs="metrics", hidden=(16,))
    params = det.get_params(deep=True)
    assert set(params) == set(inspect.signature(WindowDetector).parameters) == KEYS
    assert params == det.get_params(deep=False) == det.get_params()
    assert set(VIEW_FIELDS) <= set(params)
    assert params["inputs"] == "metrics" and params["hidden"] == (16,) and params["window"] == 8


def test_get_params_round_trips_through_the_constructor():
    det = WindowDetector(
        window=12, metrics=("cpu", "lat"), conditions=("hour_of_day",), interval=60,
        seasonal={"period": 3600.0}, inputs=["cpu", "cpu_seasonal"], score_slots=3,
        likelihood=LikelihoodSpec(short=2), seed=7, **TINY,
    )  # fmt: skip
    again = WindowDetector(**det.get_params())
    assert again.get_params() == det.get_params()
    assert again.resolved_params() == det.resolved_params()


def test_resolved_params_are_what_get_params_gave_before():
    """The normalized form bundles record: the spec completed, inputs resolved, lists."""
    det = WindowDetector(window=8, metrics=("cpu", "mem"), inputs="metrics", hidden=(16,))
    resolved = det.resolved_params()
    assert resolved == {
        **WindowSpec(window=8, metrics=("cpu", "mem")).to_dict(),
        "latent_dim": 4, "hidden": [16], "beta": 1.0, "min_log_var": -6.0,
        "max_log_var": 4.0, "train_steps": 600, "retrain_steps": 300, "batch_size": 64,
        "learning_rate": 1e-3, "mc_samples": 16, "score_slots": None, "likelihood": None,
        "inputs": ["cpu", "mem"], "seed": 0,
    }  # fmt: skip
    # the same key order as the bundles'; the added keys only when set (old bundles read alike)
    assert list(resolved) == [k for k in det.get_params() if k not in UNSET]
    json.dumps(resolved)
    # reading the normalized form back gives it unchanged
    assert WindowDetector.from_config(**resolved).resolved_params() == resolved
    assert WindowDetector.from_config(**resolved).get_params() == {**resolved, **UNSET}
    predicting = WindowDetector(window=8, score_slots=4, predict_scored=True).resolved_params()
    assert list(predicting)[-1] == "predict_scored" and predicting["predict_scored"] is True
    assert WindowDetector.from_config(**predicting).resolved_params() == predicting
    student = WindowDetector(window=8, student_t_dof=4).resolved_params()
    assert list(student)[-1] == "student_t_dof" and student["student_t_dof"] == 4.0
    assert WindowDetector.from_config(**student).resolved_params() == student


def test_set_params_sets_them_and_refuses_unknown_names_by_name():
    det = WindowDetector()
    assert det.set_params(window=8, inputs="metrics") is det
    assert det.window == 8 and det.inputs == "metrics"
    assert det.spec.window == 8 and det.featurizer().spec.window == 8
    with pytest.raises(ValueError, match="unknown parameter 'windw'"):
        det.set_params(latent_dim=9, windw=4)
    assert det.latent_dim == 4  # nothing set when one name is unknown


def test_derived_state_follows_the_parameters():
    det = WindowDetector(window=8, metrics=("cpu", "mem"))
    assert det.input_channels == ("cpu", "mem") and det.n_inputs == 16
    det.set_params(inputs=["mem"])
    assert det.input_channels == ("mem",) and det.n_inputs == 8
    np.testing.assert_array_equal(det.columns_, np.arange(8, 16))
    det.window = 4  # a plain assignment, as scikit-learn allows
    assert det.spec.window == 4 and det.n_inputs == 4
    assert not det.use_likelihood
    det.likelihood_spec = LikelihoodSpec(short=3)  # (how an alert budget is set on a model)
    assert det.use_likelihood and det.likelihood == LikelihoodSpec(short=3)
    assert det.likelihood_state().spec.short == 3


def test_set_params_then_fit_uses_the_new_values():
    det = WindowDetector(window=8, **TINY)
    det.set_params(latent_dim=3, hidden=[4], window=6)
    batch = windows(det)
    assert batch.x.shape[1] == 6
    det.fit(batch.x, batch.c, batch.mask)
    assert det.model_.latent_dim == 3 and det.model_.n_features == 6
    assert det.raw_scores(batch.x, batch.c, batch.mask).shape == (len(batch),)


def test_clone_gives_an_unfitted_detector_with_equal_params():
    det = WindowDetector(window=8, likelihood={"short": 2}, **TINY)
    batch = windows(det)
    det.fit(batch.x, batch.c, batch.mask)
    copy = clone(det)
    assert copy is not det and copy.model_ is None and copy.fits_ == 0
    assert copy.get_params() == det.get_params()
    assert copy.likelihood is not det.likelihood  # deep-copied, as scikit-learn does
    assert det.model_ is not None


# -- checks at fit, errors as before ---------------------------------------------------------------

BAD = [
    ({"window": 1}, ConfigError, "window: must be at least 2, got 1"),
    ({"score_slots": 0}, ValueError, "score_slots must be between 1 and window"),
    ({"window": 8, "score_slots": 9}, ValueError, "score_slots must be between 1 and window"),
    ({"inputs": ["nope"]}, ValueError, "inputs: nope not among the window's channels value"),
    ({"inputs": []}, ValueError, "inputs: name distinct window channels"),
    ({"likelihood": {"bogus": 1}}, ConfigError, "likelihood spec: unknown field"),
    ({"latent_dim": "four"}, ValueError, "invalid literal for int"),
    ({"seasonal": {"periods": 0}}, ConfigError, "periods"),
]


@pytest.mark.parametrize(("params", "error", "message"), BAD)
def test_a_bad_parameter_is_refused_at_fit_not_at_construction(params, error, message):
    det = WindowDetector(**params)  # stores, checks nothing
    x = np.zeros((20, 32), dtype="float32")
    with pytest.raises(error, match=message):
        det.fit(x)
    with pytest.raises(error, match=message):
        det.resolved_params()
    with pytest.raises(error, match=message):
        WindowDetector.from_config(**params)
    # ... and before a fit, by the first use that needs the checked parameters
    with pytest.raises(error, match=message):
        det.featurizer() if "window" in params or "seasonal" in params else det.n_inputs


@pytest.mark.parametrize(("params", "error", "message"), BAD)
def test_a_bad_view_is_still_refused_when_a_configuration_is_read(params, error, message):
    window = {k: v for k, v in params.items() if k in WindowSpec.__dataclass_fields__}
    view = {k: v for k, v in params.items() if k in VIEW_FIELDS}
    likelihood = params.get("likelihood")
    config = {"window": window, "views": [view], "likelihood": likelihood}
    expected = ConfigError if error is ValueError else error  # views[k]: … as before
    with pytest.raises(expected, match=message):
        ViewSet.from_params(config)
    with pytest.raises(error, match=message):  # one flat detector (the oldest bundles)
        ViewSet.from_params(params)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    det = WindowDetector(window=8, interval=60, likelihood={"short": 1}, **TINY)
    batch = windows(det)
    det.fit(batch.x, batch.c, batch.mask).calibrate(batch.x, batch.c, batch.mask)
    return det, ViewSet.of(det).save(tmp_path_factory.mktemp("w") / "bundle")


def _rewrite(source, dest, window_mode):
    import shutil

    shutil.copytree(source, dest)
    manifest = json.loads((dest / "bundle.json").read_text())
    manifest["window"]["config"] = window_mode
    (dest / "bundle.json").write_text(json.dumps(manifest))
    return dest


def test_a_loaded_bundle_has_its_checked_parameters_and_scores_the_same(bundle):
    det, path = bundle
    loaded = ViewSet.load(path)
    view = loaded.primary
    assert view.spec == det.spec and view.input_channels == ("value",)
    assert view.get_params() == det.resolved_params() | {"likelihood": None} | UNSET
    assert loaded.likelihood_spec == det.likelihood_spec
    batch = windows(det)
    np.testing.assert_array_equal(
        view.raw_scores(batch.x, batch.c, batch.mask), det.raw_scores(batch.x, batch.c, batch.mask)
    )


def test_a_bundle_with_student_t_terms_says_so_and_judges_them(bundle, tmp_path):
    """``student_t_dof`` is read from the bundle's view: the same weights and score, and a
    second term, the same slots under the Student-t (`tests/model/test_scoring.py` checks the
    density itself)."""
    det, path = bundle
    window_mode = ViewSet.of(det).get_params()
    window_mode["views"][0]["student_t_dof"] = 4
    student = ViewSet.load(_rewrite(path, tmp_path / "t", window_mode))
    assert student.primary.get_params()["student_t_dof"] == 4.0
    assert student.summary()["views"][0]["student_t_dof"] == 4.0
    assert student.term_metrics == ["value", "value"]
    batch = windows(det)
    plain = ViewSet.of(det).score_windows(batch.x, batch.c, batch.mask)
    scored = student.score_windows(batch.x, batch.c, batch.mask)
    np.testing.assert_array_equal(scored.score, plain.score)
    np.testing.assert_array_equal(scored.terms[0], plain.terms[0])
    assert len(plain.terms) == 1 and not np.allclose(scored.terms[1], plain.terms[0])
    # the same bundle saved again keeps it
    again = ViewSet.load(student.save(tmp_path / "again"))
    terms = again.score_windows(batch.x, batch.c, batch.mask).terms
    np.testing.assert_array_equal(terms[1], scored.terms[1])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"score_slots": 0}, "views\\[0\\]: score_slots must be between 1 and window"),
        ({"inputs": ["nope"]}, "views\\[0\\]: inputs: nope not among"),
        ({"latent_dim": "four"}, "views\\[0\\]: invalid literal"),
        ({"student_t_dof": 0}, "views\\[0\\]: student_t_dof must be a finite number above 0"),
        ({"student_t_dof": "4"}, "views\\[0\\]: student_t_dof must be a number above 0 or null"),
    ],
)
def test_a_bundle_with_a_bad_view_is_refused_when_loaded(bundle, tmp_path, edit, message):
    det, path = bundle
    window_mode = ViewSet.of(det).get_params()
    window_mode["views"][0].update(edit)
    bad = _rewrite(path, tmp_path / "bad", window_mode)
    with pytest.raises(BundleError, match="corrupt bundle .*" + message):
        ViewSet.load(bad)


def test_an_old_flat_bundle_with_a_bad_parameter_is_refused_when_loaded(bundle, tmp_path):
    det, path = bundle
    flat = det.resolved_params()  # what window_mode held before views existed
    loaded = ViewSet.load(_rewrite(path, tmp_path / "flat", flat)).primary.get_params()
    assert loaded == flat | UNSET
    bad = _rewrite(path, tmp_path / "bad", {**flat, "score_slots": 99})
    with pytest.raises(BundleError, match="score_slots must be between 1 and window"):
        ViewSet.load(bad)


# -- arbitrary parameters --------------------------------------------------------------------------

PARAM_NAMES = sorted(KEYS)
#: What checking arbitrary values raises (the bundle loader turns each into a BundleError).
REFUSALS = (VaeguardError, TypeError, ValueError, ArithmeticError, LookupError, AttributeError)


def _outcome(fn):
    try:
        return ("ok", fn())
    except REFUSALS as exc:
        return (type(exc), str(exc))


@settings(max_examples=150, deadline=None)
@given(params=st.dictionaries(st.sampled_from(PARAM_NAMES), json_values(), max_size=4))
def test_arbitrary_parameters_construct_and_are_judged_alike_on_every_path(params):
    """Any values construct (nothing is checked); checking them gives a normalized form or a
    refusal, and the same one whether they came through the constructor, `set_params` on a
    detector already checked, or `from_config`."""
    det = WindowDetector(**params)
    assert det.get_params() == {**WindowDetector().get_params(), **params}
    direct = _outcome(det.resolved_params)
    reset = WindowDetector()
    reset.resolved_params()  # a cached check, which set_params must not leave behind
    reset.set_params(**params)
    assert _outcome(reset.resolved_params) == direct
    read = _outcome(lambda: WindowDetector.from_config(**params).resolved_params())
    assert read == direct
    if direct[0] == "ok":
        json.dumps(direct[1])
        assert WindowDetector.from_config(**direct[1]).resolved_params() == direct[1]


def test_dataclass_replace_of_the_likelihood_keeps_it_a_parameter():
    det = WindowDetector(likelihood={"short": 2})
    det.likelihood_spec = dataclasses.replace(det.likelihood_spec, budget=0.5)
    assert det.get_params()["likelihood"] == LikelihoodSpec(short=2, budget=0.5)
    assert det.resolved_params()["likelihood"]["budget"] == 0.5


@pytest.mark.parametrize("name", ["beta", "min_log_var", "max_log_var", "learning_rate"])
@pytest.mark.parametrize("value", [float("nan"), "NaN", float("inf"), "-Infinity"])
def test_a_non_finite_training_number_is_refused(name, value):
    with pytest.raises(ValueError, match=f"{name} must be a finite number"):
        WindowDetector.from_config(**{name: value})
