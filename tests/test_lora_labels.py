"""Training label spaces and the study's 25-class accuracy, on HiCervix's real label CSVs."""

from __future__ import annotations

import numpy as np
import pytest

from embedcyto.datasets.hicervix_labels import (
    LEVEL_MAPS,
    STUDY25,
    hicervix_study25_labels,
    read_hicervix_labels,
)
from embedcyto.errors import LoraError
from embedcyto.lora.labels import study25_map, study25_metrics, study25_truth, training_view


@pytest.fixture(scope="module")
def hicervix():
    return read_hicervix_labels()  # the bundled CSVs: 40,229 cells, no images needed


def _test_rows(dataset):
    return np.array([i for i, r in enumerate(dataset.records) if r.split == "test"])


def test_study25_labels_from_levels_equal_the_datasets_own(hicervix):
    rows = _test_rows(hicervix)
    truth = study25_truth(hicervix, rows)
    assert np.array_equal(truth, hicervix_study25_labels(hicervix)[rows])
    assert int((truth >= 0).sum()) == 7644  # the study's test cells
    assert np.array_equal(study25_map(hicervix.level_maps, hicervix.label_spaces),
                          LEVEL_MAPS[STUDY25])


def test_study25_accuracy_of_given_predictions_matches_a_hand_count(hicervix):
    rows = _test_rows(hicervix)
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(26), size=len(rows))
    metrics = study25_metrics(hicervix, rows, proba)
    truth = hicervix_study25_labels(hicervix)[rows]
    right = 0
    for p, t in zip(proba, truth):
        if t < 0:
            continue
        totals = np.zeros(25)
        for fine, target in enumerate(LEVEL_MAPS[STUDY25]):
            if target >= 0:
                totals[target] += p[fine]
        right += int(np.argmax(totals) == t)
    assert metrics["n"] == 7644
    assert metrics["accuracy"] == pytest.approx(right / 7644)


def test_training_view_relabels_and_keeps_the_whole_test_split(hicervix):
    view = training_view(hicervix, "level_3")
    assert len(view.classes) == 23
    train = [r for r in view.records if r.split == "train"]
    assert len(train) == 28160 - 3962  # coarse-only cells (AGC, AGC-NOS, ADC) left out
    assert min(r.label for r in train) >= 0
    assert sum(r.split == "test" for r in view.records) == 8051
    # the level maps follow the new classes: each level-3 class is itself at level 3
    assert view.level_maps["level_3"] == tuple(range(23))
    assert training_view(hicervix, "classes") is hicervix
    with pytest.raises(LoraError, match="choose `label_space=` from classes, level_1"):
        training_view(hicervix, "level_9")
