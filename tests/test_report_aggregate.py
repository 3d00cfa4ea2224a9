"""Aggregation of result records into the study's tables and curves, on hand-made records."""

from __future__ import annotations

import math

import pytest

from embedcyto.report import aggregate as agg
from embedcyto.report.records import ReportError


def rec(dataset, model, method, seed, acc, *, shots=None, fraction=None, bal=None, levels=None,
        variant="{}"):
    return {"dataset": dataset, "model": model, "method": method, "shots": shots,
            "fraction": fraction, "seed": seed, "accuracy": acc,
            "balanced_accuracy": acc if bal is None else bal, "macro_f1": acc,
            "levels": levels, "variant": variant, "source": "test"}


def sample_std(values):
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


@pytest.fixture
def table1_records():
    # clip: sipakmed 0.80/0.82/0.84, mlcc 0.60/0.60/0.66; vit: sipakmed 0.70 x3, mlcc 0.50/0.52/0.54
    values = {("clip", "sipakmed"): (0.80, 0.82, 0.84), ("clip", "mlcc"): (0.60, 0.60, 0.66),
              ("vit", "sipakmed"): (0.70, 0.70, 0.70), ("vit", "mlcc"): (0.50, 0.52, 0.54)}
    return [rec(d, m, "linear", s, v, bal=v - 0.1)
            for (m, d), vs in values.items() for s, v in zip((1, 2, 3), vs)]


def test_cell_mean_and_sample_std():
    cell = agg.make_cell([(2, 0.82), (1, 0.80), (3, 0.84)])
    assert cell.mean == pytest.approx(0.82)
    assert cell.std == pytest.approx(sample_std([0.80, 0.82, 0.84]))
    assert [s for s, _ in cell.values] == [1, 2, 3]


def test_single_seed_has_no_std_and_identical_values_have_zero():
    assert agg.make_cell([(1, 0.5)]).std is None
    assert agg.make_cell([(1, 0.5), (2, 0.5), (3, 0.5)]).std == 0.0


def test_table1_cells_averages_and_layout(table1_records):
    t = agg.model_dataset_table(table1_records, "linear", "accuracy")
    assert t.columns == ("mlcc", "sipakmed", "average")  # the study's dataset order
    assert [name for name, _ in t.rows] == ["clip", "vit", "average"]
    assert t.cell("clip", "mlcc").mean == pytest.approx(0.62)
    assert t.cell("clip", "mlcc").std == pytest.approx(sample_std([0.60, 0.60, 0.66]))
    # row average: per seed mean over datasets (0.70, 0.71, 0.75), then mean ± std over seeds
    avg = t.cell("clip", "average")
    assert avg.mean == pytest.approx(0.72)
    assert avg.std == pytest.approx(sample_std([0.70, 0.71, 0.75]))
    # column average over models for sipakmed: per seed (0.75, 0.76, 0.77)
    col = t.cell("average", "sipakmed")
    assert col.mean == pytest.approx(0.76)
    assert col.std == pytest.approx(sample_std([0.75, 0.76, 0.77]))
    corner = t.cell("average", "average")
    assert corner.mean == pytest.approx((0.82 + 0.62 + 0.70 + 0.52) / 4)


def test_table1_balanced_accuracy_uses_its_own_metric(table1_records):
    t = agg.model_dataset_table(table1_records, "linear", "balanced_accuracy")
    assert t.cell("vit", "sipakmed").mean == pytest.approx(0.60)


def test_missing_cell_leaves_its_averages_empty(table1_records):
    records = [r for r in table1_records if not (r["model"] == "vit" and r["dataset"] == "mlcc")]
    t = agg.model_dataset_table(records, "linear")
    assert t.cell("vit", "mlcc") is None
    assert t.cell("vit", "average") is None
    assert t.cell("average", "mlcc") is None
    assert t.cell("clip", "average") is not None


def test_average_over_different_seeds_has_no_std():
    a = agg.make_cell([(1, 0.5), (2, 0.7)])
    b = agg.make_cell([(1, 0.9), (3, 0.7)])
    avg = agg.average_cell([a, b])
    assert avg.mean == pytest.approx(0.7)
    assert avg.std is None


