"""The report's per-class, confusion, calibration and embedding-map outputs, through the CLI."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from embedcyto.cli.main import cli
from embedcyto.predictions import row_predictions
from test_probes_runner import grid, make_dataset, write_store


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    base = tmp_path_factory.mktemp("diag")
    ds = make_dataset(n_per_class=(30, 10, 40), levels=True)
    for model, noise in (("alpha", 1.2), ("beta", 4.0)):
        write_store(base / "cache", ds, model, seed=1, noise=noise)
    rows = grid(base / "cache", results_dir=base / "res", methods=("knn",),
                shots=(1,), seeds=(1, 2))
    out = CliRunner().invoke(cli, ["report", "--results", str(base / "res"), "--runs",
                                   str(base / "runs"), "--out", str(base / "rep")])
    assert out.exit_code == 0, out.output
    return base, rows


def _read(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_per_class_table_holds_every_class_and_level(report):
    base, rows = report
    table = _read(base / "rep" / "tables" / "perclass_toy_beta_knn.csv")
    assert [r["level"] for r in table] == ["classes"] * 4 + ["level_1"] * 3 + ["level_2"] * 3
    assert [r["class"] for r in table[4:7]] == ["neg", "sq", "gl"]
    pred = row_predictions(base / "res", next(r for r in rows if r["model"] == "beta"
                                              and r["seed"] == 1))
    recall = [np.mean(pred.y_pred[pred.y_true == k] == k) for k in range(4)]
    assert [float(r["recall"]) for r in table[:4]] == pytest.approx([100 * r for r in recall],
                                                                    abs=1e-3)
    assert sum(int(r["support"]) for r in table[:4]) == 160


def test_confusion_reliability_and_embedding_figures_are_written(report):
    base, _ = report
    figures = base / "rep" / "figures"
    confusion = Image.open(figures / "confusion_toy_alpha_knn.png")
    assert confusion.text["Title"].startswith("toy: alpha, knn (n = 160")
    assert confusion.text["Description"].splitlines() == ["level 1", "level 2"] or \
        len(confusion.text["Description"].splitlines()) == 2
    reliability = Image.open(figures / "reliability_toy.png")
    assert {"alpha knn", "beta knn"} <= set(reliability.text["Description"].splitlines())
    embedding = Image.open(figures / "embedding_toy_beta.png")
    assert "PCA" in embedding.text["Title"] or "UMAP" in embedding.text["Title"]
    assert embedding.text["Description"].splitlines() == ["nilm", "lsil", "hsil", "agc"]
    text = (base / "rep" / "report.md").read_text()
    assert "## Per class and calibration" in text and "figures/confusion_toy_beta_knn.png" in text
    assert text.index("## The features at a glance") < text.index("figures/embedding_toy_beta")
    assert text.index("figures/embedding_toy_beta") < text.index("## Which model?")


def test_calibration_table_has_before_and_after_temperature_scaling(report):
    base, _ = report
    table = {r["model"]: r for r in _read(base / "rep" / "tables" / "calibration_toy.csv")}
    beta = table["beta"]
    assert beta["method"] == "knn" and int(beta["n"]) == 160
    assert float(beta["temperature"]) > 0
    assert float(beta["nll_ts"]) <= float(beta["nll"]) + 0.05
    assert 0 <= float(beta["ece"]) <= 1 and float(table["alpha"]["ece"]) < float(beta["ece"])
