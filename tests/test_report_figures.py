"""Figures stay in the metric's range, keep overlapping lines visible, and carry warnings."""

from __future__ import annotations

import json

from PIL import Image

from embedcyto.report import aggregate as agg
from embedcyto.report.build import build_report
from embedcyto.report.figures import SHIFT_NOTE, band, plot_shot_curves, shifts


def _info(path):
    with Image.open(path) as image:
        return dict(image.info)


def test_bands_are_clipped_to_the_metric_range():
    lower, upper = band([99.0, 2.0, 50.0], [5.0, 5.0, 5.0])
    assert lower == [94.0, 0.0, 45.0] and upper == [100.0, 7.0, 55.0]


def test_a_perfect_score_with_spread_keeps_the_axis_at_100(tmp_path):
    curves = [agg.Curve("a LoRA", "a", "lora", (1, 2, 4), (0.98, 1.0, 1.0), (0.05, 0.0, 0.0))]
    fig = plot_shot_curves(curves, [], "t", tmp_path / "f.png")
    assert fig.ylim[1] <= 100.0 and fig.ylim[0] >= 0.0


def test_overlapping_lines_are_shifted_apart_and_the_figure_says_so(tmp_path):
    assert shifts(1, 0.1) == [0.0]
    assert shifts(3, 0.1) == [-0.1, 0.0, 0.1]
    same = (1, 2, 4), (0.5, 0.6, 0.7), (0.0, 0.0, 0.0)
    curves = [agg.Curve("a LoRA", "a", "lora", *same), agg.Curve("b LoRA", "b", "lora", *same)]
    fig = plot_shot_curves(curves, [], "t", tmp_path / "f.png")
    assert fig.notes == (SHIFT_NOTE,)
    assert _info(tmp_path / "f.png")["Comment"] == SHIFT_NOTE


def _row(model, seed, acc, shots=None):
    return {"dataset": "mlcc", "model": model, "method": "simpleshot" if shots else "linear",
            "shots": shots, "seed": seed, "options": {},
            "metrics": {"accuracy": acc, "balanced_accuracy": acc, "macro_f1": acc}}


def test_every_figure_of_random_weight_results_carries_the_warning(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    rows = [_row("tiny-clip", s, 0.5 + 0.01 * s, k) for s in (1, 2) for k in (1, 2)]
    rows += [_row("tiny-clip", s, 0.7) for s in (1, 2)]
    (results / "mlcc.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = build_report(results, tmp_path / "runs", tmp_path / "report")
    assert report.figures
    for fig in report.figures:
        assert "random-weight models (tiny-clip)" in fig.warning
        assert "random-weight models (tiny-clip)" in _info(fig.path)["Warning"]


def test_figures_of_real_models_carry_no_warning(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    rows = [_row("clip", s, 0.5 + 0.01 * s, k) for s in (1, 2) for k in (1, 2)]
    (results / "mlcc.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = build_report(results, tmp_path / "runs", tmp_path / "report")
    assert report.figures and all(f.warning is None for f in report.figures)
    assert all("Warning" not in _info(f.path) for f in report.figures)
