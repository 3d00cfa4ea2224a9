"""Validation accuracy beside test accuracy: recorded by the probes, shown by `report --split val`."""

from __future__ import annotations

import csv
import json

from click.testing import CliRunner
from test_store_fixtures import make_dataset, write_full

from embedcyto.cli.main import cli
from embedcyto.probes.evaluate import evaluate_full
from embedcyto.store import load_features


def test_full_data_probes_record_the_kept_models_validation_accuracy(tmp_path):
    path = tmp_path / "toy" / "m.h5"
    write_full(path, make_dataset(40))
    features = load_features(path)
    row = evaluate_full(features, "linear", 1, {})
    n_val = row["n_val"]
    assert n_val > 0
    accuracy = row["val_metrics"]["accuracy"]
    assert abs(accuracy * n_val - round(accuracy * n_val)) < 1e-9  # a count over val rows


def _row(model, seed, test, val=None):
    row = {"dataset": "mlcc", "model": model, "method": "linear", "shots": None, "seed": seed,
           "options": {}, "metrics": {"accuracy": test, "balanced_accuracy": test,
                                      "macro_f1": test}}
    if val is not None:
        row["val_metrics"] = {"accuracy": val, "balanced_accuracy": val, "macro_f1": val}
    return row


def _report(tmp_path, rows, *args):
    results = tmp_path / "results"
    results.mkdir(exist_ok=True)
    (results / "mlcc.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["report", "--results", str(results), "--runs",
                                      str(tmp_path / "runs"), "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return out


def test_report_split_val_adds_table1_on_validation_after_the_test_headline(tmp_path):
    out = _report(tmp_path, [_row("clip", s, 0.80, 0.9) for s in (1, 2)], "--split", "val")
    with open(out / "tables" / "table1_val_accuracy_linear.csv") as f:
        rows = list(csv.reader(f))
    assert rows[1][:3] == ["clip", "90.000", "0.000"]
    markdown = (out / "report.md").read_text()
    assert markdown.index("Accuracy (%), linear") < markdown.index("Validation accuracy (%)")


def test_without_split_val_only_test_is_shown(tmp_path):
    out = _report(tmp_path, [_row("clip", s, 0.80, 0.9) for s in (1, 2)])
    assert not (out / "tables" / "table1_val_accuracy_linear.csv").exists()


def test_rows_without_validation_accuracy_leave_empty_cells_and_say_why(tmp_path):
    out = _report(tmp_path, [_row("clip", s, 0.80) for s in (1, 2)], "--split", "val")
    markdown = (out / "report.md").read_text()
    assert "rows written before embedcyto recorded validation accuracy" in markdown
