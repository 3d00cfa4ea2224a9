"""Few-shot runs scored from one Gram matrix of training rows and queries."""

from __future__ import annotations

import numpy as np
import pytest

from embedcyto.errors import ProbeError
from embedcyto.probes import run_episodes
from embedcyto.probes.episode_gram import (GATHER_COST, MIN_CHUNK, gram_plan, query_chunk,
                                           simpleshot_form)
from embedcyto.probes.episodes import run_episode_runs


def _data(n_classes=4, n_train=30, n_test=70, dim=24, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_classes, dim)) * 1.5
    y_tr = np.repeat(np.arange(n_classes), n_train)
    y_te = rng.integers(0, n_classes, size=n_test)
    X_tr = (means[y_tr] + rng.normal(size=(y_tr.size, dim)) + 6.0).astype(np.float32)
    X_te = (means[y_te] + rng.normal(size=(y_te.size, dim)) + 6.0).astype(np.float32)
    ids = np.array([f"train/{i:04d}" for i in range(y_tr.size)])
    return X_tr, y_tr, ids, X_te, y_te


def test_the_plan_takes_the_gram_path_only_where_it_saves_work():
    # HiCervix-sized: 600 episodes, 23 classes, 28,160 training rows, 1,024-d.
    plan = gram_plan([1, 2, 4, 8, 16], 600, 23, 28160, 1024)
    assert plan == [True] * 5
    many_shots = 1024 // GATHER_COST + 1  # gathers dearer than the prototypes' product
    assert gram_plan([1, 2, 4, many_shots], 600, 23, 28160, 1024) == [True] * 3 + [False]
    # One run, or too few episodes, cannot pay for the Gram matrix: every run dense.
    assert gram_plan([1], 600, 23, 28160, 1024) == [False]
    assert gram_plan([1, 2], 5, 23, 28160, 1024) == [False, False]
    assert gram_plan([4], 600, 5, 10**7, 1024) == [False]


def test_query_chunks_keep_the_gram_block_within_the_budget():
    assert query_chunk(28160, 1 << 23) * 28160 <= 1 << 23
    assert query_chunk(10**9, 1 << 23) == MIN_CHUNK  # a floor, whatever the budget


@pytest.mark.parametrize("centre", ["support", "train"])
def test_runs_scored_together_equal_each_run_alone_and_the_dense_path(centre):
    X_tr, y_tr, ids, X_te, y_te = _data()
    runs = [(1, 0), (3, 0), (5, 1)]  # scipy's gathers below 4 shots, torch's from 4
    together = run_episode_runs(X_tr, y_tr, ids, X_te, y_te, runs, 9, path="gram",
                                budget=40 * X_tr.shape[0], centre=centre)  # 40-query chunks
    for (shots, seed), got in zip(runs, together):
        alone = run_episodes(X_tr, y_tr, ids, X_te, y_te, shots, 9, seed, path="gram",
                             budget=1 << 20, centre=centre)  # one chunk
        dense = run_episodes(X_tr, y_tr, ids, X_te, y_te, shots, 9, seed, path="dense",
                             centre=centre)
        for key in ("accuracy", "balanced_accuracy", "macro_f1"):
            np.testing.assert_array_equal(got[key], alone[key])
            np.testing.assert_array_equal(got[key], dense[key])
    assert not np.array_equal(together[0]["accuracy"], together[1]["accuracy"])


def test_support_centring_is_computed_on_centred_features():
    # A large common offset (as CLIP-style embeddings have) leaves SimpleShot unchanged in
    # exact arithmetic; the Gram form removes it before any dot product.
    X_tr, y_tr, ids, X_te, y_te = _data()
    form = simpleshot_form(X_tr + 1e3, X_te + 1e3)
    assert abs(float(form.train.mean())) < 1e-2 and form.support_centred
    far = run_episodes(X_tr + 1e3, y_tr, ids, X_te + 1e3, y_te, 2, 8, 0, path="gram")
    near = run_episodes(X_tr, y_tr, ids, X_te, y_te, 2, 8, 0, path="dense")
    np.testing.assert_array_equal(far["accuracy"], near["accuracy"])


