"""The probes' fast numerical kernels give the results of their plain reference versions."""

from __future__ import annotations

import numpy as np
import pytest

from embedcyto.metrics import batch_confusion, coarse_proba, metrics_from_confusion
from embedcyto.probes._sk import softmax
from embedcyto.probes._planes import score_batch
from embedcyto.probes.knn import _top_k, _top_k_exact, neighbours


def _argpartition_top_k(s, k):
    """The selection before torch.topk: argpartition, then a stable sort of the k kept."""
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    top_sim = np.take_along_axis(s, top, axis=1)
    order = np.argsort(-top_sim, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(top_sim, order, axis=1)


def test_top_k_equals_the_argpartition_selection_without_ties():
    s = np.random.default_rng(0).normal(size=(300, 2000)).astype(np.float32)
    for k in (1, 5, 51):
        idx, val = _top_k(s, k)
        ref_idx, ref_val = _argpartition_top_k(s, k)
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_array_equal(val, ref_val)


@pytest.mark.parametrize("levels", [2, 5])
def test_top_k_orders_ties_by_bank_row_even_across_the_cut(levels):
    # Few distinct values: most rows have ties inside the top k and at the k-th place.
    s = np.random.default_rng(1).integers(0, levels, size=(200, 300)).astype(np.float32)
    for k in (1, 3, 10, 50):
        idx, val = _top_k(s, k)
        ref_idx, ref_val = _top_k_exact(s, k)
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_array_equal(val, ref_val)
        lexsorted = np.lexsort((np.arange(300)[None].repeat(200, 0), -s), axis=1)[:, :k]
        np.testing.assert_array_equal(idx, lexsorted)


def test_neighbours_with_duplicate_training_rows_is_deterministic_and_chunk_free():
    rng = np.random.default_rng(2)
    bank = rng.normal(size=(40, 8)).astype(np.float32)
    bank = np.concatenate([bank, bank[:10]])  # duplicates: exactly tied similarities
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    queries = bank[rng.integers(0, 50, size=30)]
    a_idx, a_sim = neighbours(queries, bank, 7, chunk_size=4)
    b_idx, b_sim = neighbours(queries, bank, 7, chunk_size=1000)
    np.testing.assert_array_equal(a_idx, b_idx)
    np.testing.assert_array_equal(a_sim, b_sim)
    ref_idx, _ = _top_k_exact(queries @ bank.T, 7)
    np.testing.assert_array_equal(a_idx, ref_idx)
    assert all(a_idx[i, 0] <= a_idx[i, 1] for i in range(30) if a_sim[i, 0] == a_sim[i, 1])


def test_top_k_of_the_whole_bank_is_a_full_sort():
    s = np.random.default_rng(3).normal(size=(5, 6))
    idx, val = _top_k(s, 6)
    np.testing.assert_array_equal(idx, np.argsort(-s, axis=1, kind="stable"))


def _reference_batch(d2_nec, y, k, levels, temperature):
    """The episode scoring before the kernel: (E, n, C) views, softmax, coarse_proba."""
    d2 = d2_nec.transpose(1, 0, 2)
    part = metrics_from_confusion(batch_confusion(y, d2.argmin(axis=2), k))
    proba = softmax(-d2 / temperature, axis=2)
    for name, m, kl, rows, truth in levels:
        pred = coarse_proba(proba[:, rows], m, kl).argmax(axis=2)
        for key, val in metrics_from_confusion(batch_confusion(truth, pred, kl)).items():
            part[f"{name}/{key}"] = val
    return part


def test_score_batch_equals_the_softmax_and_level_sums():
    rng = np.random.default_rng(4)
    n, e, k = 120, 7, 6
    d2 = rng.uniform(0, 4, size=(n, e, k)).astype(np.float32)
    y = rng.integers(0, k, size=n)
    maps = {"l1": np.array([0, 0, 1, 1, 1, 2]), "l2": np.array([0, 1, 2, -1, 3, 3])}
    levels = []
    for name, m in maps.items():
        truth_all = np.where(m[y] >= 0, m[y], -1)
        rows = np.flatnonzero(truth_all >= 0)
        levels.append((name, m, int(m.max()) + 1, rows, truth_all[rows]))
    got = score_batch(d2, y, k, levels, 0.1)
    want = _reference_batch(d2, y, k, levels, 0.1)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-12)