def test_other_methods_and_few_shot_rows_stay_out_of_table1(table1_records):
    extra = [rec("sipakmed", "clip", "knn", 1, 0.1),
             rec("sipakmed", "clip", "linear", 1, 0.2, shots=4)]
    with pytest.raises(ReportError, match="seed"):
        # a few-shot linear row would be a different cell; a second full-data seed-1 row is not
        agg.model_dataset_table(table1_records + [rec("sipakmed", "clip", "linear", 1, 0.3)])
    t = agg.model_dataset_table(table1_records + extra, "linear")
    assert t.cell("clip", "sipakmed").mean == pytest.approx(0.82)


def test_mixed_settings_in_one_cell_are_refused_by_name_of_the_differing_key(table1_records):
    odd = rec("sipakmed", "clip", "linear", 4, 0.9, variant='{"Cs": [1.0]}')
    with pytest.raises(ReportError, match=r"Cs: \[1.0\] -> <missing>"):
        agg.model_dataset_table(table1_records + [odd], "linear")


def test_runs_of_other_settings_become_their_own_named_rows():
    study = '{"lr": 0.001, "settings": {"rank": 2}, "warmup": null}'
    faster = '{"lr": 0.02, "settings": {"rank": 2}, "warmup": null}'
    records = [rec("mlcc", "clip", "lora", s, 0.6 + s / 100, shots=4, variant=study)
               for s in (1, 2, 3)]
    records += [rec("mlcc", "clip", "lora", s, 0.3, shots=4, variant=faster) for s in (1, 2)]
    records += [rec("mlcc", "vit", "lora", 1, 0.5, shots=4, variant=faster)]
    split, notes = agg.split_variants(records)
    table = agg.shots_table(split, "mlcc")
    names = [name for name, _ in table.rows]
    assert names == ["clip [lr 0.001] · LoRA", "clip [lr 0.02] · LoRA", "vit · LoRA"]
    assert table.cell("clip [lr 0.001] · LoRA", "4").mean == pytest.approx(0.62)
    assert table.cell("clip [lr 0.02] · LoRA", "4").n == 2
    assert len(notes) == 1 and "clip" in notes[0] and "differ in lr" in notes[0]
    assert agg.split_variants(records[:3]) == (records[:3], [])  # one setting: unchanged


def test_levels_table_with_hierswin_reference():
    levels = [{"level_1": 0.9, "level_2": 0.7, "level_3": 0.6, "average": 0.7333},
              {"level_1": 0.8, "level_2": 0.7, "level_3": 0.5, "average": 0.6667}]
    records = [rec("hicervix", "uni", "linear", s, 0.5, levels=lv)
               for s, lv in zip((1, 2), levels)]
    t = agg.levels_table(records, "linear", "hicervix",
                         {"level_1": 92.08, "level_2": 78.36, "level_3": 78.35, "average": 82.93})
    assert t.columns == ("level_1", "level_2", "level_3", "average")
    assert t.cell("uni", "level_1").mean == pytest.approx(0.85)
    assert t.cell("uni", "level_3").std == pytest.approx(sample_std([0.6, 0.5]))
    ref = t.cell("HierSwin (published)", "average")
    assert ref.mean == pytest.approx(0.8293) and ref.std is None


def test_shots_table_rows_and_all_column():
    records = [rec("bcfc", "clip", "lora", s, 0.6 + 0.1 * s, shots=k) for k in (1, 4)
               for s in (1, 2)]
    records += [rec("bcfc", "clip", "simpleshot", s, 0.5, shots=k) for k in (1, 2)
                for s in (1, 2)]
    records += [rec("bcfc", "clip", "lora", 1, 0.95), rec("bcfc", "clip", "linear", 1, 0.9)]
    t = agg.shots_table(records, "bcfc")
    assert t.columns == ("1", "2", "4", "all")
    assert [n for n, _ in t.rows] == ["clip · LoRA", "clip · SimpleShot", "clip · linear probe"]
    assert t.cell("clip · LoRA", "4").mean == pytest.approx(0.75)
    assert t.cell("clip · LoRA", "2") is None
    assert t.cell("clip · LoRA", "all").mean == pytest.approx(0.95)
    assert t.cell("clip · linear probe", "all").mean == pytest.approx(0.9)
    assert t.cell("clip · linear probe", "1") is None


