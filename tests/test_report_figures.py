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


def test_the_shipped_reference_values_are_cited_and_match_the_metrics_module():
    from embedcyto.metrics import HIERSWIN
    from embedcyto.report.paper import load_paper_reference

    paper = load_paper_reference()
    assert "Dausort" in paper.source and "2411.14975" in paper.source
    assert dict(paper.hierswin) == HIERSWIN and "HiCervix" in paper.hierswin_source
    assert paper.table1 or "Not shipped" in paper.table1_note  # never a number without a source


def test_published_table1_rows_sit_under_the_users_rows(tmp_path):
    from embedcyto.report.build import plan_tables
    from embedcyto.report.records import probe_record

    rows = [probe_record(_row(m, s, 0.8)) for m in ("clip", "tiny-vit") for s in (1, 2)]
    tables = plan_tables(rows, {"clip": {"mlcc": 95.5}})
    table = tables["table1_accuracy_linear"]
    names = [name for name, _ in table.rows]
    assert names[:3] == ["clip", "clip (paper)", "tiny-vit"]
    assert table.cell("clip (paper)", "mlcc").mean == 0.955
    assert table.cell("clip (paper)", "average") is None
    assert "validation" in table.note
    assert [n for n, _ in tables["table1_balanced_accuracy_linear"].rows] == [
        "clip", "tiny-vit", "average"]  # published values are accuracy only


def test_a_bad_reference_file_is_refused(tmp_path):
    import pytest

    from embedcyto.report.paper import load_paper_reference
    from embedcyto.report.records import ReportError

    bad = tmp_path / "ref.json"
    bad.write_text(json.dumps({"source": "x", "table1": {"values": {"clip": {"mlcc": 0.955e3}}},
                               "hierswin": {"source": "y", "values": {}}}))
    with pytest.raises(ReportError, match="percentage"):
        load_paper_reference(bad)


def test_published_values_are_drawn_as_their_own_lines(tmp_path):
    from embedcyto.report.build import draw_figures
    from embedcyto.report.records import probe_record

    rows = [probe_record(_row("clip", s, 0.5 + 0.01 * s, k)) for s in (1, 2) for k in (1, 2)]
    rows += [probe_record(_row("clip", s, 0.7)) for s in (1, 2)]
    (fig,) = draw_figures(rows, tmp_path, {"clip": {"mlcc": 91.0}, "uni": {"mlcc": 95.0}})
    assert "clip linear (paper, validation)" in fig.legend
    assert not any(entry.startswith("uni") for entry in fig.legend)  # only models drawn
    (plain,) = draw_figures(rows, tmp_path / "plain")
    assert not any("paper" in entry for entry in plain.legend)


def test_stamping_adds_the_warning_under_a_finished_figure(tmp_path):
    from embedcyto.report.figures import stamp_warning

    curves = [agg.Curve("a LoRA", "a", "lora", (1, 2), (0.5, 0.6), (0.0, 0.0))]
    fig = plot_shot_curves(curves, [], "t", tmp_path / "f.png")
    with Image.open(fig.path) as image:
        height = image.height
    stamped = stamp_warning(fig, "random-weight models (tiny-vit)")
    info = _info(fig.path)
    assert stamped.warning == "random-weight models (tiny-vit)" == info["Warning"]
    assert info["Title"] == "t" and info["Description"] == "a LoRA"  # metadata kept
    with Image.open(fig.path) as image:
        assert image.height > height
    assert stamp_warning(stamped, "other") is stamped  # never stamped twice


def test_figures_drawn_by_the_diagnostics_carry_the_warning_too(tmp_path):
    from test_probes_runner import grid, make_dataset, write_store

    ds = make_dataset(n_per_class=(12, 12, 12), levels=False)
    write_store(tmp_path / "cache", ds, "tiny-vit", seed=1, noise=1.0)
    grid(tmp_path / "cache", results_dir=tmp_path / "res", methods=("knn",), shots=(1,),
         seeds=(1,))
    report = build_report(tmp_path / "res", tmp_path / "runs", tmp_path / "rep")
    drawn = [f for f in report.figures if not f.path.name.startswith("fewshot_")]
    assert drawn  # confusion, reliability or embedding maps
    for fig in report.figures:
        assert "tiny-vit" in _info(fig.path)["Warning"]
