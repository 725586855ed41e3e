"""Multi-metric entities in window mode: each view's score judged per metric, the alert naming
the metric, and an incident (its ramp and tail included) not learned as normal."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vaeguard.timeseries.views as views_module
from tests.timeseries.test_detector import series, small_detector
from vaeguard.errors import DataError
from vaeguard.timeseries.likelihood import LikelihoodSpec
from vaeguard.timeseries.views import INCIDENT_MARGIN, ViewLikelihood, ViewSet

WINDOW = 12
NOISE = 1.0


def host(n: int = 700, seed: int = 0, shift: tuple[int, int, float] | None = None) -> list[dict]:
    """Three metrics of one host driven by one load with a cycle, plus their own noise;
    ``shift``: (metric, first row, size in noise sd) for 5 rows."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    load = 10 + 3 * np.sin(2 * math.pi * t / 60)
    values = np.stack([load, 2 * load + 5, 30 - load], axis=1) + NOISE * rng.standard_normal((n, 3))
    if shift is not None:
        metric, first, size = shift
        values[first : first + 5, metric] += size * NOISE
    return [
        {"ts": 60.0 * i, "cpu": float(v[0]), "mem": float(v[1]), "idle": float(v[2])}
        for i, v in enumerate(values)
    ]


@pytest.fixture(scope="module")
def trained() -> ViewSet:
    """Two views over three metrics with a seasonal channel of the first (period 30 rows)."""
    params = dict(
        window=WINDOW,
        metrics=("cpu", "mem", "idle"),
        interval=60,
        seasonal={"period": 1800.0, "periods": 2, "tolerance": 60.0},
        latent_dim=2,
        hidden=(16,),
        train_steps=80,
        batch_size=32,
        mc_samples=4,
        score_slots=4,
    )
    views = ViewSet(
        [small_detector(**params, inputs="metrics"), small_detector(**params)],
        {"short": 1, "history": 200, "min_history": 40, "budget": 2.0},
        {"retrain_growth": None, "retrain_max_gap": None},
    )
    batch = views.featurizer().update_and_featurize(host(400))
    views.fit(batch.x, batch.c, batch.mask)
    return views


def test_each_view_is_judged_per_metric_and_the_seasonal_channel_belongs_to_its_source(trained):
    assert trained.views[0].term_metrics == ("cpu", "mem", "idle")
    assert trained.views[1].input_channels[-1] == "cpu_seasonal"
    assert trained.views[1].term_metrics == ("cpu", "mem", "idle")
    assert trained.term_metrics == ["cpu", "mem", "idle"] * 2
    batch = trained.featurizer().update_and_featurize(host(500, seed=1))
    scored = trained.score_windows(batch.x, batch.c, batch.mask)
    assert len(scored.terms) == 6
    # with scored slots, a view's terms add up to its score
    for k, view in enumerate(trained.views):
        score = view.score_windows(batch.x, batch.c, batch.mask)[0]
        np.testing.assert_allclose(sum(scored.terms[3 * k : 3 * k + 3]), score, rtol=1e-9)
    np.testing.assert_array_equal(
        scored.score, trained.views[0].raw_scores(batch.x, batch.c, batch.mask)
    )
    assert trained.likelihood().metrics == trained.term_metrics


def test_student_t_terms_follow_the_gaussian_ones_metric_by_metric():
    """With ``student_t_dof`` a view's terms are its per-metric Gaussian terms, then the same
    metrics' slots under the Student-t; the likelihood judges all of them."""
    det = small_detector(
        window=WINDOW, metrics=("cpu", "mem", "idle"), inputs="metrics", score_slots=4,
        student_t_dof=4.0,
    )  # fmt: skip
    student = ViewSet([det], {"short": 1, "history": 200, "min_history": 40, "budget": 2.0})
    batch = student.featurizer().update_and_featurize(host(400))
    student.fit(batch.x, batch.c, batch.mask)
    assert det.term_metrics == ("cpu", "mem", "idle") * 2
    assert student.term_metrics == ["cpu", "mem", "idle"] * 2
    assert len(student.likelihood().views) == 6
    (score, nll, _), terms = det.term_scores(batch.x, batch.c, batch.mask)
    np.testing.assert_array_equal(score, det.raw_scores(batch.x, batch.c, batch.mask))
    np.testing.assert_array_equal(terms[:, :3], det.metric_terms(nll))
    raw = det._scorer(det.select(batch.x) * det.select(batch.mask), batch.c, det.select(batch.mask))
    np.testing.assert_array_equal(terms[:, 3:], det.metric_terms(raw.student_nll))
    assert not np.allclose(terms[:, 3:], terms[:, :3])
    np.testing.assert_array_equal(
        student.score_windows(batch.x, batch.c, batch.mask).terms, terms.T
    )