def test_fraction_table_per_level():
    lv = {"level_1": 0.9, "level_2": 0.8, "level_3": 0.7, "average": 0.8}
    records = [rec("hicervix", "clip-l14", "lora", 1, 0.5, fraction=f, levels=lv)
               for f in (10.0, 100.0)]
    t = agg.fraction_table(records, "hicervix", "clip-l14", {"level_1": 92.08})
    assert [n for n, _ in t.rows] == ["10 %", "100 %", "HierSwin (published)"]
    assert t.cell("100 %", "level_2").mean == pytest.approx(0.8)
    assert t.cell("HierSwin (published)", "level_1").mean == pytest.approx(0.9208)
    assert t.cell("HierSwin (published)", "level_2") is None


def test_shot_curves_and_linear_reference_lines():
    records = [rec("mlcc", m, meth, s, v + 0.01 * s, shots=k)
               for m, v in (("clip", 0.5), ("vit", 0.4)) for meth in ("lora", "simpleshot")
               for k in (1, 2, 4) for s in (1, 2, 3)]
    records += [rec("mlcc", m, "linear", s, 0.9) for m in ("clip", "vit") for s in (1, 2, 3)]
    curves, refs = agg.shot_curves(records, "mlcc")
    assert [c.label for c in curves] == ["clip LoRA", "clip SimpleShot", "vit LoRA",
                                         "vit SimpleShot"]
    assert curves[0].x == (1.0, 2.0, 4.0)
    assert curves[0].mean[0] == pytest.approx(0.52)
    assert curves[0].std[0] == pytest.approx(0.01)
    assert [r.model for r in refs] == ["clip", "vit"] and refs[0].value == pytest.approx(0.9)


def test_fraction_curves_one_per_model():
    lv = {"level_1": 0.9, "level_2": 0.8, "level_3": 0.7, "average": 0.8}
    records = [rec("hicervix", m, "lora", 1, 0.5, fraction=f, levels=lv)
               for m in ("clip-l14", "clip") for f in (10.0, 50.0)]
    curves = agg.fraction_curves(records, "hicervix", "level_2")
    assert [c.model for c in curves] == ["clip", "clip-l14"]
    assert curves[0].x == (10.0, 50.0) and curves[0].mean == (0.8, 0.8)


def test_zero_shot_is_shots_zero_in_the_few_shot_table_and_curves():
    records = [rec("bcfc", "clip", "simpleshot", s, 0.5, shots=k) for k in (1, 2)
               for s in (1, 2)]
    records += [rec("bcfc", "clip", "zeroshot", s, 0.3) for s in (1, 2)]
    records += [rec("bcfc", "clip", "linear", 1, 0.9)]
    t = agg.shots_table(records, "bcfc")
    assert t.columns == ("0", "1", "2", "all")
    assert [n for n, _ in t.rows][0] == "clip · zero-shot"
    assert t.cell("clip · zero-shot", "0").mean == pytest.approx(0.3)
    assert t.cell("clip · zero-shot", "1") is None and t.cell("clip · zero-shot", "all") is None
    assert t.cell("clip · SimpleShot", "0") is None
    curves, _ = agg.shot_curves(records, "bcfc")
    zero = next(c for c in curves if c.method == "zeroshot")
    assert zero.x == (0.0,) and zero.mean == (pytest.approx(0.3),)


def test_zero_shot_point_is_drawn_left_of_one_shot(tmp_path):
    from PIL import Image

    from embedcyto.report.figures import plot_shot_curves

    records = [rec("bcfc", "clip", "simpleshot", 1, 0.5, shots=k) for k in (1, 2)]
    records += [rec("bcfc", "clip", "zeroshot", 1, 0.3)]
    curves, refs = agg.shot_curves(records, "bcfc")
    summary = plot_shot_curves(curves, refs, "t", tmp_path / "f.png")
    assert "clip zero-shot" in summary.legend
    with Image.open(tmp_path / "f.png") as image:
        assert image.format == "PNG"
