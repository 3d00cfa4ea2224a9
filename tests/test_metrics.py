"""Metric functions against hand-computed values, scikit-learn, and HiCervix's official subsets."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from embedcyto.errors import ProbeError
from embedcyto.metrics import (HIERSWIN, accuracy, auroc, balanced_accuracy, batch_confusion,
                               classification_metrics, coarse_proba, hierarchical_metrics,
                               level_predictions, macro_f1, mean_ci, mean_std,
                               metrics_from_confusion, per_class_recall)


def test_hand_computed_values():
    y = np.array([0, 0, 0, 1, 1, 2])
    p = np.array([0, 0, 1, 1, 0, 2])
    assert accuracy(y, p) == pytest.approx(4 / 6)
    np.testing.assert_allclose(per_class_recall(y, p, 4), [2 / 3, 1 / 2, 1.0, np.nan])
    assert balanced_accuracy(y, p, 4) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # F1: class 0: p=2/3 r=2/3 ; class 1: p=1/2 r=1/2 ; class 2: 1 ; class 3 absent -> left out
    assert macro_f1(y, p, 4) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


def test_agree_with_scikit_learn_on_random_labels():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    assert balanced_accuracy(y, p) == pytest.approx(skm.balanced_accuracy_score(y, p))
    assert macro_f1(y, p) == pytest.approx(skm.f1_score(y, p, average="macro"))
    proba = rng.dirichlet(np.ones(5), 300)
    assert auroc(y, proba) == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr"))
    binary = rng.dirichlet(np.ones(2), 300)
    yb = rng.integers(0, 2, 300)
    assert auroc(yb, binary) == pytest.approx(skm.roc_auc_score(yb, binary[:, 1]))


def test_auroc_skips_absent_classes_and_handles_ties():
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.6, 0.4, 0.0], [0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.2, 0.8, 0.0]])
    # class 2 has no positive: skipped; classes 0 and 1 each 0.875 (one tie counted 1/2)
    assert auroc(y, proba) == pytest.approx(0.875)
    assert np.isnan(auroc(np.zeros(4, int), proba))


def test_batched_confusion_metrics_equal_scalar_ones():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 50)
    preds = rng.integers(0, 4, (7, 50))
    out = metrics_from_confusion(batch_confusion(y, preds, 5))
    for e in range(7):
        assert out["accuracy"][e] == pytest.approx(accuracy(y, preds[e]))
        assert out["balanced_accuracy"][e] == pytest.approx(balanced_accuracy(y, preds[e], 5))
        assert out["macro_f1"][e] == pytest.approx(macro_f1(y, preds[e], 5))


def test_intervals():
    mean, half = mean_ci([0.5, 0.7, 0.6, 0.8])
    assert mean == pytest.approx(0.65)
    assert half == pytest.approx(3.182446 * np.std([0.5, 0.7, 0.6, 0.8], ddof=1) / 2, rel=1e-5)
    assert mean_std([0.7, 0.7, 0.7]) == (pytest.approx(0.7), 0.0)
    assert mean_std([1.0, 3.0])[1] == pytest.approx(np.sqrt(2))
    with pytest.raises(ProbeError):
        mean_ci([])


def test_bad_input_is_refused():
    with pytest.raises(ProbeError, match="differ in length"):
        accuracy([0, 1], [0])
    with pytest.raises(ProbeError, match="integer labels"):
        accuracy([0.5, 1.0], [0, 1])
    with pytest.raises(ProbeError, match="outside"):
        balanced_accuracy([0, 5], [0, 1], n_classes=3)


# A 4-class toy tree: fine classes a1, a2 (under A), b (under B), and "A" itself (coarse only).
LEVEL_MAPS = {"top": (0, 0, 1, 0), "fine": (0, 1, 2, -1)}


def test_coarse_proba_sums_up_the_tree_and_drops_coarser_classes():
    fine = np.array([[0.1, 0.2, 0.3, 0.4]])
    np.testing.assert_allclose(coarse_proba(fine, LEVEL_MAPS["top"], 2), [[0.7, 0.3]])
    np.testing.assert_allclose(coarse_proba(fine, LEVEL_MAPS["fine"], 3), [[0.1, 0.2, 0.3]])
    # b wins at the fine level, A wins once a1, a2 and "A" are summed.
    assert level_predictions(fine, LEVEL_MAPS["top"], 2)[0] == 0
    assert level_predictions(fine, LEVEL_MAPS["fine"], 3)[0] == 2


def test_hierarchical_metrics_uses_each_levels_own_rows():
    fine = np.array([[0.1, 0.2, 0.3, 0.4], [0.9, 0.0, 0.1, 0.0], [0.0, 0.1, 0.8, 0.1]])
    levels = np.array([[0, -1], [0, 0], [1, 2]])  # row 0 is labelled only "A"
    out = hierarchical_metrics(fine, levels, LEVEL_MAPS, ("top", "fine"))
    assert out["top"]["n"] == 3 and out["top"]["accuracy"] == 1.0
    assert out["fine"]["n"] == 2 and out["fine"]["accuracy"] == 1.0
    assert out["average"] == 1.0
    out = hierarchical_metrics(fine[[1, 2]], np.array([[0, 1], [1, 2]]), LEVEL_MAPS, ("top", "fine"))
    assert out["fine"]["accuracy"] == 0.5 and out["average"] == pytest.approx(0.75)


def _hicervix_csv() -> Path | None:
    for base in (Path(__file__).resolve().parents[1] / "embedcyto/datasets/data/hicervix",
                 Path("/work/shared/data/hicervix")):
        if (base / "test.csv").is_file():
            return base / "test.csv"
    return None


def _levels_from_csv(path: Path):
    """Level labels by the documented rules, computed here independently of the adapter."""
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    fine = sorted({r["class_name"] for r in rows})
    level_1 = sorted({r["level_1"] for r in rows})
    level_2 = sorted({r["level_2"] for r in rows} - {""})
    parents_with_children = {r["level_2"] for r in rows if r["level_3"]}
    level_3 = sorted(({r["level_3"] for r in rows} - {""})
                     | (set(level_2) - parents_with_children))

    def l3(r):
        if r["level_3"]:
            return r["level_3"]
        if r["level_2"] and r["level_2"] not in parents_with_children:
            return r["level_2"]
        return ""

    spaces = {"level_1": level_1, "level_2": level_2, "level_3": level_3}
    getters = {"level_1": lambda r: r["level_1"], "level_2": lambda r: r["level_2"],
               "level_3": l3}
    maps, labels = {}, np.full((len(rows), 3), -1)
    for j, (name, get) in enumerate(getters.items()):
        by_class = {r["class_name"]: get(r) for r in rows}
        maps[name] = tuple(spaces[name].index(by_class[c]) if by_class[c] else -1 for c in fine)
        for i, r in enumerate(rows):
            labels[i, j] = spaces[name].index(get(r)) if get(r) else -1
    y = np.array([fine.index(r["class_name"]) for r in rows])
    return y, labels, maps, spaces


@pytest.mark.skipif(_hicervix_csv() is None, reason="HiCervix test.csv not available")
def test_hicervix_official_subsets_on_the_real_test_csv():
    y, labels, maps, spaces = _levels_from_csv(_hicervix_csv())
    assert [len(spaces[k]) for k in ("level_1", "level_2", "level_3")] == [4, 21, 23]
    assert (labels >= 0).sum(axis=0).tolist() == [8051, 7644, 6946]
    # A perfect fine-level prediction scores 100 % on every level's official subset.
    perfect = np.eye(26)[y]
    out = hierarchical_metrics(perfect, labels, maps, ("level_1", "level_2", "level_3"))
    assert [out[k]["n"] for k in ("level_1", "level_2", "level_3")] == [8051, 7644, 6946]
    assert out["average"] == 1.0
    # Predicting the sibling AGC-EMC-NOS for every AGC-ECC-NOS cell is right at levels 1 and 2
    # and wrong at level 3 for exactly those cells.
    fine = sorted({r["class_name"] for r in csv.DictReader(_hicervix_csv().open())})
    ecc, emc = fine.index("AGC-ECC-NOS"), fine.index("AGC-EMC-NOS")
    swapped = np.eye(26)[np.where(y == ecc, emc, y)]
    out = hierarchical_metrics(swapped, labels, maps, ("level_1", "level_2", "level_3"))
    assert out["level_1"]["accuracy"] == 1.0 and out["level_2"]["accuracy"] == 1.0
    assert out["level_3"]["accuracy"] == pytest.approx(1 - np.sum(y == ecc) / 6946)
    assert set(HIERSWIN) == {"level_1", "level_2", "level_3", "average"}


def test_classification_metrics_dict():
    out = classification_metrics([0, 1, 1], [0, 1, 0], np.array([[.9, .1], [.2, .8], [.6, .4]]))
    assert out["n"] == 3 and out["accuracy"] == pytest.approx(2 / 3)
    assert out["per_class_recall"] == [1.0, 0.5] and out["auroc"] == pytest.approx(1.0)