@pytest.mark.parametrize("layout", ["planes", "contiguous"])
def test_score_batch_breaks_ties_like_argmin_and_argmax(layout):
    # Few distinct distances: most rows tie between classes, for the fine classes and in the
    # level sums; the class-plane reductions must pick the first index, as argmin/argmax do.
    from embedcyto.probes._planes import plane_argmin as _plane_argmin

    rng = np.random.default_rng(5)
    n, e, k = 300, 5, 7
    planes = rng.integers(0, 3, size=(e, k, n)).astype(np.float32)
    d2 = planes.transpose(2, 0, 1)  # the (n, E, C) view the built-in scorers return
    if layout == "contiguous":
        d2 = np.ascontiguousarray(d2)
    low, arg = _plane_argmin(planes)
    np.testing.assert_array_equal(arg, planes.argmin(axis=1))
    np.testing.assert_array_equal(low, planes.min(axis=1))
    y = rng.integers(0, k, size=n)
    m = np.array([0, 0, 1, 1, 2, 2, 2])
    levels = [("l1", m, 3, np.arange(n), m[y])]
    got = score_batch(d2, y, k, levels, 0.5)
    want = _reference_batch(np.ascontiguousarray(d2), y, k, levels, 0.5)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-12)


def test_knn_blocks_stay_within_the_float_budget(monkeypatch):
    import embedcyto.probes.knn as knn

    rng = np.random.default_rng(6)
    bank = rng.normal(size=(500, 16)).astype(np.float32)
    queries = rng.normal(size=(64, 16)).astype(np.float32)
    want = neighbours(queries, bank, 9)
    shapes = []
    top_k = knn._top_k
    monkeypatch.setattr(knn, "_top_k", lambda s, k: (shapes.append(s.shape), top_k(s, k))[1])
    monkeypatch.setattr(knn, "BLOCK_FLOATS", 5 * 500)
    got = knn.neighbours(queries, bank, 9)
    assert max(rows * cols for rows, cols in shapes) <= 5 * 500 and len(shapes) == 13
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_one_thread_section_limits_torch_too_and_restores_it():
    import torch

    from embedcyto.probes._multinomial import single_blas_thread

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with single_blas_thread():
            with single_blas_thread():
                assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_linear_probe_counts_its_loss_evaluations():
    from embedcyto.probes import LinearProbe

    rng = np.random.default_rng(6)
    X = rng.normal(size=(90, 5)).astype(np.float32)
    y = np.arange(90) % 3
    X[np.arange(90), y] += 1.5
    probe = LinearProbe(Cs=[0.1, 1.0]).fit(X[:60], y[:60], X[60:], y[60:])
    assert probe.n_evaluations_ >= probe.n_iter_ > 0


@pytest.mark.parametrize("weighting", ["majority", "distance"])
def test_vote_scores_equal_the_running_sum_of_one_hot_votes(weighting):
    from embedcyto.probes.knn import vote_scores

    rng = np.random.default_rng(7)
    labels = rng.integers(0, 4, size=(50, 20))
    sim = np.sort(rng.uniform(-1, 1, size=(50, 20)).astype(np.float32), axis=1)[:, ::-1]
    w = np.ones(sim.shape) if weighting == "majority" else np.exp((sim.astype(float) - 1) / 0.07)
    onehot = np.zeros(labels.shape + (4,))
    np.put_along_axis(onehot, labels[..., None], w[..., None], axis=2)
    running = np.cumsum(onehot, axis=1)  # the one-hot version, bit for bit
    got = vote_scores(labels, sim, [1, 3, 20, 50], 4, weighting, 0.07)
    for i, k in enumerate([1, 3, 20, 50]):
        np.testing.assert_array_equal(got[i], running[:, min(k, 20) - 1])


