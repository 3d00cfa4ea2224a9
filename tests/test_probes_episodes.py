"""Few-shot support sets and batched episode evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from embedcyto.errors import ProbeError
from embedcyto.metrics import accuracy, balanced_accuracy, hierarchical_metrics, macro_f1
from embedcyto.probes import ProtoNet, SimpleShot, run_episodes, support_ids, support_indices


def _pool(n_per_class=12, n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    ids = np.array([f"c{lab}/img_{i:03d}.png" for i, lab in enumerate(labels)])
    perm = rng.permutation(labels.size)
    return ids[perm], labels[perm]


def test_support_is_deterministic_and_balanced():
    ids, labels = _pool()
    a = support_indices(ids, labels, shots=4, seed=1, episode=7)
    b = support_indices(ids, labels, shots=4, seed=1, episode=7)
    np.testing.assert_array_equal(a, b)
    assert np.bincount(labels[a]).tolist() == [4, 4, 4]
    assert len(set(a.tolist())) == a.size  # no row twice
    others = {tuple(support_indices(ids, labels, 4, s, e)) for s, e in [(1, 8), (2, 7), (1, 9)]}
    assert tuple(a) not in others


def test_support_ids_do_not_depend_on_row_order():
    ids, labels = _pool(seed=0)
    perm = np.random.default_rng(5).permutation(ids.size)
    for episode in range(5):
        first = support_ids(ids, labels, 3, seed=2, episode=episode)
        second = support_ids(ids[perm], labels[perm], 3, seed=2, episode=episode)
        np.testing.assert_array_equal(first, second)


def test_support_changes_with_the_image_set():
    ids, labels = _pool()
    renamed = np.char.add("other/", ids)
    a = support_ids(ids, labels, 3, 1, 0)
    b = np.char.replace(support_ids(renamed, labels, 3, 1, 0), "other/", "")
    assert not np.array_equal(a, b)  # the ids' hash seeds the generator


def test_class_with_too_few_images_is_named():
    ids, labels = _pool(n_per_class=6)
    keep = (labels != 2) | (np.cumsum(labels == 2) <= 3)  # class 2 keeps 3 images
    ids, labels = ids[keep], labels[keep]
    with pytest.raises(ProbeError, match=r"class 'hsil' has 3 training images.*shots=4"):
        support_indices(ids, labels, 4, 1, 0, class_names=("nilm", "lsil", "hsil"))
    with pytest.raises(ProbeError, match="class '3' has 0"):
        support_indices(ids, labels, 1, 1, 0, n_classes=4)


def _data(seed=0, n_classes=3, dim=6, n_train=20, n_test=15, spread=1.5):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_classes, dim)) * 2
    y_tr = np.repeat(np.arange(n_classes), n_train)
    y_te = np.repeat(np.arange(n_classes), n_test)
    X_tr = (means[y_tr] + spread * rng.normal(size=(y_tr.size, dim))).astype(np.float32)
    X_te = (means[y_te] + spread * rng.normal(size=(y_te.size, dim))).astype(np.float32)
    ids_tr = np.array([f"train/{i:04d}" for i in range(y_tr.size)])
    return X_tr, y_tr, ids_tr, X_te, y_te


@pytest.mark.parametrize("path", ["dense", "gram"])
@pytest.mark.parametrize("method,estimator,options", [
    ("simpleshot", SimpleShot, {"centre": "support"}),
    ("simpleshot", SimpleShot, {"centre": "train"}),
    ("simpleshot", SimpleShot, {}),  # the default: support-mean centring
    ("protonet", ProtoNet, {})])
def test_batched_episodes_equal_one_estimator_per_episode(method, estimator, options, path):
    X_tr, y_tr, ids_tr, X_te, y_te = _data()
    X_tr, X_te = X_tr + 4.0, X_te + 4.0  # a common offset, as CLIP-style embeddings have
    out = run_episodes(X_tr, y_tr, ids_tr, X_te, y_te, shots=2, n_episodes=12, seed=3,
                       method=method, budget=200, path=path, **options)  # several batches
    for e in range(12):
        idx = support_indices(ids_tr, y_tr, 2, 3, e)
        est = estimator()
        fit_kwargs = {"X_unlabelled": X_tr} if options.get("centre") == "train" else {}
        pred = est.fit(X_tr[idx], y_tr[idx], **fit_kwargs).predict(X_te)
        assert out["accuracy"][e] == pytest.approx(accuracy(y_te, pred))
        assert out["balanced_accuracy"][e] == pytest.approx(balanced_accuracy(y_te, pred, 3))
        assert out["macro_f1"][e] == pytest.approx(macro_f1(y_te, pred, 3))


def test_support_and_train_centring_differ():
    X_tr, y_tr, ids_tr, X_te, y_te = _data(spread=3.0)
    X_tr, X_te = X_tr + 5.0, X_te + 5.0  # a common offset: where the centre lies matters
    support = run_episodes(X_tr, y_tr, ids_tr, X_te, y_te, 1, 30, 1, centre="support")
    train = run_episodes(X_tr, y_tr, ids_tr, X_te, y_te, 1, 30, 1, centre="train")
    assert not np.array_equal(support["accuracy"], train["accuracy"])
    with pytest.raises(ProbeError, match="centring 'median'"):
        run_episodes(X_tr, y_tr, ids_tr, X_te, y_te, 1, 3, 1, centre="median")


def test_supports_never_among_queries():
    X_tr, y_tr, ids_tr, X_te, y_te = _data()
    ids_te = np.array([f"test/{i:04d}" for i in range(y_te.size)])
    out = run_episodes(X_tr, y_tr, ids_tr, X_te, y_te, 2, 4, 1, ids_test=ids_te)
    assert out["accuracy"].shape == (4,)
    for e in range(4):
        assert not set(support_ids(ids_tr, y_tr, 2, 1, e)) & set(ids_te)
    with pytest.raises(ProbeError, match="share images"):
        run_episodes(X_tr, y_tr, ids_tr, X_te, y_te, 2, 4, 1, ids_test=ids_tr[:y_te.size])


@pytest.mark.parametrize("path", ["dense", "gram"])
def test_episode_levels_match_the_hierarchical_metrics(path):
    X_tr, y_tr, ids_tr, X_te, y_te = _data(n_classes=4)
    level_maps = {"l1": (0, 0, 1, 1), "l2": (0, 1, 2, -1)}
    levels = np.stack([np.array(level_maps["l1"])[y_te], np.array(level_maps["l2"])[y_te]], 1)
    out = run_episodes(X_tr, y_tr, ids_tr, X_te, y_te, 3, 5, 2, levels_test=levels,
                       level_maps=level_maps, level_names=("l1", "l2"), path=path, budget=300)
    for e in range(5):
        idx = support_indices(ids_tr, y_tr, 3, 2, e)
        proba = SimpleShot().fit(X_tr[idx], y_tr[idx]).predict_proba(X_te)  # support centring
        ref = hierarchical_metrics(proba, levels, level_maps, ("l1", "l2"))
        assert out["levels"]["l1"]["accuracy"][e] == pytest.approx(ref["l1"]["accuracy"])
        assert out["levels"]["l2"]["accuracy"][e] == pytest.approx(ref["l2"]["accuracy"])
        assert out["level_average"][e] == pytest.approx(ref["average"])


def test_random_features_score_chance_within_the_interval():
    from embedcyto.metrics import mean_ci

    rng = np.random.default_rng(0)
    X_tr, X_te = rng.normal(size=(300, 16)), rng.normal(size=(400, 16))
    y_tr, y_te = rng.integers(0, 4, 300), rng.integers(0, 4, 400)
    ids = np.array([str(i) for i in range(300)])
    out = run_episodes(X_tr.astype(np.float32), y_tr, ids, X_te.astype(np.float32), y_te,
                       shots=5, n_episodes=200, seed=1)
    mean, half = mean_ci(out["accuracy"])
    chance = np.bincount(y_te).max() / y_te.size  # any constant guess does at most this well
    assert abs(mean - 0.25) < max(3 * half, 0.02) and mean < chance + 0.02


@pytest.mark.parametrize("path", ["dense", "gram"])
def test_threaded_batches_give_the_one_core_numbers(monkeypatch, path):
    """Two cores: batches are scored two at a time; same batches, same calls, so the very same
    numbers, in order (several batches, with levels)."""
    from embedcyto.probes import episodes

    X_tr, y_tr, ids_tr, X_te, y_te = _data(spread=2.5)
    levels = np.stack([np.minimum(y_te, 1), y_te], axis=1)
    kwargs = dict(shots=2, n_episodes=25, seed=4, budget=200, levels_test=levels, path=path,
                  level_maps={"coarse": (0, 1, 1), "fine": (0, 1, 2)},
                  level_names=("coarse", "fine"))
    runs = {}
    for threads in (1, 2):
        monkeypatch.setattr(episodes, "available_threads", lambda t=threads: t)
        runs[threads] = run_episodes(X_tr, y_tr, ids_tr, X_te, y_te, **kwargs)
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "level_average"):
        assert np.array_equal(runs[1][key], runs[2][key])
    assert np.array_equal(runs[1]["levels"]["fine"]["accuracy"],
                          runs[2]["levels"]["fine"]["accuracy"])
    assert len(np.unique(runs[1]["accuracy"])) > 1  # episodes differ: order is checked too
