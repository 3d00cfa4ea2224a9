"""``embedcyto compare`` and the report's "Which model?" section on generated stores."""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner

from embedcyto.cli.main import cli
from embedcyto.compare import compare_dataset
from test_probes_runner import grid, make_dataset, write_store


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """alpha and its exact copy (same features), and a much noisier beta; 160 test images."""
    base = tmp_path_factory.mktemp("compare")
    ds = make_dataset(n_per_class=(30, 10, 40))
    for model, noise in (("alpha", 1.2), ("alphacopy", 1.2), ("beta", 4.0)):
        write_store(base / "cache", ds, model, seed=1, noise=noise)
    grid(base / "cache", results_dir=base / "res", methods=("knn", "simpleshot"),
         shots=(2,), seeds=(1, 2), episodes=30)
    return base


def test_identical_models_share_a_group_and_the_worse_model_is_ranked_below(results):
    comps = {c.method: c for c in compare_dataset("toy", results / "res", results / "runs")}
    for comp in comps.values():
        assert comp.groups[0] == ["alpha", "alphacopy"] or comp.groups[0] == ["alphacopy",
                                                                               "alpha"]
        assert comp.groups[1:] == [["beta"]]
        same = next(p for p in comp.pairs if {p.a, p.b} == {"alpha", "alphacopy"})
        assert same.diff == 0 and same.p_holm == 1.0 and not same.significant
        worse = next(p for p in comp.pairs if {p.a, p.b} == {"alpha", "beta"})
        assert worse.a == "alpha" and worse.diff > 0 and worse.significant
    assert comps["knn"].unit == "images" and comps["knn"].pairs[0].mcnemar_p is not None
    assert comps["simpleshot"].unit == "episodes" and comps["simpleshot"].pairs[0].n == 60


def test_compare_command_prints_the_ranking(results):
    out = CliRunner().invoke(cli, ["compare", "--dataset", "toy", "--method", "knn",
                                   "--results", str(results / "res"), "--runs",
                                   str(results / "runs")])
    assert out.exit_code == 0, out.output
    assert "toy — knn (paired over images" in out.output and "simpleshot" not in out.output
    lines = out.output.splitlines()
    group_of = {ln.split()[1]: ln.split()[0] for ln in lines if ln.strip().endswith("%")}
    assert group_of == {"alpha": "1", "alphacopy": "1", "beta": "2"}
    assert any(ln.strip().startswith("alpha vs beta") and ln.endswith("*") for ln in lines)


def test_compare_without_two_models_is_a_clean_error(results, tmp_path):
    out = CliRunner().invoke(cli, ["compare", "--dataset", "toy", "--shots", "16",
                                   "--results", str(results / "res")])
    assert out.exit_code == 1 and "nothing to compare" in out.output
    assert "Traceback" not in out.output


def test_report_has_a_which_model_section_with_csv_tables(results, tmp_path):
    out = CliRunner().invoke(cli, ["report", "--results", str(results / "res"), "--runs",
                                   str(results / "runs"), "--out", str(tmp_path / "rep")])
    assert out.exit_code == 0, out.output
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "## Which model?" in text and "#### toy: simpleshot, 2 shots" in text
    with open(tmp_path / "rep" / "tables" / "rank_toy_knn.csv") as handle:
        rank = list(csv.DictReader(handle))
    assert [r["group"] for r in rank] == ["1", "1", "2"] and rank[2]["model"] == "beta"
    with open(tmp_path / "rep" / "tables" / "pairs_toy_simpleshot_2shot.csv") as handle:
        pairs = list(csv.DictReader(handle))
    assert len(pairs) == 3 and {p["test"] for p in pairs} == {"paired-t"}


def _fake_run(runs, model, seed, correct, classes=("a", "b"), y=None, settings=None):
    """A finished LoRA run folder whose test predictions are right where ``correct`` is."""
    import json

    import numpy as np

    from embedcyto import predictions as P

    folder = runs / "lora" / "toy" / model / "all" / f"seed-{seed}"
    folder.mkdir(parents=True)
    y = np.arange(correct.size) % 2 if y is None else y
    pred = np.where(y < 0, 0, np.where(correct, y, 1 - y))
    proba = np.eye(2)[pred] * 0.8 + 0.1
    P.write_predictions(folder / "predictions.npz", P.pack(
        [f"img{i:05d}.png" for i in range(y.size)], y, proba, classes, {}))
    acc = float(correct[y >= 0].mean())
    (folder / "config.json").write_text(json.dumps({"config": {
        "dataset": "toy", "model": model, "shots": None, "fraction": None, "seed": seed,
        **(settings or {})}}))
    (folder / "metrics.json").write_text(json.dumps({"test": {
        "accuracy": acc, "balanced_accuracy": acc, "macro_f1": acc}}))
    (folder / "COMPLETE").write_text("")