def test_the_path_is_checked_before_any_work():
    X_tr, y_tr, ids, X_te, y_te = _data()
    with pytest.raises(ProbeError, match="`path=` one of auto, gram, dense"):
        run_episodes(X_tr, y_tr, ids, X_te, y_te, 1, 2, 0, path="sparse")
    with pytest.raises(ProbeError, match="centring 'median'"):
        run_episodes(X_tr, y_tr, ids, X_te, y_te, 1, 2, 0, path="gram", centre="median")


def test_text_methods_have_no_gram_form():
    from embedcyto.probes import registry

    assert registry.get_method("simpleshot").gram and registry.get_method("protonet").gram
    assert all(m.gram is None for m in registry.probe_methods() if m.text)


def test_a_unit_s_runs_take_the_gram_path_with_the_dense_path_s_rows():
    from types import SimpleNamespace

    from embedcyto.probes.evaluate import evaluate_episode_runs, evaluate_unit

    X_tr, y_tr, ids, X_te, y_te = _data(n_classes=3, n_train=20, n_test=60, dim=256)
    assert gram_plan([1, 2], 50, 3, X_tr.shape[0], 256) == [True, True]  # the auto path's
    feats = SimpleNamespace(
        X=np.concatenate([X_tr, X_te]), labels=np.concatenate([y_tr, y_te]),
        ids=np.concatenate([ids, [f"test/{i}" for i in range(y_te.size)]]),
        splits=np.array(["train"] * y_tr.size + ["test"] * y_te.size), levels=None,
        classes=("a", "b", "c"), label_spaces={}, level_names=(), level_maps={})
    rows = evaluate_unit(feats, "simpleshot", [(1, 0), (2, 0)], 50, {})
    dense = evaluate_episode_runs(feats, "simpleshot", [(1, 0), (2, 0)], 50, {"path": "dense"})
    assert [r["episode_accuracy"] for r in rows] == [r["episode_accuracy"] for r in dense]
    assert [r["metrics"] for r in rows] == [r["metrics"] for r in dense]
    assert rows[0]["episodes"] == 50 and rows[0]["n_train"] == y_tr.size


def test_torch_and_scipy_gathers_agree():
    from scipy import sparse

    from embedcyto.probes.episode_gram import TORCH_GATHER_SHOTS, _gather_matrix

    rng = np.random.default_rng(3)
    K, rows, n_train = TORCH_GATHER_SHOTS, 40, 90
    idx = np.stack([rng.choice(n_train, K, replace=False) for _ in range(rows)]).ravel()
    w = rng.random(rows * K).astype(np.float32)
    gram = rng.normal(size=(n_train, 33)).astype(np.float32)
    got = _gather_matrix(w, idx, (rows, n_train), K) @ gram
    want = sparse.csr_matrix((w, idx, np.arange(0, rows * K + 1, K)), shape=(rows, n_train)) @ gram
    assert got.dtype == np.float32 and got.shape == (rows, 33)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_float64_features_stay_float64_on_the_gram_path():
    X_tr, y_tr, ids, X_te, y_te = _data()
    X_tr, X_te = X_tr.astype(np.float64), X_te.astype(np.float64)
    form = simpleshot_form(X_tr, X_te)
    assert form.train.dtype == np.float64 and form.test.dtype == np.float64
    for shots in (2, 5):  # scipy's and torch's gathers
        gram = run_episodes(X_tr, y_tr, ids, X_te, y_te, shots, 6, 0, path="gram")
        dense = run_episodes(X_tr, y_tr, ids, X_te, y_te, shots, 6, 0, path="dense")
        np.testing.assert_array_equal(gram["accuracy"], dense["accuracy"])
