"""The linear probe's data products split over threads give the one-call result bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from embedcyto.probes import _products, linear
from embedcyto.probes._products import BlockProducts


@pytest.fixture
def always_split(monkeypatch):
    monkeypatch.setattr(_products, "MIN_WORK", 0)


@pytest.mark.parametrize("shape", [(3000, 256, 23), (1203, 1024, 23), (9000, 96, 7), (37, 300, 4),
                                   (2835, 1024, 5)])
@pytest.mark.parametrize("threads", [2, 3, 8])
def test_split_products_equal_one_call_bit_for_bit(always_split, shape, threads):
    n, d, k = shape
    rng = np.random.default_rng(n + threads)
    X = rng.normal(size=(n, d)).astype(np.float32)
    W = rng.normal(size=(d, k)).astype(np.float32)
    R = rng.normal(size=(n, k)).astype(np.float32)
    products = BlockProducts(X, threads)
    with threadpool_limits(1, user_api="blas"):
        assert np.array_equal(products.xw(W), X @ W)
        assert np.array_equal(products.rtx(R), R.T @ X)
        square = rng.normal(size=(d, d)).astype(np.float32)
        assert np.array_equal(products.xw(square), X @ square)


def test_small_products_stay_one_call(monkeypatch):
    calls = []
    monkeypatch.setattr(BlockProducts, "_run", staticmethod(lambda jobs: calls.append(
        len(jobs)) or [job() for job in jobs]))
    X = np.ones((100, 10), np.float32)
    BlockProducts(X, 4).xw(np.ones((10, 3), np.float32))
    assert calls == [1]


def test_a_running_pool_splits_smaller_products():
    X = np.ones((2835, 1024), np.float32)  # SIPaKMeD-sized: 14.5 M multiply-adds at 5 classes
    products = BlockProducts(X, 2)
    work = X.size * 5
    assert len(products._blocks(X.shape[0], work)) == 1  # a pool per call would cost more
    with products.workers:
        assert len(products._blocks(X.shape[0], work)) == 2
        assert len(products._blocks(X.shape[0], 2 * _products.MIN_BLOCK - 1)) == 1
    assert len(products._blocks(X.shape[0], work)) == 1


def test_the_probe_is_the_same_whatever_the_thread_count(always_split, monkeypatch):
    # Big enough that both products are cut into blocks (MIN_BLOCK multiply-adds each).
    rng = np.random.default_rng(0)
    means = rng.normal(size=(12, 256)) * 0.3
    y = np.repeat(np.arange(12), 250)
    spread = np.linspace(3, 0.1, 256)
    X = (means[y] + rng.normal(size=(y.size, 256)) * spread).astype(np.float32)
    yv = np.repeat(np.arange(12), 30)
    Xv = (means[yv] + rng.normal(size=(yv.size, 256)) * spread).astype(np.float32)
    assert len(BlockProducts(X, 2)._blocks(X.shape[0], X.size * 12)) == 2
    fits = []
    for threads in (1, 2, 5):
        monkeypatch.setattr(linear, "available_threads", lambda t=threads: t)
        probe = linear.LinearProbe(Cs=[0.01, 0.1, 1.0]).fit(X, y, Xv, yv)
        fits.append((probe.C_, probe.coef_, probe.intercept_, probe.n_evaluations_))
    for other in fits[1:]:
        assert other[0] == fits[0][0] and other[3] == fits[0][3]
        assert np.array_equal(other[1], fits[0][1]) and np.array_equal(other[2], fits[0][2])
