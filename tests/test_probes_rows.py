"""The scaled solver's per-row float64 work split into row blocks gives the one-call bits."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from embedcyto.probes import _products, linear
from embedcyto.probes._precond import PreconditionedPath
from embedcyto.probes._products import ROW_ALIGN, Workers
from embedcyto.probes._rows import LogitRows, _row_max


@pytest.fixture
def always_split(monkeypatch):
    """Row blocks (and product blocks) at any size, so small arrays are cut too."""
    monkeypatch.setattr(_products, "MIN_ROW_BLOCK", 1)
    monkeypatch.setattr(_products, "MIN_WORK", 0)


def _same(a, b) -> bool:
    """Equal bit for bit (zero signs included, which ``==`` ignores)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _reference_data(logits, y, sw):
    """The per-row formulas as written before the row blocks: loss sum, softmax."""
    rows = np.arange(y.size)
    shifted = logits - logits.max(axis=1, keepdims=True)
    prob = np.exp(shifted)
    norm = prob.sum(axis=1)
    loss = np.log(norm) - shifted[rows, y]
    prob /= norm[:, None]
    if sw is not None:
        loss = loss * sw
    return float(loss.sum()), prob


def _reference_trial(logits, alpha, dz, y, sw):
    loss, prob = _reference_data(logits + alpha * dz, y, sw)
    dz_y, dz2 = dz[np.arange(y.size), y], dz * dz
    pz = np.sum(prob * dz, axis=1)
    slope_rows = pz - dz_y
    curv_rows = np.sum(prob * dz2, axis=1) - pz ** 2
    if sw is not None:
        slope_rows, curv_rows = slope_rows * sw, curv_rows * sw
    return loss, float(slope_rows.sum()), float(curv_rows.sum()), prob


def _reference_residual(prob, y, sw, low):
    onehot = np.zeros(prob.shape)
    onehot[np.arange(y.size), y] = 1.0
    resid = prob - onehot
    if sw is not None:
        resid *= sw[:, None]
    return resid.astype(low), resid.sum(axis=0)


def test_row_blocks_cover_the_rows_at_aligned_cuts():
    for n, k, threads in [(28160, 23, 2), (1003, 23, 3), (999, 5, 8), (2835, 5, 2), (7, 3, 4)]:
        blocks = Workers(threads).row_blocks(n, k)
        assert blocks[0][0] == 0 and blocks[-1][1] == n
        assert all(a < b for a, b in blocks)
        assert all(b == c for (_, b), (c, _) in zip(blocks, blocks[1:]))
        assert all(a % ROW_ALIGN == 0 for a, _ in blocks)
    assert len(Workers(2).row_blocks(28160, 23)) == 2
    assert len(Workers(1).row_blocks(28160, 23)) == 1
    assert len(Workers(2).row_blocks(2835, 5)) == 1  # too little work to hand out


