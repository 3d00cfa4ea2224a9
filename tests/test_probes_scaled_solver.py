"""The scaled L-BFGS (LinearProbe's default multiclass solver) reaches scikit-learn's optimum."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from embedcyto.errors import ProbeError
from embedcyto.probes import LinearProbe
from embedcyto.probes._multinomial import MultinomialObjective, class_sample_weight
from embedcyto.probes._precond import PreconditionedPath, _line_search, extrapolated_start


def _classes(n_per=(120, 80, 40, 15, 8), dim=16, seed=0, dtype=np.float64):
    """Overlapping, imbalanced classes with an offset and a decaying feature spectrum."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(n_per)), n_per)
    mix = rng.normal(size=(dim, dim)) * (np.arange(1, dim + 1) ** -1.0)[:, None]
    X = rng.normal(size=(y.size, dim)) @ mix + rng.normal(size=(len(n_per), dim))[y] * 0.5
    return (X + 2.0).astype(dtype), y


def _gradient_inf_norm(X, y, K, C, coef, intercept, sw=None):
    """scikit-learn's optimality measure (largest gradient entry of its objective wrt its own
    coefficients and intercepts), written out in float64."""
    X, coef, intercept = (np.asarray(a, dtype=np.float64) for a in (X, coef, intercept))
    sw = np.ones(y.size) if sw is None else sw
    logits = X @ coef.T + intercept
    prob = np.exp(logits - logits.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    resid = (prob - np.eye(K)[y]) * sw[:, None]
    grad_w = resid.T @ X / sw.sum() + coef / (C * sw.sum())
    return max(np.abs(grad_w).max(), np.abs(resid.sum(axis=0) / sw.sum()).max())


def _objective(X, y, K, C, coef, intercept, sw=None):
    """scikit-learn's objective in float64 (weighted mean log-loss + ||W||^2 / (2 C sum(sw)))."""
    sw = np.ones(y.size) if sw is None else sw
    logits = X @ coef.T + intercept
    top = logits.max(axis=1)
    lse = np.log(np.exp(logits - top[:, None]).sum(axis=1)) + top
    loss = lse - logits[np.arange(y.size), y]
    return float(sw @ loss / sw.sum() + np.sum(coef ** 2) / (2 * C * sw.sum()))


def _sklearn_optimum(X, y, C, class_weight=None):
    """scikit-learn's optimum of the same objective, by its Newton-CG solver (exact Hessian
    products, so ill-conditioning does not stop it short; its lbfgs ran out of evaluations on
    the ill-conditioned case)."""
    return LogisticRegression(C=C, tol=1e-10, max_iter=1000, solver="newton-cg",
                              class_weight=class_weight).fit(X, y)


CASES = {
    "imbalanced": lambda: _classes(),
    # features on scales from 1e-2 to 1e2, not standardised: badly conditioned
    "ill_conditioned": lambda: (lambda X, y: (X * np.logspace(-2, 2, X.shape[1]), y))(
        *_classes(dim=12)),
    "duplicated_features": lambda: (lambda X, y: (np.hstack([X, X[:, :6], X[:, :1]]), y))(
        *_classes()),
    "more_features_than_rows": lambda: _classes(n_per=(20, 15, 10, 6), dim=120),
}


@pytest.mark.parametrize("class_weight", [None, "balanced"])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("C", [1e-2, 1.0, 100.0])
def test_scaled_fit_is_sklearns_optimum(case, C, class_weight):
    X, y = CASES[case]()
    K = int(y.max()) + 1
    sw = class_sample_weight(y, K, class_weight)
    fit = PreconditionedPath(X, y, K, sw).fit(C, 1e-8, 5000)
    assert fit.converged, fit.message
    # the same optimality test as scikit-learn's, in scikit-learn's own coefficients
    assert _gradient_inf_norm(X, y, K, C, fit.coef, fit.intercept, sw) <= 1e-8
    sk = _sklearn_optimum(X, y, C, class_weight)
    np.testing.assert_array_equal(np.argmax(X @ fit.coef.T + fit.intercept, axis=1),
                                  sk.predict(X))
    ours, theirs = (_objective(X, y, K, C, c, b, sw) for c, b in
                    ((fit.coef, fit.intercept), (sk.coef_, sk.intercept_)))
    assert ours <= theirs + 1e-9 * abs(theirs)
    # near-flat directions (duplicated features, C = 100) are fixed only to about ||g|| / their
    # curvature by either solver's test
    scale = max(np.abs(sk.coef_).max(), 1.0)
    np.testing.assert_allclose(fit.coef, sk.coef_, atol=1e-3 * scale, rtol=0)
    # the intercept's mean over classes is a flat direction: compare the differences
    np.testing.assert_allclose(fit.intercept - fit.intercept.mean(),
                               sk.intercept_ - sk.intercept_.mean(), atol=1e-3 * scale, rtol=0)


def test_float32_features_reach_the_gradient_test_in_original_coordinates():
    X, y = _classes(dim=32, dtype=np.float32)
    X = (X - X.mean(0)) / X.std(0)
    fit = PreconditionedPath(X, y, 5).fit(1.0, 1e-6, 1000)
    assert fit.converged and fit.coef.dtype == np.float32
    assert _gradient_inf_norm(X, y, 5, 1.0, fit.coef, fit.intercept) <= 2e-6


def test_fewer_iterations_than_scipys_lbfgs_on_an_ill_conditioned_problem():
    X, y = CASES["ill_conditioned"]()
    scaled = PreconditionedPath(X, y, 5).fit(10.0, 1e-6, 5000)
    plain = MultinomialObjective(X, y, 5).fit(10.0, 1e-6, 5000)
    assert scaled.converged and scaled.n_iter * 5 < plain.n_iter


def test_warm_and_extrapolated_starts_reach_the_same_optimum():
    X, y = _classes()
    path = PreconditionedPath(X, y, 5)
    a, b = path.fit(0.1, 1e-9, 5000), path.fit(0.3, 1e-9, 5000)
    start = extrapolated_start((a.coef, a.intercept), (b.coef, b.intercept), 0.1, 0.3, 0.9)
    cold, warm = path.fit(0.9, 1e-9, 5000), path.fit(0.9, 1e-9, 5000, *start)
    assert cold.converged and warm.converged
    np.testing.assert_allclose(warm.coef, cold.coef, atol=1e-6, rtol=0)


def test_fits_are_bitwise_deterministic():
    X, y = _classes(dtype=np.float32)
    Xv, yv = _classes(seed=1, dtype=np.float32)
    first = LinearProbe().fit(X, y, Xv, yv)
    second = LinearProbe().fit(X, y, Xv, yv)
    assert first.C_ == second.C_ and np.array_equal(first.coef_, second.coef_)
    assert np.array_equal(first.val_scores_, second.val_scores_, equal_nan=True)


def test_scaled_and_lbfgs_solvers_choose_the_same_c_on_a_path():
    X, y = _classes()
    Xv, yv = _classes(seed=1)
    scaled = LinearProbe(tol=1e-8).fit(X, y, Xv, yv)
    plain = LinearProbe(solver="lbfgs", tol=1e-8).fit(X, y, Xv, yv)
    assert scaled.C_ == plain.C_
    np.testing.assert_array_equal(scaled.val_scores_, plain.val_scores_)
    assert scaled.n_evaluations_ < plain.n_evaluations_


def test_iteration_cap_is_reported_as_scipy_does():
    X, y = _classes()
    fit = PreconditionedPath(X, y, 5).fit(100.0, 1e-10, 2)
    assert not fit.converged and fit.n_iter == 2 and "ITERATIONS REACHED LIMIT" in fit.message


def test_line_search_refuses_a_direction_that_does_not_descend():
    assert _line_search(lambda alpha: (0.0, 1.0, 1.0), 0.0, 0.5) is None
    # a convex parabola with its minimum at 2: the search stops where the slope has fallen
    alpha = _line_search(lambda a: ((a - 2) ** 2, 2 * (a - 2), 2.0), 4.0, -4.0)
    assert abs(2 * (alpha - 2)) <= 0.9 * 4.0 and (alpha - 2) ** 2 <= 4.0


def test_unknown_solver_is_refused_with_the_choices():
    X, y = _classes()
    with pytest.raises(ProbeError, match="scaled, lbfgs"):
        LinearProbe(solver="newton").fit(X, y)


@pytest.mark.parametrize("class_weight", [None, "balanced"])
def test_class_curvature_is_the_softmax_s_mean_curvature(class_weight):
    X, y = _classes()
    sw = class_sample_weight(y, 5, class_weight)
    path = PreconditionedPath(X, y, 5, sw)
    rng = np.random.default_rng(1)
    coef_t, b = rng.normal(size=(X.shape[1], 5)) * 0.3, rng.normal(size=5)
    state = path._state(coef_t, b, path._logits(coef_t, b), 1e-3, curvature=True)
    logits = path.X.astype(np.float64) @ coef_t + b
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    w = np.ones(y.size) if sw is None else sw
    want = sum(wi * (np.diag(pi) - np.outer(pi, pi)) for wi, pi in zip(w, p)) / w.sum()
    np.testing.assert_allclose(state.curvature, want, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(state.curvature @ np.ones(5), 0.0, atol=1e-12)  # classes' mean


def test_scaling_maps_gradients_by_its_transpose():
    from embedcyto.probes._precond import Spectrum, _Scaling

    rng = np.random.default_rng(2)
    p, K = 6, 4
    P = rng.dirichlet(np.ones(K), size=50)
    A = (np.diag(P.sum(0)) - P.T @ P) / 50
    scale = _Scaling(Spectrum(rng.normal(size=p), rng.uniform(0.1, 3, p), None), A, 0.05)
    U, u = rng.normal(size=(p, K)), rng.normal(size=K)
    G, g = rng.normal(size=(p, K)), rng.normal(size=K)
    coef_t, b = scale.to_original(U, u)
    GU, gu = scale.grad_to_scaled(G, g)
    assert np.isclose(np.sum(coef_t * G) + b @ g, np.sum(U * GU) + u @ gu)
    assert np.all(np.isfinite(scale.d)) and np.all(np.isfinite(scale.e))
