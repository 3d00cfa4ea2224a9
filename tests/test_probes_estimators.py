"""Every probe keeps the scikit-learn estimator contract and learns what it should."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from embedcyto.errors import ProbeError
from embedcyto.probes import KNNProbe, LinearProbe, ProtoNet, SimpleShot, StudyLinearHead

# StudyLinearHead's default lr (1e-3, the study's) needs thousands of steps; the 300-row 2-D
# blobs of the contract checks give a few hundred, so the checks run it with a larger lr. The
# contract (fit/predict/clone/validation) does not depend on the learning rate.
ESTIMATORS = [LinearProbe(), KNNProbe(), SimpleShot(), ProtoNet(),
              StudyLinearHead(epochs=10, lr=5e-2, warmup_steps=5)]


@parametrize_with_checks(ESTIMATORS[:-1])
def test_sklearn_contract(estimator, check):
    check(estimator)


@pytest.mark.slow  # torch training in every check (~12 s); the fast profile trains it elsewhere
@parametrize_with_checks(ESTIMATORS[-1:])
def test_sklearn_contract_of_the_study_head(estimator, check):
    check(estimator)


def _blobs(rng, n_per_class, n_classes, dim, spread):
    means = rng.normal(size=(n_classes, dim)) * 5.0
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = means[y] + spread * rng.normal(size=(y.size, dim))
    return X.astype(np.float32), y


def _make(name):
    return {
        "linear": LinearProbe(),
        "knn": KNNProbe(),
        "simpleshot": SimpleShot(),
        "protonet": ProtoNet(),
        "study": StudyLinearHead(epochs=30),
    }[name]


@pytest.mark.parametrize("name", ["linear", "knn", "simpleshot", "protonet", "study"])
def test_separable_features_are_learned_perfectly(name):
    rng = np.random.default_rng(0)
    X, y = _blobs(rng, 40, 4, 32, spread=0.3)
    Xt, yt = _blobs(np.random.default_rng(0), 40, 4, 32, spread=0.3)  # same means, new noise
    Xt = Xt + 0.1 * np.random.default_rng(1).normal(size=Xt.shape).astype(np.float32)
    probe = _make(name)
    probe.fit(X, y)
    assert probe.score(Xt, yt) == 1.0
    proba = probe.predict_proba(Xt)
    assert proba.shape == (yt.size, 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", ["linear", "knn", "simpleshot"])
def test_shuffled_labels_give_chance(name):
    rng = np.random.default_rng(3)
    X, y = _blobs(rng, 200, 4, 16, spread=1.0)
    Xt, yt = _blobs(np.random.default_rng(4), 200, 4, 16, spread=1.0)
    # Labels shuffled in both splits: the features carry no information about them.
    acc = _make(name).fit(X, rng.permutation(y)).score(Xt, rng.permutation(yt))
    # 800 test rows, chance 0.25: a binomial 99.9 % interval is about +/- 0.05.
    assert abs(acc - 0.25) < 0.06


def test_linear_probe_chooses_c_on_validation_and_keeps_train_fit():
    rng = np.random.default_rng(5)
    X, y = _blobs(rng, 60, 3, 20, spread=4.0)
    Xv, yv = _blobs(np.random.default_rng(5), 30, 3, 20, spread=4.0)
    probe = LinearProbe(Cs=[1e-3, 1e-1, 10.0], tol=1e-8).fit(X, y, Xv, yv)
    assert probe.selection_ == "validation"
    chosen = [1e-3, 1e-1, 10.0].index(probe.C_)
    assert probe.val_scores_[chosen] == np.nanmax(probe.val_scores_)
    # The kept model is the train-only fit at C_ (warm-started): a cold fit reaches the same
    # optimum once both are converged tightly.
    again = LinearProbe(Cs=[probe.C_], tol=1e-8).fit(X, y)
    np.testing.assert_allclose(probe.predict_proba(Xv), again.predict_proba(Xv), atol=1e-3)


def test_linear_probe_breaks_accuracy_ties_by_log_loss():
    rng = np.random.default_rng(12)
    X, y = _blobs(rng, 30, 3, 10, spread=0.2)  # every C reaches 100 % on validation
    Xv, yv = _blobs(np.random.default_rng(12), 10, 3, 10, spread=0.2)
    probe = LinearProbe(Cs=[1e-4, 1e-2, 1.0]).fit(X, y, Xv, yv)
    assert np.all(probe.val_scores_ == 1.0)
    assert probe.C_ == 1.0  # the most confident correct model, not the most regularised one
    assert probe.predict_proba(Xv).max(axis=1).min() > 0.9


def test_linear_probe_without_validation_uses_a_holdout():
    rng = np.random.default_rng(6)
    X, y = _blobs(rng, 30, 3, 8, spread=2.0)
    probe = LinearProbe(Cs=[0.01, 1.0]).fit(X, y)
    assert probe.selection_ == "holdout"
    assert np.isfinite(probe.val_scores_).all()


@pytest.mark.parametrize("normalisation", ["none", "standard", "l2", "center_l2"])
def test_linear_normalisations_run(normalisation):
    rng = np.random.default_rng(7)
    X, y = _blobs(rng, 20, 2, 6, spread=0.5)
    probe = LinearProbe(Cs=[1.0], normalisation=normalisation).fit(X, y)
    assert probe.score(X, y) == 1.0


def test_bad_parameters_are_refused_with_the_fix():
    X, y = _blobs(np.random.default_rng(0), 5, 2, 3, spread=0.1)
    with pytest.raises(ProbeError, match="normalisation"):
        LinearProbe(normalisation="zscore").fit(X, y)
    with pytest.raises(ProbeError, match="weighting"):
        KNNProbe(weighting="vote").fit(X, y)
    with pytest.raises(ProbeError, match="do not occur in training"):
        LinearProbe().fit(X, y, X[:2], np.array([0, 7]))


def test_knn_picks_k_and_weights():
    rng = np.random.default_rng(8)
    X, y = _blobs(rng, 50, 3, 10, spread=3.0)
    Xv, yv = _blobs(np.random.default_rng(8), 20, 3, 10, spread=3.0)
    for weighting in ("majority", "distance"):
        probe = KNNProbe(weighting=weighting).fit(X, y, Xv, yv)
        assert probe.k_ in (1, 3, 5, 10, 20, 50)
        assert probe.val_scores_[list((1, 3, 5, 10, 20, 50)).index(probe.k_)] == \
            np.nanmax(probe.val_scores_)


@pytest.mark.parametrize("weighting", ["majority", "distance"])
def test_knn_reuses_the_validation_search_and_only_for_the_same_rows(monkeypatch, weighting):
    import embedcyto.probes.knn as knn

    rng = np.random.default_rng(11)
    X, y = _blobs(rng, 40, 3, 8, spread=3.0)
    Xv, yv = _blobs(np.random.default_rng(12), 15, 3, 8, spread=3.0)
    searches = []
    search = knn.neighbours
    monkeypatch.setattr(knn, "neighbours",
                        lambda q, *a, **kw: (searches.append(q.shape[0]), search(q, *a, **kw))[1])
    probe = KNNProbe(weighting=weighting).fit(X, y, Xv, yv)
    assert searches == [len(yv)]
    reused = probe.predict_proba(Xv.copy())  # the same rows, another array: no new search
    assert searches == [len(yv)]
    fresh = KNNProbe(weighting=weighting, ks=[probe.k_]).fit(X, y).predict_proba(Xv)
    np.testing.assert_array_equal(reused, fresh)  # what a new search of the k_ gives
    changed = Xv.copy()
    changed[0] += 1.0
    probe.predict_proba(changed)  # other rows: searched afresh
    assert searches[-1] == len(yv) and len(searches) == 3


def test_knn_one_neighbour_is_the_nearest_training_row():
    rng = np.random.default_rng(9)
    X = rng.normal(size=(30, 5)).astype(np.float32)
    y = np.arange(30) % 3
    probe = KNNProbe(ks=[1]).fit(X, y)
    np.testing.assert_array_equal(probe.predict(X), y)  # each row is its own neighbour


def test_simpleshot_centres_on_unlabelled_rows_when_given():
    rng = np.random.default_rng(10)
    X, y = _blobs(rng, 3, 2, 4, spread=0.1)
    pool = rng.normal(size=(50, 4)).astype(np.float32) + 7.0
    a = SimpleShot().fit(X, y, X_unlabelled=pool)
    b = SimpleShot().fit(X, y)
    assert a.center_source_ == "unlabelled" and b.center_source_ == "support"
    np.testing.assert_allclose(a.mean_, pool.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(b.mean_, X.mean(axis=0), rtol=1e-6)


def test_study_head_is_seeded_and_follows_its_schedule():
    from embedcyto.schedule import warmup_cosine as lr_at

    X, y = _blobs(np.random.default_rng(11), 20, 3, 8, spread=1.0)
    a = StudyLinearHead(epochs=3, random_state=1).fit(X, y)
    b = StudyLinearHead(epochs=3, random_state=1).fit(X, y)
    c = StudyLinearHead(epochs=3, random_state=2).fit(X, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    assert not np.array_equal(a.coef_, c.coef_)
    assert a.n_steps_ == 3 * 2  # 60 rows, batch 32
    assert lr_at(0, 1000, 1e-3, 50, 1e-6) == pytest.approx(1e-3 / 50)
    assert lr_at(49, 1000, 1e-3, 50, 1e-6) == pytest.approx(1e-3)
    assert lr_at(999, 1000, 1e-3, 50, 1e-6) == pytest.approx(1e-6)


def test_linear_path_stops_after_patience_without_improvement():
    X, y = _blobs(np.random.default_rng(13), 30, 3, 40, spread=6.0)
    Xv, yv = _blobs(np.random.default_rng(14), 30, 3, 40, spread=6.0)
    grid = [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]
    full = LinearProbe(Cs=grid, patience=None).fit(X, y, Xv, yv)
    early = LinearProbe(Cs=grid, patience=1).fit(X, y, Xv, yv)
    assert np.isfinite(full.val_scores_).all()
    stopped = np.flatnonzero(np.isnan(early.val_scores_))
    assert stopped.size and stopped[-1] == len(grid) - 1 and (np.diff(stopped) == 1).all()
    seen = np.isfinite(early.val_scores_)
    np.testing.assert_allclose(early.val_scores_[seen], full.val_scores_[seen])
    assert early.val_scores_[grid.index(early.C_)] == np.nanmax(early.val_scores_)