@pytest.mark.parametrize("n,k", [(1003, 23), (640, 5), (97, 3)])
def test_numpy_row_reductions_do_not_depend_on_the_block(n, k):
    rng = np.random.default_rng(n)
    a = rng.normal(size=(n, k)) * np.logspace(-8, 8, k)
    for op in (np.sum, np.max):
        whole = op(a, axis=1)
        for cut in (8, 16, 24 * (n // 48), n - n % 8):
            assert np.array_equal(np.concatenate([op(a[:cut], axis=1), op(a[cut:], axis=1)]),
                                  whole)


@pytest.mark.parametrize("k", [1, 2, 5, 23, 70])
def test_row_max_is_numpys_max(k):
    rng = np.random.default_rng(k)
    z = rng.normal(size=(50, k))
    z[1] = 3.0  # ties
    z[2, 0] = np.nan
    z[3, -1] = np.inf
    got = _row_max(z, np.empty(50))
    assert np.array_equal(got, z.max(axis=1), equal_nan=True)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_terms_equal_the_one_call_formulas_bit_for_bit(always_split, weighted, threads,
                                                           dtype):
    n, k = 1003, 23
    rng = np.random.default_rng(threads)
    y = rng.integers(k, size=n)
    sw = rng.uniform(0.2, 3.0, size=n) if weighted else None
    logits = rng.normal(size=(n, k)) * 4
    logits[:3], logits[3:6], logits[6, :4] = 0.0, -0.0, -0.0  # zero maxima of either sign
    logits[7] = 1e300  # every entry is the maximum
    dz = rng.normal(size=(n, k))
    with Workers(threads) as workers:
        terms = LogitRows(y, k, sw, dtype, workers)
        assert len(terms.blocks) == threads
        xw = rng.normal(size=(n, k)).astype(dtype)
        intercept = rng.normal(size=k)
        assert _same(terms.logits(xw, intercept), xw.astype(np.float64) + intercept)
        loss, prob = _reference_data(logits, y, sw)
        assert _same(terms.softmax(logits), loss) and _same(terms.prob, prob)
        out = np.empty_like(logits)
        for alpha in (1.0, 0.37, 2.5e-3):
            got = terms.trial(logits, alpha, dz, out) + (terms.trial_curvature(dz),)
            *want, prob = _reference_trial(logits, alpha, dz, y, sw)
            assert len(got) == 3 and all(_same(g, w) for g, w in zip(got, want))
            assert _same(out, logits + alpha * dz) and _same(terms.prob, prob)
        low, col_sums = terms.residual()
        want_low, want_sums = _reference_residual(prob, y, sw, dtype)
        assert _same(low, want_low) and _same(col_sums, want_sums)


def _problem(seed=0, classes=9, per=140, dim=48):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(classes, dim)) * 0.4
    y = np.repeat(np.arange(classes), per)
    spread = np.linspace(3, 0.1, dim)
    X = (means[y] + rng.normal(size=(y.size, dim)) * spread).astype(np.float32)
    yv = np.repeat(np.arange(classes), 20)
    Xv = (means[yv] + rng.normal(size=(yv.size, dim)) * spread).astype(np.float32)
    return X, y, Xv, yv


@pytest.mark.parametrize("class_weight", [None, "balanced"])
def test_the_fit_is_the_same_whatever_the_row_blocks(always_split, monkeypatch, class_weight):
    X, y, Xv, yv = _problem()
    fits = []
    for threads in (1, 2, 3):  # 3: blocks of 416, 424 and 420 rows
        monkeypatch.setattr(linear, "available_threads", lambda t=threads: t)
        probe = linear.LinearProbe(Cs=[0.01, 0.1, 1.0], class_weight=class_weight)
        fits.append(probe.fit(X, y, Xv, yv))
    for other in fits[1:]:
        assert other.C_ == fits[0].C_ and other.n_evaluations_ == fits[0].n_evaluations_
        assert np.array_equal(other.coef_, fits[0].coef_)
        assert np.array_equal(other.intercept_, fits[0].intercept_)
        assert np.array_equal(other.val_scores_, fits[0].val_scores_)


def test_one_pool_per_fit_and_no_thread_left_after_it(always_split, monkeypatch):
    pools = []

    class Counting(_products.ThreadPoolExecutor):
        def __init__(self, *args, **kwargs):
            pools.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(_products, "ThreadPoolExecutor", Counting)
    X, y, _, _ = _problem(classes=5, per=100)
    path = PreconditionedPath(X, y, 5, threads=2)
    before, created = threading.active_count(), len(pools)
    fit = path.fit(1.0, 1e-6, 1000)
    assert fit.converged and fit.n_evaluations > 5
    assert len(pools) == created + 1  # thousands of blocks handed out, one pool
    assert threading.active_count() == before


def test_the_accepted_trial_is_reused_and_another_step_recomputed(always_split):
    X, y, _, _ = _problem(classes=4, per=50, dim=8)
    path = PreconditionedPath(X, y, 4, threads=2)
    coef_t, b, rho = np.zeros((path.X.shape[1], 4)), np.zeros(4), 1e-3
    state = path._state(coef_t, b, path._logits(coef_t, b), rho)
    d_coef_t = np.ones_like(coef_t) * 0.01
    dz, dd = path._logits(d_coef_t, np.zeros(4)), float(np.sum(d_coef_t ** 2))
    line = path.line(state, dz, d_coef_t, rho)
    _, _, curvature = line(0.5)  # a rejected trial's curvature, computed on demand
    want = _reference_trial(state.logits, 0.5, dz, y, None)
    assert curvature() == want[2] / y.size + rho * dd
    f, slope, _ = line(2.0)
    want = _reference_trial(state.logits, 2.0, dz, y, None)
    assert f == want[0] / y.size + 0.5 * rho * (0.0 + 2 * 2.0 * 0.0 + 2.0 ** 2 * dd)
    assert slope == want[1] / y.size + rho * (0.0 + 2.0 * dd)
    logits, data_loss = line.landing(2.0)
    assert logits is line.logits and data_loss == want[0] / y.size
    assert _same(path.terms.prob, want[3])  # the softmax the new point's gradient uses
    logits, data_loss = line.landing(0.5)  # not the last trial: its softmax is gone
    assert data_loss is None and _same(logits, state.logits + 0.5 * dz)
