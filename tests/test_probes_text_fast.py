"""The batched text-aware episode scorers equal a plain one-episode-at-a-time reference.

The scorers are optimised (chunks of episodes sized for the cache, in-place updates, test rows
scored per episode from one shared test x train product, the Tip-Adapter grid reusing one
affinity matrix); ``text_reference.reference_scores`` is the arithmetic as first written, run
on each episode alone. Same logits up to float rounding, same predictions, same chosen β, α.
"""

from __future__ import annotations

import numpy as np
import pytest
from text_reference import reference_scores

from embedcyto.probes import text_episodes
from embedcyto.probes.text_episodes import text_scorer

C, D = 6, 40


def _data(dtype, seed=0, noise=1.2):
    rng = np.random.default_rng(seed)
    T = rng.standard_normal((C, D))
    T /= np.linalg.norm(T, axis=1, keepdims=True)

    def make(n):
        y = rng.permutation(np.arange(n) % C)
        X = T[y] + noise * rng.standard_normal((n, D)) / np.sqrt(D) + 0.3
        return X.astype(dtype), y
    return (T + 0.2 * rng.standard_normal((C, D))).astype(dtype), make(90), make(48), make(250)


def _episodes(y, K, E, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([np.stack([rng.choice(np.flatnonzero(y == c), K, replace=False)
                               for c in range(C)]) for _ in range(E)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method", ["textlinear", "clap", "lppp", "tipadapter",
                                    "tipadapter_f"])
def test_fast_scorer_equals_the_per_episode_reference(method, dtype, monkeypatch):
    # small budgets force several chunks of episodes through the training loops, several
    # groups of episodes and blocks of test rows through the test-row scoring
    monkeypatch.setattr(text_episodes, "CACHE_BYTES", 3 * (C * 4) ** 2 * 8)
    T, (X, y), (Xv, yv), (Xt, yt) = _data(dtype)
    monkeypatch.setattr(text_episodes, "EVAL_FLOATS", 2 * C * 4 * len(yt))
    monkeypatch.setattr(text_episodes, "BLOCK_BYTES", 1)  # test rows by blocks of 64
    idx = _episodes(y, 4, 7)
    got, want = [], []
    fast = text_scorer(method, X, Xt, text=T, logit_scale=60.0, X_val=Xv, y_val=yv,
                       steps=40, chosen=got, threads=2)(idx)
    ref = reference_scores(method, X, Xt, T, 60.0, idx, Xv, yv, steps=40, chosen=want)
    assert fast.shape == ref.shape == (len(yt), 7, C) and fast.dtype == dtype
    tol = 2e-4 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(fast, ref, rtol=tol, atol=tol * 60)
    assert (fast.argmin(axis=2) == ref.argmin(axis=2)).all()
    assert got == want  # Tip-Adapter's (β, α, val accuracy) per episode; [] for the others
    assert 0.3 < (fast.argmin(axis=2) == yt[:, None]).mean()  # the methods do learn here


def test_fast_scorer_does_not_depend_on_batches_chunks_or_threads(monkeypatch):
    T, (X, y), (Xv, yv), (Xt, _) = _data(np.float32, seed=2)
    idx = _episodes(y, 3, 6, seed=1)
    for method in ("clap", "tipadapter_f", "lppp"):
        def scorer(threads):
            return text_scorer(method, X, Xt, text=T, logit_scale=60.0, X_val=Xv, y_val=yv,
                               steps=30, threads=threads)
        whole = scorer(1)(idx)
        monkeypatch.setattr(text_episodes, "CACHE_BYTES", 1)  # one episode per chunk
        score = scorer(3)
        parts = np.concatenate([score(idx[:1]), score(idx[1:4]), score(idx[4:])], axis=1)
        monkeypatch.undo()
        np.testing.assert_array_equal(whole, parts)


def test_episode_threads_follow_the_blas_limit():
    from threadpoolctl import threadpool_limits

    from embedcyto.probes._products import available_threads

    with threadpool_limits(1, user_api="blas"):
        assert available_threads() == 1
    with threadpool_limits(2, user_api="blas"):
        assert available_threads() == 2


def test_tip_search_equals_the_reference_with_and_without_the_cap():
    import text_reference

    from embedcyto.probes import textcore as tc
    from embedcyto.probes.textprobes import TIP_ALPHAS, TIP_BETAS

    rng = np.random.default_rng(4)
    large = (12 * rng.standard_normal((3, 12, 12))).astype(np.float32)
    assert (-max(TIP_BETAS) * (1 - large)).max() > 60  # the cap acts on these
    Vt = rng.standard_normal((3, 12, 4)).astype(np.float32)
    L = np.repeat(np.eye(4, dtype=np.float32), 3, axis=0)[None].repeat(3, axis=0)
    yv = rng.integers(0, 4, (3, 12))
    for Av in (large, np.clip(large, -1, 1)):
        got = tc.tip_search(Av, Vt, yv, L, 50.0, TIP_BETAS, TIP_ALPHAS)
        want = text_reference.tip_search(Av, Vt, yv, L, 50.0, TIP_BETAS, TIP_ALPHAS)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
