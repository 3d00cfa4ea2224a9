"""The study's flat 25-class HiCervix accuracy on probe rows, from the same predictions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from embedcyto import study25
from embedcyto.datasets.hicervix_labels import (LEVEL_MAPS, STUDY25, hicervix_study25_labels,
                                                read_hicervix_labels)
from embedcyto.predictions import read_predictions
from embedcyto.probes.runner import ProbeGridConfig, run_probe_grid
from embedcyto.report.records import probe_record
from embedcyto.store import open_writer, store_path


@pytest.fixture(scope="module")
def small_hicervix():
    """HiCervix's real labels, at most 12 cells per (class, split), so probes run in a blink."""
    full = read_hicervix_labels()
    seen: dict[tuple, int] = {}
    keep = []
    for record in full.records:
        key = (record.label, record.split)
        if seen.get(key, 0) < 12:
            seen[key] = seen.get(key, 0) + 1
            keep.append(record)
    return dataclasses.replace(full, records=keep)


def _write(store_dir, dataset, noise):
    rng = np.random.default_rng(0)
    labels = np.array([r.label for r in dataset.records])
    means = np.random.default_rng(1).normal(size=(len(dataset.classes), 32)) * 2
    feats = (means[labels] + noise * rng.normal(size=(labels.size, 32))).astype(np.float32)
    with open_writer(store_path(store_dir, dataset.name, "alpha"), dataset=dataset,
                     provenance={"model": "alpha"}, embed_dim=32) as writer:
        rows = writer.pending_rows()
        writer.write(rows, feats[rows])
        writer.commit()


def _hand_count(dataset, pred) -> tuple[int, int]:
    """Right and counted test cells, by summing each row's probabilities into the 25 classes."""
    truth_of = dict(zip((r.path for r in dataset.records), hicervix_study25_labels(dataset)))
    right = total = 0
    for path, proba in zip(pred.ids, pred.proba):
        truth = truth_of[str(path)]
        if truth < 0:
            continue
        sums: dict[int, float] = {}
        for fine, p in enumerate(proba):
            target = LEVEL_MAPS[STUDY25][fine]
            if target >= 0:
                sums[target] = sums.get(target, 0.0) + float(p)
        total += 1
        right += max(sums, key=sums.get) == truth
    return right, total


@pytest.mark.parametrize("method", ["linear", "knn"])
def test_full_data_probe_rows_carry_the_studys_25_class_accuracy(small_hicervix, tmp_path,
                                                                method):
    _write(tmp_path / "cache", small_hicervix, noise=2.5)
    rows = run_probe_grid(ProbeGridConfig(store_dir=tmp_path / "cache", methods=(method,),
                                          seeds=(1,), results_dir=tmp_path / "res"))
    row = rows[0]
    right, total = _hand_count(small_hicervix,
                               read_predictions(tmp_path / "res" / row["predictions_file"]))
    n_test = sum(r.split == "test" for r in small_hicervix.records)
    assert row["study25"]["n"] == total < n_test  # cells annotated AGC only are not counted
    assert row["study25"]["accuracy"] == pytest.approx(right / total, abs=1e-9)
    assert 0 < right < total  # noisy enough that the count is a real check
    record = probe_record(row)
    assert record["levels"]["study25"] == row["study25"]["accuracy"]


def test_rows_without_the_studys_classes_have_no_study25(tmp_path):
    from tests.test_probes_runner import make_dataset, write_store

    write_store(tmp_path, make_dataset(levels=True), "alpha")
    rows = run_probe_grid(ProbeGridConfig(store_dir=tmp_path, methods=("linear",), seeds=(1,),
                                          results_dir=tmp_path / "r"))
    assert "study25" not in rows[0] and "study25" not in probe_record(rows[0])["levels"]


def test_truth_from_level_arrays_equals_the_datasets_labels():
    dataset = read_hicervix_labels()
    spaces = {n: s.classes for n, s in dataset.label_spaces.items()}
    levels = np.array([r.levels for r in dataset.records])
    truth = study25.study25_truth(levels, dataset.level_names, spaces)
    assert np.array_equal(truth, hicervix_study25_labels(dataset))
    assert study25.has_study25(spaces, dataset.level_maps, dataset.level_names)
    assert not study25.has_study25({}, dataset.level_maps, dataset.level_names)
