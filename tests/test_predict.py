"""``embedcyto probe --save-model`` then ``embedcyto predict`` on new images (tiny-clip)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from embedcyto.cli.main import cli
from embedcyto.datasets.fixtures import make_fixture
from embedcyto.predictions import row_predictions
from embedcyto.saved_probe import SavedProbeError, load_probe


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from embedcyto.backbones.runtime import torch_threads

    base = tmp_path_factory.mktemp("predict")
    root = make_fixture("sipakmed", base / "data", per_class=8)
    runner = CliRunner()
    with torch_threads(1):
        out = runner.invoke(cli, ["extract", "--model", "tiny-clip", "--dataset", "sipakmed",
                                  "--root", str(root), "--store", str(base / "cache"), "--quiet",
                                  "--workers", "0", "--precision", "fp32"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(cli, ["probe", "--dataset", "sipakmed", "--store", str(base / "cache"),
                              "--methods", "knn", "--seeds", "1", "--results",
                              str(base / "res"), "--save-model", str(base / "models")])
    assert out.exit_code == 0, out.output
    assert "saved probe:" in out.output
    row = json.loads((base / "res" / "sipakmed.jsonl").read_text().splitlines()[0])
    return base, root, row


def _read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_on_a_folder_gives_the_test_predictions_of_the_same_images(saved):
    base, root, row = saved
    pred = row_predictions(base / "res", row)
    new = base / "new"
    for image_id in pred.ids:
        (new / image_id).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / image_id, new / image_id)
    (new / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (new / "folder.png").mkdir()  # named like an image, listed as extraction lists it
    probe_dir = base / "models" / "sipakmed" / "tiny-clip" / "knn"
    out = CliRunner().invoke(cli, ["predict", str(new), "--probe", str(probe_dir), "--out",
                                   str(base / "pred.csv")])
    assert out.exit_code == 0, out.output
    rows = {r["path"]: r for r in _read(base / "pred.csv")}
    assert rows["broken.png"]["predicted"] == "" and rows["broken.png"]["error"]
    assert "not read: broken.png" in out.output
    assert rows["folder.png"]["predicted"] == "" and rows["folder.png"]["error"]
    expected = {i: pred.classes[k] for i, k in zip(pred.ids, pred.y_pred)}
    assert {i: rows[i]["predicted"] for i in expected} == expected
    proba = np.array([[float(rows[i][f"p_{c}"]) for c in pred.classes] for i in pred.ids])
    np.testing.assert_allclose(proba, pred.proba, atol=1e-5)


def test_calibrated_probabilities_keep_the_labels(saved, tmp_path):
    base, root, row = saved
    pred = row_predictions(base / "res", row)
    listing = tmp_path / "images.csv"
    listing.write_text("path\n" + "".join(f"{root / i}\n" for i in pred.ids[:6]))
    probe_dir = base / "models" / "sipakmed" / "tiny-clip" / "knn"
    for flag, name in (([], "raw.csv"), (["--calibrated"], "cal.csv")):
        out = CliRunner().invoke(cli, ["predict", str(listing), "--probe", str(probe_dir),
                                       "--out", str(tmp_path / name)] + flag)
        assert out.exit_code == 0, out.output
    raw, cal = _read(tmp_path / "raw.csv"), _read(tmp_path / "cal.csv")
    assert [r["predicted"] for r in raw] == [r["predicted"] for r in cal]
    assert load_probe(probe_dir).temperature > 0


def test_a_saved_probe_refuses_features_of_another_backbone_or_preprocessing(saved):
    base, _, _ = saved
    probe = load_probe(base / "models" / "sipakmed" / "tiny-clip" / "knn")
    probe.check_features(dict(probe.signature))
    with pytest.raises(SavedProbeError, match="model: probe 'tiny-clip' vs features 'tiny-vit'"):
        probe.check_features({**probe.signature, "model": "tiny-vit"})
    other = {**probe.signature, "preprocessing": {**probe.signature["preprocessing"],
                                                  "input_size": 999}}
    with pytest.raises(SavedProbeError, match="preprocessing"):
        probe.check_features(other)


def test_predict_needs_one_model_and_a_readable_probe(saved, tmp_path):
    base, root, _ = saved
    out = CliRunner().invoke(cli, ["predict", str(root), "--out", str(tmp_path / "x.csv")])
    assert out.exit_code == 2 and "exactly one of --probe" in out.output
    out = CliRunner().invoke(cli, ["predict", str(root), "--probe", str(tmp_path), "--out",
                                   str(tmp_path / "x.csv")])
    assert out.exit_code == 1 and "saved probe" in out.output and "Traceback" not in out.output


@pytest.fixture
def _one_thread():
    """Tiny models run far faster on one thread when the cores are shared."""
    from embedcyto.backbones.runtime import torch_threads

    with torch_threads(1):
        yield


@pytest.mark.slow
def test_predict_with_a_lora_run_matches_its_test_predictions(tmp_path, _one_thread):
    from embedcyto.lora import runs
    from embedcyto.predictions import read_predictions

    root = make_fixture("folder", tmp_path / "toy", per_class=6, seed=3)
    fast = ["--device", "cpu", "--precision", "fp32", "--workers", "0", "--quiet"]
    out = CliRunner().invoke(cli, ["lora", "--model", "tiny-clip", "--dataset", "toy",
                                   "--layout", "folder",
                                   "--root", str(root), "--store", str(tmp_path / "cache"),
                                   "--runs", str(tmp_path / "runs"), "--shots", "2", "--seed",
                                   "1", "--iterations", "4", "--warmup", "1", "--batch-size", "4",
                                   *fast])
    assert out.exit_code == 0, out.output
    run = next((tmp_path / "runs" / "lora").glob("*/tiny-clip/shots-2/seed-1"))
    saved = read_predictions(run / runs.PREDICTIONS_FILE)
    assert saved.val_proba is not None and len(saved.val_ids) > 0
    out = CliRunner().invoke(cli, ["predict", str(root), "--run", str(run), "--out",
                                   str(tmp_path / "pred.csv"), "--calibrated"])
    assert out.exit_code == 0, out.output
    rows = {r["path"]: r for r in _read(tmp_path / "pred.csv")}
    assert {i: rows[i]["predicted"] for i in saved.ids} == {
        i: saved.classes[k] for i, k in zip(saved.ids, saved.y_pred)}
    report = CliRunner().invoke(cli, ["report", "--results", str(tmp_path / "none"), "--runs",
                                      str(tmp_path / "runs"), "--out", str(tmp_path / "rep")])
    assert report.exit_code == 0, report.output
    assert list((tmp_path / "rep" / "figures").glob("confusion_*_tiny-clip_lora-shots-2.png"))


OPTIONS = {"study_head": {"epochs": 3}, "linear": {"Cs": [0.5]}}


@pytest.mark.parametrize("method", ["linear", "study_head"])
def test_saved_linear_probes_reproduce_the_rows_test_predictions(tmp_path, method):
    from embedcyto.saved_probe import fit_and_save
    from embedcyto.store import load_features
    from test_probes_runner import grid, make_dataset, write_store

    path = write_store(tmp_path / "cache", make_dataset(), "alpha", seed=1)
    (row,) = grid(tmp_path / "cache", results_dir=tmp_path / "res", methods=(method,),
                  seeds=(1,), options=OPTIONS)
    options = OPTIONS[method]
    probe = load_probe(fit_and_save(path, method, tmp_path / "models", options, seed=1))
    pred = row_predictions(tmp_path / "res", row)
    feats = load_features(path)
    X = feats.X[[list(feats.ids).index(i) for i in pred.ids]]
    np.testing.assert_allclose(probe.predict_proba(X), pred.proba, atol=1e-5)
    assert not list((tmp_path / "models").rglob("*.pkl"))


def test_predict_runs_the_backbone_in_the_precision_of_the_training_features(tmp_path):
    """A bf16 store's probe: new images are embedded in bf16 too, so the same images get the
    same probabilities as the probe's own test predictions (in fp32 they would drift)."""
    from embedcyto.backbones.runtime import torch_threads

    root = make_fixture("sipakmed", tmp_path / "data", per_class=8)
    runner = CliRunner()
    with torch_threads(1):
        out = runner.invoke(cli, ["extract", "--model", "tiny-clip", "--dataset", "sipakmed",
                                  "--root", str(root), "--store", str(tmp_path / "cache"),
                                  "--quiet", "--workers", "0", "--precision", "bf16"])
        assert out.exit_code == 0, out.output
        out = runner.invoke(cli, ["probe", "--dataset", "sipakmed", "--store",
                                  str(tmp_path / "cache"), "--methods", "linear", "--seeds", "1",
                                  "--results", str(tmp_path / "res"),
                                  "--save-model", str(tmp_path / "models")])
        assert out.exit_code == 0, out.output
        probe_dir = tmp_path / "models" / "sipakmed" / "tiny-clip" / "linear"
        assert load_probe(probe_dir).signature.get("precision") == "bfloat16"
        row = json.loads((tmp_path / "res" / "sipakmed.jsonl").read_text().splitlines()[0])
        pred = row_predictions(tmp_path / "res", row)
        new = tmp_path / "new"
        for image_id in pred.ids:
            (new / image_id).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / image_id, new / image_id)
        out = runner.invoke(cli, ["predict", str(new), "--probe", str(probe_dir), "--out",
                                  str(tmp_path / "pred.csv")])
    assert out.exit_code == 0, out.output
    rows = {r["path"]: r for r in _read(tmp_path / "pred.csv")}
    proba = np.array([[float(rows[i][f"p_{c}"]) for c in pred.classes] for i in pred.ids])
    np.testing.assert_allclose(proba, pred.proba, atol=1e-5)


def test_fp16_features_are_not_reproduced_on_the_cpu():
    from embedcyto.predict import PredictError, _training_dtype

    with pytest.raises(PredictError, match="float16 on a GPU"):
        _training_dtype("float16", "cpu")
    with pytest.raises(PredictError, match="unknown feature precision"):
        _training_dtype("int8", "cpu")
    import torch

    assert _training_dtype(None, "cpu") == torch.float32  # probes saved before it was recorded
