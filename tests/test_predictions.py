"""Per-image predictions: written for every full-data probe row, joinable by image id."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedcyto import predictions as P
from test_probes_runner import grid as run_grid
from test_probes_runner import make_dataset, write_store


@pytest.fixture
def grid(tmp_path):
    ds = make_dataset(levels=True)
    write_store(tmp_path / "cache", ds, "alpha", seed=1)
    write_store(tmp_path / "cache", ds, "beta", seed=2, noise=3.0)
    rows = run_grid(tmp_path / "cache", results_dir=tmp_path / "res",
                    methods=("knn", "simpleshot"), shots=(1,), seeds=(1, 2), episodes=5)
    return ds, rows, tmp_path / "res"


def test_full_data_rows_name_a_predictions_file_that_matches_their_metrics(grid):
    ds, rows, res = grid
    full = [r for r in rows if r["method"] in ("linear", "knn")]
    assert all(r[P.ROW_FIELD].startswith("predictions/toy/") for r in full)
    assert all(P.ROW_FIELD not in r and P.PENDING not in r
               for r in rows if r["method"] == "simpleshot")
    on_disk = [json.loads(line) for line in (res / "toy.jsonl").read_text().splitlines()]
    assert all(P.PENDING not in r for r in on_disk)
    for row in full:
        pred = P.row_predictions(res, row)
        assert len(pred.ids) == row["n_test"] == 20
        assert np.mean(pred.correct) == pytest.approx(row["metrics"]["accuracy"])
        assert pred.classes == ds.classes and pred.levels.shape == (20, 2)
        assert pred.meta["model"] == row["model"] and pred.meta["seed"] is None  # knn: every seed
        assert len(pred.val_ids) == row["n_val"] and pred.val_proba.shape == (12, 4)
        truth = {r.path: r.label for r in ds.records}
        assert [truth[i] for i in pred.ids] == pred.y_true.tolist()
        np.testing.assert_allclose(pred.proba.sum(axis=1), 1, atol=1e-5)


def test_two_models_join_by_image_id(grid):
    _, rows, res = grid
    a, b = (P.row_predictions(res, next(r for r in rows if r["model"] == m
                                        and r["method"] == "knn")) for m in ("alpha", "beta"))
    assert sorted(a.ids) == sorted(b.ids)
    files = {(r["model"], r["seed"]): r[P.ROW_FIELD] for r in rows if P.ROW_FIELD in r}
    assert len(files) == 4 and len(set(files.values())) == 2  # knn: seeds share one file


def test_unreadable_or_missing_files_are_refused(tmp_path):
    with pytest.raises(P.PredictionsError, match="no predictions file"):
        P.read_predictions(tmp_path / "none.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(P.PredictionsError, match="not a readable predictions file"):
        P.read_predictions(tmp_path / "bad.npz")
    with pytest.raises(P.PredictionsError, match="`embedcyto probe` and `rerun=True`"):
        P.row_predictions(tmp_path, {"method": "linear", "model": "m", "dataset": "d"})


def test_round_trip_keeps_every_array(tmp_path):
    pred = P.pack(["a", "b"], [0, 1], [[0.9, 0.1], [0.2, 0.8]], ("x", "y"), {"model": "m"},
                  val=(["c"], [1], [[0.3, 0.7]]))
    back = P.read_predictions(P.write_predictions(tmp_path / "p.npz", pred))
    assert back.ids.tolist() == ["a", "b"] and back.y_pred.tolist() == [0, 1]
    assert back.meta == {"model": "m"} and back.val_true.tolist() == [1]
    with pytest.raises(P.PredictionsError, match="disagree in size"):
        P.pack(["a"], [0, 1], [[1.0, 0.0]], ("x", "y"), {})
