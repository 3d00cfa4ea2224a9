"""Rendering tables (Markdown, CSV), drawing figures, and the whole report from result files."""

from __future__ import annotations

import csv
import io
import json

import pytest
from PIL import Image

from embedcyto.report import aggregate as agg
from embedcyto.report.build import build_report
from embedcyto.report.figures import plot_fraction_curves, plot_shot_curves
from embedcyto.report.records import ReportError
from embedcyto.report.render import format_cell, to_csv, to_markdown

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png(path, legend):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
        assert image.info["Description"].split("\n") == list(legend)


def small_table():
    a = agg.make_cell([(1, 0.8), (2, 0.9)])
    return agg.Table("T", "model", ("sipakmed", "average"),
                     (("clip", (a, None)), ("HierSwin", (agg.reference_cell(0.9208), None))),
                     note="n")


def test_format_cell():
    assert format_cell(agg.make_cell([(1, 0.8), (2, 0.9)])) == "85.0 ± 7.1"
    assert format_cell(agg.reference_cell(0.9208)) == "92.1"
    assert format_cell(None) == "–"


def test_markdown_and_csv():
    md = to_markdown(small_table())
    assert "| model | SIPaKMeD | average |" in md
    assert "| clip | 85.0 ± 7.1 | – |" in md
    rows = list(csv.reader(io.StringIO(to_csv(small_table()))))
    assert rows[0] == ["model", "sipakmed_mean", "sipakmed_std", "sipakmed_n", "average_mean",
                       "average_std", "average_n"]
    assert rows[1][:4] == ["clip", "85.000", "7.071", "2"] and rows[1][4:] == ["", "", ""]
    assert rows[2][1:3] == ["92.080", ""]


def test_shot_figure_lines_and_labels(tmp_path):
    curves = [agg.Curve("clip LoRA", "clip", "lora", (1, 2, 4), (0.5, 0.6, 0.7), (0.01,) * 3),
              agg.Curve("clip SimpleShot", "clip", "simpleshot", (1, 2), (0.4, 0.5), (0, 0))]
    refs = [agg.Reference("clip linear probe (all data)", "clip", 0.9)]
    fig = plot_shot_curves(curves, refs, "MLCC: accuracy vs shots", tmp_path / "f.png")
    assert fig.legend == ("clip LoRA", "clip SimpleShot", "clip linear probe (all data)")
    assert "shots" in fig.xlabel and "accuracy" in fig.ylabel
    check_png(tmp_path / "f.png", fig.legend)


def test_fraction_figure_has_a_panel_per_level(tmp_path):
    c = agg.Curve("clip-l14 LoRA", "clip-l14", "lora", (10, 50, 100), (0.5, 0.6, 0.7), (0,) * 3)
    by_level = {lv: [c] for lv in ("level_1", "level_2", "level_3", "average")}
    fig = plot_fraction_curves(by_level, {"level_1": 92.08, "level_2": 78.36, "level_3": 78.35,
                                          "average": 82.93}, "HiCervix", tmp_path / "g.png")
    assert fig.panels == 4
    assert fig.legend == ("clip-l14 LoRA", "HierSwin (published)")
    check_png(tmp_path / "g.png", fig.legend)


def _row(dataset, model, method, seed, acc, shots=None):
    return {"dataset": dataset, "model": model, "method": method, "shots": shots, "seed": seed,
            "options": {}, "metrics": {"accuracy": acc, "balanced_accuracy": acc,
                                       "macro_f1": acc}}


def test_build_report_writes_tables_figures_and_index(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for dataset in ("bcfc", "mlcc"):
        rows = [_row(dataset, m, "linear", s, 0.8) for m in ("clip", "uni") for s in (1, 2)]
        rows += [_row(dataset, m, "simpleshot", s, 0.6, k) for m in ("clip", "uni")
                 for s in (1, 2) for k in (1, 2)]
        (results / f"{dataset}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = build_report(results, tmp_path / "no-runs", tmp_path / "report")
    assert set(out.tables) == {"table1_accuracy_linear", "table1_balanced_accuracy_linear",
                               "fewshot_bcfc", "fewshot_mlcc"}
    assert all(p.is_file() for p in out.csv_files.values())
    assert [f.path.name for f in out.figures] == ["fewshot_bcfc.png", "fewshot_mlcc.png"]
    text = out.markdown.read_text()
    assert "| clip | 80.0 ± 0.0 | 80.0 ± 0.0 | 80.0 ± 0.0 |" in text
    assert "figures/fewshot_bcfc.png" in text and "Random-weight" not in text


def test_build_report_without_results_says_what_to_run(tmp_path):
    with pytest.raises(ReportError, match="embedcyto probe"):
        build_report(tmp_path / "r", tmp_path / "runs", tmp_path / "out")


def test_build_report_shows_runs_of_other_settings_as_rows_instead_of_refusing(tmp_path):
    for seed, lr in ((1, 0.001), (2, 0.001), (3, 0.02)):
        folder = tmp_path / "runs" / "lora" / "mlcc" / "clip" / "shots-4" / f"seed-{seed}"
        folder.mkdir(parents=True)
        config = {"model": "clip", "dataset": "mlcc", "shots": 4, "fraction": None,
                  "seed": seed, "device": "cpu", "lr": lr, "settings": {"rank": 2}}
        (folder / "config.json").write_text(json.dumps({"config": config}))
        (folder / "metrics.json").write_text(json.dumps(
            {"test": {"accuracy": 0.5 + seed / 10, "balanced_accuracy": 0.5,
                      "macro_f1": 0.5}}))
        (folder / "COMPLETE").write_text("finished\n")
    out = build_report(tmp_path / "no-results", tmp_path / "runs", tmp_path / "report")
    rows = dict(out.tables["fewshot_mlcc"].rows)
    assert set(rows) == {"clip [lr 0.001] · LoRA", "clip [lr 0.02] · LoRA"}
    assert rows["clip [lr 0.001] · LoRA"][0].mean == pytest.approx(0.65)
    assert rows["clip [lr 0.02] · LoRA"][0].n == 1
    text = out.markdown.read_text()
    assert "shown as separate rows (they differ in lr)" in text
