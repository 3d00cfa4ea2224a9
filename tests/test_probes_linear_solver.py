"""The multinomial solver behind LinearProbe gives scikit-learn's LogisticRegression results."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from embedcyto.errors import ProbeError
from embedcyto.probes import LinearProbe, _multinomial
from embedcyto.probes._multinomial import MultinomialObjective, class_sample_weight

GRID = [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]


def _problem(dtype=np.float64, dim=24, n_per=(150, 100, 60, 30, 20)):
    """Overlapping, imbalanced Gaussian classes: train, val and test drawn around the same means."""
    rng = np.random.default_rng(0)
    means = rng.normal(size=(len(n_per), dim)) * 0.6
    splits = []
    for scale in (1.0, 0.5, 1.0):
        y = np.repeat(np.arange(len(n_per)), [max(int(n * scale), 5) for n in n_per])
        X = means[y] + rng.normal(size=(y.size, dim)) + 3.0  # an offset, as embeddings have
        splits.append((X.astype(dtype), y))
    return splits


def _standardise(*arrays):
    mu, sd = arrays[0].mean(axis=0), arrays[0].std(axis=0)
    return [(a - mu) / sd for a in arrays]


@pytest.mark.parametrize("class_weight", [None, "balanced"])
@pytest.mark.parametrize("C", [1e-3, 0.1, 10.0])
def test_float64_fit_is_sklearns_fit(class_weight, C):
    (X, y), _, (Xt, _) = _problem()
    X, Xt = _standardise(X, Xt)
    sk = LogisticRegression(C=C, tol=1e-6, max_iter=1000, class_weight=class_weight).fit(X, y)
    ours = MultinomialObjective(X, y, 5, class_sample_weight(y, 5, class_weight)).fit(C, 1e-6, 1000)
    # Same objective, same L-BFGS-B and options: in float64 the two follow the same path.
    scale = np.abs(sk.coef_).max()
    np.testing.assert_allclose(ours.coef, sk.coef_, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(ours.intercept, sk.intercept_, rtol=0, atol=1e-5 * scale)
    assert abs(ours.n_iter - int(sk.n_iter_[0])) <= 2 and ours.converged
    np.testing.assert_array_equal(np.argmax(Xt @ ours.coef.T + ours.intercept, axis=1),
                                  sk.predict(Xt))


@pytest.mark.parametrize("class_weight", [None, "balanced"])
def test_float32_fit_matches_sklearn_to_float32_precision(class_weight):
    (X, y), _, (Xt, _) = _problem(np.float32)
    X, Xt = _standardise(X, Xt)
    sk = LogisticRegression(C=1.0, tol=1e-6, max_iter=1000, class_weight=class_weight).fit(X, y)
    ours = MultinomialObjective(X, y, 5, class_sample_weight(y, 5, class_weight)).fit(1.0, 1e-6,
                                                                                     1000)
    assert ours.coef.dtype == sk.coef_.dtype == np.float32
    # float32 products leave both a little short of the optimum, at slightly different points.
    np.testing.assert_allclose(ours.coef, sk.coef_, rtol=0, atol=5e-3 * np.abs(sk.coef_).max())
    ours_pred = np.argmax(Xt @ ours.coef.T + ours.intercept, axis=1)
    assert np.mean(ours_pred != sk.predict(Xt)) <= 0.01


def _sklearn_path(X, y, Xv, yv, class_weight, patience=3):
    """LinearProbe's protocol written with scikit-learn: warm-started path, ties by log-loss."""
    model = LogisticRegression(tol=1e-6, max_iter=1000, class_weight=class_weight,
                               warm_start=True)
    best, since, scores = None, 0, []
    for c in GRID:
        proba = model.set_params(C=c).fit(X, y).predict_proba(Xv)
        key = (np.mean(proba.argmax(axis=1) == yv), np.mean(np.log(proba[np.arange(yv.size), yv])))
        scores.append(key[0])
        if best is None or key > best[0]:
            best, since = (key, c), 0
        else:
            since += 1
            if since >= patience:
                break
    return best[1], scores


@pytest.mark.parametrize("class_weight", [None, "balanced"])
def test_probe_chooses_the_c_sklearn_chooses(class_weight):
    (X, y), (Xv, yv), (Xt, _) = _problem(dim=40)
    Xs, Xvs, Xts = _standardise(X, Xv, Xt)
    c_sk, scores_sk = _sklearn_path(Xs, y, Xvs, yv, class_weight)
    probe = LinearProbe(Cs=GRID, class_weight=class_weight).fit(X, y, Xv, yv)
    assert probe.C_ == c_sk
    seen = np.isfinite(probe.val_scores_)
    np.testing.assert_array_equal(probe.val_scores_[seen], scores_sk)
    assert len(set(scores_sk)) > 1  # the grid matters on this problem: the choice is a real test
    cold = LogisticRegression(C=c_sk, tol=1e-6, max_iter=1000, class_weight=class_weight)
    assert np.mean(probe.predict(Xt) == cold.fit(Xs, y).predict(Xts)) >= 0.99


def test_binary_problems_stay_on_sklearn():
    (X, y), _, _ = _problem(n_per=(80, 40))
    probe = LinearProbe(Cs=[0.5], normalisation="none").fit(X, y)
    sk = LogisticRegression(C=0.5, tol=1e-6, max_iter=1000).fit(X, y)
    np.testing.assert_array_equal(probe.coef_, sk.coef_)
    np.testing.assert_array_equal(probe.intercept_, sk.intercept_)