def test_a_view_of_one_metric_is_judged_by_its_score_unchanged():
    det = small_detector()
    views = ViewSet([det], det.likelihood_spec)
    batch = views.featurizer().update_and_featurize(series())
    views.fit(batch.x, batch.c, batch.mask)
    assert views.term_metrics == ["value"]
    scored = views.score_windows(batch.x, batch.c, batch.mask)
    np.testing.assert_array_equal(scored.terms[0], det.raw_scores(batch.x, batch.c, batch.mask))


def test_each_term_holds_its_own_metrics_slots(trained):
    """Excess nats planted in one metric's scored slots (and in the seasonal channel of the
    first) land in that metric's term only."""
    view = trained.views[1]
    rows, w = 4, WINDOW
    nll = np.zeros((rows, len(view.input_channels) * w))
    nll[0, 1 * w + w - 1] = 7.0  # mem, newest slot: scored
    nll[1, 2 * w + 0] = 7.0  # idle, oldest slot: not scored (score_slots=4)
    nll[2, 3 * w + w - 2] = 7.0  # cpu_seasonal: cpu's term
    terms = view.metric_terms(nll)
    np.testing.assert_array_equal(terms[0], [0.0, 7.0, 0.0])
    np.testing.assert_array_equal(terms[1], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(terms[2], [7.0, 0.0, 0.0])


def _incidents(n: int = 6000, every: int = 300, seed: int = 0, terms: tuple[int, ...] = (1,)):
    """Raw scores of three terms (metrics a, b, c): noise, and every ``every`` points an
    incident on term b (or on each of ``terms`` in turn): a three-point ramp, then twelve points
    far out, then a slow return."""
    rng = np.random.default_rng(seed)
    raws = rng.normal(0.0, 1.0, (3, n))
    starts = list(range(600, n - 30, every))
    shape = np.r_[2.5, 3.5, 4.5, np.full(12, 25.0), 4.5, 3.5, 2.5]
    for k, s in enumerate(starts):
        raws[terms[k % len(terms)], s : s + shape.size] += shape
    return raws, starts, shape.size


def _replay(raws, margin, monkeypatch):
    monkeypatch.setattr(views_module, "INCIDENT_MARGIN", margin)
    spec = LikelihoodSpec(estimator="evt", budget=2.0, short=1, history=1000, alert=1.0)
    lk = ViewLikelihood(spec, 3, ["a", "b", "c"])
    out = lk.update_many(["e"] * raws.shape[1], list(raws))
    return lk, out


def test_an_incident_and_its_ramp_are_not_learned_so_the_next_one_still_alerts(monkeypatch):
    # one every 600 points: within the budget's 2 per 1000, so every one is an incident
    raws, starts, span = _incidents(every=600)
    lk, out = _replay(raws, INCIDENT_MARGIN, monkeypatch)
    alerted = [bool((out[s : s + span] >= 1.0).any()) for s in starts]
    assert all(alerted), alerted
    # the alert names the metric of the incident's term
    first = [s + int(np.argmax(out[s : s + span] >= 1.0)) for s in starts]
    lk2 = ViewLikelihood(lk.spec, 3, ["a", "b", "c"])
    lk2.update_many(["e"] * raws.shape[1], list(raws))
    assert {lk2.last_metric[i] for i in first} == {"b"}
    # without the margin the ramps join the history, which learns the incidents as normal
    _, plain = _replay(raws, 0, monkeypatch)
    missed = [not (plain[s : s + span] >= 1.0).any() for s in starts]
    assert sum(missed) >= len(starts) // 2


def test_an_incident_beyond_its_own_terms_history_is_not_learned_however_many_terms():
    """Thirty terms (ten metrics × three): the Bonferroni factor (30) keeps a term's tail of
    10^-4.5 from being a decade beyond the alert level, yet it is one for that term's own
    history. Learned, the first such incident made the next look less rare, and only the first
    ever alerted; left out, each one alerts and names its metric."""
    rng = np.random.default_rng(0)
    n, n_terms = 6000, 30
    raws = rng.normal(0.0, 1.0, (n_terms, n))
    starts = list(range(600, n - 30, 700))  # within the budget's 2 per 1000
    shape = np.r_[8 / 3, 4.0, np.full(8, 8.0), 4.0]  # 8 sd of term 0's noise
    for s in starts:
        raws[0, s : s + shape.size] += shape
    spec = LikelihoodSpec(estimator="evt", budget=2.0, short=1, history=1000, alert=1.0)
    metrics = [f"m{t % 10}" for t in range(n_terms)]
    lk = ViewLikelihood(spec, n_terms, metrics)
    out = lk.update_many(["e"] * n, list(raws))
    alerted = [bool((out[s : s + shape.size] >= 1.0).any()) for s in starts]
    assert all(alerted), alerted
    assert not any(lk.last_learned[s + 2 : s + 10].any() for s in starts)
    assert {lk.last_metric[s + 5] for s in starts} == {"m0"}


def test_a_hold_counts_once_in_the_surprised_terms_history_at_no_new_height():
    """A held incident is one point of its term's history, no larger than the largest it held
    before: the history keeps how often rare values come (the budget holds on a stationary
    stream) without learning how high this one went. The other terms learn nothing of it."""
    rng = np.random.default_rng(1)
    spec = LikelihoodSpec(estimator="evt", budget=2.0, short=1, history=1000, alert=1.0)
    lk = ViewLikelihood(spec, 3, ["a", "b", "c"])
    lk.update_many(["e"] * 500, list(rng.normal(0.0, 1.0, (3, 500))))
    lengths = [len(v._history("e").averages) for v in lk.views]
    largest = lk.views[1].largest("e")
    incident = rng.normal(0.0, 1.0, (3, 12))
    incident[1] += 40.0  # twelve points far beyond term b's history
    lk.update_many(["e"] * 12, list(incident))
    assert not lk.last_learned.any()
    after = [len(v._history("e").averages) for v in lk.views]
    assert after == [lengths[0], lengths[1] + 1, lengths[2]]
    assert lk.views[1]._history("e").averages[-1] == largest
    assert lk.views[1].largest("e") == largest


def test_a_term_beyond_its_own_level_only_is_held_but_not_counted_as_an_incident():
    """Thirty terms: a point whose most surprised term is a decade beyond the level by its own
    tail, but not after the Bonferroni factor, is left out of the histories without counting
    against the allowance of recurring incidents (a stationary stream of many terms has T
    times as many of those)."""
    rng = np.random.default_rng(2)
    n_terms = 30
    spec = LikelihoodSpec(estimator="evt", budget=2.0, short=1, history=1000, alert=1.0)
    lk = ViewLikelihood(spec, n_terms, [f"m{t}" for t in range(n_terms)])
    lk.update_many(["e"] * 600, list(rng.normal(0.0, 1.0, (n_terms, 600))))
    level = -spec.level_decades - views_module.UNLEARNED_DECADES
    penalty = math.log10(n_terms)
    for size in np.arange(3.0, 12.0, 0.05):  # the smallest size whose own tail is that far out
        point = np.zeros((n_terms, 1))
        point[0, 0] = size
        probe = ViewLikelihood.restore(json.loads(json.dumps(lk.snapshot())), lk.metrics)
        probe.update_many(["e"], list(point))
        own = probe.last_log10_tail[0] - penalty
        if own <= level:
            break
    assert level - penalty < own <= level  # held; not an incident after the factor
    assert not probe.last_learned[0]
    assert not any(probe._held["e"].episodes.values())


def test_surges_the_views_lead_count_as_the_entitys_not_as_a_metrics():
    """Three metrics, each with two view terms and a cross-section term. Every 700 points the
    load surges: every view term rises, the cross-section stays calm, and the most surprised
    term names a metric at random (here always b). Every 700 points too, 350 later, b really
    shifts: its cross-section term leads. Each is within the budget's 2 per 1000; counted
    together as b's, they looked recurring and b's shifts were learned. Now each alerts."""
    rng = np.random.default_rng(3)
    n, metrics = 6000, ["a", "b", "c"] * 3
    raws = rng.normal(0.0, 1.0, (9, n))
    surges = list(range(400, n - 400, 700))
    shifts = [s + 350 for s in surges]
    for s in surges:
        raws[:6, s : s + 8] += 15.0
        raws[1, s : s + 8] += 5.0  # the view term naming b leads
    for s in shifts:
        raws[7, s : s + 8] += 30.0  # b's cross-section term
    spec = LikelihoodSpec(estimator="evt", budget=2.0, short=1, history=1000, alert=1.0)
    lk = ViewLikelihood(spec, 9, metrics, comparable=[6, 7, 8])
    out = lk.update_many(["e"] * n, list(raws))
    assert all((out[s : s + 8] >= 1.0).any() for s in shifts)
    assert all((out[s : s + 8] >= 1.0).any() for s in surges)
    assert {lk.last_metric[s + 2] for s in shifts} == {"b"}
    assert set(lk._held["e"].episodes) == {"b", views_module.SURGE}


def test_incidents_that_recur_more_often_than_the_budget_allows_are_learned(monkeypatch):
    """Every 250 points (4 per 1000, the budget allows 2): from the third within a history's
    span on they join the histories, so the stream's habit stops paging; the rate the budget
    states holds again. Once it no longer looks beyond the level, the online refits learn it
    too; the first ones, judged incidents, they leave out."""
    raws, starts, span = _incidents(every=250)
    lk, out = _replay(raws, INCIDENT_MARGIN, monkeypatch)
    alerted = [bool((out[s : s + span] >= 1.0).any()) for s in starts]
    assert all(alerted[:2])  # the first two are incidents
    assert sum(alerted) <= len(starts) // 3, alerted  # then mostly the stream's habit
    assert not any(lk.last_learned[s + 3 : s + 15].any() for s in starts[:2])
    # the same incidents, rarer than the budget allows, alert every time (the test above)
    held = lk._held["e"]
    assert held.recurring and len(held.episodes["b"]) == 3  # what it needs to tell, no more
    assert list(held.episodes) == ["b"]


def test_incidents_are_counted_per_metric_so_another_metrics_habit_teaches_nothing(monkeypatch):
    """The same rate of incidents (4 per 1000), led by three metrics in turn: each metric's
    own are 4/3 per 1000, within the budget's 2, so every one is an incident and alerts."""
    raws, starts, span = _incidents(every=250, terms=(0, 1, 2))
    lk, out = _replay(raws, INCIDENT_MARGIN, monkeypatch)
    alerted = [bool((out[s : s + span] >= 1.0).any()) for s in starts]
    assert all(alerted), alerted
    held = lk._held["e"]
    assert not held.recurring and set(held.episodes) == {"a", "b", "c"}
    # one metric's habit is learned, and the rare incidents of another still alert
    raws, starts, span = _incidents(every=125, terms=(1, 1, 1, 0))
    lk, out = _replay(raws, INCIDENT_MARGIN, monkeypatch)
    rare = [s for k, s in enumerate(starts) if k % 4 == 3]
    habit = [s for k, s in enumerate(starts) if k % 4 != 3]
    assert all((out[s : s + span] >= 1.0).any() for s in rare)
    assert sum(bool((out[s : s + span] >= 1.0).any()) for s in habit) <= len(habit) // 3


def test_a_replay_with_the_terms_metrics_counts_incidents_as_serving_does(monkeypatch):
    from vaeguard.apps.online import replay_likelihood

    raws, starts, span = _incidents(every=250, terms=(0, 1, 2))
    _, served = _replay(raws, INCIDENT_MARGIN, monkeypatch)
    entities = ["e"] * raws.shape[1]
    spec = LikelihoodSpec(estimator="evt", budget=2.0, short=1, history=1000, alert=1.0)
    named = replay_likelihood(raws, entities, spec, (), ["a", "b", "c"])
    np.testing.assert_array_equal(named, served)
    # without the names every incident counts as one metric's: from the third on, learned
    unnamed = replay_likelihood(raws, entities, spec)
    assert sum(bool((unnamed[s : s + span] >= 1.0).any()) for s in starts) < len(starts) // 2


def _two_metrics(seed: int = 4) -> tuple[np.ndarray, int]:
    """Raw scores of two terms (metrics a, b): noise, then three incidents 40 points apart,
    on a, then b, then a again (all within one suppression window of 100 points)."""
    raws = np.random.default_rng(seed).normal(0.0, 1.0, (2, 1200))
    first = 900
    for term, start in ((0, first), (1, first + 40), (0, first + 80)):
        raws[term, start : start + 5] += 30.0
    return raws, first


def test_an_alert_on_one_metric_does_not_silence_another_metrics():
    """Suppression keeps one incident to one alert per metric: a shift of b forty points
    after an alert on a is an alert of its own; a's next one, within a's window, is not."""
    raws, first = _two_metrics()
    spec = LikelihoodSpec(
        estimator="evt", budget=2.0, short=1, history=1000, alert=1.0, suppress=100
    )
    lk = ViewLikelihood(spec, 2, ["a", "b"])
    out = lk.update_many(["e"] * raws.shape[1], list(raws))
    alerts = np.flatnonzero(out >= 1.0)
    assert [int(i) for i in alerts] == [first, first + 40], alerts
    assert [lk.last_metric[i] for i in alerts] == ["a", "b"]
    assert lk.last_log10_tail[first + 80] <= -spec.level_decades  # seen, but suppressed
    # without the names, one window for the entity: b's shift is silenced as before
    plain = ViewLikelihood(spec, 2).update_many(["e"] * raws.shape[1], list(raws))
    assert [int(i) for i in np.flatnonzero(plain >= 1.0)] == [first]


@pytest.mark.parametrize("metrics", [["a"], None])
def test_an_incident_soon_after_an_alert_alerts_once_the_window_has_passed(metrics):
    """A brief incident alerts; 30 points after it ends, a long one begins on the same metric,
    saturated from its first point. Silenced while within `suppress` points of the first
    incident's last point at the level, it alerts once past them, and only once however long
    it goes on. (When every silenced output extended the window, the second incident's own
    saturated outputs kept renewing it and it never alerted.)"""
    raws = np.random.default_rng(5).normal(0.0, 1.0, (1, 1400))
    raws[0, 1000:1005] += 30.0
    raws[0, 1035:1300] += 30.0
    spec = LikelihoodSpec(
        estimator="evt", budget=2.0, short=1, history=1000, alert=1.0, suppress=100
    )
    lk = ViewLikelihood(spec, 1, metrics)
    out = lk.update_many(["e"] * raws.shape[1], list(raws))
    assert lk.last_log10_tail[1035:1300].max() <= -spec.level_decades  # at the level throughout
    alerts = [int(i) for i in np.flatnonzero(out[900:] >= 1.0) + 900]
    assert alerts == [1000, 1004 + 100 + 1]  # its last point at the level, `suppress` silenced


def test_per_metric_suppression_survives_a_snapshot_and_older_snapshots_count_for_all():
    raws, first = _two_metrics()
    spec = LikelihoodSpec(
        estimator="evt", budget=2.0, short=1, history=1000, alert=1.0, suppress=100
    )
    whole = ViewLikelihood(spec, 2, ["a", "b"]).update_many(["e"] * raws.shape[1], list(raws))
    cut = first + 20  # after a's alert, inside its window
    lk = ViewLikelihood(spec, 2, ["a", "b"])
    head = lk.update_many(["e"] * cut, list(raws[:, :cut]))
    state = json.loads(json.dumps(lk.snapshot()))
    assert state["emitter"]["entities"][0]["metric_peaks"]["a"]
    restored = ViewLikelihood.restore(state, ["a", "b"])
    tail = restored.update_many(["e"] * (raws.shape[1] - cut), list(raws[:, cut:]))
    np.testing.assert_array_equal(np.r_[head, tail], whole)
    # a snapshot from before (its peaks name no metric) suppresses every metric's alerts
    for entity in state["emitter"]["entities"]:
        entity["peaks"] = entity.pop("metric_peaks")["a"]
    older = ViewLikelihood.restore(state, ["a", "b"])
    rest = older.update_many(["e"] * (raws.shape[1] - cut), list(raws[:, cut:]))
    assert not (rest >= 1.0).any()


def test_a_snapshot_of_incidents_not_counted_per_metric_restores_and_counts_for_every_metric():
    spec = LikelihoodSpec(estimator="evt", budget=2.0, short=1, history=1000, alert=1.0)
    state = ViewLikelihood(spec, 3, ["a", "b", "c"]).snapshot()
    state["held"] = [
        {"key": "e", "points": [], "quiet": 0, "seen": 900, "episodes": [100, 500, 800]}
    ]
    restored = ViewLikelihood.restore(json.loads(json.dumps(state)), ["a", "b", "c"])
    held = restored._held["e"]
    assert list(held.episodes[None]) == [100, 500, 800]
    restored._new_episode(held, "a")  # three earlier ones, of any metric: this one recurs
    assert held.recurring and list(held.episodes["a"]) == [900]
    again = ViewLikelihood.restore(json.loads(json.dumps(restored.snapshot())), ["a", "b", "c"])
    assert {m: list(e) for m, e in again._held["e"].episodes.items()} == {
        None: [100, 500, 800],
        "a": [900],
    }


def test_last_learned_marks_the_rows_beyond_the_level_and_around_them(monkeypatch):
    raws, starts, _span = _incidents(n=2000, every=500)
    monkeypatch.setattr(views_module, "INCIDENT_MARGIN", 5)
    spec = LikelihoodSpec(estimator="evt", budget=2.0, short=1, history=1000, alert=1.0)
    lk = ViewLikelihood(spec, 3, ["a", "b", "c"])
    lk.update_many(["e"] * raws.shape[1], list(raws))
    learned = lk.last_learned
    for s in starts:
        assert not learned[s + 3 : s + 15].any()  # beyond the level, and the margin after
    assert learned[:500].all()


def test_held_points_survive_a_snapshot(monkeypatch):
    raws, _, _ = _incidents(n=2400, every=400)
    spec = LikelihoodSpec(estimator="evt", budget=2.0, short=3, history=500, alert=1.0)
    whole = ViewLikelihood(spec, 3, ["a", "b", "c"])
    keys = ["e", "f"] * (raws.shape[1] // 2)
    expected = whole.update_many(keys, list(raws))
    part = ViewLikelihood(spec, 3, ["a", "b", "c"])
    cut = 1207  # in an incident: points are held and a margin is running
    part.update_many(keys[:cut], [r[:cut] for r in raws])
    assert any(h.points or h.quiet for h in part._held.values())
    text = json.dumps(part.snapshot(), allow_nan=False)
    restored = ViewLikelihood.restore(json.loads(text), ["a", "b", "c"])
    rest = restored.update_many(keys[cut:], [r[cut:] for r in raws])
    np.testing.assert_array_equal(rest, expected[cut:])


def test_a_snapshot_of_another_number_of_terms_is_refused():
    spec = LikelihoodSpec(estimator="evt", budget=2.0)
    state = ViewLikelihood(spec, 2).snapshot()
    with pytest.raises(DataError):
        ViewLikelihood.restore(state, ["a", "b", "c"])


held_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.lists(st.one_of(st.none(), st.floats(), st.text(max_size=2)), max_size=4),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    held=st.one_of(
        held_values,
        st.lists(
            st.one_of(
                held_values,
                st.fixed_dictionaries(
                    {
                        "key": st.one_of(st.text(max_size=3), st.integers()),
                        "points": st.one_of(
                            held_values, st.lists(st.lists(held_values, max_size=3), max_size=8)
                        ),
                        "quiet": held_values,
                        "seen": held_values,
                        "episodes": st.one_of(
                            held_values,
                            st.lists(
                                st.one_of(
                                    held_values, st.lists(held_values, min_size=2, max_size=2)
                                ),
                                max_size=4,
                            ),
                        ),
                        "recurring": held_values,
                        "counted": held_values,
                    }
                ),
            ),
            max_size=3,
        ),
    )
)
def test_arbitrary_held_state_restores_or_is_refused_clearly(held):
    spec = LikelihoodSpec(estimator="evt", budget=2.0, short=1, history=200, min_history=20)
    state = ViewLikelihood(spec, 2).snapshot()
    state["held"] = held
    try:
        restored = ViewLikelihood.restore(json.loads(json.dumps(state)))
    except DataError:
        return
    out = restored.update_many(["", "x"] * 30, [np.arange(60.0), np.arange(60.0)])
    assert np.isfinite(out).all()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    metric_peaks=st.one_of(
        held_values,
        st.dictionaries(
            st.text(max_size=3),
            st.one_of(held_values, st.lists(st.lists(held_values, max_size=3), max_size=4)),
            max_size=3,
        ),
    )
)
def test_arbitrary_metric_peaks_restore_or_are_refused_clearly(metric_peaks):
    """The per-metric suppression state of a snapshot: restored whole (then judged), or
    refused as corrupt, never another exception."""
    spec = LikelihoodSpec(estimator="evt", budget=2.0, short=1, history=200, suppress=50)
    lk = ViewLikelihood(spec, 2, ["a", "b"])
    lk.update_many(["e"] * 5, list(np.zeros((2, 5))))
    state = json.loads(json.dumps(lk.snapshot()))
    state["emitter"]["entities"][0]["metric_peaks"] = metric_peaks
    try:
        restored = ViewLikelihood.restore(state, ["a", "b"])
    except DataError as exc:
        assert "corrupt" in str(exc)
        return
    out = restored.update_many(["e"] * 3, list(np.ones((2, 3))))
    assert np.isfinite(out).all()