def test_lora_runs_with_five_percent_of_errors_fixed_rank_above_with_the_right_sign(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    for seed in (1, 2, 3):
        base = rng.random(3000) < 0.8
        better = base.copy()
        wrong = np.flatnonzero(~base)
        better[rng.choice(wrong, size=int(0.05 * wrong.size), replace=False)] = True
        _fake_run(tmp_path / "runs", "plain", seed, base)
        _fake_run(tmp_path / "runs", "fixed", seed, better)
        _fake_run(tmp_path / "runs", "twin", seed, base)
    (comp,) = compare_dataset("toy", tmp_path / "none", tmp_path / "runs", method="lora")
    assert comp.unit == "images" and comp.label == "lora"
    assert comp.groups == [["fixed"], ["plain", "twin"]] or comp.groups == [["fixed"],
                                                                            ["twin", "plain"]]
    pair = next(p for p in comp.pairs if {p.a, p.b} == {"fixed", "plain"})
    assert pair.a == "fixed" and pair.diff > 0 and pair.low > 0 and pair.significant
    assert pair.mcnemar_p < 0.05 and pair.seeds_p == pytest.approx(0.25)  # 3 seeds: floor
    twins = next(p for p in comp.pairs if {p.a, p.b} == {"plain", "twin"})
    assert twins.diff == 0 and twins.p_holm == 1.0 and twins.seeds_p == 1.0


def test_a_damaged_run_folder_is_a_clean_error(tmp_path):
    import numpy as np

    _fake_run(tmp_path / "runs", "plain", 1, np.ones(10, bool))
    _fake_run(tmp_path / "runs", "other", 1, np.ones(10, bool))
    (tmp_path / "runs" / "lora" / "toy" / "other" / "all" / "seed-1" / "config.json").write_text(
        "{not json")
    out = CliRunner().invoke(cli, ["compare", "--dataset", "toy", "--runs",
                                   str(tmp_path / "runs"), "--results", str(tmp_path / "none")])
    assert out.exit_code == 1 and "config.json" in out.output and "Traceback" not in out.output


def test_runs_on_another_label_space_are_their_own_comparison_and_unlabelled_cells_dont_count(
        tmp_path):
    import numpy as np

    correct = np.arange(400) % 4 != 0  # 75 % right
    labels = np.arange(400) % 2
    unlabelled = np.where(np.arange(400) < 100, -1, labels)  # 100 cells without a label there
    for seed in (1, 2):
        _fake_run(tmp_path / "runs", "a", seed, correct)
        _fake_run(tmp_path / "runs", "b", seed, correct)
        _fake_run(tmp_path / "runs", "c", seed, correct, y=unlabelled,
                  settings={"label_space": "level_3"})
        _fake_run(tmp_path / "runs", "d", seed, np.ones(400, bool), y=unlabelled,
                  settings={"label_space": "level_3"})
    comps = compare_dataset("toy", tmp_path / "none", tmp_path / "runs", method="lora")
    by_label = {c.label: c for c in comps}
    assert set(by_label) == {"lora", 'lora {"label_space": "level_3"}'}
    assert set(by_label["lora"].accuracy) == {"a", "b"}
    other = by_label['lora {"label_space": "level_3"}']
    assert set(other.accuracy) == {"c", "d"}
    (pair,) = other.pairs
    assert pair.n == 300  # the 100 cells without a label in that space are not paired
    assert pair.diff == pytest.approx(1 - float(correct[100:].mean()))


def test_seeds_run_with_other_settings_are_separate_entries(tmp_path):
    import numpy as np

    correct = np.arange(200) % 5 != 0
    for seed in (1, 2):
        _fake_run(tmp_path / "runs", "a", seed, correct)
    _fake_run(tmp_path / "runs", "b", 1, correct, settings={"lr": 0.001})
    _fake_run(tmp_path / "runs", "b", 2, correct, settings={"lr": 0.02})
    (comp,) = compare_dataset("toy", tmp_path / "none", tmp_path / "runs", method="lora")
    assert set(comp.accuracy) == {"a", "b [lr 0.001]", "b [lr 0.02]"}