@pytest.mark.parametrize("weighted", [False, True])
def test_gradient_is_the_derivative_of_the_loss_on_both_backends(weighted):
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(40, 3)), np.arange(40) % 4
    sw = rng.uniform(0.5, 2.0, size=40) if weighted else None
    flat = rng.normal(size=(3 + 1) * 4)
    for backend in ("torch", "numpy"):
        objective = MultinomialObjective(X, y, 4, sw, backend=backend)
        _, grad = objective.loss_gradient(flat, 0.3)
        step = 1e-6
        numeric = [(objective.loss_gradient(flat + step * e, 0.3)[0]
                    - objective.loss_gradient(flat - step * e, 0.3)[0]) / (2 * step)
                   for e in np.eye(flat.size)]
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
    torch_ = MultinomialObjective(X, y, 4, sw, backend="torch").loss_gradient(flat, 0.3)
    numpy_ = MultinomialObjective(X, y, 4, sw, backend="numpy").loss_gradient(flat, 0.3)
    assert torch_[0] == pytest.approx(numpy_[0], rel=1e-12)


def test_numpy_is_used_when_torch_cannot_be_imported(monkeypatch):
    monkeypatch.setattr(_multinomial, "_import_torch", lambda: None)
    X = np.random.default_rng(2).normal(size=(30, 4)).astype(np.float32)
    X.flags.writeable = False  # read-only input (a memory-mapped store) is fine too
    assert MultinomialObjective(X, np.arange(30) % 3, 3).backend == "numpy"
    with pytest.raises(ProbeError, match="needs torch"):
        MultinomialObjective(X, np.arange(30) % 3, 3, backend="torch")
    with pytest.raises(ProbeError, match="choose one of"):
        MultinomialObjective(X, np.arange(30) % 3, 3, backend="jax")


def test_read_only_features_fit_with_torch():
    (X, y), _, _ = _problem(np.float32)
    X.flags.writeable = False
    fit = MultinomialObjective(X, y, 5).fit(1.0, 1e-6, 1000)
    assert fit.converged and np.isfinite(fit.coef).all()


def test_iteration_cap_is_reported(caplog):
    (X, y), _, _ = _problem()
    with caplog.at_level(logging.WARNING, logger="embedcyto.probes.linear"):
        probe = LinearProbe(Cs=[100.0], max_iter=3).fit(X, y)
    assert probe.n_iter_ == 3
    assert "max_iter=3" in caplog.text and "C=100" in caplog.text


def test_blas_limit_is_restored_after_nested_fits():
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    before = blas_threads()
    with _multinomial.single_blas_thread():
        with _multinomial.single_blas_thread():
            assert set(blas_threads()) == {1}
        assert set(blas_threads()) == {1}  # the outer fit is still running
    assert blas_threads() == before


@pytest.mark.parametrize("dim, C", [(24, 1.0), (64, 1e-3)])
def test_float32_fit_evaluates_at_float32_points_like_sklearn(dim, C):
    """scipy evaluates the objective at parameters of the start vector's dtype. scikit-learn
    starts L-BFGS-B from a float32 vector on float32 features, so its loss is a consistent
    function of float32 points and the line search rarely needs a second evaluation; started
    from float64, the float32 loss is noise at the scale of the steps and these fits took
    5-10 evaluations per iteration (244 for 38, 298 for 28)."""
    (X, y), _, _ = _problem(np.float32, dim=dim)
    X, = _standardise(X)
    seen = []
    objective = MultinomialObjective(X, y, 5)
    loss_gradient = objective.loss_gradient
    objective.loss_gradient = lambda flat, l2: seen.append(flat.dtype) or loss_gradient(flat, l2)
    fit = objective.fit(C, 1e-6, 1000)
    assert set(seen) == {np.dtype(np.float32)}
    assert fit.converged and fit.n_evaluations <= 2 * fit.n_iter


@pytest.mark.parametrize("C", [1e-2, 10.0])
def test_fewer_rows_than_features_fit_in_the_row_space_is_sklearns_fit(C):
    """With fewer rows than features the fit runs on an orthonormal basis of the rows (exact):
    the model, mapped back to the features, is scikit-learn's, warm start included."""
    (X, y), _, (Xt, _) = _problem(dim=400)
    X, Xt = _standardise(X, Xt)
    assert X.shape[0] < X.shape[1]
    objective = MultinomialObjective(X, y, 5)
    assert objective._basis is not None and objective._X.shape == (X.shape[0], X.shape[0])
    sk = LogisticRegression(C=C, tol=1e-6, max_iter=1000).fit(X, y)

    def objective_value(coef, intercept):  # scikit-learn's objective, in float64
        logits = X @ coef.T + intercept
        top = logits.max(axis=1)
        lse = np.log(np.exp(logits - top[:, None]).sum(axis=1)) + top
        return np.mean(lse - logits[np.arange(y.size), y]) + np.sum(coef ** 2) / (2 * C * y.size)

    best = objective_value(sk.coef_, sk.intercept_)
    warm = objective.fit(C / 10, 1e-6, 1000)
    for ours in (objective.fit(C, 1e-6, 1000), objective.fit(C, 1e-6, 1000, warm.coef,
                                                               warm.intercept)):
        assert ours.converged
        assert objective_value(ours.coef, ours.intercept) <= best * (1 + 1e-6)  # as low or lower
        np.testing.assert_array_equal(np.argmax(Xt @ ours.coef.T + ours.intercept, axis=1),
                                      sk.predict(Xt))