def test_level_sums_add_each_level_class_s_fine_planes_and_drop_unmapped_ones():
    from embedcyto.probes._planes import _group_plane, _level_parts

    e = np.random.default_rng(8).uniform(size=(3, 5, 40)).astype(np.float32)
    level_map = np.array([1, -1, 0, 1, 0])
    lone, groups = _level_parts(level_map, 2)
    assert lone == () and groups == [(0, [2, 4]), (1, [0, 3])]  # class 1 (-1) in none
    sums = np.stack([_group_plane(e, fine, (3, 40)) for _, fine in groups], axis=1)
    np.testing.assert_array_equal(sums[:, 0], e[:, 2] + e[:, 4])
    np.testing.assert_array_equal(sums[:, 1], e[:, 0] + e[:, 3])
    want = coarse_proba(np.moveaxis(e, 1, 2), level_map, 2)
    np.testing.assert_allclose(np.moveaxis(sums, 1, 2), want, rtol=1e-6)
    # Level classes of one fine class are the lone classes, scored apart from the sums.
    assert _level_parts(np.array([1, -1, 0, 2, 0]), 3) == ((0, 3), [(0, [2, 4])])


def test_neighbour_blocks_searched_in_threads_give_the_one_thread_lists():
    rng = np.random.default_rng(9)
    bank = rng.normal(size=(300, 16)).astype(np.float32)
    bank = np.concatenate([bank, bank[:40]])  # exact ties too
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    queries = np.concatenate([bank[:25], rng.normal(size=(50, 16)).astype(np.float32)])
    one = neighbours(queries, bank, 11, chunk_size=8, threads=1)  # ten blocks
    for threads in (2, 3):
        got = neighbours(queries, bank, 11, chunk_size=8, threads=threads)
        np.testing.assert_array_equal(got[0], one[0])
        np.testing.assert_array_equal(got[1], one[1])
    ref_idx, _ = _top_k_exact(queries @ bank.T, 11)
    np.testing.assert_array_equal(one[0], ref_idx)


@pytest.mark.parametrize("maps", [
    # HiCervix's shape: the finer level's lone classes contain the coarser level's (one pass)
    {"l1": [0, 0, 1, 1, 1, 2, 2, 2], "l2": [0, 1, 2, 3, 3, -1, 4, 5],
     "l3": [0, 1, 2, 3, 4, -1, 5, 6]},
    # lone classes that do not nest: each level gets its own pass
    {"a": [0, 1, 1, 2, 3, 3, 4, 5], "b": [0, 0, 1, 2, 3, 4, 4, 5]}])
@pytest.mark.parametrize("ties", [False, True])
def test_level_predictions_from_the_nearest_lone_class_equal_the_softmax_sums(maps, ties):
    rng = np.random.default_rng(11)
    n, e, k = 400, 6, 8
    d2 = (rng.integers(0, 3, size=(n, e, k)) if ties else rng.uniform(0, 4, size=(n, e, k)))
    d2 = d2.astype(np.float32)
    y = rng.integers(0, k, size=n)
    levels = []
    for name, m in maps.items():
        m = np.array(m)
        truth_all = np.where(m[y] >= 0, m[y], -1)
        rows = np.flatnonzero(truth_all >= 0)
        levels.append((name, m, int(m.max()) + 1, rows, truth_all[rows]))
    got = score_batch(d2, y, k, levels, 0.5)
    if not ties:  # the float64 softmax reference
        want = _reference_batch(d2, y, k, levels, 0.5)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-12)
        return
    # Tied distances: the reference is the rule itself, every level class's plane of float32
    # exp values summed in fine order, first index among the maxima (the float64 softmax
    # breaks some float32 sum ties differently).
    from embedcyto.metrics import batch_confusion

    planes = np.ascontiguousarray(np.moveaxis(d2, 0, 2))
    low = planes.min(axis=1)
    ex = np.exp((low[:, None, :] - planes) / np.float32(0.5))
    for name, m, kl, rows, truth in levels:
        stacked = np.zeros((e, kl, n), dtype=np.float32)
        for c, j in enumerate(m):  # each level class's planes added in fine order from zero
            if j >= 0:
                stacked[:, j] += ex[:, c]
        want = metrics_from_confusion(batch_confusion(truth, stacked.argmax(axis=1)[:, rows], kl))
        for key, val in want.items():
            np.testing.assert_allclose(got[f"{name}/{key}"], val, rtol=0, atol=1e-12)
